//! MQTT 5.0 flows driven by an independent client library (rumqttc's `v5` module) against the
//! in-process broker: QoS 0/1/2 in both directions, retained messages, wills with and without
//! a delay, shared subscriptions, session resumption, topic aliases both ways and flow control.
//!
//! Each client's event loop runs in its own task and forwards every event to the test through a
//! channel, so the test waits for exact events (CONNACK, SUBACK, PUBACK, PUBCOMP, PUBLISH) and
//! never sleeps. Aborting that task drops the socket without DISCONNECT: an abrupt client death.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::TestBroker;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, Filter, LastWill, LastWillProperties, Packet, Publish,
    PublishProperties, SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

common::rumqttc::rumqttc_client!();
use common::rumqttc::timed;

fn payload(p: &Publish) -> &[u8] {
    &p.payload
}

fn topic(p: &Publish) -> &str {
    std::str::from_utf8(&p.topic).unwrap()
}

#[tokio::test]
async fn qos_0_1_2_in_both_directions() {
    timed!(async {
        let b = TestBroker::start().await;
        let (mut sub, _) = connect(options(&b, "v5-sub")).await;
        assert_eq!(
            sub.subscribe("v5/qos/#", QoS::ExactlyOnce).await,
            vec![SubscribeReasonCode::Success(QoS::ExactlyOnce)]
        );
        let (mut publisher, _) = connect(options(&b, "v5-pub")).await;
        publisher
            .publish("v5/qos/0", QoS::AtMostOnce, false, b"zero")
            .await;
        publisher
            .publish("v5/qos/1", QoS::AtLeastOnce, false, b"one")
            .await;
        publisher
            .publish("v5/qos/2", QoS::ExactlyOnce, false, b"two")
            .await;
        let mut got = Vec::new();
        for _ in 0..3 {
            let p = sub.publish_msg().await;
            got.push((topic(&p).to_string(), p.qos, payload(&p).to_vec(), p.retain));
        }
        assert_eq!(
            got,
            vec![
                ("v5/qos/0".into(), QoS::AtMostOnce, b"zero".to_vec(), false),
                ("v5/qos/1".into(), QoS::AtLeastOnce, b"one".to_vec(), false),
                ("v5/qos/2".into(), QoS::ExactlyOnce, b"two".to_vec(), false),
            ]
        );
        // The QoS 2 delivery to the subscriber completes: the broker answers its PUBREC.
        sub.next_incoming(|p| matches!(p, Packet::PubRel(_)).then_some(()))
            .await;
        // A subscription at QoS 1 downgrades a QoS 2 message.
        let (mut low, _) = connect(options(&b, "v5-low")).await;
        low.subscribe("v5/qos/#", QoS::AtLeastOnce).await;
        publisher
            .publish("v5/qos/2", QoS::ExactlyOnce, false, b"again")
            .await;
        let p = low.publish_msg().await;
        assert_eq!((p.qos, payload(&p)), (QoS::AtLeastOnce, &b"again"[..]));
        let p = sub.publish_msg().await;
        assert_eq!((p.qos, payload(&p)), (QoS::ExactlyOnce, &b"again"[..]));
    })
}

#[tokio::test]
async fn retained_message_is_delivered_on_subscribe_and_cleared_by_an_empty_payload() {
    timed!(async {
        let b = TestBroker::start().await;
        let (mut publisher, _) = connect(options(&b, "v5-ret-pub")).await;
        publisher
            .publish("v5/ret/a", QoS::AtLeastOnce, true, b"first")
            .await;
        publisher
            .publish("v5/ret/a", QoS::AtLeastOnce, true, b"second")
            .await;
        publisher
            .publish("v5/ret/b", QoS::AtLeastOnce, true, b"bee")
            .await;
        let (mut s1, _) = connect(options(&b, "v5-ret-s1")).await;
        s1.subscribe("v5/ret/a", QoS::AtLeastOnce).await;
        let p = s1.publish_msg().await;
        assert_eq!(
            (topic(&p), payload(&p), p.retain, p.qos),
            ("v5/ret/a", &b"second"[..], true, QoS::AtLeastOnce)
        );
        // Clear it; a new subscriber gets only what is published after its SUBACK.
        publisher
            .publish("v5/ret/a", QoS::AtLeastOnce, true, b"")
            .await;
        let (mut s2, _) = connect(options(&b, "v5-ret-s2")).await;
        s2.subscribe("v5/ret/a", QoS::AtLeastOnce).await;
        publisher
            .publish("v5/ret/a", QoS::AtLeastOnce, false, b"live")
            .await;
        let p = s2.publish_msg().await;
        assert_eq!((payload(&p), p.retain), (&b"live"[..], false));
        // The other retained topic is untouched.
        let (mut s3, _) = connect(options(&b, "v5-ret-s3")).await;
        s3.subscribe("v5/ret/+", QoS::AtMostOnce).await;
        let p = s3.publish_msg().await;
        assert_eq!(
            (topic(&p), payload(&p), p.retain),
            ("v5/ret/b", &b"bee"[..], true)
        );
    })
}

