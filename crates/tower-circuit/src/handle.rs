//! Reading and steering the breakers at run time.
//!
//! [`CircuitBreakerLayer::handle`](crate::CircuitBreakerLayer::handle) gives a
//! [`CircuitHandle`]: a snapshot of every breaker (state, counts, rates; it
//! serializes to JSON for a `/healthz` or `/admin/circuits` route), and manual
//! control: force open, force closed, disable, reset.
//!
//! # Example
//! ```
//! use tower_circuit::{CircuitBreakerLayer, Control, State};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = CircuitBreakerLayer::builder().name("upstream").build()?;
//! let handle = layer.handle();
//!
//! handle.control("upstream", Control::ForceOpen)?;
//! let snapshot = handle.get("upstream").unwrap();
//! assert_eq!(snapshot.state, State::ForcedOpen);
//! let json = serde_json::to_value(&snapshot)?;
//! assert_eq!(json["state"], "forced_open");
//!
//! handle.reset("upstream")?;
//! assert_eq!(handle.get("upstream").unwrap().state, State::Closed);
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;

use crate::registry::Registry;
pub use crate::state::{CircuitSnapshot, Control, SharedSnapshot, State, Totals, Transition};

/// No breaker of that name, from [`CircuitHandle::control`] on a layer
/// without keys.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnknownCircuit {
    /// The name asked for.
    pub name: String,
}

impl fmt::Display for UnknownCircuit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no circuit named {:?}", self.name)
    }
}

impl std::error::Error for UnknownCircuit {}

/// Reads and steers a layer's breakers; cheap to clone.
#[derive(Clone)]
pub struct CircuitHandle {
    registry: Arc<Registry>,
}

impl fmt::Debug for CircuitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitHandle")
            .field("circuit", &self.name())
            .finish_non_exhaustive()
    }
}

impl CircuitHandle {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.registry.settings.name
    }

    /// Every breaker's snapshot (one for a layer without keys; one per live
    /// key otherwise, sorted by key). Costs one short lock per breaker.
    pub fn snapshot(&self) -> Vec<CircuitSnapshot> {
        let mut all: Vec<CircuitSnapshot> = self
            .registry
            .breakers()
            .iter()
            .map(|b| b.snapshot())
            .collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// The snapshot of the breaker for `key` (the layer's name for a layer
    /// without keys), if it exists.
    pub fn get(&self, key: &str) -> Option<CircuitSnapshot> {
        self.registry.find(key).map(|b| b.snapshot())
    }

    /// The state of the breaker for `key`, if it exists.
    pub fn state(&self, key: &str) -> Option<State> {
        self.registry.find(key).map(|b| b.state())
    }

    /// Applies `control` to the breaker for `key`. On a keyed layer the
    /// breaker is created if it doesn't exist yet (so a model can be forced
    /// open before its first call); on a layer without keys, `key` must be
    /// the layer's name. With shared state the change is also written to
    /// Redis, in the background.
    pub fn control(&self, key: &str, control: Control) -> Result<(), UnknownCircuit> {
        let breaker = self
            .registry
            .find_or_create(key)
            .ok_or_else(|| UnknownCircuit {
                name: key.to_owned(),
            })?;
        breaker.control(control);
        Ok(())
    }

    /// [`Control::ForceOpen`].
    pub fn force_open(&self, key: &str) -> Result<(), UnknownCircuit> {
        self.control(key, Control::ForceOpen)
    }

    /// [`Control::ForceClosed`].
    pub fn force_closed(&self, key: &str) -> Result<(), UnknownCircuit> {
        self.control(key, Control::ForceClosed)
    }

    /// [`Control::Disable`].
    pub fn disable(&self, key: &str) -> Result<(), UnknownCircuit> {
        self.control(key, Control::Disable)
    }

    /// [`Control::Reset`].
    pub fn reset(&self, key: &str) -> Result<(), UnknownCircuit> {
        self.control(key, Control::Reset)
    }
}
