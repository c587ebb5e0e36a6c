//! Broker configuration: defaults, then the TOML file, then `STARLING_BROKER__SECTION__KEY`
//! environment variables, then command-line flags.
//!
//! The loader takes every input as a value (file text, environment pairs, flags), so tests never
//! touch the process environment. Unknown fields are rejected and [`Config::validate`] reports
//! every problem at once.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::auth::files::TenantFiles;
pub use crate::auth::rules::{AccessRule, Action, Permission};
pub use crate::control::ManagedTenant;
use crate::transport::config::{ListenerTlsSettings, TlsSettings, WsSettings};
/// The limits table (one definition shared with the api and the operator).
pub use starling_types::limits::{Limits, LimitsConfig, Profile};

/// The prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "STARLING_BROKER__";

/// Everything the broker needs to run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// MQTT listeners; at least one.
    pub listeners: Vec<ListenerConfig>,
    /// The HTTP listener for `/healthz`, `/readyz` and `/metrics`.
    pub http: HttpConfig,
    /// How clients authenticate (the default for listeners that do not say).
    pub auth: AuthConfig,
    /// Protocol limits, resolved from a profile plus explicit values.
    pub limits: LimitsConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
    /// Certificates of the TLS listeners (mqtts, wss), or the dev CA.
    pub tls: TlsSettings,
    /// Managed mode: tenants whose keys, revocations and limits come from the control plane.
    pub control_plane: Vec<ManagedTenant>,
    /// Where managed state is saved, so a restart during a control-plane outage still serves.
    pub data_dir: Option<PathBuf>,
    /// Durable retained messages and sessions under `data_dir` (used only with a data dir).
    pub storage: StorageConfig,
    /// The on-publish hook client.
    pub hook: crate::hook::HookSettings,
    /// Replicas of one broker joined through NATS; a single node when absent.
    pub cluster: crate::cluster::ClusterConfig,
    /// Tenants are fed into [`crate::RunningBroker::directory`] by the program that embeds the
    /// broker (`starling-dev`), so token listeners need no key files.
    #[serde(skip)]
    pub embedded_tenants: bool,
}

/// The transport a listener speaks.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT over plain TCP.
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSockets.
    Ws,
    /// MQTT over WebSockets over TLS.
    Wss,
}

impl ListenerKind {
    /// The name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Mqtt => "mqtt",
            ListenerKind::Mqtts => "mqtts",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }
}

/// One MQTT listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Transport.
    pub kind: ListenerKind,
    /// Address to bind, e.g. `0.0.0.0:8883`; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Authentication mode of this listener; the global `[auth] mode` when absent.
    #[serde(default)]
    pub auth: Option<AuthMode>,
    /// Most connections open at once on this listener; further ones wait in the backlog.
    #[serde(default = "default_listener_max_connections")]
    pub max_connections: usize,
    /// Bound on the TLS and WebSocket handshakes (seconds); 10 when absent.
    #[serde(default)]
    pub handshake_timeout_secs: Option<u64>,
    /// This listener's own certificate files, overriding `[tls]` (mqtts, wss).
    #[serde(default)]
    pub tls: Option<ListenerTlsSettings>,
    /// WebSocket options and limits (ws, wss).
    #[serde(default)]
    pub ws: WsSettings,
    /// MQTT limits of this listener's connections, over the global `[limits]` (a `profile` here
    /// replaces the global one; explicit values override both). Tenant-wide limits (queues,
    /// connections per tenant, retained messages) stay those of `[limits]`.
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
    /// Access rules of this `--auth none` listener, instead of `[auth] rules`.
    #[serde(default)]
    pub rules: Option<Vec<AccessRule>>,
}

fn default_listener_max_connections() -> usize {
    100_000
}

impl ListenerConfig {
    /// A listener with the defaults for everything but its kind and address.
    pub fn new(kind: ListenerKind, bind: SocketAddr) -> Self {
        Self {
            kind,
            bind,
            auth: None,
            max_connections: default_listener_max_connections(),
            handshake_timeout_secs: None,
            tls: None,
            ws: WsSettings::default(),
            limits: None,
            rules: None,
        }
    }
}

