//! MQTT 5.0 rules of CONNECT and of the client's Maximum Packet Size, as raw packets: the
//! protocol version byte [MQTT-3.1.2-2], an Authentication Method the broker does not support
//! [MQTT-4.12.0-1], and diagnostics left out rather than exceed the client's limit
//! [MQTT-3.2.2-19] [MQTT-3.4.2-2] [MQTT-3.5.2-2] [MQTT-3.14.2-3].

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use starling_broker::config::{AccessRule, Action, Permission};
use starling_codec::{
    ConnAck, ConnectProperties, Decoder, Direction, MqttString, Packet, ProtocolVersion, QoS,
    ReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

macro_rules! timed {
    ($body:expr) => {
        tokio::time::timeout(Duration::from_secs(30), $body)
            .await
            .expect("test timed out")
    };
}

/// A CONNECT with protocol `name` and `level`, clean start, keep alive 60, client id "x" (and an
/// empty property block from level 5 on).
fn raw_connect(name: &[u8], level: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, 0x02, 0x00, 0x3C]);
    if level & 0x7F >= 5 {
        body.push(0x00);
    }
    body.extend_from_slice(&[0x00, 0x01, b'x']);
    let mut out = vec![0x10, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// Everything the broker sends until it closes; fails on a reset.
async fn all_until_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut got))
        .await
        .expect("the broker closes in time")
        .expect("an orderly close, not a reset");
    got
}

#[tokio::test]
async fn unsupported_protocol_versions_get_0x84_in_the_form_the_client_reads_per_3_1_2_2() {
    timed!(async {
        let b = TestBroker::start().await;
        // 5.0 form: reason code 0x84, no properties. 3.1.1 form: return code 0x01.
        let v5_form: &[u8] = &[0x20, 0x03, 0x00, 0x84, 0x00];
        let v311_form: &[u8] = &[0x20, 0x02, 0x00, 0x01];
        let cases: &[(&[u8], u8, &[u8])] = &[
            (b"MQTT", 0, v311_form),
            (b"MQTT", 1, v311_form),
            (b"MQTT", 2, v311_form),
            (b"MQTT", 3, v311_form),
            (b"MQTT", 6, v5_form),
            (b"MQTT", 7, v5_form),
            (b"MQTT", 0x7F, v5_form),
            (b"MQTT", 0xFF, v5_form),
            // Mosquitto's bridges set the high bit of the level they speak.
            (b"MQTT", 0x84, v311_form),
            (b"MQTT", 0x85, v5_form),
            (b"MQIsdp", 4, v311_form),
            (b"MQIsdp", 5, v5_form),
            // [MQTT-3.1.2-1] another protocol name.
            (b"MQTX", 4, v311_form),
        ];
        for (name, level, expected) in cases {
            let mut s = TcpStream::connect(b.addr()).await.unwrap();
            s.write_all(&raw_connect(name, *level)).await.unwrap();
            let got = all_until_close(&mut s).await;
            assert_eq!(
                got,
                *expected,
                "{} level {level}",
                String::from_utf8_lossy(name)
            );
        }
        // The supported levels are accepted.
        for (name, level, accepted) in [
            (&b"MQIsdp"[..], 3u8, ProtocolVersion::V3_1),
            (b"MQTT", 4, ProtocolVersion::V3_1_1),
            (b"MQTT", 5, ProtocolVersion::V5),
        ] {
            let mut c = b.raw().await;
            c.version = accepted;
            c.send_bytes(&raw_connect(name, level)).await;
            let mut decoder = Decoder::with_version(Direction::ToClient, accepted, 1 << 20);
            let mut buf = BytesMut::new();
            let ack = loop {
                c.stream.read_buf(&mut buf).await.unwrap();
                if let Some(p) = decoder.decode(&mut buf).unwrap() {
                    break p;
                }
            };
            assert!(
                matches!(
                    ack,
                    Packet::ConnAck(ConnAck {
                        reason: ReasonCode::SUCCESS,
                        ..
                    })
                ),
                "level {level}: {ack:?}"
            );
        }
    })
}

/// `--auth none` does no extended authentication: any Authentication Method gets 0x8C and the
/// connection closes. (Token listeners accept `starling-jwt` only:
/// `reauthentication_refusals` in `token_auth.rs`.)
#[tokio::test]
async fn an_authentication_method_without_token_auth_gets_0x8c_per_4_12_0_1() {
    timed!(async {
        let b = TestBroker::start().await;
        for method in ["SCRAM-SHA-1", "starling-jwt"] {
            let mut c = b.raw().await;
            let mut connect = connect_v5("auth-method");
            connect.properties.authentication_method = Some(MqttString::from(method));
            let ack = c.connect(connect).await;
            assert_eq!(
                ack.reason,
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                "{method}"
            );
            assert_eq!(
                ack.properties.authentication_method, None,
                "no method is confirmed"
            );
            c.expect_closed().await;
        }
        let metrics = b.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "starling_connects_refused_total{reason=\"bad_authentication_method\"}"
            ),
            2.0
        );
        // Without a method the same client is let in.
        b.client("auth-method").await;
    })
}

