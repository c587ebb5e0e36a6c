//! Brokers: list, create, get, patch, delete (both route sets), and the broker secret
//! (shown once on native create, rotated by `POST .../secret/rotate`).
//!
//! Operator-managed brokers (created with `managedBy`) refuse PATCH of the fields their custom
//! resource sets (`expiration`, `limits`, `on_publish`) and DELETE with 409, unless the request
//! carries `X-Starling-Managed-By: Broker/<k8s namespace>/<name>` naming the same resource.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
pub use starling_types::rest::{
    BrokerCreate, BrokerCreated, BrokerList, BrokerPatch, BrokerSecret, BrokerView,
    MAX_EXPIRATION_SECS, ManagedBy, OnPublish,
};
use starling_types::{LimitsSpec, Secret};

use super::{
    Auth, Body, Envelope, PathParams, QueryPairs, encode_cursor, page_params, rfc3339_micros,
    validate_description, validate_label,
};
use crate::error::{ApiError, OrNotFound, Problem, Result};
use crate::keys::{hash_secret, new_hook_key_record, new_id, new_key_record, new_secret};
use crate::state::AppState;
use crate::store::{Broker, KeyStatus, Role, StoreError};

pub use starling_types::rest::MANAGED_BY_HEADER;

/// Checks a `managedBy` value: `Broker` and two DNS names.
fn validate_managed_by(m: &ManagedBy) -> Result<()> {
    let dns = |s: &str, max: usize| {
        (1..=max).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if m.kind != "Broker" || !dns(&m.namespace, 63) || !dns(&m.name, 253) {
        return Err(ApiError::invalid(
            "managedBy must be {\"kind\":\"Broker\",\"namespace\":<Kubernetes namespace>,\"name\":<resource name>}",
        ));
    }
    Ok(())
}

// === operations ===

/// A broker's hostname, `<broker>.<namespace>.<domain>` in lowercase, as in its endpoint at
/// Cloudflare; also the `broker` field of its on-publish hook's messages.
pub fn hostname(broker: &str, namespace: &str, domain: &str) -> String {
    format!(
        "{}.{}.{}",
        broker.to_ascii_lowercase(),
        namespace.to_ascii_lowercase(),
        domain.to_ascii_lowercase()
    )
}

/// A broker as the API shows it. Its endpoints are, in order: what its managing Broker resource
/// advertises (so `kubectl get broker` and the api agree), the api's one shared endpoint
/// (`starling-dev`), or the form derived from the api's domain.
fn view(state: &AppState, b: Broker) -> BrokerView {
    BrokerView {
        ws_endpoint: match (&b.ws_endpoint, &state.config.ws_endpoint) {
            (Some(advertised), _) | (None, Some(advertised)) => advertised.clone(),
            (None, None) => format!(
                "wss://{}/mqtt",
                hostname(&b.name, &b.namespace_name, &state.config.domain)
            ),
        },
        endpoint: match (&b.endpoint, &state.config.endpoint) {
            (Some(advertised), _) | (None, Some(advertised)) => advertised.clone(),
            (None, None) => format!(
                "mqtts://{}:8883",
                hostname(&b.name, &b.namespace_name, &state.config.domain)
            ),
        },
        id: b.id,
        name: b.name,
        auth_type_snake: b.auth_type.clone(),
        auth_type: b.auth_type,
        description: b.description,
        created_on: rfc3339_micros(b.created_at),
        modified_on: rfc3339_micros(b.modified_at),
        expiration: b.expiration,
        on_publish: b.on_publish_url.map(|url| OnPublish { url: Some(url) }),
        limits: stored_limits(b.limits.as_deref()),
        managed_by: b.managed_by.as_deref().and_then(ManagedBy::parse),
    }
}

/// `expiration` in seconds: `None`/`-1` → none, 1..=10 years → that; else 400.
pub(crate) fn parse_expiration(field: &str, v: Option<i64>) -> Result<Option<i64>> {
    match v {
        None | Some(-1) => Ok(None),
        Some(n) if (1..=MAX_EXPIRATION_SECS).contains(&n) => Ok(Some(n)),
        Some(n) if n > 1_000_000_000_000 => Err(ApiError::invalid(format!(
            "`{field}` is in seconds; {n} only makes sense as nanoseconds (at most {MAX_EXPIRATION_SECS} s)"
        ))),
        Some(_) => Err(ApiError::invalid(format!(
            "`{field}` must be -1 (no expiry) or 1 to {MAX_EXPIRATION_SECS} seconds"
        ))),
    }
}

/// The longest advertised endpoint accepted.
const MAX_ENDPOINT_LEN: usize = 512;

/// An endpoint the managing resource advertises (`endpoint` or `wsEndpoint`): `null` or empty
/// means the derived one (`Ok(None)`); anything else must be a URL with one of `schemes`, a host,
/// no user part, no white space or control characters, and at most [`MAX_ENDPOINT_LEN`] bytes.
fn check_endpoint(field: &str, url: Option<&str>, schemes: &[&str]) -> Result<Option<String>> {
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let shown = || {
        schemes
            .iter()
            .map(|s| format!("{s}://"))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    if url.len() > MAX_ENDPOINT_LEN {
        return Err(ApiError::invalid(format!(
            "`{field}` is longer than {MAX_ENDPOINT_LEN} bytes"
        )));
    }
    let rest = schemes
        .iter()
        .find_map(|s| url.strip_prefix(s).and_then(|r| r.strip_prefix("://")));
    let authority = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    let host = authority.map(|a| a.rsplit_once(':').map_or(a, |(h, _)| h));
    if host.is_none_or(str::is_empty)
        || authority.is_some_and(|a| a.contains('@'))
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::invalid(format!(
            "`{field}` must be a {} URL with a host, such as {}://broker.example.com",
            shown(),
            schemes[0]
        )));
    }
    Ok(Some(url.to_owned()))
}

