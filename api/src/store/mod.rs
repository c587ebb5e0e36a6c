//! Persistence: the [`Store`] trait and its Postgres and SQLite implementations.
//!
//! Both implementations are one [`SqlStore`], whose queries (written once in [`sql`], in SQL both
//! dialects accept) read rows into the records below (`sqlx::FromRow`) and run against the schema in `migrations/postgres` and `migrations/sqlite`. Every
//! change that a broker must see bumps that broker's `version` in the same transaction and is
//! announced on the change feed ([`Store::changes`]): Postgres through `LISTEN/NOTIFY` (so every
//! api replica wakes), SQLite through an in-process broadcast.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::broadcast;

mod postgres;
mod sql;
mod sqlite;

pub use postgres::PgStore;
pub use sql::{Dialect, SqlStore};
pub use sqlite::SqliteStore;

/// A boxed future, so that [`Store`] can be used as `dyn Store`.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the row (a name already taken, a duplicate id).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The object does not exist (or belongs to another account).
    #[error("not found")]
    NotFound,
    /// The namespace still holds brokers.
    #[error("namespace still has brokers")]
    NotEmpty,
    /// A configured bound would be exceeded.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// The broker would hold more live revocations than `max_revocations` (the value).
    #[error("the broker has {0} live revocations, its most")]
    RevocationCap(u64),
    /// A row holds a value the code cannot read.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// Migrations failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict("unique constraint")
            }
            sqlx::Error::ColumnDecode { index, source } => {
                StoreError::Corrupt(format!("{index}: {source}"))
            }
            e => StoreError::Database(e),
        }
    }
}

/// `Result` with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub use starling_types::rest::Role;

/// An account: the owner of namespaces, brokers and API tokens.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Account {
    /// 32 lowercase hex characters.
    pub id: String,
    /// A human name.
    pub name: String,
    /// Unix microseconds.
    pub created_at: i64,
}

/// An API token as stored: only its SHA-256 hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiTokenRecord {
    /// Token id (ULID).
    pub id: String,
    /// The account it acts for.
    pub account_id: String,
    /// A human name.
    pub name: String,
    /// What it may do.
    #[sqlx(try_from = "String")]
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// A system token (the bootstrap token) may also create accounts.
    pub system: bool,
    /// Unix microseconds.
    pub created_at: i64,
}

/// A pub/sub namespace.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Namespace {
    /// 32 lowercase hex characters.
    pub id: String,
    /// The owner.
    pub account_id: String,
    /// RFC 1035 label as given (compared case-insensitively).
    pub name: String,
    /// Free text.
    pub description: String,
    /// Unix microseconds.
    pub created_at: i64,
    /// Unix microseconds.
    pub modified_at: i64,
}

/// A broker.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Broker {
    /// 32 lowercase hex characters.
    pub id: String,
    /// The owner.
    pub account_id: String,
    /// The namespace's id.
    pub namespace_id: String,
    /// The namespace's name (joined in on reads).
    pub namespace_name: String,
    /// RFC 1035 label, unique in the namespace (case-insensitive).
    pub name: String,
    /// Free text.
    pub description: String,
    /// `TOKEN`.
    pub auth_type: String,
    /// Token lifetime ceiling in seconds; `None` for none.
    pub expiration: Option<i64>,
    /// The on-publish hook.
    pub on_publish_url: Option<String>,
    /// Broker limits as JSON, passed to the broker as they are.
    pub limits: Option<String>,
    /// `Broker/<k8s namespace>/<name>` for operator-managed brokers.
    pub managed_by: Option<String>,
    /// Where MQTT clients connect, as the managing Broker resource advertises it; `None` for the
    /// endpoint derived from the api's domain.
    pub endpoint: Option<String>,
    /// Where browsers connect (wss), as the managing Broker resource advertises it; `None` for
    /// the endpoint derived from the api's domain.
    pub ws_endpoint: Option<String>,
    /// Bumped on every change a broker must see.
    pub version: i64,
    /// Unix microseconds.
    pub created_at: i64,
    /// Unix microseconds.
    pub modified_at: i64,
}

