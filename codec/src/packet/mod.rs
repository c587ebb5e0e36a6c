//! The control packets, one file each, and [`Packet`], which dispatches decoding and encoding.

use bytes::BytesMut;

use crate::wire::{self, Reader};
use crate::{DecodeError, Direction, EncodeError, ProtocolVersion};

pub(crate) mod auth;
pub(crate) mod connack;
pub(crate) mod connect;
pub(crate) mod disconnect;
pub(crate) mod pingreq;
pub(crate) mod pingresp;
pub(crate) mod puback;
pub(crate) mod pubcomp;
pub(crate) mod publish;
pub(crate) mod pubrec;
pub(crate) mod pubrel;
pub(crate) mod suback;
pub(crate) mod subscribe;
pub(crate) mod unsuback;
pub(crate) mod unsubscribe;

use auth::Auth;
use connack::ConnAck;
use connect::Connect;
use disconnect::Disconnect;
use puback::PubAck;
use pubcomp::PubComp;
use publish::Publish;
use pubrec::PubRec;
use pubrel::PubRel;
use suback::SubAck;
use subscribe::Subscribe;
use unsuback::UnsubAck;
use unsubscribe::Unsubscribe;

/// An MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (client to server).
    Connect(Box<Connect>),
    /// CONNACK (server to client).
    ConnAck(ConnAck),
    /// PUBLISH (both ways).
    Publish(Publish),
    /// PUBACK (both ways).
    PubAck(PubAck),
    /// PUBREC (both ways).
    PubRec(PubRec),
    /// PUBREL (both ways).
    PubRel(PubRel),
    /// PUBCOMP (both ways).
    PubComp(PubComp),
    /// SUBSCRIBE (client to server).
    Subscribe(Subscribe),
    /// SUBACK (server to client).
    SubAck(SubAck),
    /// UNSUBSCRIBE (client to server).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (server to client).
    UnsubAck(UnsubAck),
    /// PINGREQ (client to server).
    PingReq,
    /// PINGRESP (server to client).
    PingResp,
    /// DISCONNECT (client to server; both ways in 5.0).
    Disconnect(Disconnect),
    /// AUTH (both ways, 5.0 only).
    Auth(Auth),
}

/// The packet type of the fixed header (table 2-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// 1
    Connect = 1,
    /// 2
    ConnAck = 2,
    /// 3
    Publish = 3,
    /// 4
    PubAck = 4,
    /// 5
    PubRec = 5,
    /// 6
    PubRel = 6,
    /// 7
    PubComp = 7,
    /// 8
    Subscribe = 8,
    /// 9
    SubAck = 9,
    /// 10
    Unsubscribe = 10,
    /// 11
    UnsubAck = 11,
    /// 12
    PingReq = 12,
    /// 13
    PingResp = 13,
    /// 14
    Disconnect = 14,
    /// 15
    Auth = 15,
}

impl PacketType {
    /// The type of the high nibble of the first byte; 0 is reserved, 15 is AUTH.
    pub const fn from_nibble(n: u8) -> Option<Self> {
        Some(match n {
            1 => Self::Connect,
            2 => Self::ConnAck,
            3 => Self::Publish,
            4 => Self::PubAck,
            5 => Self::PubRec,
            6 => Self::PubRel,
            7 => Self::PubComp,
            8 => Self::Subscribe,
            9 => Self::SubAck,
            10 => Self::Unsubscribe,
            11 => Self::UnsubAck,
            12 => Self::PingReq,
            13 => Self::PingResp,
            14 => Self::Disconnect,
            15 => Self::Auth,
            _ => return None,
        })
    }

    /// The packet's name as the specification writes it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::ConnAck => "CONNACK",
            Self::Publish => "PUBLISH",
            Self::PubAck => "PUBACK",
            Self::PubRec => "PUBREC",
            Self::PubRel => "PUBREL",
            Self::PubComp => "PUBCOMP",
            Self::Subscribe => "SUBSCRIBE",
            Self::SubAck => "SUBACK",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::UnsubAck => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
            Self::Auth => "AUTH",
        }
    }

    /// The flags every packet but PUBLISH must carry in the low nibble [MQTT-2.1.3-1]:
    /// 0b0010 for PUBREL, SUBSCRIBE and UNSUBSCRIBE, 0 for the others.
    pub(crate) const fn fixed_flags(self) -> u8 {
        match self {
            Self::PubRel | Self::Subscribe | Self::Unsubscribe => 0b0010,
            _ => 0,
        }
    }

    /// Which way the packet may travel in `version`: `None` when both.
    pub(crate) const fn only_direction(self, version: ProtocolVersion) -> Option<Direction> {
        match self {
            Self::Connect | Self::Subscribe | Self::Unsubscribe | Self::PingReq => {
                Some(Direction::ToServer)
            }
            Self::ConnAck | Self::SubAck | Self::UnsubAck | Self::PingResp => {
                Some(Direction::ToClient)
            }
            // Before 5.0 only the client sends DISCONNECT.
            Self::Disconnect if !version.is_v5() => Some(Direction::ToServer),
            _ => None,
        }
    }
}

