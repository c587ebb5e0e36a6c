//! `/metrics` after a known scenario: every counter is scraped over HTTP and compared with the
//! exact value the scenario implies. Bytes are checked against what the clients themselves
//! wrote and read, counted by a wrapper around their sockets.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use starling_codec::{
    ConnectProperties, Decoder, Direction, Packet, ProtocolVersion, PubAck, PubComp, PubRec, QoS,
    ReasonCode,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes written and read by every client of the test.
#[derive(Debug, Default)]
struct Totals {
    written: AtomicU64,
    read: AtomicU64,
}

/// A socket that adds what passes through it to [`Totals`].
struct Counting {
    inner: TcpStream,
    totals: Arc<Totals>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.totals.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.totals.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn counted(b: &TestBroker, totals: &Arc<Totals>) -> RawClient<Counting> {
    let s = TcpStream::connect(b.addr()).await.unwrap();
    s.set_nodelay(true).unwrap();
    RawClient::new(
        Counting {
            inner: s,
            totals: totals.clone(),
        },
        ProtocolVersion::V5,
    )
}

async fn connected(
    b: &TestBroker,
    totals: &Arc<Totals>,
    id: &str,
    props: ConnectProperties,
    clean: bool,
) -> RawClient<Counting> {
    let mut c = counted(b, totals).await;
    let mut connect = connect_v5(id);
    connect.properties = props;
    connect.clean_start = clean;
    let ack = c.connect(connect).await;
    assert_eq!(ack.reason, ReasonCode::SUCCESS, "{ack:?}");
    c
}

/// Receives one PUBLISH, completes its acknowledgement and returns (topic, qos, payload).
async fn receive(c: &mut RawClient<Counting>) -> (String, QoS, Vec<u8>) {
    let p = c.recv_publish().await;
    match p.qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => {
            c.send(Packet::PubAck(PubAck::new(p.packet_id.unwrap())))
                .await
        }
        QoS::ExactlyOnce => {
            let id = p.packet_id.unwrap();
            c.send(Packet::PubRec(PubRec::new(id))).await;
            match c.recv().await {
                Packet::PubRel(r) => assert_eq!(r.packet_id, id),
                other => panic!("expected PUBREL, got {other:?}"),
            }
            c.send(Packet::PubComp(PubComp::new(id))).await;
        }
    }
    (p.topic.as_str().to_string(), p.qos, p.payload.to_vec())
}