/// Where a signing key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Published ahead of use.
    Next,
    /// Signs new tokens and webhook requests.
    Current,
    /// Still verifies until `retire_at`.
    Retiring,
}

impl KeyStatus {
    /// The status's name in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Next => "next",
            KeyStatus::Current => "current",
            KeyStatus::Retiring => "retiring",
        }
    }
}

/// A status as the database holds it; an unknown name is a corrupt row.
impl TryFrom<String> for KeyStatus {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "next" => Ok(KeyStatus::Next),
            "current" => Ok(KeyStatus::Current),
            "retiring" => Ok(KeyStatus::Retiring),
            _ => Err(format!("key status {s:?}")),
        }
    }
}

/// A signing key as stored: public part in the clear, seed sealed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRecord {
    /// Row id (ULID).
    pub id: String,
    /// The broker.
    pub broker_id: String,
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// Public key, base64url.
    pub x: String,
    /// The sealed seed (see `keys::Kek`).
    pub sealed_seed: String,
    /// Where it is in its life.
    #[sqlx(try_from = "String")]
    pub status: KeyStatus,
    /// Unix microseconds.
    pub created_at: i64,
    /// Unix seconds after which a retiring key is gone.
    pub retire_at: Option<i64>,
}

/// A record of one issued token (never the token).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IssuedCredential {
    /// The token's `jti`.
    pub jti: String,
    /// The client id (`sub`).
    pub client_id: String,
    /// The signing key.
    pub kid: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds, `None` for no `exp`.
    pub expires_at: Option<i64>,
}

/// An issuance record as listed: what was issued, and whether its `jti` is revoked now.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IssuedRecord {
    /// What was issued.
    #[sqlx(flatten)]
    pub credential: IssuedCredential,
    /// The `jti` is on the broker's revocation list.
    pub revoked: bool,
}

/// How long past a token's `exp` its revocation is kept: the largest clock skew any broker
/// accepts, so no broker can take the token again once the revocation is gone.
pub const REVOCATION_GRACE_SECS: i64 = starling_token::MAX_CLOCK_SKEW_SECS as i64;

/// The revocations of tokens that expired before this instant (`now` less
/// [`REVOCATION_GRACE_SECS`]) are no longer needed.
pub fn revocation_horizon(now_secs: i64) -> i64 {
    now_secs.saturating_sub(REVOCATION_GRACE_SECS)
}

pub use starling_types::rest::Revocation;

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditEntry {
    /// Row id (ULID, so time-ordered).
    pub id: String,
    /// The account whose object changed.
    pub account_id: String,
    /// The API token id that made the change.
    pub actor: String,
    /// What was done, e.g. `broker.create`.
    pub action: String,
    /// What it was done to, e.g. `ns/broker`.
    pub target: String,
    /// Unix microseconds.
    pub at: i64,
}

/// A page of a list: the items and, when there may be more, the cursor for the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, ordered by the list's key (lowercase name, or id for API tokens).
    pub items: Vec<T>,
    /// The last key of this page when more may follow.
    pub next_after: Option<String>,
}

/// What a broker's pods need (the internal state route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerState {
    /// The broker.
    pub broker: Broker,
    /// Next, current and retiring keys that have not reached `retire_at`.
    pub keys: Vec<KeyRecord>,
    /// Current and retiring hook keys that have not reached `retire_at` (they sign the hook's
    /// requests, never client tokens).
    pub hook_keys: Vec<KeyRecord>,
    /// Live revocations.
    pub revocations: Vec<Revocation>,
}

/// A change announcement on the feed: the broker id whose state changed, or `*` when changes
/// may have been missed (every waiter re-reads).
pub type Change = std::sync::Arc<str>;

