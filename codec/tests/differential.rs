//! Differential test against an independent implementation, `mqttbytes` (the codec of rumqtt):
//! the same bytes go through both decoders, over the proptest generators' packets (3.1.1 and
//! 5.0, both directions), mutations of them (bit flips, cuts) and the committed fuzz corpus.
//!
//! Both decoders must agree, packet for packet, or the disagreement must be listed in
//! `codec/tests/differential_known.md` under its key, with the clause that makes ours right.
//! Keys: `ours-rejects:<our rule>` (we refuse what they accept), `theirs-rejects:<their error>`
//! (they refuse what we accept), `differs:<packet>` (both decode, different packets),
//! `incomplete:<side>` (one side wants more bytes), `theirs-panics`.
//!
//! `mqttbytes` has no AUTH packet, no MQTT 3.1, no direction, and represents absent user name
//! and password as empty strings; the comparison normalises those representations only.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bytes::{Bytes, BytesMut};
use mqttbytes::{v4, v5};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use starling_codec::Direction::{ToClient, ToServer};
use starling_codec::ProtocolVersion::{V3_1_1, V5};
use starling_codec::*;

/// What one decoder made of the start of an input.
#[derive(Debug)]
enum Outcome {
    Packet(Box<Packet>),
    Incomplete,
    Rejected(String),
}

fn ours(dir: Direction, v: ProtocolVersion, data: &[u8]) -> Outcome {
    let mut d = Decoder::with_version(dir, v, MAX_PACKET_SIZE);
    match d.decode(&mut BytesMut::from(data)) {
        Ok(Some(p)) => Outcome::Packet(Box::new(p)),
        Ok(None) => Outcome::Incomplete,
        Err(e) => Outcome::Rejected(e.rule().to_owned()),
    }
}

fn theirs(v: ProtocolVersion, data: &[u8]) -> Option<Outcome> {
    let data = data.to_vec();
    let result = std::panic::catch_unwind(move || {
        let mut buf = BytesMut::from(&data[..]);
        if v.is_v5() {
            v5::read(&mut buf, MAX_PACKET_SIZE as usize).map(from_v5)
        } else {
            v4::read(&mut buf, MAX_PACKET_SIZE as usize).map(from_v4)
        }
    })
    .ok()?;
    Some(match result {
        Ok(p) => Outcome::Packet(Box::new(p)),
        Err(mqttbytes::Error::InsufficientBytes(_)) => Outcome::Incomplete,
        Err(e) => Outcome::Rejected(error_name(&e)),
    })
}

/// The variant name of their error, without its payload.
fn error_name(e: &mqttbytes::Error) -> String {
    let s = format!("{e:?}");
    s.split('(').next().unwrap_or(&s).to_owned()
}

// === their packets in our types ===

fn s(x: String) -> MqttString {
    MqttString::from(x)
}

fn user(v: Vec<(String, String)>) -> Vec<(MqttString, MqttString)> {
    v.into_iter().map(|(k, v)| (s(k), s(v))).collect()
}