const MQTT_SCHEMES: [&str; 2] = ["mqtts", "mqtt"];
const WS_SCHEMES: [&str; 2] = ["wss", "ws"];

/// The longest hook URL accepted.
const MAX_HOOK_URL_LEN: usize = 2048;

/// `on_publish.url`: `null` or empty means no hook (`Ok(None)`); anything else must be an
/// absolute http(s) URL with a host (400 otherwise) and is returned to be stored. Whether the
/// broker may reach it (https only, no private addresses) is the broker's `[hook]` policy, checked
/// where the request is made.
fn check_hook(hook: Option<&OnPublish>) -> Result<Option<String>> {
    let Some(url) = hook
        .and_then(|h| h.url.as_deref())
        .filter(|u| !u.is_empty())
    else {
        return Ok(None);
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let authority = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    if authority.is_some_and(|a| a.contains('@')) {
        // Credentials in the URL would show in every response and log line that shows the URL;
        // the hook authenticates the broker by the request signature instead.
        return Err(ApiError::invalid(
            "`on_publish.url` must not contain credentials (user:password@); verify the X-Signature-Ed25519 header instead",
        ));
    }
    let host_ok = rest.zip(authority).is_some_and(|(r, a)| {
        !a.is_empty()
            && !a.starts_with(':')
            && !r.chars().any(|c| c.is_whitespace() || c.is_control())
    });
    if !host_ok || url.len() > MAX_HOOK_URL_LEN {
        return Err(ApiError::invalid(format!(
            "`on_publish.url` must be an absolute https:// (or http://) URL of at most {MAX_HOOK_URL_LEN} characters, or null"
        )));
    }
    Ok(Some(url.to_string()))
}

/// Checks limits a caller set and returns what to store: every value within its bounds, none of
/// the operator-only ones (400 naming them otherwise); no limits (`None`, `{}`) store nothing.
fn check_limits(limits: Option<&LimitsSpec>) -> Result<Option<String>> {
    let Some(spec) = limits.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let mut problems = spec.problems();
    let operator_only = spec.operator_only();
    if !operator_only.is_empty() {
        problems.push(format!(
            "{} only the broker's operator sets (in the broker's own configuration, `[limits]`)",
            operator_only.join(", ")
        ));
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(format!(
            "`limits`: {}",
            problems.join("; ")
        )));
    }
    serde_json::to_string(spec)
        .map(Some)
        .map_err(|e| ApiError::internal(&e))
}

