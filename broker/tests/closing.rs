//! How the broker ends a connection: what it wrote last (a DISCONNECT, a refusing CONNACK)
//! reaches the client followed by an orderly close (FIN), never a reset, even when the client
//! keeps writing; over WebSockets the close frame says why (1000, 1001, 1002, 1008, 1009) and the
//! TCP connection closes only after the client's close frame. The linger that makes this work
//! delays nothing else and is bounded.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use futures_util::{SinkExt, StreamExt};
use starling_broker::config::{ListenerConfig, ListenerKind};
use starling_codec::{
    ConnectProperties, Decoder, Direction, MqttString, Packet, ProtocolVersion, QoS, ReasonCode,
    Will, WillProperties,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

macro_rules! timed {
    ($body:expr) => {
        tokio::time::timeout(Duration::from_secs(30), $body)
            .await
            .expect("test timed out")
    };
}

/// Everything the broker sends until it closes, and how it closed: `Ok` for an orderly end of
/// stream (FIN), the read error otherwise (a reset is `ConnectionReset`).
async fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the broker closes the connection in time");
    (got, end)
}

/// Decodes what a v5 (or 3.1.1) client read.
fn packets(version: ProtocolVersion, bytes: &[u8]) -> Vec<Packet> {
    let mut decoder = Decoder::with_version(Direction::ToClient, version, 268_435_460);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(p) = decoder.decode(&mut buf).expect("valid packets") {
        out.push(p);
    }
    assert!(buf.is_empty(), "a partial packet at the end: {buf:?}");
    out
}

fn encode(version: ProtocolVersion, p: Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    p.encode(version, &mut out).unwrap();
    out.to_vec()
}

/// A client that goes on writing after the broker's DISCONNECT reads that DISCONNECT and then
/// the end of the stream; closing at once would have answered its bytes with a reset, which
/// destroys the DISCONNECT before the client reads it.
#[tokio::test]
async fn a_client_that_keeps_writing_after_disconnect_reads_it_then_an_orderly_fin() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.client("keeps-writing").await;
        // [MQTT-3.1.0-2] a second CONNECT is a protocol error: DISCONNECT 0x82.
        let second = encode(
            ProtocolVersion::V5,
            Packet::Connect(Box::new(connect_v5("keeps-writing"))),
        );
        c.stream.write_all(&second).await.unwrap();
        let pings = [0xC0u8, 0x00].repeat(512);
        for _ in 0..64 {
            // The broker keeps reading (and discarding) while it lingers: no write fails.
            c.stream.write_all(&pings).await.unwrap();
            tokio::task::yield_now().await;
        }
        let (got, end) = read_until_closed(&mut c.stream).await;
        assert!(end.is_ok(), "the connection was reset: {end:?}");
        let got = packets(ProtocolVersion::V5, &got);
        match got.as_slice() {
            [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR),
            other => panic!("expected DISCONNECT 0x82 alone, got {other:?}"),
        }
    })
}

