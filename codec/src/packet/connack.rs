//! CONNACK (section 3.2): the server's answer to CONNECT.

use bytes::{BufMut, Bytes, BytesMut};

use crate::packet::Sizes;
use crate::properties::{self as props, Properties, Value};
use crate::reason::CONNACK_CODES;
use crate::wire::{self, Reader};
use crate::{DecodeError, EncodeError, MqttString, ProtocolVersion, ReasonCode};

/// A CONNACK packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present (never set in 3.1, which has no such flag).
    pub session_present: bool,
    /// The reason code; 3.1.1 return codes are decoded with [`ReasonCode::from_v3_connack`] and
    /// encoded with [`ReasonCode::to_v3_connack`].
    pub reason: ReasonCode,
    /// The properties (5.0).
    pub properties: ConnAckProperties,
}

/// The properties of CONNACK (3.2.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    /// Session Expiry Interval (0x11).
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum (0x21), never 0.
    pub receive_maximum: Option<u16>,
    /// Maximum QoS (0x24), 0 or 1.
    pub maximum_qos: Option<u8>,
    /// Retain Available (0x25), 0 or 1.
    pub retain_available: Option<u8>,
    /// Maximum Packet Size (0x27), never 0.
    pub maximum_packet_size: Option<u32>,
    /// Assigned Client Identifier (0x12).
    pub assigned_client_identifier: Option<MqttString>,
    /// Topic Alias Maximum (0x22).
    pub topic_alias_maximum: Option<u16>,
    /// Reason String (0x1F).
    pub reason_string: Option<MqttString>,
    /// User Property (0x26), in order.
    pub user_properties: Vec<(MqttString, MqttString)>,
    /// Wildcard Subscription Available (0x28), 0 or 1.
    pub wildcard_subscription_available: Option<u8>,
    /// Subscription Identifiers Available (0x29), 0 or 1.
    pub subscription_identifiers_available: Option<u8>,
    /// Shared Subscription Available (0x2A), 0 or 1.
    pub shared_subscription_available: Option<u8>,
    /// Server Keep Alive (0x13).
    pub server_keep_alive: Option<u16>,
    /// Response Information (0x1A).
    pub response_information: Option<MqttString>,
    /// Server Reference (0x1C).
    pub server_reference: Option<MqttString>,
    /// Authentication Method (0x15).
    pub authentication_method: Option<MqttString>,
    /// Authentication Data (0x16).
    pub authentication_data: Option<Bytes>,
}

