//! Accounts, API tokens and the audit log (native routes only).
//!
//! The bootstrap token (a system admin) creates accounts, each with a first admin token; an
//! admin manages its account's tokens. Tokens are random, shown once, stored as SHA-256.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{Auth, Body, PathParams, QueryPairs, encode_cursor, page_params, rfc3339_micros};
use crate::error::{ApiError, Problem, Result};
use crate::keys::{hash_secret, new_id, new_secret};
use crate::state::AppState;
use crate::store::{Account, ApiTokenRecord, Role, StoreError};

/// The body of an account creation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct AccountCreate {
    /// A human name.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
}

/// A new account with its first admin token (shown once).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountCreated {
    /// Account id (32 lowercase hex characters).
    pub id: String,
    /// The name.
    pub name: String,
    /// The admin token's id.
    pub admin_token_id: String,
    /// The admin API token; shown only here.
    pub admin_token: String,
}

/// The body of an API token creation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TokenCreate {
    /// A human name.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// `read`, `write` or `admin`.
    pub role: Role,
}

/// An API token (never the token itself, except once in [`TokenCreated`]).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    /// Token id.
    pub id: String,
    /// The name.
    pub name: String,
    /// The role.
    pub role: Role,
    /// RFC 3339.
    pub created_on: String,
}

/// A new API token (shown once).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenCreated {
    /// Token id.
    pub id: String,
    /// The name.
    pub name: String,
    /// The role.
    pub role: Role,
    /// The token; shown only here.
    pub token: String,
}

/// One audit log line.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditView {
    /// The API token id that made the change.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// RFC 3339 with microseconds.
    pub at: String,
}

fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "`name` must be 1 to 200 characters without control characters",
        ));
    }
    Ok(())
}

/// Create an account with a first admin token (bootstrap token only).
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = AccountCreate,
    responses(
        (status = 201, description = "created", body = AccountCreated),
        (status = 400, description = "invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not the bootstrap token", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create_account(
    State(state): State<AppState>,
    auth: Auth,
    Body(body): Body<AccountCreate>,
) -> Result<(StatusCode, Json<AccountCreated>)> {
    if !auth.system {
        return Err(ApiError::forbidden("bootstrap (system)"));
    }
    check_name(&body.name)?;
    let now = state.clock.now_micros();
    let account = Account {
        id: new_id()?,
        name: body.name.clone(),
        created_at: now,
    };
    state.store.create_account(&account).await?;
    let token = new_secret("sat_")?;
    let record = ApiTokenRecord {
        id: ulid::Ulid::new().to_string(),
        account_id: account.id.clone(),
        name: "admin".into(),
        role: Role::Admin,
        token_hash: hash_secret(&token),
        system: false,
        created_at: now,
    };
    state.store.put_api_token(&record, false).await?;
    auth.audit(&state, "account.create", &account.id).await;
    Ok((
        StatusCode::CREATED,
        Json(AccountCreated {
            id: account.id,
            name: account.name,
            admin_token_id: record.id,
            admin_token: token,
        }),
    ))
}

/// A page of API tokens.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenList {
    /// The tokens, by id (so by creation time).
    pub items: Vec<TokenView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The account's API tokens (admin).
#[utoipa::path(get, path = "/v1/tokens", tag = "accounts",
    params(
        ("limit" = Option<u32>, Query, description = "page size (1 to the configured maximum)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "a page of tokens", body = TokenList),
        (status = 400, description = "invalid query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list_tokens(
    State(state): State<AppState>,
    auth: Auth,
    q: QueryPairs,
) -> Result<Json<TokenList>> {
    auth.require(Role::Admin)?;
    let (limit, after) = page_params(&q, state.config.max_page_size)?;
    let page = state
        .store
        .list_api_tokens(&auth.account_id, after.as_deref(), limit)
        .await?;
    Ok(Json(TokenList {
        items: page
            .items
            .into_iter()
            .map(|t| TokenView {
                id: t.id,
                name: t.name,
                role: t.role,
                created_on: rfc3339_micros(t.created_at),
            })
            .collect(),
        next_cursor: page.next_after.as_deref().map(encode_cursor),
    }))
}

/// Create an API token (admin); the token is shown only in this response.
#[utoipa::path(post, path = "/v1/tokens", tag = "accounts", request_body = TokenCreate,
    responses(
        (status = 201, description = "created", body = TokenCreated),
        (status = 400, description = "invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create_token(
    State(state): State<AppState>,
    auth: Auth,
    Body(body): Body<TokenCreate>,
) -> Result<(StatusCode, Json<TokenCreated>)> {
    auth.require(Role::Admin)?;
    check_name(&body.name)?;
    let token = new_secret("sat_")?;
    let record = ApiTokenRecord {
        id: ulid::Ulid::new().to_string(),
        account_id: auth.account_id.clone(),
        name: body.name,
        role: body.role,
        token_hash: hash_secret(&token),
        system: false,
        created_at: state.clock.now_micros(),
    };
    state.store.put_api_token(&record, false).await?;
    auth.audit(&state, "token.create", &record.id).await;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id: record.id,
            name: record.name,
            role: record.role,
            token,
        }),
    ))
}

/// Delete an API token (admin).
#[utoipa::path(delete, path = "/v1/tokens/{token_id}", tag = "accounts",
    params(("token_id" = String, Path, description = "token id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such token in this account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the bootstrap token, which the api's configuration sets", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn delete_token(
    State(state): State<AppState>,
    auth: Auth,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode> {
    auth.require(Role::Admin)?;
    // The bootstrap token comes from the configuration and is stored again at every start, so
    // deleting it here would only lock the accounts route until the next restart.
    if is_system_token(&state, &auth.account_id, &id).await? {
        return Err(ApiError::conflict(
            "the bootstrap token is set by the api's configuration (STARLING_API__BOOTSTRAP_TOKEN or its file) and cannot be deleted here; change it there and restart",
        ));
    }
    match state.store.delete_api_token(&auth.account_id, &id).await {
        Err(StoreError::NotFound) => return Err(ApiError::not_found("token")),
        other => other?,
    }
    auth.audit(&state, "token.delete", &id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether the account's token with this id is the bootstrap token (walks the account's pages).
async fn is_system_token(state: &AppState, account_id: &str, id: &str) -> Result<bool> {
    let mut after: Option<String> = None;
    loop {
        let page = state
            .store
            .list_api_tokens(account_id, after.as_deref(), 1000)
            .await?;
        if page.items.iter().any(|t| t.id == id && t.system) {
            return Ok(true);
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(false),
        }
    }
}

/// The account's audit log, newest first (admin).
#[utoipa::path(get, path = "/v1/audit", tag = "accounts",
    params(("limit" = Option<u32>, Query, description = "how many lines", minimum = 1, maximum = 1000)),
    responses(
        (status = 200, description = "audit log", body = Vec<AuditView>),
        (status = 400, description = "invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list_audit(
    State(state): State<AppState>,
    auth: Auth,
    q: QueryPairs,
) -> Result<Json<Vec<AuditView>>> {
    auth.require(Role::Admin)?;
    let limit = q.number::<u32>("limit", 1..=1000)?.unwrap_or(100);
    let lines = state.store.list_audit(&auth.account_id, limit).await?;
    Ok(Json(
        lines
            .into_iter()
            .map(|e| AuditView {
                actor: e.actor,
                action: e.action,
                target: e.target,
                at: rfc3339_micros(e.at),
            })
            .collect(),
    ))
}
