//! Backends of the breakers' state. The in-memory breaker is the state
//! machine itself (`breaker/`); `redis` shares it between replicas.

pub(crate) mod redis;
