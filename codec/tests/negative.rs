//! One test per malformed-input rule: the bytes are rejected with the reason code the receiver
//! must send and the id of the broken rule (3.1.1 ids when the connection speaks 3.1.1).

mod common;

use bytes::BytesMut;
use common::{decode, reject};
use starling_codec::Direction::{ToClient, ToServer};
use starling_codec::ProtocolVersion::{V3_1, V3_1_1, V5};
use starling_codec::{Decoder, Direction, Packet, ProtocolVersion};

const MALFORMED: u8 = 0x81;
const PROTOCOL: u8 = 0x82;

/// A v5 CONNECT with `flags`, properties `props` and `payload` after the keep alive.
fn connect5(flags: u8, props: &[u8], payload: &[u8]) -> Vec<u8> {
    connect(b"MQTT", 5, flags, Some(props), payload)
}

/// A 3.1.1 CONNECT with `flags` and `payload` after the keep alive.
fn connect4(flags: u8, payload: &[u8]) -> Vec<u8> {
    connect(b"MQTT", 4, flags, None, payload)
}

fn connect(name: &[u8], level: u8, flags: u8, props: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 60]);
    if let Some(p) = props {
        body.push(p.len() as u8);
        body.extend_from_slice(p);
    }
    body.extend_from_slice(payload);
    packet(0x10, &body)
}

/// A packet with a one-byte remaining length.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut v = vec![first, body.len() as u8];
    v.extend_from_slice(body);
    v
}

/// A client id "c" as a payload.
const CID: &[u8] = &[0, 1, b'c'];

// === fixed header and framing ===

#[test]
fn reserved_packet_type_0_is_malformed() {
    reject(ToServer, V5, &[0x00, 0], MALFORMED, "2.1.2");
    reject(ToClient, V3_1_1, &[0x00, 0], MALFORMED, "2.1.2");
}

#[test]
fn auth_before_5_0_is_a_reserved_packet_type() {
    reject(ToServer, V3_1_1, &[0xF0, 0], MALFORMED, "2.1.2");
    reject(ToClient, V3_1, &[0xF0, 0], MALFORMED, "2.1.2");
}

#[test]
fn wrong_fixed_header_flags_are_malformed() {
    reject(ToServer, V5, &[0x41, 2, 0, 1], MALFORMED, "MQTT-2.1.3-1");
    reject(
        ToServer,
        V3_1_1,
        &[0x41, 2, 0, 1],
        MALFORMED,
        "MQTT-2.2.2-1",
    );
    reject(ToServer, V5, &[0xC1, 0], MALFORMED, "MQTT-2.1.3-1");
    reject(ToServer, V5, &[0x60, 2, 0, 1], MALFORMED, "MQTT-3.6.1-1");
    reject(
        ToServer,
        V3_1_1,
        &[0x80, 6, 0, 1, 0, 1, b'a', 0],
        MALFORMED,
        "MQTT-3.8.1-1",
    );
    reject(
        ToServer,
        V5,
        &[0xA0, 5, 0, 1, 0, 1, b'a'],
        MALFORMED,
        "MQTT-3.10.1-1",
    );
    reject(ToServer, V5, &[0xE2, 0], MALFORMED, "MQTT-3.14.1-1");
    reject(ToServer, V5, &[0xF1, 0], MALFORMED, "MQTT-3.15.1-1");
    // A server decoder does not know the version before CONNECT: 5.0 ids.
    reject(ToServer, V3_1_1, &[0x11, 0], MALFORMED, "MQTT-2.1.3-1");
}

#[test]
fn remaining_length_of_five_bytes_is_malformed() {
    reject(
        ToServer,
        V5,
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        MALFORMED,
        "1.5.5",
    );
}

#[test]
fn non_minimal_remaining_length_is_malformed_per_1_5_5_1() {
    reject(ToServer, V5, &[0xC0, 0x80, 0x00], MALFORMED, "MQTT-1.5.5-1");
    reject(
        ToServer,
        V3_1_1,
        &[0x30, 0x85, 0x00],
        MALFORMED,
        "MQTT-1.5.5-1",
    );
}

