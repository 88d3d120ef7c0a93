//! Spend limits per client key, counted across every replica.
//!
//! A call reserves its estimated cost before it goes upstream (one atomic
//! script: refused once the period's spend has reached the budget) and
//! settles the difference when its answer reports the real usage. So
//! replicas together never overspend by more than one request's estimate
//! each. Amounts are whole nano-dollars; periods are fixed UTC windows read
//! from Redis's clock. While Redis is unreachable each replica counts in
//! memory, as the other layers do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tower_ai_core::redis::{Degrade, KeySpace, Script, Tag};

use crate::config::Budget;

const RESERVE: &str = r"
local t = redis.call('TIME')
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local since = tonumber(t[1]) - tonumber(ARGV[3])
local window = math.floor(since / period)
local left = period - (since % period)
local spent = 0
if tonumber(redis.call('HGET', KEYS[1], 'w') or '-1') == window then
  spent = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
end
if ARGV[4] == 'peek' then return {1, spent, left, window} end
if spent >= limit then return {0, spent, left, window} end
spent = spent + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'w', window, 's', spent)
redis.call('EXPIRE', KEYS[1], left + 60)
return {1, spent, left, window}
";

const SETTLE: &str = r"
if tonumber(redis.call('HGET', KEYS[1], 'w') or '-1') ~= tonumber(ARGV[1]) then return 0 end
local spent = tonumber(redis.call('HGET', KEYS[1], 's') or '0') + tonumber(ARGV[2])
if spent < 0 then spent = 0 end
redis.call('HSET', KEYS[1], 's', spent)
return 1
";

/// Each key's window and spend, counted on this replica.
type Local = Mutex<HashMap<Arc<str>, (u64, u64)>>;

/// The budget counters.
#[derive(Debug, Clone)]
pub(crate) struct Budgets {
    memory: Arc<Local>,
    redis: Option<Shared>,
}

#[derive(Debug, Clone)]
struct Shared {
    client: fred::clients::Client,
    degrade: Degrade,
    keys: KeySpace,
    reserve: Arc<Script>,
    settle: Arc<Script>,
}

/// A granted reservation, to settle when the answer's cost is known.
#[derive(Debug, Clone)]
pub(crate) struct Reservation {
    key: Arc<str>,
    window: u64,
    /// What was reserved, in nano-dollars.
    pub(crate) estimate: u64,
    /// Whether it was counted in Redis (else in memory).
    shared: bool,
}

/// What a reservation found.
#[derive(Debug)]
pub(crate) enum Reserve {
    /// Go on; settle it afterwards.
    Granted(Reservation),
    /// The period's spend has reached the budget.
    Refused {
        /// Until the period ends.
        retry_after: Duration,
    },
}

/// A key's spend in the current period.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spend {
    pub(crate) nanos: u64,
    pub(crate) resets_in: Duration,
}

impl Budgets {
    pub(crate) fn new(redis: Option<(fred::clients::Client, Degrade)>) -> Self {
        Self {
            memory: Arc::default(),
            redis: redis.map(|(client, degrade)| Shared {
                client,
                degrade,
                keys: KeySpace::new("tower-ai", "gateway"),
                reserve: Arc::new(Script::new(RESERVE)),
                settle: Arc::new(Script::new(SETTLE)),
            }),
        }
    }

