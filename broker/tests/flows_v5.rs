//! MQTT 5.0 flows with exact packets: QoS, retained messages, subscription options, shared
//! subscriptions, wills, sessions, topic aliases and flow control.

mod common;

use std::time::Duration;

use common::*;
use starling_codec::{
    Connect, ConnectProperties, MqttString, Packet, PubAck, QoS, ReasonCode, RetainHandling,
    SubscriptionOptions, Will, WillProperties,
};

macro_rules! timed {
    ($body:expr) => {
        tokio::time::timeout(Duration::from_secs(30), $body)
            .await
            .expect("test timed out")
    };
}

fn persistent(id: &str, expiry: u32, clean: bool) -> Connect {
    Connect {
        clean_start: clean,
        properties: ConnectProperties {
            session_expiry_interval: Some(expiry),
            ..Default::default()
        },
        ..connect_v5(id)
    }
}

#[tokio::test]
async fn qos_is_the_lower_of_publish_and_subscription() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut s1 = b.client("s1").await;
        let mut s2 = b.client("s2").await;
        let ack = s1.subscribe("q/#", sub_opts(QoS::AtLeastOnce)).await;
        assert_eq!(ack.reasons, vec![ReasonCode::GRANTED_QOS_1]);
        s2.subscribe("q/#", sub_opts(QoS::ExactlyOnce)).await;
        let mut p = b.client("p").await;
        assert_eq!(
            p.publish("q/2", QoS::ExactlyOnce, b"two").await,
            Some(ReasonCode::SUCCESS)
        );
        let m1 = s1.recv_publish().await;
        assert_eq!((m1.qos, &m1.payload[..]), (QoS::AtLeastOnce, &b"two"[..]));
        let m2 = s2.recv_publish().await;
        assert_eq!(m2.qos, QoS::ExactlyOnce);
        // Complete the QoS 2 exchange from the subscriber side.
        let id = m2.packet_id.unwrap();
        s2.send(Packet::PubRec(starling_codec::PubRec {
            packet_id: id,
            reason: ReasonCode::SUCCESS,
            properties: Default::default(),
        }))
        .await;
        match s2.recv().await {
            Packet::PubRel(r) => assert_eq!(r.packet_id, id),
            other => panic!("expected PUBREL, got {other:?}"),
        }
        s2.send(Packet::PubComp(starling_codec::PubComp {
            packet_id: id,
            reason: ReasonCode::SUCCESS,
            properties: Default::default(),
        }))
        .await;
        assert_eq!(p.publish("q/0", QoS::AtMostOnce, b"zero").await, None);
        assert_eq!(s1.recv_publish().await.qos, QoS::AtMostOnce);
    })
}

#[tokio::test]
async fn qos2_resent_publish_is_delivered_once() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut s = b.client("once-sub").await;
        s.subscribe("once", sub_opts(QoS::AtMostOnce)).await;
        let mut p = b.client("once-pub").await;
        for dup in [false, true] {
            let mut m = publish("once", QoS::ExactlyOnce, b"x", Some(7));
            m.dup = dup;
            p.send(Packet::Publish(m)).await;
            assert!(matches!(p.recv().await, Packet::PubRec(r) if r.packet_id == 7));
        }
        p.send(Packet::PubRel(starling_codec::PubRel {
            packet_id: 7,
            reason: ReasonCode::SUCCESS,
            properties: Default::default(),
        }))
        .await;
        assert!(
            matches!(p.recv().await, Packet::PubComp(c) if c.packet_id == 7 && c.reason == ReasonCode::SUCCESS)
        );
        assert_eq!(&s.recv_publish().await.payload[..], b"x");
        s.expect_silence(Duration::from_millis(200)).await;
    })
}