/// The control plane's persistence. Implemented for Postgres and SQLite by [`SqlStore`], with the
/// same queries.
pub trait Store: Send + Sync + 'static {
    /// Checks that the database answers (readiness).
    fn ping(&self) -> BoxFut<'_, Result<()>>;
    /// Subscribes to the change feed (broker ids whose state changed).
    fn changes(&self) -> broadcast::Receiver<Change>;

    /// Creates an account, or leaves an existing one with this id alone.
    fn ensure_account<'a>(&'a self, account: &'a Account) -> BoxFut<'a, Result<()>>;
    /// Creates an account; `Conflict` when the id exists.
    fn create_account<'a>(&'a self, account: &'a Account) -> BoxFut<'a, Result<()>>;
    /// An account by id.
    fn get_account<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<Account>>>;

    /// Stores an API token (its hash); with `upsert`, replaces the one with the same id.
    fn put_api_token<'a>(
        &'a self,
        token: &'a ApiTokenRecord,
        upsert: bool,
    ) -> BoxFut<'a, Result<()>>;
    /// The API token with this hash.
    fn find_api_token<'a>(
        &'a self,
        token_hash: &'a str,
    ) -> BoxFut<'a, Result<Option<ApiTokenRecord>>>;
    /// An account's API tokens with id after `after`, at most `limit`, ordered by id (a ULID,
    /// so by creation time); the page's cursor is the last id.
    fn list_api_tokens<'a>(
        &'a self,
        account_id: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFut<'a, Result<Page<ApiTokenRecord>>>;
    /// Deletes an account's API token; `NotFound` when it has none with this id.
    fn delete_api_token<'a>(&'a self, account_id: &'a str, id: &'a str) -> BoxFut<'a, Result<()>>;

    /// Creates a namespace; `Conflict` when the name is taken (by any account).
    fn create_namespace<'a>(&'a self, ns: &'a Namespace) -> BoxFut<'a, Result<()>>;
    /// An account's namespace by name (case-insensitive).
    fn get_namespace<'a>(
        &'a self,
        account_id: &'a str,
        name: &'a str,
    ) -> BoxFut<'a, Result<Option<Namespace>>>;
    /// An account's namespaces with lowercase name after `after`, at most `limit`.
    fn list_namespaces<'a>(
        &'a self,
        account_id: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFut<'a, Result<Page<Namespace>>>;
    /// Deletes a namespace; `NotEmpty` while it holds brokers, `NotFound` when absent.
    fn delete_namespace<'a>(&'a self, account_id: &'a str, name: &'a str)
    -> BoxFut<'a, Result<()>>;

    /// Creates a broker with its secret hash, first keys and hook key; `Conflict` when the name
    /// is taken.
    fn create_broker<'a>(
        &'a self,
        broker: &'a Broker,
        secret_hash: &'a str,
        keys: &'a [KeyRecord],
        hook_key: Option<&'a KeyRecord>,
    ) -> BoxFut<'a, Result<()>>;
    /// A broker by namespace and name (case-insensitive).
    fn get_broker<'a>(
        &'a self,
        account_id: &'a str,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFut<'a, Result<Option<Broker>>>;
    /// A broker by id.
    fn get_broker_by_id<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<Broker>>>;
    /// The brokers of a namespace, by lowercase name after `after`.
    fn list_brokers<'a>(
        &'a self,
        namespace_id: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFut<'a, Result<Page<Broker>>>;
    /// Writes a broker's mutable fields (description, expiration, hook, limits, managed_by),
    /// bumps its version and returns the stored broker.
    fn update_broker<'a>(
        &'a self,
        broker: &'a Broker,
        now_micros: i64,
    ) -> BoxFut<'a, Result<Broker>>;
    /// Deletes a broker, leaving a tombstone so that its pods get 410.
    fn delete_broker<'a>(&'a self, broker_id: &'a str, now_micros: i64) -> BoxFut<'a, Result<()>>;
    /// The secret hash of a live broker, or of a deleted one (`(hash, deleted)`).
    fn broker_secret_hash<'a>(
        &'a self,
        broker_id: &'a str,
    ) -> BoxFut<'a, Result<Option<(String, bool)>>>;
    /// Replaces a broker's secret hash.
    fn set_broker_secret<'a>(
        &'a self,
        broker_id: &'a str,
        secret_hash: &'a str,
    ) -> BoxFut<'a, Result<()>>;

    /// A broker's keys (every status, including retired ones not yet collected).
    fn list_keys<'a>(&'a self, broker_id: &'a str) -> BoxFut<'a, Result<Vec<KeyRecord>>>;
    /// Rotates: drops retiring keys past `retire_at`, current → retiring (until `retire_at`),
    /// next → current, and stores `new_next`; the same for the hook key, whose `new_hook`
    /// becomes current at once. Bumps the version.
    fn rotate_keys<'a>(
        &'a self,
        broker_id: &'a str,
        new_next: &'a KeyRecord,
        new_hook: &'a KeyRecord,
        retire_at: i64,
        now_secs: i64,
    ) -> BoxFut<'a, Result<()>>;
    /// Deletes retiring keys and hook keys whose `retire_at` has passed (bumping the version
    /// when any did).
    fn collect_retired_keys<'a>(&'a self, now_secs: i64) -> BoxFut<'a, Result<u64>>;
    /// A broker's hook keys (current and retiring, including retired ones not yet collected).
    fn list_hook_keys<'a>(&'a self, broker_id: &'a str) -> BoxFut<'a, Result<Vec<KeyRecord>>>;
    /// Stores `candidate` as the broker's current hook key unless it has one; whether it was
    /// stored (then the version is bumped). For brokers created before hook keys existed.
    fn ensure_hook_key<'a>(
        &'a self,
        broker_id: &'a str,
        candidate: &'a KeyRecord,
    ) -> BoxFut<'a, Result<bool>>;
    /// Ids of brokers without a current hook key, at most `limit`.
    fn brokers_without_hook_key<'a>(&'a self, limit: u32) -> BoxFut<'a, Result<Vec<String>>>;

    /// Records issued tokens.
    fn record_credentials<'a>(
        &'a self,
        broker_id: &'a str,
        issued: &'a [IssuedCredential],
    ) -> BoxFut<'a, Result<()>>;
    /// A broker's issuance records, newest first (by issue time, then `jti`, both descending),
    /// only those of `client_id` when given, strictly before `before` (`(issued_at, jti)` of the
    /// previous page's last record), at most `limit`; the page's cursor is `issued_at:jti`.
    fn list_issued<'a>(
        &'a self,
        broker_id: &'a str,
        client_id: Option<&'a str>,
        before: Option<(i64, &'a str)>,
        limit: u32,
    ) -> BoxFut<'a, Result<Page<IssuedRecord>>>;
    /// Revokes `jtis` (expiry taken from the issuance record when there is one); `Limit` when
    /// more than `max_live` would be live. Bumps the version.
    fn add_revocations<'a>(
        &'a self,
        broker_id: &'a str,
        jtis: &'a [String],
        max_live: u64,
        now_secs: i64,
    ) -> BoxFut<'a, Result<()>>;
    /// Live revocations of a broker.
    fn list_revocations<'a>(
        &'a self,
        broker_id: &'a str,
        now_secs: i64,
    ) -> BoxFut<'a, Result<Vec<Revocation>>>;
    /// Lifts revocations. Bumps the version.
    fn delete_revocations<'a>(
        &'a self,
        broker_id: &'a str,
        jtis: &'a [String],
    ) -> BoxFut<'a, Result<()>>;
    /// Deletes revocations (and issuance records) of tokens that have expired.
    fn collect_expired<'a>(&'a self, now_secs: i64) -> BoxFut<'a, Result<u64>>;

    /// A broker's state for its pods (live keys and revocations).
    fn broker_state<'a>(
        &'a self,
        broker_id: &'a str,
        now_secs: i64,
    ) -> BoxFut<'a, Result<Option<BrokerState>>>;

    /// Appends to the audit log.
    fn audit<'a>(&'a self, entry: &'a AuditEntry) -> BoxFut<'a, Result<()>>;
    /// An account's audit log, newest first.
    fn list_audit<'a>(
        &'a self,
        account_id: &'a str,
        limit: u32,
    ) -> BoxFut<'a, Result<Vec<AuditEntry>>>;
}

/// Connects to `database_url` (`postgres://...` or `sqlite://...`) and applies migrations.
pub async fn connect(
    database_url: &str,
    max_connections: u32,
) -> Result<std::sync::Arc<dyn Store>> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(
            PgStore::connect(database_url, max_connections).await?,
        ))
    } else {
        Ok(std::sync::Arc::new(
            SqliteStore::connect(database_url).await?,
        ))
    }
}