/// The HTTP listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub bind: SocketAddr,
    /// Seconds a client has to send a request's headers (then the connection is closed).
    pub header_read_timeout_secs: u64,
    /// Connections open at once; further ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let limits = crate::http::HttpLimits::default();
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 9090)),
            header_read_timeout_secs: limits.header_read_timeout_secs,
            max_connections: limits.max_connections,
        }
    }
}

impl HttpConfig {
    /// What the listener lets its clients hold.
    pub fn limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            header_read_timeout_secs: self.header_read_timeout_secs,
            max_connections: self.max_connections,
            // The listener's routes read no body.
            ..crate::http::HttpLimits::default()
        }
    }
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Everyone is let in, into one tenant. For local use and tests.
    #[default]
    None,
    /// A token signed by one of the configured tenants' keys (see the token documentation).
    Token,
}

/// Authentication settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The default mode of listeners.
    pub mode: AuthMode,
    /// `--jwks`: the JWKS file of a single tenant called `default`.
    pub jwks: Option<PathBuf>,
    /// `--revocations`: revoked token ids of that tenant, one per line.
    pub revocations: Option<PathBuf>,
    /// Tenants from files, each with its own key set (the token's `kid` picks the tenant).
    pub tenants: Vec<TenantFiles>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (at most
    /// [`starling_token::MAX_CLOCK_SKEW_SECS`], how long past `exp` the control plane keeps a
    /// revocation).
    pub clock_skew_secs: u64,
    /// Access rules of `--auth none` listeners (see [`crate::auth::rules`]); none allows
    /// everything.
    pub rules: Vec<AccessRule>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            jwks: None,
            revocations: None,
            tenants: Vec::new(),
            clock_skew_secs: 30,
            rules: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// Every tenant from files: `[[auth.tenants]]` plus `default` from `jwks`/`revocations`.
    pub fn file_tenants(&self) -> Vec<TenantFiles> {
        let mut all = self.tenants.clone();
        if let Some(jwks) = &self.jwks {
            all.push(TenantFiles {
                name: "default".into(),
                jwks: jwks.clone(),
                revocations: self.revocations.clone(),
            });
        }
        all
    }
}

/// Graceful shutdown settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long connections get to drain after DISCONNECT 0x8B before they are dropped.
    pub drain_timeout_secs: u64,
    /// Where an MQTT 5 client should reconnect (the Server Reference of the DISCONNECT 0x8B a
    /// shutdown sends), for example the address of the other replicas behind a load balancer;
    /// none when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_reference: Option<String>,
}

/// The longest `shutdown.server_reference` (it goes in every shutdown's DISCONNECT).
pub const MAX_SERVER_REFERENCE_LEN: usize = 1024;

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout_secs: 10,
            server_reference: None,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
}

/// When a write to the store is durable.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// Every write is on disk (fsync) before the broker acknowledges the message it holds;
    /// writes waiting together share one commit.
    #[default]
    Sync,
    /// Writes are committed and synced every `interval_ms`; messages are acknowledged at once,
    /// so a crash (of the machine; a killed process loses nothing the kernel has) can lose what
    /// was acknowledged in the last interval.
    Interval,
}

impl SyncPolicy {
    /// The name in the configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncPolicy::Sync => "sync",
            SyncPolicy::Interval => "interval",
        }
    }
}

/// `[storage]`: how retained messages and sessions are kept under `data_dir` (`DIR/store/`).
/// Without a data dir nothing is written to disk and this section is not used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sync` (default) or `interval`.
    pub sync: SyncPolicy,
    /// With `interval`: milliseconds between commits (1 to 60,000; default 100).
    pub interval_ms: u64,
    /// A store that does not open (corrupt, truncated) is moved aside and the broker starts
    /// with what could be kept, instead of refusing to start.
    pub repair: bool,
    /// MiB of the store file's pages kept in memory (1 to 65,536; default 32). The engine's
    /// own default is 1 GiB, which the process would grow into as the store is written.
    pub cache_mb: u64,
}

/// The largest `storage.interval_ms`.
pub const MAX_STORAGE_INTERVAL_MS: u64 = 60_000;

