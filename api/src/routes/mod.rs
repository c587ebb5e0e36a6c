//! The HTTP routes: native `/v1/...` (JSON, RFC 9457 problems), Cloudflare-compatible
//! `/client/v4/...` (pub/sub under `accounts/{account}/pubsub`, and account discovery; the v4
//! envelope on every answer) over the same operations, the health routes, `/openapi.json`, the
//! web console (`/console/`, see [`crate::console`]), and the internal listener's routes.
//!
//! One file per resource holds its operations and both route sets' handlers with their OpenAPI
//! annotations. Shared here: authentication, request extractors that turn rejections into
//! problems, the envelope and the compatible routes' conventions, name validation, times.

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use serde::de::DeserializeOwned;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorKind};
use crate::keys::hash_secret;
use crate::state::AppState;
use crate::store::{AuditEntry, Role};

pub mod accounts;
pub mod brokers;
pub mod credentials;
pub mod envelope;
pub mod health;
pub mod internal;
pub mod keys;
pub mod namespaces;
pub mod openapi;
pub mod revocations;
pub mod stats;

use envelope::compat_envelope;
pub use envelope::{CompatRequest, Envelope, EnvelopeError, EnvelopeMessage, ResultInfo};

/// Registers handlers with their OpenAPI operations: each handler's `#[utoipa::path]` gives
/// both its route (method and path, relative to where its router is nested) and its entry in the
/// document, so no route can be added without its entry.
type DocRouter = OpenApiRouter<AppState>;

/// Every documented route of the public listener (both route sets and the health routes), with
/// the document they make. The console, `/openapi.json` and `/client/v4/user` (no successful
/// answer) are added by [`app`] and are not in the document.
pub fn public_routes() -> DocRouter {
    let native = DocRouter::default()
        .routes(routes!(namespaces::native_list, namespaces::native_create))
        .routes(routes!(namespaces::native_get, namespaces::native_delete))
        .routes(routes!(brokers::native_list, brokers::native_create))
        .routes(routes!(
            brokers::native_get,
            brokers::native_patch,
            brokers::native_delete
        ))
        .routes(routes!(brokers::native_rotate_secret))
        .routes(routes!(credentials::native_issue))
        .routes(routes!(credentials::native_issued))
        .routes(routes!(stats::native_stats))
        .routes(routes!(keys::native_public_keys))
        .routes(routes!(keys::native_keys))
        .routes(routes!(keys::native_rotate))
        .routes(routes!(
            revocations::native_list,
            revocations::native_add,
            revocations::native_delete
        ))
        .routes(routes!(accounts::create_account))
        .routes(routes!(accounts::list_tokens, accounts::create_token))
        .routes(routes!(accounts::delete_token))
        .routes(routes!(accounts::list_audit))
        .routes(routes!(accounts::native_account));
    let pubsub = DocRouter::default()
        .routes(routes!(namespaces::compat_list, namespaces::compat_create))
        .routes(routes!(namespaces::compat_get, namespaces::compat_delete))
        .routes(routes!(brokers::compat_list, brokers::compat_create))
        .routes(routes!(
            brokers::compat_get,
            brokers::compat_patch,
            brokers::compat_delete
        ))
        .routes(routes!(credentials::compat_issue))
        .routes(routes!(keys::compat_public_keys))
        .routes(routes!(keys::compat_rotate))
        .routes(routes!(
            revocations::compat_list,
            revocations::compat_add,
            revocations::compat_delete
        ));
    // Everything under /client/v4 answers with the envelope, unknown routes included.
    let compat = DocRouter::default()
        .routes(routes!(accounts::compat_list_accounts))
        .routes(routes!(accounts::compat_get_account))
        .routes(routes!(accounts::compat_memberships))
        .routes(routes!(accounts::compat_verify_token))
        .route("/user", get(accounts::compat_user))
        .nest("/accounts/{account}/pubsub", compat_fallbacks(pubsub));
    let compat = compat_fallbacks(compat).layer(middleware::from_fn(compat_envelope));
    DocRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .nest("/v1", native)
        .nest("/client/v4", compat)
}

/// The compatible routes' answers to unknown paths and methods (a nested router keeps its own).
fn compat_fallbacks(router: DocRouter) -> DocRouter {
    let (router, doc) = router.split_for_parts();
    let mut router = DocRouter::from(
        router
            .fallback(compat_fallback)
            .method_not_allowed_fallback(method_not_allowed),
    );
    *router.get_openapi_mut() = doc;
    router
}

