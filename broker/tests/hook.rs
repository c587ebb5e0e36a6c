//! The on-publish hook against a real HTTP server on loopback (axum, in the test): the
//! request's shape and signature, batching, every drop rule, changes to messages, ordering,
//! the publisher's acknowledgements, failures (status, garbage, timeout, refused address) and
//! back-pressure from a slow hook.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{RawClient, TestBroker, WAIT, metric, publish, sub_opts};
use serde_json::{Value, json};
use starling_broker::hook::{Hook, HookSettings, HookTarget};
use starling_codec::{
    Packet, ProtocolVersion, PubAck, PublishProperties, QoS, ReasonCode, Will, WillProperties,
};
use starling_token::SigningKey;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

/// What the hook answers for a batch: (status, body).
type Behaviour = Arc<dyn Fn(&[Value]) -> (u16, String) + Send + Sync>;

/// One request as the hook server saw it.
struct Seen {
    headers: HeaderMap,
    body: Bytes,
    messages: Vec<Value>,
}

#[derive(Clone)]
struct ServerState {
    behaviour: Behaviour,
    seen: mpsc::UnboundedSender<Seen>,
    /// When set, every request waits for a permit before answering.
    gate: Option<Arc<Semaphore>>,
    /// Longest random delay before answering, in ms (0: none).
    jitter_ms: u64,
}

async fn handle(
    State(s): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let messages: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
    let _ = s.seen.send(Seen {
        headers,
        body,
        messages: messages.clone(),
    });
    if let Some(gate) = &s.gate {
        gate.acquire().await.expect("gate open").forget();
    }
    if s.jitter_ms > 0 {
        // Simulated processing time of a real hook; nothing waits on it.
        let ms = rand_below(s.jitter_ms);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let (status, body) = (s.behaviour)(&messages);
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
}

fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now()) % n
}

struct HookServer {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    gate: Option<Arc<Semaphore>>,
}

impl HookServer {
    async fn start(behaviour: Behaviour) -> HookServer {
        Self::start_with(behaviour, false, 0).await
    }