/// The sizes an encoder computes once: the Remaining Length and the property blocks.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sizes {
    pub(crate) remaining: usize,
    /// The property block's content length (without its own length prefix).
    pub(crate) props: usize,
    /// A second property block (the will's, in CONNECT).
    pub(crate) will_props: usize,
}

impl Packet {
    /// The packet type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }

    /// Decodes one packet body whose fixed header has been read and checked.
    pub(crate) fn decode_body(
        ty: PacketType,
        flags: u8,
        r: Reader,
        version: ProtocolVersion,
        dir: Direction,
    ) -> Result<Self, DecodeError> {
        Ok(match ty {
            PacketType::Connect => Self::Connect(Box::new(Connect::decode(r)?)),
            PacketType::ConnAck => Self::ConnAck(ConnAck::decode(r, version)?),
            PacketType::Publish => Self::Publish(Publish::decode(flags, r, version, dir)?),
            PacketType::PubAck => Self::PubAck(PubAck::decode(r, version)?),
            PacketType::PubRec => Self::PubRec(PubRec::decode(r, version)?),
            PacketType::PubRel => Self::PubRel(PubRel::decode(r, version)?),
            PacketType::PubComp => Self::PubComp(PubComp::decode(r, version)?),
            PacketType::Subscribe => Self::Subscribe(Subscribe::decode(r, version)?),
            PacketType::SubAck => Self::SubAck(SubAck::decode(r, version)?),
            PacketType::Unsubscribe => Self::Unsubscribe(Unsubscribe::decode(r, version)?),
            PacketType::UnsubAck => Self::UnsubAck(UnsubAck::decode(r, version)?),
            PacketType::PingReq => {
                pingreq::decode(r)?;
                Self::PingReq
            }
            PacketType::PingResp => {
                pingresp::decode(r)?;
                Self::PingResp
            }
            PacketType::Disconnect => Self::Disconnect(Disconnect::decode(r, version, dir)?),
            PacketType::Auth => Self::Auth(Auth::decode(r, dir)?),
        })
    }

    fn sizes(&self, v: ProtocolVersion) -> Result<Sizes, EncodeError> {
        match self {
            Self::Connect(p) => p.sizes(v),
            Self::ConnAck(p) => p.sizes(v),
            Self::Publish(p) => p.sizes(v),
            Self::PubAck(p) => p.sizes(v),
            Self::PubRec(p) => p.sizes(v),
            Self::PubRel(p) => p.sizes(v),
            Self::PubComp(p) => p.sizes(v),
            Self::Subscribe(p) => p.sizes(v),
            Self::SubAck(p) => p.sizes(v),
            Self::Unsubscribe(p) => p.sizes(v),
            Self::UnsubAck(p) => p.sizes(v),
            Self::PingReq | Self::PingResp => Ok(Sizes::default()),
            Self::Disconnect(p) => p.sizes(v),
            Self::Auth(p) => p.sizes(v),
        }
    }

