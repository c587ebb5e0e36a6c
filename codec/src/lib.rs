//! MQTT 5.0, 3.1.1 and 3.1 control packets: decoding and encoding, pure and without I/O.
//!
//! - [`Decoder`] turns bytes from a `BytesMut` into [`Packet`]s. It knows the direction of the
//!   bytes (a broker decodes [`Direction::ToServer`]) and the protocol version, and it enforces the
//!   maximum packet size from the fixed header, before the body is buffered. Strings, binary data
//!   and payloads are `Bytes` slices of the input, never copies. Every failure is a
//!   [`DecodeError`] carrying the reason code to send and the id of the rule that was broken.
//! - [`Packet::encode`] computes the sizes once and writes straight into a `BytesMut`; fields a
//!   version cannot carry (properties in 3.1.1) are left out, reason codes are mapped to the
//!   closest 3.1.1 return code (see [`ReasonCode::to_v3_connack`]).
//! - [`topic`] validates topic names and filters, parses shared subscriptions and matches.
//!
//! ```
//! use bytes::BytesMut;
//! use starling_codec::{ConnAck, Decoder, Direction, Packet, ProtocolVersion, ReasonCode};
//!
//! // A server reads a 3.1.1 CONNECT (client id "c", clean session, keep alive 60) ...
//! let mut decoder = Decoder::new(Direction::ToServer, 64 * 1024);
//! let mut input = BytesMut::from(&b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c"[..]);
//! let Some(Packet::Connect(connect)) = decoder.decode(&mut input)? else {
//!     panic!("a CONNECT");
//! };
//! assert_eq!(connect.client_id, "c");
//! assert_eq!(decoder.version(), Some(ProtocolVersion::V3_1_1));
//!
//! // ... and answers in the client's version.
//! let mut output = BytesMut::new();
//! Packet::ConnAck(ConnAck::new(ReasonCode::SUCCESS)).encode(ProtocolVersion::V3_1_1, &mut output)?;
//! assert_eq!(&output[..], b"\x20\x02\x00\x00");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod decoder;
mod error;
mod packet;
mod properties;
mod reason;
mod string;
mod wire;

pub mod remaining_length;
pub mod topic;

pub use topic::TopicError;

#[cfg(feature = "proptest")]
pub mod strategies;

pub use decoder::Decoder;
pub use error::{DecodeError, EncodeError};
pub use packet::auth::{Auth, AuthProperties};
pub use packet::connack::{ConnAck, ConnAckProperties};
pub use packet::connect::{Connect, ConnectProperties, Will, WillProperties};
pub use packet::disconnect::{Disconnect, DisconnectProperties};
pub use packet::puback::{AckProperties, PubAck};
pub use packet::pubcomp::PubComp;
pub use packet::publish::{Publish, PublishProperties};
pub use packet::pubrec::PubRec;
pub use packet::pubrel::PubRel;
pub use packet::suback::SubAck;
pub use packet::subscribe::{
    RetainHandling, Subscribe, SubscribeProperties, Subscription, SubscriptionOptions,
};
pub use packet::unsuback::UnsubAck;
pub use packet::unsubscribe::{Unsubscribe, UnsubscribeProperties};
pub use packet::{Packet, PacketType};
pub use reason::ReasonCode;
pub use string::{InvalidString, MqttString};

/// The largest Remaining Length the variable byte integer can carry (268,435,455) [MQTT-1.5.5].
pub const MAX_REMAINING_LENGTH: u32 = 268_435_455;

/// The largest packet a [`Decoder`] can accept: 1 header byte, 4 length bytes and the largest body.
pub const MAX_PACKET_SIZE: u32 = MAX_REMAINING_LENGTH + 5;

/// The protocol level a client asked for in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub const fn level(self) -> u8 {
        match self {
            Self::V3_1 => 3,
            Self::V3_1_1 => 4,
            Self::V5 => 5,
        }
    }

    /// The protocol name of CONNECT.
    pub const fn protocol_name(self) -> &'static str {
        match self {
            Self::V3_1 => "MQIsdp",
            Self::V3_1_1 | Self::V5 => "MQTT",
        }
    }

    /// True for 5.0, the only version with properties and reason codes on the wire.
    pub const fn is_v5(self) -> bool {
        matches!(self, Self::V5)
    }
}

/// Who receives the bytes being decoded: validity depends on it (a Subscription Identifier in a
/// client's PUBLISH is a protocol error [MQTT-3.3.4-6], CONNECT only goes to a server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Bytes sent by a client, decoded by a server.
    ToServer,
    /// Bytes sent by a server, decoded by a client.
    ToClient,
}

/// Quality of service of a message or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// QoS 0.
    #[default]
    AtMostOnce = 0,
    /// QoS 1.
    AtLeastOnce = 1,
    /// QoS 2.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS of a 2-bit field; 3 is not a QoS.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }

    /// The wire value, 0..=2.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}