fn with_will(o: &mut MqttOptions, topic: &str, payload: &[u8], delay: Option<u32>) {
    o.set_last_will(LastWill::new(
        topic,
        payload.to_vec(),
        QoS::AtLeastOnce,
        false,
        delay.map(|d| LastWillProperties {
            delay_interval: Some(d),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
        }),
    ));
}

#[tokio::test]
async fn will_is_published_when_the_client_dies_and_not_after_a_normal_disconnect() {
    timed!(async {
        let b = TestBroker::start().await;
        let (mut watcher, _) = connect(options(&b, "v5-will-watch")).await;
        watcher.subscribe("v5/will/#", QoS::AtLeastOnce).await;

        let mut o = options(&b, "v5-will-polite");
        with_will(&mut o, "v5/will/polite", b"never", None);
        let (polite, _) = connect(o).await;
        polite.disconnect().await;

        let mut o = options(&b, "v5-will-dies");
        with_will(&mut o, "v5/will/dies", b"gone", None);
        let (dies, _) = connect(o).await;
        dies.kill().await;

        let p = watcher.publish_msg().await;
        assert_eq!(
            (topic(&p), payload(&p), p.qos),
            ("v5/will/dies", &b"gone"[..], QoS::AtLeastOnce)
        );
        // The polite client's connection ended first, so its will would have come first.
    })
}

#[tokio::test]
async fn will_delay_holds_the_will_and_a_reconnection_cancels_it() {
    timed!(async {
        let b = TestBroker::start().await;
        let (mut watcher, _) = connect(options(&b, "v5-wd-watch")).await;
        watcher.subscribe("v5/wd/#", QoS::AtLeastOnce).await;

        // Delay 1 s within a session of 60 s: the will comes after the delay.
        let mut o = options(&b, "v5-wd-late");
        o.set_session_expiry_interval(Some(60));
        with_will(&mut o, "v5/wd/late", b"late", Some(1));
        let (late, _) = connect(o).await;
        let died = tokio::time::Instant::now();
        late.kill().await;
        let p = watcher.publish_msg().await;
        assert_eq!((topic(&p), payload(&p)), ("v5/wd/late", &b"late"[..]));
        assert!(
            died.elapsed() >= Duration::from_millis(900),
            "will published {:?} after the client died, before its 1 s delay",
            died.elapsed()
        );

        // Delay 2 s, and the client comes back at once: the will is cancelled [MQTT-3.1.3-9].
        let mut o = options(&b, "v5-wd-back");
        o.set_session_expiry_interval(Some(60));
        with_will(&mut o, "v5/wd/back", b"cancelled", Some(2));
        let (back, _) = connect(o.clone()).await;
        back.kill().await;
        o.set_clean_start(false);
        let mut o2 = o.clone();
        o2.set_last_will(LastWill::new(
            "v5/wd/second",
            b"x".to_vec(),
            QoS::AtMostOnce,
            false,
            None,
        ));
        let (again, ack) = connect(o2).await;
        assert!(ack.session_present);
        watcher.expect_no_publish(Duration::from_millis(2500)).await;
        // A normal DISCONNECT deletes the new will too.
        again.disconnect().await;
        let (mut probe, _) = connect(options(&b, "v5-wd-probe")).await;
        probe
            .publish("v5/wd/probe", QoS::AtLeastOnce, false, b"p")
            .await;
        let p = watcher.publish_msg().await;
        assert_eq!(topic(&p), "v5/wd/probe");
    })
}

