//! Several replicas of one broker joined through NATS (`[cluster]`).
//!
//! [`subject`] maps MQTT topics and filters onto NATS subjects, exactly and reversibly, under a
//! prefix per tenant. Without `[cluster]` none of this is used and the broker is a single node.

pub mod credentials;
pub mod frame;
pub mod link;
pub mod liveness;
pub mod retained;
pub mod sessions;
pub mod subject;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest replica id (it is one token of NATS subjects and a label of metrics).
pub const MAX_REPLICA_ID_LEN: usize = 64;

/// A secret from the configuration: never shown in logs, `Debug` or the serialized
/// configuration (which the broker logs at start).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the NATS connection only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// `[cluster]`: the NATS servers that join this broker's replicas, and how to log in to them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`); at least one. `--cluster-nats
    /// URL` (repeatable) adds to them.
    pub nats: Vec<String>,
    /// This replica's id, unique among the broker's replicas (letters, digits, `-`, `_`; at most
    /// 64). When absent: the `HOSTNAME` environment variable (the pod name), else a random id.
    pub replica_id: Option<String>,
    /// User name for NATS (with `password`).
    pub user: Option<String>,
    /// Password for NATS (with `user`); never logged.
    pub password: Option<Secret>,
    /// Token for NATS; never logged.
    pub token: Option<Secret>,
    /// A NATS credentials file (JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// The prefix of this replica's inbox subjects (replies to its requests, its consumers'
    /// deliveries), `_INBOX` when absent. A NATS shared by several brokers gives each its own
    /// ([`credentials::inbox_prefix`]) and lets each subscribe only under it, so no broker
    /// reads another's replies.
    pub inbox_prefix: Option<String>,
    /// PEM bundle of CAs that sign the NATS servers' certificates (for `tls://` URLs); the
    /// system roots when absent.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate and key, when the NATS servers require one.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Copies JetStream keeps of each tenant's stream of QoS 1/2 messages (1 to 5). When absent:
    /// the number of NATS servers known (configured and announced by the cluster), at most 3.
    /// `--cluster-stream-replicas N`.
    pub stream_replicas: Option<usize>,
    /// How long a tenant's stream keeps a QoS 1/2 message, in seconds (default a day): a
    /// persistent session away for longer loses the oldest. `--cluster-stream-max-age SECS`.
    pub stream_max_age_secs: u64,
    /// The most a tenant's stream holds, in bytes (default 1 GiB): beyond it the oldest
    /// messages go. `--cluster-stream-max-bytes BYTES`.
    pub stream_max_bytes: u64,
    /// How many NATS servers hold a copy of each tenant's retained-message bucket (1 to 5).
    /// When absent: the NATS servers known (configured, or announced by the cluster), at most 3.
    pub retained_replicas: Option<usize>,
    /// How long a replica may go unheard (no heartbeat on NATS) before the others take it for
    /// dead and take over its clients' sessions and wills, in seconds (1 to 3600, default 5).
    /// `--cluster-replica-timeout SECS`.
    pub replica_timeout_secs: u64,
    /// The most bytes of a tenant's messages from NATS a replica holds received and not yet
    /// routed to its subscribers (default 64 MiB). What arrives beyond it, while the replica
    /// falls behind, is dropped there and counted (`starling_cluster_dropped_total`), as a
    /// subscriber's full queue drops; one message is taken whatever its size when none waits.
    pub receive_queue_bytes: usize,
}

/// Default of [`ClusterConfig::stream_max_age_secs`]: one day.
pub const DEFAULT_STREAM_MAX_AGE_SECS: u64 = 86_400;
/// Default of [`ClusterConfig::stream_max_bytes`]: 1 GiB.
pub const DEFAULT_STREAM_MAX_BYTES: u64 = 1 << 30;
/// The most stream replicas JetStream takes.
pub const MAX_STREAM_REPLICAS: usize = 5;
/// Default of [`ClusterConfig::replica_timeout_secs`].
pub const DEFAULT_REPLICA_TIMEOUT_SECS: u64 = 5;
/// Default of [`ClusterConfig::receive_queue_bytes`]: 64 MiB.
pub const DEFAULT_RECEIVE_QUEUE_BYTES: usize = 64 << 20;
/// The longest [`ClusterConfig::replica_timeout_secs`]: an hour.
pub const MAX_REPLICA_TIMEOUT_SECS: u64 = 3600;

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats: Vec::new(),
            replica_id: None,
            user: None,
            password: None,
            token: None,
            creds: None,
            inbox_prefix: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            stream_replicas: None,
            stream_max_age_secs: DEFAULT_STREAM_MAX_AGE_SECS,
            stream_max_bytes: DEFAULT_STREAM_MAX_BYTES,
            retained_replicas: None,
            replica_timeout_secs: DEFAULT_REPLICA_TIMEOUT_SECS,
            receive_queue_bytes: DEFAULT_RECEIVE_QUEUE_BYTES,
        }
    }
}

