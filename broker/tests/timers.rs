//! Timer behaviour under paused time, over `tokio::io::duplex` transports (the paused clock
//! jumps ahead only while the runtime is idle, which real sockets would defeat).

mod common;

use std::time::Duration;

use common::*;
use starling_codec::{
    Connect, ConnectProperties, MqttString, Packet, ProtocolVersion, QoS, ReasonCode, Will,
    WillProperties,
};
use tokio::io::DuplexStream;

async fn duplex_client(b: &TestBroker) -> RawClient<DuplexStream> {
    let mut c = RawClient::new(b.broker.connect_duplex(64 * 1024), ProtocolVersion::V5);
    // The clock is paused: waits are virtual and must outlast the timers under test.
    c.wait = Duration::from_secs(3600);
    c
}

fn will_connect(id: &str, delay: u32, expiry: u32) -> Connect {
    Connect {
        will: Some(Will {
            qos: QoS::AtMostOnce,
            retain: false,
            topic: MqttString::from(format!("wills/{id}")),
            payload: bytes::Bytes::from_static(b"bye"),
            properties: WillProperties {
                will_delay_interval: Some(delay),
                ..Default::default()
            },
        }),
        properties: ConnectProperties {
            session_expiry_interval: Some(expiry),
            ..Default::default()
        },
        ..connect_v5(id)
    }
}

#[tokio::test(start_paused = true)]
async fn keep_alive_timeout_after_one_and_a_half_periods() {
    let b = TestBroker::start().await;
    let mut c = duplex_client(&b).await;
    let ack = c
        .connect(Connect {
            keep_alive: 10,
            ..connect_v5("ka")
        })
        .await;
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    let start = tokio::time::Instant::now();
    c.expect_disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(15) && waited < Duration::from_secs(16),
        "closed after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn pings_keep_the_connection_alive() {
    let b = TestBroker::start().await;
    let mut c = duplex_client(&b).await;
    c.connect(Connect {
        keep_alive: 10,
        ..connect_v5("ka-ping")
    })
    .await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(9)).await;
        c.send(Packet::PingReq).await;
        assert!(matches!(c.recv().await, Packet::PingResp));
    }
}

#[tokio::test(start_paused = true)]
async fn no_connect_within_the_timeout_closes_the_connection() {
    let b = TestBroker::with(|c| c.limits.connect_timeout_secs = Some(10)).await;
    let mut c = duplex_client(&b).await;
    let start = tokio::time::Instant::now();
    c.expect_closed().await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn server_keep_alive_raises_a_low_keep_alive() {
    let b = TestBroker::with(|c| c.limits.min_keep_alive_secs = Some(10)).await;
    let mut c = duplex_client(&b).await;
    let ack = c
        .connect(Connect {
            keep_alive: 2,
            ..connect_v5("ska")
        })
        .await;
    assert_eq!(ack.properties.server_keep_alive, Some(10));
}

#[tokio::test(start_paused = true)]
async fn will_delay_publishes_after_the_delay() {
    let b = TestBroker::start().await;
    let mut w = duplex_client(&b).await;
    w.connect(connect_v5("watch")).await;
    w.subscribe("wills/#", sub_opts(QoS::AtMostOnce)).await;
    let mut c = duplex_client(&b).await;
    c.connect(will_connect("delayed", 30, 300)).await;
    let start = tokio::time::Instant::now();
    drop(c);
    let got = w.recv_publish().await;
    assert_eq!(got.topic.as_str(), "wills/delayed");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn reconnecting_within_the_will_delay_cancels_the_will() {
    let b = TestBroker::start().await;
    let mut w = duplex_client(&b).await;
    w.connect(connect_v5("watch2")).await;
    w.subscribe("wills/#", sub_opts(QoS::AtMostOnce)).await;
    let mut c = duplex_client(&b).await;
    c.connect(will_connect("back", 30, 300)).await;
    drop(c);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut c = duplex_client(&b).await;
    let ack = c
        .connect(Connect {
            clean_start: false,
            ..will_connect("back", 30, 300)
        })
        .await;
    assert!(ack.session_present);
    // [MQTT-3.1.3-9] the will of the first connection is never published.
    w.expect_silence(Duration::from_secs(60)).await;
    // The ping keeps the watcher alive past its keep alive while we wait.
}

#[tokio::test(start_paused = true)]
async fn session_expiry_shorter_than_the_will_delay_publishes_at_session_end() {
    let b = TestBroker::start().await;
    let mut w = duplex_client(&b).await;
    w.connect(Connect {
        keep_alive: 0,
        ..connect_v5("watch3")
    })
    .await;
    w.subscribe("wills/#", sub_opts(QoS::AtMostOnce)).await;
    let mut c = duplex_client(&b).await;
    c.connect(will_connect("short", 120, 20)).await;
    let start = tokio::time::Instant::now();
    drop(c);
    assert_eq!(w.recv_publish().await.topic.as_str(), "wills/short");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(20) && waited < Duration::from_secs(21),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn session_expires_after_its_interval() {
    let b = TestBroker::start().await;
    let mut c = duplex_client(&b).await;
    c.connect(Connect {
        clean_start: true,
        properties: ConnectProperties {
            session_expiry_interval: Some(30),
            ..Default::default()
        },
        ..connect_v5("expiring")
    })
    .await;
    c.subscribe("exp/t", sub_opts(QoS::AtLeastOnce)).await;
    drop(c);
    tokio::time::sleep(Duration::from_secs(29)).await;
    let mut c = duplex_client(&b).await;
    let ack = c
        .connect(Connect {
            clean_start: false,
            properties: ConnectProperties {
                session_expiry_interval: Some(30),
                ..Default::default()
            },
            ..connect_v5("expiring")
        })
        .await;
    assert!(ack.session_present, "still there after 29 s");
    drop(c);
    tokio::time::sleep(Duration::from_secs(31)).await;
    let mut c = duplex_client(&b).await;
    let ack = c
        .connect(Connect {
            clean_start: false,
            ..connect_v5("expiring")
        })
        .await;
    assert!(!ack.session_present, "gone after 30 s offline");
}

#[tokio::test(start_paused = true)]
async fn expired_messages_are_not_delivered_and_the_rest_carry_the_remaining_time() {
    let b = TestBroker::start().await;
    let mut p = duplex_client(&b).await;
    p.connect(Connect {
        keep_alive: 0,
        ..connect_v5("exp-pub")
    })
    .await;
    for (topic, expiry) in [("me/short", 5u32), ("me/long", 100)] {
        let mut m = publish(topic, QoS::AtMostOnce, b"x", None);
        m.retain = true;
        m.properties.message_expiry_interval = Some(expiry);
        p.send(Packet::Publish(m)).await;
    }
    p.send(Packet::PingReq).await;
    assert!(matches!(p.recv().await, Packet::PingResp));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut s = duplex_client(&b).await;
    s.connect(connect_v5("exp-sub")).await;
    s.subscribe("me/#", sub_opts(QoS::AtMostOnce)).await;
    let got = s.recv_publish().await;
    assert_eq!(got.topic.as_str(), "me/long");
    assert_eq!(got.properties.message_expiry_interval, Some(90));
    s.expect_silence(Duration::from_secs(1)).await;
}
