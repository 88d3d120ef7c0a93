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

use bytes::Bytes;
use http::request::Parts;
use serde_json::Value;
use tower_ai_context::{Embedder, Query, Record, VectorIndex};

use crate::config::Shared;
use crate::entry::Entry;
#[cfg(feature = "redis")]
use crate::entry::{Freshness, now_ms};
use crate::key::{CacheKey, KeyScope};
use crate::store::memory::Lookup;

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

/// A request that may be answered, and indexed, semantically.
pub(crate) struct Probe {
    semantic: Arc<SemanticCache>,
    threshold: f32,
    /// The index scope: the exact key of the request with its last user
    /// turn blanked.
    scope: String,
    question: String,
    vector: Option<Vec<f32>>,
}

/// What the record of a stored answer holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Payload {
    key: String,
    question: String,
}

impl Probe {
    /// A probe when the route is semantic and the body a chat request whose
    /// last message is the user's, at a temperature within the cap.
    pub(crate) fn new(
        shared: &Shared,
        route: usize,
        parts: &Parts,
        scope: &KeyScope,
        body: &Bytes,
    ) -> Option<Self> {
        let semantic = shared.semantic.as_ref()?;
        let rule = &shared.routes[route];
        if !rule.semantic {
            return None;
        }
        let mut value: Value = serde_json::from_slice(body).ok()?;
        let temperature = value
            .get("temperature")
            .and_then(Value::as_f64)
            .unwrap_or(1.0);
        if temperature > semantic.max_temperature {
            return None;
        }
        let last = value.get_mut("messages")?.as_array_mut()?.last_mut()?;
        if last.get("role").and_then(Value::as_str) != Some("user") {
            return None;
        }
        let content = last.get_mut("content")?;
        let question = text_of(content)?;
        if question.trim().is_empty() || question.len() > semantic.max_question_bytes {
            return None;
        }
        *content = Value::String(String::new());
        let blanked = serde_json::to_vec(&value).ok()?;
        let (key, _) = shared.key(&parts.method, &parts.uri, &parts.headers, scope, &blanked);
        Some(Self {
            semantic: Arc::clone(semantic),
            threshold: rule.similarity.unwrap_or(semantic.similarity),
            scope: format!("semantic:{key}"),
            question,
            vector: None,
        })
    }

    /// The entry of the nearest accepted candidate, with its key and
    /// similarity. Misses (and failures) are `None`.
    pub(crate) async fn lookup(
        &mut self,
        shared: &Shared,
        accepts: impl Fn(&Entry) -> bool,
    ) -> Option<(CacheKey, Arc<Entry>, Duration, f32)> {
        let semantic = Arc::clone(&self.semantic);
        let found = tokio::time::timeout(semantic.timeout, async {
            let texts = [self.question.clone()];
            let vector = match semantic.embedder.embed(&texts).await {
                Ok(mut vectors) if vectors.len() == 1 => vectors.swap_remove(0),
                Ok(_) => return Err("embed"),
                Err(error) => {
                    tracing::debug!(%error, "cache: semantic lookup skipped");
                    return Err("embed");
                }
            };
            let scopes = [self.scope.as_str()];
            let query = Query::new(&vector, &scopes).k(4).min_score(self.threshold);
            let hits = semantic.index.search(query).await.map_err(|error| {
                tracing::debug!(%error, "cache: semantic lookup skipped");
                "search"
            })?;
            Ok((vector, hits))
        })
        .await;
        let (vector, hits) = match found {
            Ok(Ok(found)) => found,
            Ok(Err(op)) => {
                metrics::counter!("tower_ai_cache_semantic_errors_total", "op" => op).increment(1);
                return None;
            }
            Err(_) => {
                metrics::counter!("tower_ai_cache_semantic_errors_total", "op" => "timeout")
                    .increment(1);
                return None;
            }
        };
        self.vector = Some(vector);
        for hit in hits {
            let Ok(payload) = serde_json::from_slice::<Payload>(&hit.payload) else {
                continue;
            };
            if !semantic.guard.allows(&self.question, &payload.question) {
                metrics::counter!("tower_ai_cache_semantic_refused_total", "reason" => "guard")
                    .increment(1);
                continue;
            }
            let Some(key) = CacheKey::from_hex(&payload.key) else {
                continue;
            };
            if let Some((entry, left)) = fetch(shared, &key).await
                && accepts(&entry)
            {
                return Some((key, entry, left, hit.score));
            }
        }
        None
    }

    /// Indexes the answer stored under `key` (off the request's path).
    pub(crate) fn index(self, key: CacheKey, ttl: Duration) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(payload) = serde_json::to_vec(&Payload {
            key: key.to_string(),
            question: self.question.clone(),
        }) else {
            return;
        };
        handle.spawn(async move {
            let semantic = self.semantic;
            let vector = match self.vector {
                Some(vector) => vector,
                None => match semantic.embedder.embed(&[self.question]).await {
                    Ok(mut vectors) if vectors.len() == 1 => vectors.swap_remove(0),
                    _ => {
                        metrics::counter!("tower_ai_cache_semantic_errors_total", "op" => "embed")
                            .increment(1);
                        return;
                    }
                },
            };
            let record = Record::new(self.scope, key.to_string(), vector, payload).ttl(ttl);
            if let Err(error) = semantic.index.upsert(vec![record]).await {
                tracing::debug!(%error, "cache: an answer wasn't indexed");
                metrics::counter!("tower_ai_cache_semantic_errors_total", "op" => "upsert")
                    .increment(1);
            }
        });
    }
}

/// A fresh entry under `key`, from L1 or else L2.
async fn fetch(shared: &Shared, key: &CacheKey) -> Option<(Arc<Entry>, Duration)> {
    if let Lookup::Fresh(entry, left) = shared.l1.get(key) {
        return Some((entry, left));
    }
    #[cfg(feature = "redis")]
    if let Some(l2) = &shared.l2
        && let Ok(Some(entry)) = l2.get(key).await
        && let Freshness::Fresh(left) = entry.lifetime.freshness(now_ms())
    {
        let entry = Arc::new(entry);
        shared.l1.insert(*key, Arc::clone(&entry));
        return Some((entry, left));
    }
    None
}

/// A message's text: a string, or its text parts joined.
fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                if part.get("type").and_then(Value::as_str) != Some("text") {
                    // An image or a file: the words alone don't say what is
                    // asked.
                    return None;
                }
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(part.get("text").and_then(Value::as_str)?);
            }
            Some(text)
        }
        _ => None,
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

    #[test]
    fn text_of_reads_strings_and_text_parts_only() {
        assert_eq!(text_of(&Value::from("hi")).as_deref(), Some("hi"));
        let parts = serde_json::json!([{"type":"text","text":"a"},{"type":"text","text":"b"}]);
        assert_eq!(text_of(&parts).as_deref(), Some("a\nb"));
        let image = serde_json::json!([{"type":"text","text":"a"},{"type":"image_url"}]);
        assert_eq!(text_of(&image), None);
    }
}
