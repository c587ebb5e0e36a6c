//! The queries, written once for both databases: [`SqlStore`] implements [`Store`] for any
//! [`Dialect`] (Postgres and SQLite) in SQL that both accept (`$n` parameters,
//! `ON CONFLICT DO NOTHING`, `LOWER()`, integer times), reading rows into the records'
//! [`sqlx::FromRow`] types.
//!
//! What differs lives in the dialect (`postgres.rs`, `sqlite.rs`): how a change is announced
//! (Postgres `NOTIFY` inside the changing transaction, delivered on commit; SQLite an
//! in-process broadcast after commit), how the store connects and which migrations it applies.

use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Transaction,
    Type,
};
use tokio::sync::broadcast;

use super::{
    Account, ApiTokenRecord, AuditEntry, BoxFut, Broker, BrokerState, Change, IssuedCredential,
    IssuedRecord, KeyRecord, Namespace, Page, Result, Revocation, Store, StoreError,
    revocation_horizon,
};

/// What one database does its own way. Implemented for [`sqlx::Postgres`] and [`sqlx::Sqlite`].
pub trait Dialect: Database {
    /// Announces a change of `broker_id` inside the changing transaction (Postgres: `NOTIFY`,
    /// delivered on commit to every replica).
    fn announce_in_tx<'t>(
        conn: &'t mut Self::Connection,
        broker_id: &'t str,
    ) -> BoxFut<'t, Result<()>>;

    /// Announces a change of `broker_id` after its commit (SQLite: in process, on the feed).
    fn announce_committed(changes: &broadcast::Sender<Change>, broker_id: &str);

    /// How many rows a statement changed.
    fn rows_affected(done: &Self::QueryResult) -> u64;
}

/// A Rust type that is written to and read from a column of `DB`.
pub trait Value<'q, DB: Database>: Encode<'q, DB> + Decode<'q, DB> + Type<DB> {}

impl<'q, DB: Database, T: Encode<'q, DB> + Decode<'q, DB> + Type<DB>> Value<'q, DB> for T {}

/// The store on a SQL database: its pool and the change feed.
pub struct SqlStore<DB: Database> {
    pub(super) pool: Pool<DB>,
    pub(super) changes_tx: broadcast::Sender<Change>,
    /// The task that forwards the database's change notifications (Postgres `LISTEN`), stopped
    /// with the store.
    pub(super) listener: Option<tokio::task::JoinHandle<()>>,
}

