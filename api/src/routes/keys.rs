//! Signing keys: `GET .../publickeys` (public parts only: the next, current and retiring keys
//! that sign client tokens, and the current and retiring hook keys that sign the on-publish
//! hook's requests, each with its own `kid`), `GET .../keys` (native only: the token keys with
//! their state and retire time) and `POST .../keys/rotate` (next → current, current → retiring
//! until `retire_at`; a new hook key, the old one retiring with the same `retire_at`).
//!
//! A hook key never signs a client token, and brokers never accept one for a client: the state
//! feed's key set leaves hook keys out, and the feed gives a broker with a hook only its current
//! hook key's private part. Whoever holds the broker secret can therefore sign hook requests,
//! never client tokens.

use axum::Json;
use axum::extract::State;
use starling_token::{Jwk, Jwks};
pub use starling_types::rest::{KeyList, KeyView, Rotation};

use super::{Auth, Envelope, PathParams, QueryPairs, rfc3339_micros};
use crate::error::{OrNotFound, Problem, Result};
use crate::keys::{new_hook_key_record, new_key_record};
use crate::state::AppState;
use crate::store::{KeyRecord, KeyStatus, Role};

/// The public JWK of a stored key.
pub(crate) fn jwk(k: &KeyRecord) -> Jwk {
    Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: k.x.clone(),
        kid: k.kid.clone(),
        alg: "EdDSA".into(),
        use_: "sig".into(),
    }
}

/// Keys that still verify at `now`.
pub fn live(keys: &[KeyRecord], now: i64) -> Jwks {
    Jwks {
        keys: keys
            .iter()
            .filter(|k| k.status != KeyStatus::Retiring || k.retire_at.is_some_and(|r| r > now))
            .map(jwk)
            .collect(),
    }
}

async fn public_keys(state: &AppState, auth: &Auth, ns: &str, b: &str) -> Result<Jwks> {
    auth.require(Role::Read)?;
    let broker = super::brokers::find(state, auth, ns, b).await?;
    let keys = state.store.list_keys(&broker.id).await?;
    let hook_keys = state.store.list_hook_keys(&broker.id).await?;
    let now = state.clock.now_secs();
    let mut jwks = live(&keys, now);
    jwks.keys.extend(live(&hook_keys, now).keys);
    Ok(jwks)
}

async fn rotate(
    state: &AppState,
    auth: &Auth,
    ns: &str,
    b: &str,
    q: &QueryPairs,
) -> Result<Rotation> {
    auth.require(Role::Write)?;
    let retire_after = q.number::<i64>(
        "retire_after",
        0..=crate::routes::brokers::MAX_EXPIRATION_SECS,
    )?;
    let broker = super::brokers::find(state, auth, ns, b).await?;
    let now = state.clock.now_secs();
    let after = retire_after.unwrap_or_else(|| {
        broker
            .expiration
            .unwrap_or(0)
            .max(state.config.min_retire_secs)
    });
    let retire_at = now.saturating_add(after);
    let new_next = new_key_record(
        &state.kek,
        &broker.id,
        KeyStatus::Next,
        state.clock.now_micros(),
    )?;
    let new_hook = new_hook_key_record(&state.kek, &broker.id, state.clock.now_micros())?;
    state
        .store
        .rotate_keys(&broker.id, &new_next, &new_hook, retire_at, now)
        .await
        .or_not_found("broker")?;
    auth.audit(
        state,
        "keys.rotate",
        &format!("{}/{}", broker.namespace_name, broker.name),
    )
    .await;
    let keys = state.store.list_keys(&broker.id).await?;
    let kid_of = |s: KeyStatus| {
        keys.iter()
            .filter(|k| k.status == s)
            .max_by_key(|k| k.retire_at)
            .map(|k| k.kid.clone())
    };
    let retiring = keys
        .iter()
        .find(|k| k.status == KeyStatus::Retiring && k.retire_at == Some(retire_at))
        .map(|k| k.kid.clone());
    let when = rfc3339_micros(retire_at.saturating_mul(1_000_000));
    Ok(Rotation {
        current_kid: kid_of(KeyStatus::Current).unwrap_or_default(),
        next_kid: kid_of(KeyStatus::Next).unwrap_or_default(),
        retiring_kid: retiring,
        hook_kid: new_hook.kid,
        retire_at,
        retire_at_rfc3339: when.clone(),
        message: format!(
            "new tokens are signed by the new current key now; the retiring key keeps verifying until {when} and is then removed, \
             so tokens signed by it (including tokens without exp) stop working then; the hook's requests are signed by a new hook key, \
             and the previous hook key stays in /publickeys until then"
        ),
    })
}

