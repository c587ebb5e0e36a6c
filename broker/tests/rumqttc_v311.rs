//! MQTT 3.1.1 flows driven by an independent client library (rumqttc's 3.1.1 API) against the
//! in-process broker: QoS 0/1/2 in both directions, retained messages, wills, shared
//! subscriptions, session resumption with CleanSession=0 and the in-flight window.
//!
//! Each client's event loop runs in its own task and forwards every event to the test through a
//! channel, so the test waits for exact events and never sleeps. Aborting that task drops the
//! socket without DISCONNECT: an abrupt client death.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::TestBroker;
use rumqttc::{
    AsyncClient, ConnAck, ConnectReturnCode, Event, LastWill, MqttOptions, Packet, Publish, QoS,
    SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

common::rumqttc::rumqttc_client!();
use common::rumqttc::timed;

fn summary(p: &Publish) -> (String, QoS, Vec<u8>, bool) {
    (p.topic.clone(), p.qos, p.payload.to_vec(), p.retain)
}

#[tokio::test]
async fn qos_0_1_2_in_both_directions() {
    timed!(async {
        let b = TestBroker::start().await;
        let (mut sub, _) = connect(options(&b, "v3-sub")).await;
        assert_eq!(
            sub.subscribe("v3/qos/#", QoS::ExactlyOnce).await,
            vec![SubscribeReasonCode::Success(QoS::ExactlyOnce)]
        );
        let (mut publisher, _) = connect(options(&b, "v3-pub")).await;
        publisher
            .publish("v3/qos/0", QoS::AtMostOnce, false, b"zero")
            .await;
        publisher
            .publish("v3/qos/1", QoS::AtLeastOnce, false, b"one")
            .await;
        publisher
            .publish("v3/qos/2", QoS::ExactlyOnce, false, b"two")
            .await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(summary(&sub.publish_msg().await));
        }
        assert_eq!(
            got,
            vec![
                ("v3/qos/0".into(), QoS::AtMostOnce, b"zero".to_vec(), false),
                ("v3/qos/1".into(), QoS::AtLeastOnce, b"one".to_vec(), false),
                ("v3/qos/2".into(), QoS::ExactlyOnce, b"two".to_vec(), false),
            ]
        );
        sub.next_incoming(|p| matches!(p, Packet::PubRel(_)).then_some(()))
            .await;
        // Granted QoS is the one asked for, and a QoS 1 subscription downgrades QoS 2.
        let (mut low, _) = connect(options(&b, "v3-low")).await;
        assert_eq!(
            low.subscribe("v3/qos/#", QoS::AtLeastOnce).await,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        publisher
            .publish("v3/qos/2", QoS::ExactlyOnce, false, b"again")
            .await;
        let p = low.publish_msg().await;
        assert_eq!((p.qos, &p.payload[..]), (QoS::AtLeastOnce, &b"again"[..]));
    })
}

#[tokio::test]
async fn retained_message_is_delivered_on_subscribe_and_cleared_by_an_empty_payload() {
    timed!(async {
        let b = TestBroker::start().await;
        let (mut publisher, _) = connect(options(&b, "v3-ret-pub")).await;
        publisher
            .publish("v3/ret", QoS::AtLeastOnce, true, b"old")
            .await;
        publisher
            .publish("v3/ret", QoS::ExactlyOnce, true, b"kept")
            .await;
        let (mut s1, _) = connect(options(&b, "v3-ret-s1")).await;
        s1.subscribe("v3/#", QoS::ExactlyOnce).await;
        assert_eq!(
            summary(&s1.publish_msg().await),
            ("v3/ret".into(), QoS::ExactlyOnce, b"kept".to_vec(), true)
        );
        publisher
            .publish("v3/ret", QoS::AtLeastOnce, true, b"")
            .await;
        // Live delivery of the clearing message to the existing subscriber: RETAIN 0 in 3.1.1
        // for a message sent because of an existing subscription [MQTT-3.3.1-9].
        let p = s1.publish_msg().await;
        assert_eq!((p.payload.len(), p.retain), (0, false));
        let (mut s2, _) = connect(options(&b, "v3-ret-s2")).await;
        s2.subscribe("v3/ret", QoS::AtLeastOnce).await;
        publisher
            .publish("v3/ret", QoS::AtLeastOnce, false, b"live")
            .await;
        assert_eq!(
            summary(&s2.publish_msg().await),
            ("v3/ret".into(), QoS::AtLeastOnce, b"live".to_vec(), false)
        );
    })
}

#[tokio::test]
async fn will_is_published_when_the_client_dies_and_not_after_disconnect() {
    timed!(async {
        let b = TestBroker::start().await;
        let (mut watcher, _) = connect(options(&b, "v3-will-watch")).await;
        watcher.subscribe("v3/will/#", QoS::AtLeastOnce).await;

        let mut o = options(&b, "v3-will-polite");
        o.set_last_will(LastWill::new(
            "v3/will/polite",
            "never",
            QoS::AtLeastOnce,
            false,
        ));
        let (polite, _) = connect(o).await;
        polite.disconnect().await;

        let mut o = options(&b, "v3-will-dies");
        o.set_last_will(LastWill::new(
            "v3/will/dies",
            "gone",
            QoS::AtLeastOnce,
            true,
        ));
        let (dies, _) = connect(o).await;
        dies.kill().await;
        let p = watcher.publish_msg().await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.qos),
            ("v3/will/dies", &b"gone"[..], QoS::AtLeastOnce)
        );
        // The will was retained, so a later subscriber gets it with RETAIN 1.
        let (mut late, _) = connect(options(&b, "v3-will-late")).await;
        late.subscribe("v3/will/dies", QoS::AtMostOnce).await;
        assert_eq!(
            summary(&late.publish_msg().await),
            (
                "v3/will/dies".into(),
                QoS::AtMostOnce,
                b"gone".to_vec(),
                true
            )
        );
    })
}

