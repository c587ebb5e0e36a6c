//! The brokers' state feed: `GET /internal/v1/brokers/{id}/state?since=<version>&wait=<secs>s`,
//! authenticated by the broker secret (`Authorization: Bearer <secret>`).
//!
//! When the broker's version is above `since` (or `since` is absent) the state comes at once;
//! otherwise the request waits up to `wait` (at most `max_wait_secs`) for a change announced on
//! the store's feed and answers 304 when nothing changed. A deleted broker answers 410 Gone (so
//! its pods disconnect its clients); a wrong secret 401. The broker's managed mode is written
//! against exactly this contract.
//!
//! A broker with an on-publish hook also gets the private part of its current hook key
//! (`hookKey`), which signs the hook's requests and nothing else: `jwks`, the keys the broker
//! accepts for client tokens, never holds a hook key, so the broker secret cannot mint client
//! tokens. Without a hook the field is `null`, so private key material leaves the api only when
//! a broker needs it. The answer is marked `Cache-Control: no-store`.
//!
//! A poll may carry the broker's counters in `X-Starling-Broker-Stats` (see
//! [`crate::stats`]); they are recorded once the secret checked out, and a malformed value is
//! ignored (the poll is answered all the same).

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use starling_types::Secret;
use starling_types::feed::{FeedBroker, FeedHook, FeedRevocation, FeedSigningKey, FeedState};
use tokio::sync::broadcast::error::RecvError;
use tracing::warn;

use super::{PathParams, QueryPairs, bearer};
use crate::error::{ApiError, ErrorKind};
use crate::keys::{Kek, hash_secret, hashes_equal};
use crate::state::AppState;
use crate::store::BrokerState;

/// The current hook key of a broker that has a hook; `None` without a hook (private material
/// leaves the api only when the broker needs it). A key that does not open is logged and left
/// out: the broker then drops the tenant's messages rather than deliver them unchecked, and keys
/// and revocations still reach it.
fn hook_key(kek: &Kek, s: &BrokerState) -> Option<FeedSigningKey> {
    s.broker.on_publish_url.as_ref()?;
    match kek.open_hook_current(&s.broker.id, &s.hook_keys) {
        Ok(Some(key)) => Some(FeedSigningKey {
            kid: key.kid().to_string(),
            d: Secret::new(URL_SAFE_NO_PAD.encode(key.seed())),
        }),
        Ok(None) => {
            warn!(
                broker_id = s.broker.id.as_str(),
                "the broker has a hook but no current hook key"
            );
            None
        }
        Err(e) => {
            warn!(broker_id = s.broker.id.as_str(), error = %e, "the hook key did not open");
            None
        }
    }
}

fn view(kek: &Kek, domain: &str, s: BrokerState, now: i64) -> FeedState {
    let hook_key = hook_key(kek, &s);
    let hostname = super::brokers::hostname(&s.broker.name, &s.broker.namespace_name, domain);
    let limits = super::brokers::stored_limits(s.broker.limits.as_deref())
        .and_then(|spec| serde_json::to_value(spec).ok());
    FeedState {
        version: u64::try_from(s.broker.version).unwrap_or(0),
        broker: Some(FeedBroker {
            id: Some(s.broker.id),
            name: Some(s.broker.name),
            namespace: Some(s.broker.namespace_name),
            hostname: Some(hostname),
        }),
        jwks: super::keys::live(&s.keys, now),
        revocations: s
            .revocations
            .into_iter()
            .map(|r| FeedRevocation {
                jti: r.jti,
                expires_at: r.expires_at,
                kid: r.kid,
            })
            .collect(),
        limits,
        on_publish: s
            .broker
            .on_publish_url
            .map(|url| FeedHook { url: Some(url) }),
        hook_key,
    }
}

/// The broker secret from `Authorization: Bearer`.
pub struct BrokerSecret(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for BrokerSecret {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(BrokerSecret(bearer(parts).map(str::to_string)))
    }
}

