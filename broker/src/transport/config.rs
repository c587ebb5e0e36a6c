//! Transport settings as they appear in the broker's configuration, and [`TlsListeners`], which
//! turns them into one [`TransportConfig`] per listener.
//!
//! ```toml
//! [tls]                       # shared by every mqtts and wss listener
//! cert = "/etc/starling/tls/tls.crt"
//! key = "/etc/starling/tls/tls.key"
//! client_ca = "/etc/starling/client-ca.pem"   # optional: mTLS
//! client_auth = "required"                     # or "optional"
//! # dev_tls = "/var/lib/starling/dev-tls"     # instead of cert/key: make a local CA
//!
//! [[listeners]]
//! kind = "wss"
//! bind = "0.0.0.0:8884"
//! handshake_timeout_secs = 10
//! [listeners.ws]
//! require_subprotocol = false
//! max_message_size = 1048576
//! [listeners.tls]                              # optional: this listener's own certificate
//! cert = "/etc/starling/other/tls.crt"
//! key = "/etc/starling/other/tls.key"
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::dev_tls::{self, DevTls, DevTlsError};
use super::tls::{self, CertResolver, CertWatcher, TlsError, TlsListenerConfig};
use super::ws::WsConfig;
use super::{DEFAULT_HANDSHAKE_TIMEOUT, ListenerKind, TransportConfig};

/// Whether a client certificate is required when a client CA is configured.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthSetting {
    /// Handshakes without a valid client certificate fail.
    #[default]
    Required,
    /// Clients may present no certificate.
    Optional,
}

impl From<ClientAuthSetting> for tls::ClientAuth {
    fn from(s: ClientAuthSetting) -> Self {
        match s {
            ClientAuthSetting::Required => tls::ClientAuth::Required,
            ClientAuthSetting::Optional => tls::ClientAuth::Optional,
        }
    }
}

/// The `[tls]` section: certificate files shared by TLS listeners, or the dev CA.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM certificate chain (leaf first).
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// PEM bundle of CAs for client certificates (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required when `client_ca` is set.
    pub client_auth: ClientAuthSetting,
    /// Make (or reuse) a local CA and server certificate in this directory and use them where
    /// no `cert`/`key` is given.
    pub dev_tls: Option<PathBuf>,
    /// Host names the dev server certificate names besides localhost, 127.0.0.1 and ::1.
    pub dev_tls_names: Vec<String>,
    /// Fallback check of the certificate files, beside the directory watch (seconds).
    pub reload_poll_secs: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            cert: None,
            key: None,
            client_ca: None,
            client_auth: ClientAuthSetting::Required,
            dev_tls: None,
            dev_tls_names: Vec::new(),
            reload_poll_secs: 10,
        }
    }
}

/// A listener's own certificate files (`[listeners.tls]`), overriding `[tls]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerTlsSettings {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// PEM bundle of client CAs; `[tls] client_ca` when absent.
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required; `[tls] client_auth` when absent.
    pub client_auth: Option<ClientAuthSetting>,
}

/// A WebSocket listener's options (`[listeners.ws]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WsSettings {
    /// Refuse (HTTP 400) handshakes that offer no subprotocol.
    pub require_subprotocol: bool,
    /// Largest WebSocket frame payload accepted (bytes).
    pub max_frame_size: usize,
    /// Largest WebSocket message accepted (bytes).
    pub max_message_size: usize,
    /// Largest HTTP upgrade request head (bytes).
    pub max_header_bytes: usize,
    /// Whether raw MQTT (first byte 0x10) is accepted on this WebSocket listener too.
    pub accept_raw_mqtt: bool,
}

impl Default for WsSettings {
    fn default() -> Self {
        let d = WsConfig::default();
        WsSettings {
            require_subprotocol: d.require_subprotocol,
            max_frame_size: d.max_frame_size,
            max_message_size: d.max_message_size,
            max_header_bytes: d.max_header_bytes,
            accept_raw_mqtt: true,
        }
    }
}

/// Problems with the transport settings of one listener, for the configuration's `validate()`.
pub fn problems(
    kind: ListenerKind,
    global: &TlsSettings,
    listener: Option<&ListenerTlsSettings>,
    ws: &WsSettings,
) -> Vec<String> {
    let mut out = Vec::new();
    let (cert, key) = effective_files(global, listener);
    if kind.is_tls() {
        match (cert, key) {
            (Some(_), Some(_)) => {}
            (Some(_), None) | (None, Some(_)) => {
                out.push(format!("{kind} listener: tls cert and key must be given together"));
            }
            (None, None) if global.dev_tls.is_some() => {}
            (None, None) => out.push(format!(
                "{kind} listener: needs a certificate (--tls-cert and --tls-key, [tls] cert/key, or --dev-tls DIR)"
            )),
        }
    }
    if kind.is_ws() {
        if ws.max_frame_size == 0 || ws.max_message_size == 0 {
            out.push(format!(
                "{kind} listener: ws frame and message size limits must be above 0"
            ));
        }
        if ws.max_header_bytes < 256 {
            out.push(format!(
                "{kind} listener: ws max_header_bytes must be at least 256"
            ));
        }
    }
    out
}

