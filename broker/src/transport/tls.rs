//! TLS for the mqtts and wss listeners: rustls (ring provider, TLS 1.2 and 1.3) from PEM files,
//! ALPN per listener kind, optional client certificates, and a certificate that reloads in place.
//!
//! [`CertResolver`] holds the current certificate and key and hands them to every new handshake.
//! [`CertResolver::watch`] watches the *directories* of the certificate and key files (not the
//! files): a Kubernetes Secret volume changes by renaming a `..data` symlink to a new timestamped
//! directory, so `tls.crt` itself never sees a write event. Every event in those directories, and
//! a periodic check of the files' resolved targets as a fallback, triggers a reload; a certificate
//! or key that does not load (half written, mismatched, malformed) is logged and the old pair is
//! kept. Connections already established keep the certificate they were made with.
//!
//! The client CA (mTLS) is read once when the listener's [`ServerConfig`] is built.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::ListenerKind;

/// ALPN protocol id of MQTT (IANA registry).
pub const ALPN_MQTT: &[u8] = b"mqtt";
/// ALPN protocol id of HTTP/1.1, which WebSockets run on.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// What can go wrong loading TLS material or building a server configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A PEM file held no usable certificate.
    #[error("{path} holds no PEM certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file was malformed or held no usable private key.
    #[error("{path} holds no usable PEM private key: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why (never the key material).
        reason: String,
    },
    /// A certificate file was malformed.
    #[error("{path} is not valid PEM: {reason}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key does not belong to the certificate, or rustls refused the pair.
    #[error("certificate {cert} and key {key} do not form a usable pair: {source}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The cause.
        source: rustls::Error,
    },
    /// The client CA bundle could not be used to verify client certificates.
    #[error("client CA {path} is not usable: {reason}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The directory watcher could not start.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: notify::Error,
    },
}

impl TlsError {
    /// A short stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            TlsError::Read { .. } => "read",
            TlsError::NoCertificate { .. } => "no_certificate",
            TlsError::BadKey { .. } => "bad_key",
            TlsError::BadPem { .. } => "bad_pem",
            TlsError::Pair { .. } => "key_mismatch",
            TlsError::ClientCa { .. } => "client_ca",
            TlsError::Config(_) => "config",
            TlsError::Watch { .. } => "watch",
        }
    }
}

/// Whether a listener with a client CA requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// A handshake without a certificate signed by the client CA fails.
    #[default]
    Required,
    /// A client may present no certificate; one it presents must verify.
    Optional,
}

/// The ring provider, used for every TLS configuration of the broker.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    // The error of the PEM parser names the section kind, never key bytes.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::BadKey {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Loads a certificate chain and its key and checks that they belong together.
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    CertifiedKey::from_der(chain, key_der, provider).map_err(|source| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

// === impl CertResolver ===

/// The server certificate of one or more listeners, replaced in place when its files change.
///
/// Handshakes read the current pair under a short read lock; a reload swaps the `Arc` under the
/// write lock. A connection keeps the pair it was established with.
#[derive(Debug)]
pub struct CertResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    /// The pair handed to new handshakes.
    current: RwLock<Arc<CertifiedKey>>,
    /// Identity of the files last loaded, to skip reloads when nothing changed.
    stamp: RwLock<Option<FileStamp>>,
    /// Counts successful reloads (0 = the pair loaded at start).
    generation: watch::Sender<u64>,
    /// Counts reloads that failed and kept the old pair.
    failures: watch::Sender<u64>,
}

/// What identifies the files' content without reading it: resolved path, size and mtime of each.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp(Vec<(PathBuf, u64, Option<SystemTime>)>);

impl FileStamp {
    fn read(paths: &[&Path]) -> Option<FileStamp> {
        let mut parts = Vec::with_capacity(paths.len());
        for path in paths {
            let resolved = fs::canonicalize(path).ok()?;
            let meta = fs::metadata(&resolved).ok()?;
            parts.push((resolved, meta.len(), meta.modified().ok()));
        }
        Some(FileStamp(parts))
    }
}