    /// Reserves `estimate` nano-dollars of `key`'s budget.
    pub(crate) async fn reserve(&self, key: &Arc<str>, budget: Budget, estimate: u64) -> Reserve {
        let limit = usd_to_nanos(budget.usd);
        if let Some(shared) = &self.redis {
            let reply = shared
                .degrade
                .call(shared.reserve.call::<Vec<i64>, _, _, _>(
                    &shared.client,
                    shared.keys.key(&Tag::digest(key.as_bytes()), "budget"),
                    vec![
                        limit.to_string(),
                        budget.per.length().as_secs().to_string(),
                        budget.per.offset().to_string(),
                        estimate.to_string(),
                    ],
                ))
                .await;
            match reply.as_deref() {
                Ok([granted, _spent, left, window]) => {
                    let window = u64::try_from(*window).unwrap_or_default();
                    return if *granted == 1 {
                        Reserve::Granted(Reservation {
                            key: key.clone(),
                            window,
                            estimate,
                            shared: true,
                        })
                    } else {
                        Reserve::Refused {
                            retry_after: Duration::from_secs(
                                u64::try_from(*left).unwrap_or(1).max(1),
                            ),
                        }
                    };
                }
                Ok(other) => {
                    tracing::warn!(reply = ?other, "unexpected budget script reply; counting in memory");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "budget in memory while Redis is unavailable")
                }
            }
        }
        self.reserve_in_memory(key, budget, limit, estimate)
    }

    fn reserve_in_memory(
        &self,
        key: &Arc<str>,
        budget: Budget,
        limit: u64,
        estimate: u64,
    ) -> Reserve {
        let (window, left) = window_now(budget);
        let mut memory = self.memory.lock();
        let entry = memory.entry(key.clone()).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        if entry.1 >= limit {
            return Reserve::Refused { retry_after: left };
        }
        entry.1 = entry.1.saturating_add(estimate);
        Reserve::Granted(Reservation {
            key: key.clone(),
            window,
            estimate,
            shared: false,
        })
    }

    /// Settles a reservation at the answer's real cost.
    pub(crate) async fn settle(&self, reservation: Reservation, actual: u64) {
        let delta = i128::from(actual) - i128::from(reservation.estimate);
        if delta == 0 {
            return;
        }
        if reservation.shared
            && let Some(shared) = &self.redis
        {
            let settled = shared
                .degrade
                .call(
                    shared.settle.call::<i64, _, _, _>(
                        &shared.client,
                        shared
                            .keys
                            .key(&Tag::digest(reservation.key.as_bytes()), "budget"),
                        vec![reservation.window.to_string(), delta.to_string()],
                    ),
                )
                .await;
            if let Err(e) = settled {
                tracing::warn!(error = %e, "a budget reservation could not be settled");
            }
            return;
        }
        let mut memory = self.memory.lock();
        if let Some(entry) = memory.get_mut(&reservation.key)
            && entry.0 == reservation.window
        {
            entry.1 = u64::try_from((i128::from(entry.1) + delta).max(0)).unwrap_or(u64::MAX);
        }
    }

    /// `key`'s spend in the current period.
    pub(crate) async fn spent(&self, key: &Arc<str>, budget: Budget) -> Spend {
        if let Some(shared) = &self.redis {
            let reply = shared
                .degrade
                .call(shared.reserve.call::<Vec<i64>, _, _, _>(
                    &shared.client,
                    shared.keys.key(&Tag::digest(key.as_bytes()), "budget"),
                    vec![
                        usd_to_nanos(budget.usd).to_string(),
                        budget.per.length().as_secs().to_string(),
                        budget.per.offset().to_string(),
                        "peek".to_owned(),
                    ],
                ))
                .await;
            if let Ok([_, spent, left, _]) = reply.as_deref() {
                return Spend {
                    nanos: u64::try_from(*spent).unwrap_or_default(),
                    resets_in: Duration::from_secs(u64::try_from(*left).unwrap_or_default()),
                };
            }
        }
        let (window, resets_in) = window_now(budget);
        let nanos = self
            .memory
            .lock()
            .get(key)
            .filter(|(w, _)| *w == window)
            .map_or(0, |(_, s)| *s);
        Spend { nanos, resets_in }
    }
}

/// Dollars as whole nano-dollars.
pub(crate) fn usd_to_nanos(usd: f64) -> u64 {
    (usd * 1e9).round().clamp(0.0, u64::MAX as f64) as u64
}

/// The current window of `budget`'s period by this machine's clock, and
/// the time left in it.
fn window_now(budget: Budget) -> (u64, Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let period = budget.per.length().as_secs().max(1);
    let since = now.saturating_sub(budget.per.offset());
    (since / period, Duration::from_secs(period - since % period))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Period;

    #[tokio::test]
    async fn refuses_once_the_budget_is_spent_and_settles_to_the_real_cost() {
        let budgets = Budgets::new(None);
        let key: Arc<str> = "team-a".into();
        let budget = Budget {
            usd: 1e-6,
            per: Period::Day,
        };
        let Reserve::Granted(first) = budgets.reserve(&key, budget, 600).await else {
            panic!("the first call fits")
        };
        let Reserve::Granted(second) = budgets.reserve(&key, budget, 600).await else {
            panic!("600 nano-dollars spent of 1,000: the second call may start")
        };
        assert!(matches!(
            budgets.reserve(&key, budget, 600).await,
            Reserve::Refused { retry_after } if retry_after <= Duration::from_secs(86_400)
        ));
        // Both answers cost less than estimated: the budget has room again.
        budgets.settle(first, 100).await;
        budgets.settle(second, 100).await;
        assert_eq!(budgets.spent(&key, budget).await.nanos, 200);
        assert!(matches!(
            budgets.reserve(&key, budget, 600).await,
            Reserve::Granted(_)
        ));
    }
}
