//! One Redis server and one Redis Cluster per test binary, for the tests
//! that only need *a* server and keep apart by key prefix.
//!
//! Each `#[tokio::test]` runs on a runtime of its own, so what is shared is
//! the server process, never a connected client: connect in the test.
//! Starting a Cluster takes seconds; a test binary with several Cluster
//! tests starts one instead of one per test.
//!
//! Use them only in tests that
//! - give every key a prefix no other test uses ([`prefix`]),
//! - never stop, restart, flush or reconfigure the server, and never look at
//!   every key (`KEYS *`, `DBSIZE`, `INFO`), since other tests write there
//!   at the same time.
//!
//! The servers live until the test process exits, however it exits (a
//! panic, an abort, a kill): a watchdog process waits for the end of a pipe
//! from this process, then kills them and removes their directories.

use std::io::ErrorKind;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::redis::{RedisCluster, RedisServer};

/// The test binary's standalone server, started on first use.
///
/// # Panics
/// When `redis-server` is missing or doesn't come up.
pub fn redis() -> &'static RedisServer {
    static SERVER: OnceLock<(RedisServer, Child)> = OnceLock::new();
    let (server, _) = SERVER.get_or_init(|| {
        let server = RedisServer::start();
        let watchdog = reap_at_exit(&[&server]);
        (server, watchdog)
    });
    server
}

/// The test binary's 3-master Cluster, started on first use.
///
/// # Panics
/// When `redis-server` or `redis-cli` is missing or the cluster doesn't
/// form.
pub fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<(RedisCluster, Child)> = OnceLock::new();
    let (cluster, _) = CLUSTER.get_or_init(|| {
        let cluster = RedisCluster::start();
        let nodes: Vec<&RedisServer> = cluster.nodes().iter().collect();
        let watchdog = reap_at_exit(&nodes);
        (cluster, watchdog)
    });
    cluster
}

/// A key prefix no other call in this process returns: `{name}-{pid}-{n}`.
pub fn prefix(name: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts a watchdog that kills `servers` and removes their directories
/// when its stdin closes, that is when this process exits (its descriptors
/// are closed then, whatever ended it). Keep the returned child, and with
/// it the write end of that pipe, for as long as the servers should live.
pub(crate) fn reap_at_exit(servers: &[&RedisServer]) -> Child {
    let pids: Vec<String> = servers
        .iter()
        .filter_map(|s| s.pid())
        .map(|pid| pid.to_string())
        .collect();
    let script = format!(
        "cat >/dev/null; kill -9 {} 2>/dev/null; sleep 0.2; rm -rf -- \"$@\"",
        pids.join(" ")
    );
    match Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(servers.iter().map(|s| s.dir()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(watchdog) => watchdog,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!("`sh` was not found on PATH"),
        Err(e) => panic!("starting the shared servers' watchdog: {e}"),
    }
}