impl CertResolver {
    /// Loads the pair at start; an error here is fatal for the listener.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertResolver>, TlsError> {
        let provider = provider();
        let stamp = FileStamp::read(&[cert, key]);
        let pair = load_certified_key(cert, key, &provider)?;
        Ok(Arc::new(CertResolver {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            provider,
            current: RwLock::new(Arc::new(pair)),
            stamp: RwLock::new(stamp),
            generation: watch::Sender::new(0),
            failures: watch::Sender::new(0),
        }))
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Counts successful reloads; a receiver sees each change (tests and metrics wait on it).
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Counts reloads that failed and kept the previous pair.
    pub fn failures(&self) -> watch::Receiver<u64> {
        self.failures.subscribe()
    }

    /// Reloads the files. `Ok(true)` when a different certificate chain is now served, `Ok(false)`
    /// when the files hold the same chain; on error the previous pair stays in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let stamp = FileStamp::read(&[&self.cert_path, &self.key_path]);
        let loaded = match load_certified_key(&self.cert_path, &self.key_path, &self.provider) {
            Ok(pair) => pair,
            Err(e) => {
                self.failures.send_modify(|n| *n += 1);
                return Err(e);
            }
        };
        *self.stamp.write().unwrap_or_else(|p| p.into_inner()) = stamp;
        if self.current().cert == loaded.cert {
            return Ok(false);
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        self.generation.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// Reloads when the files' resolved targets, sizes or modification times changed since the
    /// last load (the polling fallback).
    fn reload_if_stale(&self) {
        let now = FileStamp::read(&[&self.cert_path, &self.key_path]);
        let known = self.stamp.read().unwrap_or_else(|p| p.into_inner()).clone();
        if now.is_some() && now != known {
            self.reload_logged("poll");
        }
    }

    fn reload_logged(&self, trigger: &'static str) {
        match self.reload() {
            Ok(true) => tracing::info!(
                cert = %self.cert_path.display(),
                trigger,
                "tls certificate reloaded"
            ),
            Ok(false) => {
                tracing::debug!(cert = %self.cert_path.display(), trigger, "tls certificate unchanged")
            }
            Err(e) => tracing::warn!(
                error = %e,
                reason = e.metric_label(),
                trigger,
                "tls certificate reload failed; keeping the previous certificate"
            ),
        }
    }

    /// Starts watching the directories of the certificate and key files, and checks the files'
    /// targets every `poll` as a fallback (for file systems without change notifications). When
    /// the directory watch cannot start (no inotify, its limits reached), the poll alone goes on
    /// and a warning says so. Must be called inside a tokio runtime; watching stops when the
    /// returned guard is dropped.
    pub fn watch(self: &Arc<Self>, poll: Duration) -> CertWatcher {
        self.watch_with(poll, true)
    }

    fn watch_with(self: &Arc<Self>, poll: Duration, directory_events: bool) -> CertWatcher {
        let wake = Arc::new(Notify::new());
        let watcher = if directory_events {
            match self.directory_watcher(Arc::clone(&wake)) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        poll_secs = poll.as_secs(),
                        "cannot watch the certificate directory; checking the files periodically instead"
                    );
                    None
                }
            }
        } else {
            None
        };
        let resolver = Arc::clone(self);
        let poll = poll.max(Duration::from_millis(100));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = wake.notified() => {
                        let r = Arc::clone(&resolver);
                        // File reads block: keep them off the runtime's worker threads.
                        let _ = tokio::task::spawn_blocking(move || r.reload_logged("event")).await;
                    }
                    _ = tick.tick() => {
                        let r = Arc::clone(&resolver);
                        let _ = tokio::task::spawn_blocking(move || r.reload_if_stale()).await;
                    }
                }
            }
        });
        CertWatcher {
            _watcher: watcher,
            task,
        }
    }

    fn directory_watcher(&self, wake: Arc<Notify>) -> Result<notify::RecommendedWatcher, TlsError> {
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Any event in the directory counts: the `..data` rename of a Secret volume names
                // neither file. Access events are skipped; reloads compare content anyway.
                if matches!(&event, Ok(e) if !e.kind.is_access()) {
                    wake.notify_one();
                }
            })
            .map_err(|source| TlsError::Watch {
                path: self.cert_path.clone(),
                source,
            })?;
        let mut dirs: Vec<PathBuf> = Vec::new();
        for file in [&self.cert_path, &self.key_path] {
            let dir = match file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            };
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        for dir in &dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|source| TlsError::Watch {
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(watcher)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Keeps a [`CertResolver`] watching its files; dropping it stops the watch.
#[derive(Debug)]
pub struct CertWatcher {
    _watcher: Option<notify::RecommendedWatcher>,
    task: JoinHandle<()>,
}

impl Drop for CertWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === server configuration ===

/// The TLS settings of one listener.
#[derive(Debug, Clone)]
pub struct TlsListenerConfig {
    /// The server certificate (shared by listeners that use the same files).
    pub resolver: Arc<CertResolver>,
    /// PEM bundle of the CAs that sign client certificates (mTLS); `None` asks for none.
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required when `client_ca` is set.
    pub client_auth: ClientAuth,
    /// ALPN protocols offered, in order of preference; `None` takes [`default_alpn`].
    pub alpn: Option<Vec<Vec<u8>>>,
}

/// The ALPN protocols a listener kind offers.
///
/// mqtts offers `mqtt`; a client that offers no ALPN is accepted, one that offers only other
/// protocols is refused with the `no_application_protocol` alert (RFC 7301 section 3.2). wss offers
/// `http/1.1`, and `mqtt` after it for clients that speak raw MQTT on the wss port.
pub fn default_alpn(kind: ListenerKind) -> Vec<Vec<u8>> {
    match kind {
        ListenerKind::Mqtts => vec![ALPN_MQTT.to_vec()],
        ListenerKind::Wss => vec![ALPN_HTTP11.to_vec(), ALPN_MQTT.to_vec()],
        ListenerKind::Mqtt | ListenerKind::Ws => Vec::new(),
    }
}

/// Builds the rustls configuration of a listener: TLS 1.3 and 1.2, the reloading certificate,
/// optional client certificate verification and the listener's ALPN protocols.
pub fn server_config(
    kind: ListenerKind,
    cfg: &TlsListenerConfig,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = match cfg.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|e| TlsError::ClientCa {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(cfg.resolver.clone());
    config.alpn_protocols = cfg.alpn.clone().unwrap_or_else(|| default_alpn(kind));
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Lays out `dir` as the kubelet does for a Secret volume and swaps `..data` atomically.
    fn secret_version(dir: &Path, stamp: &str, from: &Path) {
        let version = dir.join(stamp);
        fs::create_dir(&version).unwrap();
        fs::copy(from.join("server.pem"), version.join("tls.crt")).unwrap();
        fs::copy(from.join("server-key.pem"), version.join("tls.key")).unwrap();
        symlink(stamp, dir.join("..data_tmp")).unwrap();
        fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        if !dir.join("tls.crt").exists() {
            symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
            symlink("..data/tls.key", dir.join("tls.key")).unwrap();
        }
    }

    #[tokio::test]
    async fn the_periodic_check_alone_sees_a_data_symlink_swap() {
        let (a, b, volume) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        super::super::dev_tls::ensure(a.path(), &[]).unwrap();
        super::super::dev_tls::ensure(b.path(), &[]).unwrap();
        secret_version(volume.path(), "..v1", a.path());
        let resolver = CertResolver::load(
            &volume.path().join("tls.crt"),
            &volume.path().join("tls.key"),
        )
        .unwrap();
        let first = resolver.current().cert.clone();
        let _watch = resolver.watch_with(Duration::from_millis(100), false);
        let mut generation = resolver.generation();

        secret_version(volume.path(), "..v2", b.path());
        tokio::time::timeout(Duration::from_secs(10), generation.wait_for(|g| *g == 1))
            .await
            .expect("the poll reloads within 10 s")
            .unwrap();
        assert_ne!(resolver.current().cert, first);
        let expected = load_certs(&b.path().join("server.pem")).unwrap();
        assert_eq!(resolver.current().cert, expected);
    }
}
