//! The Postgres and SQLite schemas, after every migration in `migrations/`, declare the same
//! tables with the same columns (and the same nullability), so the store's queries, written
//! once for both, read and write the same data on either. Real Postgres (`DATABASE_URL`) and a
//! real SQLite file.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::Row as _;
use starling_api::store::{PgStore, SqliteStore};

/// Table → column → nullable.
type Schema = BTreeMap<String, BTreeMap<String, bool>>;

async fn postgres_schema() -> Schema {
    let url = common::fresh_pg_url().await;
    drop(PgStore::connect(&url, 2).await.expect("migrate postgres"));
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let rows = sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS c, is_nullable::text AS n \
         FROM information_schema.columns WHERE table_schema = 'public' \
         AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&pool)
    .await
    .expect("columns");
    let mut schema = Schema::new();
    for r in rows {
        schema
            .entry(r.get("t"))
            .or_default()
            .insert(r.get("c"), r.get::<String, _>("n") == "YES");
    }
    pool.close().await;
    schema
}

async fn sqlite_schema() -> Schema {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("api.db").display());
    drop(SqliteStore::connect(&url).await.expect("migrate sqlite"));
    let pool = sqlx::SqlitePool::connect(&url).await.expect("connect");
    let rows = sqlx::query(
        "SELECT m.name AS t, p.name AS c, p.\"notnull\" AS nn, p.pk AS pk \
         FROM sqlite_master m JOIN pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'",
    )
    .fetch_all(&pool)
    .await
    .expect("columns");
    let mut schema = Schema::new();
    for r in rows {
        // A primary key column is never null in either database (Postgres says so; SQLite
        // only when the column says NOT NULL too, so read it from `pk` as well).
        let nullable = r.get::<i64, _>("nn") == 0 && r.get::<i64, _>("pk") == 0;
        schema
            .entry(r.get("t"))
            .or_default()
            .insert(r.get("c"), nullable);
    }
    pool.close().await;
    schema
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_sqlite_declare_the_same_tables_and_columns() {
    let (pg, lite) = tokio::time::timeout(Duration::from_secs(60), async {
        (postgres_schema().await, sqlite_schema().await)
    })
    .await
    .expect("timed out");
    for table in [
        "accounts",
        "brokers",
        "signing_keys",
        "revocations",
        "hook_keys",
    ] {
        assert!(
            pg.contains_key(table),
            "no table {table} in Postgres: {pg:?}"
        );
    }
    for (table, columns) in &pg {
        assert_eq!(
            Some(columns),
            lite.get(table),
            "table {table}: Postgres (left) and SQLite (right) differ (column → nullable)"
        );
    }
    assert_eq!(
        pg.keys().collect::<Vec<_>>(),
        lite.keys().collect::<Vec<_>>(),
        "the two databases have different tables"
    );
}