impl<DB: Database> SqlStore<DB> {
    /// The pool (for tests that inspect the database directly).
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

impl<DB: Database> Drop for SqlStore<DB> {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

/// A broker with its namespace's name; the caller adds the `WHERE` clause.
const SELECT_BROKER: &str = "SELECT b.id, b.account_id, b.namespace_id, n.name AS namespace_name, \
     b.name, b.description, b.auth_type, b.expiration, b.on_publish_url, b.limits, b.managed_by, \
     b.endpoint, b.ws_endpoint, b.version, b.created_at, b.modified_at \
     FROM brokers b JOIN namespaces n ON n.id = b.namespace_id";

/// The columns of an API token.
const SELECT_TOKEN: &str =
    "SELECT id, account_id, name, role, token_hash, system, created_at FROM api_tokens";

/// The columns of a namespace.
const SELECT_NAMESPACE: &str =
    "SELECT id, account_id, name, description, created_at, modified_at FROM namespaces";

/// The columns of a signing or hook key (`FROM` the table follows).
const SELECT_KEY: &str = "SELECT id, broker_id, kid, x, sealed_seed, status, created_at, retire_at";

/// The two key tables: keys that sign client tokens, and the keys that sign the hook's requests.
const SIGNING_KEYS: &str = "signing_keys";
const HOOK_KEYS: &str = "hook_keys";

/// Bumps broker `$1`'s version (and so locks its row until the transaction ends).
const BUMP_VERSION: &str = "UPDATE brokers SET version = version + 1 WHERE id = $1";

/// Removes, for broker `$1`, the revocations and issuance records of tokens that can no longer
/// verify because the key that signed them left the key set; a revocation whose key is unknown
/// (a `jti` this api did not issue, or whose record was collected) goes once every key the
/// broker had when it was made is gone (key times are microseconds, revocation times seconds).
const SWEEP_GONE_KEYS: [&str; 2] = [
    "DELETE FROM revocations WHERE broker_id = $1 AND (\
       (kid IS NOT NULL AND kid NOT IN (SELECT kid FROM signing_keys WHERE broker_id = $1)) \
       OR (kid IS NULL AND created_at * 1000000 < (SELECT MIN(created_at) FROM signing_keys WHERE broker_id = $1)))",
    "DELETE FROM issued_credentials WHERE broker_id = $1 AND kid NOT IN (SELECT kid FROM signing_keys WHERE broker_id = $1)",
];

/// Live revocations of broker `$1` at horizon `$2`.
const LIVE_REVOCATIONS: &str = "SELECT jti, expires_at, kid FROM revocations \
     WHERE broker_id = $1 AND (expires_at IS NULL OR expires_at > $2) ORDER BY created_at, jti";

/// A revocation as read: `(jti, expires_at, kid)`.
type RevocationRow = (String, Option<i64>, Option<String>);

fn revocation((jti, expires_at, kid): RevocationRow) -> Revocation {
    Revocation {
        jti,
        expires_at,
        kid,
    }
}

/// At most `limit` of `items` (read with one more than `limit`), and the cursor after them when
/// that one more was there.
fn page<T>(mut items: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> Page<T> {
    let limit = limit as usize;
    let more = items.len() > limit;
    items.truncate(limit);
    let next_after = if more { items.last().map(key) } else { None };
    Page { items, next_after }
}

/// A foreign key refused the statement: `to`; any other failure as it is.
fn foreign_key_as(to: StoreError) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match e {
        sqlx::Error::Database(ref db) if db.is_foreign_key_violation() => to,
        other => StoreError::from(other),
    }
}

/// A unique constraint refused the statement: a conflict saying `what`; any other failure as
/// it is.
fn conflict_as(what: &'static str) -> impl FnOnce(StoreError) -> StoreError {
    move |e| match e {
        StoreError::Conflict(_) => StoreError::Conflict(what),
        other => other,
    }
}

impl<DB: Dialect> SqlStore<DB> {
    /// Announces the change of `broker_id` and commits it.
    async fn commit_change(&self, mut tx: Transaction<'static, DB>, broker_id: &str) -> Result<()> {
        DB::announce_in_tx(&mut tx, broker_id).await?;
        tx.commit().await?;
        DB::announce_committed(&self.changes_tx, broker_id);
        Ok(())
    }
}

// === the steps the operations share ===

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Value<'q, DB> + ColumnIndex<DB::Row>,
    for<'q> String: Value<'q, DB>,
    for<'q> Option<String>: Value<'q, DB>,
    for<'q> i64: Value<'q, DB>,
    for<'q> Option<i64>: Value<'q, DB>,
    for<'q> bool: Value<'q, DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// Bumps the broker's version, locking its row until the transaction ends; `NotFound` when
    /// there is no such broker.
    async fn bump_version(conn: &mut DB::Connection, broker_id: &str) -> Result<()> {
        let done = sqlx::query(BUMP_VERSION)
            .bind(broker_id)
            .execute(conn)
            .await?;
        if DB::rows_affected(&done) == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Stores a key in `table` ([`SIGNING_KEYS`] or [`HOOK_KEYS`]).
    async fn insert_key(conn: &mut DB::Connection, table: &str, k: &KeyRecord) -> Result<()> {
        let q = format!(
            "INSERT INTO {table} (id, broker_id, kid, x, sealed_seed, status, created_at, retire_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
        sqlx::query(&q)
            .bind(&k.id)
            .bind(&k.broker_id)
            .bind(&k.kid)
            .bind(&k.x)
            .bind(&k.sealed_seed)
            .bind(k.status.as_str())
            .bind(k.created_at)
            .bind(k.retire_at)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Deletes the retiring keys of `table` whose `retire_at` has passed.
    async fn delete_retired(
        conn: &mut DB::Connection,
        table: &str,
        broker_id: &str,
        now_secs: i64,
    ) -> Result<u64> {
        let q = format!(
            "DELETE FROM {table} WHERE broker_id = $1 AND status = 'retiring' AND retire_at <= $2"
        );
        let done = sqlx::query(&q)
            .bind(broker_id)
            .bind(now_secs)
            .execute(conn)
            .await?;
        Ok(DB::rows_affected(&done))
    }

    /// Makes the current key of `table` a retiring one, until `retire_at`.
    async fn retire_current(
        conn: &mut DB::Connection,
        table: &str,
        broker_id: &str,
        retire_at: i64,
    ) -> Result<()> {
        let q = format!(
            "UPDATE {table} SET status = 'retiring', retire_at = $2 WHERE broker_id = $1 AND status = 'current'"
        );
        sqlx::query(&q)
            .bind(broker_id)
            .bind(retire_at)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Removes what the keys that left the key set verified ([`SWEEP_GONE_KEYS`]).
    async fn sweep_gone_keys(conn: &mut DB::Connection, broker_id: &str) -> Result<()> {
        for q in SWEEP_GONE_KEYS {
            sqlx::query(q).bind(broker_id).execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// A broker's keys in `table`, oldest first; with `live_at`, only those not past
    /// `retire_at` then.
    async fn keys(
        conn: &mut DB::Connection,
        table: &str,
        broker_id: &str,
        live_at: Option<i64>,
    ) -> Result<Vec<KeyRecord>> {
        let keys = match live_at {
            None => {
                let q = format!(
                    "{SELECT_KEY} FROM {table} WHERE broker_id = $1 ORDER BY created_at, id"
                );
                sqlx::query_as(&q).bind(broker_id).fetch_all(conn).await?
            }
            Some(now_secs) => {
                let q = format!(
                    "{SELECT_KEY} FROM {table} WHERE broker_id = $1 \
                     AND (status <> 'retiring' OR retire_at > $2) ORDER BY created_at, id"
                );
                sqlx::query_as(&q)
                    .bind(broker_id)
                    .bind(now_secs)
                    .fetch_all(conn)
                    .await?
            }
        };
        Ok(keys)
    }

    /// A page of `q`'s rows, whose `$1` is the owner, `$2` the cursor (the key the page starts
    /// after) and `$3` the row limit: at most `limit` items, and the cursor after them when more
    /// follow (`key` gives an item's key).
    async fn page_after<T>(
        &self,
        q: &str,
        owner: &str,
        after: Option<&str>,
        limit: u32,
        key: impl Fn(&T) -> String,
    ) -> Result<Page<T>>
    where
        T: for<'r> FromRow<'r, DB::Row> + Send + Unpin,
    {
        let items = sqlx::query_as(q)
            .bind(owner)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        Ok(page(items, limit, key))
    }

    /// A broker by id.
    async fn broker(conn: &mut DB::Connection, id: &str) -> Result<Option<Broker>> {
        let q = format!("{SELECT_BROKER} WHERE b.id = $1");
        Ok(sqlx::query_as(&q).bind(id).fetch_optional(conn).await?)
    }

    /// Live revocations of a broker.
    async fn revocations(
        conn: &mut DB::Connection,
        broker_id: &str,
        now_secs: i64,
    ) -> Result<Vec<Revocation>> {
        let rows: Vec<RevocationRow> = sqlx::query_as(LIVE_REVOCATIONS)
            .bind(broker_id)
            .bind(revocation_horizon(now_secs))
            .fetch_all(conn)
            .await?;
        Ok(rows.into_iter().map(revocation).collect())
    }
}

// === impl Store ===

impl<DB> Store for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Value<'q, DB> + ColumnIndex<DB::Row>,
    for<'q> String: Value<'q, DB>,
    for<'q> Option<String>: Value<'q, DB>,
    for<'q> i64: Value<'q, DB>,
    for<'q> Option<i64>: Value<'q, DB>,
    for<'q> bool: Value<'q, DB>,
    usize: ColumnIndex<DB::Row>,
{
    fn ping(&self) -> BoxFut<'_, Result<()>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes_tx.subscribe()
    }

    fn ensure_account<'a>(&'a self, a: &'a Account) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(&a.id)
                .bind(&a.name)
                .bind(a.created_at)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn create_account<'a>(&'a self, a: &'a Account) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3)")
                .bind(&a.id)
                .bind(&a.name)
                .bind(a.created_at)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn get_account<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<Account>>> {
        Box::pin(async move {
            Ok(
                sqlx::query_as("SELECT id, name, created_at FROM accounts WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?,
            )
        })
    }

    fn put_api_token<'a>(&'a self, t: &'a ApiTokenRecord, upsert: bool) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            if upsert {
                sqlx::query("DELETE FROM api_tokens WHERE id = $1")
                    .bind(&t.id)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO api_tokens (id, account_id, name, role, token_hash, system, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&t.id)
            .bind(&t.account_id)
            .bind(&t.name)
            .bind(t.role.as_str())
            .bind(&t.token_hash)
            .bind(t.system)
            .bind(t.created_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn find_api_token<'a>(&'a self, hash: &'a str) -> BoxFut<'a, Result<Option<ApiTokenRecord>>> {
        Box::pin(async move {
            let q = format!("{SELECT_TOKEN} WHERE token_hash = $1");
            Ok(sqlx::query_as(&q)
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?)
        })
    }

    fn list_api_tokens<'a>(
        &'a self,
        account_id: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFut<'a, Result<Page<ApiTokenRecord>>> {
        Box::pin(async move {
            let q =
                format!("{SELECT_TOKEN} WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3");
            self.page_after(&q, account_id, after, limit, |t: &ApiTokenRecord| {
                t.id.clone()
            })
            .await
        })
    }

    fn delete_api_token<'a>(&'a self, account_id: &'a str, id: &'a str) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query("DELETE FROM api_tokens WHERE account_id = $1 AND id = $2")
                .bind(account_id)
                .bind(id)
                .execute(&self.pool)
                .await?;
            if DB::rows_affected(&done) == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
    }

    fn create_namespace<'a>(&'a self, ns: &'a Namespace) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO namespaces (id, account_id, name, name_lower, description, created_at, modified_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&ns.id)
            .bind(&ns.account_id)
            .bind(&ns.name)
            .bind(ns.name.to_lowercase())
            .bind(&ns.description)
            .bind(ns.created_at)
            .bind(ns.modified_at)
            .execute(&self.pool)
            .await
            .map_err(|e| conflict_as("namespace name taken")(e.into()))?;
            Ok(())
        })
    }

    fn get_namespace<'a>(
        &'a self,
        account_id: &'a str,
        name: &'a str,
    ) -> BoxFut<'a, Result<Option<Namespace>>> {
        Box::pin(async move {
            let q = format!("{SELECT_NAMESPACE} WHERE account_id = $1 AND name_lower = $2");
            Ok(sqlx::query_as(&q)
                .bind(account_id)
                .bind(name.to_lowercase())
                .fetch_optional(&self.pool)
                .await?)
        })
    }

