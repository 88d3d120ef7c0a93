//! A semantic route's request: its scope and question, the lookup of the
//! nearest accepted answer, and the indexing of its own answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use serde_json::Value;
use tower_ai_context::{Query, Record};

use crate::config::Shared;
use crate::entry::Entry;
#[cfg(feature = "redis")]
use crate::entry::{Freshness, now_ms};
use crate::key::{CacheKey, KeyScope};
use crate::semantic::SemanticCache;
use crate::store::memory::Lookup;

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
    use serde_json::Value;

    #[test]
    fn text_of_reads_strings_and_text_parts_only() {
        assert_eq!(text_of(&Value::from("hi")).as_deref(), Some("hi"));
        let parts = serde_json::json!([{"type":"text","text":"a"},{"type":"text","text":"b"}]);
        assert_eq!(text_of(&parts).as_deref(), Some("a\nb"));
        let image = serde_json::json!([{"type":"text","text":"a"},{"type":"image_url"}]);
        assert_eq!(text_of(&image), None);
    }
}
