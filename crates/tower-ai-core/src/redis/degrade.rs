use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How a [`Degrade`] times calls out and backs off.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DegradeConfig {
    /// The longest a Redis call may take before it counts as failed (default
    /// 50 ms).
    pub timeout: Duration,
    /// How long callers stay on their fallback after the first failure
    /// before one probe tries Redis again (default 250 ms).
    pub backoff: Duration,
    /// The backoff doubles after each failed probe, up to this (default 5 s).
    pub max_backoff: Duration,
}

impl Default for DegradeConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(50),
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl DegradeConfig {
    /// Sets the call timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the first backoff and its cap.
    #[must_use]
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max.max(first);
        self
    }
}

/// The health of a Redis connection as the layers see it.
///
/// Every Redis call a layer makes goes through [`Degrade::call`], which puts
/// a timeout on it. After a failure or a timeout the state turns *down*: for a
/// backoff period, calls are refused at once with
/// [`Unavailable::Degraded`] — without touching Redis — and the layer uses its
/// local fallback (memory limiter, L1 cache, local breaker, local store).
/// When the backoff has passed, exactly one call is let through as a probe;
/// if it succeeds the state is *up* again, if not the backoff doubles (up to a
/// cap). Each switch is logged once and counted in the
/// `tower_ai_redis_fallback_total` / `tower_ai_redis_recovered_total`
/// counters, with the `tower_ai_redis_up` gauge, all labelled by component.
///
/// Cloning is cheap and clones share the state. Checking it costs one atomic
/// load while Redis is up.
#[derive(Clone)]
pub struct Degrade {
    inner: Arc<Inner>,
}

struct Inner {
    component: Cow<'static, str>,
    config: DegradeConfig,
    epoch: Instant,
    down: AtomicBool,
    probing: AtomicBool,
    /// Nanoseconds since `epoch`.
    down_since: AtomicU64,
    /// Nanoseconds since `epoch`.
    next_probe: AtomicU64,
    backoff: AtomicU64,
    recoveries: AtomicU64,
}

/// Why a call through [`Degrade::call`] gave no answer from Redis.
#[derive(Debug)]
#[non_exhaustive]
pub enum Unavailable {
    /// Redis is marked down and the backoff hasn't passed: nothing was sent.
    Degraded {
        /// When the next probe may run.
        retry_in: Duration,
    },
    /// The call took longer than the configured timeout.
    Timeout,
    /// Redis answered with an error, or the connection failed.
    Failed(fred::error::Error),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Degraded { retry_in } => write!(
                f,
                "Redis is marked down; next probe in {} ms",
                retry_in.as_millis()
            ),
            Self::Timeout => f.write_str("the Redis call timed out"),
            Self::Failed(e) => write!(f, "the Redis call failed: {e}"),
        }
    }
}

impl std::error::Error for Unavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// A snapshot of a [`Degrade`] state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Calls go to Redis.
    Up,
    /// Calls use the fallback.
    Down {
        /// How long Redis has been marked down.
        since: Duration,
        /// When the next probe may run (zero: the next call probes).
        next_probe_in: Duration,
    },
}

impl Health {
    /// `"up"` or `"down"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down { .. } => "down",
        }
    }
}

impl Degrade {
    /// A new state, up, for one component (e.g. `"ratelimit"`), which names
    /// it in logs and metrics.
    pub fn new(component: impl Into<Cow<'static, str>>, config: DegradeConfig) -> Self {
        let component = component.into();
        metrics::gauge!("tower_ai_redis_up", "component" => component.clone()).set(1.0);
        Self {
            inner: Arc::new(Inner {
                component,
                epoch: Instant::now(),
                down: AtomicBool::new(false),
                probing: AtomicBool::new(false),
                down_since: AtomicU64::new(0),
                next_probe: AtomicU64::new(0),
                backoff: AtomicU64::new(nanos(config.backoff)),
                recoveries: AtomicU64::new(0),
                config,
            }),
        }
    }

    /// The component this state belongs to.
    pub fn component(&self) -> &str {
        &self.inner.component
    }

