//! DISCONNECT (section 3.14): the last packet of a connection; both ways in 5.0, client to
//! server before.

use bytes::{BufMut, BytesMut};

use crate::packet::Sizes;
use crate::properties::{self as props, Properties, Value};
use crate::reason::{DISCONNECT_CODES_FROM_CLIENT, DISCONNECT_CODES_FROM_SERVER};
use crate::wire::{self, Reader};
use crate::{DecodeError, Direction, EncodeError, MqttString, ProtocolVersion, ReasonCode};

/// A DISCONNECT packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// The reason code (5.0); `NORMAL_DISCONNECTION` when left out and before 5.0.
    pub reason: ReasonCode,
    /// The properties (5.0).
    pub properties: DisconnectProperties,
}

/// The properties of DISCONNECT (3.14.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    /// Session Expiry Interval (0x11); never sent by a server [MQTT-3.14.2-2].
    pub session_expiry_interval: Option<u32>,
    /// Reason String (0x1F).
    pub reason_string: Option<MqttString>,
    /// User Property (0x26), in order.
    pub user_properties: Vec<(MqttString, MqttString)>,
    /// Server Reference (0x1C).
    pub server_reference: Option<MqttString>,
}

impl DisconnectProperties {
    fn is_empty(&self) -> bool {
        self.session_expiry_interval.is_none()
            && self.reason_string.is_none()
            && self.user_properties.is_empty()
            && self.server_reference.is_none()
    }

    fn read(r: &mut Reader, dir: Direction) -> Result<Self, DecodeError> {
        let mut p = Properties::read(r, props::DISCONNECT)?;
        let mut out = Self::default();
        while let Some((id, v)) = p.next()? {
            match (id, v) {
                (props::SESSION_EXPIRY_INTERVAL, Value::U32(v)) => {
                    // [MQTT-3.14.2-2] a server never sends the Session Expiry Interval here.
                    if dir == Direction::ToClient {
                        return Err(DecodeError::protocol(
                            "MQTT-3.14.2-2",
                            "session expiry interval in a disconnect sent by the server",
                        ));
                    }
                    out.session_expiry_interval = Some(v);
                }
                (props::REASON_STRING, Value::Str(s)) => out.reason_string = Some(s),
                (props::USER_PROPERTY, Value::Pair(k, v)) => out.user_properties.push((k, v)),
                (props::SERVER_REFERENCE, Value::Str(s)) => out.server_reference = Some(s),
                _ => return Err(props::WRONG_TYPE),
            }
        }
        Ok(out)
    }

    fn size(&self) -> Result<usize, EncodeError> {
        let mut s = props::Size::default();
        s.u32(self.session_expiry_interval);
        s.string(self.reason_string.as_ref())?;
        s.user(&self.user_properties)?;
        s.string(self.server_reference.as_ref())?;
        Ok(s.0)
    }

    fn write(&self, len: usize, out: &mut BytesMut) {
        wire::put_varint(out, len);
        props::put_u32(
            out,
            props::SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval,
        );
        props::put_string(out, props::REASON_STRING, self.reason_string.as_ref());
        props::put_user(out, &self.user_properties);
        props::put_string(out, props::SERVER_REFERENCE, self.server_reference.as_ref());
    }
}

impl Disconnect {
    /// A DISCONNECT with this reason code and no properties.
    pub fn new(reason: ReasonCode) -> Self {
        Self {
            reason,
            properties: DisconnectProperties::default(),
        }
    }

    pub(crate) fn decode(
        mut r: Reader,
        version: ProtocolVersion,
        dir: Direction,
    ) -> Result<Self, DecodeError> {
        if !version.is_v5() {
            // 3.1.1: the remaining length is 0.
            r.finish("3.14.1")?;
            return Ok(Self::default());
        }
        // [3.14.2.1] remaining length 0 means Normal disconnection without properties.
        if r.is_empty() {
            return Ok(Self::default());
        }
        let code = r.u8()?;
        // [MQTT-3.14.2-1] one of the DISCONNECT reason codes its sender may use.
        let allowed = match dir {
            Direction::ToServer => DISCONNECT_CODES_FROM_CLIENT,
            Direction::ToClient => DISCONNECT_CODES_FROM_SERVER,
        };
        if !allowed.contains(&code) {
            return Err(DecodeError::protocol(
                "MQTT-3.14.2-1",
                "reason code not valid for disconnect",
            ));
        }
        let properties = if r.is_empty() {
            DisconnectProperties::default()
        } else {
            DisconnectProperties::read(&mut r, dir)?
        };
        r.finish("3.14.2")?;
        Ok(Self {
            reason: ReasonCode(code),
            properties,
        })
    }

    pub(crate) fn sizes(&self, version: ProtocolVersion) -> Result<Sizes, EncodeError> {
        if !version.is_v5() {
            return Ok(Sizes::default());
        }
        if self.properties.is_empty() {
            let remaining = usize::from(self.reason != ReasonCode::NORMAL_DISCONNECTION);
            return Ok(Sizes {
                remaining,
                ..Sizes::default()
            });
        }
        let p = self.properties.size()?;
        Ok(Sizes {
            remaining: 1 + props::block_len(p),
            props: p,
            will_props: 0,
        })
    }

    pub(crate) fn write(&self, _version: ProtocolVersion, s: &Sizes, out: &mut BytesMut) {
        wire::put_header(out, 0xE0, s.remaining);
        if s.remaining >= 1 {
            out.put_u8(self.reason.0);
        }
        if s.remaining >= 2 {
            self.properties.write(s.props, out);
        }
    }
}
