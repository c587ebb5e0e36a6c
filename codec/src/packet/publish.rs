//! PUBLISH (section 3.3): a message, both ways.

use bytes::{BufMut, Bytes, BytesMut};

use crate::packet::{Sizes, packet_id};
use crate::properties::{self as props, Properties, Value};
use crate::topic;
use crate::wire::{self, Reader};
use crate::{DecodeError, Direction, EncodeError, MqttString, ProtocolVersion, QoS, ReasonCode};

/// A PUBLISH packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP: this may be a re-delivery (always false at QoS 0 [MQTT-3.3.1-2]).
    pub dup: bool,
    /// The QoS of this delivery.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// The Topic Name; empty in 5.0 when a Topic Alias stands for it.
    pub topic: MqttString,
    /// The packet identifier: `Some` iff `qos` is above 0 (ignored when encoding QoS 0).
    pub packet_id: Option<u16>,
    /// The properties (5.0).
    pub properties: PublishProperties,
    /// The application message, a slice of the received bytes.
    pub payload: Bytes,
}

/// The properties of PUBLISH (3.3.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// Payload Format Indicator (0x01): 0 unspecified bytes, 1 UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// Message Expiry Interval (0x02), seconds.
    pub message_expiry_interval: Option<u32>,
    /// Topic Alias (0x23), never 0 [MQTT-3.3.2-8].
    pub topic_alias: Option<u16>,
    /// Response Topic (0x08), a topic name without wildcards [MQTT-3.3.2-14].
    pub response_topic: Option<MqttString>,
    /// Correlation Data (0x09).
    pub correlation_data: Option<Bytes>,
    /// User Property (0x26), in order [MQTT-3.3.2-18].
    pub user_properties: Vec<(MqttString, MqttString)>,
    /// Subscription Identifier (0x0B), server to client only [MQTT-3.3.4-6], never 0.
    pub subscription_identifiers: Vec<u32>,
    /// Content Type (0x03).
    pub content_type: Option<MqttString>,
}

impl PublishProperties {
    fn read(r: &mut Reader, dir: Direction) -> Result<Self, DecodeError> {
        let mut p = Properties::read(r, props::PUBLISH)?;
        let mut out = Self::default();
        while let Some((id, v)) = p.next()? {
            match (id, v) {
                (props::PAYLOAD_FORMAT_INDICATOR, Value::Byte(b)) => {
                    out.payload_format_indicator = Some(props::flag(
                        b,
                        "3.3.2.3.2",
                        "payload format indicator other than 0 or 1",
                    )?);
                }
                (props::MESSAGE_EXPIRY_INTERVAL, Value::U32(v)) => {
                    out.message_expiry_interval = Some(v);
                }
                (props::TOPIC_ALIAS, Value::U16(v)) => {
                    // [MQTT-3.3.2-8] a Topic Alias of 0 is not permitted.
                    if v == 0 {
                        return Err(DecodeError::new(
                            ReasonCode::TOPIC_ALIAS_INVALID,
                            "MQTT-3.3.2-8",
                            "topic alias is 0",
                        ));
                    }
                    out.topic_alias = Some(v);
                }
                (props::RESPONSE_TOPIC, Value::Str(s)) => {
                    // [MQTT-3.3.2-14] the Response Topic is a topic name: no wildcards.
                    if topic::validate_topic_name(&s).is_err() {
                        return Err(DecodeError::protocol(
                            "MQTT-3.3.2-14",
                            "response topic is not a valid topic name",
                        ));
                    }
                    out.response_topic = Some(s);
                }
                (props::CORRELATION_DATA, Value::Bin(b)) => out.correlation_data = Some(b),
                (props::USER_PROPERTY, Value::Pair(k, v)) => out.user_properties.push((k, v)),
                (props::SUBSCRIPTION_IDENTIFIER, Value::VarInt(v)) => {
                    // [MQTT-3.3.4-6] a client's PUBLISH carries no Subscription Identifier.
                    if dir == Direction::ToServer {
                        return Err(DecodeError::protocol(
                            "MQTT-3.3.4-6",
                            "subscription identifier in a publish sent by a client",
                        ));
                    }
                    // [3.3.2.3.8] a Subscription Identifier of 0 is a protocol error.
                    if v == 0 {
                        return Err(DecodeError::protocol(
                            "3.3.2.3.8",
                            "subscription identifier is 0",
                        ));
                    }
                    out.subscription_identifiers.push(v);
                }
                (props::CONTENT_TYPE, Value::Str(s)) => out.content_type = Some(s),
                _ => return Err(props::WRONG_TYPE),
            }
        }
        Ok(out)
    }

