//! WebSocket listeners with a real client (tokio-tungstenite) on loopback: subprotocol selection
//! and refusal, request paths, frames versus MQTT packets, ping, close codes and size limits; and
//! raw MQTT on a wss port.

mod common;

use bytes::Bytes;
use common::transport::*;
use futures_util::{SinkExt, StreamExt};
use starling_broker::transport::{ListenerKind, Transport, TransportConfig, ws};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

async fn ws_listener(ws: ws::WsConfig) -> TestListener {
    let cfg = TransportConfig {
        ws,
        ..TransportConfig::plain()
    };
    TestListener::start(ListenerKind::Ws, cfg).await
}

async fn tcp(listener: &TestListener) -> TcpStream {
    within(TcpStream::connect(listener.addr)).await.unwrap()
}

/// The next data message, skipping nothing else: a close or error fails the test.
async fn next_binary<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Bytes
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match within(ws.next()).await {
        Some(Ok(Message::Binary(b))) => b,
        other => panic!("expected a binary message, got {other:?}"),
    }
}

/// Reads until the server's close frame and returns its code.
async fn close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> CloseCode
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code,
            Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn mqtt_subprotocol_is_selected_on_any_path() {
    let mut listener = ws_listener(ws::WsConfig::default()).await;
    for (path, offered, selected) in [
        ("/mqtt", vec!["mqtt"], "mqtt"),
        ("/", vec!["mqtt"], "mqtt"),
        ("/some/other/path?x=1", vec!["mqttv3.1"], "mqttv3.1"),
        ("/mqtt", vec!["mqttv3.1", "mqtt"], "mqtt"),
        ("/mqtt", vec!["wamp", "mqtt"], "mqtt"),
    ] {
        let (mut ws, response) = ws_connect(tcp(&listener).await, path, &offered)
            .await
            .unwrap();
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            selected,
            "{offered:?}"
        );
        let (transport, _, info) = listener.expect_accepted().await;
        assert_eq!(transport, Transport::Ws);
        let info = info.unwrap();
        assert_eq!(info.path, path);
        assert_eq!(info.subprotocol, Some(selected));
        let packet = publish("a/b", b"x");
        within(ws.send(Message::Binary(packet.clone().into())))
            .await
            .unwrap();
        assert_eq!(next_binary(&mut ws).await, packet);
    }
}

#[tokio::test]
async fn a_missing_subprotocol_is_accepted_by_default_and_refused_when_required() {
    let mut listener = ws_listener(ws::WsConfig::default()).await;
    let (_ws, response) = ws_connect(tcp(&listener).await, "/mqtt", &[])
        .await
        .unwrap();
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    assert_eq!(
        listener.expect_accepted().await.2.unwrap().subprotocol,
        None
    );

    let mut strict = ws_listener(ws::WsConfig {
        require_subprotocol: true,
        ..ws::WsConfig::default()
    })
    .await;
    match ws_connect(tcp(&strict).await, "/mqtt", &[]).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("expected HTTP 400, got {other:?}"),
    }
    assert_eq!(strict.expect_refused().await, "ws_subprotocol");
}

#[tokio::test]
async fn other_subprotocols_get_400() {
    let mut listener = ws_listener(ws::WsConfig::default()).await;
    match ws_connect(tcp(&listener).await, "/mqtt", &["wamp", "graphql-ws"]).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("expected HTTP 400, got {other:?}"),
    }
    assert_eq!(listener.expect_refused().await, "ws_subprotocol");
}

#[tokio::test]
async fn requests_that_are_not_websocket_upgrades_are_refused_with_http_errors() {
    let mut listener = ws_listener(ws::WsConfig {
        max_header_bytes: 2048,
        ..ws::WsConfig::default()
    })
    .await;
    let no_upgrade = b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n";
    assert_eq!(raw_http_status(listener.addr, no_upgrade).await, 400);
    assert_eq!(listener.expect_refused().await, "ws_not_upgrade");

    let old_version =
        b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n";
    assert_eq!(raw_http_status(listener.addr, old_version).await, 426);
    assert_eq!(listener.expect_refused().await, "ws_version");

    let mut huge = b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nX-Padding: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 4096));
    huge.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw_http_status(listener.addr, &huge).await, 431);
    assert_eq!(listener.expect_refused().await, "ws_header_too_large");

    let mut many = b"GET /mqtt HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(raw_http_status(listener.addr, &many).await, 431);
    assert_eq!(listener.expect_refused().await, "ws_header_too_large");

    assert_eq!(
        raw_http_status(listener.addr, b"POST /mqtt HTTP/1.1\r\n\r\n").await,
        400
    );
    assert_eq!(listener.expect_refused().await, "ws_malformed");
}

#[tokio::test]
async fn a_packet_may_span_messages_and_a_message_may_carry_several_packets() {
    let mut listener = ws_listener(ws::WsConfig::default()).await;
    let (mut ws, _) = ws_connect(tcp(&listener).await, "/mqtt", &["mqtt"])
        .await
        .unwrap();
    listener.expect_accepted().await;

    // One PUBLISH in three messages, as MQTT.js in Node sends a CONNECT.
    let first = publish("split/topic", &[7u8; 300]);
    for part in [&first[..1], &first[1..100], &first[100..]] {
        within(ws.send(Message::Binary(Bytes::copy_from_slice(part))))
            .await
            .unwrap();
    }
    assert_eq!(
        next_binary(&mut ws).await,
        first,
        "echoed once complete, in one message"
    );

    // Two packets in one message come back in one message (one flush).
    let (a, b) = (publish("x", b"1"), publish("y", b"22"));
    let both = [a.clone(), b.clone()].concat();
    within(ws.send(Message::Binary(both.clone().into())))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut ws).await, both);

    // A packet fragmented into continuation frames of one message.
    let c = publish("fragmented", &[9u8; 200]);
    within(ws.send(Message::Frame(Frame::message(
        Bytes::copy_from_slice(&c[..50]),
        OpCode::Data(Data::Binary),
        false,
    ))))
    .await
    .unwrap();
    within(ws.send(Message::Frame(Frame::message(
        Bytes::copy_from_slice(&c[50..]),
        OpCode::Data(Data::Continue),
        true,
    ))))
    .await
    .unwrap();
    assert_eq!(next_binary(&mut ws).await, c);
}

