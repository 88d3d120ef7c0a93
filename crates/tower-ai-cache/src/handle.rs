//! [`CacheHandle`]: invalidation, lookups, and the stale answer a circuit
//! breaker's fallback can serve.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Empty;
use tower_ai_core::body::read_limited;
use tower_ai_core::reject::Refusal;
use tower_service::Service;

use crate::body::{BoxError, CacheBody};
use crate::config::Shared;
use crate::directives::{Outcome, Status, secs, stale_ttl};
use crate::entry::{Entry, Freshness, now_ms};
use crate::future::BoxFuture;
use crate::key::CacheKey;
use crate::respond::{FromCache, answer};
use crate::store::memory::Lookup;
use crate::tag::CacheTag;

/// What an invalidation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Invalidated {
    /// Entries deleted from Redis (0 without Redis).
    pub removed: u64,
    /// Whether Redis was reached, so every replica evicts its L1 copies;
    /// `false` with Redis configured means only this replica's L1 was
    /// cleaned.
    pub replicated: bool,
}

impl Invalidated {
    /// Only this replica's L1 was cleaned: no Redis, or Redis not reached.
    const LOCAL: Self = Self {
        removed: 0,
        replicated: false,
    };

    /// What a Redis invalidation did: `removed` entries deleted and every
    /// replica told, or [`LOCAL`](Self::LOCAL) when Redis failed.
    #[cfg(feature = "redis")]
    fn from_redis<E>(removed: Result<u64, E>) -> Self {
        match removed {
            Ok(removed) => Self {
                removed,
                replicated: true,
            },
            Err(_) => Self::LOCAL,
        }
    }
}

/// Invalidation and lookups on a [`CacheLayer`](crate::CacheLayer)'s state
/// (what an admin endpoint and a circuit breaker's fallback need). Cheap to
/// clone.
///
/// # Example
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{Service, ServiceExt};
/// use tower_ai_cache::{CacheLayer, CacheTag};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let layer = CacheLayer::builder().build()?;
/// let handle = layer.handle();
/// let mut svc = tower::ServiceBuilder::new().layer(layer).service_fn(|_req: Request<Full<Bytes>>| async {
///     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"an answer"))))
/// });
/// let request = || {
///     Request::post("/v1/echo")
///         .header("x-api-key", "sk-1")
///         .body(Full::new(Bytes::from_static(br#"{"model":"m"}"#)))
///         .unwrap()
/// };
/// let res = svc.ready().await?.call(request()).await?;
/// res.into_body().collect().await?; // the answer is stored when its body ends
///
/// // The breaker's fallback (or anyone) finds the answer for a request…
/// let found = handle.lookup(&request(), br#"{"model":"m"}"#).await;
/// assert_eq!(found.map(|a| a.body().clone()), Some(Bytes::from_static(b"an answer")));
///
/// // …and an admin drops every answer of a model.
/// let done = handle.invalidate_tag(&CacheTag::model("m")).await;
/// assert!(handle.lookup(&request(), br#"{"model":"m"}"#).await.is_none());
/// # let _ = done;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CacheHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle").finish_non_exhaustive()
    }
}

