//! AUTH (section 3.15, 5.0 only): extended authentication and re-authentication.

use bytes::{BufMut, Bytes, BytesMut};

use crate::packet::Sizes;
use crate::properties::{self as props, Properties, Value};
use crate::reason::{AUTH_CODES_FROM_CLIENT, AUTH_CODES_FROM_SERVER};
use crate::wire::{self, Reader};
use crate::{DecodeError, Direction, EncodeError, MqttString, ProtocolVersion, ReasonCode};

/// An AUTH packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// 0x00 success, 0x18 continue authentication or 0x19 re-authenticate.
    pub reason: ReasonCode,
    /// The properties.
    pub properties: AuthProperties,
}

/// The properties of AUTH (3.15.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthProperties {
    /// Authentication Method (0x15).
    pub authentication_method: Option<MqttString>,
    /// Authentication Data (0x16).
    pub authentication_data: Option<Bytes>,
    /// Reason String (0x1F).
    pub reason_string: Option<MqttString>,
    /// User Property (0x26), in order.
    pub user_properties: Vec<(MqttString, MqttString)>,
}

impl AuthProperties {
    fn is_empty(&self) -> bool {
        self.authentication_method.is_none()
            && self.authentication_data.is_none()
            && self.reason_string.is_none()
            && self.user_properties.is_empty()
    }

    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Properties::read(r, props::AUTH)?;
        let mut out = Self::default();
        while let Some((id, v)) = p.next()? {
            match (id, v) {
                (props::AUTHENTICATION_METHOD, Value::Str(s)) => {
                    out.authentication_method = Some(s);
                }
                (props::AUTHENTICATION_DATA, Value::Bin(b)) => out.authentication_data = Some(b),
                (props::REASON_STRING, Value::Str(s)) => out.reason_string = Some(s),
                (props::USER_PROPERTY, Value::Pair(k, v)) => out.user_properties.push((k, v)),
                _ => return Err(props::WRONG_TYPE),
            }
        }
        Ok(out)
    }

    fn size(&self) -> Result<usize, EncodeError> {
        let mut s = props::Size::default();
        s.string(self.authentication_method.as_ref())?;
        s.binary(self.authentication_data.as_ref())?;
        s.string(self.reason_string.as_ref())?;
        s.user(&self.user_properties)?;
        Ok(s.0)
    }

    fn write(&self, len: usize, out: &mut BytesMut) {
        wire::put_varint(out, len);
        props::put_string(
            out,
            props::AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
        );
        props::put_binary(
            out,
            props::AUTHENTICATION_DATA,
            self.authentication_data.as_ref(),
        );
        props::put_string(out, props::REASON_STRING, self.reason_string.as_ref());
        props::put_user(out, &self.user_properties);
    }
}

impl Auth {
    pub(crate) fn decode(mut r: Reader, dir: Direction) -> Result<Self, DecodeError> {
        // [MQTT-3.15.2-1] a client sends Continue authentication or Re-authenticate, a server
        // Success or Continue authentication (3.15.2.1).
        let allowed = match dir {
            Direction::ToServer => AUTH_CODES_FROM_CLIENT,
            Direction::ToClient => AUTH_CODES_FROM_SERVER,
        };
        // [3.15.2.1] remaining length 0 means Success without properties.
        let code = if r.is_empty() { 0 } else { r.u8()? };
        if !allowed.contains(&code) {
            return Err(DecodeError::protocol(
                "MQTT-3.15.2-1",
                "reason code not valid for auth",
            ));
        }
        if r.is_empty() && code == 0 {
            return Ok(Self::default());
        }
        let properties = if r.is_empty() {
            AuthProperties::default()
        } else {
            AuthProperties::read(&mut r)?
        };
        r.finish("3.15.2")?;
        Ok(Self {
            reason: ReasonCode(code),
            properties,
        })
    }

    pub(crate) fn sizes(&self, version: ProtocolVersion) -> Result<Sizes, EncodeError> {
        if !version.is_v5() {
            return Err(EncodeError::NotInVersion {
                packet: "AUTH",
                version: if version == ProtocolVersion::V3_1 {
                    "3.1"
                } else {
                    "3.1.1"
                },
            });
        }
        if self.reason == ReasonCode::SUCCESS && self.properties.is_empty() {
            return Ok(Sizes::default());
        }
        let p = self.properties.size()?;
        Ok(Sizes {
            remaining: 1 + props::block_len(p),
            props: p,
            will_props: 0,
        })
    }

    pub(crate) fn write(&self, _version: ProtocolVersion, s: &Sizes, out: &mut BytesMut) {
        wire::put_header(out, 0xF0, s.remaining);
        if s.remaining > 0 {
            out.put_u8(self.reason.0);
            self.properties.write(s.props, out);
        }
    }
}
