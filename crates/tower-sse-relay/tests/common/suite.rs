//! One suite for every store: run against the memory store and real Redis.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tower_sse_relay::store::{Outcome, ResumeError, StoredEvent, StreamStore, Subscription};
use tower_sse_relay::{EventId, ResumeFrom, StreamId};

fn events(range: std::ops::RangeInclusive<u64>) -> Vec<StoredEvent> {
    range
        .map(|seq| StoredEvent::new(seq, format!("id: x-{seq}\ndata: {seq}\n\n")))
        .collect()
}

fn frame(seq: u64) -> Bytes {
    Bytes::from(format!("id: x-{seq}\ndata: {seq}\n\n"))
}

async fn read_all(sub: Subscription) -> Vec<Bytes> {
    let mut frames = sub.into_stream();
    let mut all = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), frames.next())
        .await
        .expect("the subscription goes on")
    {
        all.push(frame.expect("no store error"));
    }
    all
}

fn after(stream: StreamId, seq: u64) -> ResumeFrom {
    ResumeFrom::After(EventId::new(stream, seq))
}

/// Backlog, resume points, the end, unknown streams and events.
pub async fn reads_what_was_appended<St: StreamStore>(store: St) {
    let id = StreamId::random().unwrap();
    store.create(&id).await.unwrap();
    store.append(&id, &events(1..=2)).await.unwrap();
    store.append(&id, &events(3..=3)).await.unwrap();
    store.finish(&id, 3, Outcome::Completed).await.unwrap();

    let all = read_all(store.subscribe(&id, ResumeFrom::Earliest).await.unwrap()).await;
    assert_eq!(all, vec![frame(1), frame(2), frame(3)]);
    let rest = read_all(store.subscribe(&id, after(id, 1)).await.unwrap()).await;
    assert_eq!(rest, vec![frame(2), frame(3)]);
    let rest = read_all(store.subscribe(&id, after(id, 0)).await.unwrap()).await;
    assert_eq!(rest.len(), 3);
    assert!(
        store
            .subscribe(&id, after(id, 3))
            .await
            .unwrap()
            .is_finished()
    );
    assert_eq!(
        store.subscribe(&id, after(id, 4)).await.err(),
        Some(ResumeError::UnknownEvent)
    );
    let unknown = StreamId::random().unwrap();
    assert_eq!(
        store.subscribe(&unknown, after(unknown, 1)).await.err(),
        Some(ResumeError::UnknownStream)
    );
    assert_eq!(
        store.subscribe(&unknown, ResumeFrom::Earliest).await.err(),
        Some(ResumeError::UnknownStream)
    );

    // An empty stream that ended.
    let empty = StreamId::random().unwrap();
    store.create(&empty).await.unwrap();
    store.finish(&empty, 0, Outcome::Failed).await.unwrap();
    assert!(
        store
            .subscribe(&empty, ResumeFrom::Earliest)
            .await
            .unwrap()
            .is_finished()
    );
}

/// Readers attached at every point while the stream grows each get exactly
/// the events after their point, then the end.
pub async fn live_readers_get_each_event_once<St: StreamStore>(writer: St, reader: St) {
    let id = StreamId::random().unwrap();
    writer.create(&id).await.unwrap();
    let n = 60u64;
    let mut readers = Vec::new();
    for seq in 1..=n {
        if seq % 6 == 1 {
            let point = if seq == 1 {
                ResumeFrom::Earliest
            } else {
                after(id, seq - 1)
            };
            let sub = reader.subscribe(&id, point).await.unwrap();
            readers.push((seq, tokio::spawn(read_all(sub))));
        }
        writer.append(&id, &events(seq..=seq)).await.unwrap();
        if seq % 7 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    writer.finish(&id, n, Outcome::Completed).await.unwrap();
    for (first, reader) in readers {
        let got = reader.await.unwrap();
        let want: Vec<Bytes> = (first..=n).map(frame).collect();
        assert_eq!(got, want, "reader from {first}");
    }
}

/// Events dropped to keep a stream bounded make resuming before them an
/// `Expired`, never a silent gap.
pub async fn trimmed_events_are_expired<St: StreamStore>(store: St, max_events: u64) {
    let id = StreamId::random().unwrap();
    store.create(&id).await.unwrap();
    let n = max_events + 5;
    store.append(&id, &events(1..=n)).await.unwrap();
    store.finish(&id, n, Outcome::Completed).await.unwrap();
    assert_eq!(
        store.subscribe(&id, after(id, 1)).await.err(),
        Some(ResumeError::Expired)
    );
    let keep_from = n - max_events + 1;
    let rest = read_all(
        store
            .subscribe(&id, after(id, keep_from - 1))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(rest, (keep_from..=n).map(frame).collect::<Vec<_>>());
    let all = read_all(store.subscribe(&id, ResumeFrom::Earliest).await.unwrap()).await;
    assert_eq!(all.first(), Some(&frame(keep_from)));
}

/// A retried append adds nothing twice.
pub async fn appends_are_idempotent<St: StreamStore>(store: St) {
    let id = StreamId::random().unwrap();
    store.create(&id).await.unwrap();
    store.append(&id, &events(1..=2)).await.unwrap();
    let _ = store.append(&id, &events(2..=3)).await;
    store.finish(&id, 3, Outcome::Completed).await.unwrap();
    let all = read_all(store.subscribe(&id, ResumeFrom::Earliest).await.unwrap()).await;
    assert_eq!(all, vec![frame(1), frame(2), frame(3)]);
}
