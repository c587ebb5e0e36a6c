//! Byte vectors written from the MQTT 3.1, 3.1.1 and 5.0 specifications, one or more for every
//! packet type: each decodes to the expected packet and the packet encodes to the same bytes.

mod common;

use bytes::Bytes;
use common::check;
use starling_codec::Direction::{ToClient, ToServer};
use starling_codec::ProtocolVersion::{V3_1, V3_1_1, V5};
use starling_codec::*;

fn s(x: &'static str) -> MqttString {
    MqttString::from(x)
}

#[test]
fn connect_3_1_1_minimal_with_empty_client_id_and_clean_session() {
    let mut c = Connect::new(V3_1_1, "");
    c.keep_alive = 60;
    check(
        ToServer,
        V3_1_1,
        &[
            0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0,
        ],
        Packet::Connect(Box::new(c)),
    );
}

#[test]
fn connect_3_1_uses_mqisdp_level_3() {
    let c = Connect::new(V3_1, "a");
    check(
        ToServer,
        V3_1,
        &[
            0x10, 0x0F, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'a',
        ],
        Packet::Connect(Box::new(c)),
    );
}

#[test]
fn connect_3_1_1_with_will_user_and_password() {
    let mut c = Connect::new(V3_1_1, "c");
    c.clean_start = false;
    c.keep_alive = 10;
    c.will = Some(Will {
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: s("t"),
        payload: Bytes::from_static(b"hi"),
        properties: WillProperties::default(),
    });
    c.username = Some(s("u"));
    c.password = Some(Bytes::from_static(b"p"));
    // flags: user 0x80 | password 0x40 | will retain 0x20 | will qos 2 0x10 | will 0x04
    check(
        ToServer,
        V3_1_1,
        &[
            0x10, 0x1A, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xF4, 0, 10, 0, 1, b'c', 0, 1, b't', 0, 2,
            b'h', b'i', 0, 1, b'u', 0, 1, b'p',
        ],
        Packet::Connect(Box::new(c)),
    );
}

#[test]
fn connect_5_with_properties_user_and_password() {
    let mut c = Connect::new(V5, "c");
    c.properties.session_expiry_interval = Some(10);
    c.username = Some(s("u"));
    c.password = Some(Bytes::from_static(b"p"));
    check(
        ToServer,
        V5,
        &[
            0x10, 0x19, 0, 4, b'M', b'Q', b'T', b'T', 5, 0xC2, 0, 60, 5, 0x11, 0, 0, 0, 10, 0, 1,
            b'c', 0, 1, b'u', 0, 1, b'p',
        ],
        Packet::Connect(Box::new(c)),
    );
}

#[test]
fn connect_5_with_will_properties() {
    let mut c = Connect::new(V5, "c");
    let wp = WillProperties {
        payload_format_indicator: Some(1),
        ..WillProperties::default()
    };
    c.will = Some(Will {
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: s("t"),
        payload: Bytes::from_static(b"hi"),
        properties: wp,
    });
    check(
        ToServer,
        V5,
        &[
            0x10, 0x18, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x2E, 0, 60, 0, 0, 1, b'c', 2, 0x01, 1, 0,
            1, b't', 0, 2, b'h', b'i',
        ],
        Packet::Connect(Box::new(c)),
    );
}

#[test]
fn connack_3_1_1_session_present_accepted() {
    let mut a = ConnAck::new(ReasonCode::SUCCESS);
    a.session_present = true;
    check(ToClient, V3_1_1, &[0x20, 2, 1, 0], Packet::ConnAck(a));
}