impl CacheHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Drops one entry: from this replica's L1, from Redis, and (through
    /// Redis pub/sub) from every other replica's L1. Two round trips.
    pub async fn invalidate_key(&self, key: &CacheKey) -> Invalidated {
        self.shared.l1.remove(key);
        metrics::counter!("tower_ai_cache_invalidations_total", "kind" => "key").increment(1);
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.l2 {
            return Invalidated::from_redis(l2.invalidate_key(key).await.map(u64::from));
        }
        Invalidated::LOCAL
    }

    /// Drops every entry of a tag (a model, a tenant, a route), everywhere.
    /// Costs a round trip per 512 entries and one per deleted entry
    /// (pipelined).
    pub async fn invalidate_tag(&self, tag: &CacheTag) -> Invalidated {
        self.shared.l1.remove_tag(tag.id());
        metrics::counter!("tower_ai_cache_invalidations_total", "kind" => "tag").increment(1);
        tracing::info!(tag = %tag, "cache: invalidating a tag");
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.l2 {
            return Invalidated::from_redis(l2.invalidate_tag(tag.id()).await);
        }
        Invalidated::LOCAL
    }

    /// Empties this replica's L1 and tells the other replicas to empty
    /// theirs (Redis keeps its entries).
    pub async fn flush_l1(&self) -> Invalidated {
        self.shared.l1.clear();
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.l2 {
            return Invalidated {
                removed: 0,
                replicated: l2.flush_replicas().await.is_ok(),
            };
        }
        Invalidated::LOCAL
    }

    /// The key the cache uses for this request and body, or `None` when no
    /// route matches or its scope finds no caller.
    pub fn key_for<B>(&self, req: &Request<B>, body: &[u8]) -> Option<CacheKey> {
        key_of(&self.shared, req, body)
    }

    /// The stored answer for this request and body, fresh or stale (within
    /// its `stale-if-error` grace): L1, then Redis (one `GET`).
    ///
    /// The key is made at once; the future holds neither the request nor
    /// the body.
    pub fn lookup<B>(
        &self,
        req: &Request<B>,
        body: &[u8],
    ) -> impl Future<Output = Option<CachedAnswer>> + Send + 'static {
        let key = key_of(&self.shared, req, body);
        let this = self.clone();
        async move {
            match key {
                Some(key) => this.lookup_key(&key).await,
                None => None,
            }
        }
    }

    /// The stored answer for a key, fresh or stale.
    pub async fn lookup_key(&self, key: &CacheKey) -> Option<CachedAnswer> {
        let entry = match self.shared.l1.get(key) {
            Lookup::Fresh(entry, _) | Lookup::Stale(entry) => Some(entry),
            Lookup::Miss => None,
        };
        #[cfg(feature = "redis")]
        let entry = match (entry, &self.shared.l2) {
            (Some(entry), _) => Some(entry),
            (None, Some(l2)) => l2.get(key).await.ok().flatten().map(Arc::new),
            (None, None) => None,
        };
        let entry = entry?;
        if matches!(entry.lifetime.freshness(now_ms()), Freshness::Gone) {
            return None;
        }
        Some(CachedAnswer {
            entry,
            key: *key,
            shared: self.shared.clone(),
        })
    }

    /// A service that answers a request with its stored answer, fresh or
    /// stale, else `503` problem+json: a circuit breaker's fallback, so that
    /// an open circuit still serves what was answered before. Its error type
    /// is `E` (it never fails), to match the breaker's service.
    pub fn stale_fallback<E>(&self) -> StaleFallback<E> {
        StaleFallback {
            handle: self.clone(),
            _error: PhantomData,
        }
    }

    /// Whether this replica's L1 holds an entry for the key (fresh or
    /// stale). For health checks and tests: invalidations reach every
    /// replica's L1.
    pub fn l1_contains(&self, key: &CacheKey) -> bool {
        !matches!(self.shared.l1.get(key), Lookup::Miss)
    }

    /// Entries in this replica's L1.
    pub fn l1_entries(&self) -> u64 {
        self.shared.l1.entry_count()
    }

    /// Bytes held by this replica's L1.
    pub fn l1_bytes(&self) -> u64 {
        self.shared.l1.weighted_size()
    }

    /// Requests in flight that identical requests can join.
    pub fn in_flight(&self) -> usize {
        self.shared.flights.len()
    }

    /// Waits until this replica receives other replicas' invalidations
    /// (its subscriber is subscribed); at once without Redis. A replica
    /// that starts serving before then may keep an L1 copy that another
    /// replica invalidated meanwhile.
    pub async fn invalidations_ready(&self) {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.l2 {
            l2.subscribed().await;
        }
    }

    /// The health of the Redis connection, when Redis is configured.
    #[cfg(feature = "redis")]
    pub fn redis_health(&self) -> Option<&tower_ai_core::redis::Degrade> {
        self.shared.l2.as_ref().map(|l2| l2.degrade())
    }
}

