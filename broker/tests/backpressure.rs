//! QoS 1 backpressure: a publisher that fills a connected subscriber's outbox with QoS 1
//! messages waits for it to drain instead of losing messages, and a subscriber that never
//! drains is disconnected (0x97) after the grace so the publisher goes on.

mod common;

use std::time::Duration;

use common::*;
use starling_codec::{ConnectProperties, Packet, PubAck, QoS, ReasonCode};
use tokio::sync::mpsc;

const MESSAGES: u8 = 30;

/// Reads what the broker still sends a stuck subscriber (PUBLISHes) until its DISCONNECT,
/// which must be 0x97 (slow consumer).
async fn expect_publishes_then_slow_consumer_disconnect<S>(stuck: &mut RawClient<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match stuck.recv_opt().await {
            Some(Packet::Publish(_)) => {}
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason, ReasonCode::QUOTA_EXCEEDED);
                return;
            }
            other => panic!("expected DISCONNECT 0x97, got {other:?}"),
        }
    }
}

/// Publishes `MESSAGES` QoS 1 messages one after the other, each after the PUBACK of the one
/// before, and reports every PUBACK.
fn spawn_publisher(mut publisher: RawClient<tokio::net::TcpStream>) -> mpsc::UnboundedReceiver<u8> {
    let (tx, rx) = mpsc::unbounded_channel();
    publisher.wait = Duration::from_secs(30);
    tokio::spawn(async move {
        for i in 0..MESSAGES {
            let r = publisher.publish("bp/topic", QoS::AtLeastOnce, &[i]).await;
            assert_eq!(r, Some(ReasonCode::SUCCESS));
            if tx.send(i).is_err() {
                return;
            }
        }
    });
    rx
}

async fn slow_subscriber(b: &TestBroker, id: &str) -> RawClient<tokio::net::TcpStream> {
    let mut sub = b.raw().await;
    let mut connect = connect_v5(id);
    // One message in flight at a time: the rest waits in the broker's outbox.
    connect.properties = ConnectProperties {
        receive_maximum: Some(1),
        ..Default::default()
    };
    assert_eq!(sub.connect(connect).await.reason, ReasonCode::SUCCESS);
    sub.subscribe("bp/topic", sub_opts(QoS::AtLeastOnce)).await;
    sub
}

#[tokio::test]
async fn qos1_publisher_waits_for_a_full_subscriber_queue_instead_of_losing_messages() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let b = TestBroker::with(|c| c.limits.max_queued_messages = Some(8)).await;
        let mut sub = slow_subscriber(&b, "bp-sub").await;
        let mut acks = spawn_publisher(b.client("bp-pub").await);
        // The subscriber reads nothing yet: the publisher must stall well before the end.
        let stalled = tokio::time::timeout(Duration::from_secs(1), async {
            let mut last = None;
            while let Some(i) = acks.recv().await {
                last = Some(i);
                if i == MESSAGES - 1 {
                    return last;
                }
            }
            last
        })
        .await;
        assert!(
            stalled.is_err(),
            "all {MESSAGES} PUBACKs came while the subscriber read nothing: {stalled:?}"
        );
        // Now the subscriber reads and acknowledges: every message arrives, in order.
        for i in 0..MESSAGES {
            let p = sub.recv_publish().await;
            assert_eq!(&p.payload[..], &[i], "message {i}");
            sub.send(Packet::PubAck(PubAck::new(p.packet_id.unwrap())))
                .await;
        }
        let mut last = None;
        while let Some(i) = acks.recv().await {
            last = Some(i);
        }
        assert_eq!(last, Some(MESSAGES - 1), "the publisher finished");
        let text = b.metrics().await;
        assert_eq!(
            metric(&text, "starling_dropped_total{reason=\"queue_full\"}"),
            0.0,
            "{text}"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn subscriber_that_never_drains_is_disconnected_and_the_publisher_goes_on() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let b = TestBroker::with(|c| c.limits.max_queued_messages = Some(8)).await;
        let mut stuck = slow_subscriber(&b, "bp-stuck").await;
        let mut acks = spawn_publisher(b.client("bp-pub2").await);
        // Without any read from the subscriber, the publisher completes after the grace.
        let mut last = None;
        while let Some(i) = acks.recv().await {
            last = Some(i);
        }
        assert_eq!(last, Some(MESSAGES - 1), "the publisher finished");
        // The stuck subscriber got what fitted its window, then DISCONNECT 0x97.
        stuck.wait = Duration::from_secs(5);
        expect_publishes_then_slow_consumer_disconnect(&mut stuck).await;
    })
    .await
    .expect("test timed out");
}

/// The grace before a congested subscriber is disconnected is `limits.slow_consumer_grace_ms`:
/// with 12 s configured (the default is 5 s), a subscriber that never acknowledges gets 0x97
/// 12 s after the publisher filled its outbox. Paused clock over duplex transports, so the 12 s
/// are virtual and the measured wait is exact.
#[tokio::test(start_paused = true)]
async fn slow_consumer_grace_is_the_configured_one() {
    tokio::time::timeout(Duration::from_secs(3600), async {
        let b = TestBroker::with(|c| {
            c.limits.max_queued_messages = Some(8);
            c.limits.slow_consumer_grace_ms = Some(12_000);
        })
        .await;
        let duplex = |b: &TestBroker| {
            let mut c = RawClient::new(
                b.broker.connect_duplex(64 * 1024),
                starling_codec::ProtocolVersion::V5,
            );
            // Virtual time: the waits must outlast the grace.
            c.wait = Duration::from_secs(600);
            c
        };
        let mut stuck = duplex(&b);
        let mut connect = connect_v5("grace-stuck");
        connect.properties = ConnectProperties {
            receive_maximum: Some(1),
            ..Default::default()
        };
        assert_eq!(stuck.connect(connect).await.reason, ReasonCode::SUCCESS);
        stuck
            .subscribe("bp/topic", sub_opts(QoS::AtLeastOnce))
            .await;
        let mut publisher = duplex(&b);
        assert_eq!(
            publisher.connect(connect_v5("grace-pub")).await.reason,
            ReasonCode::SUCCESS
        );
        let start = tokio::time::Instant::now();
        let publishing = tokio::spawn(async move {
            for i in 0..MESSAGES {
                let r = publisher.publish("bp/topic", QoS::AtLeastOnce, &[i]).await;
                assert_eq!(r, Some(ReasonCode::SUCCESS), "message {i}");
            }
        });
        // The stuck subscriber gets what fits its window of one, then DISCONNECT 0x97.
        expect_publishes_then_slow_consumer_disconnect(&mut stuck).await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(12) && waited < Duration::from_secs(13),
            "disconnected after {waited:?}"
        );
        // The publisher goes on and gets every PUBACK.
        publishing.await.expect("the publisher finished");
    })
    .await
    .expect("test timed out");
}
