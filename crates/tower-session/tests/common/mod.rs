//! Shared by the test binaries: an axum app exercising every session
//! operation, an in-process client that keeps its cookie, and a store
//! wrapper that counts calls and can be made to fail.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_session::store::{Changes, Fields, HistoryAppend, StoredHistory};
use tower_session::{Id, Session, SessionLayer, SessionStore, StoreError, Turn};

pub use tower_session::Role;

/// The routes every test drives.
pub fn routes() -> Router {
    Router::new()
        .route("/untouched", get(|| async { "ok" }))
        .route("/get/{key}", get(get_field))
        .route("/set/{key}/{value}", post(set_field))
        .route("/remove/{key}", post(remove_field))
        .route("/bump/{key}", post(bump))
        .route("/slow-set/{key}/{value}", post(slow_set))
        .route("/login/{user}", post(login))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .route("/history/{role}/{tokens}", post(append))
        .route("/history/last/{n}", get(last))
        .route("/history/budget/{budget}", get(budget))
        .route("/history/clear", post(clear_history))
        .route("/profile", get(profile))
        .route("/stream/{key}/{value}", get(stream))
        .route(
            "/id",
            get(|session: Session| async move {
                session.id().map(|id| id.to_string()).unwrap_or_default()
            }),
        )
}

/// The app on `layer`.
pub fn app(layer: SessionLayer) -> Router {
    routes().layer(layer)
}

type Answer = Result<String, tower_session::Error>;

async fn get_field(session: Session, Path(key): Path<String>) -> Answer {
    let value: Option<serde_json::Value> = session.get(&key).await?;
    Ok(value.map_or_else(|| "null".to_owned(), |v| v.to_string()))
}

async fn set_field(session: Session, Path((key, value)): Path<(String, String)>) -> Answer {
    session.insert(&key, &value)?;
    Ok("set".into())
}

async fn remove_field(session: Session, Path(key): Path<String>) -> Answer {
    session.remove(&key)?;
    Ok("removed".into())
}

/// Reads a counter and writes it back plus one: one field read and written.
async fn bump(session: Session, Path(key): Path<String>) -> Answer {
    let n: u64 = session.get(&key).await?.unwrap_or(0);
    session.insert(&key, n + 1)?;
    Ok((n + 1).to_string())
}

/// Loads, waits, then writes: two of these overlapping would lose one
/// update with a whole-record store.
async fn slow_set(session: Session, Path((key, value)): Path<(String, String)>) -> Answer {
    let _: Option<serde_json::Value> = session.get("anything").await?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    session.insert(&key, &value)?;
    Ok("set".into())
}

async fn login(session: Session, Path(user): Path<String>) -> Answer {
    session.insert("user", &user)?;
    session.cycle_id().await?;
    Ok(user)
}

async fn logout(session: Session) -> Answer {
    session.logout().await?;
    Ok("bye".into())
}

async fn logout_everywhere(session: Session) -> Answer {
    Ok(session.logout_everywhere().await?.to_string())
}

async fn append(
    session: Session,
    Path((role, tokens)): Path<(String, u32)>,
    content: String,
) -> Answer {
    let role: Role = serde_json::from_value(serde_json::Value::String(role))?;
    let n = session
        .history()
        .append(Turn::new(role, content, tokens))
        .await?;
    Ok(n.to_string())
}

fn turns_json(turns: &[Turn]) -> String {
    serde_json::to_string(
        &turns
            .iter()
            .map(|t| {
                format!(
                    "{}:{}",
                    serde_json::to_value(t.role)
                        .unwrap_or_default()
                        .as_str()
                        .unwrap_or(""),
                    t.content
                )
            })
            .collect::<Vec<_>>(),
    )
    .unwrap_or_default()
}

async fn last(session: Session, Path(n): Path<usize>) -> Answer {
    Ok(turns_json(&session.history().last(n).await?))
}

async fn budget(session: Session, Path(budget): Path<u64>) -> Answer {
    Ok(turns_json(&session.history().within_tokens(budget).await?))
}

async fn clear_history(session: Session) -> Answer {
    session.history().clear().await?;
    Ok("cleared".into())
}

async fn profile(session: Session) -> Answer {
    // Read twice, as a rate limiter and then the handler would: one load.
    let first = session.profile().await?;
    let second = session.profile().await?;
    assert_eq!(first, second);
    Ok(second
        .and_then(|p| p.tier().map(str::to_owned))
        .unwrap_or_else(|| "none".into()))
}

/// A streamed body that sets `key` and queues an assistant turn only as its
/// last chunk is produced: after the response head has left.
async fn stream(session: Session, Path((key, value)): Path<(String, String)>) -> Body {
    let chunks = futures_util::stream::unfold(0u8, move |step| {
        let session = session.clone();
        let (key, value) = (key.clone(), value.clone());
        async move {
            match step {
                0..=2 => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Some((
                        Ok::<_, Infallible>(Bytes::from(format!("chunk{step}\n"))),
                        step + 1,
                    ))
                }
                3 => {
                    session.insert(&key, &value).ok()?;
                    session
                        .history()
                        .append_later(Turn::assistant(value.clone(), 3))
                        .ok()?;
                    Some((Ok(Bytes::from_static(b"done\n")), step + 1))
                }
                _ => None,
            }
        }
    });
    Body::from_stream(chunks)
}