#[tokio::test]
async fn retained_set_replace_clear() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut p = b.client("rp").await;
        let mut m = publish("r/a", QoS::AtLeastOnce, b"one", Some(1));
        m.retain = true;
        p.send(Packet::Publish(m.clone())).await;
        p.recv().await;
        m.payload = bytes::Bytes::from_static(b"two");
        m.packet_id = Some(2);
        p.send(Packet::Publish(m.clone())).await;
        p.recv().await;
        let mut s = b.client("rs").await;
        s.subscribe("r/+", sub_opts(QoS::AtLeastOnce)).await;
        let got = s.recv_publish().await;
        assert!(
            got.retain,
            "retained messages sent on subscribe carry RETAIN"
        );
        assert_eq!(&got.payload[..], b"two");
        s.send(Packet::PubAck(PubAck {
            packet_id: got.packet_id.unwrap(),
            reason: ReasonCode::SUCCESS,
            properties: Default::default(),
        }))
        .await;
        // Clear with an empty payload; a new subscriber gets nothing.
        m.payload = bytes::Bytes::new();
        m.packet_id = Some(3);
        p.send(Packet::Publish(m)).await;
        p.recv().await;
        let cleared = s.recv_publish().await;
        assert!(cleared.payload.is_empty());
        let mut s2 = b.client("rs2").await;
        s2.subscribe("r/#", sub_opts(QoS::AtLeastOnce)).await;
        s2.expect_silence(Duration::from_millis(200)).await;
        let m = b.metrics().await;
        assert_eq!(metric(&m, "starling_retained_messages"), 0.0);
    })
}

#[tokio::test]
async fn retain_handling_0_1_2_and_retain_as_published() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut p = b.client("rh-pub").await;
        let mut m = publish("rh/t", QoS::AtMostOnce, b"kept", None);
        m.retain = true;
        p.send(Packet::Publish(m.clone())).await;
        let mut s = b.client("rh-sub").await;
        let opts = |rh| SubscriptionOptions {
            qos: QoS::AtMostOnce,
            retain_handling: rh,
            ..Default::default()
        };
        // 2: never at subscribe.
        s.subscribe("rh/t", opts(RetainHandling::DoNotSend)).await;
        s.expect_silence(Duration::from_millis(150)).await;
        // 1 on an existing subscription: nothing.
        s.subscribe("rh/t", opts(RetainHandling::SendAtSubscribeIfNew))
            .await;
        s.expect_silence(Duration::from_millis(150)).await;
        // 1 on a new subscription: sent.
        s.subscribe("rh/+", opts(RetainHandling::SendAtSubscribeIfNew))
            .await;
        assert!(s.recv_publish().await.retain);
        // 0: sent every time.
        s.subscribe("rh/+", opts(RetainHandling::SendAtSubscribe))
            .await;
        assert!(s.recv_publish().await.retain);
        // Live messages: RETAIN cleared unless Retain As Published [MQTT-3.3.1-12/13].
        let mut rap = b.client("rh-rap").await;
        rap.subscribe(
            "rh/t",
            SubscriptionOptions {
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
                ..Default::default()
            },
        )
        .await;
        let mut plain = b.client("rh-plain").await;
        plain
            .subscribe("rh/t", opts(RetainHandling::DoNotSend))
            .await;
        p.send(Packet::Publish(m)).await;
        assert!(rap.recv_publish().await.retain);
        assert!(!plain.recv_publish().await.retain);
    })
}

#[tokio::test]
async fn no_local_skips_own_messages() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.client("nl").await;
        c.subscribe(
            "nl/t",
            SubscriptionOptions {
                no_local: true,
                ..Default::default()
            },
        )
        .await;
        c.publish("nl/t", QoS::AtLeastOnce, b"mine").await;
        c.expect_silence(Duration::from_millis(200)).await;
        let mut other = b.client("nl-other").await;
        other.publish("nl/t", QoS::AtMostOnce, b"theirs").await;
        assert_eq!(&c.recv_publish().await.payload[..], b"theirs");
    })
}

