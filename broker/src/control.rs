//! Managed mode: the broker follows the control plane's state feed for each tenant it serves.
//!
//! One task per tenant long-polls `GET {url}/internal/v1/brokers/{id}/state?since=V&wait=30s`
//! with the broker secret as a bearer token. A 200 carries the tenant's keys, revocations, limits
//! and hook settings with a version; it is applied to the [`Directory`] at once (which cuts
//! sessions whose token was revoked) and, with a data directory, written to
//! `DIR/state-{id}.json` so a restart during an outage of the api still serves. 304 means no
//! change; 410 means the broker was deleted: its clients are disconnected and its saved state
//! removed. Any failure keeps the last state and retries with exponential backoff and jitter.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde::{Deserialize, Serialize};
use starling_token::Jwks;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::directory::{Directory, TenantState};
use crate::http::Readiness;

/// How long one long-poll may wait at the api.
const WAIT_SECS: u64 = 30;
/// A state document larger than this is refused.
const MAX_STATE_BYTES: usize = 16 * 1024 * 1024;

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

/// The state document of the feed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedState {
    /// Increases with every change.
    pub version: u64,
    /// Public keys.
    pub jwks: Jwks,
    /// Live revocations.
    #[serde(default)]
    pub revocations: Vec<FeedRevocation>,
    /// Everything else (broker, limits, hook), kept as sent.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// A revoked token id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedRevocation {
    /// The token id.
    pub jti: String,
    /// When the token would expire anyway.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

impl FeedState {
    fn tenant_state(&self) -> TenantState {
        TenantState {
            jwks: self.jwks.clone(),
            revoked: self.revocations.iter().map(|r| r.jti.clone()).collect(),
            hook: None,
        }
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
            Ok(state) => match directory.apply(&t.broker_id, &state.tenant_state()) {
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

fn save(data_dir: &Path, broker_id: &str, body: &[u8]) {
    let path = state_path(data_dir, broker_id);
    let tmp = path.with_extension("tmp");
    let result = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = result {
        warn!(path = %path.display(), error = %e, "cannot save the state");
    }
}

/// Follows the feed of one tenant until `stop`.
pub async fn follow(
    tenant: ManagedTenant,
    directory: Arc<Directory>,
    readiness: Arc<Readiness>,
    data_dir: Option<PathBuf>,
    mut has_state: bool,
    stop: CancellationToken,
) {
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
        let outcome = tokio::select! {
            o = poll_once(&client, &tenant, secret.as_deref(), version) => o,
            _ = stop.cancelled() => return,
        };
        let retry_after = match outcome {
            Poll::State(state, body) => match directory.apply(id, &state.tenant_state()) {
                Ok(()) => {
                    if version != Some(state.version) {
                        info!(
                            broker_id = id,
                            version = state.version,
                            keys = state.jwks.keys.len(),
                            revoked = state.revocations.len(),
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
                    None
                }
                Err(e) => {
                    warn!(broker_id = id, error = %e, "state has unusable keys; keeping the last good state");
                    failures += 1;
                    Some(backoff(failures))
                }
            },
            Poll::Unchanged => {
                failures = 0;
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
                failures += 1;
                Some(backoff(failures))
            }
            Poll::Failed(why) => {
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
    State(FeedState, Bytes),
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
) -> Poll {
    let mut uri = format!(
        "{}/internal/v1/brokers/{}/state?wait={WAIT_SECS}s",
        tenant.url.trim_end_matches('/'),
        tenant.broker_id
    );
    if let Some(v) = since {
        uri.push_str(&format!("&since={v}"));
    }
    let mut req = http::Request::get(&uri);
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
                Ok(state) => Poll::State(state, body),
                Err(e) => Poll::Failed(format!("state is not valid: {e}")),
            }
        }
        304 => Poll::Unchanged,
        410 => Poll::Gone,
        401 | 403 => Poll::Unauthorized,
        other => Poll::Failed(format!("control plane answered {other}")),
    }
}