/// The broker's public keys, never a private part: the next, current and retiring keys that sign
/// client tokens, and the current and retiring keys that sign the on-publish hook's requests
/// (pick the one whose `kid` is the request's `X-Signature-Key-Id`). Brokers accept only the
/// first kind for client tokens.
#[utoipa::path(get, path = "/namespaces/{namespace}/brokers/{broker}/publickeys", tag = "keys",
    params(("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo")),
    responses(
        (status = 200, description = "JWKS", body = Jwks),
        (status = 400, description = "invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such broker", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_public_keys(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((ns, b)): PathParams<(String, String)>,
) -> Result<Json<Jwks>> {
    Ok(Json(public_keys(&state, &auth, &ns, &b).await?))
}

/// The broker's token keys with their state (next, current, retiring) and retire time; public
/// parts only (the hook key is in `/publickeys`).
#[utoipa::path(get, path = "/namespaces/{namespace}/brokers/{broker}/keys", tag = "keys",
    params(("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo")),
    responses(
        (status = 200, description = "the keys", body = KeyList),
        (status = 400, description = "invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such broker", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_keys(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((ns, b)): PathParams<(String, String)>,
) -> Result<Json<KeyList>> {
    auth.require(Role::Read)?;
    let broker = super::brokers::find(&state, &auth, &ns, &b).await?;
    let now = state.clock.now_secs();
    let keys = state.store.list_keys(&broker.id).await?;
    Ok(Json(KeyList {
        keys: keys
            .into_iter()
            .filter(|k| k.status != KeyStatus::Retiring || k.retire_at.is_some_and(|r| r > now))
            .map(|k| KeyView {
                status: k.status.as_str().to_string(),
                kid: k.kid,
                x: k.x,
                created_on: rfc3339_micros(k.created_at),
                retire_at: k.retire_at.filter(|_| k.status == KeyStatus::Retiring),
            })
            .collect(),
    }))
}

/// Rotate the broker's signing keys and its hook key.
///
/// The next key signs new tokens from now on; the current one keeps verifying until `retireAt`,
/// then goes, with every token it signed. A new hook key signs the hook's requests from now on;
/// the previous one stays in `/publickeys` until `retireAt`. Rotate after a broker secret or an
/// API token may have leaked: the hook key it could read stops signing.
#[utoipa::path(post, path = "/namespaces/{namespace}/brokers/{broker}/keys/rotate", tag = "keys",
    params(
        ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo"),
        ("retire_after" = Option<i64>, Query, description = "seconds the retiring key keeps verifying (default: the longer of the broker's expiration and 24 h)", minimum = 0, maximum = 315360000),
    ),
    responses(
        (status = 200, description = "rotated", body = Rotation),
        (status = 400, description = "invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such broker", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_rotate(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((ns, b)): PathParams<(String, String)>,
    q: QueryPairs,
) -> Result<Json<Rotation>> {
    Ok(Json(rotate(&state, &auth, &ns, &b, &q).await?))
}

/// The broker's public keys (Cloudflare-compatible).
#[utoipa::path(get, path = "/namespaces/{namespace}/brokers/{broker}/publickeys", tag = "compat",
    params(("account" = String, Path, description = "account id", example = "00000000000000000000000000000001"), ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo")),
    responses(
        (status = 200, description = "JWKS", body = Envelope<Jwks>),
        (status = 400, description = "invalid request", body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000) or role too low (10003)", body = super::EnvelopeError),
        (status = 404, description = "no such broker", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_public_keys(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((account, ns, b)): PathParams<(String, String, String)>,
) -> Result<Envelope<Jwks>> {
    auth.check_account(&account)?;
    Ok(Envelope::ok(public_keys(&state, &auth, &ns, &b).await?))
}

/// Rotate the broker's signing keys (Cloudflare-compatible route set).
#[utoipa::path(post, path = "/namespaces/{namespace}/brokers/{broker}/keys/rotate", tag = "compat",
    params(
        ("account" = String, Path, description = "account id", example = "00000000000000000000000000000001"), ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo"),
        ("retire_after" = Option<i64>, Query, description = "seconds the retiring key keeps verifying", minimum = 0, maximum = 315360000),
    ),
    responses(
        (status = 200, description = "rotated", body = Envelope<Rotation>),
        (status = 400, description = "invalid request", body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000) or role too low (10003)", body = super::EnvelopeError),
        (status = 404, description = "no such broker", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_rotate(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((account, ns, b)): PathParams<(String, String, String)>,
    q: QueryPairs,
) -> Result<Envelope<Rotation>> {
    auth.check_account(&account)?;
    Ok(Envelope::ok(rotate(&state, &auth, &ns, &b, &q).await?))
}