fn effective_files<'a>(
    global: &'a TlsSettings,
    listener: Option<&'a ListenerTlsSettings>,
) -> (Option<&'a Path>, Option<&'a Path>) {
    match listener {
        Some(l) if l.cert.is_some() || l.key.is_some() => (l.cert.as_deref(), l.key.as_deref()),
        _ => (global.cert.as_deref(), global.key.as_deref()),
    }
}

/// Why the transports of the listeners could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportSetupError {
    /// Certificate files could not be loaded or watched.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The dev CA could not be made.
    #[error(transparent)]
    DevTls(#[from] DevTlsError),
    /// A TLS listener has no certificate configured.
    #[error("{0} listener has no tls certificate (use --tls-cert/--tls-key or --dev-tls)")]
    NoCertificate(ListenerKind),
}

// === impl TlsListeners ===

/// The certificates of a broker's TLS listeners: one [`CertResolver`] (and one directory watch)
/// per certificate/key pair, shared by the listeners that use it; and the dev CA when asked for.
/// Dropping it stops the watches.
#[derive(Debug)]
pub struct TlsListeners {
    global: TlsSettings,
    dev: Option<DevTls>,
    resolvers: HashMap<(PathBuf, PathBuf), Arc<CertResolver>>,
    watchers: Vec<CertWatcher>,
}

impl TlsListeners {
    /// Makes or reuses the dev CA when `global.dev_tls` is set. Blocks on file I/O: call it at
    /// start.
    pub fn new(global: &TlsSettings) -> Result<Self, TransportSetupError> {
        let dev = match &global.dev_tls {
            Some(dir) => {
                let dev = dev_tls::ensure(dir, &global.dev_tls_names)?;
                tracing::info!(
                    ca = %dev.ca_cert.display(),
                    outcome = ?dev.outcome,
                    "dev tls: clients can trust this CA"
                );
                Some(dev)
            }
            None => None,
        };
        Ok(TlsListeners {
            global: global.clone(),
            dev,
            resolvers: HashMap::new(),
            watchers: Vec::new(),
        })
    }

    /// The dev CA files, when `--dev-tls` is in use.
    pub fn dev(&self) -> Option<&DevTls> {
        self.dev.as_ref()
    }

    /// The certificates in use, one per certificate/key pair.
    pub fn resolvers(&self) -> impl Iterator<Item = &Arc<CertResolver>> {
        self.resolvers.values()
    }

    /// The transport configuration of one listener. Must run inside the tokio runtime (the
    /// certificate watch is a task).
    pub fn transport_config(
        &mut self,
        kind: ListenerKind,
        listener_tls: Option<&ListenerTlsSettings>,
        ws: &WsSettings,
        handshake_timeout: Option<Duration>,
    ) -> Result<TransportConfig, TransportSetupError> {
        let mut cfg = TransportConfig::plain();
        if kind.is_tls() {
            let (cert, key) = match effective_files(&self.global, listener_tls) {
                (Some(c), Some(k)) => (c.to_owned(), k.to_owned()),
                _ => match &self.dev {
                    Some(dev) => (dev.cert.clone(), dev.key.clone()),
                    None => return Err(TransportSetupError::NoCertificate(kind)),
                },
            };
            let resolver = self.resolver(cert, key)?;
            let client_ca = listener_tls
                .and_then(|l| l.client_ca.clone())
                .or_else(|| self.global.client_ca.clone());
            let client_auth = listener_tls
                .and_then(|l| l.client_auth)
                .unwrap_or(self.global.client_auth);
            cfg = TransportConfig::with_tls(
                kind,
                &TlsListenerConfig {
                    resolver,
                    client_ca,
                    client_auth: client_auth.into(),
                    alpn: None,
                },
            )?;
        }
        cfg.ws = WsConfig {
            require_subprotocol: ws.require_subprotocol,
            max_frame_size: ws.max_frame_size,
            max_message_size: ws.max_message_size,
            max_header_bytes: ws.max_header_bytes,
            ..WsConfig::default()
        };
        cfg.accept_raw_mqtt = ws.accept_raw_mqtt;
        cfg.handshake_timeout = handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
        Ok(cfg)
    }

