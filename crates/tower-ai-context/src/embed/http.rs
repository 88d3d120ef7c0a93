//! [`HttpEmbedder`]: embeddings from an OpenAI-compatible `/v1/embeddings`
//! endpoint, through any tower service, batched, with an in-memory cache.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body::Body;
use http_body_util::Full;
use serde::Deserialize;
use tower::ServiceExt as _;
use tower_ai_core::body::{BoxError, ReadError, read_limited};
use tower_service::Service;

use super::{EmbedError, Embedder};
use crate::index::BoxFuture;

/// The path an embedder posts to unless [`HttpEmbedderBuilder::uri`] says
/// otherwise.
const DEFAULT_URI: &str = "/v1/embeddings";
/// Inputs per upstream request unless [`HttpEmbedderBuilder::max_batch`]
/// says otherwise.
const DEFAULT_MAX_BATCH: usize = 256;
/// Cached vectors unless [`HttpEmbedderBuilder::cache_entries`] says
/// otherwise.
const DEFAULT_CACHE_ENTRIES: u64 = 10_000;
/// The bound of one upstream request unless
/// [`HttpEmbedderBuilder::timeout`] says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Upstream requests in flight at once for one call, unless
/// [`HttpEmbedderBuilder::concurrency`] says otherwise.
const DEFAULT_CONCURRENCY: usize = 4;
/// The largest answer body read: 2,048 vectors of 3,072 dimensions written
/// as JSON floats take about 60 MiB.
pub(crate) const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// How much of an error body [`EmbedError::Status`] carries.
const ERROR_BODY_BYTES: usize = 200;

/// An [`Embedder`] that asks an OpenAI-compatible embeddings endpoint,
/// through the tower service `S` (the gateway's own upstream client, with
/// its TLS, its provider key in [`headers`](HttpEmbedderBuilder::headers)
/// or in the service, its retries).
///
/// A call to [`embed`](Embedder::embed) takes what it can from the cache
/// (keyed by the exact text), sends each distinct remaining text once, in
/// batches of at most [`max_batch`](HttpEmbedderBuilder::max_batch) inputs,
/// up to [`concurrency`](HttpEmbedderBuilder::concurrency) batches at a
/// time, as
/// `{"model": …, "input": […], "encoding_format": "float"}` (plus
/// `"dimensions"` when set), and caches what comes back. The answer's
/// `data[i].index` maps the vectors back to the texts (their order is not
/// trusted); vectors sent as base64 (little-endian `f32`s) are read too.
/// Each answer body is read up to 64 MiB.
///
/// Calls are not merged: two concurrent calls for different texts send two
/// requests. Callers that embed many texts should pass them in one call.
///
/// Errors: the service failing, or the request (answer body included)
/// taking longer than the [`timeout`](HttpEmbedderBuilder::timeout), is
/// [`EmbedError::Unavailable`]; an answer other than `2xx` is
/// [`EmbedError::Status`] with its first 200 bytes; an answer that is not a
/// list of one vector per input, all of the same length (the
/// [`dimensions`](HttpEmbedderBuilder::dimensions) asked for, if any), or
/// is larger than 64 MiB, is [`EmbedError::Malformed`]. The first failed
/// batch fails the call (the others are dropped); the batches that
/// succeeded before it stay cached.
///
/// Metrics: `tower_ai_context_embed_requests_total` (upstream requests, by
/// `outcome`: `ok`, `unavailable`, `status`, `malformed`),
/// `tower_ai_context_embed_cache_hits_total` and
/// `tower_ai_context_embed_texts_total` (texts asked for).
///
/// Clones share the cache.
///
/// # Example
///
/// ```
/// use std::time::Duration;
///
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt as _, Full};
/// use tower_ai_context::{Embedder, HttpEmbedder};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Any tower service will do; this one answers every text with [1, 0].
/// let upstream = tower::service_fn(|request: Request<Full<Bytes>>| async move {
///     let body = request.into_body().collect().await?.to_bytes();
///     let asked: serde_json::Value = serde_json::from_slice(&body)?;
///     let data: Vec<_> = (0..asked["input"].as_array().map_or(0, Vec::len))
///         .map(|index| serde_json::json!({"index": index, "embedding": [1.0, 0.0]}))
///         .collect();
///     let answer = serde_json::json!({"object": "list", "data": data});
///     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Response::new(Full::new(Bytes::from(
///         answer.to_string(),
///     ))))
/// });
/// let embedder = HttpEmbedder::builder(upstream, "text-embedding-3-small")
///     .max_batch(100)
///     .timeout(Duration::from_secs(5))
///     .build();
/// let vectors = embedder.embed(&["hello".to_owned(), "world".to_owned()]).await.unwrap();
/// assert_eq!(vectors, vec![vec![1.0, 0.0], vec![1.0, 0.0]]);
/// # }
/// ```
pub struct HttpEmbedder<S> {
    inner: Arc<Inner<S>>,
}

