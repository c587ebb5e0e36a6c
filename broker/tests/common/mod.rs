//! The broker's one test helper module: a broker started in-process on port 0, and a raw MQTT
//! client that speaks through `starling-codec` so tests can send exact packets (or exact bytes)
//! and assert exact answers; tokens and their signing (`tokens`, `sign_token.py`), certificates
//! and TLS and WebSocket clients (`transport`), a slow HTTP client (`slow_http`) and the
//! broker as a process (`process`).
#![allow(dead_code, unreachable_pub)]

pub mod slow_http;
pub mod tokens;
pub mod transport;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use starling_broker::config::{Config, ListenerConfig, ListenerKind, Profile};
use starling_broker::{RunningBroker, start};
use starling_codec::{
    ConnAck, Connect, ConnectProperties, Decoder, Direction, Disconnect, MqttString, Packet,
    ProtocolVersion, PubAck, Publish, PublishProperties, QoS, ReasonCode, SubAck, Subscribe,
    SubscribeProperties, Subscription, SubscriptionOptions,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// A broker on loopback port 0 with `--auth none`.
pub struct TestBroker {
    pub broker: RunningBroker,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::with(|_| {}).await
    }

    pub async fn with(edit: impl FnOnce(&mut Config)) -> TestBroker {
        let mut config = Config::default();
        config.listeners.push(ListenerConfig::new(
            ListenerKind::Mqtt,
            "127.0.0.1:0".parse().unwrap(),
        ));
        config.http.bind = "127.0.0.1:0".parse().unwrap();
        config.limits.profile = Some(Profile::Default);
        edit(&mut config);
        let broker = start(config).await.expect("broker starts");
        TestBroker { broker }
    }

    pub fn addr(&self) -> SocketAddr {
        self.broker.addr(ListenerKind::Mqtt).unwrap()
    }

    pub async fn raw(&self) -> RawClient<TcpStream> {
        let s = TcpStream::connect(self.addr()).await.unwrap();
        s.set_nodelay(true).unwrap();
        RawClient::new(s, ProtocolVersion::V5)
    }

    pub async fn raw_v3(&self) -> RawClient<TcpStream> {
        let s = TcpStream::connect(self.addr()).await.unwrap();
        RawClient::new(s, ProtocolVersion::V3_1_1)
    }

    /// Connects a v5 client with clean start and the given client id; asserts CONNACK success.
    pub async fn client(&self, id: &str) -> RawClient<TcpStream> {
        let mut c = self.raw().await;
        let ack = c.connect(connect_v5(id)).await;
        assert_eq!(ack.reason, ReasonCode::SUCCESS, "{ack:?}");
        c
    }

    pub async fn metrics(&self) -> String {
        http_get(self.broker.http, "/metrics").await.1
    }
}

/// A CONNECT with clean start, keep alive 60 and no properties.
pub fn connect_v5(id: &str) -> Connect {
    Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: MqttString::from(id.to_string()),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

pub fn connect_v3(id: &str) -> Connect {
    Connect {
        protocol: ProtocolVersion::V3_1_1,
        ..connect_v5(id)
    }
}

pub fn publish(topic: &str, qos: QoS, payload: &[u8], packet_id: Option<u16>) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: MqttString::from(topic.to_string()),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

pub fn sub_opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..Default::default()
    }
}

