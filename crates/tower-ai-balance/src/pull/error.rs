//! [`PullError`]: why a pulled request got no answer, or only part of one.

use std::fmt;

use tower_ai_core::redis::Unavailable;

/// Why [`PullQueue::submit`](super::PullQueue::submit) refused a request,
/// [`Ticket::response`](super::Ticket::response) returned no answer, or a
/// [`PullBody`](super::PullBody) ended with an error instead of a clean
/// end.
#[derive(Debug)]
#[non_exhaustive]
pub enum PullError {
    /// Redis didn't answer (an error, a timeout, or it is marked down): the
    /// request wasn't enqueued, or its answer can't be read any further.
    Redis(Unavailable),
    /// The queue already holds its
    /// [`max_queued`](super::PullQueueBuilder::max_queued) requests (waiting
    /// or running).
    Full,
    /// The operating system gave no randomness for a request id.
    NoEntropy,
    /// The service failed (before its head, or mid-body), the queued
    /// request couldn't be rebuilt, or every attempt died
    /// ([`max_attempts`](super::PullQueueBuilder::max_attempts)); the text
    /// says which.
    Upstream(String),
    /// A new attempt (after its puller died) answered differently from the
    /// one the client had already been reading: another status, another
    /// prefix, or a shorter body. The client can't be given a consistent
    /// answer.
    Diverged,
    /// Nothing came on the reply stream for
    /// [`reply_ttl`](super::PullQueueBuilder::reply_ttl).
    Timeout,
    /// The answer stopped without its end: a malformed reply stream, or the
    /// task that read it is gone.
    Lost,
}

impl fmt::Display for PullError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis(e) => write!(f, "pull queue: {e}"),
            Self::Full => f.write_str("pull queue: the queue is full"),
            Self::NoEntropy => f.write_str("pull queue: no randomness for a request id"),
            Self::Upstream(reason) => write!(f, "pull queue: the upstream failed: {reason}"),
            Self::Diverged => {
                f.write_str("pull queue: a retried attempt answered differently from the first")
            }
            Self::Timeout => f.write_str("pull queue: no answer within the reply TTL"),
            Self::Lost => f.write_str("pull queue: the answer stopped before its end"),
        }
    }
}

impl std::error::Error for PullError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Redis(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Unavailable> for PullError {
    fn from(e: Unavailable) -> Self {
        Self::Redis(e)
    }
}
