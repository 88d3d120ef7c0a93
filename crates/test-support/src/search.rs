//! Redis with vector search: a `redis-server` 8 with the RediSearch module
//! loaded, standalone ([`start`], [`shared`]) or as a 3-master Cluster
//! ([`start_cluster`], [`shared_cluster`]), on free loopback ports.
//!
//! The binaries are the ones `scripts/install-redis-search` unpacks from
//! pinned PyPI wheels into `<target>/redis-search/bin/` (`<target>` is
//! `CARGO_TARGET_DIR` when set, else the workspace's `target/`). When they
//! are missing, the first call runs that script once, and panics with what
//! to do if they are still missing: a test that needs vector search never
//! runs against the system's `redis-server` (which may have no search
//! module) and is never skipped.
//!
//! The shared ones follow the rules of [`shared`](crate::shared): keep
//! apart by key prefix (or index name), never stop or flush them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;

use crate::redis::{RedisCluster, RedisServer};
use crate::shared::reap_at_exit;

/// The `redis-server` binary and the `redisearch.so` module it loads.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `redis-server` (8.x).
    pub server: PathBuf,
    /// The RediSearch module.
    pub module: PathBuf,
}

/// Where the binaries are, installing them first if needed.
///
/// # Panics
/// When they are missing and `scripts/install-redis-search` can't install
/// them.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let target = target_dir();
        let bin = target.join("redis-search").join("bin");
        let found = Binaries {
            server: bin.join("redis-server"),
            module: bin.join("redisearch.so"),
        };
        if found.server.is_file() && found.module.is_file() {
            return found;
        }
        let script = workspace_root()
            .join("scripts")
            .join("install-redis-search");
        let status = Command::new(&script)
            .current_dir(workspace_root())
            .env("CARGO_TARGET_DIR", &target)
            .status();
        assert!(
            found.server.is_file() && found.module.is_file(),
            "Redis with vector search is not installed under {} and {} could not install it \
             ({status:?}). Run `scripts/install-redis-search` (it needs python3 with pip or \
             venv, unzip and access to PyPI); `scripts/test` runs it for you.",
            bin.display(),
            script.display(),
        );
        found
    })
}

/// A private standalone server with search, killed on drop (one a test may
/// stop and restart).
///
/// # Panics
/// When the binaries are missing or the server doesn't come up.
pub fn start() -> RedisServer {
    let b = binaries();
    RedisServer::start_from(&b.server, &module_args(b))
}

/// A private 3-master Cluster with search on every node, killed on drop.
///
/// # Panics
/// When the binaries or `redis-cli` are missing or the cluster doesn't form.
pub fn start_cluster() -> RedisCluster {
    let b = binaries();
    RedisCluster::start_from(&b.server, &module_args(b))
}

/// The test binary's standalone server with search, started on first use.
///
/// # Panics
/// As [`start`].
pub fn shared() -> &'static RedisServer {
    static SERVER: OnceLock<(RedisServer, Child)> = OnceLock::new();
    let (server, _) = SERVER.get_or_init(|| {
        let server = start();
        let watchdog = reap_at_exit(&[&server]);
        (server, watchdog)
    });
    server
}

/// The test binary's 3-master Cluster with search, started on first use.
///
/// # Panics
/// As [`start_cluster`].
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<(RedisCluster, Child)> = OnceLock::new();
    let (cluster, _) = CLUSTER.get_or_init(|| {
        let cluster = start_cluster();
        let nodes: Vec<&RedisServer> = cluster.nodes().iter().collect();
        let watchdog = reap_at_exit(&nodes);
        (cluster, watchdog)
    });
    cluster
}

fn module_args(b: &Binaries) -> Vec<&str> {
    let module = b
        .module
        .to_str()
        .expect("the module's path is UTF-8 (it is under the target directory)");
    vec!["--loadmodule", module]
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

/// `CARGO_TARGET_DIR` (at run time, else as the build saw it; relative to
/// the workspace root), else the workspace's `target/`.
fn target_dir() -> PathBuf {
    let configured = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from));
    match configured {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}
