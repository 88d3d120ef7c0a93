//! Durable conversations on a real PostgreSQL: round trips and idempotent
//! upserts, turns written every N and at session end, PostgreSQL going away
//! while the chat goes on (nothing blocks, nothing is lost or duplicated),
//! a conversation read back by a fresh sink, and the writer's bound.
//!
//! Tests that stop or restart PostgreSQL run a server of their own; the
//! others share one and keep apart by table name.
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use test_support::postgres::{self, PostgresServer};
use tower_ai_context::durable::{
    ConversationSink, DurableConfig, DurableWriter, PostgresSink, SinkError, Turn, WriterError,
};

/// A bound for waits that should take milliseconds, generous for a loaded
/// machine.
const WITHIN: Duration = Duration::from_secs(30);

/// Turns `range` of `conversation`, alternating user and assistant.
fn turns(conversation: &str, range: std::ops::Range<u64>) -> Vec<Turn> {
    range
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            Turn::new(conversation, i, role, format!("{conversation}: turn {i}")).tokens(i + 1)
        })
        .collect()
}

/// Quick retries, so a test doesn't wait out a long backoff after a restart.
fn config(every_turns: usize) -> DurableConfig {
    DurableConfig::default()
        .every_turns(every_turns)
        .max_delay(Duration::from_secs(3600))
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(200))
}

async fn connect(server: &PostgresServer, table: &str) -> Arc<PostgresSink> {
    Arc::new(
        PostgresSink::builder(server.url())
            .table(table)
            .connect()
            .await
            .expect("connected to the test PostgreSQL"),
    )
}

/// Rows of `conversation` in `table`, counted with psql, not the sink.
fn count_rows(server: &PostgresServer, table: &str, conversation: &str) -> usize {
    server
        .psql(&format!(
            "select count(*) from {table} where conversation = '{conversation}'"
        ))
        .parse()
        .expect("a count")
}