#[tokio::test]
async fn shared_subscription_splits_messages_round_robin() {
    timed!(async {
        let b = TestBroker::start().await;
        let (mut m1, _) = connect(options(&b, "v5-share-1")).await;
        let (mut m2, _) = connect(options(&b, "v5-share-2")).await;
        let (mut all, _) = connect(options(&b, "v5-share-all")).await;
        m1.subscribe("$share/grp/v5/share/+", QoS::AtLeastOnce)
            .await;
        m2.subscribe("$share/grp/v5/share/+", QoS::AtLeastOnce)
            .await;
        all.subscribe("v5/share/+", QoS::AtLeastOnce).await;
        let (mut publisher, _) = connect(options(&b, "v5-share-pub")).await;
        for i in 0..10u8 {
            publisher
                .publish("v5/share/x", QoS::AtLeastOnce, false, &[i])
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
    })
}

#[tokio::test]
async fn resumed_session_gets_the_messages_queued_while_offline() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut o = options(&b, "v5-resume");
        o.set_session_expiry_interval(Some(300));
        let (mut sub, ack) = connect(o.clone()).await;
        assert!(!ack.session_present);
        sub.subscribe("v5/resume/#", QoS::AtLeastOnce).await;
        sub.kill().await;

        let (mut publisher, _) = connect(options(&b, "v5-resume-pub")).await;
        for i in 0..3 {
            publisher
                .publish(
                    &format!("v5/resume/{i}"),
                    QoS::AtLeastOnce,
                    false,
                    format!("queued-{i}").as_bytes(),
                )
                .await;
        }
        // QoS 0 is not queued for an offline session.
        publisher
            .publish("v5/resume/q0", QoS::AtMostOnce, false, b"lost")
            .await;

        o.set_clean_start(false);
        let (mut sub, ack) = connect(o).await;
        assert!(ack.session_present, "the session is resumed");
        let mut got = Vec::new();
        for _ in 0..3 {
            let p = sub.publish_msg().await;
            got.push((topic(&p).to_string(), payload(&p).to_vec(), p.qos));
        }
        assert_eq!(
            got,
            (0..3)
                .map(|i| (
                    format!("v5/resume/{i}"),
                    format!("queued-{i}").into_bytes(),
                    QoS::AtLeastOnce
                ))
                .collect::<Vec<_>>()
        );
        // The subscription survived too: a new message arrives without a new SUBSCRIBE.
        publisher
            .publish("v5/resume/new", QoS::AtLeastOnce, false, b"new")
            .await;
        let p = sub.publish_msg().await;
        assert_eq!((topic(&p), payload(&p)), ("v5/resume/new", &b"new"[..]));

        // Clean start discards it: nothing is queued for the new session.
        let mut o = options(&b, "v5-resume");
        o.set_clean_start(true);
        sub.kill().await;
        let (_fresh, ack) = connect(o).await;
        assert!(!ack.session_present);
    })
}

