//! Accounts, API tokens and the audit log.
//!
//! The bootstrap token (a system admin) creates accounts, each with a first admin token; an
//! admin manages its account's tokens. Tokens are random, shown once, stored as SHA-256.
//!
//! Account discovery: every token acts for exactly one account. `GET /v1/account` shows it with
//! the token; on the compatible routes `GET /client/v4/accounts`, `/accounts/{account}`,
//! `/memberships` and `/user/tokens/verify` answer in Cloudflare's shapes, enough for its CLI to
//! find the account without `CLOUDFLARE_ACCOUNT_ID`. `/client/v4/user` answers 403 with code
//! 9109, as Cloudflare did for a token without user details (its CLI's `whoami` reads that as
//! "no e-mail").

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{
    Auth, Body, Envelope, EnvelopeMessage, PathParams, QueryPairs, encode_cursor, page_params,
    rfc3339_micros,
};
use crate::error::{ApiError, ErrorKind, OrNotFound, Problem, Result, code};
use crate::keys::{hash_secret, new_id, new_secret};
use crate::state::AppState;
use crate::store::{Account, ApiTokenRecord, Role};
use starling_types::Secret;
pub use starling_types::rest::{
    AccountCreate, AccountCreated, AccountView, AuditView, CallerToken, TokenCreate, TokenCreated,
    TokenList, TokenView,
};

fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "`name` must be 1 to 200 characters without control characters",
        ));
    }
    Ok(())
}

/// Create an account with a first admin token (bootstrap token only).
#[utoipa::path(post, path = "/accounts", tag = "accounts", request_body = AccountCreate,
    responses(
        (status = 201, description = "created", body = AccountCreated),
        (status = 400, description = "invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not the bootstrap token", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "not sent as `Content-Type: application/json`", body = Problem, content_type = "application/problem+json"),
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
            admin_token: Secret::new(token),
        }),
    ))
}

/// The account's API tokens (admin).
#[utoipa::path(get, path = "/tokens", tag = "accounts",
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
#[utoipa::path(post, path = "/tokens", tag = "accounts", request_body = TokenCreate,
    responses(
        (status = 201, description = "created", body = TokenCreated),
        (status = 400, description = "invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "role too low", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "not sent as `Content-Type: application/json`", body = Problem, content_type = "application/problem+json"),
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
            token: Secret::new(token),
        }),
    ))
}

/// Delete an API token (admin).
#[utoipa::path(delete, path = "/tokens/{token_id}", tag = "accounts",
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
    state
        .store
        .delete_api_token(&auth.account_id, &id)
        .await
        .or_not_found("token")?;
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
#[utoipa::path(get, path = "/audit", tag = "accounts",
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

// === account discovery ===

/// An account in Cloudflare's shape.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompatAccount {
    /// Account id (32 lowercase hex characters).
    pub id: String,
    /// The name.
    pub name: String,
    /// Always `standard`.
    #[serde(rename = "type")]
    pub type_: String,
    /// RFC 3339 with microseconds.
    pub created_on: String,
}

/// A membership in Cloudflare's shape: the token's access to its one account.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Membership {
    /// The API token's id (a token is a member of exactly one account).
    pub id: String,
    /// Always `accepted`.
    pub status: String,
    /// The account.
    pub account: CompatAccount,
    /// The token's role (`read`, `write` or `admin`).
    pub roles: Vec<String>,
}

/// The outcome of `GET /client/v4/user/tokens/verify`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenStatus {
    /// The API token's id.
    pub id: String,
    /// Always `active` (API tokens do not expire; a deleted one fails authentication).
    pub status: String,
}

async fn caller_account(state: &AppState, auth: &Auth) -> Result<Account> {
    state
        .store
        .get_account(&auth.account_id)
        .await?
        .ok_or_else(|| ApiError::not_found("account"))
}

fn compat_account(account: Account) -> CompatAccount {
    CompatAccount {
        id: account.id,
        name: account.name,
        type_: "standard".into(),
        created_on: rfc3339_micros(account.created_at),
    }
}

/// `page` (from 1) and `per_page` (1 to 1000, default 20), as Cloudflare paged by number.
fn page_number(q: &QueryPairs) -> Result<(u32, u32)> {
    let page = q.number::<u32>("page", 1..=1_000_000)?.unwrap_or(1);
    let per_page = q.number::<u32>("per_page", 1..=1000)?.unwrap_or(20);
    Ok((page, per_page))
}

/// The one account of a token, as page `page` of a list.
fn one_item_page<T: Serialize>(item: T, page: u32, per_page: u32) -> Envelope<Vec<T>> {
    let items: Vec<T> = if page == 1 { vec![item] } else { Vec::new() };
    let count = items.len();
    Envelope::numbered_page(items, count, page, per_page, 1)
}

