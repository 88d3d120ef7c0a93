//! [`CircuitBreakerLayer`] and its [`CircuitBreakerBuilder`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::classify::{Classify, DefaultClassifier};
use crate::config::{ConfigError, Jitter, Settings, Window};
use crate::fallback::{NoFallback, OnRefusal, OnRefusalOrFailure};
use crate::handle::CircuitHandle;
use crate::key::{KeyExtractor, Single};
use crate::registry::{Registry, RemoteFactory};
use crate::service::CircuitBreaker;
use crate::state::Transition;

/// A [`Layer`] that wraps services in a [`CircuitBreaker`].
///
/// The breakers live in the layer, behind an `Arc`: every service it makes
/// (axum calls `layer` once per route) and every clone shares them.
///
/// `K` finds the breaker of each request ([`Single`]: one breaker), `C`
/// classifies outcomes ([`DefaultClassifier`]), `F` answers refused calls
/// ([`NoFallback`]: a `503`).
#[derive(Clone)]
pub struct CircuitBreakerLayer<K = Single, C = DefaultClassifier, F = NoFallback> {
    registry: Arc<Registry>,
    keyer: K,
    classifier: C,
    fallback: F,
}

impl CircuitBreakerLayer {
    /// A layer with the default settings: one breaker named `"default"`,
    /// opening at a 50 % failure rate over the last 100 calls (at least 10),
    /// open for 30 s, then 3 trial calls.
    pub fn new() -> Self {
        let settings = Arc::new(Settings::default());
        Self {
            registry: Arc::new(Registry::new(settings, false, None)),
            keyer: Single,
            classifier: DefaultClassifier::new(),
            fallback: NoFallback,
        }
    }

    /// A builder, starting from the default settings.
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::new()
    }
}

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, C, F> CircuitBreakerLayer<K, C, F> {
    /// A handle on the layer's breakers: snapshots and manual control.
    pub fn handle(&self) -> CircuitHandle {
        CircuitHandle::new(Arc::clone(&self.registry))
    }
}

impl<K: fmt::Debug, C: fmt::Debug, F: fmt::Debug> fmt::Debug for CircuitBreakerLayer<K, C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("registry", &self.registry)
            .field("settings", &self.registry.settings)
            .field("keyer", &self.keyer)
            .field("classifier", &self.classifier)
            .field("fallback", &self.fallback)
            .finish()
    }
}

impl<S, K: Clone, C: Clone, F: Clone> Layer<S> for CircuitBreakerLayer<K, C, F> {
    type Service = CircuitBreaker<S, K, C, F>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(
            inner,
            Arc::clone(&self.registry),
            self.keyer.clone(),
            self.classifier.clone(),
            self.fallback.clone(),
        )
    }
}

/// Builds a [`CircuitBreakerLayer`]; every setting has a default.
///
/// ```
/// use std::time::Duration;
/// use tower_circuit::{CircuitBreakerLayer, Window};
///
/// // The gateway's breaker: 50 % failures over the last 20 calls (at least
/// // 10), calls of 10 s or more are slow, open for 30 s, 3 trial calls.
/// let layer = CircuitBreakerLayer::builder()
///     .name("upstream")
///     .window(Window::count(20))
///     .minimum_calls(10)
///     .failure_rate_threshold(50.0)
///     .slow_call_duration(Duration::from_secs(10))
///     .slow_call_rate_threshold(50.0)
///     .open_wait(Duration::from_secs(30))
///     .half_open_trials(3)
///     .build()
///     .expect("valid settings");
/// # let _ = layer;
///
/// // A window smaller than the minimum number of calls is refused.
/// assert!(CircuitBreakerLayer::builder().window(Window::count(5)).minimum_calls(10).build().is_err());
/// ```
#[must_use]
pub struct CircuitBreakerBuilder<K = Single, C = DefaultClassifier, F = NoFallback> {
    settings: Settings,
    keyed: bool,
    keyer: K,
    classifier: C,
    fallback: F,
    remote: Option<Arc<dyn RemoteFactory>>,
}

