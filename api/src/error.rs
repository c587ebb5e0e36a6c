//! The API's error: an [`ErrorKind`] (HTTP status, stable numeric code, slug) and a detail.
//!
//! Every error renders as `application/problem+json` ([`Problem`], from `starling-types`). The
//! Cloudflare-compatible routes pass through a layer ([`crate::routes::envelope`]) that answers
//! with the v4 envelope built from the error value ([`ApiError::envelope`]: `success: false,
//! errors: [{code, message}]`) with Cloudflare's conventions: name conflicts become 400 and
//! failed authentication 403 "Authentication error".
//! A 5xx is logged with its cause chain and never echoes it to the caller.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
pub use starling_types::rest::Problem;

use crate::keys::KeyError;
use crate::routes::{EnvelopeError, EnvelopeMessage};
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

/// What kind of error: each kind has one HTTP status, one stable code from [`code`] and one
/// slug (the last segment of the problem's `type`). The compatible routes' envelope is built
/// from the kind too ([`ApiError::envelope`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 401, [`code::UNAUTHENTICATED`] (403 "Authentication error" on the compatible routes).
    Unauthenticated,
    /// 400, [`code::INVALID`]: malformed request or invalid field.
    Invalid,
    /// 422, [`code::INVALID`]: JSON of the wrong shape.
    Unprocessable,
    /// 500, [`code::INTERNAL`].
    Internal,
    /// 403, [`code::FORBIDDEN`]: the token's role does not allow this.
    Forbidden,
    /// 404, [`code::NOT_FOUND`].
    NotFound,
    /// 410, [`code::NOT_FOUND`]: the object was deleted (the state feed's deleted broker).
    Gone,
    /// 409, [`code::NAME_TAKEN`] (400 on the compatible routes).
    NameTaken,
    /// 409, [`code::CONFLICT`]: the object's state forbids the change.
    Conflict,
    /// 400, [`code::LIMIT`]: a configured bound would be exceeded.
    Limit,
    /// 501, [`code::NOT_IMPLEMENTED`].
    NotImplemented,
    /// 413, [`code::TOO_LARGE`].
    TooLarge,
    /// 405, [`code::METHOD`].
    MethodNotAllowed,
    /// 415, [`code::MEDIA_TYPE`].
    UnsupportedMediaType,
    /// 404, [`code::NO_ROUTE`]: no route under `/client/v4`.
    NoRoute,
    /// 403, [`code::UNAUTHORIZED_RESOURCE`].
    UnauthorizedResource,
}

impl ErrorKind {
    /// The HTTP status of the native answer.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::Invalid | ErrorKind::Limit => StatusCode::BAD_REQUEST,
            ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Forbidden | ErrorKind::UnauthorizedResource => StatusCode::FORBIDDEN,
            ErrorKind::NotFound | ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::Gone => StatusCode::GONE,
            ErrorKind::NameTaken | ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The stable code (the problem's `code`, the envelope's `errors[].code`).
    pub fn code(self) -> u32 {
        match self {
            ErrorKind::Unauthenticated => code::UNAUTHENTICATED,
            ErrorKind::Invalid | ErrorKind::Unprocessable => code::INVALID,
            ErrorKind::Internal => code::INTERNAL,
            ErrorKind::Forbidden => code::FORBIDDEN,
            ErrorKind::NotFound | ErrorKind::Gone => code::NOT_FOUND,
            ErrorKind::NameTaken => code::NAME_TAKEN,
            ErrorKind::Conflict => code::CONFLICT,
            ErrorKind::Limit => code::LIMIT,
            ErrorKind::NotImplemented => code::NOT_IMPLEMENTED,
            ErrorKind::TooLarge => code::TOO_LARGE,
            ErrorKind::MethodNotAllowed => code::METHOD,
            ErrorKind::UnsupportedMediaType => code::MEDIA_TYPE,
            ErrorKind::NoRoute => code::NO_ROUTE,
            ErrorKind::UnauthorizedResource => code::UNAUTHORIZED_RESOURCE,
        }
    }