/// The key the service makes for this request and body, if it caches it.
fn key_of<B>(shared: &Shared, req: &Request<B>, body: &[u8]) -> Option<CacheKey> {
    let route = shared.route(req.method(), req.uri().path())?;
    let scope = shared.scope_of(route, req)?;
    let (key, _) = shared.key(req.method(), req.uri(), req.headers(), &scope, body);
    Some(key)
}

/// A stored answer found by [`CacheHandle::lookup`].
#[derive(Clone)]
pub struct CachedAnswer {
    entry: Arc<Entry>,
    key: CacheKey,
    shared: Arc<Shared>,
}

impl fmt::Debug for CachedAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedAnswer")
            .field("key", &self.key)
            .field("status", &self.status())
            .field("stale", &self.is_stale())
            .finish_non_exhaustive()
    }
}

impl CachedAnswer {
    /// Its status.
    pub fn status(&self) -> StatusCode {
        self.entry.head.status
    }

    /// Its headers, as stored.
    pub fn headers(&self) -> &HeaderMap {
        &self.entry.head.headers
    }

    /// Its body (a streamed answer's whole event stream).
    pub fn body(&self) -> &Bytes {
        &self.entry.body
    }

    /// Its key.
    pub fn key(&self) -> CacheKey {
        self.key
    }

    /// Whether it is past its TTL (within its `stale-if-error` grace).
    pub fn is_stale(&self) -> bool {
        !matches!(self.entry.lifetime.freshness(now_ms()), Freshness::Fresh(_))
    }

    /// How old it is.
    pub fn age(&self) -> Duration {
        self.entry.lifetime.age(now_ms())
    }

    /// The LLM tokens it saves each time it is served.
    pub fn tokens(&self) -> u64 {
        self.entry.tokens
    }

    /// A response with its status, headers, body and trailers, plus `Age`
    /// and `Cache-Status` (`hit`, with a negative `ttl` and
    /// `detail=stale` when stale) and the [`FromCache`] extension.
    pub fn into_response<B>(self) -> Response<CacheBody<B>> {
        let mut status = Status::new(Outcome::Hit);
        match self.entry.lifetime.freshness(now_ms()) {
            Freshness::Fresh(left) => status.ttl = Some(secs(left)),
            Freshness::Stale(past) => {
                status.ttl = Some(stale_ttl(past));
                status.detail = Some("stale");
            }
            Freshness::Gone => status.detail = Some("stale"),
        }
        let mut res = answer(&self.shared, self.key, &self.entry, status);
        res.extensions_mut().insert(FromCache::new(false));
        res
    }
}

/// A circuit breaker's fallback that answers from the cache. See
/// [`CacheHandle::stale_fallback`].
pub struct StaleFallback<E = Infallible> {
    handle: CacheHandle,
    _error: PhantomData<fn() -> E>,
}

impl<E> Clone for StaleFallback<E> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            _error: PhantomData,
        }
    }
}

impl<E> fmt::Debug for StaleFallback<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaleFallback").finish_non_exhaustive()
    }
}

impl<B, E> Service<Request<B>> for StaleFallback<E>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Send + 'static,
{
    type Response = Response<CacheBody<Empty<Bytes>>>;
    type Error = E;
    type Future = BoxFuture<Result<Self::Response, E>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let handle = self.handle.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let head = Request::from_parts(parts, ());
            let limit = handle.shared.max_request_body;
            let found = match read_limited(body, limit).await {
                Ok(bytes) => handle.lookup(&head, &bytes).await,
                Err(_) => None,
            };
            Ok(match found {
                Some(answer) => {
                    metrics::counter!("tower_ai_cache_fallback_served_total").increment(1);
                    answer.into_response()
                }
                None => Refusal::service_unavailable()
                    .detail("the upstream is unavailable and no answer is stored for this request")
                    .for_request::<Empty<Bytes>, _>(&head)
                    .map(CacheBody::from_response_body),
            })
        })
    }
}
