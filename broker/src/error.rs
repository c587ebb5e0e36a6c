//! Errors of starting and running the broker.

use std::net::SocketAddr;

use crate::config::{ConfigError, ListenerKind};

/// Why the broker could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener's address could not be bound.
    #[error("cannot listen on {addr} ({kind}): {source}")]
    Bind {
        /// The listener's kind (`http` for the HTTP listener).
        kind: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Keys or revocations could not be loaded.
    #[error(transparent)]
    Auth(#[from] crate::auth::files::FileError),
    /// A listener kind this build cannot serve with the given configuration.
    #[error("{} listeners are not available: {reason}", .kind.as_str())]
    Listener {
        /// The kind.
        kind: ListenerKind,
        /// Why.
        reason: &'static str,
    },
    /// The on-publish hook's key file could not be used.
    #[error("{0}")]
    HookKey(String),
    /// The NATS connection of `[cluster]` could not be set up.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The durable store (`--data-dir`) does not open.
    #[error(transparent)]
    Storage(#[from] crate::storage::OpenError),
    /// The TLS or WebSocket settings of a listener could not be put to use.
    #[error(transparent)]
    Transport(#[from] crate::transport::config::TransportSetupError),
}

/// Result with the broker's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
