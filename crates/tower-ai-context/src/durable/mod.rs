//! Durable conversations (being written).
