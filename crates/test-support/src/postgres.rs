//! Throwaway PostgreSQL servers: [`PostgresServer`], and [`shared`], one
//! per test binary.
//!
//! [`PostgresServer::start`] runs `initdb` into a fresh temporary directory
//! (trust authentication, user `postgres`, UTF-8, no fsync), then the
//! `postgres` binary as a child process on a free loopback port, with its
//! Unix socket in that directory and durability turned off for speed
//! (`fsync`, `synchronous_commit`, `full_page_writes`). It blocks the calling
//! thread until the server is ready (usually under a second, `initdb`
//! included). [`stop`](PostgresServer::stop) shuts it down (fast shutdown)
//! and [`restart`](PostgresServer::restart) starts it again on the same port
//! with the same data, for "PostgreSQL went away, PostgreSQL came back"
//! tests. Dropping it shuts it down and removes the directory.
//!
//! PostgreSQL refuses to run as root. When this process runs as root (as CI
//! does), `initdb` and `postgres` run as the `postgres` system user (or
//! `nobody` when there is none), through `setpriv`, and the temporary
//! directory is handed to that user.
//!
//! The binaries are looked up on `PATH`, then in `pg_config --bindir`, then
//! in the newest `/usr/lib/postgresql/*/bin`. When there are none, starting
//! a server panics with a message that says how to install them, so the
//! tests fail loudly instead of being skipped.
//!
//! The client is the test's own: this module only manages the process
//! (and runs `psql` or `createdb` for checks that shouldn't go through the
//! client under test).
//!
//! ```
//! use test_support::postgres::PostgresServer;
//!
//! let mut server = PostgresServer::start();
//! assert!(server.url().starts_with("postgres://postgres@127.0.0.1:"));
//! server.psql("create table t (n int); insert into t values (1), (2)");
//! server.stop();
//! assert!(std::net::TcpStream::connect(server.addr()).is_err());
//! server.restart(); // same port, same data
//! assert_eq!(server.psql("select sum(n) from t"), "3");
//!
//! // A database of its own, e.g. for a test on the shared server.
//! let name = test_support::postgres::unique_name("example");
//! let url = server.create_database(&name);
//! assert!(url.ends_with(&format!("/{name}")));
//! assert_eq!(server.psql_in(&name, "select current_database()"), name);
//! ```

use std::fs::File;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "PostgreSQL's server binaries (initdb, postgres) were not found on \
     PATH, in `pg_config --bindir` or under /usr/lib/postgresql/*/bin. The tests need a real \
     PostgreSQL: install it with `sudo apt-get install postgresql` (the project's \
     `scripts/install-postgres`, which `scripts/test` runs, does this for you).";

/// The line PostgreSQL logs once it accepts connections.
const READY_LINE: &str = "database system is ready to accept connections";

/// How long a server may take to come up or to shut down.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A PostgreSQL server on a loopback port, with a data directory of its own;
/// shut down and removed on drop.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    user: Option<RunAs>,
    child: Option<Child>,
}

/// The unprivileged user the server runs as when this process is root.
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: String,
    gid: String,
}

impl PostgresServer {
    /// Creates a cluster in a fresh temporary directory and starts a server
    /// on a free loopback port, waiting until it accepts connections.
    ///
    /// # Panics
    /// When the binaries are missing, `initdb` fails or the server doesn't
    /// come up (the message holds the server's log).
    pub fn start() -> Self {
        let bin = bin_dir().unwrap_or_else(|| panic!("{INSTALL_HINT}"));
        let user = run_as();
        let dir = std::env::temp_dir().join(format!(
            "tower-ai-postgres-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut server = Self {
            port: 0,
            dir,
            bin,
            user,
            child: None,
        };
        if let Some(user) = &server.user {
            let owner = format!("{}:{}", user.uid, user.gid);
            let status = Command::new("chown")
                .arg(&owner)
                .arg(&server.dir)
                .status()
                .unwrap_or_else(|e| panic!("running chown: {e}"));
            assert!(
                status.success(),
                "chown {owner} {} failed: {status}",
                server.dir.display()
            );
        }
        server.initdb();
        let mut last_error = String::new();
        // A free port can be taken between our probe and the server's bind:
        // try a few.
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start postgres: {last_error}");
    }

    /// The port it listens on (TCP on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`: the `postgres`
    /// database as the `postgres` superuser (no password: trust
    /// authentication).
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of another database on this server (see
    /// [`create_database`](Self::create_database)).
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The directory holding the data directory (`data/`), the Unix socket
    /// and the log (`postgres.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server is running (it may have been stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// Shuts the server down (fast shutdown: sessions are ended, the data is
    /// kept) and waits until the process has exited, so the port refuses
    /// connections when this returns.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            shut_down(child, "-INT");
        }
    }