#[tokio::test]
async fn a_ping_gets_a_pong_with_the_same_payload() {
    let mut listener = ws_listener(ws::WsConfig::default()).await;
    let (mut ws, _) = ws_connect(tcp(&listener).await, "/", &["mqtt"])
        .await
        .unwrap();
    listener.expect_accepted().await;
    within(ws.send(Message::Ping(Bytes::from_static(b"are you there"))))
        .await
        .unwrap();
    match within(ws.next()).await {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    // The stream is unaffected.
    let packet = publish("after/ping", b"ok");
    within(ws.send(Message::Binary(packet.clone().into())))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut ws).await, packet);
}

#[tokio::test]
async fn a_text_frame_closes_with_1003() {
    let mut listener = ws_listener(ws::WsConfig::default()).await;
    let (mut ws, _) = ws_connect(tcp(&listener).await, "/mqtt", &["mqtt"])
        .await
        .unwrap();
    listener.expect_accepted().await;
    within(ws.send(Message::Text("CONNECT".into())))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::Unsupported);
}

#[tokio::test]
async fn a_message_above_the_limit_closes_with_1009() {
    let mut listener = ws_listener(ws::WsConfig {
        max_message_size: 1024,
        max_frame_size: 1024,
        ..ws::WsConfig::default()
    })
    .await;
    let (mut ws, _) = ws_connect(tcp(&listener).await, "/mqtt", &["mqtt"])
        .await
        .unwrap();
    listener.expect_accepted().await;
    let fits = publish("t", &[1u8; 900]);
    within(ws.send(Message::Binary(fits.clone().into())))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut ws).await, fits);
    within(ws.send(Message::Binary(publish("t", &[1u8; 2000]).into())))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::Size);
}

#[tokio::test]
async fn a_client_close_is_answered_and_a_server_shutdown_sends_1000() {
    let mut listener = ws_listener(ws::WsConfig::default()).await;
    let (mut ws, _) = ws_connect(tcp(&listener).await, "/mqtt", &["mqtt"])
        .await
        .unwrap();
    listener.expect_accepted().await;
    within(ws.close(None)).await.unwrap();
    // The server answers the close; the stream then ends.
    loop {
        match within(ws.next()).await {
            None => break,
            Some(Ok(Message::Close(_))) => continue,
            Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => break,
            other => panic!("expected the close handshake to finish, got {other:?}"),
        }
    }

    // A server-side shutdown (here after an MQTT DISCONNECT) sends close 1000.
    let (mut ws, _) = ws_connect(tcp(&listener).await, "/mqtt", &["mqtt"])
        .await
        .unwrap();
    listener.expect_accepted().await;
    within(ws.send(Message::Binary(Bytes::from_static(&[0xE0, 0x00]))))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::Normal);
}

#[tokio::test]
async fn a_ws_listener_refuses_a_first_byte_that_is_neither_http_nor_connect() {
    let mut listener = ws_listener(ws::WsConfig::default()).await;
    let mut tcp = tcp(&listener).await;
    within(tcp.write_all(&[0x16, 0x03, 0x01, 0x00]))
        .await
        .unwrap();
    assert_eq!(listener.expect_refused().await, "unknown_protocol");
}

#[tokio::test]
async fn a_wss_listener_also_speaks_raw_mqtt_over_tls() {
    let pki = Pki::new();
    let cfg = TransportConfig::with_tls(ListenerKind::Wss, &pki.listener_config()).unwrap();
    let mut listener = TestListener::start(ListenerKind::Wss, cfg).await;

    // An MQTT CONNECT (0x10) right after the TLS handshake, as mqtts://host:8884 clients do.
    let mut stream = within(tls_connect(
        listener.addr,
        client_config(&ClientOptions::trusting(&pki.files.ca_cert)),
    ))
    .await
    .unwrap();
    let connect: &[u8] = &[
        0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x04, b'd',
        b'e', b'v', b'1',
    ];
    within(stream.write_all(connect)).await.unwrap();
    let mut back = vec![0; connect.len()];
    within(tokio::io::AsyncReadExt::read_exact(&mut stream, &mut back))
        .await
        .unwrap();
    assert_eq!(back, connect);
    let (transport, info, ws) = listener.expect_accepted().await;
    assert_eq!(transport, Transport::Tls);
    assert!(info.is_some() && ws.is_none());

    // And WebSockets on the same port.
    let stream = within(tls_connect(
        listener.addr,
        client_config(&ClientOptions::trusting(&pki.files.ca_cert)),
    ))
    .await
    .unwrap();
    let (mut ws, _) = ws_connect(stream, "/mqtt", &["mqtt"]).await.unwrap();
    assert_eq!(listener.expect_accepted().await.0, Transport::Wss);
    let packet = publish("over/wss", b"hi");
    within(ws.send(Message::Binary(packet.clone().into())))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut ws).await, packet);
}
