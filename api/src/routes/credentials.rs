//! Credentials: `GET .../credentials` issues signed client tokens (both route sets).
//!
//! `number` 1–100, `type=TOKEN`, `topicAcl` (`#` or `{"pub":[...],"sub":[...]}`; required on
//! native routes, missing or empty means `#` on compatible ones), `clientid` (repeatable, one
//! token each; ULIDs otherwise), `expiration` (seconds, `-1`). The broker's `expiration` is a ceiling: a token
//! expires at the shorter of broker and request, and `-1` gives no `exp` only when the broker
//! has none (a deliberate difference from Cloudflare, where `-1` overrode the broker). Issuance
//! is recorded (jti, client id, kid, expiry), never the token; `GET .../credentials/issued` lists
//! those records (native only), newest first, with whether each `jti` is revoked. A token longer
//! than a broker accepts ([`MAX_TOKEN_LEN`], 4096 bytes) is never issued: the request is a 400.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use starling_token::{Claims, MAX_TOKEN_LEN, TopicAcl};

pub use starling_types::rest::{IssuedList, IssuedView};

use super::{Auth, Envelope, PathParams, QueryPairs, decode_cursor, encode_cursor};
use crate::error::{ApiError, Problem, Result};
use crate::keys::new_id;
use crate::state::AppState;
use crate::store::{IssuedCredential, Role};

/// Tokens per request, at most.
pub const MAX_NUMBER: u32 = 100;
/// Longest client id, in bytes (the broker's limit).
pub const MAX_CLIENT_ID: usize = 64;

type NoStore = [(header::HeaderName, &'static str); 1];
const NO_STORE: NoStore = [(header::CACHE_CONTROL, "no-store")];

fn parse_acl(raw: Option<&str>, compat: bool) -> Result<TopicAcl> {
    match raw.map(str::trim) {
        None | Some("") if compat => Ok(TopicAcl::All),
        None | Some("") => Err(ApiError::invalid(
            "`topicAcl` is required: `%23` for every topic, or {\"pub\":[filters],\"sub\":[filters]}",
        )),
        Some("#") => Ok(TopicAcl::All),
        Some(json) => serde_json::from_str::<TopicAcl>(json).map_err(|e| {
            ApiError::invalid(format!(
                "`topicAcl` must be \"#\" or {{\"pub\":[...],\"sub\":[...]}}: {e}"
            ))
        }),
    }
}

fn parse_client_ids(q: &QueryPairs) -> Result<Vec<String>> {
    let mut ids: Vec<String> = Vec::new();
    for id in q.all("clientid") {
        if id.is_empty() || id.len() > MAX_CLIENT_ID || id.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!(
                "`clientid` must be 1 to {MAX_CLIENT_ID} bytes without control characters"
            )));
        }
        if ids.iter().any(|x| x == id) {
            return Err(ApiError::invalid("`clientid` values must be distinct"));
        }
        ids.push(id.to_string());
    }
    Ok(ids)
}

/// How many tokens a request gets. Without `clientid`: `number` (default 1). With `clientid`
/// values: one token per id. A `number` smaller than their count is ignored, as Cloudflare
/// ignored the mismatch (its CLI always sends `number=1`); a larger one is refused, since the
/// extra tokens would have no client id to go to.
fn token_count(number: Option<u32>, ids: usize) -> Result<usize> {
    if ids > MAX_NUMBER as usize {
        return Err(ApiError::invalid(format!(
            "at most {MAX_NUMBER} `clientid` values"
        )));
    }
    match number {
        Some(n) if ids > 0 && n as usize > ids => Err(ApiError::invalid(format!(
            "`number` ({n}) is larger than the count of `clientid` values ({ids}): give one `clientid` per token, or leave `clientid` out for generated ids"
        ))),
        _ if ids > 0 => Ok(ids),
        n => Ok(n.unwrap_or(1) as usize),
    }
}

/// The `exp` of a token: the shorter of the broker's ceiling and the request.
pub(crate) fn token_exp(
    now: i64,
    broker_ceiling: Option<i64>,
    requested: Option<i64>,
) -> Option<i64> {
    let lifetime = match (broker_ceiling, requested) {
        (Some(b), Some(r)) => Some(b.min(r)),
        (Some(b), None) => Some(b),
        (None, r) => r,
    };
    lifetime.map(|l| now.saturating_add(l))
}

