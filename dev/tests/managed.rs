//! The broker's managed mode against real `starling-api` servers: two replicas on one
//! Postgres (a change through one reaches a broker polling the other within a second), and an
//! outage of the api (the broker keeps serving, also across its own restart with a data
//! directory, and follows again once the api is back). A hook set through the api reaches the
//! broker with the broker's hook key; the broker's requests verify with `/publickeys`, the saved
//! state, which then holds that private key, is owner-only, and the key signs no client token.
//! The counters the broker reports with its polls reach the api's health view.

#[path = "../../api/tests/common/mod.rs"]
mod common;
#[path = "../../broker/tests/common/mod.rs"]
mod mqtt;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqtt::RawClient;
use starling_broker::config::{
    Config as BrokerConfig, ListenerConfig, ListenerKind, ManagedTenant,
};
use starling_broker::control::FeedStateExt as _;
use starling_codec::{Connect, Packet, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BOOTSTRAP: &str = "bootstrap-token-for-tests-0123456789";
const KEK: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// One api server (what `starling-api serve` runs), on a runtime of its own so that stopping it
/// is like killing the process: every listener and connection closes at once, nothing drains.
struct Api {
    runtime: Option<tokio::runtime::Runtime>,
    public: SocketAddr,
    internal: SocketAddr,
}

impl Api {
    async fn start(database_url: &str, public: SocketAddr, internal: SocketAddr) -> Api {
        let env = std::collections::BTreeMap::from([
            ("STARLING_API__KEK".to_string(), KEK.to_string()),
            (
                "STARLING_API__BOOTSTRAP_TOKEN".to_string(),
                BOOTSTRAP.to_string(),
            ),
        ]);
        let mut config = starling_api::config::Config::load(None, &env).expect("config");
        config.database_url = database_url.to_string();
        config.public_addr = public;
        config.internal_addr = internal;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the api");
        let started = runtime.spawn(starling_api::start(
            config,
            tokio_util::sync::CancellationToken::new(),
        ));
        started
            .await
            .expect("the api's start-up task")
            .expect("starling-api starts");
        let api = Api {
            runtime: Some(runtime),
            public,
            internal,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(public, "GET", "/healthz", None, None).await.0 != 200 {
            assert!(
                Instant::now() < deadline,
                "api on {public} not healthy in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        api
    }

    fn stop(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A small HTTP/1.1 request on loopback: (status, JSON body or null).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return (0, serde_json::Value::Null);
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, serde_json::Value::Null);
    }
    let mut out = Vec::new();
    if s.read_to_end(&mut out).await.is_err() {
        return (0, serde_json::Value::Null);
    }
    let text = String::from_utf8_lossy(&out);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

struct Created {
    id: String,
    secret: String,
    token: String,
    jti: String,
}

/// Creates namespace `ns`, broker `b` and a token for client `c1` through the native routes.
async fn create_broker(api: SocketAddr, dir: &Path) -> Created {
    let t = Some(BOOTSTRAP);
    let (s, _) = http(
        api,
        "POST",
        "/v1/namespaces",
        t,
        Some(serde_json::json!({"name": "ns"})),
    )
    .await;
    assert_eq!(s, 201, "namespace created");
    let (s, b) = http(
        api,
        "POST",
        "/v1/namespaces/ns/brokers",
        t,
        Some(serde_json::json!({"name": "b", "authType": "TOKEN"})),
    )
    .await;
    assert_eq!(s, 201, "broker created: {b}");
    let id = b["id"].as_str().unwrap().to_string();
    let secret = b["secret"].as_str().unwrap().to_string();
    std::fs::write(dir.join("secret"), &secret).unwrap();
    let (s, creds) = http(
        api,
        "GET",
        "/v1/namespaces/ns/brokers/b/credentials?number=1&type=TOKEN&topicAcl=%23&clientid=c1",
        t,
        None,
    )
    .await;
    assert_eq!(s, 200, "{creds}");
    let token = creds["c1"].as_str().unwrap().to_string();
    let claims = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    Created {
        id,
        secret,
        token,
        jti: claims["jti"].as_str().unwrap().to_string(),
    }
}

async fn managed_broker(
    internal: SocketAddr,
    c: &Created,
    dir: &Path,
    data_dir: Option<&Path>,
) -> starling_broker::RunningBroker {
    managed_broker_with(internal, c, dir, data_dir, |_| {}).await
}

async fn managed_broker_with(
    internal: SocketAddr,
    c: &Created,
    dir: &Path,
    data_dir: Option<&Path>,
    edit: impl FnOnce(&mut BrokerConfig),
) -> starling_broker::RunningBroker {
    let mut config = BrokerConfig::default();
    config.listeners.push(ListenerConfig::new(
        ListenerKind::Mqtt,
        "127.0.0.1:0".parse().unwrap(),
    ));
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    config.auth.mode = starling_broker::config::AuthMode::Token;
    config.auth.clock_skew_secs = 0;
    config.control_plane.push(ManagedTenant {
        url: format!("http://{internal}"),
        broker_id: c.id.clone(),
        secret_file: dir.join("secret"),
    });
    config.data_dir = data_dir.map(Path::to_path_buf);
    let _ = &c.secret;
    edit(&mut config);
    starling_broker::start(config).await.expect("broker starts")
}

async fn wait_ready(b: &starling_broker::RunningBroker) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !b.is_ready() {
        assert!(Instant::now() < deadline, "broker never got its state");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect(
    b: &starling_broker::RunningBroker,
    id: &str,
    token: &str,
) -> (RawClient<TcpStream>, ReasonCode) {
    let s = TcpStream::connect(b.addr(ListenerKind::Mqtt).unwrap())
        .await
        .unwrap();
    let mut c = RawClient::new(s, ProtocolVersion::V5);
    let ack = c
        .connect(Connect {
            password: Some(Bytes::from(token.to_string())),
            username: Some("x".into()),
            ..mqtt::connect_v5(id)
        })
        .await;
    (c, ack.reason)
}

async fn revoke_and_expect_cut(api: SocketAddr, c: &mut RawClient<TcpStream>, jti: &str) {
    let t0 = Instant::now();
    let (s, body) = http(
        api,
        "POST",
        &format!("/v1/namespaces/ns/brokers/b/revocations?jti={jti}"),
        Some(BOOTSTRAP),
        None,
    )
    .await;
    assert!(s < 300, "revocation accepted: {s} {body}");
    c.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "revocation reached the broker after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_reaches_a_broker_polling_the_other() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let url = common::fresh_pg_url().await;
        let dir = tempfile::tempdir().unwrap();
        let one = Api::start(&url, free_addr(), free_addr()).await;
        let two = Api::start(&url, free_addr(), free_addr()).await;
        let created = create_broker(two.public, dir.path()).await;
        // The broker follows replica one; the revocation goes through replica two.
        let broker = managed_broker(one.internal, &created, dir.path(), None).await;
        wait_ready(&broker).await;
        let (mut c, reason) = connect(&broker, "c1", &created.token).await;
        assert_eq!(reason, ReasonCode::SUCCESS);
        revoke_and_expect_cut(two.public, &mut c, &created.jti).await;
        let (_c, reason) = connect(&broker, "c1", &created.token).await;
        assert_eq!(
            reason,
            ReasonCode::NOT_AUTHORIZED,
            "refused after revocation"
        );
        broker.shutdown().await;
        drop((one, two));
    })
    .await
    .expect("test timed out");
}

/// The counters a managed broker reports with its polls reach the api's health view: a client
/// connects, a change (a key rotation) answers the broker's long-poll, and its next poll carries
/// the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_broker_reports_its_counters_with_its_polls() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let url = common::fresh_pg_url().await;
        let dir = tempfile::tempdir().unwrap();
        let api = Api::start(&url, free_addr(), free_addr()).await;
        let created = create_broker(api.public, dir.path()).await;
        let broker = managed_broker(api.internal, &created, dir.path(), None).await;
        wait_ready(&broker).await;
        let (_c, reason) = connect(&broker, "c1", &created.token).await;
        assert_eq!(reason, ReasonCode::SUCCESS);
        let (status, _) = http(
            api.public,
            "POST",
            "/v1/namespaces/ns/brokers/b/keys/rotate?retire_after=3600",
            Some(BOOTSTRAP),
            None,
        )
        .await;
        assert_eq!(status, 200);
        let deadline = Instant::now() + Duration::from_secs(20);
        let stats = loop {
            let (status, stats) = http(
                api.public,
                "GET",
                "/v1/namespaces/ns/brokers/b/stats",
                Some(BOOTSTRAP),
                None,
            )
            .await;
            assert_eq!(status, 200, "{stats}");
            if stats["instances"][0]["connections"] == 1 {
                break stats;
            }
            assert!(
                Instant::now() < deadline,
                "no report with the connection: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(stats["source"], "reported");
        assert_eq!(stats["instances"].as_array().unwrap().len(), 1);
        assert_eq!(
            stats["instances"][0]["instance"].as_str().unwrap().len(),
            16,
            "a random id per process, nothing about the pod"
        );
        broker.shutdown().await;
        drop(api);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_serves_through_an_api_outage_and_its_own_restart() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("broker-data");
        let db = format!("sqlite://{}", dir.path().join("api.db").display());
        let (public, internal) = (free_addr(), free_addr());
        let api = Api::start(&db, public, internal).await;
        let created = create_broker(public, dir.path()).await;
        let broker = managed_broker(internal, &created, dir.path(), Some(&data)).await;
        wait_ready(&broker).await;
        let (mut live, reason) = connect(&broker, "c1", &created.token).await;
        assert_eq!(reason, ReasonCode::SUCCESS);

        // The api goes away: existing and new connections are served.
        api.stop();
        live.send(Packet::PingReq).await;
        assert!(matches!(live.recv().await, Packet::PingResp));
        let (_second, reason) = connect(&broker, "c1-second", &created.token).await;
        assert_eq!(
            reason,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "the token stays bound to c1"
        );
        drop(live);
        let (mut again, reason) = connect(&broker, "c1", &created.token).await;
        assert_eq!(
            reason,
            ReasonCode::SUCCESS,
            "a new connection during the outage"
        );
        again.send(Packet::PingReq).await;
        assert!(matches!(again.recv().await, Packet::PingResp));

        // The broker restarts during the outage: the saved state serves.
        broker.shutdown().await;
        let broker = managed_broker(internal, &created, dir.path(), Some(&data)).await;
        assert!(broker.is_ready(), "ready from the saved state");
        let (mut live, reason) = connect(&broker, "c1", &created.token).await;
        assert_eq!(
            reason,
            ReasonCode::SUCCESS,
            "served after a restart without the api"
        );

        // The api comes back; once the broker polls again, a revocation reaches it within 1 s.
        let api = Api::start(&db, public, internal).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = metrics_text(internal).await;
            if text
                .lines()
                .any(|l| l.starts_with("starling_api_long_polls ") && !l.ends_with(" 0"))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the broker did not come back to the api"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        revoke_and_expect_cut(public, &mut live, &created.jti).await;
        broker.shutdown().await;
        drop(api);
    })
    .await
    .expect("test timed out");
}

/// Tokens for `ids` of broker `ns/b`.
async fn tokens(api: SocketAddr, ids: &[&str]) -> Vec<String> {
    let query: String = ids.iter().map(|id| format!("&clientid={id}")).collect();
    let (s, creds) = http(
        api,
        "GET",
        &format!("/v1/namespaces/ns/brokers/b/credentials?type=TOKEN&topicAcl=%23{query}"),
        Some(BOOTSTRAP),
        None,
    )
    .await;
    assert_eq!(s, 200, "{creds}");
    ids.iter()
        .map(|id| creds[*id].as_str().expect("a token").to_string())
        .collect()
}

/// Sets the broker's limits through the api and waits until the managed broker's tenant has
/// `max_connections` (a condition, not a sleep).
async fn set_limits(
    api: SocketAddr,
    broker: &starling_broker::RunningBroker,
    id: &str,
    limits: serde_json::Value,
    expect_max_connections: usize,
) {
    let (s, body) = http(
        api,
        "PATCH",
        "/v1/namespaces/ns/brokers/b",
        Some(BOOTSTRAP),
        Some(serde_json::json!({ "limits": limits })),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tenant = broker.directory.tenant(id).expect("the tenant");
        if tenant.tenant.limits.current().max_connections == expect_max_connections {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the limits never reached the broker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Limits set through the api reach the managed broker and apply to its tenant, within the
/// broker's own: a tenant-wide one (connections), a per-connection one (the packet size, as
/// advertised in CONNACK), and one asked above the broker's configured value, which is clamped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_set_through_the_api_apply_to_the_tenant_within_the_brokers_own() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("api.db").display());
        let (public, internal) = (free_addr(), free_addr());
        let api = Api::start(&db, public, internal).await;
        let created = create_broker(public, dir.path()).await;
        let broker = managed_broker_with(internal, &created, dir.path(), None, |c| {
            c.limits.max_connections = Some(2);
        })
        .await;
        wait_ready(&broker).await;
        let t = tokens(public, &["c1", "c2", "c3"]).await;

        set_limits(
            public,
            &broker,
            &created.id,
            serde_json::json!({"maxConnections": 1}),
            1,
        )
        .await;
        let (_c1, reason) = connect(&broker, "c1", &t[0]).await;
        assert_eq!(reason, ReasonCode::SUCCESS);
        let (_c2, reason) = connect(&broker, "c2", &t[1]).await;
        assert_eq!(
            reason,
            ReasonCode::QUOTA_EXCEEDED,
            "the tenant's one connection is taken"
        );

        // Above the broker's own 2: clamped to 2.
        set_limits(
            public,
            &broker,
            &created.id,
            serde_json::json!({"maxConnections": 1000, "maxPacketSize": 2048}),
            2,
        )
        .await;
        let s = TcpStream::connect(broker.addr(ListenerKind::Mqtt).unwrap())
            .await
            .unwrap();
        let mut c2 = RawClient::new(s, ProtocolVersion::V5);
        let ack = c2
            .connect(Connect {
                password: Some(Bytes::from(t[1].clone())),
                ..mqtt::connect_v5("c2")
            })
            .await;
        assert_eq!(ack.reason, ReasonCode::SUCCESS);
        assert_eq!(
            ack.properties.maximum_packet_size,
            Some(2048),
            "the tenant's packet size, not the broker's 1 MiB"
        );
        let (_c3, reason) = connect(&broker, "c3", &t[2]).await;
        assert_eq!(
            reason,
            ReasonCode::QUOTA_EXCEEDED,
            "the broker's 2 connections, whatever the tenant asked"
        );
        // A packet over the tenant's size ends the connection with 0x95.
        c2.send(Packet::Publish(mqtt::publish(
            "t",
            starling_codec::QoS::AtMostOnce,
            &[0u8; 4096],
            None,
        )))
        .await;
        c2.expect_disconnect(ReasonCode::PACKET_TOO_LARGE).await;
        broker.shutdown().await;
        drop(api);
    })
    .await
    .expect("test timed out");
}

/// A hook set through the api reaches the managed broker with the broker's hook key, and the
/// state the broker saves (which then holds that private key) is readable by its owner only. The
/// hook key is not a token key: a client token signed with it (as whoever holds the broker
/// secret could sign) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_reaches_the_managed_broker_with_a_hook_key_that_signs_no_client_token() {
    use std::os::unix::fs::PermissionsExt as _;
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("broker-data");
        let db = format!("sqlite://{}", dir.path().join("api.db").display());
        let (public, internal) = (free_addr(), free_addr());
        let api = Api::start(&db, public, internal).await;
        let created = create_broker(public, dir.path()).await;
        let broker = managed_broker(internal, &created, dir.path(), Some(&data)).await;
        wait_ready(&broker).await;
        let saved = data.join(format!("state-{}.json", created.id));
        let read_saved = || {
            std::fs::read_to_string(&saved)
                .ok()
                .and_then(|t| serde_json::from_str::<starling_broker::control::FeedState>(&t).ok())
        };
        let state = read_saved().expect("state saved");
        assert!(
            state.hook_key.is_none() && state.tenant_state(&created.id).hook.is_none(),
            "no hook, no private key"
        );

        let (s, body) = http(
            public,
            "PATCH",
            "/v1/namespaces/ns/brokers/b",
            Some(BOOTSTRAP),
            Some(serde_json::json!({"on_publish": {"url": "http://127.0.0.1:9/hook"}})),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let state = loop {
            if let Some(state) = read_saved().filter(|s| s.hook_key.is_some()) {
                break state;
            }
            assert!(
                Instant::now() < deadline,
                "the hook never reached the broker"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mode = std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the saved state holds a private key");
        let hook = state.tenant_state(&created.id).hook.expect("a hook");
        assert_eq!(hook.url, "http://127.0.0.1:9/hook");
        assert_eq!(
            hook.broker, "b.ns.starling.localhost",
            "the broker's hostname"
        );
        let current = starling_token::peek_kid(&created.token).unwrap();
        let hook_kid = hook.kid().expect("a hook key").to_string();
        assert_ne!(hook_kid, current, "not the key tokens are signed with");
        assert!(
            state.jwks.keys.iter().all(|k| k.kid != hook_kid),
            "not among the keys the broker accepts for tokens"
        );
        // The running broker's tenant has that hook installed.
        let tenant = broker.directory.tenant(&created.id).expect("the tenant");
        let installed = tenant.tenant.hook().expect("a hook installed");
        assert_eq!(installed.target(), &hook);
        assert!(installed.target().key.is_some(), "a key to sign with");

        // Whoever holds the broker secret can read that key, and cannot sign a client token
        // with it: the broker refuses the token.
        let (s, feed) = http(
            internal,
            "GET",
            &format!("/internal/v1/brokers/{}/state", created.id),
            Some(&created.secret),
            None,
        )
        .await;
        assert_eq!(s, 200, "{feed}");
        let feed: starling_broker::control::FeedState = serde_json::from_value(feed).unwrap();
        let stolen =
            starling_broker::control::signing_key(&feed.hook_key.expect("the hook key")).unwrap();
        let forged = stolen.sign_claims(&starling_token::Claims {
            sub: "c1".into(),
            jti: "forged".into(),
            iat: 1_700_000_000,
            exp: None,
            nbf: None,
            topic_acl: starling_token::TopicAcl::All,
        });
        let (_c, reason) = connect(&broker, "c1", &forged).await;
        assert_eq!(
            reason,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "a token signed with the hook key"
        );
        let (_c, reason) = connect(&broker, "c1", &created.token).await;
        assert_eq!(reason, ReasonCode::SUCCESS, "the issued token still works");
        broker.shutdown().await;
        drop(api);
    })
    .await
    .expect("test timed out");
}

/// What the test's webhook saw of one request.
struct HookRequest {
    kid: String,
    verified: bool,
    topics: Vec<String>,
}

/// A webhook on loopback (axum, in the test) that verifies each request's signature against
/// the broker's `/publickeys` as fetched from the api, answers with every message except those on
/// `t/drop`, and reports what it saw.
async fn verifying_hook(
    jwks: starling_token::Jwks,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<HookRequest>) {
    use base64::Engine as _;
    let verifier = std::sync::Arc::new(starling_token::Verifier::new(&jwks).unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |headers: axum::http::HeaderMap, body: Bytes| {
        let (verifier, tx) = (verifier.clone(), tx.clone());
        async move {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            let kid = header("x-signature-key-id");
            let signature = base64::engine::general_purpose::STANDARD
                .decode(header("x-signature-ed25519"))
                .unwrap_or_default();
            let mut signed = header("x-signature-timestamp").into_bytes();
            signed.extend_from_slice(&body);
            let verified = verifier.verify_bytes(&kid, &signed, &signature).is_ok();
            let messages: Vec<serde_json::Value> =
                serde_json::from_slice(&body).unwrap_or_default();
            let topics = messages
                .iter()
                .map(|m| m["topic"].as_str().unwrap_or_default().to_string())
                .collect();
            let _ = tx.send(HookRequest {
                kid,
                verified,
                topics,
            });
            let kept: Vec<_> = messages
                .into_iter()
                .filter(|m| m["topic"] != "t/drop")
                .collect();
            axum::Json(kept)
        }
    };
    let app = axum::Router::new().route("/hook", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

/// A managed broker signs its hook's requests with the key from the state feed: they verify with
/// the broker's `/publickeys`, a message the hook keeps is delivered, one it leaves out is refused
/// with PUBACK 0x87 and never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_broker_sends_hook_requests_that_verify_with_publickeys() {
    use starling_codec::QoS;
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("api.db").display());
        let (public, internal) = (free_addr(), free_addr());
        let api = Api::start(&db, public, internal).await;
        let created = create_broker(public, dir.path()).await;
        let (s, jwks) = http(
            public,
            "GET",
            "/v1/namespaces/ns/brokers/b/publickeys",
            Some(BOOTSTRAP),
            None,
        )
        .await;
        assert_eq!(s, 200, "{jwks}");
        let (url, mut seen) = verifying_hook(serde_json::from_value(jwks).unwrap()).await;
        let (s, body) = http(
            public,
            "PATCH",
            "/v1/namespaces/ns/brokers/b",
            Some(BOOTSTRAP),
            Some(serde_json::json!({"on_publish": {"url": url}})),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        let (s, creds) = http(
            public,
            "GET",
            "/v1/namespaces/ns/brokers/b/credentials?number=2&type=TOKEN&topicAcl=%23&clientid=c-pub&clientid=c-sub",
            Some(BOOTSTRAP),
            None,
        )
        .await;
        assert_eq!(s, 200, "{creds}");

        let mut config = BrokerConfig::default();
        config.listeners.push(ListenerConfig::new(
            ListenerKind::Mqtt,
            "127.0.0.1:0".parse().unwrap(),
        ));
        config.http.bind = "127.0.0.1:0".parse().unwrap();
        config.auth.mode = starling_broker::config::AuthMode::Token;
        config.control_plane.push(ManagedTenant {
            url: format!("http://{internal}"),
            broker_id: created.id.clone(),
            secret_file: dir.path().join("secret"),
        });
        // The hook is on loopback over http.
        config.hook = starling_broker::hook::HookSettings::local();
        let broker = starling_broker::start(config).await.expect("broker starts");
        wait_ready(&broker).await;

        let (mut sub, reason) = connect(&broker, "c-sub", creds["c-sub"].as_str().unwrap()).await;
        assert_eq!(reason, ReasonCode::SUCCESS);
        sub.subscribe("t/#", mqtt::sub_opts(QoS::AtLeastOnce)).await;
        let (mut publisher, reason) =
            connect(&broker, "c-pub", creds["c-pub"].as_str().unwrap()).await;
        assert_eq!(reason, ReasonCode::SUCCESS);

        assert_eq!(
            publisher.publish("t/keep", QoS::AtLeastOnce, b"one").await,
            Some(ReasonCode::SUCCESS)
        );
        assert_eq!(
            publisher.publish("t/drop", QoS::AtLeastOnce, b"two").await,
            Some(ReasonCode::NOT_AUTHORIZED)
        );
        assert_eq!(
            publisher.publish("t/keep", QoS::AtLeastOnce, b"three").await,
            Some(ReasonCode::SUCCESS)
        );
        // In order, so the dropped message would have come between the two.
        for payload in [&b"one"[..], b"three"] {
            let p = sub.recv_publish().await;
            assert_eq!((p.topic.as_str(), &p.payload[..]), ("t/keep", payload));
        }

        let current = starling_token::peek_kid(&created.token).unwrap();
        let hook_kid = broker
            .directory
            .tenant(&created.id)
            .and_then(|t| t.tenant.hook())
            .and_then(|h| h.target().kid().map(str::to_owned))
            .expect("the hook's key");
        assert_ne!(hook_kid, current, "the hook key is not the token key");
        let mut topics = Vec::new();
        while topics.len() < 3 {
            let r = tokio::time::timeout(Duration::from_secs(10), seen.recv())
                .await
                .expect("the hook's requests in time")
                .expect("hook running");
            assert!(r.verified, "a request that does not verify with /publickeys");
            assert_eq!(r.kid, hook_kid, "signed with the hook key");
            topics.extend(r.topics);
        }
        assert_eq!(topics, ["t/keep", "t/drop", "t/keep"]);
        broker.shutdown().await;
        drop(api);
    })
    .await
    .expect("test timed out");
}

async fn metrics_text(addr: SocketAddr) -> String {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).to_string()
}
