//! Remote tails: one `XREAD BLOCK` loop per remote stream and process, on a
//! connection of its own (or polling with non-blocking `XREAD`s when none
//! is free), feeding the local copy that this process's readers share.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, StreamsInterface};
use fred::types::Value;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::inner::{Inner, TailHandle};
use super::reply::{Entry, parse_xread};
use crate::id::StreamId;
use crate::store::{StoreError, StoredEvent, Subscription};

impl Inner {
    /// Whether this process's copy of `id` is complete from its start to
    /// its end so far: the stream is generated here, or its remote tail is
    /// running (or has ended).
    pub(super) fn local_is_authoritative(&self, id: &StreamId) -> Option<bool> {
        let tails = self.tails.lock();
        if !self.local.contains(id) {
            return None;
        }
        match tails.get(id) {
            // Generated here, or a mirror whose tail ran to the end.
            None => Some(true),
            // A mirror: trusted for what it has, but it may lag behind.
            Some(handle) => handle.upgrade().map(|_| false),
        }
    }

    /// Reads the live tail of `id` after `cursor` from the local copy:
    /// the generating process's, or a mirror fed by a remote tail (started
    /// now if none runs). `None` when the local copy starts after
    /// `cursor + 1`: more backlog must be read from Redis first.
    pub(super) fn attach_local(
        self: &Arc<Self>,
        id: &StreamId,
        cursor: u64,
    ) -> Result<Option<LocalTail>, StoreError> {
        let mut tails = self.tails.lock();
        let entry = tails.get(id).map(|weak| weak.upgrade());
        let usable = match &entry {
            None => self.local.contains(id).then_some(None),
            Some(Some(handle)) => Some(Some(handle.clone())),
            // A tail that is stopping: start another.
            Some(None) => None,
        };
        if let Some(handle) = usable {
            return match self.local.subscribe_from(id, cursor) {
                Ok(subscription) => Ok(Some(LocalTail {
                    subscription,
                    _handle: handle,
                })),
                Err(StoreError::Lagged) => Ok(None),
                Err(error) => Err(error),
            };
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(StoreError::Unavailable(
                "no async runtime for the tail".into(),
            ));
        };
        self.local.create_at(id, cursor + 1);
        let handle = Arc::new(TailHandle);
        tails.insert(*id, Arc::downgrade(&handle));
        drop(tails);
        runtime.spawn(run_tail(self.clone(), *id, cursor, handle.clone()));
        let subscription = self.local.subscribe_from(id, cursor)?;
        Ok(Some(LocalTail {
            subscription,
            _handle: Some(handle),
        }))
    }

    /// A dedicated connection for blocking reads, if a slot is free.
    async fn blocking_client(&self) -> Option<(Client, OwnedSemaphorePermit)> {
        let permit = self.tail_slots.clone().try_acquire_owned().ok()?;
        let idle = self.blocking.lock().pop();
        let client = match idle {
            Some(client) => client,
            None => {
                let client = self.client.clone_new();
                let _task = client.connect();
                let connected =
                    tokio::time::timeout(Duration::from_secs(2), client.wait_for_connect()).await;
                if !matches!(connected, Ok(Ok(()))) {
                    let _ = client.quit().await;
                    return None;
                }
                client
            }
        };
        Some((client, permit))
    }
}

/// A reader switched to the local copy: the subscription, and its hold on
/// the remote tail that feeds it.
pub(super) struct LocalTail {
    pub(super) subscription: Subscription,
    _handle: Option<Arc<TailHandle>>,
}

