//! Protocol errors sent as raw bytes or packets: each ends that one connection with the right
//! reason code, and the broker keeps serving other clients.

mod common;

use common::*;
use starling_codec::{
    Packet, ProtocolVersion, PublishProperties, QoS, ReasonCode, Subscribe, SubscribeProperties,
    Subscription, SubscriptionOptions,
};

/// After a protocol error on one connection, another client still publishes and receives.
async fn broker_still_serves(b: &TestBroker) {
    let mut sub = b.client("witness-sub").await;
    sub.subscribe("witness/t", sub_opts(QoS::AtLeastOnce)).await;
    let mut publ = b.client("witness-pub").await;
    assert_eq!(
        publ.publish("witness/t", QoS::AtLeastOnce, b"still here")
            .await,
        Some(ReasonCode::SUCCESS)
    );
    let p = sub.recv_publish().await;
    assert_eq!(&p.payload[..], b"still here");
}

macro_rules! timed {
    ($body:expr) => {
        tokio::time::timeout(std::time::Duration::from_secs(30), $body)
            .await
            .expect("test timed out")
    };
}

#[tokio::test]
async fn second_connect_is_a_protocol_error_0x82() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.client("twice").await;
        c.send(Packet::Connect(Box::new(connect_v5("twice")))).await;
        c.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn first_packet_not_connect_closes_the_connection() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.raw().await;
        // PINGREQ before CONNECT [MQTT-3.1.0-1].
        c.send_bytes(&[0xC0, 0x00]).await;
        c.expect_closed().await;
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn remaining_length_over_four_bytes_is_malformed_0x81() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.client("rl").await;
        c.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;
        c.expect_disconnect(ReasonCode::MALFORMED_PACKET).await;
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn publish_with_qos_3_is_malformed_0x81() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.client("qos3").await;
        // PUBLISH, QoS bits 11, topic "a", no properties.
        c.send_bytes(&[0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, 0x00])
            .await;
        c.expect_disconnect(ReasonCode::MALFORMED_PACKET).await;
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn packet_larger_than_maximum_gets_0x95() {
    timed!(async {
        let b = TestBroker::with(|c| c.limits.max_packet_size = Some(1024)).await;
        let mut c = b.client("big").await;
        // The fixed header announces 2000 bytes; the broker refuses before they arrive.
        c.send_bytes(&[0x30, 0xD0, 0x0F]).await;
        c.expect_disconnect(ReasonCode::PACKET_TOO_LARGE).await;
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn topic_alias_zero_gets_0x94() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.client("alias0").await;
        // PUBLISH QoS 0 topic "a" with Topic Alias (0x23) = 0.
        c.send_bytes(&[0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00])
            .await;
        c.expect_disconnect(ReasonCode::TOPIC_ALIAS_INVALID).await;
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn topic_alias_above_our_maximum_gets_0x94() {
    timed!(async {
        let b = TestBroker::with(|c| c.limits.topic_alias_maximum = Some(4)).await;
        let mut c = b.client("alias5").await;
        let mut p = publish("a/b", QoS::AtMostOnce, b"x", None);
        p.properties = PublishProperties {
            topic_alias: Some(5),
            ..Default::default()
        };
        c.send(Packet::Publish(p)).await;
        c.expect_disconnect(ReasonCode::TOPIC_ALIAS_INVALID).await;
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn unknown_topic_alias_with_empty_topic_is_a_protocol_error() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.client("alias-unknown").await;
        let mut p = publish("", QoS::AtMostOnce, b"x", None);
        p.properties.topic_alias = Some(1);
        c.send(Packet::Publish(p)).await;
        c.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn subscription_identifier_in_client_publish_is_a_protocol_error() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.client("subid").await;
        // [MQTT-3.3.4-6] PUBLISH "a" with Subscription Identifier (0x0B) = 1.
        c.send_bytes(&[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x0B, 0x01])
            .await;
        c.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.client("shared-nl").await;
        c.send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            subscriptions: vec![Subscription {
                filter: "$share/g/a/b".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtMostOnce,
                    no_local: true,
                    ..Default::default()
                },
            }],
            properties: SubscribeProperties::default(),
        }))
        .await;
        c.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn session_expiry_on_disconnect_after_zero_is_a_protocol_error() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.client("sei").await;
        c.send(Packet::Disconnect(starling_codec::Disconnect {
            reason: ReasonCode::NORMAL_DISCONNECTION,
            properties: starling_codec::DisconnectProperties {
                session_expiry_interval: Some(60),
                ..Default::default()
            },
        }))
        .await;
        c.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn exceeding_our_receive_maximum_gets_0x93() {
    timed!(async {
        let b = TestBroker::with(|c| c.limits.receive_maximum = Some(2)).await;
        let mut c = b.client("rm").await;
        for id in 1..=3u16 {
            // QoS 2 PUBLISHes never released: the third exceeds Receive Maximum 2.
            c.send(Packet::Publish(publish(
                "rm/t",
                QoS::ExactlyOnce,
                b"x",
                Some(id),
            )))
            .await;
        }
        for _ in 0..2 {
            assert!(matches!(c.recv().await, Packet::PubRec(_)));
        }
        c.expect_disconnect(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED)
            .await;
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn auth_without_authentication_method_is_a_protocol_error() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.client("auth").await;
        c.send(Packet::Auth(starling_codec::Auth {
            reason: ReasonCode::RE_AUTHENTICATE,
            properties: Default::default(),
        }))
        .await;
        c.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn invalid_utf8_topic_is_malformed() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.client("utf8").await;
        // Topic bytes 0xC3 0x28 are not UTF-8 [MQTT-1.5.4-1].
        c.send_bytes(&[0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, 0x00])
            .await;
        c.expect_disconnect(ReasonCode::MALFORMED_PACKET).await;
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn wildcard_in_topic_name_is_refused() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.client("wild").await;
        c.send_bytes(&[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', 0x00])
            .await;
        match c.recv_opt().await {
            Some(Packet::Disconnect(d)) => assert!(
                d.reason == ReasonCode::TOPIC_NAME_INVALID
                    || d.reason == ReasonCode::MALFORMED_PACKET
                    || d.reason == ReasonCode::PROTOCOL_ERROR,
                "{d:?}"
            ),
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn v3_client_with_protocol_error_is_closed_without_disconnect() {
    timed!(async {
        let b = TestBroker::start().await;
        let mut c = b.raw_v3().await;
        let ack = c.connect(connect_v3("v3-err")).await;
        assert_eq!(ack.reason, ReasonCode::SUCCESS);
        c.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;
        c.expect_closed().await;
        assert_eq!(c.version, ProtocolVersion::V3_1_1);
        broker_still_serves(&b).await;
    })
}

#[tokio::test]
async fn each_listener_has_its_own_mqtt_limits() {
    timed!(async {
        let b = TestBroker::with(|c| {
            let mut small = starling_broker::config::ListenerConfig::new(
                starling_broker::config::ListenerKind::Mqtt,
                "127.0.0.1:0".parse().unwrap(),
            );
            small.limits = Some(starling_broker::config::LimitsConfig {
                max_packet_size: Some(1024),
                ..Default::default()
            });
            c.listeners.push(small);
        })
        .await;
        let small_addr = b.broker.listeners[1].1;
        let s = tokio::net::TcpStream::connect(small_addr).await.unwrap();
        let mut small = RawClient::new(s, ProtocolVersion::V5);
        let ack = small.connect(connect_v5("small")).await;
        assert_eq!(ack.properties.maximum_packet_size, Some(1024));
        small
            .send(Packet::Publish(publish(
                "t",
                QoS::AtMostOnce,
                &[0u8; 2000],
                None,
            )))
            .await;
        small.expect_disconnect(ReasonCode::PACKET_TOO_LARGE).await;
        // The first listener keeps the global limit.
        let mut big = b.client("big").await;
        assert_eq!(
            big.publish("t", QoS::AtLeastOnce, &[0u8; 2000]).await,
            Some(ReasonCode::SUCCESS)
        );
    })
}