    fn size(&self) -> Result<usize, EncodeError> {
        let mut s = props::Size::default();
        s.byte(self.payload_format_indicator);
        s.u32(self.message_expiry_interval);
        s.u16(self.topic_alias);
        s.string(self.response_topic.as_ref())?;
        s.binary(self.correlation_data.as_ref())?;
        s.user(&self.user_properties)?;
        for id in &self.subscription_identifiers {
            s.varint(Some(*id))?;
        }
        s.string(self.content_type.as_ref())?;
        Ok(s.0)
    }

    fn write(&self, len: usize, out: &mut BytesMut) {
        wire::put_varint(out, len);
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
        props::put_u16(out, props::TOPIC_ALIAS, self.topic_alias);
        props::put_string(out, props::RESPONSE_TOPIC, self.response_topic.as_ref());
        props::put_binary(out, props::CORRELATION_DATA, self.correlation_data.as_ref());
        props::put_user(out, &self.user_properties);
        for id in &self.subscription_identifiers {
            props::put_varint(out, props::SUBSCRIPTION_IDENTIFIER, Some(*id));
        }
        props::put_string(out, props::CONTENT_TYPE, self.content_type.as_ref());
    }
}

impl Publish {
    /// A QoS 0 message without properties.
    pub fn new(topic: impl Into<MqttString>, payload: impl Into<Bytes>) -> Self {
        Self {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: payload.into(),
        }
    }

    pub(crate) fn decode(
        flags: u8,
        mut r: Reader,
        version: ProtocolVersion,
        dir: Direction,
    ) -> Result<Self, DecodeError> {
        let dup = flags & 0b1000 != 0;
        let retain = flags & 0b0001 != 0;
        // [MQTT-3.3.1-4] both QoS bits set is a Malformed Packet.
        let Some(qos) = QoS::from_u8((flags >> 1) & 0b11) else {
            return Err(DecodeError::malformed("MQTT-3.3.1-4", "publish qos is 3"));
        };
        // [MQTT-3.3.1-2] DUP is 0 for every QoS 0 message.
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::malformed(
                "MQTT-3.3.1-2",
                "publish with dup set at qos 0",
            ));
        }
        let topic = r.string()?;
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            Some(packet_id(&mut r)?)
        };
        let properties = if version.is_v5() {
            PublishProperties::read(&mut r, dir)?
        } else {
            PublishProperties::default()
        };
        if topic.is_empty() {
            // [MQTT-3.3.2-1] / [MQTT-4.7.3-1] a topic name is at least one character, unless
            // a 5.0 Topic Alias stands for it [3.3.2.3.4].
            if !version.is_v5() {
                return Err(DecodeError::malformed(
                    "MQTT-4.7.3-1",
                    "publish topic name is empty",
                ));
            }
            if properties.topic_alias.is_none() {
                return Err(DecodeError::protocol(
                    "3.3.2.3.4",
                    "publish topic name is empty and there is no topic alias",
                ));
            }
        } else if topic::validate_topic_name(&topic).is_err() {
            // [MQTT-3.3.2-2] the topic name of a PUBLISH contains no wildcards.
            return Err(DecodeError::malformed(
                "MQTT-3.3.2-2",
                "publish topic name contains a wildcard",
            ));
        }
        Ok(Self {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload: r.rest(),
        })
    }

    pub(crate) fn sizes(&self, version: ProtocolVersion) -> Result<Sizes, EncodeError> {
        let mut remaining = wire::string_len(&self.topic)? + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            if self.packet_id.is_none() {
                return Err(EncodeError::MissingPacketId(self.qos.as_u8()));
            }
            remaining += 2;
        }
        let mut props = 0;
        if version.is_v5() {
            props = self.properties.size()?;
            remaining += props::block_len(props);
        }
        Ok(Sizes {
            remaining,
            props,
            will_props: 0,
        })
    }

    pub(crate) fn write(&self, version: ProtocolVersion, s: &Sizes, out: &mut BytesMut) {
        let mut first = 0x30 | (self.qos.as_u8() << 1);
        if self.dup && self.qos != QoS::AtMostOnce {
            first |= 0b1000;
        }
        if self.retain {
            first |= 0b0001;
        }
        wire::put_header(out, first, s.remaining);
        wire::put_string(out, &self.topic);
        if self.qos != QoS::AtMostOnce {
            out.put_u16(self.packet_id.unwrap_or_default());
        }
        if version.is_v5() {
            self.properties.write(s.props, out);
        }
        out.put_slice(&self.payload);
    }
}
