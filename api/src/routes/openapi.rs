//! The OpenAPI 3.1 document, collected from the handlers' annotations as the routes are registered
//! ([`super::public_routes`]) and served at `/openapi.json`; `api/openapi.json` is the committed copy (a test fails when it is stale).

use std::sync::Arc;

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("API token"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "x_auth_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Auth-Key",
                "API token (compatible routes only; X-Auth-Email may come with it and is not needed)",
            ))),
        );
        components.add_security_scheme(
            "broker_secret",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("broker secret"))
                    .build(),
            ),
        );
        // Operation ids from method and path, so that the two route sets' handlers of the same
        // name stay distinct.
        for (path, item) in api.paths.paths.iter_mut() {
            let slug: String = path
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
                .split('_')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("_");
            for (method, op) in [
                ("get", item.get.as_mut()),
                ("post", item.post.as_mut()),
                ("patch", item.patch.as_mut()),
                ("delete", item.delete.as_mut()),
                ("put", item.put.as_mut()),
            ] {
                if let Some(op) = op {
                    op.operation_id = Some(format!("{method}_{slug}"));
                }
            }
        }
    }
}

/// The document's frame (title, description); its paths come from the routes as they are
/// registered ([`super::public_routes`]).
#[derive(OpenApi)]
#[openapi(info(
    title = "Starling control plane",
    description = "Namespaces, brokers, client credentials, keys and revocations; \
        native routes under /v1 (JSON bodies sent as application/json, errors as RFC 9457 problems with a stable `code`) and \
        Cloudflare Pub/Sub-compatible routes under /client/v4 (the {result, success, errors, messages} envelope on every answer, \
        bodies read as JSON whatever their Content-Type, failed authentication 403 with code 10000). \
        GET /v1/account (or /client/v4/accounts) tells a token its account. The error codes are listed in docs/cloudflare-compatibility.md."
))]
pub struct ApiDoc;

/// The internal listener's document's frame (its paths: [`super::internal_routes`]).
#[derive(OpenApi)]
#[openapi(info(title = "Starling control plane, internal listener"))]
pub struct InternalDoc;

/// The public document: the registered routes' operations, with the security schemes and
/// operation ids.
pub fn public_document() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = super::public_routes().split_for_parts();
    finish(&mut doc);
    doc
}

/// The internal listener's document.
pub fn internal_document() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = super::internal_routes().split_for_parts();
    finish(&mut doc);
    doc
}

/// Adds what the registered operations do not carry: the security schemes, and operation ids
/// from method and path.
pub fn finish(doc: &mut utoipa::openapi::OpenApi) {
    Security.modify(doc);
}

/// The document as pretty JSON, as committed in `api/openapi.json`.
pub fn document() -> String {
    public_document().to_pretty_json().unwrap_or_default()
}

/// `GET /openapi.json`: the document of the routes this router serves.
pub async fn serve(doc: Arc<utoipa::openapi::OpenApi>) -> Json<Arc<utoipa::openapi::OpenApi>> {
    Json(doc)
}
