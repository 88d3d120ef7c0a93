//! Following another replica's answer in flight, through its recording in a
//! Redis Stream (`XREAD BLOCK`), into this process's flight.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::entry::{Entry, Freshness, Lifetime, now_ms};
use crate::flight::{End, LeadGuard, Source};
use crate::judge::judge;
use crate::key::CacheKey;
use crate::store::memory::L1;
use crate::store::redis::L2;
use crate::store::redis::decode::Item;
use crate::store::{END_STORED, END_UNSTORED};
use crate::tag::TagId;

/// What following needs.
pub(crate) struct Following {
    pub(crate) l2: Arc<L2>,
    pub(crate) l1: L1,
    pub(crate) key: CacheKey,
    pub(crate) guard: LeadGuard,
    pub(crate) ttl: Duration,
    pub(crate) grace: Duration,
    pub(crate) tags: Vec<TagId>,
    pub(crate) idle_timeout: Duration,
}

/// Reads the other replica's recording into the flight until it ends; the
/// flight's followers (this replica's identical requests) answer from it.
///
/// - a streamed answer's head and chunks are passed on as they arrive;
/// - at the end marker, a stored answer is taken into L1 (rebuilt from the
///   recording for a stream, else read from L2);
/// - when nothing arrives, the value and the lock are probed: a value that
///   appeared answers, a lock that vanished without an end (the leader died)
///   lets a waiter lead a new flight.
pub(crate) async fn follow_remote(f: Following) {
    let Following {
        l2,
        l1,
        key,
        guard,
        ttl,
        grace,
        tags,
        idle_timeout,
    } = f;
    let flight = guard.flight().clone();
    let conn = l2.blocking_connection().await;
    let client = conn.as_ref().and_then(|c| c.client());
    let mut last = "0".to_owned();
    let mut last_progress = Instant::now();
    let streaming = || flight.head().is_some_and(|h| h.is_stream());
    loop {
        let items = match l2.read(&key, &last, client).await {
            Ok(items) => items,
            Err(_) => {
                let end = if streaming() {
                    End::Aborted
                } else {
                    End::Abandoned { retry: false }
                };
                guard.finish(end);
                return;
            }
        };
        if items.is_empty() {
            if last_progress.elapsed() > idle_timeout {
                guard.finish(End::Abandoned { retry: false });
                return;
            }
            match l2.probe(&key).await {
                Ok((true, _)) => {
                    if let Ok(Some(entry)) = l2.get(&key).await
                        && matches!(entry.lifetime.freshness(now_ms()), Freshness::Fresh(_))
                    {
                        let entry = Arc::new(entry);
                        l1.insert(key, entry.clone());
                        guard.finish(End::Stored(entry, Source::Cache));
                        return;
                    }
                }
                Ok((false, true)) => {}
                Ok((false, false)) => {
                    // The leader is gone without an end.
                    let end = if streaming() {
                        End::Aborted
                    } else {
                        End::Abandoned { retry: true }
                    };
                    guard.finish(end);
                    return;
                }
                Err(_) => {
                    guard.finish(End::Abandoned { retry: false });
                    return;
                }
            }
            continue;
        }
        last_progress = Instant::now();
        for (id, item) in items {
            last = id;
            match item {
                Item::Head(head) => flight.set_head(Arc::new(head)),
                Item::Data(data) => {
                    if !flight.push(data) {
                        // Over the recording bound: the flight is aborted.
                        drop(guard);
                        return;
                    }
                }
                Item::End(end) => {
                    let end = match end.as_str() {
                        END_STORED => {
                            match stored_entry(&l2, &flight, key, ttl, grace, &tags).await {
                                Some(entry) => {
                                    l1.insert(key, entry.clone());
                                    End::Stored(entry, Source::Upstream)
                                }
                                None if streaming() => End::Finished,
                                None => End::Abandoned { retry: false },
                            }
                        }
                        END_UNSTORED if streaming() => End::Finished,
                        END_UNSTORED => End::Abandoned { retry: false },
                        _ if streaming() => End::Aborted,
                        _ => End::Abandoned { retry: true },
                    };
                    guard.finish(end);
                    return;
                }
            }
        }
    }
}

/// The answer the other replica stored: rebuilt from the recording for a
/// stream (no second read), else read from L2.
async fn stored_entry(
    l2: &L2,
    flight: &crate::flight::Flight,
    key: CacheKey,
    ttl: Duration,
    grace: Duration,
    tags: &[TagId],
) -> Option<Arc<Entry>> {
    match flight.head() {
        Some(head) if head.is_stream() => {
            let (body, trailers) = flight.body();
            // The leader judged it storable (it ended "stored"), length
            // limits included.
            let tokens = judge(&head, &body, trailers.as_ref(), None, None, true).ok()?;
            Some(Arc::new(Entry {
                head,
                body,
                trailers,
                lifetime: Lifetime::new(ttl, grace, Duration::ZERO),
                tokens,
                tags: tags.to_vec(),
            }))
        }
        _ => l2.get_stored(&key).await.ok().flatten().map(Arc::new),
    }
}
