//! What only MQTT 5.0 has, through rumqttc's `v5` API: will delay, topic aliases both ways,
//! flow control (Receive Maximum), subscription identifiers and No Local.

use std::time::Duration;

use crate::client::v5::{
    Filter, LastWill, PublishProperties, SubscribeProperties, V5, V5Client, qos, topic, with_will,
};
use crate::client::{Client, Protocol, QoS};
use crate::common::TestBroker;

#[tokio::test]
async fn will_delay_holds_the_will_and_a_reconnection_cancels_it() {
    crate::timed!(async {
        let b = TestBroker::start().await;
        let (mut watcher, _) = V5Client::connect_v5(V5::options(&b, "v5-wd-watch")).await;
        watcher.subscribe("v5/wd/#", QoS::AtLeastOnce).await;

        // Delay 1 s within a session of 60 s: the will comes after the delay.
        let mut o = V5::options(&b, "v5-wd-late");
        o.set_session_expiry_interval(Some(60));
        with_will(&mut o, "v5/wd/late", b"late", Some(1));
        let (late, _) = V5Client::connect_v5(o).await;
        let died = tokio::time::Instant::now();
        late.kill().await;
        let p = watcher.publish_v5().await;
        assert_eq!((topic(&p), &p.payload[..]), ("v5/wd/late", &b"late"[..]));
        assert!(
            died.elapsed() >= Duration::from_millis(900),
            "will published {:?} after the client died, before its 1 s delay",
            died.elapsed()
        );

        // Delay 2 s, and the client comes back at once: the will is cancelled [MQTT-3.1.3-9].
        let mut o = V5::options(&b, "v5-wd-back");
        o.set_session_expiry_interval(Some(60));
        with_will(&mut o, "v5/wd/back", b"cancelled", Some(2));
        let (back, _) = V5Client::connect_v5(o.clone()).await;
        back.kill().await;
        o.set_clean_start(false);
        let mut o2 = o.clone();
        o2.set_last_will(LastWill::new(
            "v5/wd/second",
            b"x".to_vec(),
            qos(QoS::AtMostOnce),
            false,
            None,
        ));
        let (again, ack) = V5Client::connect_v5(o2).await;
        assert!(ack.session_present);
        watcher.expect_no_publish(Duration::from_millis(2500)).await;
        // A normal DISCONNECT deletes the new will too.
        again.disconnect().await;
        let (mut probe, _) = V5Client::connect_v5(V5::options(&b, "v5-wd-probe")).await;
        probe
            .publish("v5/wd/probe", QoS::AtLeastOnce, false, b"p")
            .await;
        let p = watcher.publish_v5().await;
        assert_eq!(topic(&p), "v5/wd/probe");
    })
}

#[tokio::test]
async fn topic_aliases_both_ways() {
    crate::timed!(async {
        let b = TestBroker::start().await;
        let mut o = V5::options(&b, "v5-alias-sub");
        o.set_topic_alias_max(Some(4));
        let (mut sub, _) = V5Client::connect_v5(o).await;
        sub.subscribe("v5/alias/#", QoS::AtMostOnce).await;
        let (mut publisher, ack) = V5Client::connect_v5(V5::options(&b, "v5-alias-pub")).await;
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
                qos(QoS::AtLeastOnce),
                false,
                "a",
                props(1),
            )
            .await
            .unwrap();
        publisher.acked(QoS::AtLeastOnce).await;
        publisher
            .client
            .publish_with_properties("", qos(QoS::AtLeastOnce), false, "b", props(1))
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
            let p = sub.publish_v5().await;
            let alias = p.properties.as_ref().and_then(|p| p.topic_alias);
            got.push((topic(&p).to_string(), alias, p.payload.to_vec()));
        }
        assert_eq!(
            got[0],
            ("v5/alias/long/topic".into(), Some(1), b"a".to_vec())
        );
        assert_eq!(got[1], (String::new(), Some(1), b"b".to_vec()));
        assert_eq!(got[2], ("v5/alias/other".into(), Some(2), b"c".to_vec()));

        // A subscriber that allows none gets full topics and no alias.
        let (mut plain, _) = V5Client::connect_v5(V5::options(&b, "v5-alias-plain")).await;
        plain.subscribe("v5/alias/#", QoS::AtMostOnce).await;
        publisher
            .client
            .publish_with_properties("", qos(QoS::AtLeastOnce), false, "d", props(1))
            .await
            .unwrap();
        publisher.acked(QoS::AtLeastOnce).await;
        let p = plain.publish_v5().await;
        assert_eq!(
            (topic(&p), p.properties.as_ref().and_then(|p| p.topic_alias)),
            ("v5/alias/long/topic", None)
        );
    })
}

#[tokio::test]
async fn in_flight_deliveries_follow_the_subscribers_receive_maximum() {
    crate::timed!(async {
        let b = TestBroker::start().await;
        let mut o = V5::options(&b, "v5-flow-sub");
        o.set_receive_maximum(Some(2));
        o.set_manual_acks(true);
        let (mut sub, _) = V5Client::connect_v5(o).await;
        sub.subscribe("v5/flow", QoS::AtLeastOnce).await;
        let (mut publisher, _) = V5Client::connect_v5(V5::options(&b, "v5-flow-pub")).await;
        for i in 0..5u8 {
            publisher
                .publish("v5/flow", QoS::AtLeastOnce, false, &[i])
                .await;
        }
        let first = sub.publish_v5().await;
        let second = sub.publish_v5().await;
        assert_eq!((first.payload[0], second.payload[0]), (0, 1));
        // The window of 2 is full: nothing more until an acknowledgement.
        sub.expect_no_publish(Duration::from_millis(300)).await;
        sub.client.ack(&first).await.unwrap();
        let third = sub.publish_v5().await;
        assert_eq!(third.payload[0], 2);
        sub.expect_no_publish(Duration::from_millis(300)).await;
        sub.client.ack(&second).await.unwrap();
        sub.client.ack(&third).await.unwrap();
        let rest = [sub.publish_v5().await, sub.publish_v5().await];
        assert_eq!([rest[0].payload[0], rest[1].payload[0]], [3, 4]);
    })
}

#[tokio::test]
async fn subscription_identifier_and_no_local_reach_the_client() {
    crate::timed!(async {
        let b = TestBroker::start().await;
        let (mut c, _) = V5Client::connect_v5(V5::options(&b, "v5-subid")).await;
        c.client
            .subscribe_with_properties(
                "v5/subid/#",
                qos(QoS::AtMostOnce),
                SubscribeProperties {
                    id: Some(42),
                    user_properties: vec![],
                },
            )
            .await
            .unwrap();
        c.suback().await;
        let mut f = Filter::new("v5/nolocal", qos(QoS::AtMostOnce));
        f.nolocal = true;
        c.client.subscribe_many([f]).await.unwrap();
        c.suback().await;
        // Own message on the No Local subscription: not delivered; the next one is.
        c.publish("v5/nolocal", QoS::AtMostOnce, false, b"own")
            .await;
        c.publish("v5/subid/x", QoS::AtMostOnce, false, b"id").await;
        let p = c.publish_v5().await;
        assert_eq!(topic(&p), "v5/subid/x");
        assert_eq!(
            p.properties.map(|p| p.subscription_identifiers),
            Some(vec![42])
        );
    })
}