#[test]
fn packet_over_the_maximum_is_refused_from_the_fixed_header_with_0x95() {
    for (dir, rule) in [(ToServer, "MQTT-3.2.2-15"), (ToClient, "MQTT-3.1.2-24")] {
        let mut d = Decoder::with_version(dir, V5, 100);
        // Fixed header announcing a 200-byte body; not one byte of the body is there yet.
        let mut buf = BytesMut::from(&[0x30, 0xC8, 0x01][..]);
        let e = d.decode(&mut buf).unwrap_err();
        assert_eq!(e.reason_code().0, 0x95);
        assert_eq!(e.rule(), rule);
        assert_eq!(buf.len(), 3, "nothing is consumed");
    }
    // The limit counts the whole packet: 98-byte body + 2 header bytes = 100 is accepted.
    let mut d = Decoder::with_version(ToServer, V5, 100);
    let mut body = vec![0, 1, b't', 0];
    body.resize(98, b'x');
    let mut buf = BytesMut::from(&[0x30, 98][..]);
    buf.extend_from_slice(&body);
    assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Publish(_)))));
    let mut d = Decoder::with_version(ToServer, V5, 99);
    let mut buf = BytesMut::from(&[0x30, 98][..]);
    assert_eq!(d.decode(&mut buf).unwrap_err().reason_code().0, 0x95);
}

#[test]
fn incomplete_packet_needs_more_bytes_and_consumes_nothing() {
    let full = [0x30, 7, 0, 3, b'a', b'/', b'b', b'h', b'i'];
    for n in 0..full.len() {
        let mut d = Decoder::with_version(ToServer, V3_1_1, 1000);
        let mut buf = BytesMut::from(&full[..n]);
        assert_eq!(d.decode(&mut buf), Ok(None), "prefix of {n} bytes");
        assert_eq!(&buf[..], &full[..n]);
    }
    // A remaining length cut after its first continuation byte is "need more", not an error.
    let mut d = Decoder::with_version(ToServer, V3_1_1, 1000);
    assert_eq!(d.decode(&mut BytesMut::from(&[0x30, 0x80][..])), Ok(None));
}

#[test]
fn body_shorter_than_its_fields_is_malformed() {
    reject(ToServer, V5, &[0x40, 1, 0], MALFORMED, "2.1.4");
    // String length 5 with 1 byte left.
    reject(ToServer, V3_1_1, &[0x30, 3, 0, 5, b'a'], MALFORMED, "2.1.4");
}

#[test]
fn bytes_after_the_last_field_are_malformed() {
    reject(ToServer, V5, &[0xC0, 1, 0], MALFORMED, "3.12.1");
    reject(ToClient, V5, &[0xD0, 1, 0], MALFORMED, "3.13.1");
    reject(
        ToServer,
        V3_1_1,
        &[0x40, 3, 0, 1, 0],
        MALFORMED,
        "MQTT-3.4.2-1",
    );
    reject(ToServer, V3_1_1, &[0xE0, 1, 0], MALFORMED, "3.14.1");
    reject(ToClient, V3_1_1, &[0xB0, 3, 0, 1, 0], MALFORMED, "3.11.1");
    reject(ToClient, V3_1_1, &[0x20, 3, 0, 0, 0], MALFORMED, "3.2");
    reject(
        ToServer,
        V3_1_1,
        &connect4(0x02, &[0, 0, 9]),
        MALFORMED,
        "3.1.3",
    );
}

#[test]
fn packets_in_the_wrong_direction_are_protocol_errors() {
    reject(ToServer, V5, &[0x20, 3, 0, 0, 0], PROTOCOL, "2.1.2");
    reject(ToServer, V5, &[0x90, 4, 0, 1, 0, 0], PROTOCOL, "2.1.2");
    reject(ToServer, V5, &[0xB0, 4, 0, 1, 0, 0], PROTOCOL, "2.1.2");
    reject(ToServer, V5, &[0xD0, 0], PROTOCOL, "2.1.2");
    reject(ToClient, V5, &connect5(0x02, &[], CID), PROTOCOL, "2.1.2");
    reject(
        ToClient,
        V5,
        &[0x82, 6, 0, 1, 0, 0, 1, b'a'],
        PROTOCOL,
        "2.1.2",
    );
    reject(ToClient, V5, &[0xC0, 0], PROTOCOL, "2.1.2");
    // Before 5.0 a server never sends DISCONNECT.
    reject(ToClient, V3_1_1, &[0xE0, 0], PROTOCOL, "2.1.2");
}

