//! Proptest strategies for every packet, valid for a given protocol version and direction:
//! whatever they generate encodes, and decodes back to itself. Used by the round-trip tests, the
//! differential test and to seed the fuzz corpus. Behind the `proptest` feature.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::reason::{
    AUTH_CODES_FROM_CLIENT, AUTH_CODES_FROM_SERVER, CONNACK_CODES, DISCONNECT_CODES_FROM_CLIENT,
    DISCONNECT_CODES_FROM_SERVER, PUBACK_CODES, PUBREL_CODES, SUBACK_CODES, UNSUBACK_CODES,
};
use crate::*;

type UserProperties = Vec<(MqttString, MqttString)>;

/// A UTF-8 string without U+0000, sometimes beyond ASCII.
pub fn string() -> impl Strategy<Value = MqttString> {
    "[a-zA-Z0-9 _/.\u{e9}\u{4e2d}\u{1F600}-]{0,12}".prop_map(MqttString::from)
}

/// A valid topic name: not empty, no wildcards.
pub fn topic_name() -> impl Strategy<Value = MqttString> {
    prop_oneof![
        "[a-z0-9]{1,6}(/[a-z0-9]{0,6}){0,3}",
        "\\$SYS/[a-z]{1,6}",
        "/[a-z]{0,3}",
    ]
    .prop_map(MqttString::from)
}

/// A valid topic filter: levels, `+` levels, a trailing `#`, sometimes shared.
pub fn topic_filter() -> impl Strategy<Value = MqttString> {
    let level = prop_oneof![3 => "[a-z0-9]{0,5}", 1 => Just("+".to_owned())];
    let plain = (vec(level, 1..4), any::<bool>()).prop_map(|(levels, hash)| {
        let mut f = levels.join("/");
        if hash {
            f.push_str("/#");
        }
        f
    });
    let plain = prop_oneof![
        8 => plain.prop_filter("not empty", |f| !f.is_empty()),
        1 => Just("#".to_owned()),
    ];
    (plain, option::weighted(0.2, "[a-z0-9]{1,4}")).prop_map(|(f, group)| match group {
        Some(g) => MqttString::from(format!("$share/{g}/{f}")),
        None => MqttString::from(f),
    })
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn user_properties() -> impl Strategy<Value = UserProperties> {
    vec((string(), string()), 0..3)
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    option::of(0u8..=1)
}

fn code(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(codes).prop_map(ReasonCode)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn subscription_id() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..200, 1u32..=MAX_REMAINING_LENGTH]
}

/// Keeps 5.0-only values only when `version` is 5.0.
fn if_v5<T: Default>(version: ProtocolVersion, v: T) -> T {
    if version.is_v5() { v } else { T::default() }
}

/// CONNECT properties (5.0).
pub fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(1u16..),
        option::of(1u32..),
        option::of(any::<u16>()),
        flag(),
        flag(),
        user_properties(),
        option::of((string(), option::of(binary()))),
    )
        .prop_map(|(sei, rm, mps, tam, rri, rpi, up, auth)| {
            let (authentication_method, authentication_data) = match auth {
                Some((m, d)) => (Some(m), d),
                None => (None, None),
            };
            ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties: up,
                authentication_method,
                authentication_data,
            }
        })
}

/// Will properties (5.0).
pub fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        option::of(any::<u32>()),
        flag(),
        option::of(any::<u32>()),
        option::of(string()),
        option::of(topic_name()),
        option::of(binary()),
        user_properties(),
    )
        .prop_map(|(wdi, pfi, mei, ct, rt, cd, up)| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        })
}

