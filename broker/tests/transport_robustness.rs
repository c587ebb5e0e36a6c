//! What clients send before or during a handshake cannot crash a listener or hold up others:
//! TLS garbage, plain HTTP on a TLS port, handshakes that never finish, slowloris headers. Each
//! bad connection is refused while a good one, opened after it and while it is still pending,
//! completes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::transport::*;
use starling_broker::transport::{self, ListenerKind, TransportConfig, ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A good TLS client that completes a round trip while the bad connection is pending.
async fn good_tls_client(addr: SocketAddr, pki: &Pki) {
    let mut stream = within(tls_connect(
        addr,
        client_config(&ClientOptions::trusting(&pki.files.ca_cert)),
    ))
    .await
    .unwrap();
    roundtrip(&mut stream, b"served meanwhile").await;
}

async fn mqtts(pki: &Pki, handshake_timeout: Duration) -> TestListener {
    let mut cfg = TransportConfig::with_tls(ListenerKind::Mqtts, &pki.listener_config()).unwrap();
    cfg.handshake_timeout = handshake_timeout;
    TestListener::start(ListenerKind::Mqtts, cfg).await
}

#[tokio::test]
async fn tls_garbage_is_refused_while_another_client_is_served() {
    let pki = Pki::new();
    let mut listener = mqtts(&pki, Duration::from_secs(30)).await;

    // Half a TLS record header, then nothing: the server waits for the rest.
    let mut bad = within(TcpStream::connect(listener.addr)).await.unwrap();
    within(bad.write_all(&[0x16, 0x03])).await.unwrap();
    good_tls_client(listener.addr, &pki).await;
    listener.expect_accepted().await;

    // Then garbage completes the record header: refused with an alert.
    within(bad.write_all(&[0xff, 0xff, 0xff, 0x00, 0x01, 0x02, 0x03]))
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = within(bad.read_to_end(&mut answer)).await;
    if let Some(first) = answer.first() {
        assert_eq!(*first, 0x15, "only a TLS alert comes back: {answer:?}");
    }
    let label = listener.expect_refused().await;
    assert!(label.starts_with("tls_"), "{label}");

    // Random bytes that are not TLS at all.
    let mut bad = within(TcpStream::connect(listener.addr)).await.unwrap();
    within(bad.write_all(&[0x42; 64])).await.unwrap();
    let _ = within(bad.read_to_end(&mut Vec::new())).await;
    assert!(listener.expect_refused().await.starts_with("tls_"));
    good_tls_client(listener.addr, &pki).await;
    listener.expect_accepted().await;
}

#[tokio::test]
async fn plain_http_on_a_tls_port_is_refused_while_another_client_is_served() {
    let pki = Pki::new();
    for kind in [ListenerKind::Mqtts, ListenerKind::Wss] {
        let cfg = TransportConfig::with_tls(kind, &pki.listener_config()).unwrap();
        let mut listener = TestListener::start(kind, cfg).await;

        // rustls refuses a first byte `G` at once; a good client connects at the same time.
        let mut bad = within(TcpStream::connect(listener.addr)).await.unwrap();
        let request = b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n";
        within(bad.write_all(request)).await.unwrap();
        let trusting = ClientOptions::trusting(&pki.files.ca_cert);
        let mut stream = within(tls_connect(listener.addr, client_config(&trusting)))
            .await
            .unwrap();
        if kind == ListenerKind::Wss {
            let (mut ws, _) = ws_connect(stream, "/mqtt", &["mqtt"]).await.unwrap();
            ws.close(None).await.unwrap();
        } else {
            roundtrip(&mut stream, b"meanwhile").await;
        }
        let mut answer = Vec::new();
        let _ = within(bad.read_to_end(&mut answer)).await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "no HTTP answer on a TLS port"
        );
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            outcomes.push(match listener.next_outcome().await {
                Outcome::Accepted { .. } => "accepted",
                Outcome::Refused(label) => label,
            });
        }
        outcomes.sort_unstable();
        assert_eq!(outcomes, ["accepted", "tls_invalid_message"], "{kind}");
    }
}

