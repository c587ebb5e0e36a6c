//! MQTT flows driven by an independent client library, rumqttc, against the in-process broker.
//! Each scenario is written once against [`client::Protocol`] and runs on both of rumqttc's
//! APIs (`v311::<scenario>` and `v5::<scenario>`): QoS 0/1/2 in both directions, retained
//! messages, wills, shared subscriptions, session resumption and redelivery with DUP. What only
//! MQTT 5.0 has (will delay, topic aliases both ways, flow control, subscription identifiers
//! and No Local) is in `v5_only.rs`.

#[path = "../common/mod.rs"]
mod common;

mod client;
mod v5_only;

use std::time::Duration;

use client::{Client, Msg, Protocol, QoS};
use common::TestBroker;

/// Runs a test body under an overall bound.
macro_rules! timed {
    ($body:expr) => {
        tokio::time::timeout(std::time::Duration::from_secs(30), $body)
            .await
            .expect("test timed out")
    };
}
pub(crate) use timed;

/// Instantiates each scenario for both protocol versions: `v311::<name>` and `v5::<name>`.
macro_rules! on_both_versions {
    ($($name:ident),* $(,)?) => {
        mod v311 {
            $(
                #[tokio::test]
                async fn $name() {
                    crate::timed!(super::$name::<crate::client::V311>())
                }
            )*
        }
        mod v5 {
            $(
                #[tokio::test]
                async fn $name() {
                    crate::timed!(super::$name::<crate::client::v5::V5>())
                }
            )*
        }
    };
}

on_both_versions!(
    qos_0_1_2_in_both_directions,
    retained_message_is_delivered_on_subscribe_and_cleared_by_an_empty_payload,
    will_is_published_when_the_client_dies_and_not_after_a_normal_disconnect,
    shared_subscription_splits_messages_round_robin,
    resumed_session_gets_the_messages_queued_while_offline,
    unacknowledged_qos1_is_redelivered_with_dup_on_resumption,
);

fn summary(topic: &str, qos: QoS, payload: &[u8], retain: bool) -> (String, QoS, Vec<u8>, bool) {
    (topic.to_owned(), qos, payload.to_vec(), retain)
}

async fn qos_0_1_2_in_both_directions<P: Protocol>() {
    let b = TestBroker::start().await;
    let (mut sub, _) = P::connect(P::options(&b, "sub")).await;
    assert_eq!(
        sub.subscribe("qos/#", QoS::ExactlyOnce).await,
        vec![Some(QoS::ExactlyOnce)]
    );
    let (mut publisher, _) = P::connect(P::options(&b, "pub")).await;
    publisher
        .publish("qos/0", QoS::AtMostOnce, false, b"zero")
        .await;
    publisher
        .publish("qos/1", QoS::AtLeastOnce, false, b"one")
        .await;
    publisher
        .publish("qos/2", QoS::ExactlyOnce, false, b"two")
        .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sub.publish_msg().await.summary());
    }
    assert_eq!(
        got,
        vec![
            summary("qos/0", QoS::AtMostOnce, b"zero", false),
            summary("qos/1", QoS::AtLeastOnce, b"one", false),
            summary("qos/2", QoS::ExactlyOnce, b"two", false),
        ]
    );
    // The QoS 2 delivery to the subscriber completes: the broker answers its PUBREC.
    sub.pubrel().await;
    // Granted QoS is the one asked for, and a QoS 1 subscription downgrades QoS 2.
    let (mut low, _) = P::connect(P::options(&b, "low")).await;
    assert_eq!(
        low.subscribe("qos/#", QoS::AtLeastOnce).await,
        vec![Some(QoS::AtLeastOnce)]
    );
    publisher
        .publish("qos/2", QoS::ExactlyOnce, false, b"again")
        .await;
    let p = low.publish_msg().await;
    assert_eq!((p.qos, &p.payload[..]), (QoS::AtLeastOnce, &b"again"[..]));
    let p = sub.publish_msg().await;
    assert_eq!((p.qos, &p.payload[..]), (QoS::ExactlyOnce, &b"again"[..]));
}

