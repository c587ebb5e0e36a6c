//! PUBACK (section 3.4), and the acknowledgement layout PUBREC, PUBREL and PUBCOMP share with it:
//! a packet identifier, then in 5.0 a reason code and properties that may both be left out.

use bytes::{BufMut, BytesMut};

use crate::packet::{PacketType, Sizes};
use crate::properties::{self as props, Properties, Value};
use crate::reason::PUBACK_CODES;
use crate::wire::{self, Reader};
use crate::{DecodeError, EncodeError, MqttString, ProtocolVersion, ReasonCode};

/// The properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckProperties {
    /// Reason String (0x1F).
    pub reason_string: Option<MqttString>,
    /// User Property (0x26), in order.
    pub user_properties: Vec<(MqttString, MqttString)>,
}

impl AckProperties {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }

    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Properties::read(r, props::ACK)?;
        let mut out = Self::default();
        while let Some((id, v)) = p.next()? {
            match (id, v) {
                (props::REASON_STRING, Value::Str(s)) => out.reason_string = Some(s),
                (props::USER_PROPERTY, Value::Pair(k, v)) => out.user_properties.push((k, v)),
                _ => return Err(props::WRONG_TYPE),
            }
        }
        Ok(out)
    }

    pub(crate) fn size(&self) -> Result<usize, EncodeError> {
        let mut s = props::Size::default();
        s.string(self.reason_string.as_ref())?;
        s.user(&self.user_properties)?;
        Ok(s.0)
    }

    pub(crate) fn write(&self, len: usize, out: &mut BytesMut) {
        wire::put_varint(out, len);
        props::put_string(out, props::REASON_STRING, self.reason_string.as_ref());
        props::put_user(out, &self.user_properties);
    }
}

/// The fields every acknowledgement of a publication carries.
pub(crate) struct AckParts {
    pub(crate) packet_id: u16,
    pub(crate) reason: ReasonCode,
    pub(crate) properties: AckProperties,
}

/// Decodes the body of PUBACK, PUBREC, PUBREL or PUBCOMP.
pub(crate) fn decode_ack(
    mut r: Reader,
    version: ProtocolVersion,
    codes: &[u8],
    section: &'static str,
) -> Result<AckParts, DecodeError> {
    let packet_id = r.u16()?;
    let mut parts = AckParts {
        packet_id,
        reason: ReasonCode::SUCCESS,
        properties: AckProperties::default(),
    };
    if !version.is_v5() {
        // The 3.1.1 acknowledgements are exactly a packet identifier.
        r.finish(section)?;
        return Ok(parts);
    }
    // [3.4.2.1] the reason code and property length can be left out: remaining length 2 means
    // success without properties, 3 means no properties.
    if r.is_empty() {
        return Ok(parts);
    }
    let code = r.u8()?;
    if !codes.contains(&code) {
        return Err(DecodeError::protocol(
            section,
            "reason code not valid for this packet",
        ));
    }
    parts.reason = ReasonCode(code);
    if !r.is_empty() {
        parts.properties = AckProperties::read(&mut r)?;
    }
    r.finish(section)?;
    Ok(parts)
}

/// Sizes an acknowledgement; `props` is the property block's content length.
pub(crate) fn ack_sizes(
    reason: ReasonCode,
    properties: &AckProperties,
    version: ProtocolVersion,
) -> Result<Sizes, EncodeError> {
    if !version.is_v5() {
        return Ok(Sizes {
            remaining: 2,
            ..Sizes::default()
        });
    }
    let p = properties.size()?;
    let remaining = if p > 0 {
        3 + props::block_len(p)
    } else if reason != ReasonCode::SUCCESS {
        3
    } else {
        2
    };
    Ok(Sizes {
        remaining,
        props: p,
        will_props: 0,
    })
}

/// Writes an acknowledgement sized by [`ack_sizes`].
pub(crate) fn ack_write(
    ty: PacketType,
    packet_id: u16,
    reason: ReasonCode,
    properties: &AckProperties,
    s: &Sizes,
    out: &mut BytesMut,
) {
    wire::put_header(out, ((ty as u8) << 4) | ty.fixed_flags(), s.remaining);
    out.put_u16(packet_id);
    if s.remaining >= 3 {
        out.put_u8(reason.0);
    }
    if s.remaining >= 4 {
        properties.write(s.props, out);
    }
}

/// Declares one of the four acknowledgements of a publication.
macro_rules! ack_packet {
    ($(#[$doc:meta])* $name:ident, $ty:expr, $codes:expr, $section:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            /// The packet identifier of the publication being acknowledged.
            pub packet_id: u16,
            /// The reason code (5.0); `SUCCESS` when left out and always before 5.0.
            pub reason: $crate::ReasonCode,
            /// The properties (5.0).
            pub properties: $crate::packet::puback::AckProperties,
        }

        impl $name {
            /// A successful acknowledgement without properties.
            pub fn new(packet_id: u16) -> Self {
                Self {
                    packet_id,
                    reason: $crate::ReasonCode::SUCCESS,
                    properties: Default::default(),
                }
            }

            pub(crate) fn decode(
                r: $crate::wire::Reader,
                version: $crate::ProtocolVersion,
            ) -> Result<Self, $crate::DecodeError> {
                let p = $crate::packet::puback::decode_ack(r, version, $codes, $section)?;
                Ok(Self {
                    packet_id: p.packet_id,
                    reason: p.reason,
                    properties: p.properties,
                })
            }

            pub(crate) fn sizes(
                &self,
                version: $crate::ProtocolVersion,
            ) -> Result<$crate::packet::Sizes, $crate::EncodeError> {
                $crate::packet::puback::ack_sizes(self.reason, &self.properties, version)
            }

            pub(crate) fn write(
                &self,
                _version: $crate::ProtocolVersion,
                s: &$crate::packet::Sizes,
                out: &mut bytes::BytesMut,
            ) {
                $crate::packet::puback::ack_write(
                    $ty,
                    self.packet_id,
                    self.reason,
                    &self.properties,
                    s,
                    out,
                );
            }
        }
    };
}
pub(crate) use ack_packet;

ack_packet!(
    /// PUBACK: the response to a QoS 1 PUBLISH (section 3.4).
    PubAck,
    PacketType::PubAck,
    PUBACK_CODES,
    "MQTT-3.4.2-1"
);