#[tokio::test]
async fn overlapping_subscriptions_give_one_copy_with_every_identifier() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut s = b.client("ov").await;
        s.subscribe_with("ov/#", sub_opts(QoS::AtMostOnce), Some(1))
            .await;
        s.subscribe_with("ov/+/c", sub_opts(QoS::AtLeastOnce), Some(2))
            .await;
        s.subscribe("+/b/c", sub_opts(QoS::AtMostOnce)).await;
        let mut p = b.client("ov-pub").await;
        p.publish("ov/b/c", QoS::AtLeastOnce, b"x").await;
        let got = s.recv_publish().await;
        assert_eq!(got.qos, QoS::AtLeastOnce, "highest QoS of the matches");
        let mut ids = got.properties.subscription_identifiers.clone();
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
        s.send(Packet::PubAck(PubAck {
            packet_id: got.packet_id.unwrap(),
            reason: ReasonCode::SUCCESS,
            properties: Default::default(),
        }))
        .await;
        s.expect_silence(Duration::from_millis(200)).await;
    })
}

#[tokio::test]
async fn wildcards_do_not_match_dollar_topics() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut s = b.client("dollar").await;
        s.subscribe("#", sub_opts(QoS::AtMostOnce)).await;
        s.subscribe("+/x", sub_opts(QoS::AtMostOnce)).await;
        let mut d = b.client("dollar-sub").await;
        d.subscribe("$SYS/#", sub_opts(QoS::AtMostOnce)).await;
        let mut p = b.client("dollar-pub").await;
        p.publish("$SYS/x", QoS::AtMostOnce, b"sys").await;
        assert_eq!(&d.recv_publish().await.payload[..], b"sys");
        s.expect_silence(Duration::from_millis(200)).await;
    })
}

#[tokio::test]
async fn shared_subscription_round_robin() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut a = b.client("sh-a").await;
        let mut c = b.client("sh-b").await;
        a.subscribe("$share/g/sh/t", sub_opts(QoS::AtLeastOnce))
            .await;
        c.subscribe("$share/g/sh/t", sub_opts(QoS::AtLeastOnce))
            .await;
        let mut p = b.client("sh-pub").await;
        for i in 0..10u8 {
            p.publish("sh/t", QoS::AtMostOnce, &[i]).await;
        }
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(a.recv_publish().await.payload[0]);
            got.push(c.recv_publish().await.payload[0]);
        }
        got.sort();
        assert_eq!(
            got,
            (0..10).collect::<Vec<u8>>(),
            "each message to exactly one member"
        );
        a.expect_silence(Duration::from_millis(100)).await;
        c.expect_silence(Duration::from_millis(100)).await;
    })
}

#[tokio::test]
async fn unacknowledged_shared_qos1_goes_to_another_member_when_the_session_ends() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut a = b.client("shq-a").await;
        a.subscribe("$share/g/shq", sub_opts(QoS::AtLeastOnce))
            .await;
        let mut p = b.client("shq-pub").await;
        p.publish("shq", QoS::AtLeastOnce, b"m").await;
        let got = a.recv_publish().await;
        assert_eq!(got.qos, QoS::AtLeastOnce);
        let mut c = b.client("shq-b").await;
        c.subscribe("$share/g/shq", sub_opts(QoS::AtLeastOnce))
            .await;
        // a's session (expiry 0) ends without acknowledging: the message moves to b.
        drop(a);
        let moved = c.recv_publish().await;
        assert_eq!(&moved.payload[..], b"m");
    })
}

#[tokio::test]
async fn will_published_on_abrupt_close_not_on_normal_disconnect() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut w = b.client("will-watch").await;
        w.subscribe("will/#", sub_opts(QoS::AtLeastOnce)).await;
        let with_will = |id: &str, topic: &str| Connect {
            will: Some(Will {
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: MqttString::from(topic.to_string()),
                payload: bytes::Bytes::from_static(b"gone"),
                properties: WillProperties::default(),
            }),
            ..connect_v5(id)
        };
        let mut normal = b.raw().await;
        normal
            .connect(with_will("will-normal", "will/normal"))
            .await;
        normal.disconnect().await;
        let mut abrupt = b.raw().await;
        abrupt
            .connect(with_will("will-abrupt", "will/abrupt"))
            .await;
        drop(abrupt);
        let got = w.recv_publish().await;
        assert_eq!(got.topic.as_str(), "will/abrupt");
        w.send(Packet::PubAck(PubAck {
            packet_id: got.packet_id.unwrap(),
            reason: ReasonCode::SUCCESS,
            properties: Default::default(),
        }))
        .await;
        // 0x04: disconnect with will.
        let mut with = b.raw().await;
        with.connect(with_will("will-04", "will/04")).await;
        with.send(Packet::Disconnect(starling_codec::Disconnect {
            reason: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
            properties: Default::default(),
        }))
        .await;
        assert_eq!(w.recv_publish().await.topic.as_str(), "will/04");
    })
}