    fn resolver(
        &mut self,
        cert: PathBuf,
        key: PathBuf,
    ) -> Result<Arc<CertResolver>, TransportSetupError> {
        if let Some(r) = self.resolvers.get(&(cert.clone(), key.clone())) {
            return Ok(Arc::clone(r));
        }
        let resolver = CertResolver::load(&cert, &key)?;
        let watcher = resolver.watch(Duration::from_secs(self.global.reload_poll_secs.max(1)));
        tracing::info!(cert = %cert.display(), "tls certificate loaded; watching its directory");
        self.watchers.push(watcher);
        self.resolvers.insert((cert, key), Arc::clone(&resolver));
        Ok(resolver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_listener_without_certificate_or_dev_tls_is_a_problem() {
        let none = TlsSettings::default();
        let p = problems(ListenerKind::Mqtts, &none, None, &WsSettings::default());
        assert_eq!(p.len(), 1, "{p:?}");
        let dev = TlsSettings {
            dev_tls: Some("/tmp/x".into()),
            ..TlsSettings::default()
        };
        assert!(problems(ListenerKind::Wss, &dev, None, &WsSettings::default()).is_empty());
        let half = TlsSettings {
            cert: Some("/a.pem".into()),
            ..TlsSettings::default()
        };
        assert_eq!(
            problems(ListenerKind::Mqtts, &half, None, &WsSettings::default()).len(),
            1
        );
        assert!(problems(ListenerKind::Mqtt, &none, None, &WsSettings::default()).is_empty());
    }

    #[tokio::test]
    async fn listeners_with_the_same_files_share_one_resolver() {
        let dir = tempfile::tempdir().unwrap();
        let global = TlsSettings {
            dev_tls: Some(dir.path().to_owned()),
            ..TlsSettings::default()
        };
        let mut set = TlsListeners::new(&global).unwrap();
        let ws = WsSettings::default();
        set.transport_config(ListenerKind::Mqtts, None, &ws, None)
            .unwrap();
        set.transport_config(ListenerKind::Wss, None, &ws, Some(Duration::from_secs(3)))
            .unwrap();
        assert_eq!(set.resolvers.len(), 1);
        assert_eq!(set.watchers.len(), 1);
        let plain = set
            .transport_config(ListenerKind::Ws, None, &ws, None)
            .unwrap();
        assert!(plain.tls.is_none());
    }

    #[test]
    fn tls_and_ws_listeners_come_from_the_file_and_the_flags() {
        use crate::config::{Config, Overrides};
        let file = r#"
            [tls]
            cert = "/etc/starling/tls/tls.crt"
            key = "/etc/starling/tls/tls.key"
            client_auth = "optional"

            [[listeners]]
            kind = "wss"
            bind = "0.0.0.0:8884"
            auth = "none"
            handshake_timeout_secs = 5
            [listeners.ws]
            require_subprotocol = true
            max_message_size = 65536

            [[listeners]]
            kind = "mqtts"
            bind = "0.0.0.0:8883"
            [listeners.tls]
            cert = "/etc/other/tls.crt"
            key = "/etc/other/tls.key"
        "#;
        let flags = Overrides {
            ws: vec!["127.0.0.1:8080".parse().unwrap()],
            dev_tls: Some("/tmp/dev".into()),
            ..Overrides::default()
        };
        let c = Config::load(Some(file), [], &flags).unwrap();
        assert_eq!(c.listeners.len(), 3);
        assert_eq!(c.listeners[0].kind, ListenerKind::Wss);
        assert_eq!(c.listeners[0].handshake_timeout_secs, Some(5));
        assert!(c.listeners[0].ws.require_subprotocol);
        assert_eq!(c.listeners[0].ws.max_message_size, 65536);
        assert_eq!(
            c.listeners[0].ws.max_frame_size,
            WsSettings::default().max_frame_size
        );
        assert_eq!(
            c.listeners[1].tls.as_ref().unwrap().cert.as_deref(),
            Some(Path::new("/etc/other/tls.crt"))
        );
        assert_eq!(c.listeners[2].kind, ListenerKind::Ws);
        assert_eq!(c.tls.client_auth, ClientAuthSetting::Optional);
        assert_eq!(c.tls.dev_tls.as_deref(), Some(Path::new("/tmp/dev")));
    }

    #[test]
    fn a_tls_listener_without_a_certificate_is_refused_by_validation() {
        use crate::config::{Config, Overrides};
        let flags = Overrides {
            mqtts: vec!["127.0.0.1:0".parse().unwrap()],
            ..Overrides::default()
        };
        let err = Config::load(None, [], &flags).unwrap_err();
        assert!(err.to_string().contains("needs a certificate"), "{err}");
    }

    #[test]
    fn settings_reject_unknown_fields() {
        let err = toml_like::<WsSettings>("max_mesage_size = 3");
        assert!(err.is_err());
    }

    fn toml_like<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
        toml::from_str(s).map_err(|e| e.to_string())
    }
}