#[test]
fn first_packet_that_is_not_connect_is_a_protocol_error_per_3_1_0_1() {
    let mut d = Decoder::new(ToServer, 1000);
    let e = d.decode(&mut BytesMut::from(&[0xC0, 0][..])).unwrap_err();
    assert_eq!((e.reason_code().0, e.rule()), (PROTOCOL, "MQTT-3.1.0-1"));
}

#[test]
fn second_connect_is_a_protocol_error_per_3_1_0_2() {
    let mut d = Decoder::new(ToServer, 1000);
    let c = connect5(0x02, &[], CID);
    let mut buf = BytesMut::from(&c[..]);
    assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
    assert_eq!(d.version(), Some(V5));
    let mut buf = BytesMut::from(&c[..]);
    let e = d.decode(&mut buf).unwrap_err();
    assert_eq!((e.reason_code().0, e.rule()), (PROTOCOL, "MQTT-3.1.0-2"));
}

#[test]
fn client_decoder_without_a_version_refuses_to_guess() {
    let mut d = Decoder::new(ToClient, 1000);
    let e = d
        .decode(&mut BytesMut::from(&[0x20, 2, 0, 0][..]))
        .unwrap_err();
    assert_eq!(e.reason_code().0, PROTOCOL);
}

// === strings ===

#[test]
fn null_character_in_a_string_is_malformed_per_1_5_4_2() {
    reject(
        ToServer,
        V5,
        &[0x30, 5, 0, 2, b'a', 0, 0],
        MALFORMED,
        "MQTT-1.5.4-2",
    );
    reject(
        ToServer,
        V3_1_1,
        &[0x30, 4, 0, 2, b'a', 0],
        MALFORMED,
        "MQTT-1.5.3-2",
    );
}

#[test]
fn surrogate_or_ill_formed_utf8_is_malformed_per_1_5_4_1() {
    // U+D800 encoded in a topic name.
    reject(
        ToServer,
        V5,
        &[0x30, 6, 0, 3, 0xED, 0xA0, 0x80, 0],
        MALFORMED,
        "MQTT-1.5.4-1",
    );
    reject(
        ToServer,
        V3_1_1,
        &[0x30, 3, 0, 1, 0xFF],
        MALFORMED,
        "MQTT-1.5.3-1",
    );
    // Overlong encoding in a client identifier.
    reject(
        ToServer,
        V5,
        &connect5(0x02, &[], &[0, 2, 0xC0, 0xAF]),
        MALFORMED,
        "MQTT-1.5.4-1",
    );
    // In a user name.
    reject(
        ToServer,
        V5,
        &connect5(0x82, &[], &[0, 1, b'c', 0, 1, 0xC3]),
        MALFORMED,
        "MQTT-1.5.4-1",
    );
    // In a user property value.
    reject(
        ToClient,
        V5,
        &[0x40, 11, 0, 1, 0x80, 7, 0x26, 0, 1, b'k', 0, 1, 0xFE],
        MALFORMED,
        "MQTT-1.5.4-1",
    );
}

// === CONNECT ===

#[test]
fn unknown_protocol_name_gets_0x84_per_3_1_2_1() {
    let c = connect(b"MQTX", 4, 0x02, None, CID);
    reject(ToServer, V5, &c, 0x84, "MQTT-3.1.2-1");
}

#[test]
fn unknown_protocol_level_gets_0x84_per_3_1_2_2() {
    reject(
        ToServer,
        V5,
        &connect(b"MQTT", 6, 0x02, None, CID),
        0x84,
        "MQTT-3.1.2-2",
    );
    reject(
        ToServer,
        V5,
        &connect(b"MQTT", 3, 0x02, None, CID),
        0x84,
        "MQTT-3.1.2-2",
    );
    reject(
        ToServer,
        V5,
        &connect(b"MQIsdp", 4, 0x02, None, CID),
        0x84,
        "MQTT-3.1.2-2",
    );
}

#[test]
fn connect_reserved_flag_is_malformed_per_3_1_2_3() {
    reject(
        ToServer,
        V5,
        &connect5(0x03, &[], CID),
        MALFORMED,
        "MQTT-3.1.2-3",
    );
    reject(
        ToServer,
        V3_1_1,
        &connect4(0x03, CID),
        MALFORMED,
        "MQTT-3.1.2-3",
    );
}

#[test]
fn will_qos_3_is_malformed() {
    // will flag, will qos 3
    reject(
        ToServer,
        V5,
        &connect5(0x1E, &[], CID),
        MALFORMED,
        "MQTT-3.1.2-12",
    );
    reject(
        ToServer,
        V3_1_1,
        &connect4(0x1E, CID),
        MALFORMED,
        "MQTT-3.1.2-14",
    );
}

