//! UNSUBACK (section 3.11): in 5.0, one reason code per topic filter; before, only the id.

use bytes::{BufMut, BytesMut};

use crate::packet::Sizes;
use crate::packet::puback::AckProperties;
use crate::properties as props;
use crate::reason::UNSUBACK_CODES;
use crate::wire::{self, Reader};
use crate::{DecodeError, EncodeError, ProtocolVersion, ReasonCode};

/// An UNSUBACK packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// The packet identifier of the UNSUBSCRIBE.
    pub packet_id: u16,
    /// One per topic filter (5.0); empty before 5.0, which has no reason codes here.
    pub reasons: Vec<ReasonCode>,
    /// The properties (5.0).
    pub properties: AckProperties,
}

impl UnsubAck {
    /// An UNSUBACK with these reason codes and no properties.
    pub fn new(packet_id: u16, reasons: Vec<ReasonCode>) -> Self {
        Self {
            packet_id,
            reasons,
            properties: AckProperties::default(),
        }
    }

    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = r.u16()?;
        if !version.is_v5() {
            // 3.1.1: the remaining length is 2.
            r.finish("3.11.1")?;
            return Ok(Self::new(packet_id, Vec::new()));
        }
        let properties = AckProperties::read(&mut r)?;
        let mut reasons = Vec::with_capacity(r.remaining());
        while !r.is_empty() {
            let code = r.u8()?;
            if !UNSUBACK_CODES.contains(&code) {
                return Err(DecodeError::protocol(
                    "MQTT-3.11.3-2",
                    "reason code not valid for unsuback",
                ));
            }
            reasons.push(ReasonCode(code));
        }
        if reasons.is_empty() {
            return Err(DecodeError::protocol(
                "3.11.3",
                "unsuback without a reason code",
            ));
        }
        Ok(Self {
            packet_id,
            reasons,
            properties,
        })
    }

    pub(crate) fn sizes(&self, version: ProtocolVersion) -> Result<Sizes, EncodeError> {
        if !version.is_v5() {
            return Ok(Sizes {
                remaining: 2,
                ..Sizes::default()
            });
        }
        let p = self.properties.size()?;
        Ok(Sizes {
            remaining: 2 + props::block_len(p) + self.reasons.len(),
            props: p,
            will_props: 0,
        })
    }

    pub(crate) fn write(&self, version: ProtocolVersion, s: &Sizes, out: &mut BytesMut) {
        wire::put_header(out, 0xB0, s.remaining);
        out.put_u16(self.packet_id);
        if version.is_v5() {
            self.properties.write(s.props, out);
            for r in &self.reasons {
                out.put_u8(r.0);
            }
        }
    }
}
