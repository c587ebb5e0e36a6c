//! Test support: fresh stores on SQLite (a temporary file) and on the real Postgres that
//! `scripts/test` starts (`DATABASE_URL`), one fresh database per test.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use starling_api::store::{PgStore, SqliteStore, Store};

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