/// Over TLS the same: the DISCONNECT, then the broker's `close_notify` (an orderly end of the TLS
/// stream; a reset or a FIN without it would be an error here).
#[tokio::test]
async fn over_tls_a_client_that_keeps_writing_reads_the_disconnect_then_close_notify() {
    timed!(async {
        let dir = tempfile::tempdir().unwrap();
        let b = TestBroker::with(|c| {
            c.listeners.push(ListenerConfig::new(
                ListenerKind::Mqtts,
                "127.0.0.1:0".parse().unwrap(),
            ));
            c.tls.dev_tls = Some(dir.path().join("dev-tls"));
        })
        .await;
        let ca = b.broker.tls.dev().expect("dev tls").ca_cert.clone();
        let config =
            common::transport::client_config(&common::transport::ClientOptions::trusting(&ca));
        let tls =
            common::transport::tls_connect(b.broker.addr(ListenerKind::Mqtts).unwrap(), config)
                .await
                .unwrap();
        let mut c = RawClient::new(tls, ProtocolVersion::V5);
        assert_eq!(
            c.connect(connect_v5("tls-writer")).await.reason,
            ReasonCode::SUCCESS
        );
        // [MQTT-3.1.0-2] a second CONNECT: DISCONNECT 0x82; the client goes on writing.
        c.send(Packet::Connect(Box::new(connect_v5("tls-writer"))))
            .await;
        let pings = [0xC0u8, 0x00].repeat(512);
        for _ in 0..64 {
            c.stream.write_all(&pings).await.unwrap();
            c.stream.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        let mut got = Vec::new();
        let end = tokio::time::timeout(WAIT, c.stream.read_to_end(&mut got))
            .await
            .expect("the broker closes in time");
        assert!(end.is_ok(), "not an orderly TLS close: {end:?}");
        match packets(ProtocolVersion::V5, &got).as_slice() {
            [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR),
            other => panic!("expected DISCONNECT 0x82 alone, got {other:?}"),
        }
    })
}

/// The same for a CONNECT refused with a CONNACK and a client that sends packets right behind
/// its CONNECT, as clients do.
#[tokio::test]
async fn a_refused_connect_is_read_by_a_client_that_sent_more_behind_it() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.raw().await;
        // A client identifier over the limit (256 bytes by default): 0x85 [MQTT-3.1.3-8].
        let connect = connect_v5(&"x".repeat(300));
        let bytes = encode(ProtocolVersion::V5, Packet::Connect(Box::new(connect)));
        c.stream.write_all(&bytes).await.unwrap();
        let pings = [0xC0u8, 0x00].repeat(512);
        for _ in 0..64 {
            c.stream.write_all(&pings).await.unwrap();
            tokio::task::yield_now().await;
        }
        let (got, end) = read_until_closed(&mut c.stream).await;
        assert!(end.is_ok(), "the connection was reset: {end:?}");
        match packets(ProtocolVersion::V5, &got).as_slice() {
            [Packet::ConnAck(a)] => assert_eq!(a.reason, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
            other => panic!("expected CONNACK 0x85 alone, got {other:?}"),
        }
    })
}

/// While a closed socket lingers (its client neither reads nor closes), its will is already
/// published and its session can be taken over: the linger delays nothing but the socket.
#[tokio::test]
async fn a_lingering_socket_holds_neither_the_will_nor_the_session() {
    timed!(async {
        let b = TestBroker::with(|c| c.limits.close_linger_ms = Some(600_000)).await;
        let mut watcher = b.client("watcher").await;
        watcher
            .subscribe("wills/lingering", sub_opts(QoS::AtLeastOnce))
            .await;
        let mut c = b.raw().await;
        let mut connect = connect_v5("lingering");
        connect.clean_start = false;
        connect.properties = ConnectProperties {
            session_expiry_interval: Some(600),
            ..Default::default()
        };
        connect.will = Some(Will {
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: MqttString::from("wills/lingering"),
            payload: bytes::Bytes::from_static(b"gone"),
            properties: WillProperties::default(),
        });
        assert_eq!(c.connect(connect).await.reason, ReasonCode::SUCCESS);
        // A malformed packet: the broker closes (the will goes) and lingers on a socket whose
        // client does nothing more.
        c.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;
        let will = watcher.recv_publish().await;
        assert_eq!(&will.payload[..], b"gone");
        // The session is free: a new connection resumes it at once.
        let mut again = b.raw().await;
        let mut resume = connect_v5("lingering");
        resume.clean_start = false;
        resume.properties.session_expiry_interval = Some(600);
        let ack = again.connect(resume).await;
        assert_eq!(ack.reason, ReasonCode::SUCCESS);
        assert!(ack.session_present);
        let metrics = b.metrics().await;
        assert_eq!(metric(&metrics, "starling_lingering_sockets"), 1.0);
        drop(c);
    })
}

/// The broker's shutdown waits for lingering sockets only within its drain deadline.
#[tokio::test]
async fn shutdown_is_not_held_by_lingering_sockets_beyond_its_deadline() {
    timed!(async {
        let b = TestBroker::with(|c| {
            c.limits.close_linger_ms = Some(600_000);
            c.shutdown.drain_timeout_secs = 1;
        })
        .await;
        let mut c = b.client("never-closes").await;
        let TestBroker { broker } = b;
        let stop = tokio::spawn(broker.shutdown());
        // DISCONNECT 0x8B and the FIN arrive; the client keeps its socket open.
        c.expect_disconnect(ReasonCode::SERVER_SHUTTING_DOWN).await;
        // Within the test's bound, far below the linger.
        stop.await.unwrap();
        drop(c);
    })
}

