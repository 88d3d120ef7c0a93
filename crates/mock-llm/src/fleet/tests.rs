//! The server's behaviour in time: exact step timings under a paused clock, caching,
//! eviction, queueing, cancellation and metrics; and a concurrent run on a multi-thread
//! runtime.

use std::time::Duration;

use tokio::time::Instant;

use super::{Costs, Generation, SimConfig, SimEvent, SimServer};

use SimEvent::{Admitted, Done, Token};

/// Round numbers for exact timings: a = 10 ms, b = 1 ms/token, c = 5 ms, d = 1 ms.
fn costs() -> Costs {
    Costs {
        prefill_base: ms(10),
        prefill_per_token: ms(1),
        decode_base: ms(5),
        decode_per_seq: ms(1),
    }
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn server(slots: usize, kv_blocks: usize) -> SimServer {
    SimServer::spawn(SimConfig {
        slots,
        kv_blocks,
        costs: costs(),
        ..SimConfig::default()
    })
}

/// Every event of `generation` with the time since `start` it arrived at.
async fn timeline(mut generation: Generation, start: Instant) -> Vec<(SimEvent, Duration)> {
    let mut events = Vec::new();
    while let Some(event) = generation.recv().await {
        events.push((event, start.elapsed()));
    }
    events
}

/// The time of the first event equal to `wanted`.
fn at(events: &[(SimEvent, Duration)], wanted: SimEvent) -> Duration {
    events
        .iter()
        .find(|(event, _)| *event == wanted)
        .map(|(_, time)| *time)
        .unwrap_or_else(|| panic!("no {wanted:?} in {events:?}"))
}

fn admitted(events: &[(SimEvent, Duration)]) -> Duration {
    events
        .iter()
        .find(|(event, _)| matches!(event, Admitted { .. }))
        .map(|(_, time)| *time)
        .unwrap_or_else(|| panic!("not admitted: {events:?}"))
}

/// 100 bytes of `c`: 25 tokens, one full block.
fn short(c: char) -> String {
    c.to_string().repeat(100)
}

#[tokio::test(start_paused = true)]
async fn a_single_request_takes_prefill_plus_one_step_per_token() {
    let server = server(4, 1000);
    let start = Instant::now();
    let generation = server.generate(&short('a'), 3);
    assert_eq!(generation.prompt_tokens(), 25);
    let events = timeline(generation, start).await;
    // Step 1: prefill 10 + 25 × 1, decode 5 + 1 × 1 = 41 ms; then 6 ms per token.
    assert_eq!(
        events,
        [
            (Admitted { cached_tokens: 0 }, ms(0)),
            (Token, ms(41)),
            (Token, ms(47)),
            (Token, ms(53)),
            (Done, ms(53)),
        ]
    );
    let metrics = server.metrics();
    assert_eq!(metrics.prompt_tokens_total, 25);
    assert_eq!(metrics.generated_tokens_total, 3);
    assert_eq!(metrics.requests_finished, 1);
    assert_eq!(metrics.steps, 3);
    assert_eq!((metrics.running, metrics.kv_blocks_used), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn default_costs_give_the_calibrated_timings_without_drift() {
    let server = SimServer::spawn(SimConfig::default());
    let start = Instant::now();
    // 4,096 bytes: 1,024 tokens; 100 tokens of answer.
    let events = timeline(server.generate(&"x".repeat(4096), 100), start).await;
    // Events arrive on tokio's millisecond ticks: the exact instant rounded up.
    let tick = |exact: Duration| Duration::from_millis(exact.as_nanos().div_ceil(1_000_000) as u64);
    // 2 + 1,024 × 0.1 + 12.1 = 116.5 ms.
    assert_eq!(at(&events, Token), tick(Duration::from_micros(116_500)));
    // 99 more steps of 12.1 ms each: 1,314.4 ms, not 99 rounded-up steps of 13 ms.
    assert_eq!(
        at(&events, Done),
        tick(Duration::from_micros(116_500 + 99 * 12_100))
    );
}

#[tokio::test(start_paused = true)]
async fn an_identical_prompt_hits_its_full_blocks() {
    let server = server(4, 1000);
    // 1,000 bytes: 250 tokens, 15 full blocks (240 tokens) and a partial one.
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(23);
    let prompt = &prompt[..1000];

    let start = Instant::now();
    let mut first = server.generate(prompt, 1);
    assert_eq!(first.cached_tokens(), None);
    assert_eq!(first.recv().await, Some(Admitted { cached_tokens: 0 }));
    assert_eq!(first.cached_tokens(), Some(0));
    let events = timeline(first, start).await;
    // 10 + 250 + 6.
    assert_eq!(at(&events, Token), ms(266));

    let start = Instant::now();
    let mut second = server.generate(prompt, 1);
    assert_eq!(second.recv().await, Some(Admitted { cached_tokens: 240 }));
    assert_eq!(second.cached_tokens(), Some(240));
    let events = timeline(second, start).await;
    // 10 + 10 uncached + 6.
    assert_eq!(at(&events, Token), ms(26));

    let metrics = server.metrics();
    assert_eq!(metrics.prompt_tokens_total, 500);
    assert_eq!(metrics.prefix_hit_tokens, 240);
    assert_eq!(metrics.kv_blocks_cached, 15);
    assert_eq!(metrics.kv_blocks_used, 0);
}

#[tokio::test(start_paused = true)]
async fn a_shared_prefix_hits_up_to_where_prompts_differ() {
    let server = server(4, 1000);
    let system = "s".repeat(640); // 10 blocks
    for user in ["first question", "second question"] {
        let mut generation = server.generate(&format!("{system}{user}"), 1);
        let cached = if user == "first question" { 0 } else { 160 };
        assert_eq!(
            generation.recv().await,
            Some(Admitted {
                cached_tokens: cached
            })
        );
        while generation.recv().await.is_some() {}
    }
}

#[tokio::test(start_paused = true)]
async fn the_least_recently_used_blocks_are_evicted() {
    // 10 blocks; each sequence: 260 bytes (65 tokens, 4 full blocks) + 1 token = 5 blocks.
    let server = server(4, 10);
    let prompt = |c: char| c.to_string().repeat(260);
    let mut hits = Vec::new();
    for c in ['a', 'b', 'c', 'b', 'a', 'c'] {
        let mut generation = server.generate(&prompt(c), 1);
        let Some(Admitted { cached_tokens }) = generation.recv().await else {
            panic!("not admitted");
        };
        hits.push(cached_tokens);
        while generation.recv().await.is_some() {}
        assert!(server.metrics().kv_blocks_cached <= 10);
    }
    // c evicts a's three tail blocks (a was used least recently; a prompt's tail goes
    // before its head), so b is still whole and a keeps its first block; a then evicts three
    // of c's blocks.
    assert_eq!(hits, [0, 0, 0, 64, 16, 16]);
    assert_eq!(server.metrics().kv_blocks_evicted, 9);
}

#[tokio::test(start_paused = true)]
async fn requests_queue_in_order_when_the_slots_are_full() {
    let server = server(1, 1000);
    let start = Instant::now();
    let tasks: Vec<_> = ['a', 'b', 'c']
        .into_iter()
        .map(|c| tokio::spawn(timeline(server.generate(&short(c), 2), start)))
        .collect();
    let metrics = server.metrics();
    assert_eq!((metrics.running, metrics.waiting), (0, 3));
    tokio::time::sleep(ms(1)).await;
    let metrics = server.metrics();
    assert_eq!((metrics.running, metrics.waiting), (1, 2));

    let mut timelines = Vec::new();
    for task in tasks {
        timelines.push(task.await.expect("timeline task"));
    }
    // Each: 41 ms to its first token, 6 ms to the second; the next starts when it is done.
    let expected = [ms(0), ms(47), ms(94)];
    for (events, begin) in timelines.iter().zip(expected) {
        assert_eq!(admitted(events), begin);
        assert_eq!(at(events, Token), begin + ms(41));
        assert_eq!(at(events, Done), begin + ms(47));
    }
    assert_eq!(server.metrics().peak_running, 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_kv_blocks_even_with_free_slots() {
    // Each sequence: 25 prompt + 50 answer tokens = 5 blocks; the cache holds 6.
    let server = server(4, 6);
    let start = Instant::now();
    let first = tokio::spawn(timeline(server.generate(&short('a'), 50), start));
    let second = tokio::spawn(timeline(server.generate(&short('b'), 50), start));
    tokio::time::sleep(ms(1)).await;
    let metrics = server.metrics();
    assert_eq!((metrics.running, metrics.waiting), (1, 1));
    assert_eq!(metrics.kv_blocks_used, 5);
    assert!((metrics.kv_usage - 5.0 / 6.0).abs() < 1e-12);

    let first = first.await.expect("first");
    let second = second.await.expect("second");
    let done = at(&first, Done);
    assert_eq!(done, ms(41 + 49 * 6));
    assert_eq!(admitted(&second), done);
}

#[tokio::test(start_paused = true)]
async fn a_bigger_batch_makes_longer_steps() {
    let server = server(4, 1000);
    let start = Instant::now();
    let a = tokio::spawn(timeline(server.generate(&short('a'), 4), start));
    let b = tokio::spawn(timeline(server.generate(&short('b'), 2), start));
    let (a, b) = (a.await.expect("a"), b.await.expect("b"));
    // Step 1: two prefills of 35 ms, decode 5 + 2 × 1 = 77 ms; then 7 ms steps while both run,
    // 6 ms once b is done.
    let tokens = |events: &[(SimEvent, Duration)]| -> Vec<Duration> {
        events
            .iter()
            .filter(|(event, _)| *event == Token)
            .map(|(_, time)| *time)
            .collect()
    };
    assert_eq!(tokens(&b), [ms(77), ms(84)]);
    assert_eq!(tokens(&a), [ms(77), ms(84), ms(90), ms(96)]);
}

#[tokio::test(start_paused = true)]
async fn an_admission_stalls_the_running_batch_for_its_prefill() {
    let server = server(4, 1000);
    let start = Instant::now();
    let a = tokio::spawn(timeline(server.generate(&short('a'), 4), start));
    // a's tokens: 41, 47, ...; b arrives during a's second step and joins at 47.
    tokio::time::sleep(ms(42)).await;
    let b = tokio::spawn(timeline(server.generate(&short('b'), 1), start));
    let (a, b) = (a.await.expect("a"), b.await.expect("b"));
    assert_eq!(admitted(&b), ms(47));
    // The step that admits b: its prefill 35 + decode of two 7 = 42 ms.
    assert_eq!(at(&b, Token), ms(89));
    let tokens: Vec<_> = a
        .iter()
        .filter(|(event, _)| *event == Token)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(tokens, [ms(41), ms(47), ms(89), ms(95)]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_generation_frees_its_slot_and_blocks() {
    let server = server(1, 1000);
    let start = Instant::now();
    let mut long = server.generate(&short('a'), 100);
    let queued_then_dropped = server.generate(&short('c'), 1);
    let next = tokio::spawn(timeline(server.generate(&short('b'), 1), start));
    drop(queued_then_dropped);

    assert_eq!(long.recv().await, Some(Admitted { cached_tokens: 0 }));
    assert_eq!(long.recv().await, Some(Token));
    assert_eq!(start.elapsed(), ms(41));
    drop(long);

    // The loop notices at the end of the step already under way.
    let next = next.await.expect("next");
    assert_eq!(admitted(&next), ms(47));
    assert_eq!(at(&next, Done), ms(47 + 41));
    let metrics = server.metrics();
    assert_eq!(metrics.requests_cancelled, 2);
    assert_eq!(metrics.requests_finished, 1);
    assert_eq!(
        (metrics.running, metrics.waiting, metrics.kv_blocks_used),
        (0, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_sequence_larger_than_the_cache_is_rejected() {
    let server = server(4, 4);
    // 25 + 50 tokens = 5 blocks.
    let mut generation = server.generate(&short('a'), 50);
    assert_eq!(
        generation.recv().await,
        Some(SimEvent::Rejected { needed_blocks: 5 })
    );
    assert_eq!(generation.recv().await, None);
    // 25 + 39 tokens = 4 blocks fit.
    let events = timeline(server.generate(&short('a'), 39), Instant::now()).await;
    assert_eq!(events.last().map(|(event, _)| *event), Some(Done));
    assert_eq!(server.metrics().requests_rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn try_recv_sees_a_rejection_at_once_and_nothing_else_early() {
    let server = server(4, 4);
    let mut rejected = server.generate(&short('a'), 50);
    assert_eq!(
        rejected.try_recv(),
        Some(SimEvent::Rejected { needed_blocks: 5 })
    );
    assert_eq!(rejected.try_recv(), None);
    // An accepted sequence has nothing to say before the step loop runs.
    let mut accepted = server.generate(&short('a'), 2);
    assert_eq!(accepted.try_recv(), None);
    assert_eq!(accepted.recv().await, Some(Admitted { cached_tokens: 0 }));
    assert_eq!(accepted.cached_tokens(), Some(0));
}

#[tokio::test(start_paused = true)]
async fn a_zero_token_answer_is_admitted_and_done() {
    let server = server(4, 1000);
    let start = Instant::now();
    let events = timeline(server.generate(&short('a'), 0), start).await;
    // Prefill 35 and the step's fixed 5; no sequence decodes.
    assert_eq!(
        events,
        [(Admitted { cached_tokens: 0 }, ms(0)), (Done, ms(40))]
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_text_speaks_vllm() {
    let server = SimServer::spawn(SimConfig {
        costs: costs(),
        model_name: "llama-3-8b".to_owned(),
        ..SimConfig::default()
    });
    let prompt = "y".repeat(1000);
    for _ in 0..2 {
        let mut generation = server.generate(&prompt, 2);
        while generation.recv().await.is_some() {}
    }
    let mut running = server.generate(&prompt, 10);
    assert!(matches!(running.recv().await, Some(Admitted { .. })));

    let text = server.metrics_text();
    for line in [
        "# TYPE vllm:num_requests_running gauge",
        "vllm:num_requests_running{model_name=\"llama-3-8b\"} 1.0",
        "# TYPE vllm:num_requests_waiting gauge",
        "vllm:num_requests_waiting{model_name=\"llama-3-8b\"} 0.0",
        "# TYPE vllm:gpu_cache_usage_perc gauge",
        "# TYPE vllm:prefix_cache_queries_total counter",
        "vllm:prefix_cache_queries_total{model_name=\"llama-3-8b\"} 750.0",
        "# TYPE vllm:prefix_cache_hits_total counter",
        "vllm:prefix_cache_hits_total{model_name=\"llama-3-8b\"} 480.0",
        "vllm:generation_tokens_total{model_name=\"llama-3-8b\"} 4.0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    // 250 + 10 tokens: 17 blocks of 26,000.
    let usage = text
        .lines()
        .find_map(|l| l.strip_prefix("vllm:gpu_cache_usage_perc{model_name=\"llama-3-8b\"} "))
        .and_then(|value| value.parse::<f64>().ok());
    assert_eq!(usage, Some(17.0 / 26_000.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_complete_within_the_slots() {
    const SLOTS: usize = 4;
    const REQUESTS: u32 = 48;
    let server = SimServer::spawn(SimConfig {
        slots: SLOTS,
        kv_blocks: 200,
        costs: Costs {
            prefill_base: Duration::from_micros(50),
            prefill_per_token: Duration::from_micros(1),
            decode_base: Duration::from_micros(100),
            decode_per_seq: Duration::from_micros(10),
        },
        ..SimConfig::default()
    });
    let system = "Answer briefly and precisely. ".repeat(10);
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let server = server.clone();
            let prompt = format!("{system}question {}", i % 6);
            let max_tokens = 2 + i % 15;
            let quits = i % 8 == 7;
            tokio::spawn(async move {
                let mut generation = server.generate(&prompt, max_tokens);
                let mut tokens = 0;
                assert!(matches!(generation.recv().await, Some(Admitted { .. })));
                assert!(server.metrics().running <= SLOTS);
                while let Some(event) = generation.recv().await {
                    match event {
                        Token if quits => return None,
                        Token => tokens += 1,
                        Done => return Some((tokens, max_tokens)),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                panic!("stream ended without Done");
            })
        })
        .collect();

    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        let mut completed = Vec::new();
        for task in tasks {
            if let Some(done) = task.await.expect("request task") {
                completed.push(done);
            }
        }
        // Wait for the server to notice the dropped generations.
        while server.metrics().running + server.metrics().waiting > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        completed
    })
    .await;
    let completed = outcome.expect("every request completes");

    assert_eq!(completed.len(), 42);
    for (tokens, max_tokens) in &completed {
        assert_eq!(tokens, max_tokens);
    }
    let metrics = server.metrics();
    assert!(metrics.peak_running <= SLOTS, "{metrics:?}");
    assert_eq!(
        metrics.requests_finished + metrics.requests_cancelled,
        u64::from(REQUESTS)
    );
    assert!(metrics.requests_cancelled <= 6);
    let delivered: u32 = completed.iter().map(|(tokens, _)| tokens).sum();
    assert!(metrics.generated_tokens_total >= u64::from(delivered));
    assert_eq!(metrics.kv_blocks_used, 0);
    assert!(metrics.prefix_hit_tokens > 0);
}
