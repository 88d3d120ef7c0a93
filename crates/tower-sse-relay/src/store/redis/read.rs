//! A client's read of a stream kept in Redis: the resume point checked,
//! the backlog read in `XRANGE` pages, then the local copy (fed by a remote
//! tail) from where the backlog ends.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use fred::interfaces::StreamsInterface;
use fred::types::Value;
use futures_util::StreamExt;

use super::inner::Inner;
use super::reply::{Entry, parse_entries};
use super::tail::LocalTail;
use crate::id::{ResumeFrom, StreamId};
use crate::store::{ResumeError, StoreError, Subscription};

impl Inner {
    /// Reads stream `id` from Redis: checks the resume point, then hands
    /// the backlog and the live tail to a [`Reader`].
    pub(super) async fn subscribe_redis(
        self: &Arc<Self>,
        id: &StreamId,
        from: ResumeFrom,
    ) -> Result<Subscription, ResumeError> {
        let key = self.key(id);
        let start = match from {
            ResumeFrom::Earliest => "-".to_owned(),
            ResumeFrom::After(event) => format!("({}-0", event.seq()),
        };
        let entries = self
            .range(&key, start)
            .await
            .map_err(ResumeError::Unavailable)?;
        let full = entries.len() as u64 >= self.page;
        let cursor = match from {
            ResumeFrom::Earliest => match entries.iter().find(|e| !matches!(e, Entry::Start)) {
                None if entries.is_empty() => return Err(ResumeError::UnknownStream),
                None => 0,
                Some(Entry::Event(seq, _)) => seq - 1,
                Some(Entry::End(seq, _)) => return finished_or(*seq, *seq),
                Some(Entry::Start) => 0,
            },
            ResumeFrom::After(event) => {
                let after = event.seq();
                match entries.first() {
                    None => {
                        let top = self
                            .degrade
                            .call(
                                self.client
                                    .xrevrange::<Value, _, _, _>(&key, "+", "-", Some(1)),
                            )
                            .await
                            .map_err(|e| ResumeError::Unavailable(e.to_string()))?;
                        let top = parse_entries(top).map_err(ResumeError::Unavailable)?;
                        match top.first() {
                            None => return Err(ResumeError::UnknownStream),
                            Some(entry) if entry.seq() < after => {
                                return Err(ResumeError::UnknownEvent);
                            }
                            Some(_) => after,
                        }
                    }
                    Some(Entry::Start) => after,
                    Some(Entry::Event(seq, _)) if *seq > after + 1 => {
                        return Err(ResumeError::Expired);
                    }
                    Some(Entry::Event(..)) => after,
                    Some(Entry::End(seq, _)) => return finished_or(*seq, after),
                }
            }
        };
        let reader = Reader {
            inner: self.clone(),
            id: *id,
            key,
            cursor,
            page: entries.into(),
            more: full,
            local: None,
            done: false,
        };
        let frames = futures_util::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        });
        Ok(Subscription::new(Box::pin(frames)))
    }

    /// One page of `key`'s entries, `XRANGE` from `start` (`-`, or `(k-0`
    /// for those after event `k`): one round trip.
    async fn range(&self, key: &str, start: String) -> Result<Vec<Entry>, String> {
        let reply = self
            .degrade
            .call(
                self.client
                    .xrange::<Value, _, _, _>(key, start, "+", Some(self.page)),
            )
            .await
            .map_err(|e| e.to_string())?;
        parse_entries(reply)
    }
}

/// `finished` when the stream ended at `end` and the reader is there,
/// `Expired` when events between them were dropped.
fn finished_or(end: u64, after: u64) -> Result<Subscription, ResumeError> {
    if end == after {
        Ok(Subscription::finished())
    } else {
        Err(ResumeError::Expired)
    }
}

/// One client's read of a stream from Redis: `XRANGE` pages after its
/// cursor until it has caught up, then the local copy.
struct Reader {
    inner: Arc<Inner>,
    id: StreamId,
    key: String,
    cursor: u64,
    page: VecDeque<Entry>,
    /// Whether the last page was full, so more may follow.
    more: bool,
    local: Option<LocalTail>,
    done: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<Bytes, StoreError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(local) = self.local.as_mut() {
                let item = local.subscription.next().await;
                if !matches!(item, Some(Ok(_))) {
                    self.done = true;
                }
                return item;
            }
            match self.page.pop_front() {
                Some(Entry::Start) => {}
                Some(Entry::Event(seq, _)) if seq <= self.cursor => {}
                Some(Entry::Event(seq, frame)) => {
                    if seq != self.cursor + 1 {
                        // Trimmed while this reader was behind.
                        return self.fail(StoreError::Lagged);
                    }
                    self.cursor = seq;
                    return Some(Ok(frame));
                }
                Some(Entry::End(seq, _)) => {
                    self.done = true;
                    return (seq != self.cursor).then_some(Err(StoreError::Lagged));
                }
                None if self.more => {
                    let start = format!("({}-0", self.cursor);
                    match self.inner.range(&self.key, start).await {
                        Ok(entries) => {
                            self.more = entries.len() as u64 >= self.inner.page;
                            self.page = entries.into();
                        }
                        Err(error) => return self.fail(StoreError::Unavailable(error)),
                    }
                }
                None => match self.inner.attach_local(&self.id, self.cursor) {
                    Ok(Some(local)) => self.local = Some(local),
                    // The local copy starts further on: read up to it.
                    Ok(None) => self.more = true,
                    Err(error) => return self.fail(error),
                },
            }
        }
    }

    fn fail(&mut self, error: StoreError) -> Option<Result<Bytes, StoreError>> {
        self.done = true;
        Some(Err(error))
    }
}