    async fn start_with(behaviour: Behaviour, gated: bool, jitter_ms: u64) -> HookServer {
        let (tx, seen) = mpsc::unbounded_channel();
        let gate = gated.then(|| Arc::new(Semaphore::new(0)));
        let state = ServerState {
            behaviour,
            seen: tx,
            gate: gate.clone(),
            jitter_ms,
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(handle))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        HookServer { addr, seen, gate }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    async fn next(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("a hook request in time")
            .expect("server running")
    }

    fn open(&self, n: usize) {
        self.gate.as_ref().expect("gated server").add_permits(n);
    }
}

fn echo() -> Behaviour {
    Arc::new(|m: &[Value]| (200, serde_json::to_string(m).unwrap()))
}

/// A broker (`--auth none`) whose tenant sends everything to `url`, signed by `key`.
async fn broker_with_hook(
    url: String,
    key: &Arc<SigningKey>,
    settings: HookSettings,
) -> TestBroker {
    let b = TestBroker::start().await;
    let target = HookTarget {
        url,
        key: Some(key.clone()),
        broker: "demo".into(),
    };
    let hook = Hook::start(
        "default",
        target,
        Arc::new(settings),
        b.broker.metrics.clone(),
    );
    b.broker.default_tenant.set_hook(Some(hook));
    b
}

/// A subscriber on `t/#` at QoS 1, and a publisher.
async fn clients(b: &TestBroker) -> (RawClient<TcpStream>, RawClient<TcpStream>) {
    let mut sub = b.client("sub").await;
    sub.subscribe("t/#", sub_opts(QoS::AtLeastOnce)).await;
    (sub, b.client("pub").await)
}

fn key() -> Arc<SigningKey> {
    Arc::new(SigningKey::generate().unwrap())
}

async fn wait_for_metric(b: &TestBroker, series: &str, at_least: f64) -> f64 {
    tokio::time::timeout(WAIT, async {
        loop {
            let v = metric(&b.metrics().await, series);
            if v >= at_least {
                return v;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{series} did not reach {at_least}"))
}

fn puback_of(p: Packet) -> PubAck {
    match p {
        Packet::PubAck(a) => a,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn a_message_reaches_the_hook_signed_with_cloudflares_fields_before_any_subscriber() {
    let mut hook = HookServer::start(echo()).await;
    let key = key();
    let b = broker_with_hook(hook.url(), &key, HookSettings::local()).await;
    let (mut sub, mut publ) = clients(&b).await;

    let mut p = publish("t/text", QoS::AtLeastOnce, b"hello", Some(1));
    p.properties = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    publ.send(Packet::Publish(p)).await;
    let seen = hook.next().await;
    let ack = puback_of(publ.recv().await);
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"hello");

    // The signature: standard base64 over the timestamp string followed by the raw body.
    let ts = seen.headers["x-signature-timestamp"].to_str().unwrap();
    let ts_num: u64 = ts.parse().expect("unix seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(ts_num.abs_diff(now) <= 5, "timestamp {ts_num} vs now {now}");
    assert_eq!(seen.headers["x-signature-key-id"], key.kid());
    let sig = STANDARD
        .decode(seen.headers["x-signature-ed25519"].as_bytes())
        .expect("standard base64");
    let mut signed = ts.as_bytes().to_vec();
    signed.extend_from_slice(&seen.body);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.public_key_bytes())
        .verify(&signed, &sig)
        .expect("signature verifies");
    assert_eq!(seen.headers["content-type"], "application/json");

    let m = &seen.messages[0];
    assert!(m["mid"].is_u64(), "{m}");
    assert_eq!(m["broker"], "demo");
    assert_eq!(m["topic"], "t/text");
    assert_eq!(m["clientId"], "pub");
    assert!(m["receivedAt"].as_u64().unwrap().abs_diff(now) <= 5);
    assert_eq!(m["contentType"], "text/plain");
    assert_eq!(m["payloadFormatIndicator"], 1);
    assert_eq!(m["payload"], "hello");
    assert!(m.get("payloadEncoding").is_none());
    assert_eq!(m["userProperties"], json!([{"key": "k", "value": "v"}]));
    assert_eq!(m["qos"], 1);
    assert_eq!(m["retain"], false);
    assert!(m.get("jti").is_none(), "no token, no jti: {m}");

    // A binary payload goes as base64.
    publ.send(Packet::Publish(publish(
        "t/bin",
        QoS::AtMostOnce,
        &[0xff, 0x00, 0x01],
        None,
    )))
    .await;
    let seen = hook.next().await;
    let m = &seen.messages[0];
    assert_eq!(m["payloadEncoding"], "base64");
    assert_eq!(m["payload"], STANDARD.encode([0xff, 0x00, 0x01]));
    assert_eq!(m["payloadFormatIndicator"], 0);
    assert_eq!(m["contentType"], Value::Null);
    assert_eq!(&sub.recv_publish().await.payload[..], &[0xff, 0x00, 0x01]);
    assert_eq!(
        metric(
            &b.metrics().await,
            "starling_hook_requests_total{reason=\"ok\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn a_message_left_out_is_dropped_and_its_puback_says_not_authorized() {
    let mut hook = HookServer::start(Arc::new(|m: &[Value]| {
        let kept: Vec<&Value> = m.iter().filter(|m| m["topic"] != "t/drop").collect();
        (200, serde_json::to_string(&kept).unwrap())
    }))
    .await;
    let b = broker_with_hook(hook.url(), &key(), HookSettings::local()).await;
    let (mut sub, mut publ) = clients(&b).await;

    assert_eq!(
        publ.publish("t/drop", QoS::AtLeastOnce, b"no").await,
        Some(ReasonCode::NOT_AUTHORIZED)
    );
    assert_eq!(
        publ.publish("t/drop", QoS::ExactlyOnce, b"no").await,
        Some(ReasonCode::NOT_AUTHORIZED)
    );
    assert_eq!(publ.publish("t/drop", QoS::AtMostOnce, b"no").await, None);
    assert_eq!(
        publ.publish("t/keep", QoS::ExactlyOnce, b"yes").await,
        Some(ReasonCode::SUCCESS)
    );
    // The first thing the subscriber gets is the kept message: the dropped ones never came.
    let got = sub.recv_publish().await;
    assert_eq!(got.topic.as_str(), "t/keep");
    let mut seen = 0;
    while seen < 4 {
        seen += hook.next().await.messages.len();
    }
    let text = b.metrics().await;
    assert_eq!(
        metric(&text, "starling_dropped_total{reason=\"hook_rejected\"}"),
        3.0
    );
}

#[tokio::test]
async fn a_publisher_on_3_1_1_gets_a_plain_puback_and_its_dropped_message_is_not_delivered() {
    let _hook = HookServer::start(Arc::new(|_: &[Value]| (200, "[]".into()))).await;
    let b = broker_with_hook(_hook.url(), &key(), HookSettings::local()).await;
    let mut sub = b.client("sub").await;
    sub.subscribe("t/#", sub_opts(QoS::AtLeastOnce)).await;
    let mut publ = b.raw_v3().await;
    publ.connect(common::connect_v3("pub3")).await;
    assert_eq!(
        publ.publish("t/x", QoS::AtLeastOnce, b"x").await,
        Some(ReasonCode::SUCCESS)
    );
    assert_eq!(
        publ.publish("t/x", QoS::ExactlyOnce, b"x").await,
        Some(ReasonCode::SUCCESS)
    );
    sub.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_changed_payload_content_type_and_user_properties_are_delivered_changed() {
    let _hook = HookServer::start(Arc::new(|m: &[Value]| {
        let changed: Vec<Value> = m
            .iter()
            .map(|m| {
                let mut m = m.clone();
                let upper = m["payload"].as_str().unwrap().to_uppercase();
                m["payload"] = json!(upper);
                m["contentType"] = json!("text/upper");
                m["userProperties"] = json!([{"key": "checked", "value": "yes"}]);
                m
            })
            .collect();
        (200, serde_json::to_string(&changed).unwrap())
    }))
    .await;
    let b = broker_with_hook(_hook.url(), &key(), HookSettings::local()).await;
    let (mut sub, mut publ) = clients(&b).await;
    let mut p = publish("t/a", QoS::AtLeastOnce, b"shout", Some(7));
    p.properties.payload_format_indicator = Some(1);
    p.retain = true;
    publ.send(Packet::Publish(p)).await;
    assert_eq!(puback_of(publ.recv().await).reason, ReasonCode::SUCCESS);
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"SHOUT");
    assert_eq!(
        got.properties.content_type.as_ref().unwrap().as_str(),
        "text/upper"
    );
    assert_eq!(got.properties.user_properties.len(), 1);
    assert_eq!(got.properties.user_properties[0].0.as_str(), "checked");
    assert_eq!(got.properties.payload_format_indicator, Some(1));

    // What is retained is what the hook returned.
    let mut late = b.client("late").await;
    late.subscribe("t/a", sub_opts(QoS::AtMostOnce)).await;
    let retained = late.recv_publish().await;
    assert!(retained.retain);
    assert_eq!(&retained.payload[..], b"SHOUT");
}

#[tokio::test]
async fn a_changed_topic_or_mid_drops_that_message_only() {
    let _hook = HookServer::start(Arc::new(|m: &[Value]| {
        let changed: Vec<Value> = m
            .iter()
            .map(|m| {
                let mut m = m.clone();
                match m["payload"].as_str().unwrap() {
                    "move" => m["topic"] = json!("t/elsewhere"),
                    "renumber" => m["mid"] = json!(m["mid"].as_u64().unwrap() + 1_000_000),
                    _ => {}
                }
                m
            })
            .collect();
        (200, serde_json::to_string(&changed).unwrap())
    }))
    .await;
    let b = broker_with_hook(_hook.url(), &key(), HookSettings::local()).await;
    let mut sub = b.client("sub").await;
    sub.subscribe("#", sub_opts(QoS::AtLeastOnce)).await;
    let mut publ = b.client("pub").await;
    for payload in ["move", "renumber"] {
        let mut p = publish("t/a", QoS::AtLeastOnce, payload.as_bytes(), Some(1));
        p.properties.payload_format_indicator = Some(1);
        publ.send(Packet::Publish(p)).await;
        assert_eq!(
            puback_of(publ.recv().await).reason,
            ReasonCode::NOT_AUTHORIZED
        );
    }
    let mut p = publish("t/a", QoS::AtLeastOnce, b"fine", Some(2));
    p.properties.payload_format_indicator = Some(1);
    publ.send(Packet::Publish(p)).await;
    assert_eq!(puback_of(publ.recv().await).reason, ReasonCode::SUCCESS);
    assert_eq!(&sub.recv_publish().await.payload[..], b"fine");
    let text = b.metrics().await;
    assert_eq!(
        metric(
            &text,
            "starling_dropped_total{reason=\"hook_topic_changed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "starling_dropped_total{reason=\"hook_rejected\"}"),
        1.0
    );
}

/// Non-200, a body that is not an array of messages, and a hook that never answers: each drops
/// its batch, and the publisher's PUBACK says 0x80.
#[tokio::test]
async fn a_failing_hook_drops_the_batch_and_the_puback_says_unspecified_error() {
    let cases: [(&str, Behaviour, bool); 3] = [
        ("status", Arc::new(|_: &[Value]| (500, "[]".into())), false),
        (
            "malformed",
            Arc::new(|_: &[Value]| (200, "{\"not\":\"an array\"".into())),
            false,
        ),
        ("timeout", echo(), true),
    ];
    for (reason, behaviour, hang) in cases {
        let mut hook = HookServer::start_with(behaviour, hang, 0).await;
        let settings = HookSettings {
            timeout_ms: 300,
            ..HookSettings::local()
        };
        let b = broker_with_hook(hook.url(), &key(), settings).await;
        let (mut sub, mut publ) = clients(&b).await;
        assert_eq!(
            publ.publish("t/a", QoS::AtLeastOnce, b"x").await,
            Some(ReasonCode::UNSPECIFIED_ERROR),
            "{reason}"
        );
        hook.next().await;
        let text = b.metrics().await;
        assert_eq!(
            metric(
                &text,
                &format!("starling_hook_requests_total{{reason=\"{reason}\"}}")
            ),
            1.0,
            "{reason}"
        );
        assert_eq!(
            metric(&text, "starling_dropped_total{reason=\"hook_failed\"}"),
            1.0
        );
        sub.expect_silence(Duration::from_millis(50)).await;
        if hang {
            hook.open(1);
        }
    }
}

#[tokio::test]
async fn what_arrives_while_a_request_is_in_flight_goes_in_the_next_bounded_batch() {
    let mut hook = HookServer::start_with(echo(), true, 0).await;
    let settings = HookSettings {
        max_requests_in_flight: 1,
        max_batch_messages: 3,
        ..HookSettings::local()
    };
    let b = broker_with_hook(hook.url(), &key(), settings).await;
    let mut sub = b.client("sub").await;
    sub.subscribe("t/#", sub_opts(QoS::AtMostOnce)).await;
    let mut publ = b.client("pub").await;
    publ.publish("t/0", QoS::AtMostOnce, b"0").await;
    // The first message goes alone: nothing waits for a batch to fill.
    assert_eq!(hook.next().await.messages.len(), 1);
    for i in 1..8 {
        publ.publish(&format!("t/{i}"), QoS::AtMostOnce, b"x").await;
    }
    wait_for_metric(&b, "starling_hook_queue", 7.0).await;
    hook.open(100);
    let sizes = [
        hook.next().await.messages.len(),
        hook.next().await.messages.len(),
        hook.next().await.messages.len(),
    ];
    assert_eq!(sizes, [3, 3, 1]);
    for i in 0..8 {
        assert_eq!(sub.recv_publish().await.topic.as_str(), format!("t/{i}"));
    }
}

#[tokio::test]
async fn messages_of_one_publisher_keep_their_order_with_several_requests_in_flight() {
    let _hook = HookServer::start_with(echo(), false, 15).await;
    let settings = HookSettings {
        max_requests_in_flight: 4,
        max_batch_messages: 2,
        ..HookSettings::local()
    };
    let b = broker_with_hook(_hook.url(), &key(), settings).await;
    let (mut sub, mut publ) = clients(&b).await;
    const N: u16 = 60;
    for id in 1..=N {
        publ.send(Packet::Publish(publish(
            "t/seq",
            QoS::AtLeastOnce,
            &id.to_be_bytes(),
            Some(id),
        )))
        .await;
    }
    for id in 1..=N {
        let ack = puback_of(publ.recv().await);
        assert_eq!((ack.packet_id, ack.reason), (id, ReasonCode::SUCCESS));
    }
    for id in 1..=N {
        let got = sub.recv_publish().await;
        assert_eq!(&got.payload[..], &id.to_be_bytes());
        if let Some(pid) = got.packet_id {
            sub.send(Packet::PubAck(PubAck {
                packet_id: pid,
                reason: ReasonCode::SUCCESS,
                properties: Default::default(),
            }))
            .await;
        }
    }
}

/// A hook that holds every request: the publisher's connection stops reading once
/// `max_pending_per_connection` messages await a verdict, so a publisher with 40 MB to send is
/// blocked by TCP, and the broker holds that many messages, not 40 MB. Once the hook answers,
/// everything flows.
#[tokio::test]
async fn a_slow_hook_slows_the_publisher_and_holds_a_bounded_number_of_messages() {
    slow_hook_holds_eight_messages(HookSettings {
        max_pending_per_connection: 8,
        queue_capacity: 4,
        max_requests_in_flight: 1,
        ..HookSettings::local()
    })
    .await;
}

/// The same with the bound in bytes: 8 messages of 8 KiB (8,263 B each as counted) reach
/// 64 KiB.
#[tokio::test]
async fn a_slow_hook_holds_a_bounded_number_of_bytes_per_connection() {
    slow_hook_holds_eight_messages(HookSettings {
        max_pending_per_connection: 10_000,
        max_pending_bytes_per_connection: 64 * 1024,
        queue_capacity: 4,
        max_requests_in_flight: 1,
        ..HookSettings::local()
    })
    .await;
}

/// Floods a hook that answers nothing with 8 KiB messages; the settings must stop the
/// connection at 8 of them.
async fn slow_hook_holds_eight_messages(settings: HookSettings) {
    let mut hook = HookServer::start_with(echo(), true, 0).await;
    let b = broker_with_hook(hook.url(), &key(), settings).await;
    let mut publ = b.client("pub").await;
    const COUNT: usize = 5_000;
    let payload = vec![7u8; 8192];
    let mut bytes = bytes::BytesMut::new();
    for _ in 0..COUNT {
        Packet::Publish(publish("t/flood", QoS::AtMostOnce, &payload, None))
            .encode(ProtocolVersion::V5, &mut bytes)
            .unwrap();
    }
    let mut writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        publ.stream.write_all(&bytes).await.unwrap();
        publ
    });
    let first = hook.next().await.messages.len();
    wait_for_metric(&b, "starling_messages_in_total{qos=\"0\"}", 8.0).await;
    // The publisher stays blocked (absence can only be observed over a window).
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut writer)
            .await
            .is_err(),
        "40 MB went through a hook that answered nothing"
    );
    assert_eq!(
        metric(&b.metrics().await, "starling_messages_in_total{qos=\"0\"}"),
        8.0,
        "the connection read past its pending bound"
    );
    hook.open(usize::MAX >> 4);
    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the publisher finishes once the hook answers")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut total = first;
        while total < COUNT {
            total += hook.next().await.messages.len();
        }
        assert_eq!(total, COUNT);
    })
    .await
    .expect("every message reached the hook");
}

#[tokio::test]
async fn a_will_goes_through_the_hook_too() {
    let _hook = HookServer::start(Arc::new(|m: &[Value]| {
        let kept: Vec<&Value> = m.iter().filter(|m| m["topic"] != "w/drop").collect();
        (200, serde_json::to_string(&kept).unwrap())
    }))
    .await;
    let b = broker_with_hook(_hook.url(), &key(), HookSettings::local()).await;
    let mut sub = b.client("sub").await;
    sub.subscribe("w/#", sub_opts(QoS::AtLeastOnce)).await;
    for topic in ["w/drop", "w/keep"] {
        let mut c = b.raw().await;
        let mut connect = common::connect_v5(topic);
        connect.will = Some(Will {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        });
        c.connect(connect).await;
        drop(c);
    }
    let got = sub.recv_publish().await;
    assert_eq!(got.topic.as_str(), "w/keep");
    sub.expect_silence(Duration::from_millis(100)).await;
}

/// Without the settings allowing it, a hook on loopback (by address or by name) or on plain
/// http is refused, and the message dropped rather than delivered unchecked.
#[tokio::test]
async fn a_hook_on_a_private_address_or_plain_http_is_refused_by_default() {
    let hook = HookServer::start(echo()).await;
    let port = hook.addr.port();
    for (url, allow_http) in [
        (format!("http://127.0.0.1:{port}/hook"), true),
        (format!("http://localhost:{port}/hook"), true),
        (format!("https://localhost:{port}/hook"), false),
        (format!("http://example.com:{port}/hook"), false),
    ] {
        let settings = HookSettings {
            allow_http,
            ..HookSettings::default()
        };
        let b = broker_with_hook(url.clone(), &key(), settings).await;
        let (mut sub, mut publ) = clients(&b).await;
        assert_eq!(
            publ.publish("t/a", QoS::AtLeastOnce, b"x").await,
            Some(ReasonCode::UNSPECIFIED_ERROR),
            "{url}"
        );
        assert_eq!(
            metric(
                &b.metrics().await,
                "starling_hook_requests_total{reason=\"refused\"}"
            ),
            1.0,
            "{url}"
        );
        sub.expect_silence(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_allowed_host_may_use_http_on_a_private_address() {
    let hook = HookServer::start(echo()).await;
    let settings = HookSettings {
        allowed_hosts: vec!["localhost".into()],
        ..HookSettings::default()
    };
    let url = format!("http://localhost:{}/hook", hook.addr.port());
    let b = broker_with_hook(url, &key(), settings).await;
    let mut publ = b.client("pub").await;
    assert_eq!(
        publ.publish("t/a", QoS::AtLeastOnce, b"x").await,
        Some(ReasonCode::SUCCESS)
    );
}

#[tokio::test]
async fn without_a_signing_key_every_message_is_dropped() {
    let hook = HookServer::start(echo()).await;
    let b = TestBroker::start().await;
    let target = HookTarget {
        url: hook.url(),
        key: None,
        broker: "demo".into(),
    };
    let h = Hook::start(
        "default",
        target,
        Arc::new(HookSettings::local()),
        b.broker.metrics.clone(),
    );
    b.broker.default_tenant.set_hook(Some(h));
    let mut publ = b.client("pub").await;
    assert_eq!(
        publ.publish("t/a", QoS::AtLeastOnce, b"x").await,
        Some(ReasonCode::UNSPECIFIED_ERROR)
    );
    assert_eq!(
        metric(
            &b.metrics().await,
            "starling_hook_requests_total{reason=\"unsigned\"}"
        ),
        1.0
    );
}

fn write_private_jwk(dir: &std::path::Path, key: &SigningKey) -> std::path::PathBuf {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwk = json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": key.public_jwk().x,
        "d": URL_SAFE_NO_PAD.encode(key.seed()),
    });
    let path = dir.join("hook-key.json");
    std::fs::write(&path, jwk.to_string()).unwrap();
    path
}

#[tokio::test]
async fn a_standalone_broker_takes_its_hook_from_the_config_file() {
    let mut hook = HookServer::start(echo()).await;
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let key_file = write_private_jwk(dir.path(), &key);
    let url = hook.url();
    let b = TestBroker::with(|c| {
        c.hook = HookSettings {
            url: Some(url),
            key_file: Some(key_file),
            ..HookSettings::local()
        };
    })
    .await;
    let mut publ = b.client("pub").await;
    assert_eq!(
        publ.publish("t/a", QoS::AtLeastOnce, b"x").await,
        Some(ReasonCode::SUCCESS)
    );
    let seen = hook.next().await;
    assert_eq!(seen.headers["x-signature-key-id"], key.kid());
    assert_eq!(seen.messages[0]["broker"], "default");
}

#[tokio::test]
async fn a_hook_key_file_without_a_private_part_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let path = dir.path().join("public-only.json");
    std::fs::write(&path, serde_json::to_string(&key.public_jwk()).unwrap()).unwrap();
    let mut config = starling_broker::config::Config::default();
    config
        .listeners
        .push(starling_broker::config::ListenerConfig::new(
            starling_broker::config::ListenerKind::Mqtt,
            "127.0.0.1:0".parse().unwrap(),
        ));
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    config.hook.url = Some("https://hooks.example.com/x".into());
    config.hook.key_file = Some(path.clone());
    let Err(err) = starling_broker::start(config).await else {
        panic!("a key file without `d` was accepted");
    };
    let text = err.to_string();
    assert!(text.contains("public-only.json"), "{text}");
    assert!(text.contains("private part"), "{text}");
}

/// A publisher that sends and disconnects at once: its QoS 0 and 1 messages still waiting for
/// the hook are delivered when the verdict comes (QoS 2 waits for the client's resend).
#[tokio::test]
async fn messages_waiting_for_the_hook_when_the_publisher_leaves_are_still_delivered() {
    let hook = HookServer::start_with(echo(), true, 0).await;
    let b = broker_with_hook(hook.url(), &key(), HookSettings::local()).await;
    let (mut sub, mut publ) = clients(&b).await;
    publ.send(Packet::Publish(publish("t/0", QoS::AtMostOnce, b"0", None)))
        .await;
    publ.send(Packet::Publish(publish(
        "t/1",
        QoS::AtLeastOnce,
        b"1",
        Some(1),
    )))
    .await;
    publ.send(Packet::Publish(publish(
        "t/2",
        QoS::ExactlyOnce,
        b"2",
        Some(2),
    )))
    .await;
    wait_for_metric(&b, "starling_messages_in_total{qos=\"2\"}", 1.0).await;
    publ.disconnect().await;
    tokio::time::timeout(WAIT, async {
        while metric(&b.metrics().await, "starling_connections") > 1.0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the publisher's connection closes");
    hook.open(100);
    assert_eq!(sub.recv_publish().await.topic.as_str(), "t/0");
    let got = sub.recv_publish().await;
    assert_eq!(got.topic.as_str(), "t/1");
    sub.send(Packet::PubAck(PubAck {
        packet_id: got.packet_id.unwrap(),
        reason: ReasonCode::SUCCESS,
        properties: Default::default(),
    }))
    .await;
    sub.expect_silence(Duration::from_millis(200)).await;
}

/// Revocation ends the session with everything it had started: messages of the revoked
/// client still waiting for the hook are not delivered when the verdict comes.
#[tokio::test]
async fn revocation_cancels_the_verdicts_the_session_is_waiting_for() {
    let hook = HookServer::start_with(echo(), true, 0).await;
    // The hook client of token tenants follows the broker's `[hook]` settings.
    let b = TestBroker::with(|c| {
        c.auth.mode = starling_broker::config::AuthMode::Token;
        c.embedded_tenants = true;
        c.hook = HookSettings::local();
    })
    .await;
    let tokens = SigningKey::generate().unwrap();
    let mut state = starling_broker::auth::directory::TenantState {
        jwks: starling_token::Jwks {
            keys: vec![tokens.public_jwk()],
        },
        revoked: Default::default(),
        hook: Some(HookTarget {
            url: hook.url(),
            key: Some(key()),
            broker: "acme".into(),
        }),
        limits: Default::default(),
    };
    b.broker.directory.apply("acme", &state).unwrap();
    let connect = |id: &str| {
        let token = tokens.sign_claims(&starling_token::Claims {
            sub: id.to_string(),
            jti: format!("j-{id}"),
            iat: common::tokens::now(),
            exp: None,
            nbf: None,
            topic_acl: starling_token::TopicAcl::All,
        });
        common::tokens::with_password(id, &token)
    };
    let mut sub = b.raw().await;
    assert_eq!(
        sub.connect(connect("sub")).await.reason,
        ReasonCode::SUCCESS
    );
    sub.subscribe("t/#", sub_opts(QoS::AtLeastOnce)).await;
    let mut victim = b.raw().await;
    assert_eq!(
        victim.connect(connect("victim")).await.reason,
        ReasonCode::SUCCESS
    );
    victim
        .send(Packet::Publish(publish("t/0", QoS::AtMostOnce, b"0", None)))
        .await;
    victim
        .send(Packet::Publish(publish(
            "t/1",
            QoS::AtLeastOnce,
            b"1",
            Some(1),
        )))
        .await;
    wait_for_metric(&b, "starling_messages_in_total{qos=\"1\"}", 1.0).await;
    state.revoked.insert("j-victim".into());
    b.broker.directory.apply("acme", &state).unwrap();
    victim.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    // The hook answers now, and would let both through.
    hook.open(100);
    let mut marker = b.raw().await;
    assert_eq!(
        marker.connect(connect("marker")).await.reason,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        marker.publish("t/end", QoS::AtLeastOnce, b"end").await,
        Some(ReasonCode::SUCCESS)
    );
    assert_eq!(
        sub.recv_publish().await.topic.as_str(),
        "t/end",
        "a message of the revoked session was delivered"
    );
}