/// The limits of a stored broker. Rows written before limits had a schema may hold keys that
/// are not limits: those are left out.
pub fn stored_limits(stored: Option<&str>) -> Option<LimitsSpec> {
    let value: serde_json::Value = serde_json::from_str(stored?).ok()?;
    let (spec, _) = LimitsSpec::lenient(&value);
    (!spec.is_empty()).then_some(spec)
}

/// The caller's broker, or 404.
pub(crate) async fn find(state: &AppState, auth: &Auth, ns: &str, name: &str) -> Result<Broker> {
    state
        .store
        .get_broker(&auth.account_id, ns, name)
        .await?
        .ok_or_else(|| ApiError::not_found("broker"))
}

async fn list(
    state: &AppState,
    auth: &Auth,
    ns: &str,
    q: &QueryPairs,
) -> Result<(Vec<BrokerView>, Option<String>)> {
    auth.require(Role::Read)?;
    let (limit, after) = page_params(q, state.config.max_page_size)?;
    let namespace = super::namespaces::find(state, auth, ns).await?;
    let page = state
        .store
        .list_brokers(&namespace.id, after.as_deref(), limit)
        .await?;
    Ok((
        page.items.into_iter().map(|b| view(state, b)).collect(),
        page.next_after.as_deref().map(encode_cursor),
    ))
}

async fn create(
    state: &AppState,
    auth: &Auth,
    ns: &str,
    body: BrokerCreate,
) -> Result<(BrokerView, Option<String>, bool)> {
    auth.require(Role::Write)?;
    validate_label("broker", &body.name)?;
    let description = body.description.unwrap_or_default();
    validate_description(&description)?;
    // Either spelling, or both, may be given; each one given must say TOKEN.
    if [&body.auth_type, &body.auth_type_snake]
        .into_iter()
        .flatten()
        .any(|t| t != "TOKEN")
    {
        return Err(ApiError::invalid(
            "`authType` (and `auth_type`) must be TOKEN",
        ));
    }
    let auth_type = "TOKEN".to_string();
    let expiration = parse_expiration("expiration", body.expiration)?;
    let on_publish_url = check_hook(body.on_publish.as_ref())?;
    let limits = check_limits(body.limits.as_ref())?;
    if let Some(m) = &body.managed_by {
        validate_managed_by(m)?;
    }
    let endpoint = check_endpoint("endpoint", body.endpoint.as_deref(), &MQTT_SCHEMES)?;
    let ws_endpoint = check_endpoint("wsEndpoint", body.ws_endpoint.as_deref(), &WS_SCHEMES)?;
    if body.managed_by.is_none() && (endpoint.is_some() || ws_endpoint.is_some()) {
        return Err(ApiError::invalid(
            "`endpoint` and `wsEndpoint` are set only with `managedBy`, by the operator for the brokers it manages; the api derives them for the others",
        ));
    }
    let namespace = super::namespaces::find(state, auth, ns).await?;
    let now = state.clock.now_micros();
    let id = new_id()?;
    let broker = Broker {
        id: id.clone(),
        account_id: auth.account_id.clone(),
        namespace_id: namespace.id.clone(),
        namespace_name: namespace.name.clone(),
        name: body.name,
        description,
        auth_type,
        expiration,
        on_publish_url,
        limits,
        managed_by: body.managed_by.as_ref().map(ManagedBy::marker),
        endpoint,
        ws_endpoint,
        version: 1,
        created_at: now,
        modified_at: now,
    };
    let keys = [
        new_key_record(&state.kek, &id, KeyStatus::Current, now)?,
        new_key_record(&state.kek, &id, KeyStatus::Next, now)?,
    ];
    let hook_key = new_hook_key_record(&state.kek, &id, now)?;
    let secret = new_secret("sbs_")?;
    match state
        .store
        .create_broker(&broker, &hash_secret(&secret), &keys, Some(&hook_key))
        .await
    {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => {
            // The operator registers idempotently: the same resource gets the existing broker.
            if let Some(marker) = &broker.managed_by {
                if let Some(existing) = state
                    .store
                    .get_broker(&auth.account_id, ns, &broker.name)
                    .await?
                {
                    if existing.managed_by.as_deref() == Some(marker.as_str()) {
                        return Ok((view(state, existing), None, false));
                    }
                }
            }
            return Err(ApiError::name_taken(format!(
                "a broker named {:?} already exists in namespace {:?}",
                broker.name, namespace.name
            )));
        }
        Err(StoreError::NotFound) => return Err(ApiError::not_found("namespace")),
        Err(e) => return Err(e.into()),
    }
    auth.audit(
        state,
        "broker.create",
        &format!("{}/{}", namespace.name, broker.name),
    )
    .await;
    let stored = state
        .store
        .get_broker_by_id(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("broker"))?;
    Ok((view(state, stored), Some(secret), true))
}