/// A raw MQTT client over any byte stream.
pub struct RawClient<S> {
    pub stream: S,
    pub version: ProtocolVersion,
    decoder: Decoder,
    buf: BytesMut,
    next_id: u16,
    /// Bound of every wait for the broker; longer for paused-clock tests, where it is virtual.
    pub wait: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawClient<S> {
    pub fn new(stream: S, version: ProtocolVersion) -> Self {
        RawClient {
            stream,
            version,
            decoder: Decoder::with_version(Direction::ToClient, version, 268_435_460),
            buf: BytesMut::new(),
            next_id: 0,
            wait: WAIT,
        }
    }

    pub fn next_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out).expect("encodable");
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next packet, or `None` when the broker closed the connection.
    pub async fn recv_opt(&mut self) -> Option<Packet> {
        let fut = async {
            loop {
                match self.decoder.decode(&mut self.buf) {
                    Ok(Some(p)) => return Some(p),
                    Ok(None) => {}
                    Err(e) => panic!("broker sent an invalid packet: {e}"),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(self.wait, fut)
            .await
            .expect("no packet or close from the broker in time")
    }

    pub async fn recv(&mut self) -> Packet {
        self.recv_opt().await.expect("connection closed")
    }

    /// Asserts nothing arrives within `d` (used only to check absence; presence is awaited).
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(p) = tokio::time::timeout(d, async {
            loop {
                if let Ok(Some(p)) = self.decoder.decode(&mut self.buf) {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        {
            panic!("expected nothing, got {p:?}");
        }
    }

    pub async fn connect(&mut self, connect: Connect) -> ConnAck {
        self.version = connect.protocol;
        self.decoder = Decoder::with_version(Direction::ToClient, connect.protocol, 268_435_460);
        self.send(Packet::Connect(Box::new(connect))).await;
        match self.recv().await {
            Packet::ConnAck(a) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn subscribe(&mut self, filter: &str, opts: SubscriptionOptions) -> SubAck {
        self.subscribe_with(filter, opts, None).await
    }

    pub async fn subscribe_with(
        &mut self,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> SubAck {
        let packet_id = self.next_id();
        self.send(Packet::Subscribe(Subscribe {
            packet_id,
            subscriptions: vec![Subscription {
                filter: MqttString::from(filter.to_string()),
                options,
            }],
            properties: SubscribeProperties {
                subscription_identifier: id,
                ..Default::default()
            },
        }))
        .await;
        match self.recv().await {
            Packet::SubAck(a) => {
                assert_eq!(a.packet_id, packet_id);
                a
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes and waits for the acknowledgement of QoS 1 (PUBACK) or QoS 2 (through PUBCOMP).
    pub async fn publish(&mut self, topic: &str, qos: QoS, payload: &[u8]) -> Option<ReasonCode> {
        let id = (qos != QoS::AtMostOnce).then(|| self.next_id());
        self.send(Packet::Publish(publish(topic, qos, payload, id)))
            .await;
        match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => match self.recv().await {
                Packet::PubAck(PubAck {
                    packet_id, reason, ..
                }) => {
                    assert_eq!(Some(packet_id), id);
                    Some(reason)
                }
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                let rec = match self.recv().await {
                    Packet::PubRec(r) => r,
                    other => panic!("expected PUBREC, got {other:?}"),
                };
                if rec.reason.is_error() {
                    return Some(rec.reason);
                }
                self.send(Packet::PubRel(starling_codec::PubRel {
                    packet_id: rec.packet_id,
                    reason: ReasonCode::SUCCESS,
                    properties: Default::default(),
                }))
                .await;
                match self.recv().await {
                    Packet::PubComp(c) => Some(c.reason),
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    /// The next PUBLISH (panics on anything else).
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Expects DISCONNECT with `reason` (v5) and then the close.
    pub async fn expect_disconnect(&mut self, reason: ReasonCode) {
        match self.recv_opt().await {
            Some(Packet::Disconnect(Disconnect { reason: r, .. })) => assert_eq!(
                r, reason,
                "expected DISCONNECT 0x{:02X}, got 0x{:02X}",
                reason.0, r.0
            ),
            other => panic!("expected DISCONNECT 0x{:02X}, got {other:?}", reason.0),
        }
        assert!(self.recv_opt().await.is_none(), "connection not closed");
    }

    pub async fn expect_closed(&mut self) {
        if let Some(p) = self.recv_opt().await {
            panic!("expected the connection to close, got {p:?}");
        }
    }

    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect {
            reason: ReasonCode::NORMAL_DISCONNECTION,
            properties: Default::default(),
        }))
        .await;
    }
}

pub use starling_http::testing::http_get;

/// The value of a metric line `name{labels} value` in the exposition text (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Polls `/metrics` until `series` satisfies `done`, for at most [`WAIT`]; returns its value.
pub async fn wait_for_series(http: SocketAddr, series: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = metric(&http_get(http, "/metrics").await.1, series);
        if done(value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is still {value} after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
