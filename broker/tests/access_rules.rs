//! Access rules of `--auth none` listeners (`[[auth.rules]]`, `[[listeners.rules]]`): a refused
//! PUBLISH is acknowledged with 0x87 in 5.0 and delivered to nobody, a refused SUBSCRIBE gets
//! SUBACK 0x87 (5.0) or 0x80 (3.1.1), a will on a refused topic refuses the CONNECT; deny rules
//! win over allow rules whatever their order.

mod common;

use std::time::Duration;

use common::*;
use starling_broker::config::{
    AccessRule, Action, Config, ListenerConfig, ListenerKind, Permission,
};
use starling_codec::{MqttString, ProtocolVersion, QoS, ReasonCode, Will};
use tokio::net::TcpStream;

macro_rules! timed {
    ($body:expr) => {
        tokio::time::timeout(Duration::from_secs(30), $body)
            .await
            .expect("test timed out")
    };
}

/// Everything allowed but publishing under `config/` and subscribing under `secret/`, the deny
/// rules listed first.
fn rules(c: &mut Config) {
    c.auth.rules = vec![
        AccessRule::new(Permission::Deny, Action::Publish, "config/#"),
        AccessRule::new(Permission::Deny, Action::Subscribe, "secret/#"),
        AccessRule::new(Permission::Allow, Action::All, "#"),
    ];
}

#[tokio::test]
async fn a_denied_publish_gets_0x87_and_reaches_no_subscriber() {
    timed!(async {
        let b = TestBroker::with(rules).await;
        let mut sub = b.client("sub").await;
        assert_eq!(
            sub.subscribe("config/#", sub_opts(QoS::AtLeastOnce))
                .await
                .reasons,
            vec![ReasonCode::GRANTED_QOS_1],
            "subscribing to config/# is allowed"
        );
        let mut publ = b.client("pub").await;
        publ.publish("config/a", QoS::AtMostOnce, b"dropped").await;
        assert_eq!(
            publ.publish("config/a", QoS::AtLeastOnce, b"refused").await,
            Some(ReasonCode::NOT_AUTHORIZED)
        );
        assert_eq!(
            publ.publish("config/a", QoS::ExactlyOnce, b"refused").await,
            Some(ReasonCode::NOT_AUTHORIZED)
        );
        // A deny rule covers the topic itself too (`config/#` matches `config`).
        assert_eq!(
            publ.publish("config", QoS::AtLeastOnce, b"refused").await,
            Some(ReasonCode::NOT_AUTHORIZED)
        );
        // The first message the subscriber gets is the allowed one: nothing refused came before.
        let mut other = b.client("other").await;
        other
            .subscribe("elsewhere", sub_opts(QoS::AtLeastOnce))
            .await;
        assert_eq!(
            publ.publish("elsewhere", QoS::AtLeastOnce, b"allowed")
                .await,
            Some(ReasonCode::SUCCESS)
        );
        assert_eq!(&other.recv_publish().await.payload[..], b"allowed");
        sub.expect_silence(Duration::from_millis(200)).await;
        let metrics = b.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "starling_dropped_total{reason=\"not_authorized\"}"
            ),
            4.0
        );
    })
}

#[tokio::test]
async fn a_denied_subscription_gets_suback_0x87_in_5_and_0x80_in_3_1_1() {
    timed!(async {
        let b = TestBroker::with(rules).await;
        let mut v5 = b.client("sub5").await;
        assert_eq!(
            v5.subscribe("secret/x", sub_opts(QoS::AtLeastOnce))
                .await
                .reasons,
            vec![ReasonCode::NOT_AUTHORIZED]
        );
        // A filter that could receive a denied topic is refused as well.
        assert_eq!(
            v5.subscribe("#", sub_opts(QoS::AtMostOnce)).await.reasons,
            vec![ReasonCode::NOT_AUTHORIZED]
        );
        assert_eq!(
            v5.subscribe("$share/g/secret/#", sub_opts(QoS::AtMostOnce))
                .await
                .reasons,
            vec![ReasonCode::NOT_AUTHORIZED]
        );
        assert_eq!(
            v5.subscribe("public/#", sub_opts(QoS::AtMostOnce))
                .await
                .reasons,
            vec![ReasonCode::GRANTED_QOS_0]
        );
        let mut v3 = b.raw_v3().await;
        assert_eq!(
            v3.connect(connect_v3("sub3")).await.reason,
            ReasonCode::SUCCESS
        );
        let ack = v3.subscribe("secret/x", sub_opts(QoS::AtLeastOnce)).await;
        // The 3.1.1 failure return code 0x80 decodes as 0x80.
        assert_eq!(ack.reasons, vec![ReasonCode::UNSPECIFIED_ERROR]);
        // Nothing published there reaches the refused subscribers.
        let mut publ = b.client("pub").await;
        assert_eq!(
            publ.publish("secret/x", QoS::AtLeastOnce, b"x").await,
            Some(ReasonCode::SUCCESS)
        );
        v5.expect_silence(Duration::from_millis(200)).await;
        v3.expect_silence(Duration::from_millis(50)).await;
    })
}