    /// The configured call timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.config.timeout
    }

    /// Whether calls currently go to Redis.
    pub fn is_up(&self) -> bool {
        !self.inner.down.load(Ordering::Acquire)
    }

    /// How many times Redis has come back after being marked down. A layer
    /// that keeps a local copy of shared state (an L1 cache) compares this
    /// with the value it last saw, and drops its copy when it changed, since
    /// it may have missed invalidations meanwhile.
    pub fn recoveries(&self) -> u64 {
        self.inner.recoveries.load(Ordering::Acquire)
    }

    /// The current state.
    pub fn health(&self) -> Health {
        if self.is_up() {
            return Health::Up;
        }
        let now = self.now();
        let since = self.inner.down_since.load(Ordering::Acquire);
        let next = self.inner.next_probe.load(Ordering::Acquire);
        Health::Down {
            since: Duration::from_nanos(now.saturating_sub(since)),
            next_probe_in: Duration::from_nanos(next.saturating_sub(now)),
        }
    }

    /// Runs one Redis call under the timeout, or refuses it at once while
    /// Redis is marked down.
    ///
    /// While down, `call` is not polled at all unless this call is the probe.
    pub async fn call<T, F>(&self, call: F) -> Result<T, Unavailable>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        self.call_within(self.inner.config.timeout, call).await
    }

    /// [`Degrade::call`] with a timeout of its own, for a call that waits
    /// by design (a blocking read such as `XREAD BLOCK`), so that it shares
    /// this state's health without its timeout.
    pub async fn call_within<T, F>(&self, timeout: Duration, call: F) -> Result<T, Unavailable>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        let probe = if self.inner.down.load(Ordering::Acquire) {
            match self.try_probe() {
                Ok(probe) => Some(probe),
                Err(retry_in) => return Err(Unavailable::Degraded { retry_in }),
            }
        } else {
            None
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(value)) => {
                self.succeeded();
                Ok(value)
            }
            Ok(Err(error)) => {
                self.failed(probe.is_some(), &error);
                Err(Unavailable::Failed(error))
            }
            Err(_) => {
                self.failed(probe.is_some(), &"timed out");
                Err(Unavailable::Timeout)
            }
        }
    }

    /// Marks Redis down from outside a call (e.g. when the client reports a
    /// lost connection), as if a call had failed.
    pub fn mark_down(&self, reason: &dyn fmt::Display) {
        self.failed(false, reason);
    }

    fn try_probe(&self) -> Result<ProbeGuard<'_>, Duration> {
        let now = self.now();
        let next = self.inner.next_probe.load(Ordering::Acquire);
        if now < next {
            return Err(Duration::from_nanos(next - now));
        }
        self.inner
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ProbeGuard(&self.inner.probing))
            // Another call is probing: wait for its verdict.
            .map_err(|_| self.inner.config.timeout)
    }

    fn succeeded(&self) {
        let inner = &self.inner;
        if inner.down.load(Ordering::Acquire)
            && inner
                .down
                .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            inner
                .backoff
                .store(nanos(inner.config.backoff), Ordering::Release);
            inner.recoveries.fetch_add(1, Ordering::AcqRel);
            let down_for = Duration::from_nanos(
                self.now()
                    .saturating_sub(inner.down_since.load(Ordering::Acquire)),
            );
            tracing::info!(
                component = %inner.component,
                down_ms = down_for.as_millis() as u64,
                "Redis is back; leaving the local fallback"
            );
            metrics::counter!("tower_ai_redis_recovered_total", "component" => inner.component.clone())
                .increment(1);
            metrics::gauge!("tower_ai_redis_up", "component" => inner.component.clone()).set(1.0);
        }
    }

    fn failed(&self, was_probe: bool, error: &dyn fmt::Display) {
        let inner = &self.inner;
        let now = self.now();
        if !inner.down.load(Ordering::Acquire) {
            let backoff = nanos(inner.config.backoff);
            inner.next_probe.store(now + backoff, Ordering::Release);
            inner.down_since.store(now, Ordering::Release);
            if inner
                .down
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                inner.backoff.store(backoff, Ordering::Release);
                tracing::warn!(
                    component = %inner.component,
                    error = %error,
                    "Redis unavailable; using the local fallback"
                );
                metrics::counter!("tower_ai_redis_fallback_total", "component" => inner.component.clone())
                    .increment(1);
                metrics::gauge!("tower_ai_redis_up", "component" => inner.component.clone())
                    .set(0.0);
            }
        } else if was_probe {
            let max = nanos(inner.config.max_backoff);
            let backoff = inner
                .backoff
                .load(Ordering::Acquire)
                .saturating_mul(2)
                .min(max);
            inner.backoff.store(backoff, Ordering::Release);
            inner.next_probe.store(now + backoff, Ordering::Release);
            tracing::debug!(
                component = %inner.component,
                error = %error,
                next_probe_ms = backoff / 1_000_000,
                "Redis probe failed"
            );
        }
    }

    fn now(&self) -> u64 {
        nanos(self.inner.epoch.elapsed())
    }
}