#[tokio::test]
async fn a_tls_handshake_that_never_finishes_times_out_while_another_client_is_served() {
    let pki = Pki::new();
    // Real sockets and real time, with a short configured timeout.
    let mut listener = mqtts(&pki, Duration::from_millis(300)).await;
    let started = tokio::time::Instant::now();
    let mut silent = within(TcpStream::connect(listener.addr)).await.unwrap();
    good_tls_client(listener.addr, &pki).await;
    listener.expect_accepted().await;

    assert_eq!(listener.expect_refused().await, "handshake_timeout");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The server closed the silent connection.
    let n = within(silent.read(&mut [0u8; 16])).await.unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_slowloris_websocket_header_times_out_while_another_client_is_served() {
    let mut listener = TestListener::start(
        ListenerKind::Ws,
        TransportConfig {
            handshake_timeout: Duration::from_millis(300),
            ..TransportConfig::plain()
        },
    )
    .await;
    let mut slow = within(TcpStream::connect(listener.addr)).await.unwrap();
    within(slow.write_all(b"GET /mqtt HTTP/1.1\r\nHost: local"))
        .await
        .unwrap();
    let (mut ws, _) = ws_connect(
        within(TcpStream::connect(listener.addr)).await.unwrap(),
        "/mqtt",
        &["mqtt"],
    )
    .await
    .unwrap();
    listener.expect_accepted().await;
    within(slow.write_all(b"ho")).await.unwrap();
    assert_eq!(listener.expect_refused().await, "handshake_timeout");
    ws.close(None).await.unwrap();
}

/// Paused time over an in-memory transport: the default 10 s handshake timeout holds exactly,
/// however long the client keeps trickling bytes.
#[tokio::test(start_paused = true)]
async fn a_trickled_upgrade_request_is_cut_at_the_handshake_timeout() {
    let (mut client, server) = tokio::io::duplex(1024);
    let cfg = TransportConfig::plain();
    let started = tokio::time::Instant::now();
    let accept = tokio::spawn(async move {
        transport::accept_io(
            server,
            "127.0.0.1:1".parse().unwrap(),
            ListenerKind::Ws,
            &cfg,
        )
        .await
    });
    let trickle = tokio::spawn(async move {
        client.write_all(b"GET /mqtt HTTP/1.1\r\n").await.unwrap();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if client.write_all(b"X-A: b\r\n").await.is_err() {
                return;
            }
        }
    });
    let result = tokio::time::timeout(Duration::from_secs(60), accept)
        .await
        .unwrap()
        .unwrap();
    let err = result.expect_err("the trickled request must be refused");
    assert_eq!(err.metric_label(), "handshake_timeout");
    assert_eq!(started.elapsed(), transport::DEFAULT_HANDSHAKE_TIMEOUT);
    trickle.abort();
}

#[tokio::test]
async fn many_bad_connections_at_once_do_not_stop_a_good_one() {
    let pki = Pki::new();
    let mut cfg = TransportConfig::with_tls(ListenerKind::Wss, &pki.listener_config()).unwrap();
    cfg.handshake_timeout = Duration::from_secs(30);
    cfg.ws = ws::WsConfig::default();
    let mut listener = TestListener::start(ListenerKind::Wss, cfg).await;

    let mut bad = Vec::new();
    for i in 0..50u8 {
        let mut s = within(TcpStream::connect(listener.addr)).await.unwrap();
        let junk: &[u8] = match i % 3 {
            0 => &[0x16, 0x03, 0x01],
            1 => b"GET / HTTP/1.1\r\n",
            _ => &[0x00],
        };
        within(s.write_all(junk)).await.unwrap();
        bad.push(s);
    }
    let stream = within(tls_connect(
        listener.addr,
        client_config(&ClientOptions::trusting(&pki.files.ca_cert)),
    ))
    .await
    .unwrap();
    let (mut ws, _) = ws_connect(stream, "/mqtt", &["mqtt"]).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    let packet = publish("still/served", b"yes");
    within(ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        packet.clone().into(),
    )))
    .await
    .unwrap();
    match within(ws.next()).await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) => assert_eq!(b, packet),
        other => panic!("expected the echo, got {other:?}"),
    }
    drop(bad);
    // Every bad connection ends as a refusal; the good one as accepted.
    let mut refused = 0;
    let mut accepted = 0;
    while refused + accepted < 51 {
        match listener.next_outcome().await {
            Outcome::Refused(_) => refused += 1,
            Outcome::Accepted { .. } => accepted += 1,
        }
    }
    assert_eq!((refused, accepted), (50, 1));
}