/// The largest `storage.cache_mb`.
pub const MAX_STORAGE_CACHE_MB: u64 = 65_536;

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            sync: SyncPolicy::Sync,
            interval_ms: 100,
            repair: false,
            cache_mb: 32,
        }
    }
}

/// Flags from the command line that override the file and environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--mqtt ADDR` (repeatable): plaintext listeners added to the configured ones.
    pub mqtt: Vec<SocketAddr>,
    /// `--auth none|token`.
    pub auth: Option<AuthMode>,
    /// `--http ADDR`.
    pub http: Option<SocketAddr>,
    /// `--mqtts ADDR` (repeatable): MQTT over TLS listeners.
    pub mqtts: Vec<SocketAddr>,
    /// `--ws ADDR` (repeatable): MQTT over WebSocket listeners.
    pub ws: Vec<SocketAddr>,
    /// `--wss ADDR` (repeatable): MQTT over WebSocket over TLS listeners (raw MQTT over TLS too).
    pub wss: Vec<SocketAddr>,
    /// `--tls-cert FILE`: `[tls] cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key FILE`: `[tls] key`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-client-ca FILE`: `[tls] client_ca`.
    pub tls_client_ca: Option<PathBuf>,
    /// `--dev-tls DIR`: `[tls] dev_tls`.
    pub dev_tls: Option<PathBuf>,
    /// `--control-plane URL` (repeatable, paired by position with the next two).
    pub control_plane: Vec<String>,
    /// `--broker-id ID` (repeatable).
    pub broker_id: Vec<String>,
    /// `--broker-secret-file FILE` (repeatable).
    pub broker_secret_file: Vec<PathBuf>,
    /// `--data-dir DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--jwks FILE`.
    pub jwks: Option<PathBuf>,
    /// `--revocations FILE`.
    pub revocations: Option<PathBuf>,
    /// `--storage-sync sync|interval`: `[storage] sync`.
    pub storage_sync: Option<SyncPolicy>,
    /// `--storage-interval-ms N`: `[storage] interval_ms`.
    pub storage_interval_ms: Option<u64>,
    /// `--storage-repair`: `[storage] repair = true`.
    pub storage_repair: bool,
    /// `--storage-cache-mb N`: `[storage] cache_mb`.
    pub storage_cache_mb: Option<u64>,
    /// `--cluster-nats URL` (repeatable): NATS servers added to `[cluster] nats`.
    pub cluster_nats: Vec<String>,
    /// `--cluster-stream-replicas N`: `[cluster] stream_replicas`.
    pub cluster_stream_replicas: Option<usize>,
    /// `--cluster-stream-max-age SECS`: `[cluster] stream_max_age_secs`.
    pub cluster_stream_max_age_secs: Option<u64>,
    /// `--cluster-stream-max-bytes BYTES`: `[cluster] stream_max_bytes`.
    pub cluster_stream_max_bytes: Option<u64>,
    /// `--cluster-replica-timeout SECS`: `[cluster] replica_timeout_secs`.
    pub cluster_replica_timeout_secs: Option<u64>,
}