#[test]
fn connack_3_1_1_return_codes_map_to_reason_codes() {
    for (rc, reason) in [
        (1, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
        (2, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
        (3, ReasonCode::SERVER_UNAVAILABLE),
        (4, ReasonCode::BAD_USER_NAME_OR_PASSWORD),
        (5, ReasonCode::NOT_AUTHORIZED),
    ] {
        check(
            ToClient,
            V3_1_1,
            &[0x20, 2, 0, rc],
            Packet::ConnAck(ConnAck::new(reason)),
        );
    }
}

#[test]
fn connack_3_1_has_no_session_present_flag() {
    check(
        ToClient,
        V3_1,
        &[0x20, 2, 0, 0],
        Packet::ConnAck(ConnAck::new(ReasonCode::SUCCESS)),
    );
}

#[test]
fn connack_5_with_properties() {
    let mut a = ConnAck::new(ReasonCode::SUCCESS);
    a.properties.receive_maximum = Some(10);
    a.properties.maximum_qos = Some(1);
    check(
        ToClient,
        V5,
        &[0x20, 8, 0, 0, 5, 0x21, 0, 10, 0x24, 1],
        Packet::ConnAck(a),
    );
    check(
        ToClient,
        V5,
        &[0x20, 3, 0, 0x87, 0],
        Packet::ConnAck(ConnAck::new(ReasonCode::NOT_AUTHORIZED)),
    );
}

#[test]
fn publish_3_1_1_qos_0() {
    check(
        ToServer,
        V3_1_1,
        &[0x30, 7, 0, 3, b'a', b'/', b'b', b'h', b'i'],
        Packet::Publish(Publish::new("a/b", &b"hi"[..])),
    );
}

#[test]
fn publish_3_1_1_qos_1_dup_retain() {
    let mut p = Publish::new("a/b", &b"hi"[..]);
    p.qos = QoS::AtLeastOnce;
    p.dup = true;
    p.retain = true;
    p.packet_id = Some(10);
    check(
        ToClient,
        V3_1_1,
        &[0x3B, 9, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'i'],
        Packet::Publish(p),
    );
}

#[test]
fn publish_5_with_payload_format_and_topic_alias() {
    let mut p = Publish::new("t", &b"x"[..]);
    p.qos = QoS::AtLeastOnce;
    p.packet_id = Some(1);
    p.properties.payload_format_indicator = Some(1);
    p.properties.topic_alias = Some(5);
    check(
        ToServer,
        V5,
        &[0x32, 12, 0, 1, b't', 0, 1, 5, 0x01, 1, 0x23, 0, 5, b'x'],
        Packet::Publish(p),
    );
}

#[test]
fn publish_5_to_client_with_subscription_identifiers() {
    let mut p = Publish::new("t", Bytes::new());
    p.properties.subscription_identifiers = vec![1, 200];
    check(
        ToClient,
        V5,
        &[0x30, 9, 0, 1, b't', 5, 0x0B, 1, 0x0B, 0xC8, 0x01],
        Packet::Publish(p),
    );
}

#[test]
fn puback_in_both_versions() {
    check(
        ToServer,
        V3_1_1,
        &[0x40, 2, 0, 1],
        Packet::PubAck(PubAck::new(1)),
    );
    check(
        ToServer,
        V5,
        &[0x40, 2, 0, 1],
        Packet::PubAck(PubAck::new(1)),
    );
    let mut a = PubAck::new(1);
    a.reason = ReasonCode::NO_MATCHING_SUBSCRIBERS;
    check(ToClient, V5, &[0x40, 3, 0, 1, 0x10], Packet::PubAck(a));
    let mut a = PubAck::new(1);
    a.reason = ReasonCode::NOT_AUTHORIZED;
    a.properties.reason_string = Some(s("no"));
    check(
        ToClient,
        V5,
        &[0x40, 9, 0, 1, 0x87, 5, 0x1F, 0, 2, b'n', b'o'],
        Packet::PubAck(a),
    );
}

#[test]
fn pubrec_pubrel_pubcomp_in_both_versions() {
    for v in [V3_1, V3_1_1, V5] {
        check(
            ToServer,
            v,
            &[0x50, 2, 0, 7],
            Packet::PubRec(PubRec::new(7)),
        );
        check(
            ToServer,
            v,
            &[0x62, 2, 0, 7],
            Packet::PubRel(PubRel::new(7)),
        );
        check(
            ToClient,
            v,
            &[0x70, 2, 0, 7],
            Packet::PubComp(PubComp::new(7)),
        );
    }
    let mut r = PubRel::new(7);
    r.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
    check(ToClient, V5, &[0x62, 3, 0, 7, 0x92], Packet::PubRel(r));
    let mut r = PubRec::new(7);
    r.reason = ReasonCode::QUOTA_EXCEEDED;
    check(ToClient, V5, &[0x50, 3, 0, 7, 0x97], Packet::PubRec(r));
    let mut c = PubComp::new(7);
    c.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
    check(ToServer, V5, &[0x70, 3, 0, 7, 0x92], Packet::PubComp(c));
}

#[test]
fn subscribe_3_1_1_one_filter() {
    check(
        ToServer,
        V3_1_1,
        &[0x82, 8, 0, 1, 0, 3, b'a', b'/', b'b', 1],
        Packet::Subscribe(Subscribe::new(1, "a/b", QoS::AtLeastOnce)),
    );
}

#[test]
fn subscribe_5_with_options_and_identifier() {
    let mut sub = Subscribe::new(1, "a/b", QoS::AtLeastOnce);
    sub.subscriptions[0].options.no_local = true;
    sub.subscriptions[0].options.retain_as_published = true;
    sub.subscriptions[0].options.retain_handling = RetainHandling::DoNotSend;
    sub.properties.subscription_identifier = Some(5);
    check(
        ToServer,
        V5,
        &[0x82, 11, 0, 1, 2, 0x0B, 5, 0, 3, b'a', b'/', b'b', 0x2D],
        Packet::Subscribe(sub),
    );
}

#[test]
fn suback_in_each_version() {
    check(
        ToClient,
        V3_1_1,
        &[0x90, 5, 0, 1, 0, 1, 0x80],
        Packet::SubAck(SubAck::new(
            1,
            vec![
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::UNSPECIFIED_ERROR,
            ],
        )),
    );
    check(
        ToClient,
        V3_1,
        &[0x90, 3, 0, 1, 2],
        Packet::SubAck(SubAck::new(1, vec![ReasonCode::GRANTED_QOS_2])),
    );
    check(
        ToClient,
        V5,
        &[0x90, 4, 0, 1, 0, 0xA2],
        Packet::SubAck(SubAck::new(
            1,
            vec![ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED],
        )),
    );
}

#[test]
fn unsubscribe_in_both_versions() {
    check(
        ToServer,
        V3_1_1,
        &[0xA2, 5, 0, 2, 0, 1, b'a'],
        Packet::Unsubscribe(Unsubscribe::new(2, "a")),
    );
    check(
        ToServer,
        V5,
        &[0xA2, 6, 0, 2, 0, 0, 1, b'a'],
        Packet::Unsubscribe(Unsubscribe::new(2, "a")),
    );
}

#[test]
fn unsuback_in_both_versions() {
    check(
        ToClient,
        V3_1_1,
        &[0xB0, 2, 0, 2],
        Packet::UnsubAck(UnsubAck::new(2, vec![])),
    );
    check(
        ToClient,
        V5,
        &[0xB0, 4, 0, 2, 0, 0x11],
        Packet::UnsubAck(UnsubAck::new(2, vec![ReasonCode::NO_SUBSCRIPTION_EXISTED])),
    );
}

#[test]
fn pingreq_and_pingresp_in_every_version() {
    for v in [V3_1, V3_1_1, V5] {
        check(ToServer, v, &[0xC0, 0], Packet::PingReq);
        check(ToClient, v, &[0xD0, 0], Packet::PingResp);
    }
}

#[test]
fn disconnect_in_both_versions() {
    check(
        ToServer,
        V3_1_1,
        &[0xE0, 0],
        Packet::Disconnect(Disconnect::default()),
    );
    check(
        ToServer,
        V5,
        &[0xE0, 0],
        Packet::Disconnect(Disconnect::default()),
    );
    check(
        ToServer,
        V5,
        &[0xE0, 1, 4],
        Packet::Disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL_MESSAGE)),
    );
    let mut d = Disconnect::new(ReasonCode::SESSION_TAKEN_OVER);
    d.properties.reason_string = Some(s("x"));
    check(
        ToClient,
        V5,
        &[0xE0, 6, 0x8E, 4, 0x1F, 0, 1, b'x'],
        Packet::Disconnect(d),
    );
}