    /// The total encoded size in `version`, fixed header included; 0 when the packet cannot be
    /// encoded (see [`Packet::encode`] for the reason).
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        self.sizes(version)
            .and_then(|s| wire::total_len(s.remaining))
            .unwrap_or(0)
    }

    /// Encodes the packet for a peer speaking `version`, appending to `out`; returns the number
    /// of bytes written. Sizes are computed once, then every field is written straight into
    /// `out`; on error nothing is written. Fields `version` cannot carry are left out (properties
    /// before 5.0); reason codes map as [`crate::ReasonCode::to_v3_connack`] and
    /// [`crate::ReasonCode::to_v3_suback`] say; the reason codes of the other acknowledgements
    /// are left out before 5.0.
    pub fn encode(
        &self,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        let sizes = self.sizes(version)?;
        let total = wire::total_len(sizes.remaining)?;
        self.write(version, &sizes, total, out);
        Ok(total)
    }

    /// Encodes the packet like [`Packet::encode`] for a receiver whose Maximum Packet Size is
    /// `max`. A packet that would exceed it loses its Reason String, then its User Properties:
    /// on CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT and AUTH they
    /// are diagnostics that the sender must leave out rather than exceed the limit
    /// ([MQTT-3.2.2-19], [MQTT-3.2.2-20], [MQTT-3.4.2-2], [MQTT-3.4.2-3], [MQTT-3.5.2-2],
    /// [MQTT-3.5.2-3], [MQTT-3.6.2-2], [MQTT-3.6.2-3], [MQTT-3.7.2-2], [MQTT-3.7.2-3],
    /// [MQTT-3.9.2-1], [MQTT-3.9.2-2], [MQTT-3.11.2-1], [MQTT-3.11.2-2], [MQTT-3.14.2-3],
    /// [MQTT-3.14.2-4], [MQTT-3.15.2-2], [MQTT-3.15.2-3]). A PUBLISH keeps its User Properties
    /// (they belong to the Application Message). A packet that does not fit even then is not
    /// written: [`EncodeError::ExceedsMaximumPacketSize`], and the sender discards it
    /// [MQTT-3.1.2-25]. Only a packet over the limit is copied.
    pub fn encode_within(
        &self,
        version: ProtocolVersion,
        max: u32,
        out: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        let sizes = self.sizes(version)?;
        let total = wire::total_len(sizes.remaining)?;
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        if total <= max {
            self.write(version, &sizes, total, out);
            return Ok(total);
        }
        let mut slim = self.clone();
        for drop in [Diagnostic::ReasonString, Diagnostic::UserProperties] {
            if !slim.leave_out(drop) {
                continue;
            }
            let sizes = slim.sizes(version)?;
            let total = wire::total_len(sizes.remaining)?;
            if total <= max {
                slim.write(version, &sizes, total, out);
                return Ok(total);
            }
        }
        Err(EncodeError::ExceedsMaximumPacketSize { size: total, max })
    }

    /// Removes one kind of diagnostic property; whether the packet had it.
    fn leave_out(&mut self, what: Diagnostic) -> bool {
        let (reason, user) = match self {
            Self::ConnAck(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::PubAck(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::PubRec(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::PubRel(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::PubComp(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::SubAck(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::UnsubAck(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::Disconnect(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            Self::Auth(p) => (
                &mut p.properties.reason_string,
                &mut p.properties.user_properties,
            ),
            _ => return false,
        };
        match what {
            Diagnostic::ReasonString => reason.take().is_some(),
            Diagnostic::UserProperties => !std::mem::take(user).is_empty(),
        }
    }

    /// Writes the packet whose sizes were computed; `total` bytes.
    fn write(&self, version: ProtocolVersion, sizes: &Sizes, total: usize, out: &mut BytesMut) {
        out.reserve(total);
        let start = out.len();
        match self {
            Self::Connect(p) => p.write(version, sizes, out),
            Self::ConnAck(p) => p.write(version, sizes, out),
            Self::Publish(p) => p.write(version, sizes, out),
            Self::PubAck(p) => p.write(version, sizes, out),
            Self::PubRec(p) => p.write(version, sizes, out),
            Self::PubRel(p) => p.write(version, sizes, out),
            Self::PubComp(p) => p.write(version, sizes, out),
            Self::Subscribe(p) => p.write(version, sizes, out),
            Self::SubAck(p) => p.write(version, sizes, out),
            Self::Unsubscribe(p) => p.write(version, sizes, out),
            Self::UnsubAck(p) => p.write(version, sizes, out),
            Self::PingReq => wire::put_header(out, 0xC0, 0),
            Self::PingResp => wire::put_header(out, 0xD0, 0),
            Self::Disconnect(p) => p.write(version, sizes, out),
            Self::Auth(p) => p.write(version, sizes, out),
        }
        debug_assert_eq!(out.len() - start, total);
    }
}

/// The properties a sender leaves out to respect the receiver's Maximum Packet Size, in order.
#[derive(Debug, Clone, Copy)]
enum Diagnostic {
    ReasonString,
    UserProperties,
}

/// Reads a packet identifier that must not be 0 [MQTT-2.2.1-3] (3.1.1: [MQTT-2.3.1-1]).
pub(crate) fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::protocol(
            "MQTT-2.2.1-3",
            "packet identifier is 0",
        ));
    }
    Ok(id)
}
