//! The service around the routes: bodies, methods, health, metrics, the OpenAPI document, start-up, the console.

use crate::client::*;

async fn oversized_and_malformed_bodies_get_4xx() {
    let api = api_with(Config {
        max_body_bytes: 2048,
        ..Config::default()
    })
    .await;
    let big = json!({"name": "a", "description": "x".repeat(4096)});
    let r = api
        .call(Method::POST, "/v1/namespaces", BOOTSTRAP, Some(big))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = api
        .call(
            Method::POST,
            "/v1/namespaces",
            BOOTSTRAP,
            Some(json!({"nom": "a"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let r = send(
        &api.app,
        Method::POST,
        "/v1/namespaces",
        Some(BOOTSTRAP),
        None,
        &[("content-type", "application/json")],
    )
    .await;
    assert!(r.status.is_client_error());
    let r = api
        .call(Method::PUT, "/v1/namespaces", BOOTSTRAP, None)
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

/// Metric labels never take values from the request: 20,000 requests with made-up methods (each
/// once a label of its own, 107 MB of `/metrics`) share the one label `OTHER`.
async fn made_up_methods_share_one_metric_label() {
    let api = api().await;
    for i in 0..20_000 {
        let method = Method::from_bytes(format!("M{i:05}").as_bytes()).unwrap();
        let r = send(&api.app, method, "/healthz", None, None, &[]).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    }
    let r = send(&api.internal, Method::GET, "/metrics", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.body.as_str().unwrap().to_string();
    assert!(!text.contains("M0"), "a request's method became a label");
    assert!(
        text.contains(r#"starling_api_requests_total{method="OTHER",status="405"} 20000"#),
        "{text}"
    );
    assert!(text.len() < 16 * 1024, "/metrics is {} bytes", text.len());
}

async fn health_readiness_metrics_and_openapi_answer() {
    let api = api().await;
    assert_eq!(
        send(&api.app, Method::GET, "/healthz", None, None, &[])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&api.app, Method::GET, "/readyz", None, None, &[])
            .await
            .status,
        StatusCode::OK
    );
    let r = send(&api.app, Method::GET, "/openapi.json", None, None, &[]).await;
    assert_eq!(r.body["openapi"], "3.1.0");
    api.call(Method::GET, "/v1/namespaces", BOOTSTRAP, None)
        .await;
    let r = send(&api.internal, Method::GET, "/metrics", None, None, &[]).await;
    assert!(
        r.body
            .as_str()
            .unwrap()
            .contains("starling_api_requests_total")
    );
    assert_eq!(
        send(&api.app, Method::GET, "/metrics", None, None, &[])
            .await
            .status,
        StatusCode::NOT_FOUND,
        "metrics only on the internal listener"
    );
    assert_eq!(
        send(
            &api.app,
            Method::GET,
            "/internal/v1/brokers/x/state",
            None,
            None,
            &[]
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

async fn committed_openapi_document_is_current() {
    let generated = starling_api::routes::openapi::document();
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))
        .unwrap_or_default();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "api/openapi.json is stale: run `cargo run -p starling-api -- openapi > api/openapi.json`"
    );
}

async fn start_refuses_without_a_key_encryption_key_and_serves_with_one_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("a.db").display());
    let local = "127.0.0.1:0".parse().unwrap();
    let config = Config {
        database_url: db.clone(),
        public_addr: local,
        internal_addr: local,
        ..Config::default()
    };
    let err = starling_api::start(config.clone(), tokio_util::sync::CancellationToken::new())
        .await
        .err()
        .expect("no KEK: refused");
    assert!(err.to_string().contains("key-encryption key"), "{err}");
    let kek_file = dir.path().join("kek");
    std::fs::write(&kek_file, hex_key()).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "sat_from-a-file-0123456789\n").unwrap();
    let config = Config {
        kek_file: Some(kek_file.display().to_string()),
        bootstrap_token_file: Some(token_file.display().to_string()),
        ..config
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = starling_api::start(config, shutdown.clone()).await.unwrap();
    // A real HTTP request over loopback with the token read from the file.
    let mut stream = tokio::net::TcpStream::connect(running.public_addr)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream
        .write_all(b"GET /v1/namespaces HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sat_from-a-file-0123456789\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

fn hex_key() -> String {
    "ab".repeat(32)
}

/// The console: `/console` redirects to `/console/`; every file is compiled in and served with
/// the security headers (a strict CSP naming the brokers' WebSocket origins), revalidated by
/// ETag; an unknown file is 404 with the same headers; `console = false` leaves it out.
async fn console_is_served_with_a_strict_policy_and_etags() {
    let api = api_with(Config {
        ws_endpoint: Some("wss://localhost:8884/mqtt".into()),
        ..Config::default()
    })
    .await;
    let r = send(&api.app, Method::GET, "/console", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers["location"], "/console/");
    let r = send(&api.app, Method::GET, "/console/", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self';"),
        "{csp}"
    );
    assert!(
        csp.contains("connect-src 'self' wss://localhost:8884;"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(r.headers["x-frame-options"], "DENY");
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    let html = r.body.as_str().unwrap();
    assert!(html.contains(r#"<script type="module" src="js/app.js">"#));
    assert!(!html.contains("<script>"), "no inline script");
    for (path, kind) in [
        ("/console/js/app.js", "text/javascript; charset=utf-8"),
        (
            "/console/vendor/mqtt.esm.js",
            "text/javascript; charset=utf-8",
        ),
        ("/console/console.css", "text/css; charset=utf-8"),
    ] {
        let r = send(&api.app, Method::GET, path, None, None, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.headers["content-type"], kind, "{path}");
        assert!(r.headers.contains_key("content-security-policy"), "{path}");
        let etag = r.headers["etag"].to_str().unwrap().to_string();
        let again = send(
            &api.app,
            Method::GET,
            path,
            None,
            None,
            &[("if-none-match", &etag)],
        )
        .await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{path}");
    }
    let r = send(
        &api.app,
        Method::GET,
        "/console/../Cargo.toml",
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(
        &api.app,
        Method::GET,
        "/console/js/nope.js",
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.headers.contains_key("content-security-policy"));
    let r = send(
        &api.app,
        Method::GET,
        "/console/config.json",
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(r.body, json!({"devPlainWs": null}));

    let off = api_with(Config {
        console: false,
        ..Config::default()
    })
    .await;
    let r = send(&off.app, Method::GET, "/console/", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

tests!(
    oversized_and_malformed_bodies_get_4xx,
    made_up_methods_share_one_metric_label,
    health_readiness_metrics_and_openapi_answer,
    committed_openapi_document_is_current,
    start_refuses_without_a_key_encryption_key_and_serves_with_one_from_a_file,
    console_is_served_with_a_strict_policy_and_etags,
);
