//! Real `redis-server` processes: [`RedisServer`] and [`RedisCluster`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::{Builder, ClientLike, Config, ReconnectPolicy, Server, ServerConfig};
use fred::types::config::ClusterDiscoveryPolicy;

const INSTALL_HINT: &str = "redis-server was not found on PATH. The tests need a real Redis: \
     install it with `sudo apt-get install redis-server redis-tools` \
     (the project's `scripts/test` does this for you).";

/// The `redis-server` on `PATH`.
const DEFAULT_BINARY: &str = "redis-server";

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A `redis-server` process on a loopback port, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    /// When `redis-server` is missing or doesn't come up.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g.
    /// `["--maxmemory", "1mb"]`).
    ///
    /// # Panics
    /// When `redis-server` is missing or doesn't come up.
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::start_from(Path::new(DEFAULT_BINARY), extra_args)
    }

    /// Starts a server from the `redis-server` binary at `binary` (e.g. one
    /// with modules to load through `--loadmodule` in `extra_args`).
    ///
    /// # Panics
    /// When the binary is missing or the server doesn't come up.
    pub fn start_from(binary: &Path, extra_args: &[&str]) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|s| (*s).to_owned()).collect();
        let mut last_error = String::new();
        // A free port can be taken between our probe and the server's bind:
        // try a few.
        for _ in 0..5 {
            let port = free_port();
            let dir = temp_dir(port);
            let mut server = Self {
                binary: binary.to_owned(),
                port,
                dir,
                extra_args: extra_args.clone(),
                child: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its temporary directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the process is running (it may have been stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (like a crash: no shutdown, nothing saved) and waits
    /// until its port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&self.addr(), Duration::from_millis(50)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server again on the same port (and, for a Cluster node, the
    /// same node identity). A stopped standalone server comes back empty.
    ///
    /// # Panics
    /// When the server doesn't come up.
    pub fn restart(&mut self) {
        self.stop();
        // The port was just released; another process could take it, but on
        // a test machine it is free again at once.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("could not restart redis-server on {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Sends one command and returns the raw reply (RESP text), for checks
    /// that shouldn't go through the client under test.
    ///
    /// # Panics
    /// When the server doesn't answer.
    pub fn command(&self, args: &[&str]) -> String {
        command(self.port, args).unwrap_or_else(|e| panic!("redis command {args:?} failed: {e}"))
    }

    /// A connected `fred` client.
    ///
    /// # Panics
    /// When it can't connect.
    pub async fn client(&self) -> fred::clients::Client {
        connect(Config::from_url(&self.url()).expect("a valid URL")).await
    }

    fn spawn(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.binary);
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            "redis.log",
        ])
        .arg("--dir")
        .arg(&self.dir)
        .args(&self.extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.binary == Path::new(DEFAULT_BINARY) {
                    panic!("{INSTALL_HINT}")
                }
                panic!("{} was not found", self.binary.display())
            }
            Err(e) => return Err(format!("spawning redis-server: {e}")),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                return Err(format!("redis-server exited ({status}): {stderr}{log}"));
            }
            if command(self.port, &["PING"]).is_ok_and(|r| r.starts_with("+PONG")) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("redis-server did not answer PING within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 3-master Redis Cluster on loopback ports, killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, assigns the 16,384 slots among
    /// them (`redis-cli --cluster create`) and waits until every node reports
    /// `cluster_state:ok`.
    ///
    /// # Panics
    /// When `redis-server` or `redis-cli` is missing or the cluster doesn't
    /// form.
    pub fn start() -> Self {
        Self::start_from(Path::new(DEFAULT_BINARY), &[])
    }

    /// Starts the cluster's servers from the `redis-server` binary at
    /// `binary`, each with `extra_args` too (e.g. `--loadmodule …`).
    ///
    /// # Panics
    /// When the binary or `redis-cli` is missing or the cluster doesn't
    /// form.
    pub fn start_from(binary: &Path, extra_args: &[&str]) -> Self {
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ];
        args.extend_from_slice(extra_args);
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_from(binary, &args))
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null());
        let out = match create.output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-cli was not found on PATH: install it with \
                 `sudo apt-get install redis-tools` (scripts/test does this for you)"
            ),
            Err(e) => panic!("running redis-cli --cluster create: {e}"),
        };
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_until_ok(Duration::from_secs(20));
        cluster
    }

    /// `redis://127.0.0.1:PORT` for each node: the seed URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, e.g. to stop one.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, mutably.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Waits until every running node reports `cluster_state:ok`.
    ///
    /// # Panics
    /// When that takes longer than `timeout`.
    pub fn wait_until_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                command(n.port, &["CLUSTER", "INFO"]).is_ok_and(|r| r.contains("cluster_state:ok"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not reach cluster_state:ok within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A connected `fred` Cluster client.
    ///
    /// # Panics
    /// When it can't connect.
    pub async fn client(&self) -> fred::clients::Client {
        let config = Config {
            server: ServerConfig::Clustered {
                hosts: self
                    .nodes
                    .iter()
                    .map(|n| Server::new("127.0.0.1", n.port))
                    .collect(),
                policy: ClusterDiscoveryPolicy::default(),
            },
            ..Config::default()
        };
        connect(config).await
    }
}

async fn connect(config: Config) -> fred::clients::Client {
    let client = Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
        .build()
        .expect("a valid Redis config");
    client.init().await.expect("connected to the test Redis");
    client
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn temp_dir(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!(
        "tower-ai-redis-{}-{}-{}",
        std::process::id(),
        port,
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Sends one RESP command on a fresh connection and returns the reply as
/// text.
fn command(port: u16, args: &[&str]) -> Result<String, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn =
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("*{}\r\n", args.len());
    for arg in args {
        req.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    conn.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if reply_complete(&reply) {
            break;
        }
    }
    String::from_utf8(reply).map_err(|e| e.to_string())
}

/// Whether a simple reply (status, error, integer or bulk string) is whole.
fn reply_complete(reply: &[u8]) -> bool {
    let Some(line_end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    match reply.first() {
        Some(b'$') => {
            let len: i64 = std::str::from_utf8(&reply[1..line_end])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            len < 0 || reply.len() >= line_end + 2 + len as usize + 2
        }
        _ => true,
    }
}
