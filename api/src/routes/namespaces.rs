//! Namespaces: list, create, get, delete (both route sets).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
pub use starling_types::rest::{NamespaceCreate, NamespaceList, NamespaceView};

use super::{
    Auth, Body, Envelope, PathParams, QueryPairs, encode_cursor, page_params, rfc3339_micros,
    validate_description, validate_label,
};
use crate::error::{ApiError, Problem, Result};
use crate::keys::new_id;
use crate::state::AppState;
use crate::store::{Namespace, Role, StoreError};

impl From<Namespace> for NamespaceView {
    fn from(n: Namespace) -> Self {
        Self {
            id: n.id,
            name: n.name,
            description: n.description,
            created_on: rfc3339_micros(n.created_at),
            modified_on: rfc3339_micros(n.modified_at),
        }
    }
}

// === operations ===

async fn list(
    state: &AppState,
    auth: &Auth,
    q: &QueryPairs,
) -> Result<(Vec<NamespaceView>, Option<String>)> {
    auth.require(Role::Read)?;
    let (limit, after) = page_params(q, state.config.max_page_size)?;
    let page = state
        .store
        .list_namespaces(&auth.account_id, after.as_deref(), limit)
        .await?;
    Ok((
        page.items.into_iter().map(NamespaceView::from).collect(),
        page.next_after.as_deref().map(encode_cursor),
    ))
}

async fn create(state: &AppState, auth: &Auth, body: NamespaceCreate) -> Result<NamespaceView> {
    auth.require(Role::Write)?;
    validate_label("namespace", &body.name)?;
    let description = body.description.unwrap_or_default();
    validate_description(&description)?;
    let now = state.clock.now_micros();
    let ns = Namespace {
        id: new_id()?,
        account_id: auth.account_id.clone(),
        name: body.name,
        description,
        created_at: now,
        modified_at: now,
    };
    match state.store.create_namespace(&ns).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::name_taken(format!(
                "the namespace name {:?} is taken",
                ns.name
            )));
        }
        Err(e) => return Err(e.into()),
    }
    auth.audit(state, "namespace.create", &ns.name).await;
    Ok(ns.into())
}

/// The caller's namespace, or 404.
pub(crate) async fn find(state: &AppState, auth: &Auth, name: &str) -> Result<Namespace> {
    state
        .store
        .get_namespace(&auth.account_id, name)
        .await?
        .ok_or_else(|| ApiError::not_found("namespace"))
}

async fn get_one(state: &AppState, auth: &Auth, name: &str) -> Result<NamespaceView> {
    auth.require(Role::Read)?;
    Ok(find(state, auth, name).await?.into())
}