/// A CONNECT valid in `version`.
pub fn connect(version: ProtocolVersion) -> impl Strategy<Value = Connect> {
    let will = (
        qos(),
        any::<bool>(),
        topic_name(),
        binary(),
        will_properties(),
    )
        .prop_map(move |(qos, retain, topic, payload, properties)| Will {
            qos,
            retain,
            topic,
            payload,
            properties: if_v5(version, properties),
        });
    (
        any::<bool>(),
        any::<u16>(),
        string(),
        option::of(will),
        option::of(string()),
        option::of(binary()),
        connect_properties(),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                let mut c = Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties: if_v5(version, properties),
                };
                match version {
                    // 3.1 client identifiers are 1 to 23 characters.
                    ProtocolVersion::V3_1 if c.client_id.is_empty() => {
                        c.client_id = MqttString::from("c");
                    }
                    // [MQTT-3.1.3-8] an empty client id needs a clean session.
                    ProtocolVersion::V3_1_1 if c.client_id.is_empty() => c.clean_start = true,
                    _ => {}
                }
                // [MQTT-3.1.2-22] before 5.0 a password needs a user name.
                if !version.is_v5() && c.username.is_none() {
                    c.password = None;
                }
                c
            },
        )
}

/// CONNACK properties (5.0).
pub fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            option::of(any::<u32>()),
            option::of(1u16..),
            flag(),
            flag(),
            option::of(1u32..),
            option::of(string()),
            option::of(any::<u16>()),
            option::of(string()),
        ),
        (
            user_properties(),
            flag(),
            flag(),
            flag(),
            option::of(any::<u16>()),
            option::of(string()),
            option::of(string()),
            option::of((string(), option::of(binary()))),
        ),
    )
        .prop_map(
            |((sei, rm, mq, ra, mps, aci, tam, rs), (up, wsa, sia, ssa, ska, ri, sr, auth))| {
                let (authentication_method, authentication_data) = match auth {
                    Some((m, d)) => (Some(m), d),
                    None => (None, None),
                };
                ConnAckProperties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: up,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method,
                    authentication_data,
                }
            },
        )
}

/// A CONNACK valid in `version`.
pub fn connack(version: ProtocolVersion) -> impl Strategy<Value = ConnAck> {
    let reason = match version {
        ProtocolVersion::V5 => code(CONNACK_CODES).boxed(),
        _ => (0u8..=5)
            .prop_map(|c| ReasonCode::from_v3_connack(c).unwrap_or_default())
            .boxed(),
    };
    (any::<bool>(), reason, connack_properties()).prop_map(move |(sp, reason, props)| ConnAck {
        // No session on a refusal [MQTT-3.2.2-4]; no flag at all in 3.1.
        session_present: sp && !reason.is_error() && version != ProtocolVersion::V3_1,
        reason,
        properties: if_v5(version, props),
    })
}

/// PUBLISH properties (5.0) for a publication travelling `dir`.
pub fn publish_properties(dir: Direction) -> impl Strategy<Value = PublishProperties> {
    (
        flag(),
        option::of(any::<u32>()),
        option::of(1u16..),
        option::of(topic_name()),
        option::of(binary()),
        user_properties(),
        vec(subscription_id(), 0..3),
        option::of(string()),
    )
        .prop_map(
            move |(pfi, mei, ta, rt, cd, up, sids, ct)| PublishProperties {
                payload_format_indicator: pfi,
                message_expiry_interval: mei,
                topic_alias: ta,
                response_topic: rt,
                correlation_data: cd,
                user_properties: up,
                // [MQTT-3.3.4-6] only a server sends Subscription Identifiers.
                subscription_identifiers: if dir == Direction::ToClient {
                    sids
                } else {
                    Vec::new()
                },
                content_type: ct,
            },
        )
}

/// A PUBLISH valid in `version` travelling `dir`.
pub fn publish(version: ProtocolVersion, dir: Direction) -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        1u16..,
        publish_properties(dir),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(
            move |(qos, dup, retain, topic, alias_only, id, properties, payload)| {
                let properties = if_v5(version, properties);
                let topic = if alias_only && properties.topic_alias.is_some() {
                    MqttString::new()
                } else {
                    topic
                };
                Publish {
                    dup: dup && qos != QoS::AtMostOnce,
                    qos,
                    retain,
                    topic,
                    packet_id: (qos != QoS::AtMostOnce).then_some(id),
                    properties,
                    payload: Bytes::from(payload),
                }
            },
        )
}