/// The public router: REST (both route sets), `/openapi.json`, `/healthz`, `/readyz`, and the
/// console.
pub fn app(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let (routes, mut doc) = public_routes().split_for_parts();
    openapi::finish(&mut doc);
    let doc = std::sync::Arc::new(doc);
    let compat_root =
        axum::routing::any(compat_fallback).layer(middleware::from_fn(compat_envelope));
    let console = if state.config.console {
        crate::console::router(&state.config)
    } else {
        Router::new()
    };
    routes
        .route("/openapi.json", get(move || openapi::serve(doc)))
        // The nested router does not see its own root.
        .route("/client/v4", compat_root.clone())
        .route("/client/v4/", compat_root)
        .merge(console)
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Every route of the internal listener that is in its document.
pub fn internal_routes() -> DocRouter {
    DocRouter::with_openapi(openapi::InternalDoc::openapi()).routes(routes!(internal::state))
}

/// The internal router: the brokers' state feed and `/metrics`. Never exposed by an Ingress.
pub fn internal_app(state: AppState) -> Router {
    let (routes, _) = internal_routes().split_for_parts();
    routes
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn fallback() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "no such route")
}

/// Unknown routes under `/client/v4`, as Cloudflare answered them.
async fn compat_fallback() -> ApiError {
    ApiError::new(ErrorKind::NoRoute, "No route for that URI")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        "method not allowed on this route",
    )
}

/// Counts requests and their latency.
async fn track(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    // Labels from fixed sets only: a made-up method is `OTHER`, whatever its name.
    let method = crate::metrics::method_label(req.method());
    let start = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .requests
        .get_or_create(&crate::metrics::RequestLabels {
            method,
            status: resp.status().as_u16(),
        })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&crate::metrics::MethodLabels { method })
        .observe(start.elapsed().as_secs_f64());
    resp
}

// === authentication ===

/// The caller, from `Authorization: Bearer <API token>` (or, on the compatible routes only,
/// `X-Auth-Key: <API token>`, with or without `X-Auth-Email`, as in Cloudflare's first examples).
#[derive(Debug, Clone)]
pub struct Auth {
    /// The API token's id (the audit log's actor).
    pub token_id: String,
    /// The API token's name.
    pub token_name: String,
    /// When the API token was made (unix microseconds).
    pub token_created_at: i64,
    /// The account the token acts for.
    pub account_id: String,
    /// What it may do.
    pub role: Role,
    /// The bootstrap token may also create accounts.
    pub system: bool,
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let compat = parts.extensions.get::<CompatRequest>().is_some();
        let token = bearer(parts)
            .or_else(|| compat.then(|| x_auth_key(parts)).flatten())
            .ok_or_else(ApiError::unauthenticated)?;
        let record = state
            .store
            .find_api_token(&hash_secret(token))
            .await?
            .ok_or_else(ApiError::unauthenticated)?;
        Ok(Auth {
            token_id: record.id,
            token_name: record.name,
            token_created_at: record.created_at,
            account_id: record.account_id,
            role: record.role,
            system: record.system,
        })
    }
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The `X-Auth-Key` header, which Cloudflare's first examples sent (with `X-Auth-Email`, which
/// is not needed here: the key alone names the token).
fn x_auth_key(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get("x-auth-key")?
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

impl Auth {
    /// Refuses callers below `role` (403).
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(role.as_str()))
        }
    }

    /// On compatible routes the path names the account: another account's path is 404.
    pub fn check_account(&self, account: &str) -> Result<(), ApiError> {
        if self.account_id == account.to_ascii_lowercase() {
            Ok(())
        } else {
            Err(ApiError::not_found("account"))
        }
    }

    /// Appends to the audit log; a failure to write it is logged, not returned (the change
    /// itself is done).
    pub async fn audit(&self, state: &AppState, action: &str, target: &str) {
        let entry = AuditEntry {
            id: ulid::Ulid::new().to_string(),
            account_id: self.account_id.clone(),
            actor: self.token_id.clone(),
            action: action.to_string(),
            target: target.to_string(),
            at: state.clock.now_micros(),
        };
        if let Err(e) = state.store.audit(&entry).await {
            tracing::error!(error = %e, action, target, "audit log write failed");
        }
    }
}

// === extractors ===

/// A JSON body whose rejections become problems: 400 (not JSON), 413 (too large), 415 (native
/// routes: not sent as `application/json`), 422 (JSON of the wrong shape). On the compatible
/// routes the body is read as JSON whatever its `Content-Type`, as Cloudflare's API did (its CLI
/// sends `text/plain;charset=UTF-8`, `curl -d` sends `application/x-www-form-urlencoded`).
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if req.extensions().get::<CompatRequest>().is_none() {
            check_json_content_type(req.headers())?;
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        ErrorKind::TooLarge,
                        "the request body is larger than this api accepts (max_body_bytes)",
                    )
                } else {
                    ApiError::invalid(rejection.body_text())
                }
            })?;
        parse_json(&bytes).map(Body)
    }
}

