//! The web console at `/console/`: plain HTML, CSS and ES modules compiled into the binary from
//! `api/console/` (no build step, nothing fetched at run time; third-party files are vendored
//! under `api/console/vendor/` with their licences, see the README there).
//!
//! The pages talk to the native routes with the API token the user signs in with (kept in the
//! tab's `sessionStorage`), and to brokers over MQTT on WebSockets. Every answer carries a strict
//! Content-Security-Policy: scripts, styles and images only from the api itself (no inline script
//! or style), `connect-src` the api and the brokers' WebSocket origins, no framing, no forms
//! posting elsewhere. Assets are revalidated by `ETag` (SHA-256 of the content).

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::config::Config;
use crate::state::AppState;

/// One embedded file.
struct Asset {
    /// Its path under `/console/`.
    path: &'static str,
    body: &'static [u8],
    content_type: &'static str,
}

macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        Asset {
            path: $path,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $path)),
            content_type: $content_type,
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("js/app.js", JS),
    asset!("js/api.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/chart.js", JS),
    asset!("js/namespaces.js", JS),
    asset!("js/broker.js", JS),
    asset!("js/tokens.js", JS),
    asset!("js/live.js", JS),
    asset!("js/audit.js", JS),
    asset!("vendor/mqtt.esm.js", JS),
    asset!("vendor/mqtt.LICENSE.md", "text/plain; charset=utf-8"),
];

/// `"<sha-256 hex>"` of each asset, in [`ASSETS`] order.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = ring::digest::digest(&ring::digest::SHA256, a.body);
            format!("\"{}\"", hex::encode(&digest.as_ref()[..16]))
        })
        .collect()
});

/// The `scheme://host[:port]` of a URL, or `None` when it has no host.
pub fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let ok = !scheme.is_empty()
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric())
        && !authority.is_empty()
        && !authority.contains('@')
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    ok.then(|| format!("{}://{}", scheme.to_ascii_lowercase(), authority))
}

/// The Content-Security-Policy of every console answer.
pub fn content_security_policy(config: &Config) -> String {
    let mut connect = vec!["'self'".to_string()];
    match config.ws_endpoint.as_deref().and_then(origin) {
        Some(o) => connect.push(o),
        None => connect.push(format!("wss://*.{}", config.domain.to_ascii_lowercase())),
    }
    if let Some(o) = config.dev_plain_ws.as_deref().and_then(origin) {
        connect.push(o);
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        connect.join(" ")
    )
}

/// What every console answer carries.
struct Headers {
    csp: HeaderValue,
    config_json: String,
}

fn secure(mut resp: Response, h: &Headers) -> Response {
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, h.csp.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}

fn serve(path: &str, request: &HeaderMap, h: &Headers) -> Response {
    if path == "config.json" {
        let resp = (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            h.config_json.clone(),
        )
            .into_response();
        return secure(resp, h);
    }
    let Some(i) = ASSETS.iter().position(|a| a.path == path) else {
        let resp = (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such console file\n",
        )
            .into_response();
        return secure(resp, h);
    };
    let (asset, etag) = (&ASSETS[i], &ETAGS[i]);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let resp = if fresh {
        (StatusCode::NOT_MODIFIED, [(header::ETAG, etag.clone())]).into_response()
    } else {
        (
            [
                (header::CONTENT_TYPE, asset.content_type.to_string()),
                (header::CACHE_CONTROL, "no-cache".to_string()),
                (header::ETAG, etag.clone()),
            ],
            asset.body,
        )
            .into_response()
    };
    secure(resp, h)
}

/// The console's routes: `/console` (redirects), `/console/` and `/console/{file}`.
pub fn router(config: &Config) -> Router<AppState> {
    let csp = content_security_policy(config);
    let h = Arc::new(Headers {
        csp: HeaderValue::from_str(&csp)
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'")),
        config_json: serde_json::json!({ "devPlainWs": config.dev_plain_ws }).to_string(),
    });
    let index = h.clone();
    let file = h;
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(move |headers: HeaderMap| async move { serve("index.html", &headers, &index) }),
        )
        .route(
            "/console/{*path}",
            get(
                move |Path(path): Path<String>, headers: HeaderMap| async move {
                    serve(&path, &headers, &file)
                },
            ),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_keep_scheme_host_and_port_only() {
        assert_eq!(
            origin("wss://localhost:8884/mqtt").as_deref(),
            Some("wss://localhost:8884")
        );
        assert_eq!(
            origin("WSS://b.ns.example.com/mqtt?x").as_deref(),
            Some("wss://b.ns.example.com")
        );
        assert_eq!(origin("wss://u:p@host/"), None);
        assert_eq!(origin("wss:///mqtt"), None);
        assert_eq!(origin("localhost:8884"), None);
        assert_eq!(origin("wss://host name/"), None);
    }

    #[test]
    fn the_policy_allows_only_the_api_and_the_brokers_websockets() {
        let csp = content_security_policy(&Config {
            domain: "Example.com".into(),
            ..Config::default()
        });
        assert!(
            csp.contains("connect-src 'self' wss://*.example.com;"),
            "{csp}"
        );
        assert!(csp.contains("script-src 'self';"));
        assert!(!csp.contains("unsafe"));
        let csp = content_security_policy(&Config {
            ws_endpoint: Some("wss://localhost:8884/mqtt".into()),
            dev_plain_ws: Some("ws://127.0.0.1:8080/mqtt".into()),
            ..Config::default()
        });
        assert!(
            csp.contains("connect-src 'self' wss://localhost:8884 ws://127.0.0.1:8080;"),
            "{csp}"
        );
    }

    #[test]
    fn every_asset_is_present_and_typed() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{}", a.path);
            assert!(a.content_type.contains('/'), "{}", a.path);
        }
        assert_eq!(ETAGS.len(), ASSETS.len());
    }
}
