//! The OpenAPI 3.1 document, generated from the handlers' annotations and served at
//! `/openapi.json`; `api/openapi.json` is the committed copy (a test fails when it is stale).

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    accounts, brokers, credentials, health, internal, keys, namespaces, revocations, stats,
};

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

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Starling control plane", description = "Namespaces, brokers, client credentials, keys and revocations; \
        native routes under /v1 (JSON bodies sent as application/json, errors as RFC 9457 problems with a stable `code`) and \
        Cloudflare Pub/Sub-compatible routes under /client/v4 (the {result, success, errors, messages} envelope on every answer, \
        bodies read as JSON whatever their Content-Type, failed authentication 403 with code 10000). \
        GET /v1/account (or /client/v4/accounts) tells a token its account. The error codes are listed in docs/cloudflare-compatibility.md."),
    paths(
        health::healthz, health::readyz,
        namespaces::native_list, namespaces::native_create, namespaces::native_get, namespaces::native_delete,
        brokers::native_list, brokers::native_create, brokers::native_get, brokers::native_patch, brokers::native_delete,
        brokers::native_rotate_secret,
        credentials::native_issue, credentials::native_issued, stats::native_stats,
        keys::native_public_keys, keys::native_keys, keys::native_rotate,
        revocations::native_list, revocations::native_add, revocations::native_delete,
        accounts::create_account, accounts::list_tokens, accounts::create_token, accounts::delete_token, accounts::list_audit,
        accounts::native_account,
        accounts::compat_list_accounts, accounts::compat_get_account, accounts::compat_memberships, accounts::compat_verify_token,
        namespaces::compat_list, namespaces::compat_create, namespaces::compat_get, namespaces::compat_delete,
        brokers::compat_list, brokers::compat_create, brokers::compat_get, brokers::compat_patch, brokers::compat_delete,
        credentials::compat_issue, keys::compat_public_keys, keys::compat_rotate,
        revocations::compat_list, revocations::compat_add, revocations::compat_delete,
    ),
    modifiers(&Security),
)]
pub struct ApiDoc;

/// The public document (the internal route is documented separately in [`InternalDoc`]).
#[derive(OpenApi)]
#[openapi(info(title = "Starling control plane, internal listener"), paths(internal::state), modifiers(&Security))]
pub struct InternalDoc;

/// The document as pretty JSON, as committed in `api/openapi.json`.
pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// `GET /openapi.json`.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
