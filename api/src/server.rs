//! Start-up and serving: store, migrations, key-encryption key, bootstrap token, both
//! listeners, the janitor, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::keys::{Kek, KeyError, hash_secret, new_hook_key_record};
use crate::state::AppState;
use crate::store::{Account, ApiTokenRecord, Role, Store, StoreError};

/// Why the api could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key or secret file could not be read.
    #[error("reading {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key-encryption key is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The database failed.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// A listener could not bind or serve.
    #[error("listener {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The id of the bootstrap token's row.
pub const BOOTSTRAP_TOKEN_ID: &str = "bootstrap";

fn read_secret_file(path: &str) -> Result<String, ServerError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| ServerError::File {
            path: path.into(),
            source,
        })
}

/// The key-encryption key from the configuration (inline or file).
pub fn load_kek(config: &Config) -> Result<Kek, ServerError> {
    let text = match (&config.kek, &config.kek_file) {
        (Some(k), _) => zeroize::Zeroizing::new(k.0.clone()),
        (None, Some(path)) => zeroize::Zeroizing::new(read_secret_file(path)?),
        (None, None) => {
            return Err(
                ConfigError::Invalid(vec!["a key-encryption key is required".into()]).into(),
            );
        }
    };
    Ok(Kek::parse(&text)?)
}

/// Creates the bootstrap account and stores the bootstrap token (hashed) as its system admin.
pub async fn ensure_bootstrap(
    store: &dyn Store,
    config: &Config,
    now_micros: i64,
) -> Result<(), ServerError> {
    let token = match (&config.bootstrap_token, &config.bootstrap_token_file) {
        (Some(t), _) => t.0.clone(),
        (None, Some(path)) => read_secret_file(path)?,
        (None, None) => return Ok(()),
    };
    if token.len() < 16 {
        return Err(ConfigError::Invalid(vec![
            "the bootstrap token must be at least 16 characters".into(),
        ])
        .into());
    }
    store
        .ensure_account(&Account {
            id: config.bootstrap_account.clone(),
            name: "bootstrap".into(),
            created_at: now_micros,
        })
        .await?;
    store
        .put_api_token(
            &ApiTokenRecord {
                id: BOOTSTRAP_TOKEN_ID.into(),
                account_id: config.bootstrap_account.clone(),
                name: "bootstrap".into(),
                role: Role::Admin,
                token_hash: hash_secret(&token),
                system: true,
                created_at: now_micros,
            },
            true,
        )
        .await?;
    Ok(())
}

/// Gives every broker created before hook keys existed its own hook key; returns how many got
/// one. Safe to run on several replicas at once (a broker gets one key).
pub async fn backfill_hook_keys(state: &AppState) -> Result<u64, ServerError> {
    const BATCH: u32 = 100;
    let mut added = 0;
    loop {
        let ids = state.store.brokers_without_hook_key(BATCH).await?;
        for id in &ids {
            let key = new_hook_key_record(&state.kek, id, state.clock.now_micros())?;
            match state.store.ensure_hook_key(id, &key).await {
                Ok(true) => added += 1,
                // Another replica was first, or the broker was deleted meanwhile.
                Ok(false) | Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if ids.len() < BATCH as usize {
            return Ok(added);
        }
    }
}

/// A started api: its bound addresses and the task serving it.
pub struct Running {
    /// Where the public listener is bound.
    pub public_addr: SocketAddr,
    /// Where the internal listener is bound.
    pub internal_addr: SocketAddr,
    /// The shared state (the embedded broker of `dev` and tests use it).
    pub state: AppState,
    /// Ends when both listeners have stopped.
    pub task: JoinHandle<Result<(), ServerError>>,
}

/// Validates the configuration, connects the store, binds both listeners and starts serving;
/// returns once they are bound. Cancelling `shutdown` stops everything gracefully.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, ServerError> {
    config.validate()?;
    let kek = load_kek(&config)?;
    let store = crate::store::connect(&config.database_url, config.max_connections).await?;
    start_with(store, kek, config, shutdown).await
}

/// Like [`start`], over an already connected store.
pub async fn start_with(
    store: Arc<dyn Store>,
    kek: Kek,
    config: Config,
    shutdown: CancellationToken,
) -> Result<Running, ServerError> {
    let state = AppState::new(store, kek, config);
    ensure_bootstrap(&*state.store, &state.config, state.clock.now_micros()).await?;
    let added = backfill_hook_keys(&state).await?;
    if added > 0 {
        tracing::info!(
            brokers = added,
            "hook keys created for brokers that had none"
        );
    }
    let public = bind(state.config.public_addr).await?;
    let internal = bind(state.config.internal_addr).await?;
    let public_addr = local(&public, state.config.public_addr)?;
    let internal_addr = local(&internal, state.config.internal_addr)?;
    tracing::info!(%public_addr, %internal_addr, config = ?state.config, "starling-api listening");

    let janitor = tokio::spawn(janitor(state.clone(), shutdown.clone()));
    let public_app = crate::routes::app(state.clone());
    let internal_app = crate::routes::internal_app(state.clone());
    // Both listeners bound what a client can hold: a header-read timeout and a connection cap.
    let a = starling_http::serve(
        public,
        public_app,
        state.config.public_http_limits(),
        shutdown.clone(),
    );
    let b = starling_http::serve(
        internal,
        internal_app,
        state.config.internal_http_limits(),
        shutdown.clone(),
    );
    let task = tokio::spawn(async move {
        tokio::join!(a, b);
        janitor.abort();
        Ok(())
    });
    Ok(Running {
        public_addr,
        internal_addr,
        state,
        task,
    })
}

/// Serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    let running = start(config, shutdown).await?;
    match running.task.await {
        Ok(r) => r,
        Err(e) => Err(ServerError::Listen {
            addr: running.public_addr,
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })
}

fn local(l: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
    l.local_addr()
        .map_err(|source| ServerError::Listen { addr, source })
}

/// Collects expired revocations and issuance records, and retired keys, periodically.
async fn janitor(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(state.config.janitor_interval_secs));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = state.clock.now_secs();
        if let Err(e) = state.store.collect_retired_keys(now).await {
            tracing::warn!(error = %e, "collecting retired keys failed");
        }
        if let Err(e) = state.store.collect_expired(now).await {
            tracing::warn!(error = %e, "collecting expired revocations failed");
        }
    }
}

/// Returns on SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
