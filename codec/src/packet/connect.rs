//! CONNECT (section 3.1): the first packet a client sends; it fixes the protocol version.

use bytes::{BufMut, Bytes, BytesMut};

use crate::packet::Sizes;
use crate::properties::{self as props, Properties, Value};
use crate::topic;
use crate::wire::{self, Reader};
use crate::{DecodeError, EncodeError, MqttString, ProtocolVersion, QoS, ReasonCode};

/// A CONNECT packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol the client speaks (from the protocol name and level). When encoding, the
    /// `version` argument of [`crate::Packet::encode`] decides the name and level written.
    pub protocol: ProtocolVersion,
    /// Clean Start (5.0) or Clean Session (3.1.1).
    pub clean_start: bool,
    /// Keep Alive, seconds.
    pub keep_alive: u16,
    /// The Client Identifier; may be empty (see [MQTT-3.1.3-6], [MQTT-3.1.3-8]).
    pub client_id: MqttString,
    /// The Will Message, when the Will Flag is set.
    pub will: Option<Will>,
    /// User Name.
    pub username: Option<MqttString>,
    /// Password.
    pub password: Option<Bytes>,
    /// The properties (5.0).
    pub properties: ConnectProperties,
}

/// The Will Message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// Will Topic, a topic name.
    pub topic: MqttString,
    /// Will Payload.
    pub payload: Bytes,
    /// Will Properties (5.0).
    pub properties: WillProperties,
}

/// The properties of CONNECT (3.1.2.11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    /// Session Expiry Interval (0x11), seconds.
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum (0x21), never 0.
    pub receive_maximum: Option<u16>,
    /// Maximum Packet Size (0x27), never 0.
    pub maximum_packet_size: Option<u32>,
    /// Topic Alias Maximum (0x22).
    pub topic_alias_maximum: Option<u16>,
    /// Request Response Information (0x19), 0 or 1.
    pub request_response_information: Option<u8>,
    /// Request Problem Information (0x17), 0 or 1.
    pub request_problem_information: Option<u8>,
    /// User Property (0x26), in order.
    pub user_properties: Vec<(MqttString, MqttString)>,
    /// Authentication Method (0x15).
    pub authentication_method: Option<MqttString>,
    /// Authentication Data (0x16), only with an Authentication Method.
    pub authentication_data: Option<Bytes>,
}

/// The Will Properties of CONNECT (3.1.3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WillProperties {
    /// Will Delay Interval (0x18), seconds.
    pub will_delay_interval: Option<u32>,
    /// Payload Format Indicator (0x01), 0 or 1.
    pub payload_format_indicator: Option<u8>,
    /// Message Expiry Interval (0x02), seconds.
    pub message_expiry_interval: Option<u32>,
    /// Content Type (0x03).
    pub content_type: Option<MqttString>,
    /// Response Topic (0x08), a topic name.
    pub response_topic: Option<MqttString>,
    /// Correlation Data (0x09).
    pub correlation_data: Option<Bytes>,
    /// User Property (0x26), in order.
    pub user_properties: Vec<(MqttString, MqttString)>,
}

/// A protocol-name/level pair the server does not speak: answered with 0x84 (3.1.1: return
/// code 1) [MQTT-3.1.2-2].
const UNSUPPORTED: DecodeError = DecodeError::new(
    ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
    "MQTT-3.1.2-2",
    "unsupported protocol level",
);