async fn read(sink: &PostgresSink, conversation: &str) -> Vec<Turn> {
    sink.read(conversation).await.expect("read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_round_trip_and_a_rewrite_replaces_the_row() {
    let server = postgres::shared();
    let table = postgres::unique_name("round_trip");
    let sink = connect(server, &table).await;

    let chat = turns("chat", 0..4);
    sink.write(&chat).await.expect("write");
    sink.write(&turns("other", 0..1)).await.expect("write");
    assert_eq!(read(&sink, "chat").await, chat);
    assert_eq!(read(&sink, "other").await, turns("other", 0..1));
    assert!(read(&sink, "nobody").await.is_empty());

    // Written out of order, read back in order.
    let late = turns("chat", 4..6);
    sink.write(&[late[1].clone(), late[0].clone()])
        .await
        .expect("write");
    assert_eq!(read(&sink, "chat").await, turns("chat", 0..6));

    // The same batch again (a retry): nothing changes, not even written_at.
    let written_at = |server: &PostgresServer| {
        server.psql(&format!(
            "select written_at from {table} where conversation = 'chat' and turn = 0"
        ))
    };
    let before = written_at(server);
    sink.write(&chat).await.expect("rewrite");
    assert_eq!(written_at(server), before);
    assert_eq!(count_rows(server, &table, "chat"), 6);

    // A rewrite of a position replaces it: the last write wins, also
    // within one batch.
    let edited = Turn::new("chat", 1, "assistant", "edited").tokens(9);
    let newest = Turn::new("chat", 1, "assistant", "edited again");
    sink.write(&[edited, newest.clone()])
        .await
        .expect("rewrite");
    let back = read(&sink, "chat").await;
    assert_eq!(back.len(), 6);
    assert_eq!(back[1], newest);
    assert_eq!(back[0], chat[0]);
    assert_eq!(count_rows(server, &table, "chat"), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_are_written_every_n_and_the_rest_at_the_session_end() {
    let server = postgres::shared();
    let table = postgres::unique_name("every_n");
    let sink = connect(server, &table).await;
    let writer = DurableWriter::spawn(sink.clone(), config(3));

    let chat = turns("chat", 0..7);
    let short = turns("short", 0..2);
    for turn in chat.iter().chain(&short) {
        writer.record(turn.clone()).expect("recorded");
    }
    // Two batches of 3; the 7th turn and the short conversation stay
    // buffered until their sessions end.
    let six = test_support::eventually_async(WITHIN, || {
        let sink = sink.clone();
        async move { read(&sink, "chat").await.len() == 6 }
    })
    .await;
    assert!(six.is_some(), "the first 6 turns were never written");
    assert_eq!(writer.stats().held, 3);
    assert_eq!(read(&sink, "chat").await, chat[..6]);
    assert!(read(&sink, "short").await.is_empty());

    assert_eq!(writer.end("chat"), 1);
    assert_eq!(writer.end("chat"), 0);
    tokio::time::timeout(WITHIN, writer.flush())
        .await
        .expect("flushed in time")
        .expect("flushed");
    assert_eq!(read(&sink, "chat").await, chat);
    // flush (shutdown) hands over the buffers of sessions that never ended.
    assert_eq!(read(&sink, "short").await, short);
    let stats = writer.stats();
    assert_eq!((stats.held, stats.written, stats.failures), (0, 9, 0));
    assert_eq!(count_rows(server, &table, "chat"), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_recording_goes_on_and_nothing_is_lost() {
    let mut server = PostgresServer::start();
    let table = "turns";
    let sink = connect(&server, table).await;
    let writer = DurableWriter::spawn(sink.clone(), config(2));
    let before = turns("a", 0..4);
    for turn in &before {
        writer.record(turn.clone()).expect("recorded");
    }
    writer.flush().await.expect("flushed");
    assert_eq!(read(&sink, "a").await, before);

    server.stop();

    // The chat goes on: `record` is a plain function (it can't await the
    // sink), and each call returns at once (the bound only allows for a
    // loaded machine: a call takes microseconds).
    let a = turns("a", 0..24);
    let b = turns("b", 0..10);
    let mut slowest = Duration::ZERO;
    for turn in a[4..].iter().chain(&b) {
        let started = Instant::now();
        writer.record(turn.clone()).expect("recorded while down");
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(250),
        "record took {slowest:?}"
    );
    // The writer tries, fails and keeps the turns.
    let failed = test_support::eventually(WITHIN, || writer.stats().failures > 0).await;
    assert!(failed.is_some(), "no write was attempted while down");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), writer.flush())
            .await
            .is_err(),
        "flushed while PostgreSQL was down"
    );
    assert_eq!(writer.stats().held, 30);
    assert!(matches!(
        sink.read("a").await,
        Err(SinkError::Unavailable(_))
    ));

    server.restart();
    tokio::time::timeout(WITHIN, writer.flush())
        .await
        .expect("flushed in time after the restart")
        .expect("flushed");
    // Exactly what was recorded, in order: none lost, none twice.
    assert_eq!(read(&sink, "a").await, a);
    assert_eq!(read(&sink, "b").await, b);
    assert_eq!(count_rows(&server, table, "a"), 24);
    assert_eq!(count_rows(&server, table, "b"), 10);
    let stats = writer.stats();
    assert_eq!((stats.held, stats.written, stats.refused), (0, 34, 0));
    assert!(stats.failures > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_conversation_is_read_back_from_postgres() {
    let mut server = PostgresServer::start();
    let table = "conversations";
    let chat = turns("session-1", 0..5);
    {
        let sink = connect(&server, table).await;
        let writer = DurableWriter::spawn(sink, config(4));
        for turn in &chat {
            writer.record(turn.clone()).expect("recorded");
        }
        writer.end("session-1");
        writer.flush().await.expect("flushed");
    }
    // The gateway restarts (fresh process state: a new sink and writer),
    // and so does PostgreSQL.
    server.restart();
    let sink = connect(&server, table).await;
    assert_eq!(read(&sink, "session-1").await, chat);

    // The conversation goes on where it was.
    let writer = DurableWriter::spawn(sink.clone(), config(4));
    let next = read(&sink, "session-1").await.len() as u64;
    let more = turns("session-1", next..next + 2);
    for turn in &more {
        writer.record(turn.clone()).expect("recorded");
    }
    writer.end("session-1");
    writer.flush().await.expect("flushed");
    assert_eq!(read(&sink, "session-1").await, turns("session-1", 0..7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_turns_and_counts_them() {
    let mut server = PostgresServer::start();
    let url = server.url();
    server.stop();

    // PostgreSQL is down from the start: connecting fails at once, and a
    // lazy sink can be built anyway.
    let refused = PostgresSink::builder(url.clone())
        .table("bounded")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    assert!(matches!(refused, Err(SinkError::Unavailable(_))));
    let sink = Arc::new(
        PostgresSink::builder(url)
            .table("bounded")
            .build()
            .expect("a valid configuration"),
    );
    let writer = DurableWriter::spawn(sink.clone(), config(1).max_queued_turns(5));

    let chat = turns("chat", 0..8);
    let outcomes: Vec<Result<(), WriterError>> = chat
        .iter()
        .map(|turn| writer.record(turn.clone()))
        .collect();
    assert_eq!(outcomes[..5], [Ok(()); 5]);
    assert_eq!(outcomes[5..], [Err(WriterError::QueueFull); 3]);
    let stats = writer.stats();
    assert_eq!((stats.held, stats.refused), (5, 3));

    server.restart();
    tokio::time::timeout(WITHIN, writer.flush())
        .await
        .expect("flushed in time after the restart")
        .expect("flushed");
    assert_eq!(read(&sink, "chat").await, chat[..5]);
    assert_eq!(count_rows(&server, "bounded", "chat"), 5);
    let stats = writer.stats();
    assert_eq!((stats.held, stats.written, stats.refused), (0, 5, 3));
    // Room again.
    writer.record(chat[5].clone()).expect("recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_postgres_cannot_hold_is_dropped_alone() {
    let server = postgres::shared();
    let table = postgres::unique_name("rejected");
    let sink = connect(server, &table).await;

    let bad = Turn::new("chat", 2, "user", "a NUL \0 here");
    assert!(matches!(
        sink.write(std::slice::from_ref(&bad)).await,
        Err(SinkError::Rejected(_))
    ));
    let huge = Turn::new("chat", u64::MAX, "user", "too far");
    assert!(matches!(
        sink.write(std::slice::from_ref(&huge)).await,
        Err(SinkError::Rejected(_))
    ));

    let writer = DurableWriter::spawn(sink.clone(), config(4));
    let chat = turns("chat", 0..4);
    writer.record(chat[0].clone()).expect("recorded");
    writer.record(chat[1].clone()).expect("recorded");
    writer.record(bad).expect("recorded");
    writer.record(chat[3].clone()).expect("recorded");
    writer.flush().await.expect("flushed");
    assert_eq!(
        read(&sink, "chat").await,
        [chat[0].clone(), chat[1].clone(), chat[3].clone()]
    );
    let stats = writer.stats();
    assert_eq!((stats.written, stats.rejected, stats.held), (3, 1, 0));
}
