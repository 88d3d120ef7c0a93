//! Which breaker a request goes through.
//!
//! A layer built without a key has one breaker for every request. With
//! [`CircuitBreakerBuilder::keyed_by`](crate::CircuitBreakerBuilder::keyed_by), a [`KeyExtractor`] names
//! the breaker of each request (an upstream host, a model, a route); breakers
//! are created on demand, bounded in number, and forgotten when idle. A
//! request for which the extractor finds no key passes through without a
//! breaker.
//!
//! Keys are strings, borrowed from the request where they can be, so finding
//! the breaker allocates nothing.
//!
//! # Example
//! ```
//! use std::borrow::Cow;
//! use http::Request;
//! use tower_circuit::key::{ByExtension, KeyExtractor, RequestHead, key_fn};
//!
//! // The application put the upstream model into an extension.
//! #[derive(Clone)]
//! struct Model(String);
//! impl AsRef<str> for Model {
//!     fn as_ref(&self) -> &str { &self.0 }
//! }
//!
//! let mut req = Request::new(());
//! req.extensions_mut().insert(Model("gpt-4o-mini".into()));
//! assert_eq!(ByExtension::<Model>::new().extract(&req).as_deref(), Some("gpt-4o-mini"));
//!
//! // The same with a function.
//! let by_model = key_fn(|req: &RequestHead<'_>| {
//!     req.extensions().get::<Model>().map(|m| Cow::Borrowed(m.0.as_str()))
//! });
//! assert_eq!(by_model.extract(&req).as_deref(), Some("gpt-4o-mini"));
//! ```

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use http::header::HOST;
use http::{Extensions, HeaderMap, HeaderName, Method, Request, Uri, Version};

/// Names the breaker a request goes through.
///
/// Generic at the method level, so one extractor serves any request body;
/// it sees the request head, never the body.
pub trait KeyExtractor {
    /// The key of `req`, or `None` to let the request pass without a breaker.
    fn extract<'a, B>(&self, req: &'a Request<B>) -> Option<Cow<'a, str>>;
}

/// One breaker for every request: the extractor of a layer built without
/// [`keyed_by`](crate::CircuitBreakerBuilder::keyed_by). It is never asked for a key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Single;

impl KeyExtractor for Single {
    fn extract<'a, B>(&self, _req: &'a Request<B>) -> Option<Cow<'a, str>> {
        None
    }
}

/// The key is a request extension of type `T`, put there by an earlier
/// layer or handler (e.g. the model read from the JSON body).
pub struct ByExtension<T> {
    _marker: PhantomData<fn() -> T>,
}

impl<T> ByExtension<T> {
    /// Keys by the extension `T`.
    pub const fn new() -> Self {
        Self {
            _marker: PhantomData,
        }
    }
}

impl<T> Default for ByExtension<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for ByExtension<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ByExtension<T> {}

impl<T> fmt::Debug for ByExtension<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByExtension")
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T> KeyExtractor for ByExtension<T>
where
    T: AsRef<str> + Send + Sync + 'static,
{
    fn extract<'a, B>(&self, req: &'a Request<B>) -> Option<Cow<'a, str>> {
        req.extensions()
            .get::<T>()
            .map(|key| Cow::Borrowed(key.as_ref()))
    }
}

/// The key is the value of a request header (requests without it, or with
/// a value that is not visible ASCII, pass without a breaker).
#[derive(Debug, Clone)]
pub struct ByHeader {
    name: HeaderName,
}

impl ByHeader {
    /// Keys by the header `name`.
    pub const fn new(name: HeaderName) -> Self {
        Self { name }
    }
}

impl KeyExtractor for ByHeader {
    fn extract<'a, B>(&self, req: &'a Request<B>) -> Option<Cow<'a, str>> {
        req.headers()
            .get(&self.name)
            .and_then(|v| v.to_str().ok())
            .map(Cow::Borrowed)
    }
}

/// The key is the request's host: the URI's authority (as a client's
/// requests carry it), else the `Host` header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ByHost;

impl KeyExtractor for ByHost {
    fn extract<'a, B>(&self, req: &'a Request<B>) -> Option<Cow<'a, str>> {
        if let Some(authority) = req.uri().authority() {
            return Some(Cow::Borrowed(authority.as_str()));
        }
        req.headers()
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .map(Cow::Borrowed)
    }
}

/// A borrowed view of a request head, for [`key_fn`].
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    method: &'a Method,
    uri: &'a Uri,
    version: Version,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The head of `req`.
    pub fn of<B>(req: &'a Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            version: req.version(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }

    /// The method.
    pub const fn method(&self) -> &'a Method {
        self.method
    }

    /// The URI.
    pub const fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The HTTP version.
    pub const fn version(&self) -> Version {
        self.version
    }

    /// The headers.
    pub const fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The extensions.
    pub const fn extensions(&self) -> &'a Extensions {
        self.extensions
    }
}

/// A [`KeyExtractor`] from a function of the request head; see [`key_fn`].
#[derive(Clone, Copy)]
pub struct KeyFn<F> {
    f: F,
}

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn")
    }
}

/// Keys requests with `f`, which sees the request head and may borrow from it.
pub fn key_fn<F>(f: F) -> KeyFn<F>
where
    F: for<'a> Fn(&RequestHead<'a>) -> Option<Cow<'a, str>>,
{
    KeyFn { f }
}

impl<F> KeyExtractor for KeyFn<F>
where
    F: for<'a> Fn(&RequestHead<'a>) -> Option<Cow<'a, str>>,
{
    fn extract<'a, B>(&self, req: &'a Request<B>) -> Option<Cow<'a, str>> {
        (self.f)(&RequestHead::of(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_extractors() {
        let req = Request::builder()
            .uri("http://api.example.com:8080/v1/chat")
            .header("x-model", "m1")
            .body(())
            .unwrap_or_default();
        assert_eq!(
            ByHost.extract(&req).as_deref(),
            Some("api.example.com:8080")
        );
        assert_eq!(
            ByHeader::new(HeaderName::from_static("x-model"))
                .extract(&req)
                .as_deref(),
            Some("m1")
        );
        assert_eq!(
            ByHeader::new(HeaderName::from_static("x-other")).extract(&req),
            None
        );
        let req = Request::builder()
            .uri("/v1/chat")
            .header(HOST, "gw.local")
            .body(())
            .unwrap_or_default();
        assert_eq!(ByHost.extract(&req).as_deref(), Some("gw.local"));
        assert_eq!(Single.extract(&req), None);
        let by_path = key_fn(|head: &RequestHead<'_>| Some(Cow::Borrowed(head.uri().path())));
        assert_eq!(by_path.extract(&req).as_deref(), Some("/v1/chat"));
    }
}