async fn get_one(state: &AppState, auth: &Auth, ns: &str, name: &str) -> Result<BrokerView> {
    auth.require(Role::Read)?;
    Ok(view(state, find(state, auth, ns, name).await?))
}

fn managed_refusal(b: &Broker, headers: &HeaderMap, what: &str) -> Result<()> {
    let Some(marker) = &b.managed_by else {
        return Ok(());
    };
    let sent = headers.get(MANAGED_BY_HEADER).and_then(|v| v.to_str().ok());
    if sent == Some(marker.as_str()) {
        return Ok(());
    }
    let resource = ManagedBy::parse(marker)
        .map(|m| format!("Kubernetes resource {} {}/{}", m.kind, m.namespace, m.name))
        .unwrap_or_else(|| marker.clone());
    Err(ApiError::conflict(format!(
        "broker {:?} is managed by {resource}; {what} it there (kubectl) instead of through the API",
        b.name
    )))
}

/// A DELETE that names a managing resource (the operator's) is refused for a broker that
/// resource does not manage: made through the API, or managed by another resource. The
/// operator deletes only what it registered.
fn operator_refusal(b: &Broker, headers: &HeaderMap) -> Result<()> {
    let Some(sent) = headers.get(MANAGED_BY_HEADER) else {
        return Ok(());
    };
    if b.managed_by.as_deref().map(str::as_bytes) == Some(sent.as_bytes()) {
        return Ok(());
    }
    Err(ApiError::conflict(format!(
        "broker {:?} is not managed by the resource named in {MANAGED_BY_HEADER}; it is left in place",
        b.name
    )))
}