/// Native routes take `application/json` (or another `application/*+json`); anything else is
/// 415 naming what to send.
fn check_json_content_type(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let essence = value
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        return Ok(());
    }
    let got = match value {
        Some(v) if v.len() <= 100 => format!("`{v}`"),
        Some(_) => "a longer one".to_string(),
        None => "none".to_string(),
    };
    Err(ApiError::new(
        ErrorKind::UnsupportedMediaType,
        format!(
            "the request body must be JSON sent with `Content-Type: application/json` (this request's Content-Type: {got})"
        ),
    ))
}

/// The body as a JSON object: 400 when it is not JSON (or empty), 422 when it is JSON of another
/// shape (serde would read an array into a struct's fields in order: that is refused too).
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Err(ApiError::invalid(
            "the request body is empty; send a JSON object",
        ));
    };
    let not_json =
        |e: serde_json::Error| ApiError::invalid(format!("the request body is not JSON: {e}"));
    if *first != b'{' {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(not_json)?;
        return Err(ApiError::new(
            ErrorKind::Unprocessable,
            "the request body must be a JSON object",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(
            ErrorKind::Unprocessable,
            format!("the JSON body does not have the expected shape: {e}"),
        ),
        _ => not_json(e),
    })
}

/// Path parameters whose rejections become problems.
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|r| ApiError::invalid(r.body_text()))
    }
}

/// The query string as decoded pairs, keeping repeated keys. `+` stays `+` (topic filters use
/// it, and clients often send filters unencoded); `%2B` also decodes to `+`.
#[derive(Debug, Default)]
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(q) = parts.uri.query() else {
            return Ok(QueryPairs::default());
        };
        let mut pairs = Vec::new();
        for item in q.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            let k = percent_decode(k).ok_or_else(|| {
                ApiError::invalid("query string is not valid percent-encoded UTF-8")
            })?;
            let v = percent_decode(v).ok_or_else(|| {
                ApiError::invalid("query string is not valid percent-encoded UTF-8")
            })?;
            pairs.push((k, v));
        }
        Ok(QueryPairs(pairs))
    }
}

impl QueryPairs {
    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key` parsed as a number in `range`, or 400 naming the key.
    pub fn number<T>(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<Option<T>, ApiError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.parse::<T>() {
                Ok(n) if range.contains(&n) => Ok(Some(n)),
                _ => Err(ApiError::invalid(format!(
                    "`{key}` must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ))),
            },
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// === shared validation and formatting ===

/// Checks an RFC 1035 label: 1–63 characters, letters, digits and `-`, starting with a letter and
/// not ending with `-` (compared case-insensitively).
pub fn validate_label(kind: &str, name: &str) -> Result<(), ApiError> {
    let ok = (1..=63).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{kind} name must be an RFC 1035 label: 1 to 63 letters, digits or '-', starting with a letter and not ending with '-'"
        )))
    }
}

/// Checks a free-text description (at most 1024 characters, no control characters).
pub fn validate_description(text: &str) -> Result<(), ApiError> {
    if text.chars().count() > 1024
        || text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ApiError::invalid(
            "description must be at most 1024 characters without control characters",
        ));
    }
    Ok(())
}

/// RFC 3339 with microseconds and `Z`, as Cloudflare wrote times.
pub fn rfc3339_micros(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            frac
        ),
        Err(_) => "1970-01-01T00:00:00.000000Z".into(),
    }
}

/// Encodes a list cursor (the last lowercase name of a page).
pub fn encode_cursor(after: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(after)
}

/// Decodes a list cursor, or 400.
pub fn decode_cursor(cursor: Option<&str>) -> Result<Option<String>, ApiError> {
    use base64::Engine as _;
    match cursor {
        None | Some("") => Ok(None),
        Some(c) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .map(Some)
            .ok_or_else(|| ApiError::invalid("`cursor` is not a cursor this api returned")),
    }
}

/// `limit` and `cursor` from the query (native) or `per_page` and `cursor` (compatible).
pub fn page_params(q: &QueryPairs, max: u32) -> Result<(u32, Option<String>), ApiError> {
    let limit = match q.number::<u32>("limit", 1..=max)? {
        Some(l) => l,
        None => q.number::<u32>("per_page", 1..=max)?.unwrap_or(max),
    };
    Ok((limit, decode_cursor(q.get("cursor"))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_rfc_1035() {
        for ok in ["a", "home", "a-1", "A1", &"a".repeat(63)] {
            assert!(validate_label("namespace", ok).is_ok(), "{ok}");
        }
        for bad in ["", "1a", "-a", "a-", "a_b", "a.b", &"a".repeat(64), "é"] {
            assert!(validate_label("namespace", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_have_microseconds_and_z() {
        assert_eq!(
            rfc3339_micros(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123456Z"
        );
    }

    #[test]
    fn percent_decoding_keeps_plus() {
        assert_eq!(percent_decode("a/+/%23").as_deref(), Some("a/+/#"));
        assert_eq!(percent_decode("%zz"), None);
    }
}
