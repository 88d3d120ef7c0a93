//! The Redis vector search backend (being written).