#[test]
fn will_qos_without_will_flag_is_malformed() {
    reject(
        ToServer,
        V5,
        &connect5(0x0A, &[], CID),
        MALFORMED,
        "MQTT-3.1.2-11",
    );
    reject(
        ToServer,
        V3_1_1,
        &connect4(0x0A, CID),
        MALFORMED,
        "MQTT-3.1.2-13",
    );
}

#[test]
fn will_retain_without_will_flag_is_malformed() {
    reject(
        ToServer,
        V5,
        &connect5(0x22, &[], CID),
        MALFORMED,
        "MQTT-3.1.2-13",
    );
    reject(
        ToServer,
        V3_1_1,
        &connect4(0x22, CID),
        MALFORMED,
        "MQTT-3.1.2-15",
    );
}

#[test]
fn password_without_user_name_is_malformed_before_5_0_per_3_1_2_22() {
    let payload = [0, 1, b'c', 0, 1, b'p'];
    reject(
        ToServer,
        V3_1_1,
        &connect4(0x42, &payload),
        MALFORMED,
        "MQTT-3.1.2-22",
    );
    // 5.0 allows a password without a user name.
    assert!(decode(ToServer, V5, &connect5(0x42, &[], &payload)).is_ok());
}

#[test]
fn empty_client_id_without_clean_session_gets_0x85_in_3_1_1_per_3_1_3_8() {
    reject(
        ToServer,
        V3_1_1,
        &connect4(0x00, &[0, 0]),
        0x85,
        "MQTT-3.1.3-8",
    );
    assert!(decode(ToServer, V3_1_1, &connect4(0x02, &[0, 0])).is_ok());
    // 5.0 lets the server assign one [MQTT-3.1.3-6].
    assert!(decode(ToServer, V5, &connect5(0x00, &[], &[0, 0])).is_ok());
}

#[test]
fn empty_client_id_gets_0x85_in_3_1() {
    let c = connect(b"MQIsdp", 3, 0x02, None, &[0, 0]);
    reject(ToServer, V3_1, &c, 0x85, "3.1/3.1");
}

#[test]
fn will_topic_with_wildcard_is_malformed() {
    // will flag; will props (5.0) empty; topic "a/#"; payload empty
    let payload5 = [0, 1, b'c', 0, 0, 3, b'a', b'/', b'#', 0, 0];
    reject(
        ToServer,
        V5,
        &connect5(0x06, &[], &payload5),
        MALFORMED,
        "MQTT-3.1.3-11",
    );
    let payload4 = [0, 1, b'c', 0, 3, b'a', b'/', b'+', 0, 0];
    reject(
        ToServer,
        V3_1_1,
        &connect4(0x06, &payload4),
        MALFORMED,
        "MQTT-3.1.3-10",
    );
    let empty4 = [0, 1, b'c', 0, 0, 0, 0];
    reject(
        ToServer,
        V3_1_1,
        &connect4(0x06, &empty4),
        MALFORMED,
        "MQTT-3.1.3-10",
    );
}

#[test]
fn connect_property_zero_values_are_protocol_errors() {
    reject(
        ToServer,
        V5,
        &connect5(0x02, &[0x21, 0, 0], CID),
        PROTOCOL,
        "3.1.2.11.3",
    );
    reject(
        ToServer,
        V5,
        &connect5(0x02, &[0x27, 0, 0, 0, 0], CID),
        PROTOCOL,
        "3.1.2.11.4",
    );
}

#[test]
fn connect_request_flags_other_than_0_or_1_are_protocol_errors() {
    reject(
        ToServer,
        V5,
        &connect5(0x02, &[0x19, 2], CID),
        PROTOCOL,
        "3.1.2.11.6",
    );
    reject(
        ToServer,
        V5,
        &connect5(0x02, &[0x17, 2], CID),
        PROTOCOL,
        "3.1.2.11.7",
    );
}

#[test]
fn authentication_data_without_method_is_a_protocol_error() {
    let props = [0x16, 0, 1, b'x'];
    reject(
        ToServer,
        V5,
        &connect5(0x02, &props, CID),
        PROTOCOL,
        "3.1.2.11.10",
    );
}