#[tokio::test]
async fn shared_subscription_splits_messages_round_robin() {
    timed!(async {
        let b = TestBroker::start().await;
        let (mut m1, _) = connect(options(&b, "v3-share-1")).await;
        let (mut m2, _) = connect(options(&b, "v3-share-2")).await;
        m1.subscribe("$share/g/v3/share", QoS::AtLeastOnce).await;
        m2.subscribe("$share/g/v3/share", QoS::AtLeastOnce).await;
        let (mut publisher, _) = connect(options(&b, "v3-share-pub")).await;
        for i in 0..6u8 {
            publisher
                .publish("v3/share", QoS::AtLeastOnce, false, &[i])
                .await;
        }
        let mut got1 = Vec::new();
        let mut got2 = Vec::new();
        for _ in 0..3 {
            got1.push(m1.publish_msg().await.payload[0]);
            got2.push(m2.publish_msg().await.payload[0]);
        }
        let mut union: Vec<u8> = got1.iter().chain(&got2).copied().collect();
        union.sort_unstable();
        assert_eq!(union, (0..6).collect::<Vec<u8>>(), "{got1:?} {got2:?}");
    })
}

#[tokio::test]
async fn clean_session_false_keeps_subscriptions_and_queues_qos1_and_qos2_while_offline() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut o = options(&b, "v3-persist");
        o.set_clean_session(false);
        let (mut sub, ack) = connect(o.clone()).await;
        assert!(!ack.session_present);
        sub.subscribe("v3/persist/#", QoS::ExactlyOnce).await;
        sub.kill().await;

        let (mut publisher, _) = connect(options(&b, "v3-persist-pub")).await;
        publisher
            .publish("v3/persist/a", QoS::AtLeastOnce, false, b"one")
            .await;
        publisher
            .publish("v3/persist/b", QoS::ExactlyOnce, false, b"two")
            .await;
        publisher
            .publish("v3/persist/c", QoS::AtMostOnce, false, b"not queued")
            .await;

        let (mut sub, ack) = connect(o).await;
        assert!(ack.session_present, "CleanSession=0 resumes the session");
        let got = vec![
            summary(&sub.publish_msg().await),
            summary(&sub.publish_msg().await),
        ];
        assert_eq!(
            got,
            vec![
                (
                    "v3/persist/a".into(),
                    QoS::AtLeastOnce,
                    b"one".to_vec(),
                    false
                ),
                (
                    "v3/persist/b".into(),
                    QoS::ExactlyOnce,
                    b"two".to_vec(),
                    false
                ),
            ]
        );
        publisher
            .publish("v3/persist/d", QoS::AtMostOnce, false, b"live")
            .await;
        assert_eq!(
            summary(&sub.publish_msg().await),
            (
                "v3/persist/d".into(),
                QoS::AtMostOnce,
                b"live".to_vec(),
                false
            )
        );
        // CleanSession=1 discards it.
        sub.kill().await;
        let mut o = options(&b, "v3-persist");
        o.set_clean_session(true);
        let (_fresh, ack) = connect(o).await;
        assert!(!ack.session_present);
    })
}

#[tokio::test]
async fn unacknowledged_qos1_is_redelivered_with_dup_on_resumption() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut o = options(&b, "v3-dup");
        o.set_clean_session(false);
        o.set_manual_acks(true);
        let (mut sub, _) = connect(o.clone()).await;
        sub.subscribe("v3/dup", QoS::AtLeastOnce).await;
        let (mut publisher, _) = connect(options(&b, "v3-dup-pub")).await;
        publisher
            .publish("v3/dup", QoS::AtLeastOnce, false, b"unacked")
            .await;
        let first = sub.publish_msg().await;
        assert!(!first.dup);
        // Never acknowledged: the connection dies.
        sub.kill().await;
        let (mut sub, ack) = connect(o).await;
        assert!(ack.session_present);
        let again = sub.publish_msg().await;
        assert_eq!(
            (again.dup, again.pkid, &again.payload[..]),
            (true, first.pkid, &b"unacked"[..])
        );
        sub.client.ack(&again).await.unwrap();
        sub.expect_no_publish(Duration::from_millis(200)).await;
    })
}