/// At most `limits.max_lingering` sockets linger; beyond that a socket closes at once, and it
/// is counted.
#[tokio::test]
async fn beyond_max_lingering_a_socket_closes_at_once_and_is_counted() {
    timed!(async {
        let b = TestBroker::with(|c| {
            c.limits.close_linger_ms = Some(600_000);
            c.limits.max_lingering = Some(1);
        })
        .await;
        let mut first = b.client("first").await;
        first.send_bytes(&[0xC0, 0x01, 0x00]).await;
        first.expect_disconnect(ReasonCode::MALFORMED_PACKET).await;
        let mut second = b.client("second").await;
        second.send_bytes(&[0xC0, 0x01, 0x00]).await;
        second.expect_disconnect(ReasonCode::MALFORMED_PACKET).await;
        let metrics = b.metrics().await;
        assert_eq!(metric(&metrics, "starling_lingering_sockets"), 1.0);
        assert_eq!(metric(&metrics, "starling_linger_skipped_total"), 1.0);
    })
}

// === WebSockets ===

async fn ws_broker(edit: impl FnOnce(&mut starling_broker::config::Config)) -> TestBroker {
    TestBroker::with(|c| {
        c.listeners.push(ListenerConfig::new(
            ListenerKind::Ws,
            "127.0.0.1:0".parse().unwrap(),
        ));
        edit(c);
    })
    .await
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_client(b: &TestBroker) -> Ws {
    let addr = b.broker.addr(ListenerKind::Ws).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{addr}/mqtt"
        ))
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "mqtt".parse().expect("a header value"),
    );
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tcp))
        .await
        .unwrap()
        .unwrap();
    ws
}

async fn ws_send(ws: &mut Ws, packet: Packet) {
    let bytes = encode(ProtocolVersion::V5, packet);
    tokio::time::timeout(WAIT, ws.send(Message::Binary(bytes.into())))
        .await
        .unwrap()
        .unwrap();
}

/// The MQTT packets, then the close frame's code; the close handshake then completes.
async fn ws_until_close(ws: &mut Ws) -> (Vec<Packet>, CloseCode) {
    let mut bytes = Vec::new();
    let code = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Binary(b))) => bytes.extend_from_slice(&b),
            Some(Ok(Message::Close(Some(frame)))) => break frame.code,
            other => panic!("expected MQTT bytes or a close frame, got {other:?}"),
        }
    };
    // tungstenite replies to the close; the server then ends the TCP connection.
    match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
        None => {}
        other => panic!("expected the end of the stream, got {other:?}"),
    }
    (packets(ProtocolVersion::V5, &bytes), code)
}

async fn ws_connected(b: &TestBroker, id: &str) -> Ws {
    let mut ws = ws_client(b).await;
    ws_send(&mut ws, Packet::Connect(Box::new(connect_v5(id)))).await;
    match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
        Some(Ok(Message::Binary(b))) => match packets(ProtocolVersion::V5, &b).as_slice() {
            [Packet::ConnAck(a)] => assert_eq!(a.reason, ReasonCode::SUCCESS),
            other => panic!("expected CONNACK, got {other:?}"),
        },
        other => panic!("expected CONNACK, got {other:?}"),
    }
    ws
}

