//! What a few small packets can make the broker hold, measured on a broker process of its own
//! (its resident set, `VmRSS`, and its peak, `VmHWM`, reset before each attack):
//! - one SUBSCRIBE with 2,000 copies of `#` over 10,000 retained messages;
//! - messages whose weight is in their user properties, queued for a subscriber that does not
//!   read;
//! - small filters, outbound topic aliases and retained topics that came in large packets, and
//!   small queued messages that came in large reads: what stays must not keep those packets
//!   and read buffers alive.
//!
//! Each runs alone (`.config/nextest.toml`), so the rest of the suite cannot skew it.

mod common;
#[path = "common/process.rs"]
mod process;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use process::BrokerProcess;
use starling_codec::{
    Connect, ConnectProperties, MqttString, Packet, ProtocolVersion, PublishProperties, QoS,
    ReasonCode, Subscribe, SubscribeProperties, Subscription,
};
use tokio::io::AsyncWriteExt;

const MIB: usize = 1024 * 1024;
/// What the broker may grow by beyond the queues under test: a packet of the largest size
/// being read and one being written, and the allocator's rounding.
const SLACK: usize = 8 * MIB;
/// Large packets: 150 of them, each just under the default maximum packet size.
const LARGE_PACKETS: usize = 150;

macro_rules! timed {
    ($body:expr) => {
        tokio::time::timeout(Duration::from_secs(180), $body)
            .await
            .expect("test timed out")
    };
}

/// 975,000 bytes of user properties: fifteen of 65,000 bytes.
fn heavy_user_properties() -> Vec<(MqttString, MqttString)> {
    let value = MqttString::from("v".repeat(65_000));
    (0..15)
        .map(|_| (MqttString::from("k"), value.clone()))
        .collect()
}

fn encode(packets: &[Packet], out: &mut BytesMut) {
    for p in packets {
        p.encode(ProtocolVersion::V5, out).expect("encodable");
    }
}

fn report(what: &str, baseline: usize, peak: usize) -> usize {
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "{what}: RSS baseline {} KiB, peak {} KiB, growth {} KiB",
        baseline / 1024,
        peak / 1024,
        growth / 1024
    );
    growth
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_with_2000_copies_of_hash_over_10000_retained_messages_stays_small_and_fair() {
    const RETAINED: usize = 10_000;
    const COPIES: usize = 2_000;
    timed!(async {
        let broker = BrokerProcess::start("");
        let mut p = broker.client("retainer").await;
        let mut frames = BytesMut::new();
        for i in 0..RETAINED {
            let mut m = publish(
                &format!("r/{i}"),
                QoS::AtMostOnce,
                b"0123456789abcdef",
                None,
            );
            m.retain = true;
            encode(&[Packet::Publish(m)], &mut frames);
        }
        p.send_bytes(&frames).await;
        drop(frames);
        // Packets of one connection are handled in order: the PUBACK means all are retained.
        p.publish("sync", QoS::AtLeastOnce, b"").await;
        let mut pinger = broker.client("pinger").await;
        let mut attacker = broker.client("attacker").await;
        let baseline = broker.rss();
        broker.reset_peak();

        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let pings = tokio::spawn(async move {
            let (mut worst, mut n) = (Duration::ZERO, 0u32);
            while !stop2.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                pinger.send(Packet::PingReq).await;
                assert!(matches!(pinger.recv().await, Packet::PingResp));
                worst = worst.max(t0.elapsed());
                n += 1;
            }
            (worst, n)
        });

        let id = attacker.next_id();
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: id,
            subscriptions: vec![
                Subscription {
                    filter: MqttString::from("#"),
                    options: sub_opts(QoS::AtMostOnce),
                };
                COPIES
            ],
            properties: SubscribeProperties::default(),
        });
        let started = Instant::now();
        attacker.send(subscribe).await;
        match attacker.recv().await {
            Packet::SubAck(a) => assert_eq!(a.reasons.len(), COPIES),
            other => panic!("expected SUBACK, got {other:?}"),
        }
        let mut retained = 0;
        while retained < RETAINED {
            let m = attacker.recv_publish().await;
            assert!(m.retain, "only retained messages are published");
            retained += 1;
        }
        let delivered_in = started.elapsed();
        // Nothing more: the next message is a live one.
        p.publish("end", QoS::AtLeastOnce, b"").await;
        let m = attacker.recv_publish().await;
        assert_eq!(
            (m.topic.as_str(), m.retain),
            ("end", false),
            "identical filters got the retained messages more than once"
        );
        stop.store(true, Ordering::Relaxed);
        let (worst_ping, pings) = pings.await.unwrap();
        let growth = report("SUBSCRIBE x2000 over retained", baseline, broker.peak());
        eprintln!(
            "{RETAINED} retained messages delivered in {delivered_in:?}; \
             {pings} pings meanwhile, the slowest {worst_ping:?}"
        );
        assert!(
            growth < 20 * 1000 * 1000,
            "the broker grew by {growth} bytes"
        );
        // Not a latency figure (that is the benchmarks' part): a broker that served the
        // SUBSCRIBE on a shared thread or under a shared lock kept another client waiting for
        // about the whole delivery; a loaded machine, which also slows the delivery, can delay
        // one PING by tens of ms.
        assert!(
            worst_ping < Duration::from_millis(100).max(delivered_in / 2),
            "another client's PING waited {worst_ping:?} while the retained messages took {delivered_in:?}"
        );
    })
}

