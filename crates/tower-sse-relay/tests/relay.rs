//! The relay over real sockets: a mock LLM upstream, a proxy, the relay in an
//! axum app, and reqwest clients. Resumable streams in the memory store.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use bytes::Bytes;
use common::{App, assert_exact, http, post_chat, serve, stream_id};
use futures_util::StreamExt;
use http::StatusCode;
use mock_llm::Fault;
use test_support::sse::{self, SseEvent, SseReader};
use test_support::{chat, eventually, mock_llm, proxy};
use tower_ai_core::key::RequestHead;
use tower_sse_relay::store::MemoryStore;
use tower_sse_relay::{EndReason, InvalidResume, SseRelayLayer, StreamId, StreamSummary, Tap};

fn direct() -> SseRelayLayer {
    SseRelayLayer::new()
}

fn resumable() -> SseRelayLayer<MemoryStore> {
    SseRelayLayer::builder()
        .resumable(MemoryStore::new())
        .build()
        .unwrap()
}

/// Waits for a resumable generation to end with no reader attached (a live
/// reader more than `max_events` behind is cut off by the store's bound,
/// which a loaded machine makes happen), and reads the number of its last
/// event from the store.
async fn last_kept_after_the_end(client: &reqwest::Client, app: &App, stream: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let res = get_stream(client, app, stream, Some("earliest")).await;
        let kept = SseReader::new(res).rest().await;
        if let Some(last) = kept.last()
            && last.data == "[DONE]"
        {
            return last.seq().expect("a numbered event");
        }
        assert!(Instant::now() < deadline, "the generation never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn get_stream(
    client: &reqwest::Client,
    app: &App,
    stream: &str,
    last_event_id: Option<&str>,
) -> reqwest::Response {
    let mut req = client.get(app.url(&format!("/v1/streams/{stream}")));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    req.send().await.unwrap()
}

/// Every event of a finished stream, read from the store.
async fn stored(client: &reqwest::Client, app: &App, stream: &str) -> Vec<SseEvent> {
    let res = get_stream(client, app, stream, Some("earliest")).await;
    assert_eq!(res.status(), StatusCode::OK);
    SseReader::new(res).rest().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_token_arrives_while_the_upstream_is_still_generating() {
    for layer_kind in ["direct", "resumable"] {
        let mock = mock_llm(Duration::from_millis(40)).await;
        let app = match layer_kind {
            "direct" => serve(&direct(), &mock.base_url()).await,
            _ => serve(&resumable(), &mock.base_url()).await,
        };
        let client = http();
        let sent = Instant::now();
        let res = post_chat(&client, &app, "tell me about towers").await;
        assert_eq!(res.status(), StatusCode::OK);
        let mut reader = SseReader::new(res);
        let mut events = Vec::new();
        let first_token = loop {
            let got = reader.next().await.unwrap();
            events.push(got.clone());
            if !sse::text(std::slice::from_ref(&got)).is_empty() {
                break got;
            }
        };
        let ttft = first_token.at - sent;
        assert_eq!(
            mock.stats().streams_completed,
            0,
            "{layer_kind}: still generating"
        );
        events.extend(reader.rest().await);
        let total = events.last().unwrap().at - sent;
        assert!(
            ttft * 4 < total,
            "{layer_kind}: first token after {ttft:?}, the whole answer after {total:?}"
        );
        assert!(events.len() >= 10, "{layer_kind}: {} events", events.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_with_the_relay_ids_and_stream_headers() {
    let mock = mock_llm(Duration::from_millis(2)).await;
    let layer = direct();
    let app = serve(&layer, &mock.base_url()).await;
    let client = http();

    // The reference: the same request straight to the upstream.
    let direct_res = client
        .post(format!("{}/v1/chat/completions", mock.base_url()))
        .header("content-type", "application/json")
        .body(chat::streamed("order please"))
        .send()
        .await
        .unwrap();
    let reference = SseReader::new(direct_res).rest().await;

    let res = post_chat(&client, &app, "order please").await;
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(res.headers()["cache-control"], "no-cache");
    assert_eq!(res.headers()["x-accel-buffering"], "no");
    assert_eq!(res.headers()["content-encoding"], "identity");
    assert!(res.headers().get("content-length").is_none());
    let stream = stream_id(&res);
    assert!(StreamId::parse(&stream).is_ok());
    let events = SseReader::new(res).rest().await;
    assert_exact(&events, &stream, 1);
    assert_eq!(events.len(), reference.len());
    assert_eq!(sse::text(&events), sse::text(&reference));
    assert!(!sse::text(&events).is_empty());
    eventually(Duration::from_secs(2), || layer.stats().direct_active == 0)
        .await
        .unwrap_or_else(|| panic!("{:?}", layer.stats()));
    assert_eq!(layer.stats().events, events.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_fill_the_idle_gaps() {
    let mock = mock_llm(Duration::from_millis(350)).await;
    for resumable_mode in [false, true] {
        let builder = SseRelayLayer::builder()
            .heartbeat(Duration::from_millis(100))
            .heartbeat_comment("keep-alive");
        let app = if resumable_mode {
            serve(
                &builder.resumable(MemoryStore::new()).build().unwrap(),
                &mock.base_url(),
            )
            .await
        } else {
            serve(&builder.build().unwrap(), &mock.base_url()).await
        };
        let client = http();
        let mut reader = SseReader::new(post_chat(&client, &app, "slow please").await);
        reader.take(3).await;
        // Two gaps of 350 ms between three events: at least two
        // heartbeats in each.
        let heartbeats = reader.comments_with("keep-alive");
        assert!(
            heartbeats >= 4,
            "resumable {resumable_mode}: {heartbeats} heartbeats"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_client_cancels_the_upstream_in_direct_mode() {
    let mock = mock_llm(Duration::from_millis(50)).await;
    let layer = direct();
    let app = serve(&layer, &mock.base_url()).await;
    let client = http();
    let mut reader = SseReader::new(post_chat(&client, &app, "cancel me").await);
    reader.take(3).await;
    assert_eq!(mock.stats().in_flight, 1);
    drop(reader);
    eventually(Duration::from_secs(2), || {
        mock.stats().streams_cancelled == 1
    })
    .await
    .unwrap_or_else(|| panic!("{:?}", mock.stats()));
    assert_eq!(mock.stats().streams_completed, 0);
    assert_eq!(mock.stats().in_flight, 0);
    eventually(Duration::from_secs(1), || layer.stats().direct_active == 0)
        .await
        .expect("the direct stream is let go");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_client_leaves_a_resumable_generation_running() {
    let mock = mock_llm(Duration::from_millis(20)).await;
    let layer = resumable();
    let app = serve(&layer, &mock.base_url()).await;
    let client = http();
    let res = post_chat(&client, &app, "keep generating").await;
    let stream = stream_id(&res);
    let mut reader = SseReader::new(res);
    reader.take(3).await;
    drop(reader);
    eventually(Duration::from_secs(5), || {
        mock.stats().streams_completed == 1
    })
    .await
    .unwrap_or_else(|| panic!("{:?}", mock.stats()));
    assert_eq!(mock.stats().streams_cancelled, 0);
    eventually(Duration::from_secs(1), || {
        layer.stats().generations_active == 0
    })
    .await
    .expect("the generation ends");
    let all = stored(&client, &app, &stream).await;
    assert_exact(&all, &stream, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resuming_after_k_events_gets_exactly_the_rest() {
    let mock = mock_llm(Duration::from_millis(15)).await;
    let layer = resumable();
    let app = serve(&layer, &mock.base_url()).await;
    let client = http();
    for (k, how) in [(1, "header"), (4, "query"), (6, "post")] {
        let res = post_chat(&client, &app, &format!("resume after {k}")).await;
        let stream = stream_id(&res);
        let mut reader = SseReader::new(res);
        let first = reader.take(k as usize).await;
        drop(reader);
        assert_eq!(
            mock.stats().streams_completed,
            0,
            "still generating when resuming"
        );
        let last = format!("{stream}-{k}");
        let res = match how {
            "header" => get_stream(&client, &app, &stream, Some(&last)).await,
            "query" => client
                .get(app.url(&format!("/v1/streams/{stream}?lastEventID={last}")))
                .send()
                .await
                .unwrap(),
            // A reconnect of the original request, through the layer.
            _ => client
                .post(app.url("/v1/chat/completions"))
                .header("content-type", "application/json")
                .header("last-event-id", &last)
                .body(chat::streamed("ignored"))
                .send()
                .await
                .unwrap(),
        };
        assert_eq!(res.status(), StatusCode::OK, "{how}");
        assert_eq!(res.headers()["last-event-id"], last.as_str(), "{how}");
        let rest = SseReader::new(res).rest().await;
        assert_exact(&rest, &stream, k + 1);
        let all = stored(&client, &app, &stream).await;
        assert_eq!(all.len() as u64, k + rest.len() as u64);
        let rejoined: Vec<_> = first
            .iter()
            .chain(&rest)
            .map(|e| (&e.id, &e.data))
            .collect();
        let reference: Vec<_> = all.iter().map(|e| (&e.id, &e.data)).collect();
        assert_eq!(rejoined, reference, "{how}");
        mock.reset_stats();
    }
    // The reconnect through the layer did not call the upstream.
    assert_eq!(mock.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_resuming_at_once_lose_nothing() {
    let mock = mock_llm(Duration::from_millis(10)).await;
    let layer = resumable();
    let app = Arc::new(serve(&layer, &mock.base_url()).await);
    let mut clients = Vec::new();
    for i in 0..100u64 {
        let app = app.clone();
        clients.push(tokio::spawn(async move {
            let client = http();
            let res = post_chat(&client, &app, &format!("client {i} asks")).await;
            let stream = stream_id(&res);
            let mut reader = SseReader::new(res);
            let k = 1 + i % 7;
            let mut events = reader.take(k as usize).await;
            drop(reader);
            let last = format!("{stream}-{k}");
            let res = if i % 2 == 0 {
                get_stream(&client, &app, &stream, Some(&last)).await
            } else {
                client
                    .get(app.url(&format!("/v1/streams/{stream}?lastEventID={last}")))
                    .send()
                    .await
                    .unwrap()
            };
            assert_eq!(res.status(), StatusCode::OK);
            events.extend(SseReader::new(res).rest().await);
            assert_exact(&events, &stream, 1);
            let all = stored(&client, &app, &stream).await;
            assert_eq!(
                events.iter().map(|e| &e.data).collect::<Vec<_>>(),
                all.iter().map(|e| &e.data).collect::<Vec<_>>()
            );
            events.len()
        }));
    }
    let mut total = 0;
    for client in clients {
        total += client.await.unwrap();
    }
    assert!(total >= 100 * 10);
    assert_eq!(mock.stats().streams_completed, 100);
    assert_eq!(mock.stats().streams_cancelled, 0);
}

/// An upstream that sends 1 KiB events as fast as it is read, forever,
/// counting the bytes it produced.
fn fast_upstream(produced: Arc<AtomicU64>, limit: Option<u64>) -> Router {
    let event = Bytes::from(format!("data: {}\n\n", "x".repeat(1016)));
    Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let produced = produced.clone();
            let event = event.clone();
            async move {
                let body = futures_util::stream::repeat(event)
                    .take(limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap()))
                    .map(move |e| {
                        produced.fetch_add(e.len() as u64, Ordering::Relaxed);
                        Ok::<_, std::io::Error>(e)
                    });
                http::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(body))
                    .unwrap()
            }
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_slows_the_upstream_instead_of_growing_memory() {
    let produced = Arc::new(AtomicU64::new(0));
    let upstream = proxy::serve(fast_upstream(produced.clone(), None)).await;
    let app = serve(&direct(), &upstream.url("")).await;
    let client = http();
    let mut reader = SseReader::new(post_chat(&client, &app, "flood").await);
    let mut samples = Vec::new();
    for _ in 0..4 {
        reader.next().await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(produced.load(Ordering::Relaxed));
    }
    // The socket buffers fill in the first second, then the upstream only
    // produces what the reader takes.
    eprintln!("upstream bytes produced after 1, 2, 3, 4 s: {samples:?}");
    let grown = samples[3] - samples[1];
    assert!(
        grown < 256 * 1024,
        "the upstream produced {grown} bytes in 2 s for a reader taking 1 event/s ({samples:?})"
    );
    assert!(samples[3] < 64 << 20, "{samples:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_resumable_stream_holds_the_store_to_its_bound() {
    let produced = Arc::new(AtomicU64::new(0));
    let events = 20_000u64; // about 20 MiB
    let upstream = proxy::serve(fast_upstream(produced.clone(), Some(events))).await;
    let store = MemoryStore::builder()
        .max_stream_bytes(256 * 1024)
        .build()
        .unwrap();
    let layer = SseRelayLayer::builder()
        .resumable(store.clone())
        .build()
        .unwrap();
    let app = serve(&layer, &upstream.url("")).await;
    let client = http();
    let mut reader = SseReader::new(post_chat(&client, &app, "flood").await);
    let mut peak = 0;
    for _ in 0..3 {
        reader.next().await.unwrap();
        peak = peak.max(store.bytes());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The generation ran on at its own pace, into a bounded stream.
    eventually(Duration::from_secs(20), || {
        layer.stats().generations_active == 0
    })
    .await
    .expect("the generation ends");
    assert_eq!(produced.load(Ordering::Relaxed), events * 1024);
    assert!(peak <= 256 * 1024 && store.bytes() <= 256 * 1024, "{peak}");
    // The reader fell behind what is kept: its response fails (after what
    // the socket buffers held) rather than skip events.
    let rest = reader.rest().await;
    assert!(reader.ended());
    assert!((rest.len() as u64) + 3 < events, "{}", rest.len());
    let last = rest.last().and_then(SseEvent::seq);
    assert_eq!(last, Some(3 + rest.len() as u64), "no gap before the cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_and_expired_ids_get_a_clear_4xx() {
    let mock = mock_llm(Duration::from_millis(1)).await;
    let store = MemoryStore::builder().max_events(3).build().unwrap();
    let layer = SseRelayLayer::builder().resumable(store).build().unwrap();
    let app = serve(&layer, &mock.base_url()).await;
    let client = http();
    let res = post_chat(&client, &app, "short lived").await;
    let stream = stream_id(&res);
    drop(res);
    let n = last_kept_after_the_end(&client, &app, &stream).await;
    let other = StreamId::random().unwrap().to_string();

    let cases = [
        (
            stream.clone(),
            "not-an-id".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (stream.clone(), "42".to_owned(), StatusCode::BAD_REQUEST),
        (
            stream.clone(),
            format!("{other}-1"),
            StatusCode::BAD_REQUEST,
        ),
        (other.clone(), format!("{other}-1"), StatusCode::NOT_FOUND),
        (other.clone(), "earliest".to_owned(), StatusCode::NOT_FOUND),
        (
            stream.clone(),
            format!("{stream}-{}", n + 1),
            StatusCode::NOT_FOUND,
        ),
        (stream.clone(), format!("{stream}-1"), StatusCode::GONE),
    ];
    for (path, last, status) in cases {
        let res = tokio::time::timeout(
            Duration::from_secs(5),
            get_stream(&client, &app, &path, Some(&last)),
        )
        .await
        .expect("an answer, not a hang");
        assert_eq!(res.status(), status, "{last}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let problem: serde_json::Value =
            serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        assert_eq!(problem["status"], status.as_u16());
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    // Not a stream id at all in the path.
    let res = client
        .get(app.url("/v1/streams/%7Bnope%7D"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // Through the layer: a malformed id, and `earliest` without a stream.
    for last in ["garbage", "earliest"] {
        let res = client
            .post(app.url("/v1/chat/completions"))
            .header("last-event-id", last)
            .body(chat::streamed("x"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }
    // `earliest` through the layer, with the stream named in `X-Stream-Id`.
    let res = client
        .post(app.url("/v1/chat/completions"))
        .header("last-event-id", "earliest")
        .header("x-stream-id", &stream)
        .body(chat::streamed("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["last-event-id"], "earliest");
    assert_exact(&SseReader::new(res).rest().await, &stream, n - 2);
    // The end of a finished stream: nothing more, and `EventSource` is told
    // to stop reconnecting.
    let res = get_stream(&client, &app, &stream, Some(&format!("{stream}-{n}"))).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_is_offered_where_configured() {
    let mock = mock_llm(Duration::from_millis(1)).await;
    let store = MemoryStore::builder().max_events(3).build().unwrap();
    let layer = SseRelayLayer::builder()
        .resumable(store)
        .on_invalid_resume(InvalidResume::Restart)
        .build()
        .unwrap();
    let app = serve(&layer, &mock.base_url()).await;
    let client = http();
    let res = post_chat(&client, &app, "restartable").await;
    let stream = stream_id(&res);
    drop(res);
    let n = last_kept_after_the_end(&client, &app, &stream).await;
    for last in ["garbage".to_owned(), format!("{stream}-1")] {
        let res = get_stream(&client, &app, &stream, Some(&last)).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["last-event-id"], "earliest");
        let kept = SseReader::new(res).rest().await;
        assert_exact(&kept, &stream, n - 2);
    }
    // Through the layer, a stream that is not kept starts anew.
    let other = StreamId::random().unwrap();
    let res = client
        .post(app.url("/v1/chat/completions"))
        .header("last-event-id", format!("{other}-3"))
        .body(chat::streamed("again"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let fresh = stream_id(&res);
    assert_ne!(fresh, other.to_string());
    // It starts at event 1 and runs to its end (read from the store, for
    // the reason `last_kept_after_the_end` gives).
    let first = SseReader::new(res).take(1).await;
    assert_eq!(first[0].id, format!("{fresh}-1"));
    let n = last_kept_after_the_end(&client, &app, &fresh).await;
    let kept = SseReader::new(get_stream(&client, &app, &fresh, Some("earliest")).await)
        .rest()
        .await;
    assert_exact(&kept, &fresh, n - 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_async_answers_202_and_the_stream_is_read_from_the_endpoint() {
    let mock = mock_llm(Duration::from_millis(5)).await;
    let layer = resumable();
    let app = serve(&layer, &mock.base_url()).await;
    let client = http();
    let res = client
        .post(app.url("/v1/chat/completions"))
        .header("prefer", "respond-async")
        .body(chat::streamed("later"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(res.headers()["preference-applied"], "respond-async");
    let stream = stream_id(&res);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/streams/{stream}"));
    let body: serde_json::Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(body["id"], stream.as_str());
    let res = client.get(app.url(&location)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["last-event-id"], "earliest");
    assert_exact(&SseReader::new(res).rest().await, &stream, 1);

    // An upstream that refuses: the stream holds its error.
    mock.set_fault(Fault {
        fail_rate: 1.0,
        ..Fault::default()
    });
    let res = client
        .post(app.url("/v1/chat/completions"))
        .header("prefer", "respond-async")
        .body(chat::streamed("fails"))
        .send()
        .await
        .unwrap();
    let stream = stream_id(&res);
    let res = get_stream(&client, &app, &stream, None).await;
    let events = SseReader::new(res).rest().await;
    assert_eq!(events.len(), 1);
    assert!(events[0].data.contains("error"), "{:?}", events[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upstream_ends_with_an_in_band_error_event() {
    let mock = mock_llm(Duration::from_millis(2)).await;
    mock.set_fault(Fault {
        break_after_tokens: Some(3),
        ..Fault::default()
    });
    for layer in [direct(), resumable()] {
        let app = serve(&layer, &mock.base_url()).await;
        let client = http();
        let res = post_chat(&client, &app, "break").await;
        let stream = stream_id(&res);
        let events = SseReader::new(res).rest().await;
        // The role chunk, three tokens, the error.
        assert_eq!(events.len(), 5, "{events:?}");
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.id, format!("{stream}-{}", i + 1));
        }
        let error: serde_json::Value = serde_json::from_str(&events[4].data).unwrap();
        assert_eq!(error["error"]["type"], "upstream_error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_are_not_event_streams_pass_through() {
    let mock = mock_llm(Duration::from_millis(1)).await;
    for layer in [direct(), resumable()] {
        let app = serve(&layer, &mock.base_url()).await;
        let client = http();
        let res = client
            .post(app.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(chat::request("json please").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("x-stream-id").is_none());
        assert_eq!(res.headers()["content-type"], "application/json");
        let answer: serde_json::Value =
            serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        assert_eq!(answer["object"], "chat.completion");
        // A refusal from the upstream, too.
        let res = client
            .post(app.url("/v1/chat/completions"))
            .body("not json")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }
}

/// A tap recording what it is shown.
#[derive(Clone, Default)]
struct Recorder {
    events: Arc<Mutex<Vec<String>>>,
    end: Arc<Mutex<Option<StreamSummary>>>,
}

impl Tap for Recorder {
    fn on_event(&mut self, _event: &tower_sse_relay::sse::Event, id: tower_sse_relay::EventId) {
        self.events.lock().unwrap().push(id.to_string());
    }

    fn on_end(&mut self, end: &StreamSummary) {
        *self.end.lock().unwrap() = Some(end.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tap_sees_each_event_and_the_usage_once() {
    let mock = mock_llm(Duration::from_millis(2)).await;
    for resumable_mode in [false, true] {
        let recorder = Recorder::default();
        let tap = recorder.clone();
        let builder = SseRelayLayer::builder()
            .tap(move |_: RequestHead<'_>, _| Some(Box::new(tap.clone()) as Box<dyn Tap>));
        let client = http();
        let (events, stream) = if resumable_mode {
            let layer = builder.resumable(MemoryStore::new()).build().unwrap();
            let app = serve(&layer, &mock.base_url()).await;
            let res = post_chat(&client, &app, "tap").await;
            let stream = stream_id(&res);
            // Two readers: the tap still sees each event once.
            let again = get_stream(&client, &app, &stream, None).await;
            let events = SseReader::new(res).rest().await;
            assert_eq!(SseReader::new(again).rest().await.len(), events.len());
            (events, stream)
        } else {
            let app = serve(&builder.build().unwrap(), &mock.base_url()).await;
            let res = post_chat(&client, &app, "tap").await;
            let stream = stream_id(&res);
            (SseReader::new(res).rest().await, stream)
        };
        eventually(Duration::from_secs(2), || {
            recorder.end.lock().unwrap().is_some()
        })
        .await
        .expect("the tap sees the end");
        let seen = recorder.events.lock().unwrap().clone();
        assert_eq!(
            seen,
            events.iter().map(|e| e.id.clone()).collect::<Vec<_>>()
        );
        let end = recorder.end.lock().unwrap().clone().unwrap();
        assert_eq!(end.stream.to_string(), stream);
        assert_eq!(end.reason, EndReason::Completed);
        assert_eq!(end.events, events.len() as u64);
        assert!(end.answer.done);
        assert!(end.answer.usage.is_some_and(|u| u.total() > 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_still_reports_the_usage_after_the_drain() {
    let mock = mock_llm(Duration::from_millis(20)).await;
    let recorder = Recorder::default();
    let tap = recorder.clone();
    let layer = SseRelayLayer::builder()
        .tap(move |_: RequestHead<'_>, _| Some(Box::new(tap.clone()) as Box<dyn Tap>))
        .drain_usage(Duration::from_secs(5))
        .build()
        .unwrap();
    let app = serve(&layer, &mock.base_url()).await;
    let client = http();
    let mut reader = SseReader::new(post_chat(&client, &app, "hang up early").await);
    reader.take(2).await;
    drop(reader);
    eventually(Duration::from_secs(5), || {
        recorder.end.lock().unwrap().is_some()
    })
    .await
    .expect("the tap sees the end");
    let end = recorder.end.lock().unwrap().clone().unwrap();
    assert_eq!(end.reason, EndReason::ClientGone);
    assert!(
        end.answer.usage.is_some_and(|u| u.completion_tokens > 0),
        "{end:?}"
    );
    assert_eq!(layer.stats().drains, 1);
    // The upstream is let go once the usage passed.
    eventually(Duration::from_secs(2), || mock.stats().in_flight == 0)
        .await
        .expect("the upstream is let go");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_stops_at_its_time_limit() {
    let mock = mock_llm(Duration::from_millis(100)).await;
    let layer = SseRelayLayer::builder()
        .resumable(MemoryStore::new())
        .max_duration(Duration::from_millis(450))
        .build()
        .unwrap();
    let app = serve(&layer, &mock.base_url()).await;
    let client = http();
    let res = post_chat(&client, &app, "too long").await;
    let stream = stream_id(&res);
    let events = SseReader::new(res).rest().await;
    let last: serde_json::Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["type"], "relay_limit");
    assert!(events.len() <= 7, "{}", events.len());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.id, format!("{stream}-{}", i + 1));
    }
    eventually(Duration::from_secs(2), || {
        mock.stats().streams_cancelled == 1
    })
    .await
    .expect("the upstream call is cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_generation_limit_streams_are_relayed_directly() {
    let mock = mock_llm(Duration::from_millis(30)).await;
    let layer = SseRelayLayer::builder()
        .resumable(MemoryStore::new())
        .max_generations(1)
        .build()
        .unwrap();
    let app = serve(&layer, &mock.base_url()).await;
    let client = http();
    let first = post_chat(&client, &app, "one").await;
    let second = post_chat(&client, &app, "two").await;
    let (a, b) = (stream_id(&first), stream_id(&second));
    let (mut first, mut second) = (SseReader::new(first), SseReader::new(second));
    let (a_events, b_events) = tokio::join!(first.rest(), second.rest());
    assert_exact(&a_events, &a, 1);
    assert_exact(&b_events, &b, 1);
    // Only the first was kept.
    assert_eq!(
        get_stream(&client, &app, &a, None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get_stream(&client, &app, &b, None).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_before_the_answer_cancels_even_a_resumable_call() {
    let mock = mock_llm(Duration::from_millis(5)).await;
    mock.set_fault(Fault {
        latency_ms: 2_000,
        ..Fault::default()
    });
    let layer = resumable();
    let app = serve(&layer, &mock.base_url()).await;
    let client = http();
    // The client never learns the stream id: nobody could resume it.
    let request = post_chat(&client, &app, "never mind");
    let _ = tokio::time::timeout(Duration::from_millis(300), request).await;
    eventually(Duration::from_secs(1), || mock.stats().requests == 1)
        .await
        .expect("the upstream is called");
    eventually(Duration::from_secs(1), || {
        mock.stats().in_flight == 0 && layer.stats().generations_active == 0
    })
    .await
    .unwrap_or_else(|| panic!("{:?} {:?}", mock.stats(), layer.stats()));
    assert_eq!(mock.stats().streams_started, 0);
}