/// The Will Message's Message Expiry Interval is its lifetime from publication (MQTT 5.0
/// 3.1.3.2.4), so a client connected for longer than the interval still leaves its will. The
/// wait is real: time passing while the client is connected is the condition under test.
#[tokio::test]
async fn will_expiry_counts_from_publication_not_from_connect() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut w = b.client("will-exp-watch").await;
        w.subscribe("will-exp/#", sub_opts(QoS::AtMostOnce)).await;
        let mut c = b.raw().await;
        c.connect(Connect {
            will: Some(Will {
                qos: QoS::AtMostOnce,
                retain: false,
                topic: MqttString::from("will-exp/gone".to_string()),
                payload: bytes::Bytes::from_static(b"gone"),
                properties: WillProperties {
                    message_expiry_interval: Some(2),
                    ..Default::default()
                },
            }),
            ..connect_v5("will-exp")
        })
        .await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        drop(c);
        let got = w.recv_publish().await;
        assert_eq!(got.topic.as_str(), "will-exp/gone");
        let left = got.properties.message_expiry_interval;
        assert!(
            matches!(left, Some(1..=2)),
            "the will's expiry starts at its publication: {left:?}"
        );
    })
}

#[tokio::test]
async fn session_resumes_with_queued_messages_and_redelivers_with_dup() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut s = b.raw().await;
        assert!(
            !s.connect(persistent("resume", 300, true))
                .await
                .session_present
        );
        s.subscribe("res/t", sub_opts(QoS::AtLeastOnce)).await;
        let mut p = b.client("res-pub").await;
        p.publish("res/t", QoS::AtLeastOnce, b"in-flight").await;
        let first = s.recv_publish().await;
        assert!(!first.dup);
        drop(s); // no PUBACK
        p.publish("res/t", QoS::AtLeastOnce, b"queued").await;
        p.publish("res/t", QoS::AtMostOnce, b"qos0-offline").await;
        let mut s = b.raw().await;
        let ack = s.connect(persistent("resume", 300, false)).await;
        assert!(ack.session_present);
        let again = s.recv_publish().await;
        assert!(again.dup, "redelivery carries DUP");
        assert_eq!(again.packet_id, first.packet_id);
        assert_eq!(&again.payload[..], b"in-flight");
        let queued = s.recv_publish().await;
        assert_eq!(&queued.payload[..], b"queued");
        s.expect_silence(Duration::from_millis(200)).await;
        let m = b.metrics().await;
        assert_eq!(
            metric(&m, "starling_dropped_total{reason=\"offline_qos0\"}"),
            1.0
        );
    })
}

#[tokio::test]
async fn clean_start_discards_the_session() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut s = b.raw().await;
        s.connect(persistent("clean", 300, true)).await;
        s.subscribe("clean/t", sub_opts(QoS::AtLeastOnce)).await;
        s.disconnect().await;
        let mut s = b.raw().await;
        assert!(
            !s.connect(persistent("clean", 300, true))
                .await
                .session_present
        );
        let mut p = b.client("clean-pub").await;
        p.publish("clean/t", QoS::AtLeastOnce, b"x").await;
        s.expect_silence(Duration::from_millis(200)).await;
    })
}

#[tokio::test]
async fn takeover_sends_0x8e_to_the_old_connection() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut old = b.client("dup-id").await;
        let _new = b.client("dup-id").await;
        old.expect_disconnect(ReasonCode::SESSION_TAKEN_OVER).await;
    })
}