async fn delete(state: &AppState, auth: &Auth, name: &str) -> Result<()> {
    auth.require(Role::Write)?;
    match state.store.delete_namespace(&auth.account_id, name).await {
        Ok(()) => {}
        Err(StoreError::NotFound) => return Err(ApiError::not_found("namespace")),
        Err(StoreError::NotEmpty) => {
            return Err(ApiError::conflict(
                "the namespace still has brokers; delete them first",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    auth.audit(state, "namespace.delete", name).await;
    Ok(())
}

// === native routes ===

/// List the account's namespaces.
#[utoipa::path(get, path = "/namespaces", tag = "namespaces",
    params(
        ("limit" = Option<u32>, Query, description = "page size (1 to the configured maximum)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "a page of namespaces", body = NamespaceList),
        (status = 400, description = "invalid query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_list(
    State(state): State<AppState>,
    auth: Auth,
    q: QueryPairs,
) -> Result<Json<NamespaceList>> {
    let (items, next_cursor) = list(&state, &auth, &q).await?;
    Ok(Json(NamespaceList { items, next_cursor }))
}

/// Create a namespace.
#[utoipa::path(post, path = "/namespaces", tag = "namespaces", request_body = NamespaceCreate,
    responses(
        (status = 201, description = "created", body = NamespaceView),
        (status = 400, description = "invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "name taken", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "not sent as `Content-Type: application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_create(
    State(state): State<AppState>,
    auth: Auth,
    Body(body): Body<NamespaceCreate>,
) -> Result<(StatusCode, Json<NamespaceView>)> {
    Ok((
        StatusCode::CREATED,
        Json(create(&state, &auth, body).await?),
    ))
}

/// Get a namespace.
#[utoipa::path(get, path = "/namespaces/{namespace}", tag = "namespaces",
    params(("namespace" = String, Path, description = "namespace name", example = "demo")),
    responses(
        (status = 200, description = "the namespace", body = NamespaceView),
        (status = 400, description = "invalid path", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such namespace in this account", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_get(
    State(state): State<AppState>,
    auth: Auth,
    PathParams(ns): PathParams<String>,
) -> Result<Json<NamespaceView>> {
    Ok(Json(get_one(&state, &auth, &ns).await?))
}

/// Delete a namespace (refused while it has brokers).
#[utoipa::path(delete, path = "/namespaces/{namespace}", tag = "namespaces",
    params(("namespace" = String, Path, description = "namespace name", example = "doomed-native")),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "invalid path", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such namespace in this account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the namespace still has brokers", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_delete(
    State(state): State<AppState>,
    auth: Auth,
    PathParams(ns): PathParams<String>,
) -> Result<StatusCode> {
    delete(&state, &auth, &ns).await?;
    Ok(StatusCode::NO_CONTENT)
}

// === compatible routes ===

/// List namespaces (Cloudflare-compatible).
#[utoipa::path(get, path = "/namespaces", tag = "compat",
    params(
        ("account" = String, Path, description = "account id", example = "00000000000000000000000000000001"),
        ("per_page" = Option<u32>, Query, description = "page size", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`result_info.cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "namespaces", body = Envelope<Vec<NamespaceView>>),
        (status = 400, description = "invalid request", body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000) or role too low (10003)", body = super::EnvelopeError),
        (status = 404, description = "not this token's account", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_list(
    State(state): State<AppState>,
    auth: Auth,
    PathParams(account): PathParams<String>,
    q: QueryPairs,
) -> Result<Envelope<Vec<NamespaceView>>> {
    auth.check_account(&account)?;
    let (items, cursor) = list(&state, &auth, &q).await?;
    let count = items.len();
    Ok(Envelope::page(items, count, cursor))
}

/// Create a namespace (Cloudflare-compatible; a taken name is 400).
#[utoipa::path(post, path = "/namespaces", tag = "compat", request_body = NamespaceCreate,
    params(("account" = String, Path, description = "account id", example = "00000000000000000000000000000001")),
    responses(
        (status = 200, description = "created", body = Envelope<NamespaceView>),
        (status = 400, description = "invalid body or name taken", body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000) or role too low (10003)", body = super::EnvelopeError),
        (status = 404, description = "not this token's account", body = super::EnvelopeError),
        (status = 413, description = "body too large", body = super::EnvelopeError),
        (status = 422, description = "JSON of the wrong shape (the body is read as JSON whatever its Content-Type; not JSON is 400)", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_create(
    State(state): State<AppState>,
    auth: Auth,
    PathParams(account): PathParams<String>,
    Body(body): Body<NamespaceCreate>,
) -> Result<Envelope<NamespaceView>> {
    auth.check_account(&account)?;
    Ok(Envelope::ok(create(&state, &auth, body).await?))
}

/// Get a namespace (Cloudflare-compatible).
#[utoipa::path(get, path = "/namespaces/{namespace}", tag = "compat",
    params(("account" = String, Path, description = "account id", example = "00000000000000000000000000000001"), ("namespace" = String, Path, description = "namespace name", example = "demo")),
    responses(
        (status = 200, description = "the namespace", body = Envelope<NamespaceView>),
        (status = 400, description = "invalid request", body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000) or role too low (10003)", body = super::EnvelopeError),
        (status = 404, description = "no such namespace", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_get(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((account, ns)): PathParams<(String, String)>,
) -> Result<Envelope<NamespaceView>> {
    auth.check_account(&account)?;
    Ok(Envelope::ok(get_one(&state, &auth, &ns).await?))
}

/// Delete a namespace (Cloudflare-compatible; result `null`).
#[utoipa::path(delete, path = "/namespaces/{namespace}", tag = "compat",
    params(("account" = String, Path, description = "account id", example = "00000000000000000000000000000001"), ("namespace" = String, Path, description = "namespace name", example = "doomed-compat")),
    responses(
        (status = 200, description = "deleted", body = Envelope<Option<String>>),
        (status = 400, description = "invalid request", body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000) or role too low (10003)", body = super::EnvelopeError),
        (status = 404, description = "no such namespace", body = super::EnvelopeError),
        (status = 409, description = "the namespace still has brokers", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_delete(
    State(state): State<AppState>,
    auth: Auth,
    PathParams((account, ns)): PathParams<(String, String)>,
) -> Result<Envelope<Option<()>>> {
    auth.check_account(&account)?;
    delete(&state, &auth, &ns).await?;
    Ok(Envelope::ok(None))
}