fn qos(q: mqttbytes::QoS) -> QoS {
    match q {
        mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn login(l: Option<(String, String)>) -> (Option<MqttString>, Option<Bytes>) {
    match l {
        None => (None, None),
        Some((u, p)) => (
            (!u.is_empty()).then(|| s(u)),
            (!p.is_empty()).then(|| Bytes::from(p)),
        ),
    }
}

fn from_v4(p: v4::Packet) -> Packet {
    match p {
        v4::Packet::Connect(c) => {
            let (username, password) = login(c.login.map(|l| (l.username, l.password)));
            Packet::Connect(Box::new(Connect {
                protocol: match c.protocol {
                    mqttbytes::Protocol::V4 => V3_1_1,
                    mqttbytes::Protocol::V5 => V5,
                },
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                client_id: s(c.client_id),
                will: c.last_will.map(|w| Will {
                    qos: qos(w.qos),
                    retain: w.retain,
                    topic: s(w.topic),
                    payload: w.message,
                    properties: WillProperties::default(),
                }),
                username,
                password,
                properties: ConnectProperties::default(),
            }))
        }
        v4::Packet::ConnAck(a) => Packet::ConnAck(ConnAck {
            session_present: a.session_present,
            reason: ReasonCode::from_v3_connack(a.code as u8).unwrap_or(ReasonCode(0xFF)),
            properties: ConnAckProperties::default(),
        }),
        v4::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: qos(p.qos),
            retain: p.retain,
            topic: s(p.topic),
            packet_id: (p.qos != mqttbytes::QoS::AtMostOnce).then_some(p.pkid),
            properties: PublishProperties::default(),
            payload: p.payload,
        }),
        v4::Packet::PubAck(a) => Packet::PubAck(PubAck::new(a.pkid)),
        v4::Packet::PubRec(a) => Packet::PubRec(PubRec::new(a.pkid)),
        v4::Packet::PubRel(a) => Packet::PubRel(PubRel::new(a.pkid)),
        v4::Packet::PubComp(a) => Packet::PubComp(PubComp::new(a.pkid)),
        v4::Packet::Subscribe(sub) => Packet::Subscribe(Subscribe {
            packet_id: sub.pkid,
            subscriptions: sub
                .filters
                .into_iter()
                .map(|f| Subscription {
                    filter: s(f.path),
                    options: SubscriptionOptions::qos(qos(f.qos)),
                })
                .collect(),
            properties: SubscribeProperties::default(),
        }),
        v4::Packet::SubAck(a) => Packet::SubAck(SubAck::new(
            a.pkid,
            a.return_codes
                .into_iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => ReasonCode(qos(q).as_u8()),
                    v4::SubscribeReasonCode::Failure => ReasonCode::UNSPECIFIED_ERROR,
                })
                .collect(),
        )),
        v4::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            packet_id: u.pkid,
            filters: u.topics.into_iter().map(s).collect(),
            properties: UnsubscribeProperties::default(),
        }),
        v4::Packet::UnsubAck(a) => Packet::UnsubAck(UnsubAck::new(a.pkid, Vec::new())),
        v4::Packet::PingReq => Packet::PingReq,
        v4::Packet::PingResp => Packet::PingResp,
        v4::Packet::Disconnect => Packet::Disconnect(Disconnect::default()),
    }
}

fn ack(reason_string: Option<String>, user_properties: Vec<(String, String)>) -> AckProperties {
    AckProperties {
        reason_string: reason_string.map(s),
        user_properties: user(user_properties),
    }
}

