//! The API's error type: RFC 9457 problem details with a stable numeric code.
//!
//! Every error renders as `application/problem+json`. The Cloudflare-compatible routes pass
//! through a layer ([`crate::routes::compat_envelope`]) that turns problems into the v4 envelope
//! (`success: false, errors: [{code, message}]`) with Cloudflare's conventions: name conflicts
//! become 400 and failed authentication 403 "Authentication error".
//! A 5xx is logged with its cause chain and never echoes it to the caller.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::keys::KeyError;
use crate::store::StoreError;

/// Stable error codes (the `code` member of problems, and `errors[].code` in the envelope). The
/// same condition has the same code on both route sets; `docs/cloudflare-compatibility.md` lists
/// them with their HTTP statuses.
pub mod code {
    /// No API token, or one this api does not know (Cloudflare's "Authentication error"; 401
    /// natively, 403 on the compatible routes, as Cloudflare answered).
    pub const UNAUTHENTICATED: u32 = 10_000;
    /// The request is malformed or a field is invalid.
    pub const INVALID: u32 = 10_001;
    /// Something failed on our side.
    pub const INTERNAL: u32 = 10_002;
    /// The token's role does not allow this.
    pub const FORBIDDEN: u32 = 10_003;
    /// No such object (in this account).
    pub const NOT_FOUND: u32 = 10_004;
    /// The name is taken (409 natively, 400 on compatible routes).
    pub const NAME_TAKEN: u32 = 10_005;
    /// The object is in a state that forbids the change (not empty, operator-managed).
    pub const CONFLICT: u32 = 10_006;
    /// A configured bound would be exceeded.
    pub const LIMIT: u32 = 10_007;
    /// The feature is not available yet.
    pub const NOT_IMPLEMENTED: u32 = 10_008;
    /// The request body is too large.
    pub const TOO_LARGE: u32 = 10_009;
    /// The method is not allowed on this path.
    pub const METHOD: u32 = 10_010;
    /// The body is not sent as JSON (native routes; the compatible ones read any body as JSON).
    pub const MEDIA_TYPE: u32 = 10_011;
    /// No route for this path under `/client/v4` (Cloudflare's "No route for that URI").
    pub const NO_ROUTE: u32 = 7_000;
    /// The token may not read this (Cloudflare's "Unauthorized to access requested resource",
    /// which its CLI expects from `/user` for a token without user details).
    pub const UNAUTHORIZED_RESOURCE: u32 = 9_109;
}

/// An API error: status, stable code, and a message safe to show the caller.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code from [`code`].
    pub code: u32,
    /// A message for the caller; never contains secrets or internal causes.
    pub detail: String,
}

/// `Result` with [`ApiError`].
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: u32, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
        }
    }

    /// 400 with [`code::INVALID`].
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::INVALID, detail)
    }

    /// 404 with [`code::NOT_FOUND`].
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            format!("{what} not found"),
        )
    }

    /// 409 with [`code::CONFLICT`].
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code::CONFLICT, detail)
    }

    /// 409 with [`code::NAME_TAKEN`] (400 on compatible routes).
    pub fn name_taken(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code::NAME_TAKEN, detail)
    }

    /// 401 (403 on the compatible routes, whose layer changes it).
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            code::UNAUTHENTICATED,
            "a valid API token is required (Authorization: Bearer <token>)",
        )
    }

    /// 403.
    pub fn forbidden(needed: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            code::FORBIDDEN,
            format!("this API token's role does not allow this; it needs the {needed} role"),
        )
    }

    /// 500, logging the cause chain (never shown to the caller).
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = cause.to_string();
        let mut source = cause.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code::INTERNAL,
            "internal error",
        )
    }

    fn slug(&self) -> &'static str {
        match self.code {
            code::INVALID => "invalid-request",
            code::UNAUTHENTICATED => "unauthenticated",
            code::FORBIDDEN => "forbidden",
            code::NOT_FOUND => "not-found",
            code::NAME_TAKEN => "name-taken",
            code::CONFLICT => "conflict",
            code::LIMIT => "limit-exceeded",
            code::NOT_IMPLEMENTED => "not-implemented",
            code::TOO_LARGE => "too-large",
            code::METHOD => "method-not-allowed",
            code::MEDIA_TYPE => "unsupported-media-type",
            code::NO_ROUTE => "no-route",
            code::UNAUTHORIZED_RESOURCE => "unauthorized-resource",
            _ => "internal",
        }
    }
}

/// RFC 9457 problem details, plus the stable `code`.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Stable numeric code, the same for the same condition on both route sets: 10000
    /// authentication failed, 10001 invalid request, 10002 internal error, 10003 the token's role
    /// does not allow this, 10004 not found, 10005 name taken, 10006 conflicting state, 10007 a
    /// configured bound, 10008 not implemented, 10009 body too large, 10010 method not allowed,
    /// 10011 body not sent as JSON; under /client/v4 also 7000 (no such route) and 9109 (no user
    /// details behind an API token).
    pub code: u32,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            type_: format!("https://starling.dev/problems/{}", self.slug()),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("object"),
            StoreError::Conflict(what) => ApiError::conflict(what),
            StoreError::NotEmpty => {
                ApiError::conflict("the namespace still has brokers; delete them first")
            }
            StoreError::Limit(what) => ApiError::new(StatusCode::BAD_REQUEST, code::LIMIT, what),
            StoreError::RevocationCap(max) => ApiError::new(
                StatusCode::BAD_REQUEST,
                code::LIMIT,
                format!(
                    "the broker already has {max} live revocations, the most it may hold \
                     (max_revocations); nothing was revoked. A revocation is kept until its \
                     token's exp plus {grace} s, and for a token without exp until the key that \
                     signed it is retired. To make room: rotate the broker's keys (POST \
                     .../keys/rotate; revocations of tokens signed by the old key go when it \
                     retires, and so do those tokens), lift revocations no longer needed (DELETE \
                     .../revocations), or issue tokens with an expiration",
                    grace = crate::store::REVOCATION_GRACE_SECS
                ),
            ),
            other => ApiError::internal(&other),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        ApiError::internal(&e)
    }
}

/// A store result whose `NotFound` means one named object is missing.
pub trait OrNotFound<T> {
    /// `NotFound` becomes a 404 naming `what` (see [`ApiError::not_found`]); any other store
    /// error converts as usual.
    fn or_not_found(self, what: &str) -> Result<T>;
}

impl<T> OrNotFound<T> for std::result::Result<T, StoreError> {
    fn or_not_found(self, what: &str) -> Result<T> {
        match self {
            Err(StoreError::NotFound) => Err(ApiError::not_found(what)),
            other => Ok(other?),
        }
    }
}
