//! Managed mode: the broker follows the control plane's state feed for each tenant it serves.
//!
//! One task per tenant long-polls `GET {url}/internal/v1/brokers/{id}/state?since=V&wait=30s`
//! with the broker secret as a bearer token. A 200 carries the tenant's keys, revocations, limits
//! and hook settings with a version (with a hook, also the private part of the hook key, which
//! signs the hook's requests and never a client token); it is applied to the [`Directory`] at once (which cuts sessions whose token was
//! revoked, and applies the tenant's limits within the broker's own) and, with a data directory, written to `DIR/state-{id}.json` (mode 0600, as it may
//! hold that private key) so a restart during an outage of the api still serves. 304 means no
//! change; 410 means the broker was deleted: its clients are disconnected and its saved state
//! removed. Any failure keeps the last state and retries with exponential backoff and jitter.
//!
//! Every poll also reports the process's counters ([`StatsReport`]: connections, messages in and
//! out, drops; counts only) in the [`STATS_HEADER`] header, which the control plane keeps for its
//! health view.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde::{Deserialize, Serialize};
use starling_token::SigningKey;
use starling_types::LimitsSpec;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::directory::{Directory, TenantState};
use crate::hook::HookTarget;
use crate::http::Readiness;
use crate::metrics::Metrics;

/// How long one long-poll may wait at the api.
const WAIT_SECS: u64 = 30;
/// A state document larger than this is refused.
const MAX_STATE_BYTES: usize = 16 * 1024 * 1024;

pub use starling_types::feed::{STATS_HEADER, StatsReport};

/// One tenant served in managed mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ManagedTenant {
    /// The api's internal base URL, e.g. `http://starling-api-internal:8081`.
    pub url: String,
    /// The broker id in the api.
    pub broker_id: String,
    /// A file holding the broker secret (read again after a 401, so rotation needs no restart).
    pub secret_file: PathBuf,
}

pub use starling_types::feed::{FeedBroker, FeedHook, FeedRevocation, FeedSigningKey, FeedState};

/// Why a signing key from the state is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// `d` is not a base64url Ed25519 seed of 32 bytes, or the seed was refused.
    #[error("the signing key is unusable: {0}")]
    Key(#[from] starling_token::TokenError),
    /// The seed's key id is not the `kid` sent with it.
    #[error("the signing key's seed belongs to key {actual}, not to the {claimed} sent with it")]
    KidMismatch {
        /// The kid sent.
        claimed: String,
        /// The kid of the seed.
        actual: String,
    },
}

/// The signing key of a [`FeedSigningKey`], checked against its `kid`.
pub fn signing_key(k: &FeedSigningKey) -> Result<SigningKey, SigningKeyError> {
    let key = SigningKey::from_d(k.d.expose())?;
    if key.kid() != k.kid {
        return Err(SigningKeyError::KidMismatch {
            claimed: k.kid.clone(),
            actual: key.kid().to_string(),
        });
    }
    Ok(key)
}

/// What the broker makes of a [`FeedState`] (the type is `starling-types`', the reading is here).
pub trait FeedStateExt {
    /// What the directory needs of this state for tenant `broker_id`.
    fn tenant_state(&self, broker_id: &str) -> TenantState;
    /// The tenant's limits: every limit this broker knows, with a value of the right type; the
    /// rest is logged and left out.
    fn limits(&self, broker_id: &str) -> LimitsSpec;
    /// The hook of this state: `None` without a URL. A URL without a usable signing key gives a
    /// target without a key, whose messages are all dropped: never delivered unchecked.
    fn hook_target(&self, broker_id: &str) -> Option<HookTarget>;
}

impl FeedStateExt for FeedState {
    fn tenant_state(&self, broker_id: &str) -> TenantState {
        TenantState {
            jwks: self.jwks.clone(),
            revoked: self.revocations.iter().map(|r| r.jti.clone()).collect(),
            hook: self.hook_target(broker_id),
            limits: self.limits(broker_id),
        }
    }

    fn limits(&self, broker_id: &str) -> LimitsSpec {
        match &self.limits {
            None | Some(serde_json::Value::Null) => LimitsSpec::default(),
            Some(v) => {
                let (spec, skipped) = LimitsSpec::lenient(v);
                if !skipped.is_empty() {
                    warn!(
                        broker_id,
                        ?skipped,
                        "limits this broker does not know are left out"
                    );
                }
                spec
            }
        }
    }