struct Inner<S> {
    service: S,
    model: String,
    uri: Uri,
    dimensions: Option<usize>,
    max_batch: usize,
    concurrency: usize,
    cache: Option<moka::sync::Cache<String, Arc<[f32]>>>,
    cache_entries: u64,
    timeout: Duration,
    headers: HeaderMap,
}

impl<S> Clone for HttpEmbedder<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> fmt::Debug for HttpEmbedder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        // The path only (a query may carry a key), and header names only.
        f.debug_struct("HttpEmbedder")
            .field("model", &inner.model)
            .field("uri", &UriPath(&inner.uri))
            .field("dimensions", &inner.dimensions)
            .field("max_batch", &inner.max_batch)
            .field("concurrency", &inner.concurrency)
            .field("cache_entries", &inner.cache_entries)
            .field("timeout", &inner.timeout)
            .field("headers", &HeaderNames(&inner.headers))
            .finish_non_exhaustive()
    }
}

/// Configures an [`HttpEmbedder`]; made by [`HttpEmbedder::builder`].
pub struct HttpEmbedderBuilder<S> {
    service: S,
    model: String,
    uri: Uri,
    dimensions: Option<usize>,
    max_batch: usize,
    concurrency: usize,
    cache_entries: u64,
    timeout: Duration,
    headers: HeaderMap,
}

impl<S> fmt::Debug for HttpEmbedderBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEmbedderBuilder")
            .field("model", &self.model)
            .field("uri", &UriPath(&self.uri))
            .field("dimensions", &self.dimensions)
            .field("max_batch", &self.max_batch)
            .field("concurrency", &self.concurrency)
            .field("cache_entries", &self.cache_entries)
            .field("timeout", &self.timeout)
            .field("headers", &HeaderNames(&self.headers))
            .finish_non_exhaustive()
    }
}

impl<S> HttpEmbedder<S> {
    /// Starts an embedder of `model` that sends its requests through
    /// `service`. Defaults: `POST /v1/embeddings`, the model's own
    /// dimensions, 256 inputs a request, 4 requests at a time, 10,000 cached
    /// texts, 10 s per request, no extra headers.
    pub fn builder(service: S, model: impl Into<String>) -> HttpEmbedderBuilder<S> {
        HttpEmbedderBuilder {
            service,
            model: model.into(),
            uri: Uri::from_static(DEFAULT_URI),
            dimensions: None,
            max_batch: DEFAULT_MAX_BATCH,
            concurrency: DEFAULT_CONCURRENCY,
            cache_entries: DEFAULT_CACHE_ENTRIES,
            timeout: DEFAULT_TIMEOUT,
            headers: HeaderMap::new(),
        }
    }

    /// The service requests go through.
    pub fn get_ref(&self) -> &S {
        &self.inner.service
    }

    /// Texts in the cache now (moka counts lazily: a text inserted a moment
    /// ago may not be counted yet).
    pub fn cached(&self) -> u64 {
        self.inner.cache.as_ref().map_or(0, |cache| {
            cache.run_pending_tasks();
            cache.entry_count()
        })
    }
}

impl<S> HttpEmbedderBuilder<S> {
    /// Where requests are sent: a path (the service adds the scheme and
    /// authority) or an absolute URI. Default `/v1/embeddings`.
    #[must_use]
    pub fn uri(mut self, uri: Uri) -> Self {
        self.uri = uri;
        self
    }

    /// Asks for vectors of this length (the `dimensions` field, which
    /// OpenAI's `text-embedding-3-*` models honour); an answer of another
    /// length is then malformed. Default `None`: the field is not sent.
    #[must_use]
    pub fn dimensions(mut self, dimensions: Option<usize>) -> Self {
        self.dimensions = dimensions;
        self
    }

    /// The most inputs one request carries (OpenAI accepts 2,048). Default
    /// 256; 0 counts as 1.
    #[must_use]
    pub fn max_batch(mut self, inputs: usize) -> Self {
        self.max_batch = inputs.max(1);
        self
    }

    /// The most requests one call has in flight at once. Default 4; 0 counts
    /// as 1.
    #[must_use]
    pub fn concurrency(mut self, requests: usize) -> Self {
        self.concurrency = requests.max(1);
        self
    }

