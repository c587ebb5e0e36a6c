//! [`Decoder`]: framing (fixed header, remaining length, maximum packet size) and dispatch to
//! the packet parsers, aware of direction and protocol version.

use bytes::{Buf, BytesMut};

use crate::packet::{Packet, PacketType};
use crate::wire::{self, Reader, VarInt};
use crate::{DecodeError, Direction, ProtocolVersion, ReasonCode};

/// Decodes packets from a byte stream, one call per packet.
///
/// A server makes one with [`Decoder::new`]`(Direction::ToServer, max)`: the first packet must
/// be CONNECT [MQTT-3.1.0-1], whose protocol level fixes the version for the packets after it,
/// and a second CONNECT is a protocol error [MQTT-3.1.0-2]. A client knows its version and uses
/// [`Decoder::with_version`]`(Direction::ToClient, version, max)`.
#[derive(Debug, Clone)]
pub struct Decoder {
    direction: Direction,
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
    connect_seen: bool,
}

impl Decoder {
    /// A decoder whose protocol version is not known yet (a server before CONNECT).
    pub fn new(direction: Direction, max_packet_size: u32) -> Self {
        Self {
            direction,
            version: None,
            max_packet_size,
            connect_seen: false,
        }
    }

    /// A decoder for a known protocol version.
    pub fn with_version(
        direction: Direction,
        version: ProtocolVersion,
        max_packet_size: u32,
    ) -> Self {
        Self {
            direction,
            version: Some(version),
            max_packet_size,
            connect_seen: false,
        }
    }

    /// The protocol version, once known.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// The direction this decoder reads.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The largest packet accepted, in bytes, fixed header included.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Changes the largest packet accepted (e.g. after CONNECT's Maximum Packet Size).
    pub fn set_max_packet_size(&mut self, n: u32) {
        self.max_packet_size = n;
    }

    /// Decodes the next packet from the front of `buf`.
    ///
    /// `Ok(None)`: more bytes are needed and nothing was consumed (when the fixed header is
    /// complete, `buf` has reserved room for the whole packet). `Err`: the bytes are malformed or
    /// break the protocol; the error carries the reason code to send and the connection must
    /// close. The packet size is checked against the maximum as soon as the fixed header is
    /// complete, before the body is buffered (0x95). Strings, binary data and payloads are
    /// slices of `buf`'s memory, not copies.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let (ty, flags, version) = self.check_first_byte(first)?;
        let (remaining, len_bytes) = match wire::parse_varint(&buf[1..])? {
            VarInt::Value(v, n) => (v as usize, n),
            VarInt::Incomplete => return Ok(None),
        };
        let total = 1 + len_bytes + remaining;
        if total > self.max_packet_size as usize {
            return Err(DecodeError::new(
                ReasonCode::PACKET_TOO_LARGE,
                // [MQTT-3.2.2-15] a client respects the server's limit; [MQTT-3.1.2-24] the
                // server respects the client's.
                match self.direction {
                    Direction::ToServer => "MQTT-3.2.2-15",
                    Direction::ToClient => "MQTT-3.1.2-24",
                },
                "packet exceeds the maximum packet size",
            ));
        }
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(total).freeze();
        frame.advance(1 + len_bytes);
        let packet = Packet::decode_body(ty, flags, Reader::new(frame), version, self.direction)
            .map_err(|e| e.for_version(version))?;
        if let Packet::Connect(c) = &packet {
            self.version = Some(c.protocol);
            self.connect_seen = true;
        }
        Ok(Some(packet))
    }

    /// Checks the packet type and flags of the first byte against the version and direction.
    fn check_first_byte(
        &self,
        first: u8,
    ) -> Result<(PacketType, u8, ProtocolVersion), DecodeError> {
        let flags = first & 0x0F;
        let ty = PacketType::from_nibble(first >> 4);
        let version = match (self.version, ty) {
            (_, Some(PacketType::Connect)) if self.direction == Direction::ToServer => {
                // [MQTT-3.1.0-2] a second CONNECT is a protocol error.
                if self.connect_seen {
                    return Err(DecodeError::protocol(
                        "MQTT-3.1.0-2",
                        "second connect on a connection",
                    ));
                }
                // The level is read from the packet; this placeholder is not used for CONNECT.
                self.version.unwrap_or(ProtocolVersion::V5)
            }
            (Some(v), _) => v,
            (None, _) if self.direction == Direction::ToServer => {
                // [MQTT-3.1.0-1] the first packet from a client is CONNECT.
                return Err(DecodeError::protocol(
                    "MQTT-3.1.0-1",
                    "first packet is not connect",
                ));
            }
            (None, _) => {
                return Err(DecodeError::protocol(
                    "3.1",
                    "protocol version unknown: a client decoder needs with_version",
                ));
            }
        };
        let ty = match ty {
            Some(PacketType::Auth) if !version.is_v5() => None,
            t => t,
        };
        let Some(ty) = ty else {
            return Err(DecodeError::malformed(
                "2.1.2",
                "reserved control packet type",
            ));
        };
        // [MQTT-2.1.3-1] (3.1.1: [MQTT-2.2.2-1]) reserved flag bits have the listed values;
        // [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1] 0b0010 for PUBREL, SUBSCRIBE,
        // UNSUBSCRIBE; [MQTT-3.14.1-1], [MQTT-3.15.1-1] 0 for DISCONNECT and AUTH.
        if ty != PacketType::Publish && flags != ty.fixed_flags() {
            let rule = match ty {
                PacketType::PubRel => "MQTT-3.6.1-1",
                PacketType::Subscribe => "MQTT-3.8.1-1",
                PacketType::Unsubscribe => "MQTT-3.10.1-1",
                PacketType::Disconnect if version.is_v5() => "MQTT-3.14.1-1",
                PacketType::Auth => "MQTT-3.15.1-1",
                _ if version.is_v5() => "MQTT-2.1.3-1",
                _ => "MQTT-2.2.2-1",
            };
            return Err(DecodeError::malformed(
                rule,
                "fixed header flags are not the reserved values",
            ));
        }
        if let Some(only) = ty.only_direction(version) {
            if only != self.direction {
                return Err(DecodeError::protocol(
                    "2.1.2",
                    "packet type not allowed in this direction",
                ));
            }
        }
        Ok((ty, flags, version))
    }
}
