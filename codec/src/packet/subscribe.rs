//! SUBSCRIBE (section 3.8): a client asks for topic filters.

use bytes::{BufMut, BytesMut};

use crate::packet::{Sizes, packet_id};
use crate::properties::{self as props, Properties, Value};
use crate::topic;
use crate::wire::{self, Reader};
use crate::{DecodeError, EncodeError, MqttString, ProtocolVersion, QoS};

/// A SUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The packet identifier, never 0.
    pub packet_id: u16,
    /// The subscriptions, at least one.
    pub subscriptions: Vec<Subscription>,
    /// The properties (5.0).
    pub properties: SubscribeProperties,
}

/// One topic filter and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The topic filter, possibly `$share/{group}/{filter}`.
    pub filter: MqttString,
    /// The subscription options (only `qos` before 5.0).
    pub options: SubscriptionOptions,
}

/// The Subscription Options byte (3.8.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local (5.0): do not send the client's own publications back.
    pub no_local: bool,
    /// Retain As Published (5.0).
    pub retain_as_published: bool,
    /// Retain Handling (5.0).
    pub retain_handling: RetainHandling,
}

/// When retained messages are sent for a new subscription (3.8.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RetainHandling {
    /// 0: at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: at subscribe, only if the subscription did not exist.
    SendAtSubscribeIfNew = 1,
    /// 2: never at subscribe.
    DoNotSend = 2,
}

/// The properties of SUBSCRIBE (3.8.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    /// Subscription Identifier (0x0B), 1..=268,435,455.
    pub subscription_identifier: Option<u32>,
    /// User Property (0x26), in order.
    pub user_properties: Vec<(MqttString, MqttString)>,
}

impl SubscribeProperties {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Properties::read(r, props::SUBSCRIBE)?;
        let mut out = Self::default();
        while let Some((id, v)) = p.next()? {
            match (id, v) {
                (props::SUBSCRIPTION_IDENTIFIER, Value::VarInt(v)) => {
                    // [3.8.2.1.2] a Subscription Identifier of 0 is a protocol error.
                    if v == 0 {
                        return Err(DecodeError::protocol(
                            "3.8.2.1.2",
                            "subscription identifier is 0",
                        ));
                    }
                    out.subscription_identifier = Some(v);
                }
                (props::USER_PROPERTY, Value::Pair(k, v)) => out.user_properties.push((k, v)),
                _ => return Err(props::WRONG_TYPE),
            }
        }
        Ok(out)
    }

    fn size(&self) -> Result<usize, EncodeError> {
        let mut s = props::Size::default();
        s.varint(self.subscription_identifier)?;
        s.user(&self.user_properties)?;
        Ok(s.0)
    }

    fn write(&self, len: usize, out: &mut BytesMut) {
        wire::put_varint(out, len);
        props::put_varint(
            out,
            props::SUBSCRIPTION_IDENTIFIER,
            self.subscription_identifier,
        );
        props::put_user(out, &self.user_properties);
    }
}

impl SubscriptionOptions {
    /// Options with this maximum QoS and the defaults of the other fields.
    pub fn qos(qos: QoS) -> Self {
        Self {
            qos,
            ..Self::default()
        }
    }

    fn decode(b: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        if !version.is_v5() {
            // [MQTT-3-8.3-4] (3.1.1) reserved bits are 0 and QoS is 0, 1 or 2.
            let Some(qos) = QoS::from_u8(b).filter(|_| b & 0xFC == 0) else {
                return Err(DecodeError::malformed(
                    "MQTT-3-8.3-4",
                    "subscribe requested qos byte is not 0, 1 or 2",
                ));
            };
            return Ok(Self::qos(qos));
        }
        // [MQTT-3.8.3-5] bits 6 and 7 are reserved, 0.
        if b & 0xC0 != 0 {
            return Err(DecodeError::malformed(
                "MQTT-3.8.3-5",
                "subscription options reserved bits are set",
            ));
        }
        // [3.8.3.1] a Maximum QoS of 3 is a protocol error.
        let Some(qos) = QoS::from_u8(b & 0b11) else {
            return Err(DecodeError::protocol(
                "3.8.3.1",
                "subscription maximum qos is 3",
            ));
        };
        let retain_handling = match (b >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            // [3.8.3.1] a Retain Handling of 3 is a protocol error.
            _ => {
                return Err(DecodeError::protocol("3.8.3.1", "retain handling is 3"));
            }
        };
        Ok(Self {
            qos,
            no_local: b & 0b0100 != 0,
            retain_as_published: b & 0b1000 != 0,
            retain_handling,
        })
    }

    fn encode(&self, version: ProtocolVersion) -> u8 {
        let mut b = self.qos.as_u8();
        if version.is_v5() {
            if self.no_local {
                b |= 0b0100;
            }
            if self.retain_as_published {
                b |= 0b1000;
            }
            b |= (self.retain_handling as u8) << 4;
        }
        b
    }
}

/// Checks a topic filter of SUBSCRIBE or UNSUBSCRIBE; errors are Malformed Packets.
pub(crate) fn check_filter(filter: &str) -> Result<(), DecodeError> {
    topic::validate_topic_filter(filter).map_err(|e| DecodeError::malformed(e.rule(), e.message()))
}

impl Subscribe {
    /// A subscription to one filter at `qos`.
    pub fn new(packet_id: u16, filter: impl Into<MqttString>, qos: QoS) -> Self {
        Self {
            packet_id,
            subscriptions: vec![Subscription {
                filter: filter.into(),
                options: SubscriptionOptions::qos(qos),
            }],
            properties: SubscribeProperties::default(),
        }
    }

    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = packet_id(&mut r)?;
        let properties = if version.is_v5() {
            SubscribeProperties::read(&mut r)?
        } else {
            SubscribeProperties::default()
        };
        let mut subscriptions = Vec::new();
        while !r.is_empty() {
            let filter = r.string()?;
            check_filter(&filter)?;
            let options = SubscriptionOptions::decode(r.u8()?, version)?;
            // [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
            if options.no_local && matches!(topic::parse_shared(&filter), Ok(Some(_))) {
                return Err(DecodeError::protocol(
                    "MQTT-3.8.3-4",
                    "no local set on a shared subscription",
                ));
            }
            subscriptions.push(Subscription { filter, options });
        }
        // [MQTT-3.8.3-2] at least one subscription.
        if subscriptions.is_empty() {
            return Err(DecodeError::protocol(
                "MQTT-3.8.3-2",
                "subscribe without a topic filter",
            ));
        }
        Ok(Self {
            packet_id,
            subscriptions,
            properties,
        })
    }

    pub(crate) fn sizes(&self, version: ProtocolVersion) -> Result<Sizes, EncodeError> {
        let mut remaining = 2;
        let mut p = 0;
        if version.is_v5() {
            p = self.properties.size()?;
            remaining += props::block_len(p);
        }
        for s in &self.subscriptions {
            remaining += wire::string_len(&s.filter)? + 1;
        }
        Ok(Sizes {
            remaining,
            props: p,
            will_props: 0,
        })
    }

    pub(crate) fn write(&self, version: ProtocolVersion, s: &Sizes, out: &mut BytesMut) {
        wire::put_header(out, 0x82, s.remaining);
        out.put_u16(self.packet_id);
        if version.is_v5() {
            self.properties.write(s.props, out);
        }
        for sub in &self.subscriptions {
            wire::put_string(out, &sub.filter);
            out.put_u8(sub.options.encode(version));
        }
    }
}