async fn issue(
    state: &AppState,
    auth: &Auth,
    ns: &str,
    name: &str,
    q: &QueryPairs,
    compat: bool,
) -> Result<BTreeMap<String, String>> {
    auth.require(Role::Write)?;
    match q.get("type") {
        None | Some("TOKEN") | Some("") => {}
        Some(_) => return Err(ApiError::invalid("`type` must be TOKEN")),
    }
    let acl = parse_acl(q.get("topicAcl"), compat)?;
    let client_ids = parse_client_ids(q)?;
    let number = q.number::<u32>("number", 1..=MAX_NUMBER)?;
    let count = token_count(number, client_ids.len())?;
    let requested = match q.get("expiration") {
        None | Some("") => None,
        Some(v) => {
            let n = v
                .parse::<i64>()
                .map_err(|_| ApiError::invalid("`expiration` must be whole seconds or -1"))?;
            super::brokers::parse_expiration("expiration", Some(n))?
        }
    };
    let broker = super::brokers::find(state, auth, ns, name).await?;
    let keys = state.store.list_keys(&broker.id).await?;
    let key = state
        .kek
        .open_current(&broker.id, &keys)?
        .ok_or_else(|| ApiError::conflict("the broker has no current signing key"))?;
    let now = state.clock.now_secs();
    let exp = token_exp(now, broker.expiration, requested);
    let mut tokens = BTreeMap::new();
    let mut issued = Vec::with_capacity(count);
    for i in 0..count {
        let sub = client_ids
            .get(i)
            .cloned()
            .unwrap_or_else(|| ulid::Ulid::new().to_string());
        let jti = new_id()?;
        let claims = Claims {
            sub: sub.clone(),
            jti: jti.clone(),
            iat: now,
            exp,
            nbf: None,
            topic_acl: acl.clone(),
        };
        let token = key.sign_claims(&claims);
        if token.len() > MAX_TOKEN_LEN {
            // The broker refuses a longer token (CONNACK 0x86): never issue one.
            return Err(ApiError::invalid(format!(
                "the token would be {} bytes, above the {MAX_TOKEN_LEN} bytes a broker accepts; \
                 use a shorter `topicAcl` (fewer or shorter filters, or a wildcard) or `clientid`",
                token.len()
            )));
        }
        tokens.insert(sub.clone(), token);
        issued.push(IssuedCredential {
            jti,
            client_id: sub,
            kid: key.kid().to_string(),
            issued_at: now,
            expires_at: exp,
        });
    }
    state.store.record_credentials(&broker.id, &issued).await?;
    state.metrics.tokens_issued.inc_by(count as u64);
    auth.audit(
        state,
        "credentials.issue",
        &format!("{}/{} x{count}", broker.namespace_name, broker.name),
    )
    .await;
    Ok(tokens)
}