#[test]
fn property_that_may_appear_once_appearing_twice_is_a_protocol_error() {
    let props = [0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2];
    reject(
        ToServer,
        V5,
        &connect5(0x02, &props, CID),
        PROTOCOL,
        "2.2.2.2",
    );
    // Topic Alias twice in PUBLISH.
    let p = [0x30, 10, 0, 1, b't', 6, 0x23, 0, 1, 0x23, 0, 2];
    reject(ToServer, V5, &p, PROTOCOL, "2.2.2.2");
    // Subscription Identifier twice in SUBSCRIBE.
    let s = [0x82, 11, 0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0];
    reject(ToServer, V5, &s, PROTOCOL, "2.2.2.2");
    // User Property repeats freely.
    let ok = [
        0x40, 16, 0, 1, 0, 12, 0x26, 0, 1, b'k', 0, 0, 0x26, 0, 1, b'k', 0, 0,
    ];
    assert!(decode(ToClient, V5, &ok).is_ok());
}

#[test]
fn property_not_allowed_on_the_packet_is_malformed() {
    // Topic Alias in CONNECT.
    reject(
        ToServer,
        V5,
        &connect5(0x02, &[0x23, 0, 1], CID),
        MALFORMED,
        "2.2.2.2",
    );
    // Session Expiry Interval in PUBACK.
    let p = [0x40, 9, 0, 1, 0, 5, 0x11, 0, 0, 0, 1];
    reject(ToServer, V5, &p, MALFORMED, "2.2.2.2");
    // Will Delay Interval in PUBLISH.
    let p = [0x30, 9, 0, 1, b't', 5, 0x18, 0, 0, 0, 1];
    reject(ToServer, V5, &p, MALFORMED, "2.2.2.2");
    // Session Expiry Interval in AUTH.
    reject(
        ToServer,
        V5,
        &[0xF0, 7, 0x18, 5, 0x11, 0, 0, 0, 1],
        MALFORMED,
        "2.2.2.2",
    );
    // Will property in the CONNECT properties.
    reject(
        ToServer,
        V5,
        &connect5(0x02, &[0x18, 0, 0, 0, 1], CID),
        MALFORMED,
        "2.2.2.2",
    );
}

#[test]
fn unknown_property_identifier_is_malformed() {
    reject(
        ToServer,
        V5,
        &connect5(0x02, &[0x7F, 0], CID),
        MALFORMED,
        "2.2.2.2",
    );
    // A two-byte identifier (0x80 0x01 = 128).
    reject(
        ToServer,
        V5,
        &connect5(0x02, &[0x80, 0x01, 0], CID),
        MALFORMED,
        "2.2.2.2",
    );
}

#[test]
fn property_length_beyond_the_packet_is_malformed() {
    let p = [0x40, 4, 0, 1, 0, 9];
    reject(ToClient, V5, &p, MALFORMED, "2.2.2.1");
}

#[test]
fn will_property_values_are_checked() {
    // Payload format indicator 2 in the will properties.
    let payload = [0, 1, b'c', 2, 0x01, 2, 0, 1, b't', 0, 0];
    reject(
        ToServer,
        V5,
        &connect5(0x06, &[], &payload),
        PROTOCOL,
        "3.1.3.2.3",
    );
    // Response topic with a wildcard.
    let payload = [0, 1, b'c', 4, 0x08, 0, 1, b'#', 0, 1, b't', 0, 0];
    reject(
        ToServer,
        V5,
        &connect5(0x06, &[], &payload),
        PROTOCOL,
        "3.1.3.2.6",
    );
}

// === CONNACK ===

#[test]
fn connack_reserved_flags_are_malformed_per_3_2_2_1() {
    reject(ToClient, V5, &[0x20, 3, 2, 0, 0], MALFORMED, "MQTT-3.2.2-1");
    reject(
        ToClient,
        V3_1_1,
        &[0x20, 2, 0x80, 0],
        MALFORMED,
        "MQTT-3.2.2-1",
    );
}

#[test]
fn session_present_on_a_refusal_is_a_protocol_error() {
    reject(
        ToClient,
        V5,
        &[0x20, 3, 1, 0x87, 0],
        PROTOCOL,
        "MQTT-3.2.2-6",
    );
    reject(ToClient, V3_1_1, &[0x20, 2, 1, 5], PROTOCOL, "MQTT-3.2.2-4");
}

