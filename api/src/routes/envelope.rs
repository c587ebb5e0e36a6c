//! The v4 envelope of the Cloudflare-compatible routes (`/client/v4/...`): the success shape
//! (`{result, success, errors, messages, result_info}`), the error shape (built from the error
//! value, [`crate::error::ApiError::envelope`]), and the layer every compatible route passes
//! through.

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::ApiError;

/// A successful v4 envelope: `{"result": T, "success": true, "errors": [], "messages": []}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Envelope<T> {
    /// The result.
    pub result: T,
    /// Always `true` here.
    pub success: bool,
    /// Always empty here.
    pub errors: Vec<EnvelopeMessage>,
    /// Informational messages.
    pub messages: Vec<EnvelopeMessage>,
    /// Paging of list results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_info: Option<ResultInfo>,
}

/// Paging of a list result in the envelope: a `cursor` (pub/sub lists), or `page`, `per_page`,
/// `total_pages` and `total_count` (accounts and memberships, paged by number as at Cloudflare).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResultInfo {
    /// Items in this page.
    pub count: usize,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// This page's number, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    /// The page size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_page: Option<u32>,
    /// How many pages there are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_pages: Option<u32>,
    /// How many items there are over all pages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_count: Option<usize>,
}

/// An error or message of the envelope.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct EnvelopeMessage {
    /// Stable code: the same codes as the native routes' problems (see `Problem.code`).
    pub code: u32,
    /// Text.
    pub message: String,
    /// What lies behind this error, in more detail (Cloudflare's `error_chain`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(no_recursion)]
    pub error_chain: Vec<EnvelopeMessage>,
}

impl EnvelopeMessage {
    /// A message without a chain.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            error_chain: Vec::new(),
        }
    }
}

/// A failed v4 envelope.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnvelopeError {
    /// Always `null`.
    #[schema(value_type = Option<String>)]
    pub result: Option<()>,
    /// Always `false`.
    pub success: bool,
    /// What went wrong.
    pub errors: Vec<EnvelopeMessage>,
    /// Always empty.
    pub messages: Vec<EnvelopeMessage>,
}

impl<T: Serialize> Envelope<T> {
    /// Wraps a result.
    pub fn ok(result: T) -> Self {
        Self {
            result,
            success: true,
            errors: Vec::new(),
            messages: Vec::new(),
            result_info: None,
        }
    }

    /// Wraps a page of a list paged by cursor.
    pub fn page(result: T, count: usize, cursor: Option<String>) -> Self {
        Self {
            result_info: Some(ResultInfo {
                count,
                cursor,
                page: None,
                per_page: None,
                total_pages: None,
                total_count: None,
            }),
            ..Self::ok(result)
        }
    }

    /// Wraps page `page` (from 1) of `per_page` items, of `total_count` in all.
    pub fn numbered_page(
        result: T,
        count: usize,
        page: u32,
        per_page: u32,
        total_count: usize,
    ) -> Self {
        let total_pages =
            u32::try_from(total_count.div_ceil(per_page.max(1) as usize)).unwrap_or(u32::MAX);
        Self {
            result_info: Some(ResultInfo {
                count,
                cursor: None,
                page: Some(page),
                per_page: Some(per_page),
                total_pages: Some(total_pages),
                total_count: Some(total_count),
            }),
            ..Self::ok(result)
        }
    }
}

impl<T: Serialize> IntoResponse for Envelope<T> {
    fn into_response(self) -> Response {
        Json(self).into_response()
    }
}

/// Marks a request to the Cloudflare-compatible routes (set by [`compat_envelope`]): their
/// bodies are read as JSON whatever the `Content-Type`, and `X-Auth-Key` is taken as an API
/// token, as Cloudflare's API did.
#[derive(Debug, Clone, Copy)]
pub struct CompatRequest;

/// The compatible routes' conventions: marks the request ([`CompatRequest`]) and answers an
/// error with the v4 envelope built from the error value ([`ApiError::envelope`], which the
/// error's response carries in its extensions).
pub(crate) async fn compat_envelope(mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(CompatRequest);
    let resp = next.run(req).await;
    let Some((status, envelope)) = resp.extensions().get::<ApiError>().map(ApiError::envelope)
    else {
        return resp;
    };
    let (mut parts, _) = resp.into_parts();
    parts.status = status;
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&envelope).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}
