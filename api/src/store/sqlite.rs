//! The SQLite store (the embedded default for `dev`). One connection, so writers never meet
//! `SQLITE_BUSY`; changes are announced in-process after commit.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
};
use tokio::sync::broadcast;

use super::sql::{Dialect, SqlStore};
use super::{BoxFut, Change, Result};

/// The store on SQLite.
pub type SqliteStore = SqlStore<Sqlite>;

impl Dialect for Sqlite {
    fn announce_in_tx<'t>(
        _conn: &'t mut SqliteConnection,
        _broker_id: &'t str,
    ) -> BoxFut<'t, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn announce_committed(changes: &broadcast::Sender<Change>, broker_id: &str) {
        let _ = changes.send(Arc::from(broker_id));
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }
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
        Ok(Self {
            pool,
            changes_tx,
            listener: None,
        })
    }
}