impl<K: fmt::Debug, C: fmt::Debug, F: fmt::Debug> fmt::Debug for CircuitBreakerBuilder<K, C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("settings", &self.settings)
            .field("keyed", &self.keyed)
            .field("keyer", &self.keyer)
            .field("classifier", &self.classifier)
            .field("fallback", &self.fallback)
            .field("shared", &self.remote.is_some())
            .finish()
    }
}

impl Default for CircuitBreakerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl CircuitBreakerBuilder {
    /// The default settings.
    pub fn new() -> Self {
        Self {
            settings: Settings::default(),
            keyed: false,
            keyer: Single,
            classifier: DefaultClassifier::new(),
            fallback: NoFallback,
            remote: None,
        }
    }
}

impl<K, C, F> CircuitBreakerBuilder<K, C, F> {
    /// The layer's name, in logs, metrics, snapshots and Redis keys (default
    /// `"default"`). Choose it; don't take it from a request. With shared
    /// state, the layers of the same name on every replica share their
    /// breakers.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.settings.name = Arc::from(name.into());
        self
    }

    /// The window the rates are computed over (default: the last 100 calls).
    pub fn window(mut self, window: Window) -> Self {
        self.settings.window = window.0;
        self
    }

    /// Opens when the failure rate reaches this many percent (default 50).
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.settings.failure_rate = percent;
        self
    }

    /// Opens when the slow-call rate reaches this many percent (default
    /// 100). Slow calls are judged only with
    /// [`slow_call_duration`](Self::slow_call_duration) or
    /// [`slow_first_byte`](Self::slow_first_byte).
    pub fn slow_call_rate_threshold(mut self, percent: f64) -> Self {
        self.settings.slow_rate = percent;
        self
    }

    /// The rates are judged once the window holds this many calls (default
    /// 10). Not used by the consecutive window.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.settings.minimum_calls = calls;
        self
    }

    /// A call that takes this long or longer, to the end of its body, is
    /// slow (default: slow calls are not judged). Costs two clock reads per
    /// call.
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.settings.slow_call = Some(duration);
        self
    }

    /// A call whose first body byte takes this long or longer is slow
    /// (default: not judged). For streams, where the end may rightly come
    /// late but the first token should not.
    pub fn slow_first_byte(mut self, duration: Duration) -> Self {
        self.settings.slow_first_byte = Some(duration);
        self
    }

    /// How long the circuit stays open before trial calls (default 30 s).
    pub fn open_wait(mut self, wait: Duration) -> Self {
        self.settings.open_wait = wait;
        self
    }

    /// Each reopening (a failed trial) multiplies the open wait by `factor`,
    /// up to `max` (default: factor 1, the wait doesn't grow). The wait goes
    /// back to [`open_wait`](Self::open_wait) when the circuit closes.
    pub fn open_wait_growth(mut self, factor: f64, max: Duration) -> Self {
        self.settings.growth = factor;
        self.settings.max_open_wait = max;
        self
    }

    /// Randomness added to each open wait (default none).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.settings.jitter = jitter;
        self
    }

    /// How many trial calls half-open lets through; all must succeed to
    /// close, one failure reopens (default 3).
    pub fn half_open_trials(mut self, trials: u32) -> Self {
        self.settings.trials = trials;
        self
    }

    /// How long a trial call may hold its slot: a trial that doesn't finish
    /// in that time gives its slot to another call (default 60 s). A trial
    /// that is dropped gives it back at once.
    pub fn trial_lease(mut self, lease: Duration) -> Self {
        self.settings.trial_lease = lease;
        self
    }

    /// The most breakers a keyed layer keeps (default 1,024). When full, the
    /// least recently used closed breakers are forgotten first, an eighth of
    /// the bound at once (so a run of new keys scans the table once per that
    /// many keys); with none closed, the least recently used one.
    pub fn max_breakers(mut self, max: usize) -> Self {
        self.settings.max_breakers = max;
        self
    }

    /// A closed breaker unused for this long (up to twice as long) is
    /// forgotten (default 10 min).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.settings.idle_timeout = timeout;
        self
    }

    /// Whether metrics carry the breaker's key as a `key` label (default
    /// `true`). The number of keys is bounded by
    /// [`max_breakers`](Self::max_breakers); turn this off when keys come
    /// from clients and churn.
    pub fn metrics_key_label(mut self, on: bool) -> Self {
        self.settings.key_label = on;
        self
    }

    /// Calls `callback` at every state change (after the breaker's lock is
    /// released: the callback may read the handle).
    pub fn on_transition<T>(mut self, callback: T) -> Self
    where
        T: Fn(&Transition<'_>) + Send + Sync + 'static,
    {
        self.settings.on_transition = Some(Arc::new(callback));
        self
    }

    /// One breaker per key, found by `keyer` (see [`crate::key`]).
    pub fn keyed_by<K2: KeyExtractor>(self, keyer: K2) -> CircuitBreakerBuilder<K2, C, F> {
        CircuitBreakerBuilder {
            settings: self.settings,
            keyed: true,
            keyer,
            classifier: self.classifier,
            fallback: self.fallback,
            remote: self.remote,
        }
    }

    /// Classifies outcomes with `classifier` (see [`crate::classify`]).
    pub fn classify<C2: Classify + Clone>(self, classifier: C2) -> CircuitBreakerBuilder<K, C2, F> {
        CircuitBreakerBuilder {
            settings: self.settings,
            keyed: self.keyed,
            keyer: self.keyer,
            classifier,
            fallback: self.fallback,
            remote: self.remote,
        }
    }

    /// Refused calls go to `service` (see [`crate::fallback`]).
    pub fn fallback<F2: Clone>(self, service: F2) -> CircuitBreakerBuilder<K, C, OnRefusal<F2>> {
        CircuitBreakerBuilder {
            settings: self.settings,
            keyed: self.keyed,
            keyer: self.keyer,
            classifier: self.classifier,
            fallback: OnRefusal::new(service),
            remote: self.remote,
        }
    }

    /// Refused calls, and calls that fail at their head, go to `service`.
    /// Each call keeps a copy of its request until its head arrives (see
    /// [`OnRefusalOrFailure`]).
    pub fn fallback_on_failure<F2: Clone>(
        self,
        service: F2,
    ) -> CircuitBreakerBuilder<K, C, OnRefusalOrFailure<F2>> {
        CircuitBreakerBuilder {
            settings: self.settings,
            keyed: self.keyed,
            keyer: self.keyer,
            classifier: self.classifier,
            fallback: OnRefusalOrFailure::new(service),
            remote: self.remote,
        }
    }

    /// Shares the breakers' state through Redis (see [`crate::RedisStore`]).
    #[cfg(feature = "redis")]
    pub fn redis(mut self, store: crate::RedisStore) -> Self {
        self.remote = Some(store.into_factory());
        self
    }

    /// Checks the settings and builds the layer. With shared state, this
    /// starts its synchronisation task, so it must run inside a Tokio
    /// runtime.
    pub fn build(self) -> Result<CircuitBreakerLayer<K, C, F>, ConfigError> {
        self.settings.validate()?;
        let settings = Arc::new(self.settings);
        let registry = Arc::new(Registry::new(settings, self.keyed, self.remote.clone()));
        if let Some(remote) = &self.remote {
            remote.start(Arc::downgrade(&registry))?;
        }
        Ok(CircuitBreakerLayer {
            registry,
            keyer: self.keyer,
            classifier: self.classifier,
            fallback: self.fallback,
        })
    }
}
