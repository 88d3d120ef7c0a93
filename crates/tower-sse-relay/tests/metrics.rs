//! The metrics a relayed stream exports: time to first event, events/s,
//! events, streams, heartbeats and resumes. Its own test binary, because it
//! installs a global recorder.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{http, post_chat, serve, stream_id};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use test_support::sse::SseReader;
use test_support::{eventually, mock_llm};
use tower_sse_relay::SseRelayLayer;
use tower_sse_relay::store::MemoryStore;

type Records = Arc<Mutex<Vec<(String, Vec<(String, String)>, f64)>>>;

struct Collect(Records);

struct Handle(Records, Key);

impl Handle {
    fn push(&self, value: f64) {
        let labels = self
            .1
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        self.0
            .lock()
            .unwrap()
            .push((self.1.name().to_owned(), labels, value));
    }
}

impl metrics::CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.push(value as f64);
    }
    fn absolute(&self, value: u64) {
        self.push(value as f64);
    }
}

impl metrics::GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.push(value);
    }
    fn decrement(&self, value: f64) {
        self.push(-value);
    }
    fn set(&self, value: f64) {
        self.push(value);
    }
}

impl metrics::HistogramFn for Handle {
    fn record(&self, value: f64) {
        self.push(value);
    }
}

impl Recorder for Collect {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Handle(self.0.clone(), key.clone())))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Handle(self.0.clone(), key.clone())))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Handle(self.0.clone(), key.clone())))
    }
}

fn sum(records: &Records, name: &str, label: (&str, &str)) -> (usize, f64) {
    let records = records.lock().unwrap();
    let matching: Vec<f64> = records
        .iter()
        .filter(|(n, labels, _)| {
            n == name && labels.iter().any(|(k, v)| k == label.0 && v == label.1)
        })
        .map(|(_, _, v)| *v)
        .collect();
    (matching.len(), matching.iter().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_export_time_to_first_event_and_events_per_second() {
    let records: Records = Arc::default();
    metrics::set_global_recorder(Collect(records.clone())).unwrap();
    let mock = mock_llm(Duration::from_millis(30)).await;
    let layer = SseRelayLayer::builder()
        .resumable(MemoryStore::new())
        .heartbeat(Duration::from_millis(20))
        .build()
        .unwrap();
    let app = serve(&layer, &mock.base_url()).await;
    let client = http();
    let res = post_chat(&client, &app, "measure me").await;
    let stream = stream_id(&res);
    let events = SseReader::new(res).rest().await;
    let res = client
        .get(app.url(&format!("/v1/streams/{stream}")))
        .header("last-event-id", format!("{stream}-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(SseReader::new(res).rest().await.len(), events.len() - 2);
    eventually(Duration::from_secs(2), || {
        layer.stats().generations_active == 0
    })
    .await
    .expect("the generation ends");

    let (count, ttfe) = sum(
        &records,
        "tower_ai_sse_time_to_first_event_seconds",
        ("mode", "reader"),
    );
    assert_eq!(count, 2, "one per reader");
    assert!(ttfe > 0.0 && ttfe < 5.0, "{ttfe}");
    let (count, _) = sum(
        &records,
        "tower_ai_sse_time_to_first_event_seconds",
        ("mode", "resumable"),
    );
    assert_eq!(count, 1, "one for the generation");
    let (count, rate) = sum(
        &records,
        "tower_ai_sse_events_per_second",
        ("mode", "resumable"),
    );
    assert_eq!(count, 1);
    // A token every 30 ms: some 30 events/s.
    assert!(rate > 10.0 && rate < 60.0, "{rate}");
    let (_, relayed) = sum(&records, "tower_ai_sse_events_total", ("mode", "resumable"));
    assert_eq!(relayed as usize, events.len());
    let (count, _) = sum(
        &records,
        "tower_ai_sse_streams_total",
        ("outcome", "completed"),
    );
    assert!(count >= 2, "{count}");
    let (count, _) = sum(&records, "tower_ai_sse_resumes_total", ("outcome", "ok"));
    assert_eq!(count, 1);
    let heartbeats = records
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _, _)| n == "tower_ai_sse_heartbeats_total")
        .count();
    assert!(heartbeats >= 1);
}