/// Reads one packet as a client whose Maximum Packet Size is `max` would: a larger packet is an
/// error, as it is for the client.
async fn recv_within(c: &mut RawClient<TcpStream>, max: u32) -> Packet {
    let mut decoder = Decoder::with_version(Direction::ToClient, ProtocolVersion::V5, max);
    let mut buf = BytesMut::new();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(p) = decoder
                .decode(&mut buf)
                .unwrap_or_else(|e| panic!("over the client's maximum of {max}: {e}"))
            {
                return p;
            }
            assert_ne!(c.stream.read_buf(&mut buf).await.unwrap(), 0, "closed");
        }
    })
    .await
    .expect("a packet in time")
}

fn with_maximum(id: &str, max: u32) -> starling_codec::Connect {
    let mut connect = connect_v5(id);
    connect.properties = ConnectProperties {
        maximum_packet_size: Some(max),
        ..Default::default()
    };
    connect
}

#[tokio::test]
async fn a_refusing_connack_leaves_out_its_reason_string_beyond_the_clients_maximum_per_3_2_2_19() {
    timed!(async {
        let b = TestBroker::start().await;
        // Room for the reason string: it is sent.
        let mut c = b.raw().await;
        let mut connect = with_maximum("roomy", 1024);
        connect.properties.authentication_method = Some(MqttString::from("SCRAM-SHA-1"));
        c.send(Packet::Connect(Box::new(connect))).await;
        match recv_within(&mut c, 1024).await {
            Packet::ConnAck(a) => {
                assert_eq!(a.reason, ReasonCode::BAD_AUTHENTICATION_METHOD);
                assert!(a.properties.reason_string.is_some());
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        // No room: the CONNACK comes without it.
        let mut c = b.raw().await;
        let mut connect = with_maximum("cramped", 8);
        connect.properties.authentication_method = Some(MqttString::from("SCRAM-SHA-1"));
        c.send(Packet::Connect(Box::new(connect))).await;
        match recv_within(&mut c, 8).await {
            Packet::ConnAck(a) => {
                assert_eq!(a.reason, ReasonCode::BAD_AUTHENTICATION_METHOD);
                assert_eq!(a.properties.reason_string, None);
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c.expect_closed().await;
    })
}

#[tokio::test]
async fn a_disconnect_leaves_out_its_reason_string_beyond_the_clients_maximum_per_3_14_2_3() {
    timed!(async {
        let b = TestBroker::start().await;
        // The CONNACK of this broker takes 16 bytes; a DISCONNECT with its reason string more.
        let mut c = b.raw().await;
        c.send(Packet::Connect(Box::new(with_maximum("small", 16))))
            .await;
        assert!(matches!(
            recv_within(&mut c, 16).await,
            Packet::ConnAck(ConnAck {
                reason: ReasonCode::SUCCESS,
                ..
            })
        ));
        c.send(Packet::Connect(Box::new(connect_v5("small")))).await;
        match recv_within(&mut c, 16).await {
            Packet::Disconnect(d) => {
                assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR);
                assert_eq!(d.properties.reason_string, None);
            }
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
    })
}

/// A refused PUBLISH (an access rule) is acknowledged with 0x87; its reason string goes only
/// where it fits.
#[tokio::test]
async fn refusing_acks_leave_out_their_reason_string_beyond_the_clients_maximum_per_3_4_2_2() {
    timed!(async {
        let b = TestBroker::with(|c| {
            c.auth.rules = vec![
                AccessRule::new(Permission::Allow, Action::All, "#"),
                AccessRule::new(Permission::Deny, Action::Publish, "secret/#"),
            ];
        })
        .await;
        for (max, reason_string) in [(1024u32, true), (16, false)] {
            let mut c = b.raw().await;
            c.send(Packet::Connect(Box::new(with_maximum("acks", max))))
                .await;
            assert!(matches!(recv_within(&mut c, max).await, Packet::ConnAck(_)));
            for (qos, id) in [(QoS::AtLeastOnce, 1u16), (QoS::ExactlyOnce, 2)] {
                c.send(Packet::Publish(publish("secret/x", qos, b"x", Some(id))))
                    .await;
                let (reason, properties) = match recv_within(&mut c, max).await {
                    // [MQTT-3.4.2-2]
                    Packet::PubAck(a) => (a.reason, a.properties),
                    // [MQTT-3.5.2-2]
                    Packet::PubRec(r) => (r.reason, r.properties),
                    other => panic!("expected PUBACK or PUBREC, got {other:?}"),
                };
                assert_eq!(reason, ReasonCode::NOT_AUTHORIZED);
                assert_eq!(
                    properties.reason_string.is_some(),
                    reason_string,
                    "maximum {max}: {properties:?}"
                );
            }
        }
    })
}
