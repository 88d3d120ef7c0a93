//! Polling a condition up to a bound.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`eventually`] checks: its checks are cheap reads of local
/// state, and a fine grain keeps short bounds (100 ms) meaningful.
const POLL: Duration = Duration::from_millis(2);

/// How often [`eventually_async`] checks: its checks may cross a socket.
const POLL_ASYNC: Duration = Duration::from_millis(10);

/// Polls `check` until it holds, for at most `within`: the time it took
/// when it held, `None` when it never did.
///
/// Give `within` generously (a loaded, shared test machine is slow) unless
/// the bound is itself what the test asserts, and assert on the answer:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// let took = test_support::eventually(Duration::from_secs(5), || true).await;
/// assert!(took.is_some(), "never held");
/// assert!(test_support::eventually(Duration::from_millis(20), || false).await.is_none());
/// # }
/// ```
///
/// The last check runs at or after the bound, so a condition that holds
/// by then is seen.
#[must_use = "assert on the answer: `None` means the condition never held"]
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        let elapsed = start.elapsed();
        if elapsed >= within {
            return None;
        }
        tokio::time::sleep(POLL.min(within - elapsed)).await;
    }
}

/// [`eventually`] for a check that has to await (a Redis read, a request).
#[must_use = "assert on the answer: `None` means the condition never held"]
pub async fn eventually_async<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        let elapsed = start.elapsed();
        if elapsed >= within {
            return None;
        }
        tokio::time::sleep(POLL_ASYNC.min(within - elapsed)).await;
    }
}