#[test]
fn auth_5_success_and_continue() {
    check(ToClient, V5, &[0xF0, 0], Packet::Auth(Auth::default()));
    let a = Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: AuthProperties {
            authentication_method: Some(s("jwt")),
            ..AuthProperties::default()
        },
    };
    check(
        ToClient,
        V5,
        &[0xF0, 8, 0x18, 6, 0x15, 0, 3, b'j', b'w', b't'],
        Packet::Auth(a),
    );
}

#[test]
fn publish_qos_0_is_encoded_without_a_packet_identifier_per_2_2_1_2() {
    let mut p = Publish::new("a", &b"x"[..]);
    p.packet_id = Some(9);
    assert_eq!(
        common::encode(&Packet::Publish(p), V5),
        [0x30, 5, 0, 1, b'a', 0, b'x']
    );
}

#[test]
fn qos_1_publish_without_a_packet_identifier_does_not_encode() {
    let mut p = Publish::new("a", &b"x"[..]);
    p.qos = QoS::AtLeastOnce;
    let mut out = bytes::BytesMut::new();
    assert_eq!(
        Packet::Publish(p).encode(V5, &mut out),
        Err(EncodeError::MissingPacketId(1))
    );
    assert!(out.is_empty(), "nothing is written on error");
}

#[test]
fn strings_the_wire_cannot_carry_do_not_encode() {
    let mut out = bytes::BytesMut::new();
    let p = Packet::Publish(Publish::new(String::from("a\0b"), Bytes::new()));
    assert_eq!(p.encode(V5, &mut out), Err(EncodeError::NullCharacter));
    let p = Packet::Publish(Publish::new("a".repeat(65_536), Bytes::new()));
    assert_eq!(
        p.encode(V3_1_1, &mut out),
        Err(EncodeError::StringTooLong(65_536))
    );
    assert_eq!(p.encoded_len(V3_1_1), 0);
    assert!(out.is_empty());
}