/// A test client on an in-process app: keeps the session cookie like a
/// browser (set on `Set-Cookie`, dropped on `Max-Age=0`).
#[derive(Clone)]
pub struct Client {
    pub app: Router,
    pub cookie: Option<String>,
    pub name: String,
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn set_cookie(&self) -> Option<&str> {
        self.headers
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
    }
}

impl Client {
    pub fn new(app: Router) -> Self {
        Self {
            app,
            cookie: None,
            name: "sid".into(),
        }
    }

    /// The same visitor on another app (another replica).
    pub fn on(&self, app: Router) -> Self {
        Self {
            app,
            ..self.clone()
        }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, String::new()).await
    }

    pub async fn post(&mut self, path: &str) -> Reply {
        self.send("POST", path, String::new()).await
    }

    pub async fn send(&mut self, method: &str, path: &str, body: String) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(cookie) = &self.cookie {
            req = req.header(header::COOKIE, format!("{}={cookie}", self.name));
        }
        let req = req.body(Body::from(body)).expect("a valid request");
        let reply = raw(&self.app, req).await;
        if let Some(set) = reply.set_cookie() {
            let (pair, attrs) = set.split_once(';').unwrap_or((set, ""));
            let value = pair.split_once('=').map(|(_, v)| v).unwrap_or_default();
            if attrs.contains("Max-Age=0") || value.is_empty() {
                self.cookie = None;
            } else {
                self.cookie = Some(value.to_owned());
            }
        }
        reply
    }
}

/// Sends `req` to `app`, reading the whole body.
pub async fn raw(app: &Router, req: Request<Body>) -> Reply {
    let res = app.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A request with raw `Cookie` bytes.
pub fn with_cookie(method: &str, path: &str, cookie: &[u8]) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(
            header::COOKIE,
            HeaderValue::from_bytes(cookie).expect("header bytes"),
        )
        .body(Body::empty())
        .expect("a valid request")
}

/// The id in a `Set-Cookie` value.
pub fn cookie_id(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|p| p.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default()
}

/// Wraps a store: counts calls per operation, and fails every call while
/// `fail` is set (as an outage would).
#[derive(Clone)]
pub struct Probe<S> {
    pub inner: S,
    pub calls: Arc<parking_lot::Mutex<HashMap<&'static str, u64>>>,
    pub fail: Arc<AtomicBool>,
    pub total: Arc<AtomicU64>,
}

impl<S> Probe<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            calls: Arc::default(),
            fail: Arc::default(),
            total: Arc::default(),
        }
    }

    pub fn count(&self, op: &str) -> u64 {
        self.calls.lock().get(op).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    pub fn reset(&self) {
        self.calls.lock().clear();
        self.total.store(0, Ordering::SeqCst);
    }

    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    fn enter(&self, op: &'static str) -> Result<(), StoreError> {
        *self.calls.lock().entry(op).or_default() += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            Err(StoreError::unavailable("the probe is failing"))
        } else {
            Ok(())
        }
    }
}

impl<S: SessionStore> SessionStore for Probe<S> {
    async fn load(&self, id: &Id) -> Result<Option<Fields>, StoreError> {
        self.enter("load")?;
        self.inner.load(id).await
    }
    async fn create(&self, id: &Id, fields: &Fields, ttl: Duration) -> Result<bool, StoreError> {
        self.enter("create")?;
        self.inner.create(id, fields, ttl).await
    }
    async fn update(&self, id: &Id, changes: &Changes, ttl: Duration) -> Result<bool, StoreError> {
        self.enter("update")?;
        self.inner.update(id, changes, ttl).await
    }
    async fn delete(&self, id: &Id) -> Result<(), StoreError> {
        self.enter("delete")?;
        self.inner.delete(id).await
    }
    async fn append_history(
        &self,
        id: &Id,
        append: HistoryAppend<'_>,
        ttl: Duration,
    ) -> Result<Option<usize>, StoreError> {
        self.enter("append_history")?;
        self.inner.append_history(id, append, ttl).await
    }
    async fn read_history(&self, id: &Id, last: usize) -> Result<StoredHistory, StoreError> {
        self.enter("read_history")?;
        self.inner.read_history(id, last).await
    }
    async fn clear_history(&self, id: &Id) -> Result<(), StoreError> {
        self.enter("clear_history")?;
        self.inner.clear_history(id).await
    }
    async fn copy_history(
        &self,
        from: &Id,
        to: &Id,
        max_turns: usize,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.enter("copy_history")?;
        self.inner.copy_history(from, to, max_turns, ttl).await
    }
    async fn index_session(&self, user: &str, id: &Id, ttl: Duration) -> Result<(), StoreError> {
        self.enter("index_session")?;
        self.inner.index_session(user, id, ttl).await
    }
    async fn unindex_session(&self, user: &str, id: &Id) -> Result<(), StoreError> {
        self.enter("unindex_session")?;
        self.inner.unindex_session(user, id).await
    }
    async fn delete_user_sessions(&self, user: &str) -> Result<usize, StoreError> {
        self.enter("delete_user_sessions")?;
        self.inner.delete_user_sessions(user).await
    }
    async fn load_profile(&self, user: &str) -> Result<Option<Fields>, StoreError> {
        self.enter("load_profile")?;
        self.inner.load_profile(user).await
    }
    async fn update_profile(&self, user: &str, changes: &Changes) -> Result<(), StoreError> {
        self.enter("update_profile")?;
        self.inner.update_profile(user, changes).await
    }
}

/// Parses the JSON list of `role:content` strings the history routes answer.
pub fn turns(body: &str) -> Vec<String> {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a turn list: {body}: {e}"))
}
