//! Revocations: `POST|GET|DELETE .../revocations` with `jti` repeated or comma-separated.
//!
//! A revocation is kept, and sent to the brokers, while a broker could still accept its token:
//! until the token's `exp` plus the largest clock skew a broker accepts
//! ([`crate::store::REVOCATION_GRACE_SECS`]), and for a token without `exp` until the key that
//! signed it leaves the key set (after a rotation, at its `retire_at`); a `jti` this api did not
//! issue until every key the broker had when it was revoked is gone. At most `max_revocations`
//! are live per broker; beyond, the request is a 400 that says how to make room.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::{Auth, Envelope, PathParams, QueryPairs};
use crate::error::{ApiError, OrNotFound, Problem, Result};
use crate::state::AppState;
use crate::store::{Revocation, Role};

/// `jti` values per request, at most.
pub const MAX_JTIS_PER_REQUEST: usize = 1000;
/// Longest `jti`, in bytes.
pub const MAX_JTI_LEN: usize = 128;

fn jtis(q: &QueryPairs) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for value in q.all("jti") {
        for jti in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if jti.len() > MAX_JTI_LEN || jti.chars().any(char::is_control) {
                return Err(ApiError::invalid(format!(
                    "each `jti` must be 1 to {MAX_JTI_LEN} bytes without control characters"
                )));
            }
            if !out.iter().any(|x| x == jti) {
                out.push(jti.to_string());
            }
        }
    }
    if out.is_empty() {
        return Err(ApiError::invalid(
            "give at least one `jti` (repeated or comma-separated)",
        ));
    }
    if out.len() > MAX_JTIS_PER_REQUEST {
        return Err(ApiError::invalid(format!(
            "at most {MAX_JTIS_PER_REQUEST} `jti` values per request"
        )));
    }
    Ok(out)
}

async fn add(state: &AppState, auth: &Auth, ns: &str, b: &str, q: &QueryPairs) -> Result<()> {
    auth.require(Role::Write)?;
    let jtis = jtis(q)?;
    let broker = super::brokers::find(state, auth, ns, b).await?;
    state
        .store
        .add_revocations(
            &broker.id,
            &jtis,
            state.config.max_revocations,
            state.clock.now_secs(),
        )
        .await
        .or_not_found("broker")?;
    auth.audit(
        state,
        "revocations.add",
        &format!("{}/{} x{}", broker.namespace_name, broker.name, jtis.len()),
    )
    .await;
    Ok(())
}

async fn remove(state: &AppState, auth: &Auth, ns: &str, b: &str, q: &QueryPairs) -> Result<()> {
    auth.require(Role::Write)?;
    let jtis = jtis(q)?;
    let broker = super::brokers::find(state, auth, ns, b).await?;
    state
        .store
        .delete_revocations(&broker.id, &jtis)
        .await
        .or_not_found("broker")?;
    auth.audit(
        state,
        "revocations.delete",
        &format!("{}/{} x{}", broker.namespace_name, broker.name, jtis.len()),
    )
    .await;
    Ok(())
}

async fn list(state: &AppState, auth: &Auth, ns: &str, b: &str) -> Result<Vec<Revocation>> {
    auth.require(Role::Read)?;
    let broker = super::brokers::find(state, auth, ns, b).await?;
    Ok(state
        .store
        .list_revocations(&broker.id, state.clock.now_secs())
        .await?)
}