/// Waits until the scrape satisfies `ready` (connection ends are counted after the socket
/// closes), then returns it.
async fn scrape_when(b: &TestBroker, ready: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = b.metrics().await;
        if ready(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never settled:\n{text}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn counters_match_a_known_scenario_exactly() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let b = TestBroker::with(|c| c.limits.max_queued_messages = Some(2)).await;
        let totals = Arc::new(Totals::default());
        let none = ConnectProperties::default;

        // A subscriber to everything, and a publisher.
        let mut sub = connected(&b, &totals, "m-sub", none(), true).await;
        sub.subscribe("m/#", sub_opts(QoS::ExactlyOnce)).await;
        let mut publ = connected(&b, &totals, "m-pub", none(), true).await;

        // 3 QoS 0, 2 QoS 1, 2 QoS 2, each seen by the subscriber before the next.
        for (qos, n) in [
            (QoS::AtMostOnce, 3),
            (QoS::AtLeastOnce, 2),
            (QoS::ExactlyOnce, 2),
        ] {
            for i in 0..n {
                let payload = format!("{qos:?}-{i}");
                publ.publish("m/x", qos, payload.as_bytes()).await;
                assert_eq!(
                    receive(&mut sub).await,
                    ("m/x".into(), qos, payload.into_bytes())
                );
            }
        }
        // One retained QoS 1 message.
        let mut retained = starling_codec::Publish {
            retain: true,
            ..publish("m/r", QoS::AtLeastOnce, b"kept", Some(100))
        };
        retained.packet_id = Some(100);
        publ.send(Packet::Publish(retained)).await;
        match publ.recv().await {
            Packet::PubAck(a) => assert_eq!((a.packet_id, a.reason), (100, ReasonCode::SUCCESS)),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        assert_eq!(
            receive(&mut sub).await,
            ("m/r".into(), QoS::AtLeastOnce, b"kept".to_vec())
        );

        // A subscriber with a Maximum Packet Size of 64 loses a 100-byte message, and only it.
        let mut tiny = connected(
            &b,
            &totals,
            "m-tiny",
            ConnectProperties {
                maximum_packet_size: Some(64),
                ..none()
            },
            true,
        )
        .await;
        tiny.subscribe("m/big", sub_opts(QoS::AtMostOnce)).await;
        publ.publish("m/big", QoS::AtMostOnce, &[7u8; 100]).await;
        assert_eq!(
            receive(&mut sub).await,
            ("m/big".into(), QoS::AtMostOnce, vec![7u8; 100])
        );
        publ.publish("m/big", QoS::AtMostOnce, b"small").await;
        assert_eq!(
            receive(&mut sub).await,
            ("m/big".into(), QoS::AtMostOnce, b"small".to_vec())
        );
        // Same outbox, in order: the big one was handled (dropped) before this one arrived.
        assert_eq!(
            receive(&mut tiny).await,
            ("m/big".into(), QoS::AtMostOnce, b"small".to_vec())
        );

        // A persistent session goes offline; with at most 2 queued messages, of 3 QoS 1 one is
        // dropped as queue_full, and the QoS 0 one as offline_qos0.
        let persistent = || ConnectProperties {
            session_expiry_interval: Some(300),
            ..ConnectProperties::default()
        };
        let mut off = connected(&b, &totals, "m-off", persistent(), true).await;
        off.subscribe("m/off", sub_opts(QoS::AtLeastOnce)).await;
        off.disconnect().await;
        let session = b.broker.default_tenant.session("m-off").expect("kept");
        let deadline = tokio::time::Instant::now() + WAIT;
        while session.is_connected() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "session never detached"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for i in 0..3 {
            let payload = format!("off-{i}");
            publ.publish("m/off", QoS::AtLeastOnce, payload.as_bytes())
                .await;
            assert_eq!(
                receive(&mut sub).await,
                ("m/off".into(), QoS::AtLeastOnce, payload.into_bytes())
            );
        }
        publ.publish("m/off", QoS::AtMostOnce, b"off-q0").await;
        assert_eq!(
            receive(&mut sub).await,
            ("m/off".into(), QoS::AtMostOnce, b"off-q0".to_vec())
        );
        let mut off = connected(&b, &totals, "m-off", persistent(), false).await;
        for i in 0..2 {
            assert_eq!(
                receive(&mut off).await,
                (
                    "m/off".into(),
                    QoS::AtLeastOnce,
                    format!("off-{i}").into_bytes()
                )
            );
        }

        // One refused CONNECT (client id longer than 256 bytes): CONNACK 0x85.
        let mut refused = counted(&b, &totals).await;
        let ack = refused.connect(connect_v5(&"x".repeat(300))).await;
        assert_eq!(ack.reason, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        refused.expect_closed().await;

        // One malformed packet (PUBLISH with QoS 3): DISCONNECT 0x81.
        let bad_bytes = [0x36u8, 0x05, 0x00, 0x01, b'a', 0x00, 0x01];
        let rule = Decoder::with_version(Direction::ToServer, ProtocolVersion::V5, 1024)
            .decode(&mut BytesMut::from(&bad_bytes[..]))
            .expect_err("malformed")
            .rule();
        let mut bad = connected(&b, &totals, "m-bad", none(), true).await;
        bad.send_bytes(&bad_bytes).await;
        bad.expect_disconnect(ReasonCode::MALFORMED_PACKET).await;

        // Left connected: sub, publ, tiny, off. The bad client's session is gone.
        let text = scrape_when(&b, |t| {
            metric(t, "starling_connections") == 4.0 && metric(t, "starling_sessions") == 4.0
        })
        .await;
        let expect = [
            ("starling_sockets_accepted_total", 7.0),
            ("starling_connects_total", 6.0),
            (
                "starling_connects_refused_total{reason=\"client_id_too_long\"}",
                1.0,
            ),
            // 3 + 1 (big) + 1 (small) + 1 (offline)
            ("starling_messages_in_total{qos=\"0\"}", 6.0),
            // 2 + 1 (retained) + 3 (offline)
            ("starling_messages_in_total{qos=\"1\"}", 6.0),
            ("starling_messages_in_total{qos=\"2\"}", 2.0),
            // sub: 3 + big + small + offline q0; tiny: small
            ("starling_messages_out_total{qos=\"0\"}", 7.0),
            // sub: 2 + retained + 3; off: 2 after resuming
            ("starling_messages_out_total{qos=\"1\"}", 8.0),
            ("starling_messages_out_total{qos=\"2\"}", 2.0),
            ("starling_dropped_total{reason=\"queue_full\"}", 1.0),
            ("starling_dropped_total{reason=\"packet_too_large\"}", 1.0),
            ("starling_dropped_total{reason=\"offline_qos0\"}", 1.0),
            ("starling_retained_messages", 1.0),
            ("starling_sessions", 4.0),
            ("starling_connections", 4.0),
            // sub: m/#; tiny: m/big; off: m/off
            ("starling_subscriptions", 3.0),
            (
                &format!("starling_protocol_errors_total{{reason=\"{rule}\"}}"),
                1.0,
            ),
            (
                "starling_bytes_in_total",
                totals.written.load(Ordering::Relaxed) as f64,
            ),
            (
                "starling_bytes_out_total",
                totals.read.load(Ordering::Relaxed) as f64,
            ),
        ];
        let mut wrong = Vec::new();
        for (series, want) in expect {
            let got = metric(&text, series);
            if got != want {
                wrong.push(format!("{series}: got {got}, want {want}"));
            }
        }
        assert!(wrong.is_empty(), "{}\n\n{text}", wrong.join("\n"));
        // No other drop or protocol-error series has a value.
        for line in text.lines().filter(|l| {
            l.starts_with("starling_dropped_total{") || l.starts_with("starling_protocol_errors")
        }) {
            assert!(line.ends_with(" 1"), "unexpected series {line}\n\n{text}");
        }
        drop((sub, publ, tiny, off));
    })
    .await
    .expect("test timed out");
}