impl ClusterConfig {
    /// Whether `[cluster]` is set: the broker joins other replicas only then.
    pub fn enabled(&self) -> bool {
        !self.nats.is_empty()
    }

    /// Every problem of the section, each prefixed with its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let any_other = self.replica_id.is_some()
            || self.user.is_some()
            || self.password.is_some()
            || self.token.is_some()
            || self.creds.is_some()
            || self.inbox_prefix.is_some()
            || self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.stream_replicas.is_some()
            || self.retained_replicas.is_some();
        if !self.enabled() {
            if any_other {
                problems.push(
                    "cluster: options are set but cluster.nats (--cluster-nats URL) is empty"
                        .into(),
                );
            }
            return problems;
        }
        for (i, url) in self.nats.iter().enumerate() {
            let ok = ["nats://", "tls://"]
                .iter()
                .any(|s| url.starts_with(s) && url.len() > s.len())
                && !url.chars().any(char::is_whitespace);
            if !ok {
                // The URL may carry a password: it is not repeated.
                problems.push(format!(
                    "cluster.nats[{i}] must be a nats:// or tls:// URL with a host"
                ));
            }
        }
        if let Some(id) = &self.replica_id {
            if let Err(e) = check_replica_id(id) {
                problems.push(format!("cluster.replica_id {e}"));
            }
        }
        if let Some(prefix) = &self.inbox_prefix {
            let ok = !prefix.is_empty()
                && prefix.split('.').all(|t| {
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| (0x21..=0x7e).contains(&b) && b != b'*' && b != b'>')
                });
            if !ok {
                problems.push(
                    "cluster.inbox_prefix must be NATS subject tokens (no wildcards, spaces or empty tokens)"
                        .into(),
                );
            }
        }
        if self.user.is_some() != self.password.is_some() {
            problems.push("cluster.user and cluster.password go together".into());
        }
        let methods = usize::from(self.user.is_some())
            + usize::from(self.token.is_some())
            + usize::from(self.creds.is_some());
        if methods > 1 {
            problems.push("cluster: use one of user/password, token or creds".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            problems.push("cluster.tls_cert and cluster.tls_key go together".into());
        }
        if let Some(n) = self.stream_replicas {
            if !(1..=MAX_STREAM_REPLICAS).contains(&n) {
                problems.push(format!(
                    "cluster.stream_replicas must be 1 to {MAX_STREAM_REPLICAS}, not {n}"
                ));
            }
        }
        if self.stream_max_age_secs == 0 {
            problems.push("cluster.stream_max_age_secs must be above 0".into());
        }
        if self.stream_max_bytes == 0 || self.stream_max_bytes > i64::MAX as u64 {
            problems.push("cluster.stream_max_bytes must be above 0".into());
        }
        if let Some(n) = self.retained_replicas {
            if !(1..=MAX_STREAM_REPLICAS).contains(&n) {
                problems.push(format!(
                    "cluster.retained_replicas must be 1 to {MAX_STREAM_REPLICAS}, not {n}"
                ));
            }
        }
        if !(1..=MAX_REPLICA_TIMEOUT_SECS).contains(&self.replica_timeout_secs) {
            problems.push(format!(
                "cluster.replica_timeout_secs must be 1 to {MAX_REPLICA_TIMEOUT_SECS}, not {}",
                self.replica_timeout_secs
            ));
        }
        if self.receive_queue_bytes == 0 {
            problems.push("cluster.receive_queue_bytes must be above 0".into());
        }
        problems
    }

    /// The stream replicas in force: the configured number, else the NATS servers known
    /// (`known`), at most 3, at least 1.
    pub fn resolve_stream_replicas(&self, known: usize) -> usize {
        self.stream_replicas.unwrap_or(known.clamp(1, 3))
    }

    /// The copies of each retained-message bucket: the configured number, else the NATS
    /// servers `known`, at most 3 (and at least 1).
    pub fn resolve_retained_replicas(&self, known: usize) -> usize {
        self.retained_replicas.unwrap_or(known.clamp(1, 3))
    }

    /// The replica id in force: the configured one, else `HOSTNAME` (when it is a valid id),
    /// else a random one.
    pub fn resolve_replica_id(&self, hostname: Option<&str>) -> String {
        if let Some(id) = &self.replica_id {
            return id.clone();
        }
        if let Some(host) = hostname.filter(|h| check_replica_id(h).is_ok()) {
            return host.to_owned();
        }
        format!("r{:016x}", rand::random::<u64>())
    }
}

