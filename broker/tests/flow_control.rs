//! Flow control (MQTT 5.0 section 4.9) with QoS 2 under load: when a send quota is zero, only
//! QoS > 0 PUBLISHes wait [MQTT-4.9.0-2]; every other control packet is still processed and
//! answered [MQTT-4.9.0-3].

mod common;

use std::time::Duration;

use common::*;
use starling_codec::{
    AckProperties, ConnectProperties, Packet, PubAck, PubRec, PubRel, QoS, ReasonCode, Unsubscribe,
};

macro_rules! timed {
    ($body:expr) => {
        tokio::time::timeout(Duration::from_secs(60), $body)
            .await
            .expect("test timed out")
    };
}

fn pubrel(packet_id: u16) -> Packet {
    Packet::PubRel(PubRel {
        packet_id,
        reason: ReasonCode::SUCCESS,
        properties: AckProperties::default(),
    })
}

/// Both quotas of one client are zero: the broker's towards it (its Receive Maximum 2 is full
/// of QoS 2 deliveries it has not acknowledged) and its own towards the broker (the broker's
/// Receive Maximum 2 is full of its QoS 2 PUBLISHes not yet released). Meanwhile another client
/// keeps publishing QoS 2 messages it subscribes to. PINGREQ, PUBREL, SUBSCRIBE and UNSUBSCRIBE
/// are still answered, with no third PUBLISH in between; acknowledging one delivery lets exactly
/// the next one through.
#[tokio::test]
async fn control_packets_are_answered_while_both_qos_2_quotas_are_zero_per_4_9_0_3() {
    timed!(async {
        let b = TestBroker::with(|c| c.limits.receive_maximum = Some(2)).await;
        let mut s = b.raw().await;
        let mut connect = connect_v5("quota-zero");
        connect.properties = ConnectProperties {
            receive_maximum: Some(2),
            ..Default::default()
        };
        assert_eq!(s.connect(connect).await.reason, ReasonCode::SUCCESS);
        s.subscribe("load/t", sub_opts(QoS::ExactlyOnce)).await;

        // The load: a publisher that goes on publishing QoS 2 to the topic, each exchange to
        // its end (PUBREC, PUBREL, PUBCOMP), until the test ends.
        let mut publisher = b.client("load").await;
        let load = tokio::spawn(async move {
            let mut sent = 0u32;
            loop {
                let payload = sent.to_be_bytes();
                if publisher
                    .publish("load/t", QoS::ExactlyOnce, &payload)
                    .await
                    != Some(ReasonCode::SUCCESS)
                {
                    panic!("the load publisher was refused");
                }
                sent += 1;
            }
        });

        // Two deliveries fill the quota of `s`; it acknowledges neither.
        let mut delivered = Vec::new();
        while delivered.len() < 2 {
            match s.recv().await {
                Packet::Publish(p) => {
                    assert_eq!(p.qos, QoS::ExactlyOnce);
                    delivered.push(p.packet_id.unwrap());
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
        // `s` fills the broker's Receive Maximum with two QoS 2 PUBLISHes it does not release.
        for id in [101u16, 102] {
            s.send(Packet::Publish(publish(
                "own/t",
                QoS::ExactlyOnce,
                b"x",
                Some(id),
            )))
            .await;
        }
        s.send(Packet::PingReq).await;
        s.send(pubrel(101)).await;
        s.send(Packet::Subscribe(starling_codec::Subscribe {
            packet_id: 7,
            subscriptions: vec![starling_codec::Subscription {
                filter: "more/t".into(),
                options: sub_opts(QoS::AtLeastOnce),
            }],
            properties: Default::default(),
        }))
        .await;
        s.send(Packet::Unsubscribe(Unsubscribe {
            packet_id: 8,
            filters: vec!["more/t".into()],
            properties: Default::default(),
        }))
        .await;
        // Every answer arrives, in order, and no PUBLISH beyond the quota [MQTT-4.9.0-2].
        let mut answers = Vec::new();
        while answers.len() < 6 {
            match s.recv().await {
                Packet::Publish(p) => panic!("a PUBLISH beyond the quota: {p:?}"),
                p => answers.push(p),
            }
        }
        assert!(
            matches!(&answers[0], Packet::PubRec(r) if r.packet_id == 101 && r.reason == ReasonCode::SUCCESS),
            "{answers:?}"
        );
        assert!(
            matches!(&answers[1], Packet::PubRec(r) if r.packet_id == 102 && r.reason == ReasonCode::SUCCESS),
            "{answers:?}"
        );
        assert!(matches!(&answers[2], Packet::PingResp), "{answers:?}");
        assert!(
            matches!(&answers[3], Packet::PubComp(c) if c.packet_id == 101 && c.reason == ReasonCode::SUCCESS),
            "{answers:?}"
        );
        assert!(
            matches!(&answers[4], Packet::SubAck(a) if a.packet_id == 7),
            "{answers:?}"
        );
        assert!(
            matches!(&answers[5], Packet::UnsubAck(a) if a.packet_id == 8),
            "{answers:?}"
        );

        // One delivery acknowledged (PUBREC, then PUBCOMP for the broker's PUBREL): one more
        // comes, and no second.
        s.send(Packet::PubRec(PubRec {
            packet_id: delivered[0],
            reason: ReasonCode::SUCCESS,
            properties: AckProperties::default(),
        }))
        .await;
        match s.recv().await {
            Packet::PubRel(r) => assert_eq!(r.packet_id, delivered[0]),
            other => panic!("expected PUBREL, got {other:?}"),
        }
        s.send(Packet::PubComp(starling_codec::PubComp {
            packet_id: delivered[0],
            reason: ReasonCode::SUCCESS,
            properties: AckProperties::default(),
        }))
        .await;
        match s.recv().await {
            Packet::Publish(p) => assert_eq!(p.qos, QoS::ExactlyOnce),
            other => panic!("expected the next PUBLISH, got {other:?}"),
        }
        s.send(Packet::PingReq).await;
        assert!(matches!(s.recv().await, Packet::PingResp));
        load.abort();
    })
}

/// In-flight deliveries are bounded by weight as well as count: with `max_queued_bytes` at
/// 64 KiB, a subscriber that acknowledges nothing gets three 16 KiB messages, not the five its
/// Receive Maximum would allow; each PUBACK lets the next one through.
#[tokio::test]
async fn in_flight_deliveries_are_bounded_by_bytes_as_well_as_count() {
    timed!(async {
        let b = TestBroker::with(|c| {
            c.limits.max_queued_bytes = Some(64 * 1024);
            c.limits.slow_consumer_grace_ms = Some(60_000);
        })
        .await;
        let mut s = b.client("heavy-sub").await;
        s.subscribe("heavy/t", sub_opts(QoS::AtLeastOnce)).await;
        let mut publisher = b.client("heavy-pub").await;
        let payload = vec![7u8; 16 * 1024];
        for _ in 0..5 {
            assert_eq!(
                publisher
                    .publish("heavy/t", QoS::AtLeastOnce, &payload)
                    .await,
                Some(ReasonCode::SUCCESS)
            );
        }
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(s.recv_publish().await.packet_id.unwrap());
        }
        // A fourth would put more than 64 KiB in flight.
        s.expect_silence(Duration::from_millis(300)).await;
        for id in ids.iter().take(2) {
            s.send(Packet::PubAck(PubAck {
                packet_id: *id,
                reason: ReasonCode::SUCCESS,
                properties: AckProperties::default(),
            }))
            .await;
        }
        let fourth = s.recv_publish().await;
        let fifth = s.recv_publish().await;
        assert_eq!(fourth.payload.len(), payload.len());
        assert_eq!(fifth.payload.len(), payload.len());
    })
}