    fn hook_target(&self, broker_id: &str) -> Option<HookTarget> {
        let url = self
            .on_publish
            .as_ref()?
            .url
            .as_deref()
            .filter(|u| !u.is_empty())?;
        let key = match &self.hook_key {
            Some(k) => match signing_key(k) {
                Ok(key) => Some(Arc::new(key)),
                Err(e) => {
                    warn!(broker_id, error = %e, "the hook key is unusable; the hook drops every message");
                    None
                }
            },
            None => {
                warn!(
                    broker_id,
                    "the state has a hook but no hook key; the hook drops every message"
                );
                None
            }
        };
        // The hostname; from an api that does not send one, the name, else the tenant id.
        let broker = self
            .broker
            .as_ref()
            .and_then(|b| b.hostname.clone().or_else(|| b.name.clone()))
            .unwrap_or_else(|| broker_id.to_string());
        Some(HookTarget {
            url: url.to_string(),
            key,
            broker,
        })
    }
}

type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

fn http_client() -> Result<HttpClient, std::io::Error> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(Arc::new(rustls::crypto::ring::default_provider()))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

fn state_path(dir: &Path, broker_id: &str) -> PathBuf {
    let safe: String = broker_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("state-{safe}.json"))
}

/// Loads the saved state of every tenant from `data_dir` into the directory. Returns the ids
/// that had one.
pub fn load_saved(
    directory: &Directory,
    tenants: &[ManagedTenant],
    data_dir: &Path,
) -> Vec<String> {
    let mut loaded = Vec::new();
    for t in tenants {
        let path = state_path(data_dir, &t.broker_id);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match serde_json::from_str::<FeedState>(&text) {
            Ok(state) => match directory.apply(&t.broker_id, &state.tenant_state(&t.broker_id)) {
                Ok(()) => {
                    info!(
                        broker_id = t.broker_id.as_str(),
                        version = state.version,
                        "serving the saved state until the control plane answers"
                    );
                    loaded.push(t.broker_id.clone());
                }
                Err(e) => {
                    warn!(broker_id = t.broker_id.as_str(), error = %e, "saved state has unusable keys")
                }
            },
            Err(e) => warn!(path = %path.display(), error = %e, "saved state unreadable"),
        }
    }
    loaded
}

/// Writes the state as it came. It holds the private part of the hook key when the broker has a
/// hook, so the file is created with mode 0600 (owner only); the rename keeps that mode, also
/// over a file an older version wrote more openly.
fn save(data_dir: &Path, broker_id: &str, body: &[u8]) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = state_path(data_dir, broker_id);
    let tmp = path.with_extension("tmp");
    // A leftover from an interrupted write may have another mode: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(body).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = result {
        warn!(path = %path.display(), error = %e, "cannot save the state");
    }
}

