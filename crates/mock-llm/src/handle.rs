//! A mock served in the background.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::task::JoinHandle;

use crate::{EndpointStats, Fault, LastRequest, MockLlm, Stats, StatsReport};

/// A mock served by [`MockLlm::spawn`]. Dropping it shuts the server down (see
/// [`MockLlm::shutdown`]); [`MockHandle::shutdown`] also waits until it has stopped.
#[derive(Debug)]
pub struct MockHandle {
    addr: SocketAddr,
    mock: MockLlm,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl MockHandle {
    pub(crate) fn new(addr: SocketAddr, mock: MockLlm, task: JoinHandle<io::Result<()>>) -> Self {
        Self {
            addr,
            mock,
            task: Some(task),
        }
    }

    /// The address the server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, with a loopback IP if the server is bound to an unspecified one
    /// (`0.0.0.0` or `::`). No trailing slash.
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("http://{addr}")
    }

    /// The mock being served, to share its state.
    pub fn mock(&self) -> &MockLlm {
        &self.mock
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.mock.stats()
    }

    /// Requests received per route.
    pub fn endpoints(&self) -> EndpointStats {
        self.mock.endpoints()
    }

    /// What the last request to a `/v1` route carried; see [`MockLlm::last_request`].
    pub fn last_request(&self) -> Option<LastRequest> {
        self.mock.last_request()
    }

    /// Everything `GET /admin/stats` serves; see [`MockLlm::report`].
    pub fn report(&self) -> StatsReport {
        self.mock.report()
    }

    /// Zeroes the counters, except the `in_flight` gauge, and forgets the last request.
    pub fn reset_stats(&self) {
        self.mock.reset_stats();
    }

    /// Replaces the faults; see [`MockLlm::set_fault`].
    pub fn set_fault(&self, fault: Fault) {
        self.mock.set_fault(fault);
    }

    /// The faults in force.
    pub fn fault(&self) -> Fault {
        self.mock.fault()
    }

    /// Shuts the server down and waits until it has stopped.
    pub async fn shutdown(mut self) -> io::Result<()> {
        self.mock.shutdown();
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.mock.shutdown();
    }
}