fn from_v5(p: v5::Packet) -> Packet {
    match p {
        v5::Packet::Connect(c) => {
            let (username, password) = login(c.login.map(|l| (l.username, l.password)));
            Packet::Connect(Box::new(Connect {
                protocol: match c.protocol {
                    mqttbytes::Protocol::V4 => V3_1_1,
                    mqttbytes::Protocol::V5 => V5,
                },
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                client_id: s(c.client_id),
                will: c.last_will.map(|w| Will {
                    qos: qos(w.qos),
                    retain: w.retain,
                    topic: s(w.topic),
                    payload: w.message,
                    properties: w
                        .properties
                        .map(|wp| WillProperties {
                            will_delay_interval: wp.delay_interval,
                            payload_format_indicator: wp.payload_format_indicator,
                            message_expiry_interval: wp.message_expiry_interval,
                            content_type: wp.content_type.map(s),
                            response_topic: wp.response_topic.map(s),
                            correlation_data: wp.correlation_data,
                            user_properties: user(wp.user_properties),
                        })
                        .unwrap_or_default(),
                }),
                username,
                password,
                properties: c
                    .properties
                    .map(|props| ConnectProperties {
                        session_expiry_interval: props.session_expiry_interval,
                        receive_maximum: props.receive_maximum,
                        maximum_packet_size: props.max_packet_size,
                        topic_alias_maximum: props.topic_alias_max,
                        request_response_information: props.request_response_info,
                        request_problem_information: props.request_problem_info,
                        user_properties: user(props.user_properties),
                        authentication_method: props.authentication_method.map(s),
                        authentication_data: props.authentication_data,
                    })
                    .unwrap_or_default(),
            }))
        }
        v5::Packet::ConnAck(a) => Packet::ConnAck(ConnAck {
            session_present: a.session_present,
            reason: ReasonCode(a.code as u8),
            properties: a
                .properties
                .map(|p| ConnAckProperties {
                    session_expiry_interval: p.session_expiry_interval,
                    receive_maximum: p.receive_max,
                    maximum_qos: p.max_qos,
                    retain_available: p.retain_available,
                    maximum_packet_size: p.max_packet_size,
                    assigned_client_identifier: p.assigned_client_identifier.map(s),
                    topic_alias_maximum: p.topic_alias_max,
                    reason_string: p.reason_string.map(s),
                    user_properties: user(p.user_properties),
                    wildcard_subscription_available: p.wildcard_subscription_available,
                    subscription_identifiers_available: p.subscription_identifiers_available,
                    shared_subscription_available: p.shared_subscription_available,
                    server_keep_alive: p.server_keep_alive,
                    response_information: p.response_information.map(s),
                    server_reference: p.server_reference.map(s),
                    authentication_method: p.authentication_method.map(s),
                    authentication_data: p.authentication_data,
                })
                .unwrap_or_default(),
        }),
        v5::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: qos(p.qos),
            retain: p.retain,
            topic: s(p.topic),
            packet_id: (p.qos != mqttbytes::QoS::AtMostOnce).then_some(p.pkid),
            properties: p
                .properties
                .map(|pp| PublishProperties {
                    payload_format_indicator: pp.payload_format_indicator,
                    message_expiry_interval: pp.message_expiry_interval,
                    topic_alias: pp.topic_alias,
                    response_topic: pp.response_topic.map(s),
                    correlation_data: pp.correlation_data,
                    user_properties: user(pp.user_properties),
                    subscription_identifiers: pp
                        .subscription_identifiers
                        .into_iter()
                        .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
                        .collect(),
                    content_type: pp.content_type.map(s),
                })
                .unwrap_or_default(),
            payload: p.payload,
        }),
        v5::Packet::PubAck(a) => Packet::PubAck(PubAck {
            packet_id: a.pkid,
            reason: ReasonCode(a.reason as u8),
            properties: a
                .properties
                .map(|p| ack(p.reason_string, p.user_properties))
                .unwrap_or_default(),
        }),
        v5::Packet::PubRec(a) => Packet::PubRec(PubRec {
            packet_id: a.pkid,
            reason: ReasonCode(a.reason as u8),
            properties: a
                .properties
                .map(|p| ack(p.reason_string, p.user_properties))
                .unwrap_or_default(),
        }),
        v5::Packet::PubRel(a) => Packet::PubRel(PubRel {
            packet_id: a.pkid,
            reason: ReasonCode(a.reason as u8),
            properties: a
                .properties
                .map(|p| ack(p.reason_string, p.user_properties))
                .unwrap_or_default(),
        }),
        v5::Packet::PubComp(a) => Packet::PubComp(PubComp {
            packet_id: a.pkid,
            reason: ReasonCode(a.reason as u8),
            properties: a
                .properties
                .map(|p| ack(p.reason_string, p.user_properties))
                .unwrap_or_default(),
        }),
        v5::Packet::Subscribe(sub) => Packet::Subscribe(Subscribe {
            packet_id: sub.pkid,
            subscriptions: sub
                .filters
                .into_iter()
                .map(|f| Subscription {
                    filter: s(f.path),
                    options: SubscriptionOptions {
                        qos: qos(f.qos),
                        no_local: f.nolocal,
                        retain_as_published: f.preserve_retain,
                        retain_handling: match f.retain_forward_rule {
                            v5::RetainForwardRule::OnEverySubscribe => {
                                RetainHandling::SendAtSubscribe
                            }
                            v5::RetainForwardRule::OnNewSubscribe => {
                                RetainHandling::SendAtSubscribeIfNew
                            }
                            v5::RetainForwardRule::Never => RetainHandling::DoNotSend,
                        },
                    },
                })
                .collect(),
            properties: sub
                .properties
                .map(|p| SubscribeProperties {
                    subscription_identifier: p.id.map(|i| u32::try_from(i).unwrap_or(u32::MAX)),
                    user_properties: user(p.user_properties),
                })
                .unwrap_or_default(),
        }),
        v5::Packet::SubAck(a) => Packet::SubAck(SubAck {
            packet_id: a.pkid,
            reasons: a
                .return_codes
                .into_iter()
                .map(|c| ReasonCode(c as u8))
                .collect(),
            properties: a
                .properties
                .map(|p| ack(p.reason_string, p.user_properties))
                .unwrap_or_default(),
        }),
        v5::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            packet_id: u.pkid,
            filters: u.filters.into_iter().map(s).collect(),
            properties: UnsubscribeProperties {
                user_properties: u
                    .properties
                    .map(|p| user(p.user_properties))
                    .unwrap_or_default(),
            },
        }),
        v5::Packet::UnsubAck(a) => Packet::UnsubAck(UnsubAck {
            packet_id: a.pkid,
            reasons: a.reasons.into_iter().map(|c| ReasonCode(c as u8)).collect(),
            properties: a
                .properties
                .map(|p| ack(p.reason_string, p.user_properties))
                .unwrap_or_default(),
        }),
        v5::Packet::PingReq => Packet::PingReq,
        v5::Packet::PingResp => Packet::PingResp,
        v5::Packet::Disconnect(d) => Packet::Disconnect(Disconnect {
            reason: ReasonCode(d.reason_code as u8),
            properties: d
                .properties
                .map(|p| DisconnectProperties {
                    session_expiry_interval: p.session_expiry_interval,
                    reason_string: p.reason_string.map(s),
                    user_properties: user(p.user_properties),
                    server_reference: p.server_reference.map(s),
                })
                .unwrap_or_default(),
        }),
    }
}

