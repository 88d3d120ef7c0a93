//! The semantic cache: after the exact key misses, a question asked in
//! other words finds the answer stored for the first wording.
//!
//! A request on a semantic route is looked up by the embedding of its last
//! user turn, in a scope that holds **everything else** that shapes the
//! answer: the exact key of the same request with that turn's text blanked
//! (so the tenant, the route, the model, every parameter, the system prompt
//! and every earlier turn, the `vary` headers). Two requests can only meet
//! when they differ in the wording of their last question alone: another
//! tenant's answer, or one given after different earlier turns ("how old is
//! he?" about someone else), is never in the scope searched.
//!
//! A candidate answers only when its cosine similarity is at least the
//! route's threshold (0.95 by default), the request's temperature is at
//! most [`SemanticCache::max_temperature`], and the [`HitGuard`] accepts the
//! pair of questions (by default [`NegationGuard`]: not when exactly one of
//! them is negated, "enable dark mode" against "disable dark mode"). The
//! answer is then the entry stored under the candidate's exact key, served
//! like any hit (streams replayed as they were recorded), with
//! `Cache-Status: …; hit; …; detail=semantic; similarity=0.972` and counted
//! in `tower_ai_cache_hits_total{layer="semantic"}`.
//!
//! An answer stored on a semantic route is indexed after it is stored, off
//! the request's path. An embedding or index failure never fails a request:
//! the lookup is skipped (`tower_ai_cache_semantic_errors_total{op}`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_ai_context::{Embedder, VectorIndex};

/// Refuses a semantic candidate that is close in embedding space and yet
/// asks something else.
pub trait HitGuard: Send + Sync + fmt::Debug {
    /// Whether the answer stored for `cached` may answer `question`.
    fn allows(&self, question: &str, cached: &str) -> bool;
}

/// The default [`HitGuard`]: refuses when exactly one of the two questions
/// holds a negating word (`not`, `no`, `never`, `without`, `don't`,
/// `disable`, …; any `n't`), since embeddings place "enable dark mode" and
/// "disable dark mode" side by side.
#[derive(Debug, Clone, Copy, Default)]
pub struct NegationGuard;

const NEGATIONS: &[&str] = &[
    "not",
    "no",
    "never",
    "none",
    "nothing",
    "nobody",
    "nowhere",
    "neither",
    "nor",
    "without",
    "cannot",
    "cant",
    "dont",
    "doesnt",
    "didnt",
    "wont",
    "wouldnt",
    "shouldnt",
    "couldnt",
    "isnt",
    "arent",
    "wasnt",
    "werent",
    "hasnt",
    "havent",
    "hadnt",
    "disable",
    "disabled",
    "disabling",
    "deny",
    "denied",
    "exclude",
    "excluding",
    "except",
    "avoid",
    "unable",
    "stop",
    "prevent",
];

fn negated(text: &str) -> bool {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’'))
        .filter(|w| !w.is_empty())
        .any(|word| {
            let word = word.to_lowercase();
            let bare: String = word.chars().filter(|c| *c != '\'' && *c != '’').collect();
            word.ends_with("n't") || word.ends_with("n’t") || NEGATIONS.contains(&bare.as_str())
        })
}

impl HitGuard for NegationGuard {
    fn allows(&self, question: &str, cached: &str) -> bool {
        negated(question) == negated(cached)
    }
}

/// What a semantic route needs: the embedder of last user turns and the
/// index of stored answers. Given to
/// [`CacheBuilder::semantic`](crate::CacheBuilder::semantic); routes opt in
/// with [`Route::semantic`](crate::Route::semantic).
#[derive(Clone)]
pub struct SemanticCache {
    pub(crate) embedder: Arc<dyn Embedder>,
    pub(crate) index: Arc<dyn VectorIndex>,
    pub(crate) similarity: f32,
    pub(crate) max_temperature: f64,
    pub(crate) guard: Arc<dyn HitGuard>,
    pub(crate) timeout: Duration,
    pub(crate) max_question_bytes: usize,
}

impl fmt::Debug for SemanticCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemanticCache")
            .field("embedder", &self.embedder.model())
            .field("index", &self.index.name())
            .field("similarity", &self.similarity)
            .field("max_temperature", &self.max_temperature)
            .field("guard", &self.guard)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SemanticCache {
    /// Questions embedded by `embedder`, answers indexed in `index`; a
    /// similarity threshold of 0.95, temperatures up to 1.0 (a request
    /// without one counts as 1.0), [`NegationGuard`], a 2 s deadline for the
    /// embedding and the search together.
    pub fn new(embedder: Arc<dyn Embedder>, index: Arc<dyn VectorIndex>) -> Self {
        Self {
            embedder,
            index,
            similarity: 0.95,
            max_temperature: 1.0,
            guard: Arc::new(NegationGuard),
            timeout: Duration::from_secs(2),
            max_question_bytes: 8 << 10,
        }
    }

    /// The lowest cosine similarity that answers (routes may set their own).
    #[must_use]
    pub fn similarity(mut self, similarity: f32) -> Self {
        self.similarity = similarity;
        self
    }

    /// Requests with a higher `temperature` are never answered (nor
    /// indexed) semantically.
    #[must_use]
    pub fn max_temperature(mut self, temperature: f64) -> Self {
        self.max_temperature = temperature;
        self
    }

    /// The guard every candidate passes.
    #[must_use]
    pub fn guard(mut self, guard: impl HitGuard + 'static) -> Self {
        self.guard = Arc::new(guard);
        self
    }

    /// How long the embedding and the search may take before the lookup is
    /// skipped.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negation_guard_refuses_one_sided_negation() {
        let guard = NegationGuard;
        assert!(!guard.allows("How do I enable dark mode?", "How do I disable dark mode?"));
        assert!(!guard.allows("Is it safe?", "Isn't it safe?"));
        assert!(!guard.allows("is it safe", "is it not safe"));
        assert!(guard.allows("How do I turn on dark mode?", "How can I enable dark mode?"));
        assert!(guard.allows("Why don't I get mail?", "Why do I not get mail?"));
        assert!(guard.allows("What is Noah's ark?", "Tell me about Noah's ark"));
    }
}