/// Issue client tokens: `{clientId: jwt}`.
#[utoipa::path(get, path = "/namespaces/{namespace}/brokers/{broker}/credentials", tag = "credentials",
    params(
        ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo"),
        ("number" = Option<u32>, Query, description = "how many tokens (1–100, default 1); with `clientid` values one token per id, and a larger `number` is 400", minimum = 1, maximum = 100),
        ("type" = Option<String>, Query, description = "`TOKEN` (empty means the same)", pattern = "^(TOKEN)?$"),
        ("topicAcl" = String, Query, description = "`#` (URL-encoded `%23`) or `{\"pub\":[filters],\"sub\":[filters]}`", example = "#", min_length = 1),
        ("clientid" = Option<Vec<String>>, Query, description = "client ids (repeatable); ULIDs are generated otherwise"),
        ("expiration" = Option<i64>, Query, description = "seconds; `-1` for none (the broker's expiration stays a ceiling)", minimum = -1, maximum = 315360000),
    ),
    responses(
        (status = 200, description = "`{clientId: jwt}`", body = BTreeMap<String, String>, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "invalid request, or a token that would be longer than the 4096 bytes a broker accepts (a long `topicAcl` or `clientid`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such broker", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_issue(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((ns, b)): PathParams<(String, String)>,
    q: QueryPairs,
) -> Result<(NoStore, Json<BTreeMap<String, String>>)> {
    Ok((
        NO_STORE,
        Json(issue(&state, &auth, &ns, &b, &q, false).await?),
    ))
}

/// Issue client tokens (Cloudflare-compatible; a missing or empty `topicAcl` means `#`).
#[utoipa::path(get, path = "/namespaces/{namespace}/brokers/{broker}/credentials", tag = "compat",
    params(
        ("account" = String, Path, description = "account id", example = "00000000000000000000000000000001"),
        ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo"),
        ("number" = Option<u32>, Query, description = "how many tokens (1–100, default 1); with `clientid` values one token per id, and a larger `number` is 400", minimum = 1, maximum = 100),
        ("type" = Option<String>, Query, description = "`TOKEN` (empty means the same)", pattern = "^(TOKEN)?$"),
        ("topicAcl" = Option<String>, Query, description = "`#`, empty, or `{\"pub\":[filters],\"sub\":[filters]}`", example = "#"),
        ("clientid" = Option<Vec<String>>, Query, description = "client ids (repeatable)"),
        ("expiration" = Option<i64>, Query, description = "seconds; `-1` for none", minimum = -1, maximum = 315360000),
    ),
    responses(
        (status = 200, description = "`{clientId: jwt}`", body = Envelope<BTreeMap<String, String>>, headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "invalid request, or a token that would be longer than the 4096 bytes a broker accepts (a long `topicAcl` or `clientid`)", body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000) or role too low (10003)", body = super::EnvelopeError),
        (status = 404, description = "no such broker", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_issue(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((account, ns, b)): PathParams<(String, String, String)>,
    q: QueryPairs,
) -> Result<(NoStore, Envelope<BTreeMap<String, String>>)> {
    auth.check_account(&account)?;
    Ok((
        NO_STORE,
        Envelope::ok(issue(&state, &auth, &ns, &b, &q, true).await?),
    ))
}

// === issuance records ===

/// The `(issued_at, jti)` a cursor names, or 400.
fn issued_cursor(raw: Option<&str>) -> Result<Option<(i64, String)>> {
    let bad = || ApiError::invalid("`cursor` is not a cursor this api returned");
    match decode_cursor(raw)? {
        None => Ok(None),
        Some(c) => {
            let (at, jti) = c.split_once(':').ok_or_else(bad)?;
            Ok(Some((at.parse().map_err(|_| bad())?, jti.to_string())))
        }
    }
}

/// The tokens issued for a broker (their records: jti, client id, key, expiry, revoked), newest
/// first. Records leave with their token's expiry.
#[utoipa::path(get, path = "/namespaces/{namespace}/brokers/{broker}/credentials/issued", tag = "credentials",
    params(
        ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo"),
        ("limit" = Option<u32>, Query, description = "page size (1 to the configured maximum)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
        ("clientid" = Option<String>, Query, description = "only the tokens of this client id"),
    ),
    responses(
        (status = 200, description = "a page of issuance records", body = IssuedList),
        (status = 400, description = "invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such broker", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_issued(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((ns, b)): PathParams<(String, String)>,
    q: QueryPairs,
) -> Result<Json<IssuedList>> {
    auth.require(Role::Read)?;
    let limit = q
        .number::<u32>("limit", 1..=state.config.max_page_size)?
        .unwrap_or(state.config.max_page_size);
    let before = issued_cursor(q.get("cursor"))?;
    let client_id = q.get("clientid").filter(|c| !c.is_empty());
    let broker = super::brokers::find(&state, &auth, &ns, &b).await?;
    let page = state
        .store
        .list_issued(
            &broker.id,
            client_id,
            before.as_ref().map(|(at, jti)| (*at, jti.as_str())),
            limit,
        )
        .await?;
    Ok(Json(IssuedList {
        items: page
            .items
            .into_iter()
            .map(|r| IssuedView {
                jti: r.credential.jti,
                client_id: r.credential.client_id,
                kid: r.credential.kid,
                issued_at: r.credential.issued_at,
                expires_at: r.credential.expires_at,
                revoked: r.revoked,
            })
            .collect(),
        next_cursor: page.next_after.as_deref().map(encode_cursor),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_expiration_is_a_ceiling() {
        assert_eq!(token_exp(100, Some(60), Some(30)), Some(130));
        assert_eq!(token_exp(100, Some(60), Some(600)), Some(160));
        assert_eq!(
            token_exp(100, Some(60), None),
            Some(160),
            "-1 or absent keeps the ceiling"
        );
        assert_eq!(token_exp(100, None, None), None);
        assert_eq!(token_exp(100, None, Some(5)), Some(105));
    }

    #[test]
    fn client_ids_decide_the_count_unless_number_asks_for_more() {
        assert_eq!(token_count(None, 0).unwrap(), 1);
        assert_eq!(token_count(Some(7), 0).unwrap(), 7);
        assert_eq!(token_count(None, 3).unwrap(), 3);
        assert_eq!(
            token_count(Some(1), 3).unwrap(),
            3,
            "Cloudflare's CLI sends number=1"
        );
        assert_eq!(token_count(Some(3), 3).unwrap(), 3);
        assert!(token_count(Some(4), 3).is_err());
        assert!(token_count(None, 101).is_err());
    }

    #[test]
    fn acl_forms() {
        assert_eq!(parse_acl(None, true).unwrap(), TopicAcl::All);
        assert_eq!(parse_acl(Some(""), true).unwrap(), TopicAcl::All);
        assert!(parse_acl(None, false).is_err());
        assert_eq!(parse_acl(Some("#"), false).unwrap(), TopicAcl::All);
        assert!(matches!(
            parse_acl(Some(r#"{"pub":["a/+"]}"#), false).unwrap(),
            TopicAcl::Lists { .. }
        ));
        assert!(parse_acl(Some("a/b"), true).is_err());
    }
}