#[tokio::test]
async fn topic_aliases_both_ways() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut o = options(&b, "v5-alias-sub");
        o.set_topic_alias_max(Some(4));
        let (mut sub, _) = connect(o).await;
        sub.subscribe("v5/alias/#", QoS::AtMostOnce).await;
        let (mut publisher, ack) = connect(options(&b, "v5-alias-pub")).await;
        let max = ack
            .properties
            .as_ref()
            .and_then(|p| p.topic_alias_max)
            .unwrap_or(0);
        assert!(max >= 1, "the broker accepts topic aliases: {ack:?}");

        // Inbound: the publisher sets alias 1 once, then sends an empty topic with it.
        let props = |alias| PublishProperties {
            topic_alias: Some(alias),
            ..Default::default()
        };
        publisher
            .client
            .publish_with_properties(
                "v5/alias/long/topic",
                QoS::AtLeastOnce,
                false,
                "a",
                props(1),
            )
            .await
            .unwrap();
        publisher.acked(QoS::AtLeastOnce).await;
        publisher
            .client
            .publish_with_properties("", QoS::AtLeastOnce, false, "b", props(1))
            .await
            .unwrap();
        publisher.acked(QoS::AtLeastOnce).await;
        publisher
            .publish("v5/alias/other", QoS::AtLeastOnce, false, b"c")
            .await;

        // Outbound: the broker assigned aliases to the subscriber, which allowed 4. The events
        // show packets as they came off the wire.
        let mut got = Vec::new();
        for _ in 0..3 {
            let p = sub.publish_msg().await;
            let alias = p.properties.as_ref().and_then(|p| p.topic_alias);
            got.push((topic(&p).to_string(), alias, payload(&p).to_vec()));
        }
        assert_eq!(
            got[0],
            ("v5/alias/long/topic".into(), Some(1), b"a".to_vec())
        );
        assert_eq!(got[1], (String::new(), Some(1), b"b".to_vec()));
        assert_eq!(got[2], ("v5/alias/other".into(), Some(2), b"c".to_vec()));

        // A subscriber that allows none gets full topics and no alias.
        let (mut plain, _) = connect(options(&b, "v5-alias-plain")).await;
        plain.subscribe("v5/alias/#", QoS::AtMostOnce).await;
        publisher
            .client
            .publish_with_properties("", QoS::AtLeastOnce, false, "d", props(1))
            .await
            .unwrap();
        publisher.acked(QoS::AtLeastOnce).await;
        let p = plain.publish_msg().await;
        assert_eq!(
            (topic(&p), p.properties.as_ref().and_then(|p| p.topic_alias)),
            ("v5/alias/long/topic", None)
        );
    })
}

#[tokio::test]
async fn in_flight_deliveries_follow_the_subscribers_receive_maximum() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut o = options(&b, "v5-flow-sub");
        o.set_receive_maximum(Some(2));
        o.set_manual_acks(true);
        let (mut sub, _) = connect(o).await;
        sub.subscribe("v5/flow", QoS::AtLeastOnce).await;
        let (mut publisher, _) = connect(options(&b, "v5-flow-pub")).await;
        for i in 0..5u8 {
            publisher
                .publish("v5/flow", QoS::AtLeastOnce, false, &[i])
                .await;
        }
        let first = sub.publish_msg().await;
        let second = sub.publish_msg().await;
        assert_eq!((first.payload[0], second.payload[0]), (0, 1));
        // The window of 2 is full: nothing more until an acknowledgement.
        sub.expect_no_publish(Duration::from_millis(300)).await;
        sub.client.ack(&first).await.unwrap();
        let third = sub.publish_msg().await;
        assert_eq!(third.payload[0], 2);
        sub.expect_no_publish(Duration::from_millis(300)).await;
        sub.client.ack(&second).await.unwrap();
        sub.client.ack(&third).await.unwrap();
        let rest = [sub.publish_msg().await, sub.publish_msg().await];
        assert_eq!([rest[0].payload[0], rest[1].payload[0]], [3, 4]);
    })
}

#[tokio::test]
async fn subscription_identifier_and_no_local_reach_the_client() {
    timed!(async {
        let b = TestBroker::start().await;
        let (mut c, _) = connect(options(&b, "v5-subid")).await;
        c.client
            .subscribe_with_properties(
                "v5/subid/#",
                QoS::AtMostOnce,
                SubscribeProperties {
                    id: Some(42),
                    user_properties: vec![],
                },
            )
            .await
            .unwrap();
        c.suback().await;
        let mut f = Filter::new("v5/nolocal", QoS::AtMostOnce);
        f.nolocal = true;
        c.client.subscribe_many([f]).await.unwrap();
        c.suback().await;
        // Own message on the No Local subscription: not delivered; the next one is.
        c.publish("v5/nolocal", QoS::AtMostOnce, false, b"own")
            .await;
        c.publish("v5/subid/x", QoS::AtMostOnce, false, b"id").await;
        let p = c.publish_msg().await;
        assert_eq!(topic(&p), "v5/subid/x");
        assert_eq!(
            p.properties.map(|p| p.subscription_identifiers),
            Some(vec![42])
        );
    })
}