    fn list_namespaces<'a>(
        &'a self,
        account_id: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFut<'a, Result<Page<Namespace>>> {
        Box::pin(async move {
            let q = format!(
                "{SELECT_NAMESPACE} WHERE account_id = $1 AND name_lower > $2 ORDER BY name_lower LIMIT $3"
            );
            self.page_after(&q, account_id, after, limit, |n: &Namespace| {
                n.name.to_lowercase()
            })
            .await
        })
    }

    fn delete_namespace<'a>(
        &'a self,
        account_id: &'a str,
        name: &'a str,
    ) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let id: Option<String> = sqlx::query_scalar(
                "SELECT id FROM namespaces WHERE account_id = $1 AND name_lower = $2",
            )
            .bind(account_id)
            .bind(name.to_lowercase())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(id) = id else {
                return Err(StoreError::NotFound);
            };
            let brokers: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM brokers WHERE namespace_id = $1")
                    .bind(&id)
                    .fetch_one(&mut *tx)
                    .await?;
            if brokers > 0 {
                return Err(StoreError::NotEmpty);
            }
            sqlx::query("DELETE FROM namespaces WHERE id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(foreign_key_as(StoreError::NotEmpty))?;
            tx.commit()
                .await
                .map_err(foreign_key_as(StoreError::NotEmpty))?;
            Ok(())
        })
    }

    fn create_broker<'a>(
        &'a self,
        b: &'a Broker,
        secret_hash: &'a str,
        keys: &'a [KeyRecord],
        hook_key: Option<&'a KeyRecord>,
    ) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO brokers (id, account_id, namespace_id, name, name_lower, description, auth_type, \
                 expiration, on_publish_url, limits, managed_by, endpoint, ws_endpoint, secret_hash, version, \
                 created_at, modified_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            )
            .bind(&b.id)
            .bind(&b.account_id)
            .bind(&b.namespace_id)
            .bind(&b.name)
            .bind(b.name.to_lowercase())
            .bind(&b.description)
            .bind(&b.auth_type)
            .bind(b.expiration)
            .bind(&b.on_publish_url)
            .bind(&b.limits)
            .bind(&b.managed_by)
            .bind(&b.endpoint)
            .bind(&b.ws_endpoint)
            .bind(secret_hash)
            .bind(b.version)
            .bind(b.created_at)
            .bind(b.modified_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| match e {
                // The namespace is gone.
                sqlx::Error::Database(ref db) if db.is_foreign_key_violation() => StoreError::NotFound,
                other => conflict_as("broker name taken")(other.into()),
            })?;
            for k in keys {
                Self::insert_key(&mut tx, SIGNING_KEYS, k).await?;
            }
            if let Some(k) = hook_key {
                Self::insert_key(&mut tx, HOOK_KEYS, k).await?;
            }
            self.commit_change(tx, &b.id).await
        })
    }

    fn get_broker<'a>(
        &'a self,
        account_id: &'a str,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFut<'a, Result<Option<Broker>>> {
        Box::pin(async move {
            let q = format!(
                "{SELECT_BROKER} WHERE b.account_id = $1 AND n.name_lower = $2 AND b.name_lower = $3"
            );
            Ok(sqlx::query_as(&q)
                .bind(account_id)
                .bind(namespace.to_lowercase())
                .bind(name.to_lowercase())
                .fetch_optional(&self.pool)
                .await?)
        })
    }

    fn get_broker_by_id<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<Broker>>> {
        Box::pin(async move { Self::broker(&mut *self.pool.acquire().await?, id).await })
    }

    fn list_brokers<'a>(
        &'a self,
        namespace_id: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFut<'a, Result<Page<Broker>>> {
        Box::pin(async move {
            let q = format!(
                "{SELECT_BROKER} WHERE b.namespace_id = $1 AND b.name_lower > $2 ORDER BY b.name_lower LIMIT $3"
            );
            self.page_after(&q, namespace_id, after, limit, |b: &Broker| {
                b.name.to_lowercase()
            })
            .await
        })
    }

    fn update_broker<'a>(&'a self, b: &'a Broker, now_micros: i64) -> BoxFut<'a, Result<Broker>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query(
                "UPDATE brokers SET description = $1, expiration = $2, on_publish_url = $3, limits = $4, \
                 managed_by = $5, endpoint = $6, ws_endpoint = $7, modified_at = $8, version = version + 1 \
                 WHERE id = $9",
            )
            .bind(&b.description)
            .bind(b.expiration)
            .bind(&b.on_publish_url)
            .bind(&b.limits)
            .bind(&b.managed_by)
            .bind(&b.endpoint)
            .bind(&b.ws_endpoint)
            .bind(now_micros)
            .bind(&b.id)
            .execute(&mut *tx)
            .await?;
            if DB::rows_affected(&done) == 0 {
                return Err(StoreError::NotFound);
            }
            let stored = Self::broker(&mut tx, &b.id)
                .await?
                .ok_or(StoreError::NotFound)?;
            self.commit_change(tx, &b.id).await?;
            Ok(stored)
        })
    }

    fn delete_broker<'a>(&'a self, broker_id: &'a str, now_micros: i64) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let hash: Option<String> =
                sqlx::query_scalar("SELECT secret_hash FROM brokers WHERE id = $1")
                    .bind(broker_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(hash) = hash else {
                return Err(StoreError::NotFound);
            };
            sqlx::query(
                "INSERT INTO broker_tombstones (id, secret_hash, deleted_at) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(broker_id)
            .bind(&hash)
            .bind(now_micros)
            .execute(&mut *tx)
            .await?;
            for table in [SIGNING_KEYS, HOOK_KEYS, "issued_credentials", "revocations"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE broker_id = $1"))
                    .bind(broker_id)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM brokers WHERE id = $1")
                .bind(broker_id)
                .execute(&mut *tx)
                .await?;
            self.commit_change(tx, broker_id).await
        })
    }

    fn broker_secret_hash<'a>(
        &'a self,
        broker_id: &'a str,
    ) -> BoxFut<'a, Result<Option<(String, bool)>>> {
        Box::pin(async move {
            for (table, deleted) in [("brokers", false), ("broker_tombstones", true)] {
                let hash: Option<String> =
                    sqlx::query_scalar(&format!("SELECT secret_hash FROM {table} WHERE id = $1"))
                        .bind(broker_id)
                        .fetch_optional(&self.pool)
                        .await?;
                if let Some(hash) = hash {
                    return Ok(Some((hash, deleted)));
                }
            }
            Ok(None)
        })
    }

    fn set_broker_secret<'a>(
        &'a self,
        broker_id: &'a str,
        hash: &'a str,
    ) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query("UPDATE brokers SET secret_hash = $1 WHERE id = $2")
                .bind(hash)
                .bind(broker_id)
                .execute(&self.pool)
                .await?;
            if DB::rows_affected(&done) == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
    }

    fn list_keys<'a>(&'a self, broker_id: &'a str) -> BoxFut<'a, Result<Vec<KeyRecord>>> {
        Box::pin(async move {
            Self::keys(
                &mut *self.pool.acquire().await?,
                SIGNING_KEYS,
                broker_id,
                None,
            )
            .await
        })
    }

    fn rotate_keys<'a>(
        &'a self,
        broker_id: &'a str,
        new_next: &'a KeyRecord,
        new_hook: &'a KeyRecord,
        retire_at: i64,
        now_secs: i64,
    ) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            // Locks the broker row first, so that concurrent rotations run one after the other.
            Self::bump_version(&mut tx, broker_id).await?;
            Self::delete_retired(&mut tx, SIGNING_KEYS, broker_id, now_secs).await?;
            Self::sweep_gone_keys(&mut tx, broker_id).await?;
            Self::retire_current(&mut tx, SIGNING_KEYS, broker_id, retire_at).await?;
            sqlx::query("UPDATE signing_keys SET status = 'current' WHERE broker_id = $1 AND status = 'next'")
                .bind(broker_id)
                .execute(&mut *tx)
                .await?;
            Self::insert_key(&mut tx, SIGNING_KEYS, new_next).await?;
            Self::delete_retired(&mut tx, HOOK_KEYS, broker_id, now_secs).await?;
            Self::retire_current(&mut tx, HOOK_KEYS, broker_id, retire_at).await?;
            Self::insert_key(&mut tx, HOOK_KEYS, new_hook).await?;
            self.commit_change(tx, broker_id).await
        })
    }

    fn collect_retired_keys<'a>(&'a self, now_secs: i64) -> BoxFut<'a, Result<u64>> {
        Box::pin(async move {
            let brokers: Vec<String> = sqlx::query_scalar(
                "SELECT broker_id FROM signing_keys WHERE status = 'retiring' AND retire_at <= $1 \
                 UNION SELECT broker_id FROM hook_keys WHERE status = 'retiring' AND retire_at <= $1",
            )
            .bind(now_secs)
            .fetch_all(&self.pool)
            .await?;
            let mut removed = 0;
            for broker_id in brokers {
                let mut tx = self.pool.begin().await?;
                match Self::bump_version(&mut tx, &broker_id).await {
                    // Deleted since, with its keys.
                    Err(StoreError::NotFound) => continue,
                    other => other?,
                }
                removed +=
                    Self::delete_retired(&mut tx, SIGNING_KEYS, &broker_id, now_secs).await?;
                Self::sweep_gone_keys(&mut tx, &broker_id).await?;
                removed += Self::delete_retired(&mut tx, HOOK_KEYS, &broker_id, now_secs).await?;
                self.commit_change(tx, &broker_id).await?;
            }
            Ok(removed)
        })
    }

    fn list_hook_keys<'a>(&'a self, broker_id: &'a str) -> BoxFut<'a, Result<Vec<KeyRecord>>> {
        Box::pin(async move {
            Self::keys(&mut *self.pool.acquire().await?, HOOK_KEYS, broker_id, None).await
        })
    }

    fn ensure_hook_key<'a>(
        &'a self,
        broker_id: &'a str,
        candidate: &'a KeyRecord,
    ) -> BoxFut<'a, Result<bool>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            // Locks the broker row first, so that a rotation and this run one after the other.
            Self::bump_version(&mut tx, broker_id).await?;
            let has: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM hook_keys WHERE broker_id = $1 AND status = 'current'",
            )
            .bind(broker_id)
            .fetch_one(&mut *tx)
            .await?;
            if has > 0 {
                // Nothing changed: the version bump is rolled back with the transaction.
                return Ok(false);
            }
            Self::insert_key(&mut tx, HOOK_KEYS, candidate).await?;
            self.commit_change(tx, broker_id).await?;
            Ok(true)
        })
    }

    fn brokers_without_hook_key<'a>(&'a self, limit: u32) -> BoxFut<'a, Result<Vec<String>>> {
        Box::pin(async move {
            Ok(sqlx::query_scalar(
                "SELECT id FROM brokers WHERE id NOT IN (SELECT broker_id FROM hook_keys WHERE status = 'current') \
                 ORDER BY id LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
        })
    }

    fn record_credentials<'a>(
        &'a self,
        broker_id: &'a str,
        issued: &'a [IssuedCredential],
    ) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            // One multi-row INSERT per 100 records (6 parameters each stays far below both
            // databases' parameter limits).
            let mut tx = self.pool.begin().await?;
            for chunk in issued.chunks(100) {
                let rows: Vec<String> = (0..chunk.len())
                    .map(|i| {
                        let p = 6 * i;
                        format!(
                            "(${}, ${}, ${}, ${}, ${}, ${})",
                            p + 1,
                            p + 2,
                            p + 3,
                            p + 4,
                            p + 5,
                            p + 6
                        )
                    })
                    .collect();
                let q = format!(
                    "INSERT INTO issued_credentials (jti, broker_id, client_id, kid, issued_at, expires_at) VALUES {}",
                    rows.join(", ")
                );
                let mut insert = sqlx::query(&q);
                for c in chunk {
                    insert = insert
                        .bind(&c.jti)
                        .bind(broker_id)
                        .bind(&c.client_id)
                        .bind(&c.kid)
                        .bind(c.issued_at)
                        .bind(c.expires_at);
                }
                insert.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn list_issued<'a>(
        &'a self,
        broker_id: &'a str,
        client_id: Option<&'a str>,
        before: Option<(i64, &'a str)>,
        limit: u32,
    ) -> BoxFut<'a, Result<Page<IssuedRecord>>> {
        Box::pin(async move {
            // Without a cursor every record is before (i64::MAX, ''): issue times are unix
            // seconds.
            let (before_at, before_jti) = before.unwrap_or((i64::MAX, ""));
            let items = sqlx::query_as(
                "SELECT c.jti, c.client_id, c.kid, c.issued_at, c.expires_at, (r.jti IS NOT NULL) AS revoked \
                 FROM issued_credentials c LEFT JOIN revocations r ON r.broker_id = c.broker_id AND r.jti = c.jti \
                 WHERE c.broker_id = $1 AND ($2 = '' OR c.client_id = $2) \
                   AND (c.issued_at < $3 OR (c.issued_at = $3 AND c.jti < $4)) \
                 ORDER BY c.issued_at DESC, c.jti DESC LIMIT $5",
            )
            .bind(broker_id)
            .bind(client_id.unwrap_or(""))
            .bind(before_at)
            .bind(before_jti)
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await?;
            Ok(page(items, limit, |r: &IssuedRecord| {
                format!("{}:{}", r.credential.issued_at, r.credential.jti)
            }))
        })
    }

    fn add_revocations<'a>(
        &'a self,
        broker_id: &'a str,
        jtis: &'a [String],
        max_live: u64,
        now_secs: i64,
    ) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            Self::bump_version(&mut tx, broker_id).await?;
            sqlx::query("DELETE FROM revocations WHERE broker_id = $1 AND expires_at IS NOT NULL AND expires_at <= $2")
                .bind(broker_id)
                .bind(revocation_horizon(now_secs))
                .execute(&mut *tx)
                .await?;
            for jti in jtis {
                sqlx::query(
                    "INSERT INTO revocations (broker_id, jti, expires_at, kid, created_at) \
                     VALUES ($1, $2, (SELECT expires_at FROM issued_credentials WHERE jti = $2 AND broker_id = $1), \
                             (SELECT kid FROM issued_credentials WHERE jti = $2 AND broker_id = $1), $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(broker_id)
                .bind(jti)
                .bind(now_secs)
                .execute(&mut *tx)
                .await?;
            }
            let live: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM revocations WHERE broker_id = $1")
                    .bind(broker_id)
                    .fetch_one(&mut *tx)
                    .await?;
            if u64::try_from(live).unwrap_or(u64::MAX) > max_live {
                return Err(StoreError::RevocationCap(max_live));
            }
            self.commit_change(tx, broker_id).await
        })
    }

    fn list_revocations<'a>(
        &'a self,
        broker_id: &'a str,
        now_secs: i64,
    ) -> BoxFut<'a, Result<Vec<Revocation>>> {
        Box::pin(async move {
            Self::revocations(&mut *self.pool.acquire().await?, broker_id, now_secs).await
        })
    }

    fn delete_revocations<'a>(
        &'a self,
        broker_id: &'a str,
        jtis: &'a [String],
    ) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            Self::bump_version(&mut tx, broker_id).await?;
            for jti in jtis {
                sqlx::query("DELETE FROM revocations WHERE broker_id = $1 AND jti = $2")
                    .bind(broker_id)
                    .bind(jti)
                    .execute(&mut *tx)
                    .await?;
            }
            self.commit_change(tx, broker_id).await
        })
    }

    fn collect_expired<'a>(&'a self, now_secs: i64) -> BoxFut<'a, Result<u64>> {
        Box::pin(async move {
            let horizon = revocation_horizon(now_secs);
            let mut removed = 0;
            for table in ["revocations", "issued_credentials"] {
                let done = sqlx::query(&format!(
                    "DELETE FROM {table} WHERE expires_at IS NOT NULL AND expires_at <= $1"
                ))
                .bind(horizon)
                .execute(&self.pool)
                .await?;
                removed += DB::rows_affected(&done);
            }
            Ok(removed)
        })
    }

    fn broker_state<'a>(
        &'a self,
        broker_id: &'a str,
        now_secs: i64,
    ) -> BoxFut<'a, Result<Option<BrokerState>>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let Some(broker) = Self::broker(&mut tx, broker_id).await? else {
                return Ok(None);
            };
            let keys = Self::keys(&mut tx, SIGNING_KEYS, broker_id, Some(now_secs)).await?;
            let hook_keys = Self::keys(&mut tx, HOOK_KEYS, broker_id, Some(now_secs)).await?;
            let revocations = Self::revocations(&mut tx, broker_id, now_secs).await?;
            tx.commit().await?;
            Ok(Some(BrokerState {
                broker,
                keys,
                hook_keys,
                revocations,
            }))
        })
    }

    fn audit<'a>(&'a self, e: &'a AuditEntry) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO audit_log (id, account_id, actor, action, target, at) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(&e.id)
                .bind(&e.account_id)
                .bind(&e.actor)
                .bind(&e.action)
                .bind(&e.target)
                .bind(e.at)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn list_audit<'a>(
        &'a self,
        account_id: &'a str,
        limit: u32,
    ) -> BoxFut<'a, Result<Vec<AuditEntry>>> {
        Box::pin(async move {
            Ok(sqlx::query_as(
                "SELECT id, account_id, actor, action, target, at FROM audit_log WHERE account_id = $1 \
                 ORDER BY id DESC LIMIT $2",
            )
            .bind(account_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
        })
    }
}