#[tokio::test]
async fn websocket_close_codes_say_why_the_connection_ended() {
    timed!(async {
        let b = ws_broker(|c| c.limits.max_packet_size = Some(1024)).await;

        // The client's DISCONNECT: 1000.
        let mut ws = ws_connected(&b, "ws-normal").await;
        ws_send(
            &mut ws,
            Packet::Disconnect(starling_codec::Disconnect::new(
                ReasonCode::NORMAL_DISCONNECTION,
            )),
        )
        .await;
        let (got, code) = ws_until_close(&mut ws).await;
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(code, CloseCode::Normal);

        // A protocol error: DISCONNECT 0x82, then 1002.
        let mut ws = ws_connected(&b, "ws-protocol").await;
        ws_send(
            &mut ws,
            Packet::Connect(Box::new(connect_v5("ws-protocol"))),
        )
        .await;
        let (got, code) = ws_until_close(&mut ws).await;
        assert!(
            matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::PROTOCOL_ERROR),
            "{got:?}"
        );
        assert_eq!(code, CloseCode::Protocol);

        // A policy refusal: CONNACK 0x85 (client identifier over the limit), then 1008.
        let mut ws = ws_client(&b).await;
        let connect = connect_v5(&"x".repeat(300));
        ws_send(&mut ws, Packet::Connect(Box::new(connect))).await;
        let (got, code) = ws_until_close(&mut ws).await;
        assert!(
            matches!(got.as_slice(), [Packet::ConnAck(a)] if a.reason == ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
            "{got:?}"
        );
        assert_eq!(code, CloseCode::Policy);

        // A packet above the broker's Maximum Packet Size: DISCONNECT 0x95, then 1009.
        let mut ws = ws_connected(&b, "ws-large").await;
        ws_send(
            &mut ws,
            Packet::Publish(publish("t", QoS::AtMostOnce, &[0u8; 2000], None)),
        )
        .await;
        let (got, code) = ws_until_close(&mut ws).await;
        assert!(
            matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::PACKET_TOO_LARGE),
            "{got:?}"
        );
        assert_eq!(code, CloseCode::Size);
    })
}

#[tokio::test]
async fn websocket_close_on_shutdown_is_1001() {
    timed!(async {
        let b = ws_broker(|_| {}).await;
        let mut ws = ws_connected(&b, "ws-shutdown").await;
        let TestBroker { broker } = b;
        let stop = tokio::spawn(broker.shutdown());
        let (got, code) = ws_until_close(&mut ws).await;
        assert!(
            matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::SERVER_SHUTTING_DOWN),
            "{got:?}"
        );
        assert_eq!(code, CloseCode::Away);
        stop.await.unwrap();
    })
}

// A WebSocket client written out by hand, to see the order of frames and TCP events.

/// Opens a WebSocket to the broker's ws listener over raw TCP.
async fn raw_ws(b: &TestBroker) -> TcpStream {
    let addr = b.broker.addr(ListenerKind::Ws).unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Protocol: mqtt\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(WAIT, tcp.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    tcp
}

/// A masked client frame (RFC 6455 section 5.2) with FIN set.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// The next server frame (unmasked, unfragmented, short): opcode and payload.
async fn server_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    let len = match head[1] & 0x7F {
        126 => {
            let mut ext = [0u8; 2];
            tcp.read_exact(&mut ext).await.unwrap();
            usize::from(u16::from_be_bytes(ext))
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x0F, payload)
}

/// RFC 6455 section 7.1.1: the server sends its close frame, waits for the client's, and only
/// then closes the TCP connection (first, as the server should).
#[tokio::test]
async fn a_websocket_close_waits_for_the_clients_close_frame_before_the_tcp_close() {
    timed!(async {
        let b = ws_broker(|_| {}).await;
        let mut tcp = raw_ws(&b).await;
        let connect = encode(
            ProtocolVersion::V5,
            Packet::Connect(Box::new(connect_v5("raw-ws"))),
        );
        tcp.write_all(&client_frame(0x2, &connect)).await.unwrap();
        let (opcode, connack) = server_frame(&mut tcp).await;
        assert_eq!(opcode, 0x2);
        assert!(matches!(
            packets(ProtocolVersion::V5, &connack).as_slice(),
            [Packet::ConnAck(_)]
        ));
        tcp.write_all(&client_frame(0x2, &[0xE0, 0x00]))
            .await
            .unwrap();
        let (opcode, payload) = server_frame(&mut tcp).await;
        assert_eq!(opcode, 0x8, "a close frame");
        assert_eq!(&payload[..2], &1000u16.to_be_bytes());
        // The TCP connection stays open for the client's close frame.
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut byte)).await;
        assert!(
            early.is_err(),
            "the server closed before the close handshake: {early:?}"
        );
        tcp.write_all(&client_frame(0x8, &1000u16.to_be_bytes()))
            .await
            .unwrap();
        let (rest, end) = read_until_closed(&mut tcp).await;
        assert!(rest.is_empty(), "{rest:?}");
        assert!(end.is_ok(), "the connection was reset: {end:?}");
    })
}