/// A configuration that could not be loaded; every problem is listed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file (after environment overrides) does not parse or has unknown fields.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// The values parse but do not make sense together.
    #[error("invalid configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Loads a configuration from the file text (if any), environment pairs and flags.
    pub fn load(
        file: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = match file {
            Some(text) => text
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?,
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        for addr in &overrides.mqtt {
            config
                .listeners
                .push(ListenerConfig::new(ListenerKind::Mqtt, *addr));
        }
        for (kind, addrs) in [
            (ListenerKind::Mqtts, &overrides.mqtts),
            (ListenerKind::Ws, &overrides.ws),
            (ListenerKind::Wss, &overrides.wss),
        ] {
            for addr in addrs {
                config.listeners.push(ListenerConfig::new(kind, *addr));
            }
        }
        if let Some(cert) = &overrides.tls_cert {
            config.tls.cert = Some(cert.clone());
        }
        if let Some(key) = &overrides.tls_key {
            config.tls.key = Some(key.clone());
        }
        if let Some(ca) = &overrides.tls_client_ca {
            config.tls.client_ca = Some(ca.clone());
        }
        if let Some(dir) = &overrides.dev_tls {
            config.tls.dev_tls = Some(dir.clone());
        }
        if let Some(mode) = overrides.auth {
            config.auth.mode = mode;
        }
        if let Some(http) = overrides.http {
            config.http.bind = http;
        }
        let (n_url, n_id, n_secret) = (
            overrides.control_plane.len(),
            overrides.broker_id.len(),
            overrides.broker_secret_file.len(),
        );
        if n_url != n_id || n_id != n_secret {
            return Err(ConfigError::Invalid(vec![format!(
                "--control-plane, --broker-id and --broker-secret-file come in groups: got {n_url}, {n_id} and {n_secret}"
            )]));
        }
        for ((url, id), secret) in overrides
            .control_plane
            .iter()
            .zip(&overrides.broker_id)
            .zip(&overrides.broker_secret_file)
        {
            config.control_plane.push(ManagedTenant {
                url: url.clone(),
                broker_id: id.clone(),
                secret_file: secret.clone(),
            });
        }
        if !config.control_plane.is_empty() && overrides.auth.is_none() {
            // Managed tenants authenticate with tokens.
            config.auth.mode = AuthMode::Token;
        }
        if let Some(dir) = &overrides.data_dir {
            config.data_dir = Some(dir.clone());
        }
        if let Some(jwks) = &overrides.jwks {
            config.auth.jwks = Some(jwks.clone());
        }
        if let Some(revocations) = &overrides.revocations {
            config.auth.revocations = Some(revocations.clone());
        }
        if let Some(sync) = overrides.storage_sync {
            config.storage.sync = sync;
        }
        if let Some(ms) = overrides.storage_interval_ms {
            config.storage.interval_ms = ms;
        }
        if overrides.storage_repair {
            config.storage.repair = true;
        }
        if let Some(mb) = overrides.storage_cache_mb {
            config.storage.cache_mb = mb;
        }
        config
            .cluster
            .nats
            .extend(overrides.cluster_nats.iter().cloned());
        if let Some(n) = overrides.cluster_stream_replicas {
            config.cluster.stream_replicas = Some(n);
        }
        if let Some(secs) = overrides.cluster_stream_max_age_secs {
            config.cluster.stream_max_age_secs = secs;
        }
        if let Some(bytes) = overrides.cluster_stream_max_bytes {
            config.cluster.stream_max_bytes = bytes;
        }
        if let Some(secs) = overrides.cluster_replica_timeout_secs {
            config.cluster.replica_timeout_secs = secs;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the configuration and reports every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.listeners.is_empty() {
            problems
                .push("no MQTT listener is configured (use --mqtt ADDR or [[listeners]])".into());
        }
        problems.extend(self.http.limits().problems("http"));
        problems.extend(self.limits.problems("limits."));
        for (i, listener) in self.listeners.iter().enumerate() {
            if let Some(own) = &listener.limits {
                problems.extend(own.problems(&format!("listeners[{i}].limits.")));
            }
        }
        if let Some(r) = &self.shutdown.server_reference {
            if r.is_empty() || r.len() > MAX_SERVER_REFERENCE_LEN || r.chars().any(char::is_control)
            {
                problems.push(format!(
                    "shutdown.server_reference must be 1 to {MAX_SERVER_REFERENCE_LEN} bytes without control characters"
                ));
            }
        }
        let l = self.limits.resolve();
        if l.max_keep_alive_secs != 0 && l.min_keep_alive_secs > l.max_keep_alive_secs {
            problems.push("limits.min_keep_alive_secs is above max_keep_alive_secs".into());
        }
        if self.auth.clock_skew_secs > starling_token::MAX_CLOCK_SKEW_SECS {
            // The control plane keeps a revocation until `exp` plus this much; a larger skew
            // would let a revoked token in again after its revocation is gone.
            problems.push(format!(
                "auth.clock_skew_secs {} is above the largest allowed, {}",
                self.auth.clock_skew_secs,
                starling_token::MAX_CLOCK_SKEW_SECS
            ));
        }
        let token_listeners = self
            .listeners
            .iter()
            .any(|l| l.auth.unwrap_or(self.auth.mode) == AuthMode::Token);
        if token_listeners
            && self.auth.file_tenants().is_empty()
            && self.control_plane.is_empty()
            && !self.embedded_tenants
        {
            problems.push(
                "token authentication needs keys: --jwks FILE, [[auth.tenants]] or --control-plane URL --broker-id ID --broker-secret-file FILE".into(),
            );
        }
        for (i, t) in self.control_plane.iter().enumerate() {
            if !(t.url.starts_with("http://") || t.url.starts_with("https://")) {
                problems.push(format!(
                    "control_plane[{i}].url must start with http:// or https://"
                ));
            }
            if t.broker_id.is_empty() {
                problems.push(format!("control_plane[{i}].broker_id is empty"));
            }
            if self
                .auth
                .file_tenants()
                .iter()
                .any(|f| f.name == t.broker_id)
            {
                problems.push(format!(
                    "tenant `{}` is both in files and managed",
                    t.broker_id
                ));
            }
        }
        if let Some(url) = &self.hook.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.push("hook.url must start with https:// (or http://)".into());
            }
            if self.hook.key_file.is_none() {
                problems.push("hook.url needs hook.key_file, the key that signs requests".into());
            }
        }
        if self.hook.max_batch_messages == 0
            || self.hook.max_batch_bytes == 0
            || self.hook.max_requests_in_flight == 0
            || self.hook.queue_capacity == 0
            || self.hook.max_pending_per_connection == 0
            || self.hook.max_pending_bytes_per_connection == 0
            || self.hook.timeout_ms == 0
        {
            problems.push(
                "hook: batch sizes, queue, pending, in-flight and timeout must be at least 1"
                    .into(),
            );
        }
        if self.storage.interval_ms == 0 || self.storage.interval_ms > MAX_STORAGE_INTERVAL_MS {
            problems.push(format!(
                "storage.interval_ms {} is outside 1 to {MAX_STORAGE_INTERVAL_MS}",
                self.storage.interval_ms
            ));
        }
        if self.storage.cache_mb == 0 || self.storage.cache_mb > MAX_STORAGE_CACHE_MB {
            problems.push(format!(
                "storage.cache_mb {} is outside 1 to {MAX_STORAGE_CACHE_MB}",
                self.storage.cache_mb
            ));
        }
        problems.extend(self.cluster.problems());
        if self.auth.revocations.is_some() && self.auth.jwks.is_none() {
            problems.push("auth.revocations needs auth.jwks (--jwks FILE)".into());
        }
        let mut names = std::collections::HashSet::new();
        for t in self.auth.file_tenants() {
            if !names.insert(t.name.clone()) {
                problems.push(format!("auth: tenant `{}` is configured twice", t.name));
            }
        }
        for p in crate::auth::rules::problems(&self.auth.rules) {
            problems.push(format!("auth.{p}"));
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            if let Some(rules) = &listener.rules {
                if listener.auth.unwrap_or(self.auth.mode) != AuthMode::None {
                    problems.push(format!(
                        "listeners[{i}].rules apply to listeners without authentication (auth = \"none\"); a token carries its own topic ACL"
                    ));
                }
                for p in crate::auth::rules::problems(rules) {
                    problems.push(format!("listeners[{i}].{p}"));
                }
            }
            if listener.max_connections == 0 {
                problems.push(format!("listeners[{i}].max_connections must be at least 1"));
            }
            if listener.handshake_timeout_secs == Some(0) {
                problems.push(format!(
                    "listeners[{i}].handshake_timeout_secs must be at least 1"
                ));
            }
            for p in crate::transport::config::problems(
                listener.kind,
                &self.tls,
                listener.tls.as_ref(),
                &listener.ws,
            ) {
                problems.push(format!("listeners[{i}]: {p}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The effective limits.
    pub fn limits(&self) -> Limits {
        self.limits.resolve()
    }
}

/// Applies `STARLING_BROKER__SECTION__KEY=value` pairs to the TOML table. Values are read as
/// TOML (numbers, booleans, arrays) and fall back to strings.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (key, value) in env {
        let Some(path) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Parse(format!(
                "environment variable {key} has an empty path segment"
            )));
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let mut cursor = &mut *table;
        for part in &parts[..parts.len() - 1] {
            let entry = cursor
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cursor = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Parse(format!(
                        "environment variable {key}: `{part}` is not a section"
                    )));
                }
            };
        }
        if let Some(last) = parts.last() {
            cursor.insert(last.clone(), parsed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn flags_with_listener() -> Overrides {
        Overrides {
            mqtt: vec!["127.0.0.1:0".parse().unwrap()],
            ..Default::default()
        }
    }

    #[test]
    fn cluster_section_env_and_flag_and_no_secret_in_the_logged_form() {
        let c = Config::load(None, [], &flags_with_listener()).unwrap();
        assert!(!c.cluster.enabled(), "no [cluster]: a single node");
        let file = "[cluster]\nnats = [\"nats://10.0.0.1:4222\"]\nuser = \"starling\"\n";
        let env = [(
            "STARLING_BROKER__CLUSTER__PASSWORD".to_string(),
            "s3cr3t-pw".to_string(),
        )];
        let flags = Overrides {
            cluster_nats: vec!["nats://10.0.0.2:4222".into()],
            ..flags_with_listener()
        };
        let c = Config::load(Some(file), env, &flags).unwrap();
        assert_eq!(
            c.cluster.nats,
            ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
        );
        assert_eq!(c.cluster.password.as_ref().unwrap().expose(), "s3cr3t-pw");
        let logged = serde_json::to_string(&c).unwrap();
        assert!(!logged.contains("s3cr3t-pw"), "{logged}");
        let err = Config::load(
            Some("[cluster]\nnats = [\"nats://h:4222\"]\nuser = \"u\"\n"),
            [],
            &flags_with_listener(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("cluster.user and cluster.password"),
            "{err}"
        );
    }

    #[test]
    fn a_server_reference_is_bounded_and_has_no_control_characters() {
        let load = |v: &str| {
            Config::load(
                Some(&format!("[shutdown]\nserver_reference = {v:?}\n")),
                [],
                &flags_with_listener(),
            )
        };
        let ok = load("mqtts://mqtt.example.com:8883").unwrap();
        assert_eq!(
            ok.shutdown.server_reference.as_deref(),
            Some("mqtts://mqtt.example.com:8883")
        );
        for bad in ["", "a\nb", &"x".repeat(MAX_SERVER_REFERENCE_LEN + 1)] {
            let err = load(bad).unwrap_err();
            assert!(
                err.to_string().contains("shutdown.server_reference"),
                "{err}"
            );
        }
    }

    #[test]
    fn defaults_need_a_listener() {
        let err = Config::load(None, [], &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("no MQTT listener"), "{err}");
    }

    #[test]
    fn file_then_env_then_flags() {
        let file = r#"
            [http]
            bind = "127.0.0.1:1000"
            [limits]
            profile = "cloudflare"
            max_topic_depth = 4
        "#;
        let env = [
            (
                "STARLING_BROKER__HTTP__BIND".to_string(),
                "127.0.0.1:2000".to_string(),
            ),
            (
                "STARLING_BROKER__LIMITS__MAX_PACKET_SIZE".to_string(),
                "2048".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::load(Some(file), env, &flags_with_listener()).unwrap();
        assert_eq!(c.http.bind, "127.0.0.1:2000".parse().unwrap());
        let l = c.limits();
        assert_eq!(l.max_packet_size, 2048);
        assert_eq!(l.max_topic_depth, 4);
        assert_eq!(l.max_client_id_length, 64, "from the cloudflare profile");
        let flags = Overrides {
            http: Some("127.0.0.1:3000".parse().unwrap()),
            auth: Some(AuthMode::Token),
            jwks: Some("/etc/starling/jwks.json".into()),
            ..flags_with_listener()
        };
        let c = Config::load(Some(file), [], &flags).unwrap();
        assert_eq!(c.http.bind, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(c.auth.mode, AuthMode::Token);
    }

    #[test]
    fn slow_consumer_grace_defaults_to_five_seconds_and_is_configurable() {
        let c = Config::load(None, [], &flags_with_listener()).unwrap();
        assert_eq!(c.limits().slow_consumer_grace(), Duration::from_secs(5));
        let file = "[limits]\nslow_consumer_grace_ms = 250\n";
        let c = Config::load(Some(file), [], &flags_with_listener()).unwrap();
        assert_eq!(c.limits().slow_consumer_grace(), Duration::from_millis(250));
        let env = [(
            "STARLING_BROKER__LIMITS__SLOW_CONSUMER_GRACE_MS".to_string(),
            "30000".to_string(),
        )];
        let c = Config::load(Some(file), env, &flags_with_listener()).unwrap();
        assert_eq!(c.limits().slow_consumer_grace(), Duration::from_secs(30));
        let err = Config::load(
            Some("[limits]\nslow_consumer_grace_ms = 0\n"),
            [],
            &flags_with_listener(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("slow_consumer_grace_ms"), "{err}");
    }

    #[test]
    fn a_clock_skew_beyond_how_long_revocations_outlive_exp_is_refused() {
        let ok = format!(
            "[auth]\nclock_skew_secs = {}\n",
            starling_token::MAX_CLOCK_SKEW_SECS
        );
        assert!(Config::load(Some(&ok), [], &flags_with_listener()).is_ok());
        let too_much = format!(
            "[auth]\nclock_skew_secs = {}\n",
            starling_token::MAX_CLOCK_SKEW_SECS + 1
        );
        let err = Config::load(Some(&too_much), [], &flags_with_listener()).unwrap_err();
        assert!(
            err.to_string().contains("auth.clock_skew_secs 301"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = Config::load(
            Some("[limits]\nmax_pakcet_size = 1\n"),
            [],
            &flags_with_listener(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_pakcet_size"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let file = "[limits]\nmax_packet_size = 10\nreceive_maximum = 0\n";
        let err = Config::load(Some(file), [], &Overrides::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no MQTT listener"), "{text}");
        assert!(text.contains("max_packet_size"), "{text}");
        assert!(text.contains("receive_maximum"), "{text}");
    }

    #[test]
    fn storage_from_the_file_and_flags_over_it() {
        let c = Config::load(None, [], &flags_with_listener()).unwrap();
        assert_eq!(c.storage, StorageConfig::default());
        assert_eq!(c.storage.sync, SyncPolicy::Sync);
        assert_eq!(c.storage.interval_ms, 100);
        assert!(!c.storage.repair);
        assert_eq!(c.storage.cache_mb, 32);
        let file =
            "[storage]\nsync = \"interval\"\ninterval_ms = 250\nrepair = false\ncache_mb = 8\n";
        let c = Config::load(Some(file), [], &flags_with_listener()).unwrap();
        assert_eq!(c.storage.sync, SyncPolicy::Interval);
        assert_eq!(c.storage.interval_ms, 250);
        assert_eq!(c.storage.cache_mb, 8);
        let flags = Overrides {
            storage_sync: Some(SyncPolicy::Sync),
            storage_interval_ms: Some(20),
            storage_repair: true,
            storage_cache_mb: Some(64),
            ..flags_with_listener()
        };
        let c = Config::load(Some(file), [], &flags).unwrap();
        assert_eq!(c.storage.sync, SyncPolicy::Sync);
        assert_eq!(c.storage.interval_ms, 20);
        assert!(c.storage.repair);
        assert_eq!(c.storage.cache_mb, 64);
        for (bad, key) in [
            ("interval_ms = 0", "storage.interval_ms"),
            ("interval_ms = 60001", "storage.interval_ms"),
            ("cache_mb = 0", "storage.cache_mb"),
            ("cache_mb = 65537", "storage.cache_mb"),
        ] {
            let err = Config::load(
                Some(&format!("[storage]\n{bad}\n")),
                [],
                &flags_with_listener(),
            )
            .unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = Config::load(
            Some("[storage]\nsync = \"never\"\n"),
            [],
            &flags_with_listener(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("never"), "{err}");
    }

    #[test]
    fn listeners_from_the_file() {
        let file = r#"
            [[listeners]]
            kind = "mqtt"
            bind = "127.0.0.1:1883"
            auth = "none"
            [[listeners]]
            kind = "mqtt"
            bind = "127.0.0.1:1884"
            max_connections = 10
        "#;
        let c = Config::load(Some(file), [], &Overrides::default()).unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[1].max_connections, 10);
        assert_eq!(c.listeners[0].auth, Some(AuthMode::None));
    }
}