async fn patch(
    state: &AppState,
    auth: &Auth,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    body: BrokerPatch,
) -> Result<BrokerView> {
    auth.require(Role::Write)?;
    if let Some(new_name) = &body.name {
        if !new_name.eq_ignore_ascii_case(name) {
            return Err(ApiError::invalid(format!(
                "brokers cannot be renamed: `name` {new_name:?} is not this broker's name {name:?}; leave `name` out, or create a new broker and move its clients"
            )));
        }
    }
    let mut b = find(state, auth, ns, name).await?;
    if body.expiration.is_some() || body.on_publish.is_some() || body.limits.is_some() {
        managed_refusal(&b, headers, "change expiration, limits and onPublish of")?;
    }
    if b.managed_by.is_none() {
        // A body read back from a GET carries the derived endpoints: those change nothing.
        let shown = view(state, b.clone());
        if body
            .endpoint
            .as_ref()
            .is_some_and(|e| e.as_ref() != Some(&shown.endpoint))
            || body
                .ws_endpoint
                .as_ref()
                .is_some_and(|e| e.as_ref() != Some(&shown.ws_endpoint))
        {
            return Err(ApiError::invalid(
                "`endpoint` and `wsEndpoint` are set only by the operator for the brokers it manages; the api derives them for this one",
            ));
        }
    } else {
        if body.endpoint.is_some() || body.ws_endpoint.is_some() {
            managed_refusal(&b, headers, "change endpoint and wsEndpoint of")?;
        }
        if let Some(e) = body.endpoint {
            b.endpoint = check_endpoint("endpoint", e.as_deref(), &MQTT_SCHEMES)?;
        }
        if let Some(e) = body.ws_endpoint {
            b.ws_endpoint = check_endpoint("wsEndpoint", e.as_deref(), &WS_SCHEMES)?;
        }
    }
    if let Some(d) = body.description {
        validate_description(&d)?;
        b.description = d;
    }
    if let Some(e) = body.expiration {
        b.expiration = parse_expiration("expiration", e)?;
    }
    if let Some(hook) = body.on_publish {
        b.on_publish_url = check_hook(hook.as_ref())?;
    }
    if let Some(limits) = body.limits {
        b.limits = check_limits(limits.as_ref())?;
    }
    let stored = state
        .store
        .update_broker(&b, state.clock.now_micros())
        .await
        .or_not_found("broker")?;
    auth.audit(
        state,
        "broker.update",
        &format!("{}/{}", stored.namespace_name, stored.name),
    )
    .await;
    Ok(view(state, stored))
}

async fn delete(
    state: &AppState,
    auth: &Auth,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
) -> Result<()> {
    auth.require(Role::Write)?;
    let b = find(state, auth, ns, name).await?;
    managed_refusal(&b, headers, "delete")?;
    operator_refusal(&b, headers)?;
    state
        .store
        .delete_broker(&b.id, state.clock.now_micros())
        .await
        .or_not_found("broker")?;
    state.stats.forget(&b.id);
    auth.audit(
        state,
        "broker.delete",
        &format!("{}/{}", b.namespace_name, b.name),
    )
    .await;
    Ok(())
}

const P400: &str = "invalid request";

// === native routes ===