/// Follows the feed of one tenant until `stop`, reporting `metrics` with every poll.
pub async fn follow(
    tenant: ManagedTenant,
    directory: Arc<Directory>,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    data_dir: Option<PathBuf>,
    mut has_state: bool,
    stop: CancellationToken,
) {
    let instance = format!("{:016x}", rand::rng().random::<u64>());
    let client = match http_client() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot build the control-plane client");
            return;
        }
    };
    let mut version: Option<u64> = None;
    let mut secret = read_secret(&tenant.secret_file);
    let mut failures: u32 = 0;
    let id = tenant.broker_id.as_str();
    loop {
        let stats = StatsReport {
            instance: instance.clone(),
            ..metrics.summary()
        };
        let outcome = tokio::select! {
            o = poll_once(&client, &tenant, secret.as_deref(), version, &stats) => o,
            _ = stop.cancelled() => return,
        };
        let retry_after = match outcome {
            Poll::State(state, body) => match directory.apply(id, &state.tenant_state(id)) {
                Ok(()) => {
                    if version != Some(state.version) {
                        info!(
                            broker_id = id,
                            version = state.version,
                            keys = state.jwks.keys.len(),
                            revoked = state.revocations.len(),
                            hook = state.on_publish.as_ref().is_some_and(|h| h.url.is_some()),
                            "state from the control plane applied"
                        );
                    }
                    version = Some(state.version);
                    if let Some(dir) = &data_dir {
                        save(dir, id, &body);
                    }
                    if !has_state {
                        has_state = true;
                        readiness.state_arrived();
                    }
                    failures = 0;
                    metrics.control_plane_synced(id);
                    None
                }
                Err(e) => {
                    warn!(broker_id = id, error = %e, "state has unusable keys; keeping the last good state");
                    metrics.control_plane_failed(id);
                    failures += 1;
                    Some(backoff(failures))
                }
            },
            Poll::Unchanged => {
                failures = 0;
                metrics.control_plane_synced(id);
                None
            }
            Poll::Gone => {
                if directory.remove(id) {
                    warn!(
                        broker_id = id,
                        "the broker was deleted in the control plane; its clients are disconnected"
                    );
                }
                if let Some(dir) = &data_dir {
                    let _ = std::fs::remove_file(state_path(dir, id));
                }
                version = None;
                if !has_state {
                    has_state = true;
                    readiness.state_arrived();
                }
                Some(Duration::from_secs(60))
            }
            Poll::Unauthorized => {
                warn!(
                    broker_id = id,
                    "the control plane refused the broker secret"
                );
                secret = read_secret(&tenant.secret_file);
                metrics.control_plane_failed(id);
                failures += 1;
                Some(backoff(failures))
            }
            Poll::Failed(why) => {
                metrics.control_plane_failed(id);
                failures += 1;
                let wait = backoff(failures);
                warn!(
                    broker_id = id,
                    error = why.as_str(),
                    retry_in_ms = wait.as_millis() as u64,
                    "control plane unreachable; serving the last state"
                );
                Some(wait)
            }
        };
        if let Some(wait) = retry_after {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

fn read_secret(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Some(s.trim().to_string()),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the broker secret file");
            None
        }
    }
}

/// Exponential backoff from 250 ms to 10 s, with jitter in the upper half.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(250).saturating_mul(1u32 << failures.min(6));
    let capped = base.min(Duration::from_secs(10));
    let half = capped / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

enum Poll {
    State(Box<FeedState>, Bytes),
    Unchanged,
    Gone,
    Unauthorized,
    Failed(String),
}