/// Sends 150 messages of 975 KB of user properties to a subscriber that does not read, with
/// `max_queued_bytes` = `bound`; returns how much the broker grew.
async fn growth_queueing_heavy_messages(bound: usize) -> usize {
    let broker = BrokerProcess::start(&format!(
        "[limits]\nmax_queued_bytes = {bound}\nmax_queued_messages = 10000\n"
    ));
    let mut sub = broker.client("stalled").await;
    sub.subscribe("w/t", sub_opts(QoS::AtMostOnce)).await;
    let mut p = broker.client("heavy").await;
    let baseline = broker.rss();
    broker.reset_peak();
    // The subscriber never reads: what is not in its socket waits in its outbox.
    let props = heavy_user_properties();
    for _ in 0..LARGE_PACKETS {
        let mut m = publish("w/t", QoS::AtMostOnce, b"x", None);
        m.properties = PublishProperties {
            user_properties: props.clone(),
            ..Default::default()
        };
        p.send(Packet::Publish(m)).await;
    }
    p.publish("sync", QoS::AtLeastOnce, b"").await;
    let growth = report(
        &format!("queued user properties, bound {} KiB", bound / 1024),
        baseline,
        broker.peak(),
    );
    let dropped = metric(
        &broker.metrics().await,
        "starling_dropped_total{reason=\"queue_full\"}",
    );
    assert!(dropped > 0.0, "the bound dropped nothing");
    drop(sub);
    growth
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_weigh_their_properties() {
    timed!(async {
        // The bound of the report: 1 MiB, where the buffers of one 1 MB packet being read and
        // one being written are most of what the broker holds (SLACK).
        let bound = MIB;
        let growth = growth_queueing_heavy_messages(bound).await;
        assert!(
            growth <= 2 * bound + SLACK,
            "the broker grew by {} KiB with a queue bound of {} KiB",
            growth / 1024,
            bound / 1024
        );
        // A bound large enough that those buffers do not matter: within twice the bound.
        let bound = 16 * MIB;
        let growth = growth_queueing_heavy_messages(bound).await;
        assert!(
            growth <= 2 * bound,
            "the broker grew by {} KiB with a queue bound of {} KiB",
            growth / 1024,
            bound / 1024
        );
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_filters_do_not_keep_their_subscribe_packets_alive() {
    timed!(async {
        let broker = BrokerProcess::start("");
        let mut c = broker.client("filters").await;
        let baseline = broker.rss();
        broker.reset_peak();
        let props = heavy_user_properties();
        for i in 0..LARGE_PACKETS {
            let id = c.next_id();
            c.send(Packet::Subscribe(Subscribe {
                packet_id: id,
                subscriptions: vec![Subscription {
                    filter: MqttString::from(format!("f/{i}")),
                    options: sub_opts(QoS::AtMostOnce),
                }],
                properties: SubscribeProperties {
                    subscription_identifier: None,
                    user_properties: props.clone(),
                },
            }))
            .await;
            match c.recv().await {
                Packet::SubAck(a) => assert_eq!(a.reasons, vec![ReasonCode::GRANTED_QOS_0]),
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
        let growth = report("filters from large SUBSCRIBEs", baseline, broker.peak());
        assert!(growth <= SLACK, "the broker grew by {} KiB", growth / 1024);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_topic_alias_keys_do_not_keep_messages_alive() {
    timed!(async {
        let broker = BrokerProcess::start("");
        let mut sub = broker.raw().await;
        let ack = sub
            .connect(Connect {
                properties: ConnectProperties {
                    topic_alias_maximum: Some(1000),
                    ..Default::default()
                },
                ..connect_v5("aliases")
            })
            .await;
        assert_eq!(ack.reason, ReasonCode::SUCCESS);
        sub.subscribe("a/#", sub_opts(QoS::AtMostOnce)).await;
        let mut p = broker.client("large").await;
        let baseline = broker.rss();
        broker.reset_peak();
        let payload = vec![0x5a; 975_000];
        for i in 0..LARGE_PACKETS {
            p.publish(&format!("a/{i}"), QoS::AtLeastOnce, &payload)
                .await;
            let m = sub.recv_publish().await;
            assert!(m.properties.topic_alias.is_some(), "an alias was set");
        }
        let growth = report("outbound alias keys", baseline, broker.peak());
        assert!(growth <= SLACK, "the broker grew by {} KiB", growth / 1024);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_small_messages_do_not_keep_their_read_buffers_alive() {
    const BOUND: usize = MIB;
    const PAIRS: usize = 20_000;
    timed!(async {
        let broker = BrokerProcess::start(&format!(
            "[limits]\nmax_queued_bytes = {BOUND}\nmax_queued_messages = 1000000\n"
        ));
        // An offline session with a QoS 1 subscription: its messages wait in its outbox.
        let mut sub = broker.raw().await;
        sub.connect(Connect {
            clean_start: true,
            properties: ConnectProperties {
                session_expiry_interval: Some(3600),
                ..Default::default()
            },
            ..connect_v5("away")
        })
        .await;
        sub.subscribe("slow/t", sub_opts(QoS::AtLeastOnce)).await;
        sub.disconnect().await;
        let mut p = broker.client("mixer").await;
        let baseline = broker.rss();
        broker.reset_peak();
        // Each read of the broker holds a small message that waits and a large one that goes
        // nowhere; the small one used to keep the whole read buffer alive.
        let junk = vec![0u8; 7000];
        let mut out = BytesMut::new();
        for i in 0..PAIRS {
            out.clear();
            let id = (i % 60_000) as u16 + 1;
            encode(
                &[
                    Packet::Publish(publish("slow/t", QoS::AtLeastOnce, b"tiny", Some(id))),
                    Packet::Publish(publish("junk", QoS::AtMostOnce, &junk, None)),
                ],
                &mut out,
            );
            p.stream.write_all(&out).await.unwrap();
            match p.recv().await {
                Packet::PubAck(a) => assert_eq!(a.packet_id, id),
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
        let growth = report("small queued messages", baseline, broker.peak());
        assert!(
            growth <= 2 * BOUND + SLACK,
            "the broker grew by {} KiB with a queue bound of {} KiB",
            growth / 1024,
            BOUND / 1024
        );
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_retained_messages_do_not_keep_their_first_packet_alive() {
    timed!(async {
        let broker = BrokerProcess::start("");
        let mut p = broker.client("retainer").await;
        let baseline = broker.rss();
        broker.reset_peak();
        let large = Bytes::from(vec![0x5a; 975_000]);
        for i in 0..LARGE_PACKETS {
            for payload in [large.clone(), Bytes::from_static(b"s")] {
                let id = p.next_id();
                let mut m = publish(&format!("k/{i}"), QoS::AtLeastOnce, &payload, Some(id));
                m.retain = true;
                p.send(Packet::Publish(m)).await;
                match p.recv().await {
                    Packet::PubAck(a) => assert_eq!(a.reason, ReasonCode::SUCCESS),
                    other => panic!("expected PUBACK, got {other:?}"),
                }
            }
        }
        let growth = report("replaced retained messages", baseline, broker.peak());
        assert_eq!(
            metric(&broker.metrics().await, "starling_retained_messages"),
            LARGE_PACKETS as f64
        );
        assert!(growth <= SLACK, "the broker grew by {} KiB", growth / 1024);
    })
}