#[tokio::test]
async fn empty_client_id_is_assigned_in_v5_and_refused_in_v311_without_clean_session() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.raw().await;
        let ack = c.connect(connect_v5("")).await;
        assert_eq!(ack.reason, ReasonCode::SUCCESS);
        assert!(ack.properties.assigned_client_identifier.is_some());
        let mut v3 = b.raw_v3().await;
        let ack = v3
            .connect(Connect {
                clean_start: false,
                ..connect_v3("")
            })
            .await;
        assert_eq!(ack.reason, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    })
}

#[tokio::test]
async fn outbound_topic_aliases_when_the_client_allows_them() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut s = b.raw().await;
        s.connect(Connect {
            properties: ConnectProperties {
                topic_alias_maximum: Some(2),
                ..Default::default()
            },
            ..connect_v5("alias-sub")
        })
        .await;
        s.subscribe("al/#", sub_opts(QoS::AtMostOnce)).await;
        let mut p = b.client("alias-pub").await;
        for _ in 0..2 {
            p.publish("al/one", QoS::AtMostOnce, b"1").await;
        }
        let first = s.recv_publish().await;
        assert_eq!(first.topic.as_str(), "al/one");
        let alias = first.properties.topic_alias.expect("alias assigned");
        let second = s.recv_publish().await;
        assert_eq!(second.topic.as_str(), "");
        assert_eq!(second.properties.topic_alias, Some(alias));
    })
}

#[tokio::test]
async fn inbound_topic_alias_is_resolved() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut s = b.client("in-alias-sub").await;
        s.subscribe("ia/t", sub_opts(QoS::AtMostOnce)).await;
        let mut p = b.client("in-alias-pub").await;
        let mut m = publish("ia/t", QoS::AtMostOnce, b"1", None);
        m.properties.topic_alias = Some(3);
        p.send(Packet::Publish(m.clone())).await;
        m.topic = MqttString::from("");
        m.payload = bytes::Bytes::from_static(b"2");
        p.send(Packet::Publish(m)).await;
        assert_eq!(s.recv_publish().await.topic.as_str(), "ia/t");
        let second = s.recv_publish().await;
        assert_eq!(
            (second.topic.as_str(), &second.payload[..]),
            ("ia/t", &b"2"[..])
        );
    })
}

#[tokio::test]
async fn message_too_large_for_a_subscriber_is_dropped_for_that_subscriber_only() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut small = b.raw().await;
        small
            .connect(Connect {
                properties: ConnectProperties {
                    maximum_packet_size: Some(100),
                    ..Default::default()
                },
                ..connect_v5("mps-small")
            })
            .await;
        small.subscribe("mps", sub_opts(QoS::AtMostOnce)).await;
        let mut big = b.client("mps-big").await;
        big.subscribe("mps", sub_opts(QoS::AtMostOnce)).await;
        let mut p = b.client("mps-pub").await;
        p.publish("mps", QoS::AtMostOnce, &[7u8; 200]).await;
        p.publish("mps", QoS::AtMostOnce, b"small").await;
        assert_eq!(big.recv_publish().await.payload.len(), 200);
        assert_eq!(&small.recv_publish().await.payload[..], b"small");
        let m = b.metrics().await;
        assert_eq!(
            metric(&m, "starling_dropped_total{reason=\"packet_too_large\"}"),
            1.0
        );
    })
}

#[tokio::test]
async fn in_flight_window_follows_the_client_receive_maximum() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut s = b.raw().await;
        s.connect(Connect {
            properties: ConnectProperties {
                receive_maximum: Some(2),
                ..Default::default()
            },
            ..connect_v5("rm-sub")
        })
        .await;
        s.subscribe("fc", sub_opts(QoS::AtLeastOnce)).await;
        let mut p = b.client("rm-pub").await;
        for i in 0..4u8 {
            p.publish("fc", QoS::AtLeastOnce, &[i]).await;
        }
        let a = s.recv_publish().await;
        let c = s.recv_publish().await;
        assert_eq!((a.payload[0], c.payload[0]), (0, 1));
        s.expect_silence(Duration::from_millis(200)).await;
        s.send(Packet::PubAck(PubAck {
            packet_id: a.packet_id.unwrap(),
            reason: ReasonCode::SUCCESS,
            properties: Default::default(),
        }))
        .await;
        assert_eq!(s.recv_publish().await.payload[0], 2);
        s.expect_silence(Duration::from_millis(200)).await;
    })
}