/// Feeds the local copy of remote stream `id` from Redis, from `cursor`
/// on, while anyone in this process reads it.
async fn run_tail(inner: Arc<Inner>, id: StreamId, mut cursor: u64, handle: Arc<TailHandle>) {
    let key = inner.key(&id);
    let connection = inner.blocking_client().await;
    let block_ms = u64::try_from(inner.block.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut last_entry = Instant::now();
    let mut backoff = Duration::from_millis(50);
    tracing::debug!(stream_id = %id, blocking = connection.is_some(), "remote tail started");
    let finished = loop {
        if Arc::strong_count(&handle) == 1 {
            // Decided under the lock readers take to join the tail, so none
            // joins a copy that is about to go.
            let stop = {
                let mut tails = inner.tails.lock();
                let stop = Arc::strong_count(&handle) == 1;
                if stop {
                    forget_tail(&mut tails, &inner, &id, &handle, false);
                }
                stop
            };
            if stop {
                release(&inner, connection).await;
                tracing::debug!(stream_id = %id, "remote tail stopped: no reader left");
                return;
            }
        }
        if last_entry.elapsed() > inner.max_idle {
            tracing::warn!(stream_id = %id, "a remote stream went quiet; its readers stop");
            break false;
        }
        let from = format!("{cursor}-0");
        let reply = match &connection {
            Some((client, _)) => {
                if !inner.degrade.is_up() {
                    tokio::time::sleep(inner.poll_interval).await;
                }
                // Shares the store's health, with a timeout of its own: the
                // read waits up to `block` by design.
                inner
                    .degrade
                    .call_within(
                        inner.block + inner.degrade.timeout() + Duration::from_secs(1),
                        client.xread::<Value, _, _>(
                            Some(inner.page),
                            Some(block_ms),
                            key.as_str(),
                            from,
                        ),
                    )
                    .await
                    .map_err(|e| e.to_string())
            }
            None => {
                tokio::time::sleep(inner.poll_interval).await;
                inner
                    .degrade
                    .call(inner.client.xread::<Value, _, _>(
                        Some(inner.page),
                        None,
                        key.as_str(),
                        from,
                    ))
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        let entries = match reply.and_then(parse_xread) {
            Ok(entries) => {
                backoff = Duration::from_millis(50);
                entries
            }
            Err(error) => {
                tracing::debug!(stream_id = %id, error = %error, "remote tail read failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if entries.is_empty() {
            continue;
        }
        last_entry = Instant::now();
        let mut events = Vec::new();
        let mut end = None;
        for entry in entries {
            match entry {
                Entry::Start => {}
                Entry::Event(seq, frame) => {
                    cursor = cursor.max(seq);
                    events.push(StoredEvent { seq, frame });
                }
                Entry::End(seq, outcome) => end = Some((seq, outcome)),
            }
        }
        if !events.is_empty()
            && let Err(error) = inner.local.append_now(&id, &events)
        {
            // The copy has a gap (Redis trimmed events meanwhile) or was
            // forgotten: its readers stop, and reconnect.
            tracing::debug!(stream_id = %id, error = %error, "remote tail can't extend the local copy");
            break false;
        }
        if let Some((seq, outcome)) = end {
            break inner.local.finish_now(&id, seq, outcome).is_ok();
        }
    };
    forget_tail(&mut inner.tails.lock(), &inner, &id, &handle, finished);
    release(&inner, connection).await;
    tracing::debug!(stream_id = %id, finished, "remote tail stopped");
}

/// Unregisters a tail that is stopping, if it is still the registered one;
/// an unfinished copy is forgotten (incomplete from now on, nobody may take
/// it for the whole stream, and its readers stop).
fn forget_tail(
    tails: &mut HashMap<StreamId, Weak<TailHandle>>,
    inner: &Inner,
    id: &StreamId,
    handle: &Arc<TailHandle>,
    finished: bool,
) {
    let ours = tails
        .get(id)
        .is_some_and(|weak| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(handle)));
    if ours {
        tails.remove(id);
        if !finished {
            inner.local.remove(id);
        }
    }
}

/// Gives a blocking connection back to the idle pool (or closes it).
async fn release(inner: &Inner, connection: Option<(Client, OwnedSemaphorePermit)>) {
    let Some((client, permit)) = connection else {
        return;
    };
    let kept = {
        let mut idle = inner.blocking.lock();
        (idle.len() < inner.max_tails)
            .then(|| idle.push(client.clone()))
            .is_some()
    };
    drop(permit);
    if !kept {
        let _ = client.quit().await;
    }
}