    /// The most texts whose vectors are kept in memory (each costs its
    /// text plus 4 bytes a dimension). Default 10,000; 0 turns the cache
    /// off.
    #[must_use]
    pub fn cache_entries(mut self, entries: u64) -> Self {
        self.cache_entries = entries;
        self
    }

    /// The bound of one request, from the call to the last byte of the
    /// answer. Default 10 s.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Headers added to every request (a provider key, an organization).
    /// They are never printed by `Debug`.
    #[must_use]
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.headers = headers;
        self
    }

    /// The embedder.
    pub fn build(self) -> HttpEmbedder<S> {
        let cache = (self.cache_entries > 0).then(|| moka::sync::Cache::new(self.cache_entries));
        HttpEmbedder {
            inner: Arc::new(Inner {
                service: self.service,
                model: self.model,
                uri: self.uri,
                dimensions: self.dimensions,
                max_batch: self.max_batch,
                concurrency: self.concurrency,
                cache,
                cache_entries: self.cache_entries,
                timeout: self.timeout,
                headers: self.headers,
            }),
        }
    }
}

impl<S, B> Embedder for HttpEmbedder<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn model(&self) -> &str {
        &self.inner.model
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, EmbedError>> {
        Box::pin(self.inner.embed(texts))
    }
}

impl<S, B> Inner<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        metrics::counter!("tower_ai_context_embed_texts_total").increment(texts.len() as u64);
        let mut found: Vec<Option<Arc<[f32]>>> = vec![None; texts.len()];
        // Each distinct text missing from the cache, once, with the places
        // it fills.
        let mut missing: Vec<&str> = Vec::new();
        let mut places: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut hits = 0u64;
        for (index, text) in texts.iter().enumerate() {
            if let Some(vector) = self.cache.as_ref().and_then(|cache| cache.get(text)) {
                found[index] = Some(vector);
                hits += 1;
                continue;
            }
            places
                .entry(text.as_str())
                .or_insert_with(|| {
                    missing.push(text);
                    Vec::new()
                })
                .push(index);
        }
        if hits > 0 {
            metrics::counter!("tower_ai_context_embed_cache_hits_total").increment(hits);
        }

        if !missing.is_empty() {
            let batches = missing
                .chunks(self.max_batch)
                .map(|batch| self.request(batch));
            for (batch, vectors) in try_join_bounded(batches, self.concurrency).await? {
                for (text, vector) in batch.iter().zip(vectors) {
                    if let Some(cache) = &self.cache {
                        cache.insert((*text).to_owned(), Arc::clone(&vector));
                    }
                    for &index in places.get(text).map(Vec::as_slice).unwrap_or_default() {
                        found[index] = Some(Arc::clone(&vector));
                    }
                }
            }
        }

        let mut vectors = Vec::with_capacity(texts.len());
        let mut len = None;
        for vector in found {
            let Some(vector) = vector else {
                return Err(EmbedError::Malformed("a text got no vector".to_owned()));
            };
            // Cached vectors and new ones must agree too.
            if *len.get_or_insert(vector.len()) != vector.len() {
                return Err(EmbedError::Malformed(format!(
                    "vectors of {} and {} dimensions",
                    len.unwrap_or_default(),
                    vector.len()
                )));
            }
            vectors.push(vector.to_vec());
        }
        Ok(vectors)
    }

    /// One upstream request for `batch`: its vectors, in its order.
    async fn request<'t>(
        &self,
        batch: &'t [&'t str],
    ) -> Result<(&'t [&'t str], Vec<Arc<[f32]>>), EmbedError> {
        let outcome = tokio::time::timeout(self.timeout, self.send(batch)).await;
        let result = match outcome {
            Ok(result) => result,
            Err(_elapsed) => Err(EmbedError::Unavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(EmbedError::Unavailable(_)) => "unavailable",
            Err(EmbedError::Status(..)) => "status",
            Err(_) => "malformed",
        };
        metrics::counter!("tower_ai_context_embed_requests_total", "outcome" => label).increment(1);
        if let Err(error) = &result {
            tracing::warn!(
                model = %self.model,
                inputs = batch.len(),
                error = %error,
                "embeddings request failed"
            );
        }
        result.map(|vectors| (batch, vectors))
    }

    async fn send(&self, batch: &[&str]) -> Result<Vec<Arc<[f32]>>, EmbedError> {
        let request = self.http_request(batch)?;
        let response = self
            .service
            .clone()
            .oneshot(request)
            .await
            .map_err(|error| EmbedError::Unavailable(error.into().to_string()))?;
        let (parts, body) = response.into_parts();
        let body = read_limited(body, MAX_ANSWER_BYTES)
            .await
            .map_err(|error| match error {
                ReadError::TooLarge { limit } => {
                    EmbedError::Malformed(format!("the answer is larger than {limit} bytes"))
                }
                other => EmbedError::Unavailable(other.to_string()),
            })?;
        if !parts.status.is_success() {
            return Err(EmbedError::Status(
                parts.status.as_u16(),
                start_of(&body, ERROR_BODY_BYTES),
            ));
        }
        parse_answer(&body, batch.len(), self.dimensions)
    }

    fn http_request(&self, batch: &[&str]) -> Result<Request<Full<Bytes>>, EmbedError> {
        let mut body = serde_json::json!({
            "model": self.model,
            "input": batch,
            "encoding_format": "float",
        });
        if let Some(dimensions) = self.dimensions {
            body["dimensions"] = dimensions.into();
        }
        let body = serde_json::to_vec(&body)
            .map_err(|error| EmbedError::Malformed(format!("the request: {error}")))?;
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        Ok(request)
    }
}