#[test]
fn connack_reserved_return_code_is_a_protocol_error() {
    reject(ToClient, V3_1_1, &[0x20, 2, 0, 6], PROTOCOL, "3.2.2.3");
    reject(
        ToClient,
        V5,
        &[0x20, 3, 0, 0x10, 0],
        PROTOCOL,
        "MQTT-3.2.2-8",
    );
}

#[test]
fn connack_property_values_are_checked() {
    for (props, rule) in [
        (&[0x21, 0, 0][..], "3.2.2.3.3"),
        (&[0x24, 2], "3.2.2.3.4"),
        (&[0x25, 2], "3.2.2.3.5"),
        (&[0x27, 0, 0, 0, 0], "3.2.2.3.6"),
        (&[0x28, 2], "3.2.2.3.11"),
        (&[0x29, 2], "3.2.2.3.12"),
        (&[0x2A, 2], "3.2.2.3.13"),
    ] {
        let mut body = vec![0, 0, props.len() as u8];
        body.extend_from_slice(props);
        reject(ToClient, V5, &packet(0x20, &body), PROTOCOL, rule);
    }
}

// === PUBLISH ===

#[test]
fn publish_qos_3_is_malformed_per_3_3_1_4() {
    reject(
        ToServer,
        V5,
        &[0x36, 6, 0, 1, b't', 0, 1, 0],
        MALFORMED,
        "MQTT-3.3.1-4",
    );
    reject(
        ToServer,
        V3_1_1,
        &[0x36, 5, 0, 1, b't', 0, 1],
        MALFORMED,
        "MQTT-3.3.1-4",
    );
}

#[test]
fn dup_on_qos_0_is_malformed_per_3_3_1_2() {
    reject(
        ToServer,
        V3_1_1,
        &[0x38, 3, 0, 1, b't'],
        MALFORMED,
        "MQTT-3.3.1-2",
    );
}

#[test]
fn packet_identifier_0_is_a_protocol_error() {
    reject(
        ToServer,
        V5,
        &[0x32, 6, 0, 1, b't', 0, 0, 0],
        PROTOCOL,
        "MQTT-2.2.1-3",
    );
    reject(
        ToServer,
        V3_1_1,
        &[0x32, 5, 0, 1, b't', 0, 0],
        PROTOCOL,
        "MQTT-2.3.1-1",
    );
    reject(
        ToServer,
        V3_1_1,
        &[0x82, 6, 0, 0, 0, 1, b'a', 0],
        PROTOCOL,
        "MQTT-2.3.1-1",
    );
    reject(
        ToServer,
        V5,
        &[0xA2, 6, 0, 0, 0, 0, 1, b'a'],
        PROTOCOL,
        "MQTT-2.2.1-3",
    );
}

#[test]
fn publish_topic_with_wildcard_is_malformed_per_3_3_2_2() {
    reject(
        ToServer,
        V5,
        &[0x30, 6, 0, 3, b'a', b'/', b'+', 0],
        MALFORMED,
        "MQTT-3.3.2-2",
    );
    reject(
        ToClient,
        V3_1_1,
        &[0x30, 3, 0, 1, b'#'],
        MALFORMED,
        "MQTT-3.3.2-2",
    );
}

#[test]
fn empty_publish_topic_is_rejected() {
    reject(
        ToServer,
        V3_1_1,
        &[0x30, 2, 0, 0],
        MALFORMED,
        "MQTT-4.7.3-1",
    );
    reject(ToServer, V5, &[0x30, 3, 0, 0, 0], PROTOCOL, "3.3.2.3.4");
    // With a Topic Alias it is fine.
    assert!(decode(ToServer, V5, &[0x30, 6, 0, 0, 3, 0x23, 0, 1]).is_ok());
}

#[test]
fn topic_alias_0_gets_0x94_per_3_3_2_8() {
    reject(
        ToServer,
        V5,
        &[0x30, 7, 0, 1, b't', 3, 0x23, 0, 0],
        0x94,
        "MQTT-3.3.2-8",
    );
}

#[test]
fn subscription_identifier_from_a_client_is_a_protocol_error_per_3_3_4_6() {
    let p = [0x30, 6, 0, 1, b't', 2, 0x0B, 1];
    reject(ToServer, V5, &p, PROTOCOL, "MQTT-3.3.4-6");
    assert!(decode(ToClient, V5, &p).is_ok());
}

