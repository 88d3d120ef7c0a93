//! One behaviour suite, run against every backend: the memory store, a real
//! standalone Redis, and a real 3-node Redis Cluster.
#![allow(missing_docs, missing_debug_implementations)]

mod common;

use std::time::Duration;

use common::{Client, Probe, app, cookie_id, raw, turns, with_cookie};
use http::StatusCode;
use tower_ai_core::redis::{ConnectOptions, DegradeConfig, connect};
use tower_session::{
    Id, MemoryStore, OutagePolicy, RedisStore, SessionBuilder, SessionLayer, SessionStore,
};

/// A store for one case, how a layer is put on it, and whatever keeps its
/// server alive.
pub(crate) struct Backend<S> {
    store: S,
    on: fn(SessionBuilder, S) -> SessionBuilder,
    _server: Option<test_support::RedisServer>,
}

impl<S: SessionStore + Clone> Backend<S> {
    fn builder(&self) -> SessionBuilder {
        (self.on)(SessionLayer::builder(), self.store.clone())
    }

    fn layer(&self) -> SessionLayer {
        self.builder().build().expect("valid")
    }

    fn probe(&self) -> Probe<S> {
        Probe::new(self.store.clone())
    }
}

fn memory() -> Backend<MemoryStore> {
    Backend {
        store: MemoryStore::new(),
        on: SessionBuilder::store,
        _server: None,
    }
}

type Redis = RedisStore<fred::clients::Client>;

fn redis_store(client: fred::clients::Client, prefix: &str) -> Redis {
    // Generous timeouts: the test machine is shared and busy.
    let degrade = tower_ai_core::redis::Degrade::new(
        "session",
        DegradeConfig::default().timeout(Duration::from_secs(2)),
    );
    RedisStore::builder(client)
        .prefix(prefix)
        .degrade(degrade)
        .build()
}

async fn redis() -> Backend<Redis> {
    let server = test_support::RedisServer::start();
    let client = connect(&[server.url()], &ConnectOptions::default())
        .await
        .expect("connected");
    Backend {
        store: redis_store(client, "test"),
        on: SessionBuilder::redis,
        _server: Some(server),
    }
}

async fn cluster(urls: &[String], prefix: &str) -> Backend<Redis> {
    let client = connect(urls, &ConnectOptions::default())
        .await
        .expect("connected to the cluster");
    Backend {
        store: redis_store(client, prefix),
        on: SessionBuilder::redis,
        _server: None,
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(&super::memory()).await;
                }
            )*
        }

        mod redis_standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(&super::redis().await).await;
                }
            )*
        }

        /// One cluster for every case (starting one takes seconds); each
        /// case has its own key prefix.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn redis_cluster_runs_every_case() {
            let nodes = test_support::RedisCluster::start();
            $(
                let backend = cluster(&nodes.urls(), stringify!($case)).await;
                cases::$case(&backend).await;
            )*
        }
    };
}

suite!(
    fields_round_trip_and_untouched_routes_cost_nothing,
    a_read_only_request_writes_nothing,
    ttl_slides_on_reads_and_writes,
    two_concurrent_requests_changing_different_fields_both_persist,
    a_client_chosen_id_is_never_adopted,
    login_cycles_the_id_and_keeps_the_data,
    bad_cookies_start_a_fresh_session,
    delete_is_seen_by_every_replica_at_once,
    logout_everywhere_ends_every_session_of_the_user,
    history_boundaries,
    history_expires_with_the_session,
    changes_made_while_streaming_are_saved_before_the_end,
    the_profile_is_loaded_once_per_request,
    the_absolute_lifetime_ends_an_active_session,
    outage_refuses_or_continues,
    api_clients_use_a_header,
    the_user_layer_puts_user_and_tier_in_the_extensions,
);

mod cases {
    use super::*;