    /// The slug: the problem's `type` is `https://starling.dev/problems/<slug>`.
    pub fn slug(self) -> &'static str {
        match self {
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Invalid | ErrorKind::Unprocessable => "invalid-request",
            ErrorKind::Internal => "internal",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound | ErrorKind::Gone => "not-found",
            ErrorKind::NameTaken => "name-taken",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Limit => "limit-exceeded",
            ErrorKind::NotImplemented => "not-implemented",
            ErrorKind::TooLarge => "too-large",
            ErrorKind::MethodNotAllowed => "method-not-allowed",
            ErrorKind::UnsupportedMediaType => "unsupported-media-type",
            ErrorKind::NoRoute => "no-route",
            ErrorKind::UnauthorizedResource => "unauthorized-resource",
        }
    }
}

/// An API error: its kind (status, code, slug) and a message safe to show the caller.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// What kind of error.
    pub kind: ErrorKind,
    /// A message for the caller; never contains secrets or internal causes.
    pub detail: String,
}

/// `Result` with [`ApiError`].
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    /// A new error.
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// 400 with [`code::INVALID`].
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, detail)
    }

    /// 404 with [`code::NOT_FOUND`].
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorKind::NotFound, format!("{what} not found"))
    }

    /// 409 with [`code::CONFLICT`].
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, detail)
    }

    /// 409 with [`code::NAME_TAKEN`] (400 on compatible routes).
    pub fn name_taken(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::NameTaken, detail)
    }

    /// 401 (403 on the compatible routes, whose layer changes it).
    pub fn unauthenticated() -> Self {
        Self::new(
            ErrorKind::Unauthenticated,
            "a valid API token is required (Authorization: Bearer <token>)",
        )
    }

    /// 403.
    pub fn forbidden(needed: &str) -> Self {
        Self::new(
            ErrorKind::Forbidden,
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
        Self::new(ErrorKind::Internal, "internal error")
    }

    /// The native answer's body.
    pub fn problem(&self) -> Problem {
        let status = self.kind.status();
        Problem {
            type_: format!("https://starling.dev/problems/{}", self.kind.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: self.detail.clone(),
            code: self.kind.code(),
        }
    }

    /// The compatible routes' answer: status and v4 envelope, with Cloudflare's conventions
    /// where they differ from ours: a name conflict is 400, and failed authentication 403
    /// "Authentication error" (our explanation follows in `error_chain`).
    pub fn envelope(&self) -> (StatusCode, EnvelopeError) {
        let code = self.kind.code();
        let (status, error) = match self.kind {
            ErrorKind::NameTaken => (
                StatusCode::BAD_REQUEST,
                EnvelopeMessage::new(code, self.detail.clone()),
            ),
            ErrorKind::Unauthenticated => (
                StatusCode::FORBIDDEN,
                EnvelopeMessage {
                    error_chain: vec![EnvelopeMessage::new(
                        code,
                        "no API token, or one this api does not know: send Authorization: Bearer <token> (or X-Auth-Key: <token>)",
                    )],
                    ..EnvelopeMessage::new(code, "Authentication error")
                },
            ),
            kind => (
                kind.status(),
                EnvelopeMessage::new(code, self.detail.clone()),
            ),
        };
        (
            status,
            EnvelopeError {
                result: None,
                success: false,
                errors: vec![error],
                messages: Vec::new(),
            },
        )
    }
}

/// The native answer is `application/problem+json`; the error itself rides along in the
/// response's extensions, so that the compatible routes' layer builds its envelope from the
/// value (see [`crate::routes::envelope`]).
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut resp = (self.kind.status(), body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp.extensions_mut().insert(self);
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
            StoreError::Limit(what) => ApiError::new(ErrorKind::Limit, what),
            StoreError::RevocationCap(max) => ApiError::new(
                ErrorKind::Limit,
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