fn parse_wait(raw: Option<&str>, max: u64) -> Result<Duration, ApiError> {
    let Some(raw) = raw.filter(|s| !s.is_empty()) else {
        return Ok(Duration::ZERO);
    };
    let digits = raw.strip_suffix('s').unwrap_or(raw);
    let secs: u64 = digits
        .parse()
        .map_err(|_| ApiError::invalid("`wait` must be whole seconds, like 30s"))?;
    Ok(Duration::from_secs(secs.min(max)))
}

fn gone() -> ApiError {
    ApiError::new(
        ErrorKind::Gone,
        "the broker was deleted; disconnect its clients",
    )
}

/// Records the counters a poll reports, if it carries a readable report.
fn record_stats(state: &AppState, broker_id: &str, headers: &axum::http::HeaderMap) {
    let Some(value) = headers.get(crate::stats::STATS_HEADER) else {
        return;
    };
    match value
        .to_str()
        .ok()
        .and_then(crate::stats::StatsReport::parse)
    {
        Some(report) => state.stats.record(
            broker_id,
            &report.instance,
            crate::stats::Sample::new(state.clock.now_micros() / 1000, &report),
        ),
        None => tracing::debug!(broker_id, "unreadable broker stats header ignored"),
    }
}

/// The broker's state (long-poll).
#[utoipa::path(get, path = "/internal/v1/brokers/{broker_id}/state", tag = "internal",
    params(
        ("broker_id" = String, Path, description = "broker id"),
        ("since" = Option<u64>, Query, description = "the version the caller has"),
        ("wait" = Option<String>, Query, description = "how long to wait for a change, like `30s` (at most 60 s)"),
        ("X-Starling-Broker-Stats" = Option<String>, Header, description = "the broker's counters: `instance=<id>; connections=N; messages_in=N; messages_out=N; dropped=N`"),
    ),
    responses(
        (status = 200, description = "the state (with the private part of the hook key when the broker has a hook)", body = FeedState, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 304, description = "no change within `wait`"),
        (status = 400, description = "invalid request", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "wrong or missing broker secret", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 410, description = "the broker was deleted", body = crate::error::Problem, content_type = "application/problem+json"),
    ),
    security(("broker_secret" = [])))]
pub async fn state(
    State(state): State<AppState>,
    PathParams(broker_id): PathParams<String>,
    BrokerSecret(secret): BrokerSecret,
    q: QueryPairs,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let unauthorized = || {
        ApiError::new(
            ErrorKind::Unauthenticated,
            "a valid broker secret is required",
        )
    };
    let secret = secret.ok_or_else(unauthorized)?;
    let since = match q.get("since") {
        None | Some("") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::invalid("`since` must be a version number"))?,
        ),
    };
    let wait = parse_wait(q.get("wait"), state.config.max_wait_secs)?;
    let (hash, deleted) = state
        .store
        .broker_secret_hash(&broker_id)
        .await?
        .ok_or_else(unauthorized)?;
    if !hashes_equal(&hash, &hash_secret(&secret)) {
        return Err(unauthorized());
    }
    if deleted {
        return Err(gone());
    }
    record_stats(&state, &broker_id, &headers);

    // Subscribe before the first read so that no change slips between read and wait.
    let mut feed = state.store.changes();
    let deadline = tokio::time::Instant::now() + wait;
    state.metrics.long_polls.inc();
    let result = async {
        loop {
            let now = state.clock.now_secs();
            let Some(current) = state.store.broker_state(&broker_id, now).await? else {
                return Err(gone());
            };
            let version = u64::try_from(current.broker.version).unwrap_or(0);
            if since.is_none_or(|s| version > s) {
                // The state may carry a private key: never cached.
                return Ok((
                    [(header::CACHE_CONTROL, "no-store")],
                    Json(view(&state.kek, &state.config.domain, current, now)),
                )
                    .into_response());
            }
            // Wait for an announcement about this broker (or a possible miss), or the deadline.
            loop {
                match tokio::time::timeout_at(deadline, feed.recv()).await {
                    Err(_) => return Ok(StatusCode::NOT_MODIFIED.into_response()),
                    Ok(Ok(id)) if &*id == broker_id.as_str() || &*id == "*" => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(RecvError::Lagged(_))) => break,
                    Ok(Err(RecvError::Closed)) => {
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                }
            }
        }
    }
    .await;
    state.metrics.long_polls.dec();
    result
}