async fn retained_message_is_delivered_on_subscribe_and_cleared_by_an_empty_payload<P: Protocol>() {
    let b = TestBroker::start().await;
    let (mut publisher, _) = P::connect(P::options(&b, "ret-pub")).await;
    publisher
        .publish("ret/a", QoS::AtLeastOnce, true, b"old")
        .await;
    publisher
        .publish("ret/a", QoS::ExactlyOnce, true, b"kept")
        .await;
    publisher
        .publish("ret/b", QoS::AtLeastOnce, true, b"bee")
        .await;
    let (mut s1, _) = P::connect(P::options(&b, "ret-s1")).await;
    s1.subscribe("ret/a", QoS::ExactlyOnce).await;
    assert_eq!(
        s1.publish_msg().await.summary(),
        summary("ret/a", QoS::ExactlyOnce, b"kept", true)
    );
    publisher
        .publish("ret/a", QoS::AtLeastOnce, true, b"")
        .await;
    // Live delivery of the clearing message to the existing subscriber: RETAIN 0 for a message
    // sent because of an existing subscription [MQTT-3.3.1-9] (5.0: Retain As Published is 0).
    let p = s1.publish_msg().await;
    assert_eq!((p.payload.len(), p.retain), (0, false));
    // Cleared: a new subscriber gets only what is published after its SUBACK.
    let (mut s2, _) = P::connect(P::options(&b, "ret-s2")).await;
    s2.subscribe("ret/a", QoS::AtLeastOnce).await;
    publisher
        .publish("ret/a", QoS::AtLeastOnce, false, b"live")
        .await;
    assert_eq!(
        s2.publish_msg().await.summary(),
        summary("ret/a", QoS::AtLeastOnce, b"live", false)
    );
    // The other retained topic is untouched.
    let (mut s3, _) = P::connect(P::options(&b, "ret-s3")).await;
    s3.subscribe("ret/+", QoS::AtMostOnce).await;
    assert_eq!(
        s3.publish_msg().await.summary(),
        summary("ret/b", QoS::AtMostOnce, b"bee", true)
    );
}

async fn will_is_published_when_the_client_dies_and_not_after_a_normal_disconnect<P: Protocol>() {
    let b = TestBroker::start().await;
    let (mut watcher, _) = P::connect(P::options(&b, "will-watch")).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;

    let mut o = P::options(&b, "will-polite");
    P::will(&mut o, "will/polite", b"never", QoS::AtLeastOnce, false);
    let (polite, _) = P::connect(o).await;
    polite.disconnect().await;

    let mut o = P::options(&b, "will-dies");
    P::will(&mut o, "will/dies", b"gone", QoS::AtLeastOnce, true);
    let (dies, _) = P::connect(o).await;
    dies.kill().await;
    // The polite client's connection ended first, so its will would have come first.
    let p = watcher.publish_msg().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.qos),
        ("will/dies", &b"gone"[..], QoS::AtLeastOnce)
    );
    // The will was retained, so a later subscriber gets it with RETAIN 1.
    let (mut late, _) = P::connect(P::options(&b, "will-late")).await;
    late.subscribe("will/dies", QoS::AtMostOnce).await;
    assert_eq!(
        late.publish_msg().await.summary(),
        summary("will/dies", QoS::AtMostOnce, b"gone", true)
    );
}

