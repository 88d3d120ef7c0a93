//! The connections that follow recordings: `XREAD BLOCK` holds its
//! connection until it returns, so these are a bounded set of their own.

use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

/// A bounded set of connections for blocking reads (`XREAD BLOCK` holds its
/// connection until it returns).
pub(super) struct BlockingPool {
    template: Client,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

/// A blocking-read connection, given back when dropped.
pub(crate) struct PooledConnection<'a> {
    pool: &'a BlockingPool,
    client: Option<Client>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl PooledConnection<'_> {
    pub(crate) fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }
}

impl Drop for PooledConnection<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            self.pool.idle.lock().push(client);
        }
    }
}

impl BlockingPool {
    pub(super) fn new(template: Client, size: usize) -> Self {
        Self {
            template,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size),
        }
    }

    pub(super) async fn acquire(&self, connect_timeout: Duration) -> Option<PooledConnection<'_>> {
        let permit = self.permits.try_acquire().ok()?;
        let idle = self.idle.lock().pop();
        let client = match idle {
            Some(client) => client,
            None => {
                let client = self.template.clone_new();
                client.connect();
                match tokio::time::timeout(connect_timeout, client.wait_for_connect()).await {
                    Ok(Ok(())) => client,
                    _ => {
                        let _ = client.quit().await;
                        return None;
                    }
                }
            }
        };
        Some(PooledConnection {
            pool: self,
            client: Some(client),
            _permit: permit,
        })
    }
}

impl Drop for BlockingPool {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.idle.lock());
        if idle.is_empty() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                for client in idle {
                    let _ = client.quit().await;
                }
            });
        }
    }
}