/// Acknowledgement properties (5.0).
pub fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (option::of(string()), user_properties()).prop_map(|(reason_string, user_properties)| {
        AckProperties {
            reason_string,
            user_properties,
        }
    })
}

fn ack_parts(
    version: ProtocolVersion,
    codes: &'static [u8],
) -> impl Strategy<Value = (u16, ReasonCode, AckProperties)> {
    (any::<u16>(), code(codes), ack_properties())
        .prop_map(move |(id, reason, props)| (id, if_v5(version, reason), if_v5(version, props)))
}

/// A SUBSCRIBE valid in `version`.
pub fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Subscribe> {
    let options = (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(|(qos, nl, rap, rh)| {
        SubscriptionOptions {
            qos,
            no_local: nl,
            retain_as_published: rap,
            retain_handling: match rh {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendAtSubscribeIfNew,
                _ => RetainHandling::DoNotSend,
            },
        }
    });
    let sub = (topic_filter(), options).prop_map(move |(filter, options)| {
        let options = if version.is_v5() {
            SubscriptionOptions {
                // [MQTT-3.8.3-4] no No Local on a shared subscription.
                no_local: options.no_local && !matches!(topic::parse_shared(&filter), Ok(Some(_))),
                ..options
            }
        } else {
            SubscriptionOptions::qos(options.qos)
        };
        Subscription { filter, options }
    });
    (
        1u16..,
        vec(sub, 1..4),
        option::of(subscription_id()),
        user_properties(),
    )
        .prop_map(move |(packet_id, subscriptions, sid, up)| Subscribe {
            packet_id,
            subscriptions,
            properties: if_v5(
                version,
                SubscribeProperties {
                    subscription_identifier: sid,
                    user_properties: up,
                },
            ),
        })
}

/// A SUBACK valid in `version`.
pub fn suback(version: ProtocolVersion) -> impl Strategy<Value = SubAck> {
    let codes: &'static [u8] = match version {
        ProtocolVersion::V5 => SUBACK_CODES,
        ProtocolVersion::V3_1_1 => &[0, 1, 2, 0x80],
        ProtocolVersion::V3_1 => &[0, 1, 2],
    };
    (any::<u16>(), vec(code(codes), 1..4), ack_properties()).prop_map(
        move |(packet_id, reasons, props)| SubAck {
            packet_id,
            reasons,
            properties: if_v5(version, props),
        },
    )
}

/// An UNSUBSCRIBE valid in `version`.
pub fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Unsubscribe> {
    (1u16.., vec(topic_filter(), 1..4), user_properties()).prop_map(
        move |(packet_id, filters, up)| Unsubscribe {
            packet_id,
            filters,
            properties: if_v5(
                version,
                UnsubscribeProperties {
                    user_properties: up,
                },
            ),
        },
    )
}

/// An UNSUBACK valid in `version`.
pub fn unsuback(version: ProtocolVersion) -> impl Strategy<Value = UnsubAck> {
    (
        any::<u16>(),
        vec(code(UNSUBACK_CODES), 1..4),
        ack_properties(),
    )
        .prop_map(move |(packet_id, reasons, props)| UnsubAck {
            packet_id,
            reasons: if_v5(version, reasons),
            properties: if_v5(version, props),
        })
}

