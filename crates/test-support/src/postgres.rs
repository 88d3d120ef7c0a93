//! Throwaway PostgreSQL servers (being written).
