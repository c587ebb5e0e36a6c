//! `Packet::encode_within`: a packet for a receiver with a Maximum Packet Size leaves out its
//! Reason String, then its User Properties, rather than exceed the limit; a PUBLISH keeps its
//! User Properties and is refused whole when it does not fit.

mod common;

use bytes::{Bytes, BytesMut};
use common::decode;
use starling_codec::Direction::ToClient;
use starling_codec::ProtocolVersion::{V3_1_1, V5};
use starling_codec::*;

fn s(x: &str) -> MqttString {
    MqttString::from(x.to_string())
}

fn diagnostics() -> (Option<MqttString>, Vec<(MqttString, MqttString)>) {
    (
        Some(s(&"why ".repeat(20))),
        vec![(s("trace"), s(&"id".repeat(20)))],
    )
}

/// Encodes within `max` and decodes the bytes back as a client would.
fn within(p: &Packet, max: u32) -> Result<Packet, EncodeError> {
    let mut out = BytesMut::new();
    let n = p.encode_within(V5, max, &mut out)?;
    assert_eq!(n, out.len());
    assert!(n <= max as usize, "{n} bytes for a maximum of {max}");
    Ok(decode(ToClient, V5, &out).expect("decodes"))
}

fn connack() -> ConnAck {
    let (reason_string, user_properties) = diagnostics();
    let mut c = ConnAck::new(ReasonCode::NOT_AUTHORIZED);
    c.properties.receive_maximum = Some(10);
    c.properties.reason_string = reason_string;
    c.properties.user_properties = user_properties;
    c
}

#[test]
fn a_packet_within_the_maximum_is_encoded_whole() {
    let p = Packet::ConnAck(connack());
    let size = p.encoded_len(V5) as u32;
    assert_eq!(within(&p, size).unwrap(), p);
    assert_eq!(within(&p, u32::MAX).unwrap(), p);
}

#[test]
fn connack_over_the_maximum_loses_its_reason_string_first_per_3_2_2_19() {
    let full = connack();
    let mut without_reason = full.clone();
    without_reason.properties.reason_string = None;
    let p = Packet::ConnAck(full);
    let limit = Packet::ConnAck(without_reason.clone()).encoded_len(V5) as u32;
    assert!(limit < p.encoded_len(V5) as u32);
    assert_eq!(
        within(&p, limit).unwrap(),
        Packet::ConnAck(without_reason),
        "the user properties still fit"
    );
}

#[test]
fn connack_still_over_the_maximum_loses_its_user_properties_per_3_2_2_20() {
    let full = connack();
    let mut bare = full.clone();
    bare.properties.reason_string = None;
    bare.properties.user_properties.clear();
    let limit = Packet::ConnAck(bare.clone()).encoded_len(V5) as u32;
    let got = within(&Packet::ConnAck(full), limit).unwrap();
    assert_eq!(got, Packet::ConnAck(bare.clone()));
    // The other properties are never left out.
    assert_eq!(bare.properties.receive_maximum, Some(10));
}

/// Every packet a server sends with diagnostics: PUBACK [MQTT-3.4.2-2] [MQTT-3.4.2-3], PUBREC
/// [MQTT-3.5.2-2] [MQTT-3.5.2-3], PUBREL [MQTT-3.6.2-2] [MQTT-3.6.2-3], PUBCOMP [MQTT-3.7.2-2]
/// [MQTT-3.7.2-3], SUBACK [MQTT-3.9.2-1] [MQTT-3.9.2-2], UNSUBACK [MQTT-3.11.2-1]
/// [MQTT-3.11.2-2], DISCONNECT [MQTT-3.14.2-3] [MQTT-3.14.2-4], AUTH [MQTT-3.15.2-2]
/// [MQTT-3.15.2-3].
#[test]
fn every_acknowledgement_leaves_out_reason_string_and_user_properties_to_fit() {
    let (reason_string, user_properties) = diagnostics();
    let ack = AckProperties {
        reason_string: reason_string.clone(),
        user_properties: user_properties.clone(),
    };
    let packets = vec![
        Packet::PubAck(PubAck {
            packet_id: 1,
            reason: ReasonCode::NOT_AUTHORIZED,
            properties: ack.clone(),
        }),
        Packet::PubRec(PubRec {
            packet_id: 2,
            reason: ReasonCode::NOT_AUTHORIZED,
            properties: ack.clone(),
        }),
        Packet::PubRel(PubRel {
            packet_id: 3,
            reason: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            properties: ack.clone(),
        }),
        Packet::PubComp(PubComp {
            packet_id: 4,
            reason: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            properties: ack.clone(),
        }),
        Packet::SubAck(SubAck {
            packet_id: 5,
            reasons: vec![ReasonCode::NOT_AUTHORIZED],
            properties: ack.clone(),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 6,
            reasons: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
            properties: ack.clone(),
        }),
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::PROTOCOL_ERROR,
            properties: DisconnectProperties {
                reason_string: reason_string.clone(),
                user_properties: user_properties.clone(),
                ..Default::default()
            },
        }),
        Packet::Auth(Auth {
            reason: ReasonCode::SUCCESS,
            properties: AuthProperties {
                authentication_method: Some(s("starling-jwt")),
                reason_string: reason_string.clone(),
                user_properties: user_properties.clone(),
                ..Default::default()
            },
        }),
    ];
    for p in packets {
        let mut out = BytesMut::new();
        p.encode_within(V5, 24, &mut out)
            .unwrap_or_else(|e| panic!("{p:?} does not fit 24 bytes: {e}"));
        let got = decode(ToClient, V5, &out).unwrap();
        assert_ne!(got, p, "diagnostics were left out");
        let text = format!("{got:?}");
        assert!(!text.contains("why") && !text.contains("trace"), "{text}");
        assert_eq!(got.packet_type(), p.packet_type());
    }
}

#[test]
fn publish_keeps_its_user_properties_and_is_refused_when_over_the_maximum_per_3_1_2_25() {
    let (_, user_properties) = diagnostics();
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("a/b"),
        packet_id: Some(1),
        properties: PublishProperties {
            user_properties,
            ..Default::default()
        },
        payload: Bytes::from_static(b"payload"),
    });
    let size = p.encoded_len(V5);
    let mut out = BytesMut::from(&b"kept"[..]);
    let err = p.encode_within(V5, size as u32 - 1, &mut out).unwrap_err();
    assert_eq!(
        err,
        EncodeError::ExceedsMaximumPacketSize {
            size,
            max: size - 1
        }
    );
    assert_eq!(&out[..], b"kept", "nothing is written for a refused packet");
    assert_eq!(within(&p, size as u32).unwrap(), p);
}

#[test]
fn a_packet_too_large_without_its_diagnostics_is_refused_and_nothing_is_written() {
    let p = Packet::ConnAck(connack());
    let mut out = BytesMut::new();
    let err = p.encode_within(V5, 4, &mut out).unwrap_err();
    assert!(
        matches!(err, EncodeError::ExceedsMaximumPacketSize { max: 4, .. }),
        "{err:?}"
    );
    assert!(out.is_empty());
}

#[test]
fn a_3_1_1_packet_has_no_properties_to_leave_out() {
    let p = Packet::ConnAck(connack());
    let mut out = BytesMut::new();
    p.encode_within(V3_1_1, 4, &mut out).unwrap();
    assert_eq!(&out[..], &[0x20, 0x02, 0x00, 0x05]);
}