/// The answer of one request.
#[derive(Deserialize)]
struct Answer {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    index: usize,
    embedding: Encoded,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Encoded {
    Floats(Vec<f32>),
    Base64(String),
}

/// The vectors of an answer body for `inputs` texts, in input order.
fn parse_answer(
    body: &[u8],
    inputs: usize,
    dimensions: Option<usize>,
) -> Result<Vec<Arc<[f32]>>, EmbedError> {
    let malformed = EmbedError::Malformed;
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|error| malformed(format!("not an embeddings list: {error}")))?;
    if answer.data.len() != inputs {
        return Err(malformed(format!(
            "{} vectors for {inputs} inputs",
            answer.data.len()
        )));
    }
    let mut vectors: Vec<Option<Arc<[f32]>>> = vec![None; inputs];
    let mut len = dimensions;
    for item in answer.data {
        let vector: Vec<f32> = match item.embedding {
            Encoded::Floats(vector) => vector,
            Encoded::Base64(text) => decode_base64_f32(&text)
                .ok_or_else(|| malformed("a base64 vector is not a list of f32".to_owned()))?,
        };
        if vector.is_empty() {
            return Err(malformed(format!(
                "the vector at index {} is empty",
                item.index
            )));
        }
        if !vector.iter().all(|x| x.is_finite()) {
            return Err(malformed(format!(
                "the vector at index {} is not finite",
                item.index
            )));
        }
        let expected = *len.get_or_insert(vector.len());
        if vector.len() != expected {
            return Err(malformed(format!(
                "a vector of {} dimensions, expected {expected}",
                vector.len()
            )));
        }
        let Some(slot) = vectors.get_mut(item.index) else {
            return Err(malformed(format!(
                "index {} for {inputs} inputs",
                item.index
            )));
        };
        if slot.is_some() {
            return Err(malformed(format!("index {} twice", item.index)));
        }
        *slot = Some(vector.into());
    }
    // `inputs` distinct indices below `inputs`: every slot is filled.
    vectors
        .into_iter()
        .map(|vector| vector.ok_or_else(|| malformed("an index is missing".to_owned())))
        .collect()
}

