//! Connections of their own for blocking reads (`XREADGROUP BLOCK`,
//! `XREAD BLOCK`): a blocked command holds its connection until it returns,
//! so it never goes through the client every other call shares.

use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::ConnectHandle;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long opening a dedicated connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A connected client of its own. Dropping it closes its connection at once
/// (its connection task is aborted), the way a process that dies closes its
/// sockets: a command still blocked on it ends there.
#[derive(Debug)]
pub(super) struct Dedicated {
    client: Client,
    task: ConnectHandle,
}

impl Dedicated {
    /// Opens a connection with `template`'s configuration; `None` when it
    /// doesn't come up within [`CONNECT_TIMEOUT`].
    pub(super) async fn open(template: &Client) -> Option<Self> {
        let client = template.clone_new();
        let task = client.connect();
        let connection = Self { client, task };
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, connection.client.wait_for_connect()).await;
        matches!(connected, Ok(Ok(()))).then_some(connection)
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A bounded set of dedicated connections for the tickets' reads, kept open
/// between answers.
#[derive(Debug)]
pub(super) struct BlockingPool {
    template: Client,
    idle: Mutex<Vec<Dedicated>>,
    permits: Arc<Semaphore>,
}

impl BlockingPool {
    pub(super) fn new(template: Client, size: usize) -> Self {
        Self {
            template,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size.min(Semaphore::MAX_PERMITS))),
        }
    }

    pub(super) fn template(&self) -> &Client {
        &self.template
    }

    /// A connection, while one of the set is free and one can be opened;
    /// `None` otherwise (the caller polls instead).
    pub(super) async fn acquire(self: &Arc<Self>) -> Option<Lease> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        let idle = self.idle.lock().pop();
        let connection = match idle {
            Some(connection) => connection,
            None => Dedicated::open(&self.template).await?,
        };
        Some(Lease {
            pool: Arc::clone(self),
            connection: Some(connection),
            clean: true,
            _permit: permit,
        })
    }
}

/// A connection taken from a [`BlockingPool`]: given back when dropped if
/// its last command finished, closed otherwise.
#[derive(Debug)]
pub(super) struct Lease {
    pool: Arc<BlockingPool>,
    connection: Option<Dedicated>,
    clean: bool,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    pub(super) fn client(&self) -> Option<&Client> {
        self.connection.as_ref().map(Dedicated::client)
    }

    /// Marks the connection as unfit to be reused (a command on it failed
    /// or timed out and may still be blocked there).
    pub(super) fn spoil(&mut self) {
        self.clean = false;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take()
            && self.clean
        {
            self.pool.idle.lock().push(connection);
        }
    }
}