/// Checks a replica id: 1 to 64 of `A-Z a-z 0-9 - _`.
pub fn check_replica_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_REPLICA_ID_LEN {
        return Err(format!("must be 1 to {MAX_REPLICA_ID_LEN} characters long"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("may only hold letters, digits, `-` and `_`".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_never_shown() {
        let c = ClusterConfig {
            nats: vec!["nats://127.0.0.1:4222".into()],
            user: Some("u".into()),
            password: Some(Secret::new("hunter2")),
            token: Some(Secret::new("tok-123")),
            ..ClusterConfig::default()
        };
        let json = serde_json::to_string(&c).unwrap();
        let debug = format!("{c:?}");
        for shown in [json, debug] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("tok-123"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        assert_eq!(c.password.as_ref().unwrap().expose(), "hunter2");
    }

    #[test]
    fn without_servers_the_section_is_off_and_stray_options_are_reported() {
        assert!(!ClusterConfig::default().enabled());
        assert!(ClusterConfig::default().problems().is_empty());
        let stray = ClusterConfig {
            token: Some(Secret::new("t")),
            ..ClusterConfig::default()
        };
        assert_eq!(stray.problems().len(), 1);
    }

    #[test]
    fn bad_values_are_each_reported_without_the_url() {
        let c = ClusterConfig {
            nats: vec![
                "http://u:pw@host".into(),
                "nats://".into(),
                "nats://ok:4222".into(),
            ],
            replica_id: Some("a.b".into()),
            user: Some("u".into()),
            token: Some(Secret::new("t")),
            tls_cert: Some("c.pem".into()),
            retained_replicas: Some(6),
            inbox_prefix: Some("_INBOX.a.>".into()),
            ..ClusterConfig::default()
        };
        let p = c.problems();
        assert_eq!(p.len(), 8, "{p:?}");
        let streams = ClusterConfig {
            nats: vec!["nats://ok:4222".into()],
            stream_replicas: Some(6),
            stream_max_age_secs: 0,
            stream_max_bytes: 0,
            replica_timeout_secs: 0,
            receive_queue_bytes: 0,
            ..ClusterConfig::default()
        };
        assert_eq!(streams.problems().len(), 5, "{:?}", streams.problems());
        assert!(p.iter().all(|m| !m.contains("pw@")), "{p:?}");
    }

    #[test]
    fn replica_id_comes_from_config_then_hostname_then_random() {
        let mut c = ClusterConfig {
            nats: vec!["nats://127.0.0.1:4222".into()],
            ..ClusterConfig::default()
        };
        assert_eq!(c.resolve_replica_id(Some("starling-0")), "starling-0");
        let random = c.resolve_replica_id(Some("bad host.name"));
        assert!(check_replica_id(&random).is_ok());
        assert_ne!(random, c.resolve_replica_id(None));
        c.replica_id = Some("r1".into());
        assert_eq!(c.resolve_replica_id(Some("starling-0")), "r1");
    }

    #[test]
    fn stream_replicas_default_to_the_servers_known_up_to_three() {
        let mut c = ClusterConfig::default();
        assert_eq!(c.resolve_stream_replicas(0), 1);
        assert_eq!(c.resolve_stream_replicas(1), 1);
        assert_eq!(c.resolve_stream_replicas(2), 2);
        assert_eq!(c.resolve_stream_replicas(5), 3);
        c.stream_replicas = Some(5);
        assert_eq!(c.resolve_stream_replicas(1), 5);
    }
}
