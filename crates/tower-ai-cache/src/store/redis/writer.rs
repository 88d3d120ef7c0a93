//! The task that writes a leader's recording to Redis as it passes, off the
//! client's path.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::L2;
use crate::entry::Entry;
use crate::key::CacheKey;
use crate::store::{END_ABORTED, END_STORED};

/// What a leader sends to the task that writes its recording to Redis, in
/// order.
#[derive(Debug)]
pub(crate) enum Write {
    Head(Bytes),
    Data(Bytes),
    Store(Arc<Entry>, Duration),
    End(&'static str),
}

/// Writes a leader's recording to Redis as it passes, off the client's path:
/// the head and data chunks into the stream (batched while Redis is busy),
/// then the value, or the end marker.
pub(crate) fn spawn_writer(
    l2: Arc<L2>,
    key: CacheKey,
    owner: String,
) -> Option<mpsc::UnboundedSender<Write>> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Write>();
    handle.spawn(async move {
        let mut streaming = true;
        let mut pending: Option<Write> = None;
        loop {
            let Some(message) = pending.take().or(rx.recv().await) else {
                // The leader went away without an end: release the lock.
                l2.end(&key, &owner, END_ABORTED).await;
                return;
            };
            match message {
                Write::Head(head) => {
                    if streaming {
                        streaming = matches!(l2.append(&key, &owner, "h", head).await, Ok(true));
                    }
                }
                Write::Data(first) => {
                    let mut batch = bytes::BytesMut::from(first.as_ref());
                    while let Ok(next) = rx.try_recv() {
                        match next {
                            Write::Data(more) => batch.extend_from_slice(&more),
                            other => {
                                pending = Some(other);
                                break;
                            }
                        }
                    }
                    if streaming {
                        streaming =
                            matches!(l2.append(&key, &owner, "d", batch.freeze()).await, Ok(true));
                    }
                }
                Write::Store(entry, keep) => {
                    let end = if streaming { END_STORED } else { END_ABORTED };
                    if l2
                        .store(&key, &entry, keep, Some(&owner), end)
                        .await
                        .is_ok()
                    {
                        metrics::counter!("tower_ai_cache_stores_total", "layer" => "l2")
                            .increment(1);
                    } else {
                        l2.end(&key, &owner, END_ABORTED).await;
                    }
                    return;
                }
                Write::End(end) => {
                    let end = if streaming { end } else { END_ABORTED };
                    l2.end(&key, &owner, end).await;
                    return;
                }
            }
        }
    });
    Some(tx)
}