/// Applies the representation limits of `mqttbytes` to our packet: an empty user name or
/// password reads as absent there.
fn normalise(mut p: Packet) -> Packet {
    if let Packet::Connect(c) = &mut p {
        if c.username.as_ref().is_some_and(|u| u.is_empty()) {
            c.username = None;
        }
        if c.password.as_ref().is_some_and(|p| p.is_empty()) {
            c.password = None;
        }
    }
    p
}

// === comparing ===

/// The key of a disagreement, `None` when both decoders agree.
fn compare(dir: Direction, v: ProtocolVersion, data: &[u8]) -> Option<String> {
    let ours = ours(dir, v, data);
    let Some(theirs) = theirs(v, data) else {
        return Some("theirs-panics".to_owned());
    };
    match (ours, theirs) {
        (Outcome::Packet(a), Outcome::Packet(b)) => {
            let a = normalise(*a);
            let b = normalise(*b);
            (a != b).then(|| describe(&a, &b, v))
        }
        // We refuse what they accept, or would accept once more bytes came.
        (Outcome::Rejected(rule), Outcome::Packet(_) | Outcome::Incomplete) => {
            Some(format!("ours-rejects:{rule}"))
        }
        // They refuse what we accept, or would accept once more bytes came.
        (Outcome::Packet(_) | Outcome::Incomplete, Outcome::Rejected(e)) => {
            Some(format!("theirs-rejects:{e}"))
        }
        (Outcome::Incomplete, Outcome::Incomplete)
        | (Outcome::Rejected(_), Outcome::Rejected(_)) => None,
        (Outcome::Incomplete, Outcome::Packet(p)) => {
            Some(format!("incomplete:ours:{}", p.packet_type().name()))
        }
        (Outcome::Packet(p), Outcome::Incomplete) => {
            Some(format!("incomplete:theirs:{}", p.packet_type().name()))
        }
    }
}

/// The key of two different decodings: the packet type, and for PUBLISH the fields that
/// differ; a CONNECT whose level is not the connection's version gets its own key.
fn describe(ours: &Packet, theirs: &Packet, v: ProtocolVersion) -> String {
    match (ours, theirs) {
        (Packet::Connect(c), _) if c.protocol != v => "differs:CONNECT:protocol-level".to_owned(),
        (Packet::Publish(a), Packet::Publish(b)) => {
            let fields = [
                (
                    "flags",
                    (a.dup, a.qos, a.retain) != (b.dup, b.qos, b.retain),
                ),
                ("topic", a.topic != b.topic),
                ("packet_id", a.packet_id != b.packet_id),
                ("properties", a.properties != b.properties),
                ("payload", a.payload != b.payload),
            ];
            let differing: Vec<&str> = fields
                .iter()
                .filter(|(_, differs)| *differs)
                .map(|(name, _)| *name)
                .collect();
            format!("differs:PUBLISH:{}", differing.join(","))
        }
        _ => format!("differs:{}", ours.packet_type().name()),
    }
}