#[tokio::test]
async fn user_properties_and_request_response_properties_pass_through() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut s = b.client("props-sub").await;
        s.subscribe("pp", sub_opts(QoS::AtMostOnce)).await;
        let mut p = b.client("props-pub").await;
        let mut m = publish("pp", QoS::AtMostOnce, b"{}", None);
        m.properties.user_properties = vec![("k".into(), "v".into())];
        m.properties.response_topic = Some("reply/here".into());
        m.properties.correlation_data = Some(bytes::Bytes::from_static(b"corr"));
        m.properties.content_type = Some("application/json".into());
        m.properties.payload_format_indicator = Some(1);
        m.properties.message_expiry_interval = Some(600);
        p.send(Packet::Publish(m)).await;
        let got = s.recv_publish().await;
        assert_eq!(
            got.properties.user_properties,
            vec![("k".into(), "v".into())]
        );
        assert_eq!(
            got.properties.response_topic.as_ref().map(|t| t.as_str()),
            Some("reply/here")
        );
        assert_eq!(
            got.properties.correlation_data.as_deref(),
            Some(&b"corr"[..])
        );
        assert_eq!(
            got.properties.content_type.as_ref().map(|t| t.as_str()),
            Some("application/json")
        );
        assert_eq!(got.properties.payload_format_indicator, Some(1));
        let left = got.properties.message_expiry_interval.unwrap();
        assert!(
            (599..=600).contains(&left),
            "remaining expiry passed on: {left}"
        );
    })
}

#[tokio::test]
async fn shutdown_sends_0x8b_and_readiness_goes_false() {
    timed!(async {
        let b = TestBroker::start().await;
        let (status, _) = http_get(b.broker.http, "/readyz").await;
        assert_eq!(status, 200);
        let mut c = b.client("bye").await;
        let TestBroker { broker } = b;
        let stop = tokio::spawn(broker.shutdown());
        c.expect_disconnect(ReasonCode::SERVER_SHUTTING_DOWN).await;
        stop.await.unwrap();
    })
}

#[tokio::test]
async fn a_shared_subscription_inside_a_shared_subscription_is_refused_with_0x8f() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut s = b.client("nest").await;
        let ack = s
            .subscribe("$share/g/$share/h/x", sub_opts(QoS::AtMostOnce))
            .await;
        assert_eq!(ack.reasons, vec![ReasonCode::TOPIC_FILTER_INVALID]);
        // The connection goes on, and a plain shared subscription is fine.
        let ack = s.subscribe("$share/g/x", sub_opts(QoS::AtMostOnce)).await;
        assert_eq!(ack.reasons, vec![ReasonCode::GRANTED_QOS_0]);
    })
}

#[tokio::test]
async fn a_publish_to_a_topic_in_the_share_namespace_is_refused_with_0x90() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut s = b.client("share-sub").await;
        s.subscribe("$share/g/$share/h/x", sub_opts(QoS::AtMostOnce))
            .await;
        let mut p = b.client("share-pub").await;
        assert_eq!(
            p.publish("$share/h/x", QoS::AtLeastOnce, b"x").await,
            Some(ReasonCode::TOPIC_NAME_INVALID)
        );
        p.publish("$share/h/x", QoS::AtMostOnce, b"x").await;
        p.publish("$share/h/x", QoS::AtLeastOnce, b"x").await;
        s.expect_silence(Duration::from_millis(200)).await;
    })
}