    pub(crate) async fn fields_round_trip_and_untouched_routes_cost_nothing<
        S: SessionStore + Clone,
    >(
        b: &Backend<S>,
    ) {
        let probe = b.probe();
        let mut c = Client::new(app(SessionLayer::new(probe.clone())));

        // A new visitor on a route that never touches the session: no
        // cookie, no store call. Reading as a new visitor: no store call.
        let r = c.get("/untouched").await;
        assert_eq!((r.status, r.set_cookie()), (StatusCode::OK, None));
        let r = c.get("/get/a").await;
        assert_eq!(r.body, "null");
        assert_eq!(r.set_cookie(), None);
        assert_eq!(probe.total(), 0);

        let r = c.post("/set/a/1").await;
        assert_eq!(r.status, StatusCode::OK);
        let set = r.set_cookie().expect("a cookie for the new session");
        for attr in [
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
            "Path=/",
            "Max-Age=1800",
        ] {
            assert!(set.contains(attr), "{set} lacks {attr}");
        }
        assert_eq!(probe.count("create"), 1);
        assert_eq!(c.get("/get/a").await.body, "\"1\"");

        // With a session, the untouched route still costs nothing.
        probe.reset();
        let r = c.get("/untouched").await;
        assert_eq!((r.status, r.set_cookie()), (StatusCode::OK, None));
        assert_eq!(probe.total(), 0);

        c.post("/remove/a").await;
        assert_eq!(c.get("/get/a").await.body, "null");
        assert_eq!(c.post("/bump/n").await.body, "1");
        assert_eq!(c.post("/bump/n").await.body, "2");
    }

    pub(crate) async fn a_read_only_request_writes_nothing<S: SessionStore + Clone>(
        b: &Backend<S>,
    ) {
        let probe = b.probe();
        let mut c = Client::new(app(SessionLayer::new(probe.clone())));
        c.post("/set/a/1").await;
        probe.reset();
        for _ in 0..3 {
            let r = c.get("/get/a").await;
            assert_eq!(r.body, "\"1\"");
            // Within the touch interval: no renewal, no cookie.
            assert_eq!(r.set_cookie(), None);
        }
        assert_eq!(probe.count("load"), 3);
        assert_eq!(probe.total(), 3, "only loads: {:?}", probe.calls.lock());

        // With a zero touch interval every read renews the TTL (and the
        // cookie), still without writing a field.
        let probe = b.probe();
        let layer = SessionLayer::builder()
            .store(probe.clone())
            .touch_interval(Duration::ZERO)
            .build()
            .expect("valid");
        let mut c = c.on(app(layer));
        let r = c.get("/get/a").await;
        assert_eq!(r.body, "\"1\"");
        assert!(r.set_cookie().is_some_and(|s| s.contains("Max-Age=1800")));
        assert_eq!(probe.count("update"), 1);
    }