#[test]
fn auth_does_not_encode_before_5_0() {
    let mut out = bytes::BytesMut::new();
    assert!(matches!(
        Packet::Auth(Auth::default()).encode(V3_1_1, &mut out),
        Err(EncodeError::NotInVersion { .. })
    ));
}

#[test]
fn reason_codes_map_to_the_closest_3_1_1_return_codes() {
    for (reason, rc) in [
        (ReasonCode::SUCCESS, 0),
        (ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, 1),
        (ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, 2),
        (ReasonCode::SERVER_UNAVAILABLE, 3),
        (ReasonCode::SERVER_BUSY, 3),
        (ReasonCode::MALFORMED_PACKET, 3),
        (ReasonCode::BAD_USER_NAME_OR_PASSWORD, 4),
        (ReasonCode::BAD_AUTHENTICATION_METHOD, 4),
        (ReasonCode::NOT_AUTHORIZED, 5),
        (ReasonCode::BANNED, 5),
    ] {
        assert_eq!(
            common::encode(&Packet::ConnAck(ConnAck::new(reason)), V3_1_1),
            [0x20, 2, 0, rc],
            "{reason}"
        );
    }
    // SUBACK: granted QoS as is, every failure as 0x80; MQTT 3.1 cannot refuse.
    let sa = SubAck::new(
        1,
        vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED],
    );
    assert_eq!(
        common::encode(&Packet::SubAck(sa.clone()), V3_1_1),
        [0x90, 4, 0, 1, 1, 0x80]
    );
    let mut out = bytes::BytesMut::new();
    assert_eq!(
        Packet::SubAck(sa).encode(V3_1, &mut out),
        Err(EncodeError::SubAckFailureInV3_1)
    );
    // Session Present is never written in 3.1.
    let mut ca = ConnAck::new(ReasonCode::SUCCESS);
    ca.session_present = true;
    assert_eq!(common::encode(&Packet::ConnAck(ca), V3_1), [0x20, 2, 0, 0]);
}

#[test]
fn properties_are_left_out_before_5_0() {
    let mut p = Publish::new("t", &b"x"[..]);
    p.properties.message_expiry_interval = Some(5);
    p.properties.user_properties = vec![(s("k"), s("v"))];
    assert_eq!(
        common::encode(&Packet::Publish(p), V3_1_1),
        [0x30, 4, 0, 1, b't', b'x']
    );
    let mut d = Disconnect::new(ReasonCode::SERVER_SHUTTING_DOWN);
    d.properties.reason_string = Some(s("bye"));
    assert_eq!(common::encode(&Packet::Disconnect(d), V3_1_1), [0xE0, 0]);
}

#[test]
fn mqtt_3_1_packets_other_than_connect_connack_and_suback_are_laid_out_as_in_3_1_1() {
    let mut p = Publish::new("a/b", &b"hi"[..]);
    p.qos = QoS::ExactlyOnce;
    p.packet_id = Some(10);
    check(
        ToServer,
        V3_1,
        &[0x34, 9, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'i'],
        Packet::Publish(p),
    );
    check(
        ToClient,
        V3_1,
        &[0x40, 2, 0, 10],
        Packet::PubAck(PubAck::new(10)),
    );
    check(
        ToServer,
        V3_1,
        &[0x82, 8, 0, 1, 0, 3, b'a', b'/', b'b', 2],
        Packet::Subscribe(Subscribe::new(1, "a/b", QoS::ExactlyOnce)),
    );
    check(
        ToServer,
        V3_1,
        &[0xA2, 5, 0, 2, 0, 1, b'a'],
        Packet::Unsubscribe(Unsubscribe::new(2, "a")),
    );
    check(
        ToClient,
        V3_1,
        &[0xB0, 2, 0, 2],
        Packet::UnsubAck(UnsubAck::new(2, vec![])),
    );
    check(
        ToServer,
        V3_1,
        &[0xE0, 0],
        Packet::Disconnect(Disconnect::default()),
    );
}