impl ConnectProperties {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Properties::read(r, props::CONNECT)?;
        let mut out = Self::default();
        while let Some((id, v)) = p.next()? {
            match (id, v) {
                (props::SESSION_EXPIRY_INTERVAL, Value::U32(v)) => {
                    out.session_expiry_interval = Some(v);
                }
                (props::RECEIVE_MAXIMUM, Value::U16(v)) => {
                    // [3.1.2.11.3] a Receive Maximum of 0 is a protocol error.
                    if v == 0 {
                        return Err(DecodeError::protocol("3.1.2.11.3", "receive maximum is 0"));
                    }
                    out.receive_maximum = Some(v);
                }
                (props::MAXIMUM_PACKET_SIZE, Value::U32(v)) => {
                    // [3.1.2.11.4] a Maximum Packet Size of 0 is a protocol error.
                    if v == 0 {
                        return Err(DecodeError::protocol(
                            "3.1.2.11.4",
                            "maximum packet size is 0",
                        ));
                    }
                    out.maximum_packet_size = Some(v);
                }
                (props::TOPIC_ALIAS_MAXIMUM, Value::U16(v)) => out.topic_alias_maximum = Some(v),
                (props::REQUEST_RESPONSE_INFORMATION, Value::Byte(b)) => {
                    out.request_response_information = Some(props::flag(
                        b,
                        "3.1.2.11.6",
                        "request response information other than 0 or 1",
                    )?);
                }
                (props::REQUEST_PROBLEM_INFORMATION, Value::Byte(b)) => {
                    out.request_problem_information = Some(props::flag(
                        b,
                        "3.1.2.11.7",
                        "request problem information other than 0 or 1",
                    )?);
                }
                (props::USER_PROPERTY, Value::Pair(k, v)) => out.user_properties.push((k, v)),
                (props::AUTHENTICATION_METHOD, Value::Str(s)) => {
                    out.authentication_method = Some(s);
                }
                (props::AUTHENTICATION_DATA, Value::Bin(b)) => out.authentication_data = Some(b),
                _ => return Err(props::WRONG_TYPE),
            }
        }
        // [3.1.2.11.10] Authentication Data without an Authentication Method.
        if out.authentication_data.is_some() && out.authentication_method.is_none() {
            return Err(DecodeError::protocol(
                "3.1.2.11.10",
                "authentication data without an authentication method",
            ));
        }
        Ok(out)
    }

    fn size(&self) -> Result<usize, EncodeError> {
        let mut s = props::Size::default();
        s.u32(self.session_expiry_interval);
        s.u16(self.receive_maximum);
        s.u32(self.maximum_packet_size);
        s.u16(self.topic_alias_maximum);
        s.byte(self.request_response_information);
        s.byte(self.request_problem_information);
        s.user(&self.user_properties)?;
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
        props::put_u32(out, props::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        props::put_u16(out, props::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        props::put_byte(
            out,
            props::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        props::put_byte(
            out,
            props::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        props::put_user(out, &self.user_properties);
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

impl WillProperties {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Properties::read(r, props::WILL)?;
        let mut out = Self::default();
        while let Some((id, v)) = p.next()? {
            match (id, v) {
                (props::WILL_DELAY_INTERVAL, Value::U32(v)) => out.will_delay_interval = Some(v),
                (props::PAYLOAD_FORMAT_INDICATOR, Value::Byte(b)) => {
                    out.payload_format_indicator = Some(props::flag(
                        b,
                        "3.1.3.2.3",
                        "payload format indicator other than 0 or 1",
                    )?);
                }
                (props::MESSAGE_EXPIRY_INTERVAL, Value::U32(v)) => {
                    out.message_expiry_interval = Some(v);
                }
                (props::CONTENT_TYPE, Value::Str(s)) => out.content_type = Some(s),
                (props::RESPONSE_TOPIC, Value::Str(s)) => {
                    // [3.1.3.2.6] the Response Topic is a topic name (no wildcards).
                    if topic::validate_topic_name(&s).is_err() {
                        return Err(DecodeError::protocol(
                            "3.1.3.2.6",
                            "will response topic is not a valid topic name",
                        ));
                    }
                    out.response_topic = Some(s);
                }
                (props::CORRELATION_DATA, Value::Bin(b)) => out.correlation_data = Some(b),
                (props::USER_PROPERTY, Value::Pair(k, v)) => out.user_properties.push((k, v)),
                _ => return Err(props::WRONG_TYPE),
            }
        }
        Ok(out)
    }

    fn size(&self) -> Result<usize, EncodeError> {
        let mut s = props::Size::default();
        s.u32(self.will_delay_interval);
        s.byte(self.payload_format_indicator);
        s.u32(self.message_expiry_interval);
        s.string(self.content_type.as_ref())?;
        s.string(self.response_topic.as_ref())?;
        s.binary(self.correlation_data.as_ref())?;
        s.user(&self.user_properties)?;
        Ok(s.0)
    }

    fn write(&self, len: usize, out: &mut BytesMut) {
        wire::put_varint(out, len);
        props::put_u32(out, props::WILL_DELAY_INTERVAL, self.will_delay_interval);
        props::put_byte(
            out,
            props::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator,
        );
        props::put_u32(
            out,
            props::MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval,
        );
        props::put_string(out, props::CONTENT_TYPE, self.content_type.as_ref());
        props::put_string(out, props::RESPONSE_TOPIC, self.response_topic.as_ref());
        props::put_binary(out, props::CORRELATION_DATA, self.correlation_data.as_ref());
        props::put_user(out, &self.user_properties);
    }
}

impl Connect {
    /// A CONNECT with clean start, no will, no credentials and no properties.
    pub fn new(protocol: ProtocolVersion, client_id: impl Into<MqttString>) -> Self {
        Self {
            protocol,
            clean_start: true,
            keep_alive: 60,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        }
    }

    pub(crate) fn decode(mut r: Reader) -> Result<Self, DecodeError> {
        let name = r.binary()?;
        let level = r.u8()?;
        let protocol = match (&name[..], level) {
            (b"MQTT", 4) => ProtocolVersion::V3_1_1,
            (b"MQTT", 5) => ProtocolVersion::V5,
            (b"MQIsdp", 3) => ProtocolVersion::V3_1,
            (b"MQTT" | b"MQIsdp", _) => return Err(UNSUPPORTED),
            // [MQTT-3.1.2-1] another protocol name: not this specification.
            _ => {
                return Err(DecodeError::new(
                    ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                    "MQTT-3.1.2-1",
                    "protocol name is not MQTT",
                ));
            }
        };
        Self::decode_after_level(r, protocol).map_err(|e| e.for_version(protocol))
    }

    /// Decodes what follows the protocol level, for `protocol`.
    fn decode_after_level(mut r: Reader, protocol: ProtocolVersion) -> Result<Self, DecodeError> {
        let v5 = protocol.is_v5();
        let flags = r.u8()?;
        // [MQTT-3.1.2-3] the reserved flag is 0.
        if flags & 0b0000_0001 != 0 {
            return Err(DecodeError::malformed(
                "MQTT-3.1.2-3",
                "connect reserved flag is set",
            ));
        }
        let clean_start = flags & 0b0000_0010 != 0;
        let will_flag = flags & 0b0000_0100 != 0;
        let will_qos_bits = (flags >> 3) & 0b11;
        let will_retain = flags & 0b0010_0000 != 0;
        let password_flag = flags & 0b0100_0000 != 0;
        let username_flag = flags & 0b1000_0000 != 0;
        let Some(will_qos) = QoS::from_u8(will_qos_bits) else {
            // [MQTT-3.1.2-12] Will QoS 3 is malformed.
            return Err(DecodeError::malformed("MQTT-3.1.2-12", "will qos is 3"));
        };
        if !will_flag {
            // [MQTT-3.1.2-11] no will: Will QoS is 0.
            if will_qos != QoS::AtMostOnce {
                return Err(DecodeError::malformed(
                    "MQTT-3.1.2-11",
                    "will qos set without the will flag",
                ));
            }
            // [MQTT-3.1.2-13] no will: Will Retain is 0.
            if will_retain {
                return Err(DecodeError::malformed(
                    "MQTT-3.1.2-13",
                    "will retain set without the will flag",
                ));
            }
        }
        // [MQTT-3.1.2-22] before 5.0, a password needs a user name.
        if !v5 && password_flag && !username_flag {
            return Err(DecodeError::malformed(
                "MQTT-3.1.2-22",
                "password flag set without the user name flag",
            ));
        }
        let keep_alive = r.u16()?;
        let properties = if v5 {
            ConnectProperties::read(&mut r)?
        } else {
            ConnectProperties::default()
        };

        // Payload: Client Identifier, Will Properties, Will Topic, Will Payload, User Name,
        // Password, in this order [MQTT-3.1.3-1].
        let client_id = r.string()?;
        if client_id.is_empty() {
            match protocol {
                // MQTT 3.1 requires 1 to 23 characters.
                ProtocolVersion::V3_1 => {
                    return Err(DecodeError::new(
                        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                        "3.1/3.1",
                        "empty client identifier in mqtt 3.1",
                    ));
                }
                // [MQTT-3.1.3-8] an empty client id needs Clean Session (identifier rejected).
                ProtocolVersion::V3_1_1 if !clean_start => {
                    return Err(DecodeError::new(
                        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                        "MQTT-3.1.3-8",
                        "empty client identifier without clean session",
                    ));
                }
                _ => {}
            }
        }
        let will = if will_flag {
            let properties = if v5 {
                WillProperties::read(&mut r)?
            } else {
                WillProperties::default()
            };
            let topic = r.string()?;
            // [MQTT-3.1.3-11] the Will Topic is a UTF-8 string and a topic name: not empty
            // [MQTT-4.7.3-1] and without wildcards [MQTT-3.3.2-2].
            if topic::validate_topic_name(&topic).is_err() {
                return Err(DecodeError::malformed(
                    "MQTT-3.1.3-11",
                    "will topic is not a valid topic name",
                ));
            }
            let payload = r.binary()?;
            Some(Will {
                qos: will_qos,
                retain: will_retain,
                topic,
                payload,
                properties,
            })
        } else {
            None
        };
        let username = if username_flag {
            Some(r.string()?)
        } else {
            None
        };
        let password = if password_flag {
            Some(r.binary()?)
        } else {
            None
        };
        r.finish("3.1.3")?;
        Ok(Self {
            protocol,
            clean_start,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }

    pub(crate) fn sizes(&self, version: ProtocolVersion) -> Result<Sizes, EncodeError> {
        let v5 = version.is_v5();
        // Protocol name, level, flags, keep alive.
        let mut remaining = 2 + version.protocol_name().len() + 1 + 1 + 2;
        let mut sizes = Sizes::default();
        if v5 {
            sizes.props = self.properties.size()?;
            remaining += props::block_len(sizes.props);
        }
        remaining += wire::string_len(&self.client_id)?;
        if let Some(w) = &self.will {
            if v5 {
                sizes.will_props = w.properties.size()?;
                remaining += props::block_len(sizes.will_props);
            }
            remaining += wire::string_len(&w.topic)? + wire::binary_len(&w.payload)?;
        }
        if let Some(u) = &self.username {
            remaining += wire::string_len(u)?;
        }
        if let Some(p) = &self.password {
            remaining += wire::binary_len(p)?;
        }
        sizes.remaining = remaining;
        Ok(sizes)
    }

    pub(crate) fn write(&self, version: ProtocolVersion, s: &Sizes, out: &mut BytesMut) {
        let v5 = version.is_v5();
        wire::put_header(out, 0x10, s.remaining);
        wire::put_binary(out, version.protocol_name().as_bytes());
        out.put_u8(version.level());
        let mut flags = 0u8;
        if self.clean_start {
            flags |= 0b0000_0010;
        }
        if let Some(w) = &self.will {
            flags |= 0b0000_0100 | (w.qos.as_u8() << 3);
            if w.retain {
                flags |= 0b0010_0000;
            }
        }
        if self.password.is_some() {
            flags |= 0b0100_0000;
        }
        if self.username.is_some() {
            flags |= 0b1000_0000;
        }
        out.put_u8(flags);
        out.put_u16(self.keep_alive);
        if v5 {
            self.properties.write(s.props, out);
        }
        wire::put_string(out, &self.client_id);
        if let Some(w) = &self.will {
            if v5 {
                w.properties.write(s.will_props, out);
            }
            wire::put_string(out, &w.topic);
            wire::put_binary(out, &w.payload);
        }
        if let Some(u) = &self.username {
            wire::put_string(out, u);
        }
        if let Some(p) = &self.password {
            wire::put_binary(out, p);
        }
    }
}