impl fmt::Debug for Degrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Degrade")
            .field("component", &self.inner.component)
            .field("health", &self.health())
            .finish()
    }
}

/// Frees the probe slot when the probe ends, however it ends (even when the
/// caller drops it midway), so the state can never stick.
struct ProbeGuard<'a>(&'a AtomicBool);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use fred::error::{Error, ErrorKind};

    use super::*;

    fn io_error() -> Error {
        Error::new(ErrorKind::IO, "connection refused")
    }

    fn config() -> DegradeConfig {
        DegradeConfig::default()
            .timeout(Duration::from_millis(50))
            .backoff(Duration::from_millis(100), Duration::from_millis(400))
    }

    #[tokio::test(start_paused = true)]
    async fn failure_backoff_probe_and_recovery() {
        let d = Degrade::new("test", config());
        let polled = AtomicUsize::new(0);
        let count = || {
            polled.fetch_add(1, Ordering::SeqCst);
        };

        assert!(matches!(d.call(async { Ok(1) }).await, Ok(1)));
        assert!(matches!(
            d.call(async { Err::<(), _>(io_error()) }).await,
            Err(Unavailable::Failed(_))
        ));
        assert_eq!(d.health().as_str(), "down");

        // Within the backoff: refused without polling the call.
        let r = d
            .call(async {
                count();
                Ok(())
            })
            .await;
        assert!(
            matches!(r, Err(Unavailable::Degraded { retry_in }) if retry_in == Duration::from_millis(100))
        );
        assert_eq!(polled.load(Ordering::SeqCst), 0);

        // The probe fails: the backoff doubles.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(d.call(async { Err::<(), _>(io_error()) }).await.is_err());
        assert!(matches!(
            d.health(),
            Health::Down { next_probe_in, .. } if next_probe_in == Duration::from_millis(200)
        ));
        tokio::time::advance(Duration::from_millis(199)).await;
        assert!(matches!(
            d.call(async { Ok(()) }).await,
            Err(Unavailable::Degraded { .. })
        ));

        // The next probe succeeds: up again, backoff reset.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            d.call(async {
                count();
                Ok(())
            })
            .await
            .is_ok()
        );
        assert_eq!(polled.load(Ordering::SeqCst), 1);
        assert_eq!(d.health(), Health::Up);
        assert_eq!(d.recoveries(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_call_times_out_and_degrades() {
        let d = Degrade::new("test", config());
        let start = Instant::now();
        let r = d
            .call(async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(())
            })
            .await;
        assert!(matches!(r, Err(Unavailable::Timeout)));
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert!(!d.is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_is_capped() {
        let d = Degrade::new("test", config());
        let _ = d.call(async { Err::<(), _>(io_error()) }).await;
        for _ in 0..5 {
            if let Health::Down { next_probe_in, .. } = d.health() {
                tokio::time::advance(next_probe_in).await;
            }
            let _ = d.call(async { Err::<(), _>(io_error()) }).await;
        }
        assert!(matches!(
            d.health(),
            Health::Down { next_probe_in, .. } if next_probe_in == Duration::from_millis(400)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_at_a_time_and_a_dropped_probe_frees_its_slot() {
        let d = Degrade::new("test", config());
        let _ = d.call(async { Err::<(), _>(io_error()) }).await;
        tokio::time::advance(Duration::from_millis(100)).await;

        let probe = d.call(std::future::pending::<Result<(), Error>>());
        let mut probe = Box::pin(probe);
        // Start the probe, then see a second call refused while it runs.
        assert!(futures_util::poll!(probe.as_mut()).is_pending());
        assert!(matches!(
            d.call(async { Ok(()) }).await,
            Err(Unavailable::Degraded { .. })
        ));
        drop(probe);
        assert!(d.call(async { Ok(()) }).await.is_ok());
        assert!(d.is_up());
    }
}
