//! Conversation memory for AI chat: a per-session history of turns.
//!
//! Each session has a list of [`Turn`]s (role, content, token count) capped
//! at the layer's [`history_limit`](crate::SessionBuilder::history_limit),
//! and at most one system message kept apart from the list, so trimming
//! never drops it. Appending is one atomic store operation (in Redis, one
//! Lua script: push, trim, renew the TTL), and the history expires with its
//! session.
//!
//! # Example
//! ```
//! use tower_session::history::{Role, Turn};
//! use tower_session::{MemoryStore, SessionLayer};
//! # use std::convert::Infallible;
//! # use http::{Request, Response};
//! # use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_session::Session;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let svc = ServiceBuilder::new()
//!     .layer(SessionLayer::new(MemoryStore::new()))
//!     .service_fn(|req: Request<()>| async move {
//!         let history = req.extensions().get::<Session>().map(Session::history);
//!         let Some(history) = history else { return Ok::<_, Infallible>(Response::new(0)) };
//!         history.append(Turn::system("You are terse.", 5)).await.ok();
//!         history.append(Turn::user("Hi", 1)).await.ok();
//!         history.append(Turn::assistant("Hello.", 2)).await.ok();
//!         // The system message is kept; then the newest turns that fit.
//!         let context = history.within_tokens(7).await.unwrap_or_default();
//!         assert_eq!(context.len(), 2);
//!         assert_eq!(context[0].role, Role::System);
//!         assert_eq!(context[1].content, "Hello.");
//!         Ok(Response::new(context.len()))
//!     });
//! let res = svc.oneshot(Request::new(())).await?;
//! // The history made a session, so the response carries its cookie.
//! assert!(res.headers().contains_key("set-cookie"));
//! # Ok(())
//! # }
//! ```

use crate::error::Error;
use crate::session::Session;
pub use crate::turn::{Role, Turn};

/// The history of one session; from [`Session::history`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct History {
    session: Session,
}

impl Session {
    /// The session's conversation memory.
    pub fn history(&self) -> History {
        History {
            session: self.clone(),
        }
    }
}

impl History {
    /// Appends `turn` now, atomically with the trim to the history limit and
    /// the renewal of the session's TTL; returns how many turns the list
    /// holds. A [`Role::System`] turn replaces the system message instead.
    ///
    /// When the visitor has no stored session yet, one is created first
    /// (the response then carries its cookie), so this must happen before
    /// the response head is sent; later, use [`History::append_later`].
    /// One store round trip (two for a new session).
    pub async fn append(&self, turn: Turn) -> Result<usize, Error> {
        self.session.append_turns(vec![turn]).await
    }

    /// Appends several turns at once, in order; one store round trip.
    pub async fn extend(&self, turns: impl IntoIterator<Item = Turn>) -> Result<usize, Error> {
        self.session.append_turns(turns.into_iter().collect()).await
    }

    /// Queues `turn` to be appended when the layer next saves the session:
    /// at the response head, or — for a turn queued while a streamed body
    /// is still being sent, e.g. the assistant's answer gathered from the
    /// stream — just before the body's end reaches the client. No await, so
    /// it can be called from a body wrapper's `poll_frame`.
    ///
    /// Fails with [`Error::HeadSent`] when the head is gone and the visitor
    /// has no stored session (its cookie could no longer be sent).
    pub fn append_later(&self, turn: Turn) -> Result<(), Error> {
        self.session.queue_turn(turn)
    }

    /// The newest `n` turns, oldest first (the system message not
    /// included: see [`History::system`]). Empty for a new visitor. One
    /// store round trip (loading the session alongside, in parallel, when it
    /// wasn't loaded: a read is activity too).
    pub async fn last(&self, n: usize) -> Result<Vec<Turn>, Error> {
        Ok(self.session.read_turns(n).await?.1)
    }

    /// Every turn kept, oldest first (the system message not included).
    pub async fn all(&self) -> Result<Vec<Turn>, Error> {
        self.last(usize::MAX).await
    }

    /// The system message, if one was appended.
    pub async fn system(&self) -> Result<Option<Turn>, Error> {
        Ok(self.session.read_turns(0).await?.0)
    }

    /// The context to send to a model with at most `budget` tokens: the
    /// system message first (always kept, even when it alone is over the
    /// budget), then the newest turns whose tokens, added to it, stay within
    /// the budget — contiguous, oldest first. A turn that doesn't fit ends
    /// the selection, so the result is never a conversation with holes.
    pub async fn within_tokens(&self, budget: u64) -> Result<Vec<Turn>, Error> {
        let (system, turns) = self.session.read_turns(usize::MAX).await?;
        Ok(select_within(system, turns, budget))
    }

    /// Removes every turn and the system message; the session stays.
    pub async fn clear(&self) -> Result<(), Error> {
        self.session.clear_turns().await
    }
}

/// The system message, then the newest turns that fit in `budget` along with
/// it.
pub(crate) fn select_within(system: Option<Turn>, turns: Vec<Turn>, budget: u64) -> Vec<Turn> {
    let mut used = system.as_ref().map_or(0, |s| u64::from(s.tokens));
    let mut keep = 0;
    for turn in turns.iter().rev() {
        let next = used + u64::from(turn.tokens);
        if next > budget {
            break;
        }
        used = next;
        keep += 1;
    }
    let skip = turns.len() - keep;
    system
        .into_iter()
        .chain(turns.into_iter().skip(skip))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(tokens: &[u32]) -> Vec<Turn> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| Turn::user(i.to_string(), t))
            .collect()
    }

    fn contents(turns: &[Turn]) -> Vec<&str> {
        turns.iter().map(|t| t.content.as_str()).collect()
    }

    #[test]
    fn budget_boundaries() {
        let sys = Some(Turn::system("sys", 10));
        // 10 (system) + 3 + 4 = 17: exactly the budget keeps both.
        let picked = select_within(sys.clone(), turns(&[5, 3, 4]), 17);
        assert_eq!(contents(&picked), ["sys", "1", "2"]);
        // One less: only the newest fits.
        let picked = select_within(sys.clone(), turns(&[5, 3, 4]), 16);
        assert_eq!(contents(&picked), ["sys", "2"]);
        // The system message is kept even when over the budget alone.
        let picked = select_within(sys.clone(), turns(&[1]), 5);
        assert_eq!(contents(&picked), ["sys"]);
        // A turn that doesn't fit stops the selection: no holes.
        let picked = select_within(None, turns(&[1, 100, 1]), 50);
        assert_eq!(contents(&picked), ["2"]);
        // Zero-token turns always fit; an empty history is empty.
        let picked = select_within(None, turns(&[0, 0]), 0);
        assert_eq!(contents(&picked), ["0", "1"]);
        assert!(select_within(None, Vec::new(), 10).is_empty());
    }
}