impl ConnAckProperties {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Properties::read(r, props::CONNACK)?;
        let mut out = Self::default();
        while let Some((id, v)) = p.next()? {
            match (id, v) {
                (props::SESSION_EXPIRY_INTERVAL, Value::U32(v)) => {
                    out.session_expiry_interval = Some(v);
                }
                (props::RECEIVE_MAXIMUM, Value::U16(v)) => {
                    // [3.2.2.3.3] a Receive Maximum of 0 is a protocol error.
                    if v == 0 {
                        return Err(DecodeError::protocol("3.2.2.3.3", "receive maximum is 0"));
                    }
                    out.receive_maximum = Some(v);
                }
                (props::MAXIMUM_QOS, Value::Byte(b)) => {
                    out.maximum_qos = Some(props::flag(
                        b,
                        "3.2.2.3.4",
                        "maximum qos other than 0 or 1",
                    )?);
                }
                (props::RETAIN_AVAILABLE, Value::Byte(b)) => {
                    out.retain_available = Some(props::flag(
                        b,
                        "3.2.2.3.5",
                        "retain available other than 0 or 1",
                    )?);
                }
                (props::MAXIMUM_PACKET_SIZE, Value::U32(v)) => {
                    // [3.2.2.3.6] a Maximum Packet Size of 0 is a protocol error.
                    if v == 0 {
                        return Err(DecodeError::protocol(
                            "3.2.2.3.6",
                            "maximum packet size is 0",
                        ));
                    }
                    out.maximum_packet_size = Some(v);
                }
                (props::ASSIGNED_CLIENT_IDENTIFIER, Value::Str(s)) => {
                    out.assigned_client_identifier = Some(s);
                }
                (props::TOPIC_ALIAS_MAXIMUM, Value::U16(v)) => out.topic_alias_maximum = Some(v),
                (props::REASON_STRING, Value::Str(s)) => out.reason_string = Some(s),
                (props::USER_PROPERTY, Value::Pair(k, v)) => out.user_properties.push((k, v)),
                (props::WILDCARD_SUBSCRIPTION_AVAILABLE, Value::Byte(b)) => {
                    out.wildcard_subscription_available = Some(props::flag(
                        b,
                        "3.2.2.3.11",
                        "wildcard subscription available other than 0 or 1",
                    )?);
                }
                (props::SUBSCRIPTION_IDENTIFIER_AVAILABLE, Value::Byte(b)) => {
                    out.subscription_identifiers_available = Some(props::flag(
                        b,
                        "3.2.2.3.12",
                        "subscription identifiers available other than 0 or 1",
                    )?);
                }
                (props::SHARED_SUBSCRIPTION_AVAILABLE, Value::Byte(b)) => {
                    out.shared_subscription_available = Some(props::flag(
                        b,
                        "3.2.2.3.13",
                        "shared subscription available other than 0 or 1",
                    )?);
                }
                (props::SERVER_KEEP_ALIVE, Value::U16(v)) => out.server_keep_alive = Some(v),
                (props::RESPONSE_INFORMATION, Value::Str(s)) => {
                    out.response_information = Some(s);
                }
                (props::SERVER_REFERENCE, Value::Str(s)) => out.server_reference = Some(s),
                (props::AUTHENTICATION_METHOD, Value::Str(s)) => {
                    out.authentication_method = Some(s);
                }
                (props::AUTHENTICATION_DATA, Value::Bin(b)) => out.authentication_data = Some(b),
                _ => return Err(props::WRONG_TYPE),
            }
        }
        Ok(out)
    }

    fn size(&self) -> Result<usize, EncodeError> {
        let mut s = props::Size::default();
        s.u32(self.session_expiry_interval);
        s.u16(self.receive_maximum);
        s.byte(self.maximum_qos);
        s.byte(self.retain_available);
        s.u32(self.maximum_packet_size);
        s.string(self.assigned_client_identifier.as_ref())?;
        s.u16(self.topic_alias_maximum);
        s.string(self.reason_string.as_ref())?;
        s.user(&self.user_properties)?;
        s.byte(self.wildcard_subscription_available);
        s.byte(self.subscription_identifiers_available);
        s.byte(self.shared_subscription_available);
        s.u16(self.server_keep_alive);
        s.string(self.response_information.as_ref())?;
        s.string(self.server_reference.as_ref())?;
        s.string(self.authentication_method.as_ref())?;
        s.binary(self.authentication_data.as_ref())?;
        Ok(s.0)
    }

    fn write(&self, len: usize, out: &mut BytesMut) {
        wire::put_varint(out, len);
        props::put_u32(
            out,
            props::SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval,
        );
        props::put_u16(out, props::RECEIVE_MAXIMUM, self.receive_maximum);
        props::put_byte(out, props::MAXIMUM_QOS, self.maximum_qos);
        props::put_byte(out, props::RETAIN_AVAILABLE, self.retain_available);
        props::put_u32(out, props::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        props::put_string(
            out,
            props::ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_ref(),
        );
        props::put_u16(out, props::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        props::put_string(out, props::REASON_STRING, self.reason_string.as_ref());
        props::put_user(out, &self.user_properties);
        props::put_byte(
            out,
            props::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        props::put_byte(
            out,
            props::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        props::put_byte(
            out,
            props::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        props::put_u16(out, props::SERVER_KEEP_ALIVE, self.server_keep_alive);
        props::put_string(
            out,
            props::RESPONSE_INFORMATION,
            self.response_information.as_ref(),
        );
        props::put_string(out, props::SERVER_REFERENCE, self.server_reference.as_ref());
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
    }
}

impl ConnAck {
    /// A CONNACK with this reason code, no session and no properties.
    pub fn new(reason: ReasonCode) -> Self {
        Self {
            session_present: false,
            reason,
            properties: ConnAckProperties::default(),
        }
    }

    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let flags = r.u8()?;
        let code = r.u8()?;
        let session_present = match version {
            // 3.1 has no Session Present flag: the first byte is reserved and not used.
            ProtocolVersion::V3_1 => false,
            _ => {
                // [MQTT-3.2.2-1] bits 7-1 of the acknowledge flags are reserved, 0.
                if flags & 0xFE != 0 {
                    return Err(DecodeError::malformed(
                        "MQTT-3.2.2-1",
                        "connack reserved flags are set",
                    ));
                }
                flags & 1 != 0
            }
        };
        let reason = if version.is_v5() {
            if !CONNACK_CODES.contains(&code) {
                return Err(DecodeError::protocol(
                    "MQTT-3.2.2-8",
                    "reason code not valid for connack",
                ));
            }
            ReasonCode(code)
        } else {
            match ReasonCode::from_v3_connack(code) {
                Some(r) => r,
                None => {
                    return Err(DecodeError::protocol(
                        "3.2.2.3",
                        "connack return code is reserved",
                    ));
                }
            }
        };
        // [MQTT-3.2.2-6] a refused connection has no session.
        if session_present && reason.is_error() {
            return Err(DecodeError::protocol(
                "MQTT-3.2.2-6",
                "session present with a refusing connack",
            ));
        }
        let properties = if version.is_v5() {
            ConnAckProperties::read(&mut r)?
        } else {
            ConnAckProperties::default()
        };
        r.finish("3.2")?;
        Ok(Self {
            session_present,
            reason,
            properties,
        })
    }

    pub(crate) fn sizes(&self, version: ProtocolVersion) -> Result<Sizes, EncodeError> {
        if version.is_v5() {
            let p = self.properties.size()?;
            Ok(Sizes {
                remaining: 2 + props::block_len(p),
                props: p,
                will_props: 0,
            })
        } else {
            Ok(Sizes {
                remaining: 2,
                ..Sizes::default()
            })
        }
    }

    pub(crate) fn write(&self, version: ProtocolVersion, s: &Sizes, out: &mut BytesMut) {
        wire::put_header(out, 0x20, s.remaining);
        let flags = u8::from(self.session_present && version != ProtocolVersion::V3_1);
        out.put_u8(flags);
        if version.is_v5() {
            out.put_u8(self.reason.0);
            self.properties.write(s.props, out);
        } else {
            out.put_u8(self.reason.to_v3_connack());
        }
    }
}
