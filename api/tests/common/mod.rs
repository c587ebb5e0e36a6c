//! Test support: fresh stores on SQLite (a temporary file) and on the real Postgres that
//! `scripts/test` starts (`DATABASE_URL`), one fresh database per test; an api over a fresh
//! SQLite store with a known bootstrap token, and the one reader of its routers' responses.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;
use starling_api::config::{Config, Secret};
use starling_api::keys::Kek;
use starling_api::state::AppState;
use starling_api::store::{PgStore, SqliteStore, Store};
use tower::ServiceExt as _;

/// The bootstrap API token of [`app_state`]'s api.
pub const BOOTSTRAP: &str = "sat_bootstrap-token-for-tests";

/// An api's state over a fresh SQLite store: `config` with [`BOOTSTRAP`] as its bootstrap token
/// (stored) and `example.test` as its domain. The guard keeps the store's directory.
pub async fn app_state(config: Config) -> (AppState, Box<dyn std::any::Any + Send>) {
    let (store, guard) = sqlite().await;
    let config = Config {
        bootstrap_token: Some(Secret(BOOTSTRAP.into())),
        domain: "example.test".into(),
        ..config
    };
    let state = AppState::new(store, Kek::from_bytes(&[3u8; 32]).unwrap(), config);
    starling_api::server::ensure_bootstrap(&*state.store, &state.config, state.clock.now_micros())
        .await
        .unwrap();
    (state, guard)
}

/// A response as the tests read it: the body as JSON (`null` when empty, a JSON string when it
/// is not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    /// The body as `T` once the status is `status`; a failure names both.
    pub fn expect<T: serde::de::DeserializeOwned>(&self, status: StatusCode) -> T {
        assert_eq!(self.status, status, "{:?}", self.body);
        serde_json::from_value(self.body.clone())
            .unwrap_or_else(|e| panic!("not the expected shape ({e}): {:?}", self.body))
    }
}

/// Sends `req` through `router` (no socket) and reads the whole response.
pub async fn oneshot(router: &Router, req: Request<Body>) -> Resp {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Resp {
        status,
        headers,
        body,
    }
}

/// A fresh SQLite store in a temporary directory (kept alive by the returned guard).
pub async fn sqlite() -> (Arc<dyn Store>, Box<dyn std::any::Any + Send>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("api.db").display());
    let store = SqliteStore::connect(&url).await.expect("sqlite store");
    (Arc::new(store), Box::new(dir))
}

/// The Postgres server URL. Under CI a missing `DATABASE_URL` fails the test; elsewhere too,
/// since a Postgres-less run would silently test only half of the store.
pub fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "DATABASE_URL is not set: the Postgres half of the store suite needs a real Postgres \
             (scripts/test starts one; CI={})",
            std::env::var("CI").unwrap_or_default()
        ),
    }
}

/// A URL for a fresh, empty database on the test Postgres server.
pub async fn fresh_pg_url() -> String {
    let base = database_url();
    let admin = sqlx::PgPool::connect(&base)
        .await
        .expect("connect to DATABASE_URL");
    let name = format!(
        "starling_t_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    let (before_query, query) = match base.split_once('?') {
        Some((b, q)) => (b.to_string(), format!("?{q}")),
        None => (base.clone(), String::new()),
    };
    let prefix = before_query
        .rsplit_once('/')
        .map(|(p, _)| p.to_string())
        .filter(|p| !p.ends_with('/'))
        .unwrap_or(before_query);
    format!("{prefix}/{name}{query}")
}

/// A fresh Postgres store in its own database.
pub async fn postgres() -> (Arc<dyn Store>, Box<dyn std::any::Any + Send>) {
    let url = fresh_pg_url().await;
    let store = PgStore::connect(&url, 10).await.expect("postgres store");
    (Arc::new(store), Box::new(()))
}