async fn shared_subscription_splits_messages_round_robin<P: Protocol>() {
    let b = TestBroker::start().await;
    let (mut m1, _) = P::connect(P::options(&b, "share-1")).await;
    let (mut m2, _) = P::connect(P::options(&b, "share-2")).await;
    let (mut all, _) = P::connect(P::options(&b, "share-all")).await;
    m1.subscribe("$share/grp/share/+", QoS::AtLeastOnce).await;
    m2.subscribe("$share/grp/share/+", QoS::AtLeastOnce).await;
    all.subscribe("share/+", QoS::AtLeastOnce).await;
    let (mut publisher, _) = P::connect(P::options(&b, "share-pub")).await;
    for i in 0..10u8 {
        publisher
            .publish("share/x", QoS::AtLeastOnce, false, &[i])
            .await;
    }
    let mut got1 = Vec::new();
    let mut got2 = Vec::new();
    for _ in 0..5 {
        got1.push(m1.publish_msg().await.payload[0]);
        got2.push(m2.publish_msg().await.payload[0]);
    }
    let mut union: Vec<u8> = got1.iter().chain(&got2).copied().collect();
    union.sort_unstable();
    assert_eq!(union, (0..10).collect::<Vec<u8>>(), "{got1:?} {got2:?}");
    // Round robin: each member gets every other message.
    assert!(
        got1 == [0, 2, 4, 6, 8] || got1 == [1, 3, 5, 7, 9],
        "{got1:?} {got2:?}"
    );
    let mut every = Vec::new();
    for _ in 0..10 {
        every.push(all.publish_msg().await.payload[0]);
    }
    assert_eq!(every, (0..10).collect::<Vec<u8>>());
}

async fn resumed_session_gets_the_messages_queued_while_offline<P: Protocol>() {
    let b = TestBroker::start().await;
    let mut o = P::options(&b, "resume");
    P::keep_session(&mut o);
    let (mut sub, session_present) = P::connect(o.clone()).await;
    assert!(!session_present);
    sub.subscribe("resume/#", QoS::ExactlyOnce).await;
    sub.kill().await;

    let (mut publisher, _) = P::connect(P::options(&b, "resume-pub")).await;
    let queued = [
        ("resume/0", QoS::AtLeastOnce),
        ("resume/1", QoS::ExactlyOnce),
        ("resume/2", QoS::AtLeastOnce),
    ];
    for (i, (topic, qos)) in queued.iter().enumerate() {
        publisher
            .publish(topic, *qos, false, format!("queued-{i}").as_bytes())
            .await;
    }
    // QoS 0 is not queued for an offline session.
    publisher
        .publish("resume/q0", QoS::AtMostOnce, false, b"lost")
        .await;

    P::resume(&mut o);
    let (mut sub, session_present) = P::connect(o).await;
    assert!(session_present, "the session is resumed");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sub.publish_msg().await.summary());
    }
    assert_eq!(
        got,
        queued
            .iter()
            .enumerate()
            .map(|(i, (topic, qos))| summary(topic, *qos, format!("queued-{i}").as_bytes(), false))
            .collect::<Vec<_>>()
    );
    // The subscription survived too: new messages arrive without a new SUBSCRIBE.
    publisher
        .publish("resume/live", QoS::AtMostOnce, false, b"live")
        .await;
    assert_eq!(
        sub.publish_msg().await.summary(),
        summary("resume/live", QoS::AtMostOnce, b"live", false)
    );
    publisher
        .publish("resume/new", QoS::AtLeastOnce, false, b"new")
        .await;
    let p = sub.publish_msg().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("resume/new", &b"new"[..])
    );

    // A clean session discards it.
    sub.kill().await;
    let (_fresh, session_present) = P::connect(P::options(&b, "resume")).await;
    assert!(!session_present);
}

async fn unacknowledged_qos1_is_redelivered_with_dup_on_resumption<P: Protocol>() {
    let b = TestBroker::start().await;
    let mut o = P::options(&b, "dup");
    P::keep_session(&mut o);
    P::manual_acks(&mut o);
    let (mut sub, _) = P::connect(o.clone()).await;
    sub.subscribe("dup", QoS::AtLeastOnce).await;
    let (mut publisher, _) = P::connect(P::options(&b, "dup-pub")).await;
    publisher
        .publish("dup", QoS::AtLeastOnce, false, b"unacked")
        .await;
    let first: Msg = sub.publish_msg().await;
    assert!(!first.dup);
    // Never acknowledged: the connection dies.
    sub.kill().await;
    P::resume(&mut o);
    let (mut sub, session_present) = P::connect(o).await;
    assert!(session_present);
    let again = sub.publish_msg().await;
    assert_eq!(
        (again.dup, again.pkid, &again.payload[..]),
        (true, first.pkid, &b"unacked"[..])
    );
    sub.ack(&again).await;
    sub.expect_no_publish(Duration::from_millis(200)).await;
}