/// The token's account and the token itself (any role).
#[utoipa::path(get, path = "/account", tag = "accounts",
    responses(
        (status = 200, description = "the account this token acts for", body = AccountView),
        (status = 401, description = "no valid API token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn native_account(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<AccountView>> {
    let account = caller_account(&state, &auth).await?;
    Ok(Json(AccountView {
        id: account.id,
        name: account.name,
        created_on: rfc3339_micros(account.created_at),
        token: CallerToken {
            id: auth.token_id,
            name: auth.token_name,
            role: auth.role,
            created_on: rfc3339_micros(auth.token_created_at),
            bootstrap: auth.system,
        },
    }))
}

/// The accounts this token may act for (Cloudflare-compatible: exactly one).
#[utoipa::path(get, path = "/accounts", tag = "compat",
    params(
        ("page" = Option<u32>, Query, description = "page number, from 1", minimum = 1, maximum = 1000000),
        ("per_page" = Option<u32>, Query, description = "page size (default 20)", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "the token's account", body = Envelope<Vec<CompatAccount>>),
        (status = 400, description = "invalid query", body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000)", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_list_accounts(
    State(state): State<AppState>,
    auth: Auth,
    q: QueryPairs,
) -> Result<Envelope<Vec<CompatAccount>>> {
    let (page, per_page) = page_number(&q)?;
    let account = caller_account(&state, &auth).await?;
    Ok(one_item_page(compat_account(account), page, per_page))
}

/// One account (Cloudflare-compatible; another account is 404).
#[utoipa::path(get, path = "/accounts/{account}", tag = "compat",
    params(("account" = String, Path, description = "account id", example = "00000000000000000000000000000001")),
    responses(
        (status = 200, description = "the account", body = Envelope<CompatAccount>),
        (status = 400, description = "invalid path", body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000)", body = super::EnvelopeError),
        (status = 404, description = "not this token's account", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_get_account(
    State(state): State<AppState>,
    auth: Auth,
    PathParams(account): PathParams<String>,
) -> Result<Envelope<CompatAccount>> {
    auth.check_account(&account)?;
    Ok(Envelope::ok(compat_account(
        caller_account(&state, &auth).await?,
    )))
}

/// The token's memberships (Cloudflare-compatible: one, in its one account). Cloudflare's CLI
/// picks the account from here when `CLOUDFLARE_ACCOUNT_ID` is not set.
#[utoipa::path(get, path = "/memberships", tag = "compat",
    params(
        ("page" = Option<u32>, Query, description = "page number, from 1", minimum = 1, maximum = 1000000),
        ("per_page" = Option<u32>, Query, description = "page size (default 20)", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "the token's membership", body = Envelope<Vec<Membership>>),
        (status = 400, description = "invalid query", body = super::EnvelopeError),
        (status = 403, description = "authentication failed (10000)", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_memberships(
    State(state): State<AppState>,
    auth: Auth,
    q: QueryPairs,
) -> Result<Envelope<Vec<Membership>>> {
    let (page, per_page) = page_number(&q)?;
    let account = caller_account(&state, &auth).await?;
    let membership = Membership {
        id: auth.token_id.clone(),
        status: "accepted".into(),
        account: compat_account(account),
        roles: vec![auth.role.as_str().to_string()],
    };
    Ok(one_item_page(membership, page, per_page))
}

/// Whether the token is valid (Cloudflare-compatible).
#[utoipa::path(get, path = "/user/tokens/verify", tag = "compat",
    responses(
        (status = 200, description = "the token is valid and active", body = Envelope<TokenStatus>),
        (status = 403, description = "authentication failed (10000)", body = super::EnvelopeError),
    ),
    security(("bearer" = []), ("x_auth_key" = [])))]
pub async fn compat_verify_token(auth: Auth) -> Envelope<TokenStatus> {
    Envelope {
        messages: vec![EnvelopeMessage::new(
            code::UNAUTHENTICATED,
            "This API Token is valid and active",
        )],
        ..Envelope::ok(TokenStatus {
            id: auth.token_id,
            status: "active".into(),
        })
    }
}

/// `GET /client/v4/user`: API tokens here have no user details, so a valid token gets 403 with
/// Cloudflare's code 9109 (an invalid one 403 with 10000). Not in the OpenAPI document: it has
/// no successful answer.
pub async fn compat_user(_auth: Auth) -> ApiError {
    ApiError::new(
        ErrorKind::UnauthorizedResource,
        "Unauthorized to access requested resource",
    )
}