/// Live revocations with their tokens' expiry and signing key: each is kept until `expiresAt`
/// plus 300 s, or, without `expiresAt`, until the key `kid` is retired.
#[utoipa::path(get, path = "/namespaces/{namespace}/brokers/{broker}/revocations", tag = "revocations",
    params(("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo")),
    responses(
        (status = 200, description = "live revocations", body = Vec<Revocation>),
        (status = 400, description = "invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such broker", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_list(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((ns, b)): PathParams<(String, String)>,
) -> Result<Json<Vec<Revocation>>> {
    Ok(Json(list(&state, &auth, &ns, &b).await?))
}

/// Revoke tokens by `jti`.
///
/// Brokers cut the tokens' connections at once and refuse them from then on. A revocation is kept
/// while a broker could still accept its token: until the token's `exp` plus 300 s (the largest
/// clock skew a broker accepts), and for a token without `exp` until the key that signed it is
/// retired (rotate the keys with `POST .../keys/rotate`; the old key retires at `retireAt`). At
/// most `max_revocations` (10,000 by default) are live per broker: beyond that the request is a
/// 400 that revokes nothing and says how to make room (rotate the keys, lift revocations, or issue
/// tokens with an expiration).
#[utoipa::path(post, path = "/namespaces/{namespace}/brokers/{broker}/revocations", tag = "revocations",
    params(
        ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo"),
        ("jti" = Vec<String>, Query, description = "token ids, repeated or comma-separated", example = json!(["8f14e45fceea167a5a36dedd4bea2543"])),
    ),
    responses(
        (status = 204, description = "revoked"),
        (status = 400, description = "invalid request, or the broker's cap of live revocations (`max_revocations`) reached: nothing was revoked, and the detail says how to make room", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such broker", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_add(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((ns, b)): PathParams<(String, String)>,
    q: QueryPairs,
) -> Result<StatusCode> {
    add(&state, &auth, &ns, &b, &q).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lift revocations.
#[utoipa::path(delete, path = "/namespaces/{namespace}/brokers/{broker}/revocations", tag = "revocations",
    params(
        ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo"),
        ("jti" = Vec<String>, Query, description = "token ids, repeated or comma-separated", example = json!(["8f14e45fceea167a5a36dedd4bea2543"])),
    ),
    responses(
        (status = 204, description = "lifted"),
        (status = 400, description = "invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such broker", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_delete(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((ns, b)): PathParams<(String, String)>,
    q: QueryPairs,
) -> Result<StatusCode> {
    remove(&state, &auth, &ns, &b, &q).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revoked `jti`s (Cloudflare-compatible: a list of strings).
#[utoipa::path(get, path = "/namespaces/{namespace}/brokers/{broker}/revocations", tag = "compat",
    params(("account" = String, Path, description = "account id", example = "00000000000000000000000000000001"), ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo")),
    responses(
        (status = 200, description = "revoked jtis", body = Envelope<Vec<String>>),
        (status = 400, description = "invalid request", body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000) or role too low (10003)", body = super::EnvelopeError),
        (status = 404, description = "no such broker", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_list(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((account, ns, b)): PathParams<(String, String, String)>,
) -> Result<Envelope<Vec<String>>> {
    auth.check_account(&account)?;
    Ok(Envelope::ok(
        list(&state, &auth, &ns, &b)
            .await?
            .into_iter()
            .map(|r| r.jti)
            .collect(),
    ))
}

/// Revoke tokens (Cloudflare-compatible; result `null`).
///
/// A revocation is kept until the token's `exp` plus 300 s, and for a token without `exp` until
/// the key that signed it is retired; at most `max_revocations` are live per broker (beyond, a
/// 400 that revokes nothing and says how to make room).
#[utoipa::path(post, path = "/namespaces/{namespace}/brokers/{broker}/revocations", tag = "compat",
    params(
        ("account" = String, Path, description = "account id", example = "00000000000000000000000000000001"), ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo"),
        ("jti" = Vec<String>, Query, description = "token ids, repeated or comma-separated", example = json!(["8f14e45fceea167a5a36dedd4bea2543"])),
    ),
    responses(
        (status = 200, description = "revoked", body = Envelope<Option<String>>),
        (status = 400, description = "invalid request, or the broker's cap of live revocations (`max_revocations`) reached: nothing was revoked, and the message says how to make room", body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000) or role too low (10003)", body = super::EnvelopeError),
        (status = 404, description = "no such broker", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_add(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((account, ns, b)): PathParams<(String, String, String)>,
    q: QueryPairs,
) -> Result<Envelope<Option<()>>> {
    auth.check_account(&account)?;
    add(&state, &auth, &ns, &b, &q).await?;
    Ok(Envelope::ok(None))
}

/// Lift revocations (Cloudflare-compatible; result `null`).
#[utoipa::path(delete, path = "/namespaces/{namespace}/brokers/{broker}/revocations", tag = "compat",
    params(
        ("account" = String, Path, description = "account id", example = "00000000000000000000000000000001"), ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo"),
        ("jti" = Vec<String>, Query, description = "token ids, repeated or comma-separated", example = json!(["8f14e45fceea167a5a36dedd4bea2543"])),
    ),
    responses(
        (status = 200, description = "lifted", body = Envelope<Option<String>>),
        (status = 400, description = "invalid request", body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000) or role too low (10003)", body = super::EnvelopeError),
        (status = 404, description = "no such broker", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_delete(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((account, ns, b)): PathParams<(String, String, String)>,
    q: QueryPairs,
) -> Result<Envelope<Option<()>>> {
    auth.check_account(&account)?;
    remove(&state, &auth, &ns, &b, &q).await?;
    Ok(Envelope::ok(None))
}