#[test]
fn subscription_identifier_0_is_a_protocol_error() {
    reject(
        ToClient,
        V5,
        &[0x30, 6, 0, 1, b't', 2, 0x0B, 0],
        PROTOCOL,
        "3.3.2.3.8",
    );
    reject(
        ToServer,
        V5,
        &[0x82, 9, 0, 1, 2, 0x0B, 0, 0, 1, b'a', 0],
        PROTOCOL,
        "3.8.2.1.2",
    );
}

#[test]
fn response_topic_with_wildcard_is_a_protocol_error_per_3_3_2_14() {
    let p = [0x30, 9, 0, 1, b't', 5, 0x08, 0, 2, b'a', b'+'];
    reject(ToServer, V5, &p, PROTOCOL, "MQTT-3.3.2-14");
}

#[test]
fn payload_format_indicator_other_than_0_or_1_is_a_protocol_error() {
    reject(
        ToServer,
        V5,
        &[0x30, 6, 0, 1, b't', 2, 0x01, 2],
        PROTOCOL,
        "3.3.2.3.2",
    );
}

// === acknowledgements ===

#[test]
fn reason_code_not_allowed_on_the_packet_is_a_protocol_error() {
    reject(
        ToServer,
        V5,
        &[0x40, 3, 0, 1, 0x92],
        PROTOCOL,
        "MQTT-3.4.2-1",
    );
    reject(
        ToServer,
        V5,
        &[0x50, 3, 0, 1, 0x92],
        PROTOCOL,
        "MQTT-3.5.2-1",
    );
    reject(
        ToServer,
        V5,
        &[0x62, 3, 0, 1, 0x10],
        PROTOCOL,
        "MQTT-3.6.2-1",
    );
    reject(
        ToServer,
        V5,
        &[0x70, 3, 0, 1, 0x80],
        PROTOCOL,
        "MQTT-3.7.2-1",
    );
    reject(
        ToClient,
        V5,
        &[0x90, 4, 0, 1, 0, 0x10],
        PROTOCOL,
        "MQTT-3.9.3-2",
    );
    reject(
        ToClient,
        V5,
        &[0xB0, 4, 0, 1, 0, 0x02],
        PROTOCOL,
        "MQTT-3.11.3-2",
    );
    reject(ToServer, V5, &[0xE0, 1, 0x01], PROTOCOL, "MQTT-3.14.2-1");
    reject(ToServer, V5, &[0xF0, 2, 0x01, 0], PROTOCOL, "MQTT-3.15.2-1");
}

#[test]
fn reason_codes_only_the_other_side_sends_are_protocol_errors() {
    // A client never sends Session taken over, nor a server Disconnect with Will Message.
    reject(ToServer, V5, &[0xE0, 1, 0x8E], PROTOCOL, "MQTT-3.14.2-1");
    reject(ToClient, V5, &[0xE0, 1, 0x04], PROTOCOL, "MQTT-3.14.2-1");
    // A client's AUTH continues or re-authenticates; success comes from the server.
    reject(ToServer, V5, &[0xF0, 0], PROTOCOL, "MQTT-3.15.2-1");
    reject(ToServer, V5, &[0xF0, 2, 0x00, 0], PROTOCOL, "MQTT-3.15.2-1");
    reject(ToClient, V5, &[0xF0, 2, 0x19, 0], PROTOCOL, "MQTT-3.15.2-1");
    assert!(decode(ToServer, V5, &[0xF0, 2, 0x19, 0]).is_ok());
}

#[test]
fn suback_return_codes_are_checked_per_version() {
    reject(
        ToClient,
        V3_1_1,
        &[0x90, 3, 0, 1, 3],
        PROTOCOL,
        "MQTT-3.9.3-2",
    );
    // 3.1 has no failure return code.
    reject(
        ToClient,
        V3_1,
        &[0x90, 3, 0, 1, 0x80],
        PROTOCOL,
        "MQTT-3.9.3-2",
    );
    // At least one reason code.
    reject(ToClient, V3_1_1, &[0x90, 2, 0, 1], PROTOCOL, "MQTT-3.8.4-5");
    reject(ToClient, V5, &[0x90, 3, 0, 1, 0], PROTOCOL, "MQTT-3.8.4-6");
}

#[test]
fn unsuback_5_needs_a_reason_code() {
    reject(ToClient, V5, &[0xB0, 3, 0, 1, 0], PROTOCOL, "3.11.3");
}

// === SUBSCRIBE and UNSUBSCRIBE ===

