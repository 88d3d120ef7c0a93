//! SSE parsing: tower-ai's decoder against `eventsource-stream`.
//!
//! - `sse_parse_openai`: ~2,000 OpenAI chat-completion chunks (~510 KB), fed
//!   in network-sized pieces of 1–4 KiB, drained as a `Stream` on a tokio
//!   current-thread runtime by both parsers; ours also through its push API.
//! - `sse_parse_8mib_line`: one 8 MiB `data:` line in 1,024 pieces; a parser
//!   that re-scans its buffer for each piece does quadratic work here.
//!
//! Run: `cargo bench --bench sse` (add `-- --quick` for a short run).

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use eventsource_stream::Eventsource;
use futures_util::{StreamExt, stream};
use tower_ai::core::sse::{Decoder, EventStream};

/// What `/v1/chat/completions` streams for a ~2,000-token answer.
fn openai_stream() -> Bytes {
    const WORDS: [&str; 12] = [
        " the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ",", " and",
        " then\\n",
    ];
    let mut out = String::new();
    let head = r#"{"id":"chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz012","object":"chat.completion.chunk","created":1732000000,"model":"gpt-4o-mini","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":"#;
    out.push_str("data: ");
    out.push_str(head);
    out.push_str(r#"{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#);
    out.push_str("\n\n");
    for i in 0..2_000 {
        out.push_str("data: ");
        out.push_str(head);
        out.push_str(r#"{"content":""#);
        out.push_str(WORDS[i % WORDS.len()]);
        out.push_str(r#""},"logprobs":null,"finish_reason":null}]}"#);
        out.push_str("\n\n");
    }
    out.push_str("data: ");
    out.push_str(head);
    out.push_str(r#"{},"logprobs":null,"finish_reason":"stop"}]}"#);
    out.push_str("\n\ndata: [DONE]\n\n");
    Bytes::from(out)
}

/// Cuts `input` into pieces of 1–4 KiB (a fixed pseudo-random sequence), as
/// TCP reads of a streamed response would.
fn network_chunks(input: &Bytes) -> Vec<Bytes> {
    let mut state: u32 = 0x9E37_79B9;
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < input.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = 1024 + (state as usize % 3073);
        let end = (start + size).min(input.len());
        chunks.push(input.slice(start..end));
        start = end;
    }
    chunks
}

/// One `data:` line of 8 MiB in 1,024 pieces.
fn long_line_chunks() -> (usize, Vec<Bytes>) {
    let mut input = b"data: ".to_vec();
    input.extend((0..8 * 1024 * 1024).map(|i| b"abcdefghijklmnopqrstuvwxyz"[i % 26]));
    input.extend_from_slice(b"\n\n");
    let input = Bytes::from(input);
    let size = input.len().div_ceil(1024);
    let chunks = (0..input.len())
        .step_by(size)
        .map(|start| input.slice(start..(start + size).min(input.len())))
        .collect();
    (input.len(), chunks)
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(error) => panic!("tokio runtime: {error}"),
    }
}

/// Our push API: each chunk in, the complete events out. Returns the
/// number of events plus the data bytes, so nothing is optimized away.
fn ours_push(chunks: &[Bytes]) -> usize {
    let mut decoder = Decoder::new();
    let mut seen = 0;
    for chunk in chunks {
        decoder.push(chunk.clone());
        while let Some(event) = decoder.next_event() {
            seen += event.map_or(0, |event| 1 + event.data().len());
        }
    }
    decoder.finish();
    seen
}

async fn ours_stream(chunks: &[Bytes]) -> usize {
    let body = stream::iter(chunks.iter().cloned().map(Ok::<_, Infallible>));
    EventStream::new(body)
        .fold(0, |seen, event| async move {
            seen + event.map_or(0, |event| 1 + event.data().len())
        })
        .await
}

async fn eventsource_stream(chunks: &[Bytes]) -> usize {
    let body = stream::iter(chunks.iter().cloned().map(Ok::<_, Infallible>));
    body.eventsource()
        .fold(0, |seen, event| async move {
            seen + event.map_or(0, |event| 1 + event.data.len())
        })
        .await
}

fn parse_openai(c: &mut Criterion) {
    let input = openai_stream();
    let chunks = network_chunks(&input);
    let rt = runtime();
    let expected = ours_push(&chunks);
    assert_eq!(rt.block_on(ours_stream(&chunks)), expected);
    assert_eq!(rt.block_on(eventsource_stream(&chunks)), expected);

    let mut group = c.benchmark_group("sse_parse_openai");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("tower-ai EventStream", |b| {
        b.iter(|| rt.block_on(ours_stream(black_box(&chunks))));
    });
    group.bench_function("tower-ai Decoder::push", |b| {
        b.iter(|| ours_push(black_box(&chunks)));
    });
    group.bench_function("eventsource-stream", |b| {
        b.iter(|| rt.block_on(eventsource_stream(black_box(&chunks))));
    });
    group.finish();
}

fn parse_long_line(c: &mut Criterion) {
    let (len, chunks) = long_line_chunks();
    let rt = runtime();
    let expected = ours_push(&chunks);
    assert_eq!(rt.block_on(ours_stream(&chunks)), expected);

    let mut group = c.benchmark_group("sse_parse_8mib_line");
    group.throughput(Throughput::Bytes(len as u64));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("tower-ai EventStream", |b| {
        b.iter(|| rt.block_on(ours_stream(black_box(&chunks))));
    });
    group.bench_function("tower-ai Decoder::push", |b| {
        b.iter(|| ours_push(black_box(&chunks)));
    });
    // Quadratic: ten runs of this take a while.
    group.bench_function("eventsource-stream", |b| {
        b.iter(|| rt.block_on(eventsource_stream(black_box(&chunks))));
    });
    group.finish();
}

criterion_group!(benches, parse_openai, parse_long_line);
criterion_main!(benches);