    pub(crate) async fn ttl_slides_on_reads_and_writes<S: SessionStore + Clone>(b: &Backend<S>) {
        let layer = b
            .builder()
            .ttl(Duration::from_secs(2))
            .touch_interval(Duration::from_millis(300))
            .build()
            .expect("valid");
        let mut c = Client::new(app(layer));
        c.post("/set/a/1").await;
        // Reads only, each before the TTL runs out: the session outlives
        // several TTLs.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(1_100)).await;
            let r = c.get("/get/a").await;
            assert_eq!(r.body, "\"1\"", "reads must renew the TTL");
            assert!(r.set_cookie().is_some_and(|s| s.contains("Max-Age=2")));
        }
        // Inactivity: gone, and the visitor is new.
        tokio::time::sleep(Duration::from_millis(2_300)).await;
        let r = c.get("/get/a").await;
        assert_eq!(r.body, "null");
    }

    pub(crate) async fn two_concurrent_requests_changing_different_fields_both_persist<
        S: SessionStore + Clone,
    >(
        b: &Backend<S>,
    ) {
        let mut c = Client::new(app(b.layer()));
        c.post("/set/seed/1").await;
        let (mut x, mut y) = (c.clone(), c.clone());
        let (rx, ry) = tokio::join!(x.post("/slow-set/x/1"), y.post("/slow-set/y/2"));
        assert_eq!((rx.status, ry.status), (StatusCode::OK, StatusCode::OK));
        assert_eq!(c.get("/get/x").await.body, "\"1\"");
        assert_eq!(c.get("/get/y").await.body, "\"2\"");
        assert_eq!(c.get("/get/seed").await.body, "\"1\"");
    }

    pub(crate) async fn a_client_chosen_id_is_never_adopted<S: SessionStore + Clone>(
        b: &Backend<S>,
    ) {
        let app = app(b.layer());
        let chosen = Id::random().expect("entropy");
        let r = raw(
            &app,
            with_cookie("POST", "/set/a/1", format!("sid={chosen}").as_bytes()),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let given = cookie_id(r.set_cookie().expect("a new cookie"));
        assert_ne!(given, chosen.to_string());
        assert!(b.store.load(&chosen).await.expect("store").is_none());
        // The chosen id still leads nowhere.
        let r = raw(
            &app,
            with_cookie("GET", "/get/a", format!("sid={chosen}").as_bytes()),
        )
        .await;
        assert_eq!(r.body, "null");
    }

    pub(crate) async fn login_cycles_the_id_and_keeps_the_data<S: SessionStore + Clone>(
        b: &Backend<S>,
    ) {
        let mut c = Client::new(app(b.layer()));
        c.post("/set/cart/3").await;
        c.send("POST", "/history/user/2", "hello".into()).await;
        let before = c.cookie.clone().expect("a session");
        let r = c.post("/login/ada").await;
        assert_eq!(r.status, StatusCode::OK);
        let after = c.cookie.clone().expect("a session");
        assert_ne!(before, after, "login must give a new id");
        assert_eq!(c.get("/get/cart").await.body, "\"3\"");
        assert_eq!(c.get("/get/user").await.body, "\"ada\"");
        assert_eq!(turns(&c.get("/history/last/10").await.body), ["user:hello"]);
        // The old id is dead.
        let mut old = c.clone();
        old.cookie = Some(before);
        assert_eq!(old.get("/get/cart").await.body, "null");
    }

    pub(crate) async fn bad_cookies_start_a_fresh_session<S: SessionStore + Clone>(b: &Backend<S>) {
        let app = app(b.layer());
        let oversized = format!("sid={}", "A".repeat(16 * 1024));
        let cases: Vec<Vec<u8>> = vec![
            b"sid=malformed".to_vec(),
            b"sid=".to_vec(),
            b"sid".to_vec(),
            oversized.into_bytes(),
            b"sid=\xff\xfe\xfa\xfb\xfc\xfd\xe0\xe1\xe2\xe3\xe4\xe5\xe6\xe7\xe8\xe9\xea\xeb\xec\xed\xee\xef\xf0\xf1\xf2\xf3\xf4\xf5\xf6\xf7\xf8\xf9".to_vec(),
            b"other=\xff; sid=\x80\x81".to_vec(),
            b"sid=../../etc/passwd{tag}:x".to_vec(),
        ];
        for cookie in cases {
            let r = raw(&app, with_cookie("POST", "/set/a/1", &cookie)).await;
            assert_eq!(r.status, StatusCode::OK, "{cookie:?}");
            assert!(r.set_cookie().is_some(), "a fresh session for {cookie:?}");
            let r = raw(&app, with_cookie("GET", "/get/a", &cookie)).await;
            assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "null"));
        }

        // Signed cookies: a tampered signature is a new visitor too.
        let layer = b
            .builder()
            .signed([[1u8; 64], [2u8; 64]])
            .build()
            .expect("valid");
        let mut c = Client::new(app_signed(layer));
        c.post("/set/a/1").await;
        let signed = c.cookie.clone().expect("a session");
        assert_eq!(signed.len(), 76);
        assert_eq!(c.get("/get/a").await.body, "\"1\"");
        let mut tampered = signed.into_bytes();
        tampered[3] ^= 1;
        c.cookie = String::from_utf8(tampered).ok();
        assert_eq!(c.get("/get/a").await.body, "null");
    }

    fn app_signed(layer: SessionLayer) -> axum::Router {
        app(layer)
    }

    pub(crate) async fn delete_is_seen_by_every_replica_at_once<S: SessionStore + Clone>(
        b: &Backend<S>,
    ) {
        let mut a = Client::new(app(b.layer()));
        a.post("/login/ada").await;
        let mut on_b = a.on(app(b.layer()));
        assert_eq!(on_b.get("/get/user").await.body, "\"ada\"");
        let r = on_b.post("/logout").await;
        assert!(r.set_cookie().is_some_and(|s| s.contains("Max-Age=0")));
        // A still holds the old cookie: a new visitor at once.
        assert_eq!(a.get("/get/user").await.body, "null");
    }

    pub(crate) async fn logout_everywhere_ends_every_session_of_the_user<
        S: SessionStore + Clone,
    >(
        b: &Backend<S>,
    ) {
        let app = app(b.layer());
        let mut phone = Client::new(app.clone());
        let mut laptop = Client::new(app.clone());
        let mut other = Client::new(app.clone());
        phone.post("/login/ada").await;
        laptop.post("/login/ada").await;
        other.post("/login/bob").await;
        assert_ne!(phone.cookie, laptop.cookie);
        let r = laptop.post("/logout-everywhere").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "2"));
        assert_eq!(phone.get("/get/user").await.body, "null");
        assert_eq!(laptop.get("/get/user").await.body, "null");
        assert_eq!(other.get("/get/user").await.body, "\"bob\"");
        // Through the handle too.
        phone.post("/login/ada").await;
        let sessions = b.layer().sessions();
        assert_eq!(sessions.logout_user("ada").await.expect("store"), 1);
        assert_eq!(phone.get("/get/user").await.body, "null");
    }

    pub(crate) async fn history_boundaries<S: SessionStore + Clone>(b: &Backend<S>) {
        let layer = b.builder().history_limit(3).build().expect("valid");
        let mut c = Client::new(app(layer));
        assert_eq!(
            turns(&c.get("/history/last/5").await.body),
            Vec::<String>::new()
        );
        c.send("POST", "/history/system/10", "be brief".into())
            .await;
        for (i, tokens) in [5, 3, 4, 6].iter().enumerate() {
            let r = c
                .send("POST", &format!("/history/user/{tokens}"), format!("m{i}"))
                .await;
            assert_eq!(r.status, StatusCode::OK);
        }
        // Capped at 3: m0 is gone; the system message is kept apart.
        assert_eq!(
            turns(&c.get("/history/last/10").await.body),
            ["user:m1", "user:m2", "user:m3"]
        );
        assert_eq!(
            turns(&c.get("/history/last/3").await.body),
            ["user:m1", "user:m2", "user:m3"]
        );
        assert_eq!(
            turns(&c.get("/history/last/2").await.body),
            ["user:m2", "user:m3"]
        );
        assert_eq!(
            turns(&c.get("/history/last/0").await.body),
            Vec::<String>::new()
        );
        // Budget: system 10, then m3 (6), m2 (4), m1 (3).
        assert_eq!(
            turns(&c.get("/history/budget/20").await.body),
            ["system:be brief", "user:m2", "user:m3"]
        );
        assert_eq!(
            turns(&c.get("/history/budget/19").await.body),
            ["system:be brief", "user:m3"]
        );
        assert_eq!(
            turns(&c.get("/history/budget/23").await.body),
            ["system:be brief", "user:m1", "user:m2", "user:m3"]
        );
        assert_eq!(
            turns(&c.get("/history/budget/5").await.body),
            ["system:be brief"]
        );
        c.post("/history/clear").await;
        assert_eq!(
            turns(&c.get("/history/budget/100").await.body),
            Vec::<String>::new()
        );
        // An oversized turn is refused.
        let r = c.send("POST", "/history/user/1", "x".repeat(70_000)).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    pub(crate) async fn history_expires_with_the_session<S: SessionStore + Clone>(b: &Backend<S>) {
        let layer = b
            .builder()
            .ttl(Duration::from_secs(1))
            .touch_interval(Duration::ZERO)
            .build()
            .expect("valid");
        let mut c = Client::new(app(layer));
        c.send("POST", "/history/user/1", "hi".into()).await;
        let id = c.cookie.clone().expect("the history made a session");
        assert_eq!(turns(&c.get("/history/last/5").await.body), ["user:hi"]);
        tokio::time::sleep(Duration::from_millis(1_400)).await;
        assert_eq!(
            turns(&c.get("/history/last/5").await.body),
            Vec::<String>::new()
        );
        let id = Id::parse(id.as_bytes()).expect("an id");
        let stored = b.store.read_history(&id, 10).await.expect("store");
        assert!(stored.turns.is_empty() && stored.system.is_none());
    }

    pub(crate) async fn changes_made_while_streaming_are_saved_before_the_end<
        S: SessionStore + Clone,
    >(
        b: &Backend<S>,
    ) {
        let mut c = Client::new(app(b.layer()));
        c.post("/set/a/1").await;
        let r = c.get("/stream/answer/42").await;
        assert_eq!(r.body, "chunk0\nchunk1\nchunk2\ndone\n");
        // Read right after the body ended: the changes are there.
        assert_eq!(c.get("/get/answer").await.body, "\"42\"");
        assert_eq!(
            turns(&c.get("/history/last/5").await.body),
            ["assistant:42"]
        );
    }

    pub(crate) async fn the_profile_is_loaded_once_per_request<S: SessionStore + Clone>(
        b: &Backend<S>,
    ) {
        let probe = b.probe();
        let layer = SessionLayer::new(probe.clone());
        let sessions = layer.sessions();
        let mut c = Client::new(app(layer));
        assert_eq!(c.get("/profile").await.body, "none");
        c.post("/login/ada").await;
        assert_eq!(c.get("/profile").await.body, "none");
        sessions
            .update_profile("ada", [("tier", "pro")], [])
            .await
            .expect("store");
        probe.reset();
        assert_eq!(c.get("/profile").await.body, "pro");
        assert_eq!(probe.count("load_profile"), 1);
        assert_eq!(probe.count("load"), 1);
        let profile = sessions
            .profile("ada")
            .await
            .expect("store")
            .expect("a profile");
        assert_eq!(profile.tier(), Some("pro"));
        assert_eq!(profile.user(), "ada");
    }

    pub(crate) async fn the_absolute_lifetime_ends_an_active_session<S: SessionStore + Clone>(
        b: &Backend<S>,
    ) {
        let layer = b
            .builder()
            .ttl(Duration::from_secs(1))
            .touch_interval(Duration::ZERO)
            .absolute_lifetime(Duration::from_millis(1_500))
            .build()
            .expect("valid");
        let mut c = Client::new(app(layer));
        c.post("/set/a/1").await;
        let start = tokio::time::Instant::now();
        // Active all along, within the idle TTL: alive until the absolute
        // deadline (at most 1.5 s after `start`)...
        while start.elapsed() < Duration::from_millis(1_100) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(c.get("/get/a").await.body, "\"1\"");
        }
        // ...and gone after it, however active.
        tokio::time::sleep_until(start + Duration::from_millis(1_700)).await;
        assert_eq!(c.get("/get/a").await.body, "null");
    }

    pub(crate) async fn outage_refuses_or_continues<S: SessionStore + Clone>(b: &Backend<S>) {
        let probe = b.probe();
        let refuse = app(SessionLayer::new(probe.clone()));
        let mut c = Client::new(refuse.clone());
        c.post("/set/a/1").await;
        probe.set_failing(true);

        let r = c.get("/get/a").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers["content-type"], "application/problem+json");
        let doc: serde_json::Value = serde_json::from_str(&r.body).expect("a problem document");
        assert_eq!(doc["status"], 503);
        assert!(r.set_cookie().is_none());
        // Writes need the store too; untouched routes don't.
        assert_eq!(
            c.post("/set/b/2").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(c.get("/untouched").await.status, StatusCode::OK);
        // A gRPC caller gets a gRPC status.
        let req = http::Request::builder()
            .uri("/get/a")
            .header("content-type", "application/grpc")
            .header(
                "cookie",
                format!("sid={}", c.cookie.clone().unwrap_or_default()),
            )
            .body(axum::body::Body::empty())
            .expect("request");
        let r = raw(&refuse, req).await;
        assert_eq!(r.headers["grpc-status"], "14");

        let continuing = SessionLayer::builder()
            .store(probe.clone())
            .on_outage(OutagePolicy::Continue)
            .build()
            .expect("valid");
        let mut d = c.on(app(continuing));
        let r = d.get("/get/a").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "null"));
        let r = d.post("/set/b/2").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            r.set_cookie().is_none(),
            "the client's cookie must survive the outage"
        );

        probe.set_failing(false);
        assert_eq!(c.get("/get/a").await.body, "\"1\"");
        assert_eq!(c.get("/get/b").await.body, "null");
    }

    pub(crate) async fn api_clients_use_a_header<S: SessionStore + Clone>(b: &Backend<S>) {
        let layer = b.builder().header("x-session-id").build().expect("valid");
        let app = app(layer);
        let req = http::Request::builder()
            .method("POST")
            .uri("/set/a/1")
            .header("x-session-id", "not-an-id")
            .body(axum::body::Body::empty())
            .expect("request");
        let r = raw(&app, req).await;
        assert!(r.set_cookie().is_none());
        let id = r.headers["x-session-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(id.len(), 32);
        let req = http::Request::builder()
            .uri("/get/a")
            .header("x-session-id", &id)
            .body(axum::body::Body::empty())
            .expect("request");
        assert_eq!(raw(&app, req).await.body, "\"1\"");
    }

    pub(crate) async fn the_user_layer_puts_user_and_tier_in_the_extensions<
        S: SessionStore + Clone,
    >(
        b: &Backend<S>,
    ) {
        use axum::Extension;
        use tower_ai_core::key::Tier;
        use tower_session::{Session, SessionUser, UserLayer};

        let probe = b.probe();
        let layer = SessionLayer::new(probe.clone());
        let sessions = layer.sessions();
        let whoami = axum::routing::get(
            |session: Session,
             user: Option<Extension<SessionUser>>,
             tier: Option<Extension<Tier>>| async move {
                // The handler reads the session again: already loaded.
                let again: Option<String> = session.get("user").await.ok().flatten();
                format!(
                    "{}/{}/{}",
                    user.map(|u| u.0.as_str().to_owned()).unwrap_or_default(),
                    tier.map(|t| t.0.as_str().to_owned()).unwrap_or_default(),
                    again.unwrap_or_default(),
                )
            },
        );
        let app = common::routes()
            .route("/whoami", whoami)
            .layer(UserLayer::new())
            .layer(layer);
        let mut c = Client::new(app);
        // No session: nothing loaded, nothing set.
        assert_eq!(c.get("/whoami").await.body, "//");
        assert_eq!(probe.total(), 0);
        c.post("/login/ada").await;
        sessions
            .update_profile("ada", [("tier", "pro")], [])
            .await
            .expect("store");
        probe.reset();
        assert_eq!(c.get("/whoami").await.body, "ada/pro/ada");
        assert_eq!((probe.count("load"), probe.count("load_profile")), (1, 1));
        // An outage is refused before the inner layers run.
        probe.set_failing(true);
        let r = c.get("/whoami").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        probe.set_failing(false);
    }
}
