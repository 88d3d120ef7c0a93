//! Redis with vector search (being written).