/// Decodes standard base64 (padding optional) of little-endian `f32`s.
fn decode_base64_f32(text: &str) -> Option<Vec<f32>> {
    fn value(byte: u8) -> Option<u32> {
        Some(u32::from(match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let text = text.trim_end_matches('=').as_bytes();
    if text.len() % 4 == 1 {
        return None;
    }
    let mut bytes = Vec::with_capacity(text.len() / 4 * 3 + 2);
    for chunk in text.chunks(4) {
        let mut word = 0u32;
        for (position, byte) in chunk.iter().enumerate() {
            word |= value(*byte)? << (18 - 6 * position);
        }
        let [_, a, b, c] = word.to_be_bytes();
        bytes.extend_from_slice(&[a, b, c][..chunk.len() - 1]);
    }
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// The first `limit` bytes of a body as text, cut at a character boundary.
fn start_of(body: &[u8], limit: usize) -> String {
    let head = &body[..body.len().min(limit)];
    match std::str::from_utf8(head) {
        Ok(text) => text.to_owned(),
        // Cut inside a character: keep the characters before it.
        Err(error) if error.error_len().is_none() => {
            String::from_utf8_lossy(&head[..error.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(head).into_owned(),
    }
}

type BatchFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, EmbedError>> + Send + 'a>>;

/// Runs the futures of `batches`, at most `limit` at a time, and returns
/// their outputs (in completion order), or the first error (dropping the
/// others).
async fn try_join_bounded<'a, T, F>(
    batches: impl Iterator<Item = F>,
    limit: usize,
) -> Result<Vec<T>, EmbedError>
where
    F: Future<Output = Result<T, EmbedError>> + Send + 'a,
{
    let mut pending = batches.map(|future| -> BatchFuture<'a, T> { Box::pin(future) });
    let mut running: Vec<BatchFuture<'a, T>> = Vec::new();
    let mut done = Vec::new();
    std::future::poll_fn(|cx| {
        loop {
            while running.len() < limit {
                match pending.next() {
                    Some(future) => running.push(future),
                    None => break,
                }
            }
            if running.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let before = running.len();
            let mut index = 0;
            while index < running.len() {
                match running[index].as_mut().poll(cx) {
                    Poll::Ready(Ok(output)) => {
                        done.push(output);
                        drop(running.swap_remove(index));
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => index += 1,
                }
            }
            // Nothing finished: every running future has registered to be
            // woken. Otherwise start the next ones.
            if running.len() == before {
                return Poll::Pending;
            }
        }
    })
    .await?;
    Ok(done)
}

/// A URI shown without its query.
struct UriPath<'a>(&'a Uri);

impl fmt::Debug for UriPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(scheme) = self.0.scheme_str() {
            write!(f, "{scheme}://")?;
        }
        if let Some(authority) = self.0.authority() {
            // Not the user info, if any.
            write!(f, "{}", authority.host())?;
            if let Some(port) = authority.port_u16() {
                write!(f, ":{port}")?;
            }
        }
        write!(f, "{}", self.0.path())
    }
}

/// Header names, without their values.
struct HeaderNames<'a>(&'a HeaderMap);

impl fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        let values = [0.5f32, -1.25, 3.0e-7, 1.0];
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        // Standard base64 of those 16 bytes, written by hand from the
        // alphabet (no base64 crate here).
        let encoded = encode(&bytes);
        assert_eq!(decode_base64_f32(&encoded), Some(values.to_vec()));
        assert_eq!(
            decode_base64_f32(encoded.trim_end_matches('=')),
            Some(values.to_vec())
        );
        assert_eq!(decode_base64_f32("AAA"), None); // 2 bytes: not an f32
        assert_eq!(decode_base64_f32("A!AA"), None);
        assert_eq!(decode_base64_f32("A"), None);
        assert_eq!(decode_base64_f32(""), Some(Vec::new()));
    }

    fn encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let word = chunk
                .iter()
                .enumerate()
                .fold(0u32, |word, (i, b)| word | u32::from(*b) << (16 - 8 * i));
            for position in 0..4 {
                if position <= chunk.len() {
                    let index = (word >> (18 - 6 * position)) & 63;
                    out.push(char::from(ALPHABET[index as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn answers_are_checked() {
        let parse = |body: &str, inputs| parse_answer(body.as_bytes(), inputs, None);
        let ok = parse(
            r#"{"data":[{"index":1,"embedding":[0,1]},{"index":0,"embedding":[1,0]}]}"#,
            2,
        );
        assert_eq!(
            ok.map(|v| v.iter().map(|x| x.to_vec()).collect::<Vec<_>>()),
            Ok(vec![vec![1.0, 0.0], vec![0.0, 1.0]])
        );
        for (body, inputs) in [
            ("nope", 1),
            (r#"{"data":[]}"#, 1),
            (r#"{"data":[{"index":0,"embedding":[1]}]}"#, 2),
            (
                r#"{"data":[{"index":0,"embedding":[1]},{"index":0,"embedding":[1]}]}"#,
                2,
            ),
            (
                r#"{"data":[{"index":0,"embedding":[1]},{"index":2,"embedding":[1]}]}"#,
                2,
            ),
            (
                r#"{"data":[{"index":0,"embedding":[1]},{"index":1,"embedding":[1,2]}]}"#,
                2,
            ),
            (r#"{"data":[{"index":0,"embedding":[]}]}"#, 1),
            (r#"{"data":[{"embedding":[1]}]}"#, 1),
            (r#"{"data":[{"index":0,"embedding":"A!"}]}"#, 1),
        ] {
            assert!(
                matches!(parse(body, inputs), Err(EmbedError::Malformed(_))),
                "{body}"
            );
        }
        assert!(matches!(
            parse_answer(br#"{"data":[{"index":0,"embedding":[1,0]}]}"#, 1, Some(3)),
            Err(EmbedError::Malformed(_))
        ));
    }

    #[test]
    fn error_bodies_are_cut_at_a_character() {
        assert_eq!(start_of(b"short", 200), "short");
        assert_eq!(start_of("ééé".as_bytes(), 5), "éé");
        assert_eq!(start_of(&[b'a'; 300], 200).len(), 200);
    }
}