#[tokio::test]
async fn a_will_on_a_denied_topic_refuses_the_connect_with_0x87() {
    timed!(async {
        let b = TestBroker::with(rules).await;
        let mut c = b.raw().await;
        let mut connect = connect_v5("will");
        connect.will = Some(Will {
            qos: QoS::AtMostOnce,
            retain: false,
            topic: MqttString::from("config/last-words"),
            payload: bytes::Bytes::from_static(b"bye"),
            properties: Default::default(),
        });
        assert_eq!(c.connect(connect).await.reason, ReasonCode::NOT_AUTHORIZED);
        c.expect_closed().await;
    })
}

#[tokio::test]
async fn what_no_rule_allows_is_refused() {
    timed!(async {
        let b = TestBroker::with(|c| {
            c.auth.rules = vec![
                AccessRule::new(Permission::Allow, Action::Publish, "sensors/+/temp"),
                AccessRule::new(Permission::Allow, Action::Subscribe, "sensors/#"),
            ];
        })
        .await;
        let mut c = b.client("narrow").await;
        assert_eq!(
            c.publish("sensors/k1/temp", QoS::AtLeastOnce, b"21").await,
            Some(ReasonCode::SUCCESS)
        );
        assert_eq!(
            c.publish("sensors/k1/humidity", QoS::AtLeastOnce, b"40")
                .await,
            Some(ReasonCode::NOT_AUTHORIZED)
        );
        assert_eq!(
            c.subscribe("sensors/+/temp", sub_opts(QoS::AtMostOnce))
                .await
                .reasons,
            vec![ReasonCode::GRANTED_QOS_0]
        );
        assert_eq!(
            c.subscribe("#", sub_opts(QoS::AtMostOnce)).await.reasons,
            vec![ReasonCode::NOT_AUTHORIZED],
            "wider than the allowed sensors/#"
        );
    })
}

#[tokio::test]
async fn a_listener_with_its_own_rules_replaces_the_global_ones() {
    timed!(async {
        let b = TestBroker::with(|c| {
            rules(c);
            let mut open = ListenerConfig::new(ListenerKind::Mqtt, "127.0.0.1:0".parse().unwrap());
            open.rules = Some(vec![AccessRule::new(Permission::Allow, Action::All, "#")]);
            c.listeners.push(open);
        })
        .await;
        let open_addr = b.broker.listeners[1].1;
        let mut open = RawClient::new(
            TcpStream::connect(open_addr).await.unwrap(),
            ProtocolVersion::V5,
        );
        assert_eq!(
            open.connect(connect_v5("open")).await.reason,
            ReasonCode::SUCCESS
        );
        assert_eq!(
            open.publish("config/a", QoS::AtLeastOnce, b"x").await,
            Some(ReasonCode::SUCCESS)
        );
        let mut guarded = b.client("guarded").await;
        assert_eq!(
            guarded.publish("config/a", QoS::AtLeastOnce, b"x").await,
            Some(ReasonCode::NOT_AUTHORIZED)
        );
    })
}

#[test]
fn access_rules_are_read_from_the_file_and_bad_ones_are_reported() {
    use starling_broker::config::Overrides;
    let file = r##"
        [[listeners]]
        kind = "mqtt"
        bind = "127.0.0.1:0"

        [[auth.rules]]
        permission = "allow"
        action = "all"
        topic = "#"

        [[auth.rules]]
        permission = "deny"
        action = "publish"
        topic = "config/#"
    "##;
    let c = Config::load(Some(file), [], &Overrides::default()).unwrap();
    assert_eq!(
        c.auth.rules,
        vec![
            AccessRule::new(Permission::Allow, Action::All, "#"),
            AccessRule::new(Permission::Deny, Action::Publish, "config/#"),
        ]
    );
    let unknown_action = r##"
        [[listeners]]
        kind = "mqtt"
        bind = "127.0.0.1:0"
        [[auth.rules]]
        permission = "allow"
        action = "read"
        topic = "#"
    "##;
    let err = Config::load(Some(unknown_action), [], &Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("read"), "{err}");
    let bad = r##"
        [auth]
        jwks = "/dev/null"
        [[listeners]]
        kind = "mqtt"
        bind = "127.0.0.1:0"
        auth = "token"
        [[listeners.rules]]
        permission = "deny"
        action = "publish"
        topic = "a/#/b"
    "##;
    let err = Config::load(Some(bad), [], &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("listeners[0].rules apply to listeners without"),
        "{err}"
    );
    assert!(err.contains("listeners[0].rules[0].topic `a/#/b`"), "{err}");
}
