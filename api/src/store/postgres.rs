//! The Postgres store. Changes are announced with `NOTIFY starling_state` inside the changing
//! transaction; one `LISTEN` connection per api process forwards them to the local feed, so a
//! change made through any replica wakes the long-polls of all of them.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Postgres;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions, PgQueryResult};
use tokio::sync::broadcast;

use super::sql::{Dialect, SqlStore};
use super::{BoxFut, Change, Result};

/// The Postgres channel that carries broker ids whose state changed.
const CHANNEL: &str = "starling_state";

/// The store on Postgres.
pub type PgStore = SqlStore<Postgres>;

impl Dialect for Postgres {
    fn announce_in_tx<'t>(
        conn: &'t mut PgConnection,
        broker_id: &'t str,
    ) -> BoxFut<'t, Result<()>> {
        Box::pin(async move {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(broker_id)
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    fn announce_committed(_changes: &broadcast::Sender<Change>, _broker_id: &str) {}

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }
}

impl PgStore {
    /// Connects, applies `migrations/postgres` and starts listening for changes.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        Self::from_pool(pool).await
    }

    /// Uses an existing pool: applies migrations and starts listening for changes.
    pub async fn from_pool(pool: PgPool) -> Result<Self> {
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        let (changes_tx, _) = broadcast::channel(1024);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        let tx = changes_tx.clone();
        let listener = tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(n) => {
                        let _ = tx.send(Arc::from(n.payload()));
                    }
                    Err(e) => {
                        // sqlx reconnects on the next recv; notifications may have been missed
                        // meanwhile, so every waiter re-reads.
                        tracing::warn!(error = %e, "lost the LISTEN connection; reconnecting");
                        let _ = tx.send(Arc::from("*"));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Self {
            pool,
            changes_tx,
            listener: Some(listener),
        })
    }
}
