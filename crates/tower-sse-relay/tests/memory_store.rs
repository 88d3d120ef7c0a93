//! The store suite against the memory store.

mod common;

use common::suite;
use tower_sse_relay::store::MemoryStore;

#[tokio::test]
async fn reads_what_was_appended() {
    suite::reads_what_was_appended(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_readers_get_each_event_once() {
    let store = MemoryStore::new();
    suite::live_readers_get_each_event_once(store.clone(), store).await;
}

#[tokio::test]
async fn trimmed_events_are_expired() {
    let store = MemoryStore::builder().max_events(8).build().unwrap();
    suite::trimmed_events_are_expired(store, 8).await;
}

#[tokio::test]
async fn appends_are_idempotent() {
    suite::appends_are_idempotent(MemoryStore::new()).await;
}