/// The keys listed in `differential_known.md`: the first backticked word of each table row.
fn known_keys() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential_known.md");
    let text = std::fs::read_to_string(&path).expect("differential_known.md");
    text.lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('`').nth(1).map(str::to_owned))
        .collect()
}

/// Runs every input, collecting disagreements by key with an example input.
#[derive(Default)]
struct Report {
    inputs: usize,
    agreed: usize,
    disagreements: BTreeMap<String, (usize, Vec<u8>)>,
}

impl Report {
    fn run(&mut self, dir: Direction, v: ProtocolVersion, data: &[u8]) {
        self.inputs += 1;
        match compare(dir, v, data) {
            None => self.agreed += 1,
            Some(key) => {
                let e = self.disagreements.entry(key).or_insert((0, data.to_vec()));
                e.0 += 1;
            }
        }
    }

    fn check(&self) {
        let known = known_keys();
        let unknown: Vec<String> = self
            .disagreements
            .iter()
            .filter(|(k, _)| !known.contains(*k))
            .map(|(k, (n, example))| format!("{k} ({n} inputs, e.g. {example:02X?})"))
            .collect();
        for (k, (n, _)) in &self.disagreements {
            eprintln!("{k}: {n}");
        }
        eprintln!("{} inputs, {} agreed", self.inputs, self.agreed);
        assert!(
            unknown.is_empty(),
            "disagreements not listed in differential_known.md:\n{}",
            unknown.join("\n")
        );
    }
}

fn runner() -> TestRunner {
    TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[42; 32]),
    )
}

fn generated(runner: &mut TestRunner, dir: Direction, v: ProtocolVersion) -> Vec<u8> {
    let p = strategies::packet(v, dir)
        .new_tree(runner)
        .expect("a value")
        .current();
    common::encode(&p, v)
}

#[test]
fn generated_packets_agree_with_mqttbytes_or_are_known_disagreements() {
    let mut report = Report::default();
    let mut runner = runner();
    for v in [V3_1_1, V5] {
        for dir in [ToServer, ToClient] {
            for _ in 0..1500 {
                let bytes = generated(&mut runner, dir, v);
                report.run(dir, v, &bytes);
            }
        }
    }
    report.check();
    // Valid packets are what both implement: most must agree.
    assert!(
        report.agreed * 10 >= report.inputs * 7,
        "only {} of {} generated packets agree",
        report.agreed,
        report.inputs
    );
}

#[test]
fn mutated_packets_agree_with_mqttbytes_or_are_known_disagreements() {
    let mut report = Report::default();
    let mut runner = runner();
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[9; 32]);
    for v in [V3_1_1, V5] {
        for dir in [ToServer, ToClient] {
            for _ in 0..1500 {
                let mut bytes = generated(&mut runner, dir, v);
                let at = rand_index(&mut rng, bytes.len());
                match rand_index(&mut rng, 3) {
                    0 => bytes[at] ^= 1 << rand_index(&mut rng, 8),
                    1 => bytes[at] = rand_index(&mut rng, 256) as u8,
                    _ => bytes.truncate(at),
                }
                report.run(dir, v, &bytes);
            }
        }
    }
    report.check();
}

fn rand_index(rng: &mut TestRng, n: usize) -> usize {
    use proptest::prelude::RngCore;
    if n == 0 {
        0
    } else {
        rng.next_u32() as usize % n
    }
}

#[test]
fn fuzz_corpus_agrees_with_mqttbytes_or_is_a_known_disagreement() {
    let mut report = Report::default();
    // A larger corpus (e.g. one a local fuzzing run grew) can be compared by pointing
    // CODEC_DIFFERENTIAL_CORPUS at a directory laid out like `fuzz/corpus`.
    let corpus = std::env::var_os("CODEC_DIFFERENTIAL_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus"));
    for (target, dir, v) in [
        ("decode_server_v3_1_1", ToServer, V3_1_1),
        ("decode_server_v5", ToServer, V5),
        ("decode_client_v3_1_1", ToClient, V3_1_1),
        ("decode_client_v5", ToClient, V5),
    ] {
        let Ok(entries) = std::fs::read_dir(corpus.join(target)) else {
            continue;
        };
        for entry in entries {
            let data = std::fs::read(entry.expect("entry").path()).expect("corpus file");
            report.run(dir, v, &data);
        }
    }
    assert!(report.inputs > 0);
    report.check();
}