#[test]
fn subscribe_without_a_filter_is_a_protocol_error() {
    reject(ToServer, V5, &[0x82, 3, 0, 1, 0], PROTOCOL, "MQTT-3.8.3-2");
    reject(ToServer, V3_1_1, &[0x82, 2, 0, 1], PROTOCOL, "MQTT-3.8.3-3");
}

#[test]
fn unsubscribe_without_a_filter_is_a_protocol_error_per_3_10_3_2() {
    reject(ToServer, V5, &[0xA2, 3, 0, 1, 0], PROTOCOL, "MQTT-3.10.3-2");
    reject(
        ToServer,
        V3_1_1,
        &[0xA2, 2, 0, 1],
        PROTOCOL,
        "MQTT-3.10.3-2",
    );
}

#[test]
fn subscription_options_reserved_bits_are_malformed() {
    reject(
        ToServer,
        V5,
        &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x40],
        MALFORMED,
        "MQTT-3.8.3-5",
    );
    reject(
        ToServer,
        V3_1_1,
        &[0x82, 6, 0, 1, 0, 1, b'a', 0x04],
        MALFORMED,
        "MQTT-3-8.3-4",
    );
    reject(
        ToServer,
        V3_1_1,
        &[0x82, 6, 0, 1, 0, 1, b'a', 0x03],
        MALFORMED,
        "MQTT-3-8.3-4",
    );
}

#[test]
fn subscription_qos_3_or_retain_handling_3_is_a_protocol_error() {
    reject(
        ToServer,
        V5,
        &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x03],
        PROTOCOL,
        "3.8.3.1",
    );
    reject(
        ToServer,
        V5,
        &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30],
        PROTOCOL,
        "3.8.3.1",
    );
}

#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error_per_3_8_3_4() {
    let mut body = vec![0, 1, 0, 0, 11];
    body.extend_from_slice(b"$share/g/a/");
    body.truncate(body.len() - 1);
    body[4] = 10;
    body.push(0x04);
    reject(ToServer, V5, &packet(0x82, &body), PROTOCOL, "MQTT-3.8.3-4");
}

/// A SUBSCRIBE (3.1.1 or 5.0) for one filter.
fn subscribe(v: ProtocolVersion, filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    if v.is_v5() {
        body.push(0);
    }
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(0);
    packet(0x82, &body)
}

#[test]
fn topic_filter_syntax_is_checked() {
    for (filter, v5_rule, v3_rule) in [
        ("a/#/b", "MQTT-4.7.1-1", "MQTT-4.7.1-2"),
        ("a#", "MQTT-4.7.1-1", "MQTT-4.7.1-2"),
        ("a/b+", "MQTT-4.7.1-2", "MQTT-4.7.1-3"),
        ("", "MQTT-4.7.3-1", "MQTT-4.7.3-1"),
        ("$share//a", "MQTT-4.8.2-1", "MQTT-4.8.2-1"),
        ("$share/g+/a", "MQTT-4.8.2-2", "MQTT-4.8.2-2"),
        ("$share/g", "MQTT-4.8.2-2", "MQTT-4.8.2-2"),
    ] {
        reject(ToServer, V5, &subscribe(V5, filter), MALFORMED, v5_rule);
        reject(
            ToServer,
            V3_1_1,
            &subscribe(V3_1_1, filter),
            MALFORMED,
            v3_rule,
        );
    }
    // UNSUBSCRIBE applies the same syntax.
    reject(
        ToServer,
        V5,
        &[0xA2, 7, 0, 1, 0, 0, 2, b'#', b'a'],
        MALFORMED,
        "MQTT-4.7.1-1",
    );
}

// === DISCONNECT ===

#[test]
fn session_expiry_in_a_server_disconnect_is_a_protocol_error_per_3_14_2_2() {
    let p = [0xE0, 7, 0x8B, 5, 0x11, 0, 0, 0, 1];
    reject(ToClient, V5, &p, PROTOCOL, "MQTT-3.14.2-2");
    let p = [0xE0, 7, 0x00, 5, 0x11, 0, 0, 0, 1];
    assert!(decode(ToServer, V5, &p).is_ok());
}

#[test]
fn every_error_displays_a_lowercase_message_with_its_rule() {
    let e = decode(ToServer, V5, &[0x36, 6, 0, 1, b't', 0, 1, 0]).unwrap_err();
    assert_eq!(e.to_string(), "publish qos is 3 [MQTT-3.3.1-4]");
    let _ = Direction::ToServer;
}
