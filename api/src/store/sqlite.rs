//! The SQLite store (the embedded default for `dev`). One connection, so writers never meet
//! `SQLITE_BUSY`; changes are announced in-process after commit.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio::sync::broadcast;

use super::sql::impl_store;

/// The store on SQLite.
pub struct SqliteStore {
    pool: SqlitePool,
    changes_tx: broadcast::Sender<Change>,
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `url` (`sqlite://path` or
    /// `sqlite::memory:`) and applies `migrations/sqlite`.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        // One connection: SQLite allows one writer at a time, and `:memory:` databases exist per
        // connection.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        let (changes_tx, _) = broadcast::channel(1024);
        Ok(Self { pool, changes_tx })
    }

    /// The pool (for tests that inspect the database directly).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn announce_in_tx(
        &self,
        _tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        _broker_id: &str,
    ) -> Result<()> {
        Ok(())
    }

    fn announce_committed(&self, broker_id: &str) {
        let _ = self.changes_tx.send(Arc::from(broker_id));
    }
}

impl_store!(SqliteStore, sqlx::sqlite::SqliteRow);