    /// Starts the server again on the same port with the same data (what
    /// was committed before [`stop`](Self::stop) is still there).
    ///
    /// # Panics
    /// When the server doesn't come up.
    pub fn restart(&mut self) {
        self.stop();
        // The port was just released; another process could take it, but on
        // a test machine it is free again at once.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("could not restart postgres on {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Runs SQL with `psql` (as the superuser, on the `postgres` database)
    /// and returns its unaligned, tuples-only output, trimmed: for checks
    /// that shouldn't go through the client under test, e.g.
    /// `server.psql("select count(*) from t")` → `"3"`.
    ///
    /// # Panics
    /// When `psql` fails (the message holds its error).
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// [`psql`](Self::psql) on another database.
    ///
    /// # Panics
    /// When `psql` fails.
    pub fn psql_in(&self, database: &str, sql: &str) -> String {
        let out = self
            .client_command("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .unwrap_or_else(|e| panic!("running psql: {e}"));
        assert!(
            out.status.success(),
            "psql -c {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Creates a database named `name` (see [`unique_name`]) and returns its
    /// URL: a test that wants a database of its own on a shared server.
    ///
    /// # Panics
    /// When `createdb` fails.
    pub fn create_database(&self, name: &str) -> String {
        let out = self
            .client_command("createdb")
            .arg(name)
            .output()
            .unwrap_or_else(|e| panic!("running createdb: {e}"));
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url_for(name)
    }

    /// One of the client programs of the server's version, pointed at it.
    fn client_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .env_remove("PGDATABASE")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
        cmd
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `program` from the server's bin directory, as the unprivileged user
    /// when this process is root.
    fn server_command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut cmd = match &self.user {
            Some(user) => {
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={}", user.uid))
                    .arg(format!("--regid={}", user.gid))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(program);
                cmd
            }
            None => Command::new(program),
        };
        // The server's user may not be allowed into this process's working
        // directory; the C locale keeps the log's wording fixed.
        cmd.current_dir(&self.dir)
            .env("LC_ALL", "C")
            .env("LANG", "C")
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .stdin(Stdio::null());
        cmd
    }

    fn initdb(&self) {
        let out = self
            .server_command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output();
        let out = match out {
            Ok(out) => out,
            Err(e) if e.kind() == ErrorKind::NotFound => match &self.user {
                Some(_) => panic!(
                    "`setpriv` (util-linux) was not found on PATH; it runs PostgreSQL as an \
                     unprivileged user when the tests run as root"
                ),
                None => panic!("{INSTALL_HINT}"),
            },
            Err(e) => panic!("running initdb: {e}"),
        };
        let as_user = self
            .user
            .as_ref()
            .map_or(String::new(), |u| format!(" (as {})", u.name));
        assert!(
            out.status.success(),
            "initdb{as_user} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log_path = self.dir.join("postgres.log");
        let log = File::create(&log_path).map_err(|e| format!("creating the log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = self.server_command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.dir);
        for setting in [
            "listen_addresses=127.0.0.1",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "shared_buffers=16MB",
            "max_connections=50",
            "max_parallel_workers_per_gather=0",
            "huge_pages=off",
            "logging_collector=off",
        ] {
            cmd.arg("-c").arg(setting);
        }
        cmd.stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
        let mut child = cmd.spawn().map_err(|e| format!("spawning postgres: {e}"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("postgres exited ({status}):\n{}", self.log()));
            }
            if self.log().contains(READY_LINE)
                && TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
            {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                shut_down(child, "-QUIT");
                return Err(format!(
                    "postgres did not accept connections within {START_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            // Immediate shutdown: no checkpoint (the data is thrown away),
            // but the server's children and shared memory are cleaned up,
            // which a plain kill would leave behind.
            shut_down(child, "-QUIT");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `signal` to the postmaster and waits for it to exit; kills it after
/// [`STOP_TIMEOUT`].
fn shut_down(mut child: Child, signal: &str) {
    // The server may run as another user: `kill` as this process can signal
    // it (root), where `Child::kill` would also do, but only with SIGKILL.
    let _ = Command::new("kill")
        .arg(signal)
        .arg(child.id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// The test binary's server, started on first use, for tests that only need
/// *a* server and keep apart by table, schema or database name
/// ([`unique_name`], [`PostgresServer::create_database`]).
///
/// Each `#[tokio::test]` runs on a runtime of its own, so what is shared is
/// the server process, never a connected client: connect in the test. Use it
/// only in tests that never stop or restart it. It lives until the test
/// process exits, however it exits: a watchdog process waits for the end of
/// a pipe from this process, then shuts the server down and removes its
/// directory.
///
/// # Panics
/// When the server can't start.
pub fn shared() -> &'static PostgresServer {
    static SERVER: OnceLock<(PostgresServer, Child)> = OnceLock::new();
    let (server, _) = SERVER.get_or_init(|| {
        let server = PostgresServer::start();
        let watchdog = reap_at_exit(&server);
        (server, watchdog)
    });
    server
}

/// A name no other call in this process returns, usable unquoted as a
/// PostgreSQL identifier (a table, schema or database): `{prefix}_{pid}_{n}`,
/// lowercased, with anything but ASCII letters, digits and `_` made `_`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let prefix = if prefix.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        prefix
    } else {
        format!("t_{prefix}")
    };
    let mut name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    // PostgreSQL truncates identifiers to 63 bytes: keep the unique tail.
    if name.len() > 63 {
        name.drain(..name.len() - 63);
        name.replace_range(..1, "t");
    }
    name
}

/// Starts a watchdog that shuts `server` down and removes its directory when
/// its stdin closes, that is when this process exits (its descriptors are
/// closed then, whatever ended it). Keep the returned child, and with it the
/// write end of that pipe, for as long as the server should live.
fn reap_at_exit(server: &PostgresServer) -> Child {
    let pid = server.pid().map_or(String::new(), |p| p.to_string());
    // SIGQUIT (immediate shutdown) cleans up the server's children and
    // shared memory; SIGKILL only if it hasn't exited after a while.
    let script = format!(
        "cat >/dev/null; kill -QUIT {pid} 2>/dev/null; i=0; \
         while kill -0 {pid} 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
         kill -9 {pid} 2>/dev/null; rm -rf -- \"$1\""
    );
    match Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(server.dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(watchdog) => watchdog,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!("`sh` was not found on PATH"),
        Err(e) => panic!("starting the shared PostgreSQL server's watchdog: {e}"),
    }
}

/// The directory holding `initdb` and `postgres`: the one `initdb` on PATH
/// lives in (symbolic links followed), `pg_config --bindir`, or the newest
/// `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.is_file() {
                let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
                if let Some(parent) = real.parent().filter(|d| has_server(d)) {
                    return Some(parent.to_path_buf());
                }
            }
        }
    }
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Vec<u32> = name
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// `None` when this process isn't root; else the user to run the server as:
/// `postgres` when it exists, else `nobody`.
fn run_as() -> Option<RunAs> {
    if id(&["-u"])? != "0" {
        return None;
    }
    let user = ["postgres", "nobody"]
        .into_iter()
        .find_map(|name| {
            Some(RunAs {
                name: name.to_owned(),
                uid: id(&["-u", name])?,
                gid: id(&["-g", name])?,
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "running as root, and neither a `postgres` nor a `nobody` user exists to run \
                 PostgreSQL as (it refuses to run as root)"
            )
        });
    Some(user)
}

/// The output of `id ARGS`, trimmed; `None` when it fails.
fn id(args: &[&str]) -> Option<String> {
    let out = Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        // Never the default port: a system server may run there.
        if port != 5432 {
            return port;
        }
    }
}
