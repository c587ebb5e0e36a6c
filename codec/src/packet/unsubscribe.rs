//! UNSUBSCRIBE (section 3.10): a client drops topic filters.

use bytes::{BufMut, BytesMut};

use crate::packet::subscribe::check_filter;
use crate::packet::{Sizes, packet_id};
use crate::properties::{self as props, Properties, Value};
use crate::wire::{self, Reader};
use crate::{DecodeError, EncodeError, MqttString, ProtocolVersion};

/// An UNSUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The packet identifier, never 0.
    pub packet_id: u16,
    /// The topic filters, at least one.
    pub filters: Vec<MqttString>,
    /// The properties (5.0).
    pub properties: UnsubscribeProperties,
}

/// The properties of UNSUBSCRIBE (3.10.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsubscribeProperties {
    /// User Property (0x26), in order.
    pub user_properties: Vec<(MqttString, MqttString)>,
}

impl Unsubscribe {
    /// An unsubscription from one filter.
    pub fn new(packet_id: u16, filter: impl Into<MqttString>) -> Self {
        Self {
            packet_id,
            filters: vec![filter.into()],
            properties: UnsubscribeProperties::default(),
        }
    }

    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = packet_id(&mut r)?;
        let mut properties = UnsubscribeProperties::default();
        if version.is_v5() {
            let mut p = Properties::read(&mut r, props::UNSUBSCRIBE)?;
            while let Some((id, v)) = p.next()? {
                match (id, v) {
                    (props::USER_PROPERTY, Value::Pair(k, v)) => {
                        properties.user_properties.push((k, v));
                    }
                    _ => return Err(props::WRONG_TYPE),
                }
            }
        }
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = r.string()?;
            check_filter(&filter)?;
            filters.push(filter);
        }
        // [MQTT-3.10.3-2] at least one topic filter.
        if filters.is_empty() {
            return Err(DecodeError::protocol(
                "MQTT-3.10.3-2",
                "unsubscribe without a topic filter",
            ));
        }
        Ok(Self {
            packet_id,
            filters,
            properties,
        })
    }

    pub(crate) fn sizes(&self, version: ProtocolVersion) -> Result<Sizes, EncodeError> {
        let mut remaining = 2;
        let mut p = 0;
        if version.is_v5() {
            let mut s = props::Size::default();
            s.user(&self.properties.user_properties)?;
            p = s.0;
            remaining += props::block_len(p);
        }
        for f in &self.filters {
            remaining += wire::string_len(f)?;
        }
        Ok(Sizes {
            remaining,
            props: p,
            will_props: 0,
        })
    }

    pub(crate) fn write(&self, version: ProtocolVersion, s: &Sizes, out: &mut BytesMut) {
        wire::put_header(out, 0xA2, s.remaining);
        out.put_u16(self.packet_id);
        if version.is_v5() {
            wire::put_varint(out, s.props);
            props::put_user(out, &self.properties.user_properties);
        }
        for f in &self.filters {
            wire::put_string(out, f);
        }
    }
}