async fn poll_once(
    client: &HttpClient,
    tenant: &ManagedTenant,
    secret: Option<&str>,
    since: Option<u64>,
    stats: &StatsReport,
) -> Poll {
    let mut uri = format!(
        "{}/internal/v1/brokers/{}/state?wait={WAIT_SECS}s",
        tenant.url.trim_end_matches('/'),
        tenant.broker_id
    );
    if let Some(v) = since {
        uri.push_str(&format!("&since={v}"));
    }
    let mut req = http::Request::get(&uri).header(STATS_HEADER, stats.to_header());
    if let Some(s) = secret {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {s}"));
    }
    let req = match req.body(Empty::<Bytes>::new()) {
        Ok(r) => r,
        Err(e) => return Poll::Failed(format!("bad control-plane URL: {e}")),
    };
    let response = match tokio::time::timeout(
        Duration::from_secs(WAIT_SECS + 15),
        client.request(req),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Poll::Failed(e.to_string()),
        Err(_) => return Poll::Failed("no answer in time".into()),
    };
    match response.status().as_u16() {
        200 => {
            let body = match Limited::new(response.into_body(), MAX_STATE_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => return Poll::Failed(format!("reading the state: {e}")),
            };
            match serde_json::from_slice::<FeedState>(&body) {
                Ok(state) => Poll::State(Box::new(state), body),
                Err(e) => Poll::Failed(format!("state is not valid: {e}")),
            }
        }
        304 => Poll::Unchanged,
        410 => Poll::Gone,
        401 | 403 => Poll::Unauthorized,
        other => Poll::Failed(format!("control plane answered {other}")),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use std::os::unix::fs::PermissionsExt as _;

    use serde_json::json;
    use starling_token::Verifier;

    use super::*;

    fn state(key: &SigningKey, extra: serde_json::Value) -> FeedState {
        let mut doc = json!({
            "version": 7,
            "broker": {"id": "b-1", "name": "sensors", "namespace": "home", "hostname": "sensors.home.example.com"},
            "jwks": {"keys": [key.public_jwk()]},
            "revocations": [{"jti": "j1", "expiresAt": null}],
            "limits": null,
            "onPublish": null,
            "hookKey": null,
        });
        for (k, v) in extra.as_object().unwrap() {
            doc[k] = v.clone();
        }
        serde_json::from_value(doc).unwrap()
    }

    fn private(key: &SigningKey) -> serde_json::Value {
        json!({"kid": key.kid(), "d": URL_SAFE_NO_PAD.encode(key.seed())})
    }

    #[test]
    fn hook_url_and_key_become_a_target_that_signs_for_the_published_kid() {
        let key = SigningKey::generate().unwrap();
        let s = state(
            &key,
            json!({"onPublish": {"url": "https://hook.example/in"}, "hookKey": private(&key)}),
        );
        let t = s.tenant_state("b-1");
        let hook = t.hook.expect("a hook");
        assert_eq!(hook.url, "https://hook.example/in");
        assert_eq!(
            hook.broker, "sensors.home.example.com",
            "the broker's hostname, not its id"
        );
        assert_eq!(hook.kid(), Some(key.kid()));
        let signer = hook.key.expect("a key");
        let signature = signer.sign_bytes(b"1700000000[]");
        Verifier::new(&t.jwks)
            .unwrap()
            .verify_bytes(key.kid(), b"1700000000[]", &signature)
            .expect("verifies with the public key of the same kid");
        assert!(t.revoked.contains("j1"));
    }

    #[test]
    fn no_url_means_no_hook_even_with_a_key() {
        let key = SigningKey::generate().unwrap();
        for extra in [
            json!({}),
            json!({"onPublish": null, "hookKey": private(&key)}),
            json!({"onPublish": {"url": null}}),
            json!({"onPublish": {"url": ""}, "hookKey": private(&key)}),
        ] {
            assert!(
                state(&key, extra.clone())
                    .tenant_state("b-1")
                    .hook
                    .is_none(),
                "{extra}"
            );
        }
    }

    #[test]
    fn a_url_without_a_usable_key_gives_a_target_without_a_key() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let url = json!({"url": "https://hook.example/in"});
        for signing_key in [
            serde_json::Value::Null,
            json!({"kid": key.kid(), "d": "not base64 !"}),
            json!({"kid": key.kid(), "d": URL_SAFE_NO_PAD.encode([1u8; 31])}),
            // The seed of another key under this key's kid.
            json!({"kid": key.kid(), "d": URL_SAFE_NO_PAD.encode(other.seed())}),
        ] {
            let s = state(&key, json!({"onPublish": url, "hookKey": signing_key}));
            let hook = s.tenant_state("b-1").hook.expect("still a hook");
            assert!(hook.key.is_none(), "{signing_key}");
            assert_eq!(hook.url, "https://hook.example/in");
        }
        // No hostname (an older api): the name stands in; no broker at all: the tenant id.
        let mut s = state(&key, json!({"onPublish": url}));
        s.broker.as_mut().unwrap().hostname = None;
        assert_eq!(s.tenant_state("b-1").hook.unwrap().broker, "sensors");
        s.broker = None;
        assert_eq!(s.tenant_state("b-1").hook.unwrap().broker, "b-1");
    }

    #[test]
    fn the_signing_key_seed_is_not_in_debug_output() {
        let key = SigningKey::generate().unwrap();
        let s = state(
            &key,
            json!({"onPublish": {"url": "https://h.example/"}, "hookKey": private(&key)}),
        );
        let seed = URL_SAFE_NO_PAD.encode(key.seed());
        assert!(!format!("{s:?}").contains(&seed));
        assert!(!format!("{:?}", s.tenant_state("b-1")).contains(&seed));
    }

    #[test]
    fn saved_state_is_owner_only_also_over_an_open_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path(), "b-1");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(path.with_extension("tmp"), b"leftover").unwrap();
        save(dir.path(), "b-1", br#"{"version":1}"#);
        assert_eq!(std::fs::read(&path).unwrap(), br#"{"version":1}"#);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!path.with_extension("tmp").exists());
    }
}