/// Retains `n` messages `prefix/0..n` from `p` (QoS 1, so each is stored when acknowledged).
async fn retain_many(p: &mut RawClient<tokio::net::TcpStream>, prefix: &str, n: usize) {
    for i in 0..n {
        let id = p.next_id();
        let mut m = publish(&format!("{prefix}/{i}"), QoS::AtLeastOnce, b"r", Some(id));
        m.retain = true;
        p.send(Packet::Publish(m)).await;
        match p.recv().await {
            Packet::PubAck(a) => assert_eq!(a.reason, ReasonCode::SUCCESS),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn identical_filters_in_one_subscribe_get_the_retained_messages_once() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut p = b.client("ret-pub").await;
        retain_many(&mut p, "r", 3).await;
        let mut s = b.client("ret-sub").await;
        let filters = ["r/#", "r/#", "r/#", "r/+", "r/#"];
        let id = s.next_id();
        s.send(Packet::Subscribe(starling_codec::Subscribe {
            packet_id: id,
            subscriptions: filters
                .iter()
                .map(|f| starling_codec::Subscription {
                    filter: MqttString::from(f.to_string()),
                    options: sub_opts(QoS::AtMostOnce),
                })
                .collect(),
            properties: Default::default(),
        }))
        .await;
        match s.recv().await {
            Packet::SubAck(a) => assert_eq!(a.reasons, vec![ReasonCode::GRANTED_QOS_0; 5]),
            other => panic!("expected SUBACK, got {other:?}"),
        }
        // `r/#` and `r/+` are different subscriptions and each is entitled to the retained
        // messages [MQTT-3.8.4-5]; the three copies of `r/#` are one.
        let mut retained = 0;
        p.publish("r/end", QoS::AtLeastOnce, b"end").await;
        loop {
            let m = s.recv_publish().await;
            if m.topic.as_str() == "r/end" {
                break;
            }
            assert!(m.retain);
            retained += 1;
        }
        assert_eq!(retained, 6, "3 for r/# and 3 for r/+");
    })
}

#[tokio::test]
async fn a_retained_message_over_max_retained_bytes_is_refused_with_0x97() {
    timed!(async {
        let b = TestBroker::with(|c| c.limits.max_retained_bytes = Some(8 * 1024)).await;
        let mut watcher = b.client("rb-watch").await;
        watcher.subscribe("rb/#", sub_opts(QoS::AtMostOnce)).await;
        let mut p = b.client("rb-pub").await;
        let retained = |topic: &str, qos, payload: &[u8], id| {
            let mut m = publish(topic, qos, payload, id);
            m.retain = true;
            Packet::Publish(m)
        };
        p.send(retained("rb/small", QoS::AtLeastOnce, &[1; 1000], Some(1)))
            .await;
        assert_eq!(puback_reason(p.recv().await), ReasonCode::SUCCESS);
        // Over the tenant's bytes: refused as a whole, neither retained nor delivered.
        p.send(retained("rb/big", QoS::AtLeastOnce, &[2; 7000], Some(2)))
            .await;
        assert_eq!(puback_reason(p.recv().await), ReasonCode::QUOTA_EXCEEDED);
        p.send(retained("rb/big0", QoS::AtMostOnce, &[3; 7000], None))
            .await;
        // Replacing a retained message with a smaller one and clearing are always allowed.
        p.send(retained("rb/small", QoS::AtLeastOnce, &[4; 10], Some(3)))
            .await;
        assert_eq!(puback_reason(p.recv().await), ReasonCode::SUCCESS);
        let got: Vec<(String, usize)> =
            [watcher.recv_publish().await, watcher.recv_publish().await]
                .iter()
                .map(|m| (m.topic.as_str().to_string(), m.payload.len()))
                .collect();
        assert_eq!(
            got,
            vec![("rb/small".to_string(), 1000), ("rb/small".to_string(), 10)]
        );
        let mut late = b.client("rb-late").await;
        late.subscribe("rb/#", sub_opts(QoS::AtMostOnce)).await;
        let m = late.recv_publish().await;
        assert_eq!((m.topic.as_str(), m.payload.len()), ("rb/small", 10));
        late.expect_silence(Duration::from_millis(200)).await;
        let m = b.metrics().await;
        assert_eq!(
            metric(&m, "starling_dropped_total{reason=\"retained_full\"}"),
            2.0
        );
    })
}

fn puback_reason(p: Packet) -> ReasonCode {
    match p {
        Packet::PubAck(a) => a.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}
