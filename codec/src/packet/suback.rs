//! SUBACK (section 3.9): one reason code per requested subscription.

use bytes::{BufMut, BytesMut};

use crate::packet::Sizes;
use crate::packet::puback::AckProperties;
use crate::properties as props;
use crate::reason::SUBACK_CODES;
use crate::wire::{self, Reader};
use crate::{DecodeError, EncodeError, ProtocolVersion, ReasonCode};

/// A SUBACK packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// One per subscription, in order: granted QoS 0..=2 or a failure. 3.1.1 return codes
    /// 0, 1, 2 and 0x80 are the same bytes as the reason codes.
    pub reasons: Vec<ReasonCode>,
    /// The properties (5.0).
    pub properties: AckProperties,
}

impl SubAck {
    /// A SUBACK with these reason codes and no properties.
    pub fn new(packet_id: u16, reasons: Vec<ReasonCode>) -> Self {
        Self {
            packet_id,
            reasons,
            properties: AckProperties::default(),
        }
    }

    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = r.u16()?;
        let properties = if version.is_v5() {
            AckProperties::read(&mut r)?
        } else {
            AckProperties::default()
        };
        let allowed: &[u8] = match version {
            ProtocolVersion::V5 => SUBACK_CODES,
            // [MQTT-3.9.3-2] (3.1.1) return codes other than 0x00, 0x01, 0x02, 0x80 are reserved.
            ProtocolVersion::V3_1_1 => &[0x00, 0x01, 0x02, 0x80],
            // 3.1 has no failure return code.
            ProtocolVersion::V3_1 => &[0x00, 0x01, 0x02],
        };
        let mut reasons = Vec::with_capacity(r.remaining());
        while !r.is_empty() {
            let code = r.u8()?;
            if !allowed.contains(&code) {
                return Err(DecodeError::protocol(
                    "MQTT-3.9.3-2",
                    "reason code not valid for suback",
                ));
            }
            reasons.push(ReasonCode(code));
        }
        if reasons.is_empty() {
            // [MQTT-3.8.4-6] one reason code per topic filter, so at least one.
            return Err(DecodeError::protocol(
                "MQTT-3.8.4-6",
                "suback without a reason code",
            ));
        }
        Ok(Self {
            packet_id,
            reasons,
            properties,
        })
    }

    pub(crate) fn sizes(&self, version: ProtocolVersion) -> Result<Sizes, EncodeError> {
        let mut remaining = 2 + self.reasons.len();
        let mut p = 0;
        match version {
            ProtocolVersion::V5 => {
                p = self.properties.size()?;
                remaining += props::block_len(p);
            }
            ProtocolVersion::V3_1 if self.reasons.iter().any(|r| r.is_error()) => {
                return Err(EncodeError::SubAckFailureInV3_1);
            }
            _ => {}
        }
        Ok(Sizes {
            remaining,
            props: p,
            will_props: 0,
        })
    }

    pub(crate) fn write(&self, version: ProtocolVersion, s: &Sizes, out: &mut BytesMut) {
        wire::put_header(out, 0x90, s.remaining);
        out.put_u16(self.packet_id);
        if version.is_v5() {
            self.properties.write(s.props, out);
            for r in &self.reasons {
                out.put_u8(r.0);
            }
        } else {
            for r in &self.reasons {
                out.put_u8(r.to_v3_suback());
            }
        }
    }
}
