//! Decode and encode errors. A [`DecodeError`] carries the reason code the receiver must send
//! (in CONNACK or DISCONNECT) and the id of the broken rule; it never allocates.

use crate::ReasonCode;

/// Why bytes could not be decoded: the reason code to answer with, the rule that was broken and
/// a lowercase message. Built from `'static` parts only, so making one never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{message} [{rule}]")]
pub struct DecodeError {
    reason: ReasonCode,
    rule: &'static str,
    message: &'static str,
}

impl DecodeError {
    /// An error with an explicit reason code.
    pub const fn new(reason: ReasonCode, rule: &'static str, message: &'static str) -> Self {
        Self {
            reason,
            rule,
            message,
        }
    }

    /// A Malformed Packet (0x81).
    pub const fn malformed(rule: &'static str, message: &'static str) -> Self {
        Self::new(ReasonCode::MALFORMED_PACKET, rule, message)
    }

    /// A Protocol Error (0x82).
    pub const fn protocol(rule: &'static str, message: &'static str) -> Self {
        Self::new(ReasonCode::PROTOCOL_ERROR, rule, message)
    }

    /// The reason code to send in CONNACK or DISCONNECT (3.1.1 peers get the connection closed,
    /// or the CONNACK return code of [`ReasonCode::to_v3_connack`]).
    pub const fn reason_code(&self) -> ReasonCode {
        self.reason
    }

    /// The id of the normative statement that was broken, e.g. `MQTT-1.5.4-2`, or the section
    /// number when the statement has no id (e.g. `2.2.2.2`).
    pub const fn rule(&self) -> &'static str {
        self.rule
    }

    /// The lowercase message, without the rule.
    pub const fn message(&self) -> &'static str {
        self.message
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The packet would be longer than the variable byte integer can describe.
    #[error("packet too large: remaining length {0} exceeds 268435455")]
    PacketTooLarge(usize),
    /// A string is longer than 65,535 bytes [MQTT-1.5.4-1].
    #[error("string of {0} bytes exceeds 65535")]
    StringTooLong(usize),
    /// Binary data is longer than 65,535 bytes [MQTT-1.5.6].
    #[error("binary data of {0} bytes exceeds 65535")]
    BinaryTooLong(usize),
    /// A string contains U+0000 [MQTT-1.5.4-2].
    #[error("string contains the null character")]
    NullCharacter,
    /// A QoS 1 or 2 PUBLISH without a packet identifier [MQTT-2.2.1-2].
    #[error("qos {0} publish without a packet identifier")]
    MissingPacketId(u8),
    /// A variable byte integer property above 268,435,455.
    #[error("variable byte integer {0} exceeds 268435455")]
    VarIntTooLarge(u32),
    /// The packet type does not exist in this protocol version (AUTH before 5.0).
    #[error("{packet} does not exist in mqtt {version}")]
    NotInVersion {
        /// The packet type.
        packet: &'static str,
        /// The protocol version, e.g. `3.1.1`.
        version: &'static str,
    },
    /// MQTT 3.1 has no SUBACK failure return code: refuse the subscription by closing instead.
    #[error("mqtt 3.1 suback cannot express a failure")]
    SubAckFailureInV3_1,
    /// The packet is larger than the receiver's Maximum Packet Size even without its Reason
    /// String and User Properties; the sender discards it [MQTT-3.1.2-25].
    #[error("packet of {size} bytes exceeds the receiver's maximum packet size of {max}")]
    ExceedsMaximumPacketSize {
        /// The packet's size with everything it carries.
        size: usize,
        /// The receiver's Maximum Packet Size.
        max: usize,
    },
}

/// Normative statements whose id differs between 5.0 and 3.1.1: the decoder cites the 5.0 id
/// and translates it when the connection speaks 3.1.1 (or 3.1, which has no ids and follows
/// 3.1.1 here).
const V3_RULES: &[(&str, &str)] = &[
    ("MQTT-1.5.4-1", "MQTT-1.5.3-1"),
    ("MQTT-1.5.4-2", "MQTT-1.5.3-2"),
    ("MQTT-2.1.3-1", "MQTT-2.2.2-1"),
    ("MQTT-2.2.1-3", "MQTT-2.3.1-1"),
    ("MQTT-3.1.2-11", "MQTT-3.1.2-13"),
    ("MQTT-3.1.2-12", "MQTT-3.1.2-14"),
    ("MQTT-3.1.2-13", "MQTT-3.1.2-15"),
    ("MQTT-3.1.3-11", "MQTT-3.1.3-10"),
    ("MQTT-3.2.2-6", "MQTT-3.2.2-4"),
    ("MQTT-3.8.3-2", "MQTT-3.8.3-3"),
    ("MQTT-3.8.4-6", "MQTT-3.8.4-5"),
    ("MQTT-4.7.1-1", "MQTT-4.7.1-2"),
    ("MQTT-4.7.1-2", "MQTT-4.7.1-3"),
];

impl DecodeError {
    /// The same error citing the rule as `version`'s specification numbers it.
    pub(crate) fn for_version(self, version: crate::ProtocolVersion) -> Self {
        if version.is_v5() {
            return self;
        }
        match V3_RULES.iter().find(|(v5, _)| *v5 == self.rule) {
            Some((_, v3)) => Self { rule: v3, ..self },
            None => self,
        }
    }
}