/// A DISCONNECT valid in `version` travelling `dir`.
pub fn disconnect(version: ProtocolVersion, dir: Direction) -> impl Strategy<Value = Disconnect> {
    (
        code(match dir {
            Direction::ToServer => DISCONNECT_CODES_FROM_CLIENT,
            Direction::ToClient => DISCONNECT_CODES_FROM_SERVER,
        }),
        option::of(any::<u32>()),
        option::of(string()),
        user_properties(),
        option::of(string()),
    )
        .prop_map(move |(reason, sei, rs, up, sr)| Disconnect {
            reason: if_v5(version, reason),
            properties: if_v5(
                version,
                DisconnectProperties {
                    // [MQTT-3.14.2-2] never from the server.
                    session_expiry_interval: sei.filter(|_| dir == Direction::ToServer),
                    reason_string: rs,
                    user_properties: up,
                    server_reference: sr,
                },
            ),
        })
}

/// An AUTH (5.0) travelling `dir`.
pub fn auth(dir: Direction) -> impl Strategy<Value = Auth> {
    (
        code(match dir {
            Direction::ToServer => AUTH_CODES_FROM_CLIENT,
            Direction::ToClient => AUTH_CODES_FROM_SERVER,
        }),
        option::of(string()),
        option::of(binary()),
        option::of(string()),
        user_properties(),
    )
        .prop_map(|(reason, am, ad, rs, up)| Auth {
            reason,
            properties: AuthProperties {
                authentication_method: am,
                authentication_data: ad,
                reason_string: rs,
                user_properties: up,
            },
        })
}

/// Any packet that may travel `dir` in `version`.
pub fn packet(version: ProtocolVersion, dir: Direction) -> BoxedStrategy<Packet> {
    let v = version;
    let mut options: Vec<BoxedStrategy<Packet>> = vec![
        publish(v, dir).prop_map(Packet::Publish).boxed(),
        ack_parts(v, PUBACK_CODES)
            .prop_map(|(packet_id, reason, properties)| {
                Packet::PubAck(PubAck {
                    packet_id,
                    reason,
                    properties,
                })
            })
            .boxed(),
        ack_parts(v, PUBACK_CODES)
            .prop_map(|(packet_id, reason, properties)| {
                Packet::PubRec(PubRec {
                    packet_id,
                    reason,
                    properties,
                })
            })
            .boxed(),
        ack_parts(v, PUBREL_CODES)
            .prop_map(|(packet_id, reason, properties)| {
                Packet::PubRel(PubRel {
                    packet_id,
                    reason,
                    properties,
                })
            })
            .boxed(),
        ack_parts(v, PUBREL_CODES)
            .prop_map(|(packet_id, reason, properties)| {
                Packet::PubComp(PubComp {
                    packet_id,
                    reason,
                    properties,
                })
            })
            .boxed(),
    ];
    match dir {
        Direction::ToServer => {
            options.push(
                connect(v)
                    .prop_map(|c| Packet::Connect(Box::new(c)))
                    .boxed(),
            );
            options.push(subscribe(v).prop_map(Packet::Subscribe).boxed());
            options.push(unsubscribe(v).prop_map(Packet::Unsubscribe).boxed());
            options.push(Just(Packet::PingReq).boxed());
            options.push(disconnect(v, dir).prop_map(Packet::Disconnect).boxed());
        }
        Direction::ToClient => {
            options.push(connack(v).prop_map(Packet::ConnAck).boxed());
            options.push(suback(v).prop_map(Packet::SubAck).boxed());
            options.push(unsuback(v).prop_map(Packet::UnsubAck).boxed());
            options.push(Just(Packet::PingResp).boxed());
            if v.is_v5() {
                options.push(disconnect(v, dir).prop_map(Packet::Disconnect).boxed());
            }
        }
    }
    if v.is_v5() {
        options.push(auth(dir).prop_map(Packet::Auth).boxed());
    }
    proptest::strategy::Union::new(options).boxed()
}

/// Any protocol version.
pub fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V3_1),
        Just(ProtocolVersion::V3_1_1),
        Just(ProtocolVersion::V5)
    ]
}

/// Any direction.
pub fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::ToServer), Just(Direction::ToClient)]
}