/// List the brokers of a namespace.
#[utoipa::path(get, path = "/namespaces/{namespace}/brokers", tag = "brokers",
    params(
        ("namespace" = String, Path, description = "namespace name", example = "demo"),
        ("limit" = Option<u32>, Query, description = "page size", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "a page of brokers", body = BrokerList),
        (status = 400, description = P400, body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such namespace", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_list(
    State(state): State<AppState>,
    auth: Auth,
    PathParams(ns): PathParams<String>,
    q: QueryPairs,
) -> Result<Json<BrokerList>> {
    let (items, next_cursor) = list(&state, &auth, &ns, &q).await?;
    Ok(Json(BrokerList { items, next_cursor }))
}

/// Create a broker; the response carries its secret, shown only this once.
#[utoipa::path(post, path = "/namespaces/{namespace}/brokers", tag = "brokers",
    request_body(content = BrokerCreate, example = json!({"name": "native-example", "description": "created through /v1", "expiration": 3600})),
    params(("namespace" = String, Path, description = "namespace name", example = "demo")),
    responses(
        (status = 201, description = "created, with the broker secret", body = BrokerCreated),
        (status = 200, description = "the operator re-registered its existing broker (no secret)", body = BrokerCreated),
        (status = 400, description = P400, body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such namespace", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "name taken", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "not sent as `Content-Type: application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_create(
    State(state): State<AppState>,
    auth: Auth,
    PathParams(ns): PathParams<String>,
    Body(body): Body<BrokerCreate>,
) -> Result<(StatusCode, Json<BrokerCreated>)> {
    let (broker, secret, created) = create(&state, &auth, &ns, body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(BrokerCreated {
            broker,
            secret: secret.map(Secret::new),
        }),
    ))
}

/// Get a broker.
#[utoipa::path(get, path = "/namespaces/{namespace}/brokers/{broker}", tag = "brokers",
    params(("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo")),
    responses(
        (status = 200, description = "the broker", body = BrokerView),
        (status = 400, description = P400, body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such broker", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_get(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((ns, b)): PathParams<(String, String)>,
) -> Result<Json<BrokerView>> {
    Ok(Json(get_one(&state, &auth, &ns, &b).await?))
}

/// Change a broker's description, expiration, hook or limits.
#[utoipa::path(patch, path = "/namespaces/{namespace}/brokers/{broker}", tag = "brokers", request_body = BrokerPatch,
    params(
        ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo"),
        ("X-Starling-Managed-By" = Option<String>, Header, description = "`Broker/<k8s namespace>/<name>`: the operator changing its own broker"),
    ),
    responses(
        (status = 200, description = "the changed broker", body = BrokerView),
        (status = 400, description = P400, body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such broker", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "operator-managed field", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "not sent as `Content-Type: application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_patch(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((ns, b)): PathParams<(String, String)>,
    headers: HeaderMap,
    Body(body): Body<BrokerPatch>,
) -> Result<Json<BrokerView>> {
    Ok(Json(patch(&state, &auth, &ns, &b, &headers, body).await?))
}

/// Delete a broker (its pods get 410 Gone and disconnect its clients).
#[utoipa::path(delete, path = "/namespaces/{namespace}/brokers/{broker}", tag = "brokers",
    params(
        ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "doomed-native"),
        ("X-Starling-Managed-By" = Option<String>, Header, description = "`Broker/<k8s namespace>/<name>`: the operator deleting its own broker"),
    ),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = P400, body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such broker", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "operator-managed broker", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_delete(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((ns, b)): PathParams<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode> {
    delete(&state, &auth, &ns, &b, &headers).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace the broker secret; the new one is shown only in this response.
#[utoipa::path(post, path = "/namespaces/{namespace}/brokers/{broker}/secret/rotate", tag = "brokers",
    params(("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo")),
    responses(
        (status = 200, description = "the new secret", body = BrokerSecret),
        (status = 400, description = P400, body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such broker", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_rotate_secret(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((ns, b)): PathParams<(String, String)>,
) -> Result<(
    [(axum::http::HeaderName, &'static str); 1],
    Json<BrokerSecret>,
)> {
    auth.require(Role::Write)?;
    let broker = find(&state, &auth, &ns, &b).await?;
    let secret = new_secret("sbs_")?;
    state
        .store
        .set_broker_secret(&broker.id, &hash_secret(&secret))
        .await
        .or_not_found("broker")?;
    auth.audit(
        &state,
        "broker.secret.rotate",
        &format!("{}/{}", broker.namespace_name, broker.name),
    )
    .await;
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(BrokerSecret {
            secret: Secret::new(secret),
        }),
    ))
}

// === compatible routes ===

/// List brokers (Cloudflare-compatible).
#[utoipa::path(get, path = "/namespaces/{namespace}/brokers", tag = "compat",
    params(
        ("account" = String, Path, description = "account id", example = "00000000000000000000000000000001"), ("namespace" = String, Path, description = "namespace name", example = "demo"),
        ("per_page" = Option<u32>, Query, description = "page size", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`result_info.cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "brokers", body = Envelope<Vec<BrokerView>>),
        (status = 400, description = P400, body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000) or role too low (10003)", body = super::EnvelopeError),
        (status = 404, description = "no such namespace", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_list(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((account, ns)): PathParams<(String, String)>,
    q: QueryPairs,
) -> Result<Envelope<Vec<BrokerView>>> {
    auth.check_account(&account)?;
    let (items, cursor) = list(&state, &auth, &ns, &q).await?;
    let count = items.len();
    Ok(Envelope::page(items, count, cursor))
}

/// Create a broker (Cloudflare-compatible; a taken name is 400; no secret in the result).
#[utoipa::path(post, path = "/namespaces/{namespace}/brokers", tag = "compat", request_body = BrokerCreate,
    params(("account" = String, Path, description = "account id", example = "00000000000000000000000000000001"), ("namespace" = String, Path, description = "namespace name", example = "demo")),
    responses(
        (status = 200, description = "created", body = Envelope<BrokerView>),
        (status = 400, description = "invalid body or name taken", body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000) or role too low (10003)", body = super::EnvelopeError),
        (status = 404, description = "no such namespace", body = super::EnvelopeError),
        (status = 413, description = "body too large", body = super::EnvelopeError),
        (status = 422, description = "JSON of the wrong shape (the body is read as JSON whatever its Content-Type; not JSON is 400)", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_create(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((account, ns)): PathParams<(String, String)>,
    Body(body): Body<BrokerCreate>,
) -> Result<Envelope<BrokerView>> {
    auth.check_account(&account)?;
    let (broker, _secret, _) = create(&state, &auth, &ns, body).await?;
    Ok(Envelope::ok(broker))
}

/// Get a broker (Cloudflare-compatible).
#[utoipa::path(get, path = "/namespaces/{namespace}/brokers/{broker}", tag = "compat",
    params(("account" = String, Path, description = "account id", example = "00000000000000000000000000000001"), ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo")),
    responses(
        (status = 200, description = "the broker", body = Envelope<BrokerView>),
        (status = 400, description = P400, body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000) or role too low (10003)", body = super::EnvelopeError),
        (status = 404, description = "no such broker", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_get(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((account, ns, b)): PathParams<(String, String, String)>,
) -> Result<Envelope<BrokerView>> {
    auth.check_account(&account)?;
    Ok(Envelope::ok(get_one(&state, &auth, &ns, &b).await?))
}

/// Change a broker (Cloudflare-compatible).
#[utoipa::path(patch, path = "/namespaces/{namespace}/brokers/{broker}", tag = "compat", request_body = BrokerPatch,
    params(("account" = String, Path, description = "account id", example = "00000000000000000000000000000001"), ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "demo")),
    responses(
        (status = 200, description = "the changed broker", body = Envelope<BrokerView>),
        (status = 400, description = P400, body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000) or role too low (10003)", body = super::EnvelopeError),
        (status = 404, description = "no such broker", body = super::EnvelopeError),
        (status = 409, description = "operator-managed field", body = super::EnvelopeError),
        (status = 413, description = "body too large", body = super::EnvelopeError),
        (status = 422, description = "JSON of the wrong shape (the body is read as JSON whatever its Content-Type; not JSON is 400)", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_patch(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((account, ns, b)): PathParams<(String, String, String)>,
    headers: HeaderMap,
    Body(body): Body<BrokerPatch>,
) -> Result<Envelope<BrokerView>> {
    auth.check_account(&account)?;
    Ok(Envelope::ok(
        patch(&state, &auth, &ns, &b, &headers, body).await?,
    ))
}

/// Delete a broker (Cloudflare-compatible; result `null`).
#[utoipa::path(delete, path = "/namespaces/{namespace}/brokers/{broker}", tag = "compat",
    params(("account" = String, Path, description = "account id", example = "00000000000000000000000000000001"), ("namespace" = String, Path, description = "namespace name", example = "demo"), ("broker" = String, Path, description = "broker name", example = "doomed-compat")),
    responses(
        (status = 200, description = "deleted", body = Envelope<Option<String>>),
        (status = 400, description = P400, body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000) or role too low (10003)", body = super::EnvelopeError),
        (status = 404, description = "no such broker", body = super::EnvelopeError),
        (status = 409, description = "operator-managed broker", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_delete(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((account, ns, b)): PathParams<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Envelope<Option<()>>> {
    auth.check_account(&account)?;
    delete(&state, &auth, &ns, &b, &headers).await?;
    Ok(Envelope::ok(None))
}
