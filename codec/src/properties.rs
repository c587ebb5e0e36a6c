//! MQTT 5 properties (section 2.2.2): the identifier table, a table-driven reader that rejects
//! duplicates and identifiers not allowed on the packet, and helpers that size and write them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::{self, Reader};
use crate::{DecodeError, EncodeError, MqttString};

// Property identifiers (table 2-4).
pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// The data type of a property's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Byte,
    U16,
    U32,
    VarInt,
    Str,
    Bin,
    Pair,
}

/// The type of each identifier; `None` for identifiers the specification does not define.
const fn kind(id: u8) -> Option<Kind> {
    Some(match id {
        PAYLOAD_FORMAT_INDICATOR
        | REQUEST_PROBLEM_INFORMATION
        | REQUEST_RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => Kind::Byte,
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => Kind::U16,
        MESSAGE_EXPIRY_INTERVAL
        | SESSION_EXPIRY_INTERVAL
        | WILL_DELAY_INTERVAL
        | MAXIMUM_PACKET_SIZE => Kind::U32,
        SUBSCRIPTION_IDENTIFIER => Kind::VarInt,
        CONTENT_TYPE
        | RESPONSE_TOPIC
        | ASSIGNED_CLIENT_IDENTIFIER
        | AUTHENTICATION_METHOD
        | RESPONSE_INFORMATION
        | SERVER_REFERENCE
        | REASON_STRING => Kind::Str,
        CORRELATION_DATA | AUTHENTICATION_DATA => Kind::Bin,
        USER_PROPERTY => Kind::Pair,
        _ => return None,
    })
}

const fn mask(ids: &[u8]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < ids.len() {
        m |= 1 << ids[i];
        i += 1;
    }
    m
}

/// Which properties a packet (or the will) may carry, and which of them may repeat.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    allowed: u64,
    repeatable: u64,
}

impl Context {
    const fn new(allowed: &[u8], repeatable: &[u8]) -> Self {
        Self {
            allowed: mask(allowed),
            repeatable: mask(repeatable),
        }
    }
}

pub(crate) const CONNECT: Context = Context::new(
    &[
        SESSION_EXPIRY_INTERVAL,
        RECEIVE_MAXIMUM,
        MAXIMUM_PACKET_SIZE,
        TOPIC_ALIAS_MAXIMUM,
        REQUEST_RESPONSE_INFORMATION,
        REQUEST_PROBLEM_INFORMATION,
        USER_PROPERTY,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
    ],
    &[USER_PROPERTY],
);
pub(crate) const WILL: Context = Context::new(
    &[
        WILL_DELAY_INTERVAL,
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        CONTENT_TYPE,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        USER_PROPERTY,
    ],
    &[USER_PROPERTY],
);
pub(crate) const CONNACK: Context = Context::new(
    &[
        SESSION_EXPIRY_INTERVAL,
        RECEIVE_MAXIMUM,
        MAXIMUM_QOS,
        RETAIN_AVAILABLE,
        MAXIMUM_PACKET_SIZE,
        ASSIGNED_CLIENT_IDENTIFIER,
        TOPIC_ALIAS_MAXIMUM,
        REASON_STRING,
        USER_PROPERTY,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        SHARED_SUBSCRIPTION_AVAILABLE,
        SERVER_KEEP_ALIVE,
        RESPONSE_INFORMATION,
        SERVER_REFERENCE,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
    ],
    &[USER_PROPERTY],
);
pub(crate) const PUBLISH: Context = Context::new(
    &[
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        TOPIC_ALIAS,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        USER_PROPERTY,
        SUBSCRIPTION_IDENTIFIER,
        CONTENT_TYPE,
    ],
    // [MQTT-3.3.4-4] a PUBLISH to a client may carry several Subscription Identifiers.
    &[USER_PROPERTY, SUBSCRIPTION_IDENTIFIER],
);
pub(crate) const ACK: Context = Context::new(&[REASON_STRING, USER_PROPERTY], &[USER_PROPERTY]);
pub(crate) const SUBSCRIBE: Context =
    Context::new(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY], &[USER_PROPERTY]);
pub(crate) const UNSUBSCRIBE: Context = Context::new(&[USER_PROPERTY], &[USER_PROPERTY]);
pub(crate) const DISCONNECT: Context = Context::new(
    &[
        SESSION_EXPIRY_INTERVAL,
        REASON_STRING,
        USER_PROPERTY,
        SERVER_REFERENCE,
    ],
    &[USER_PROPERTY],
);
pub(crate) const AUTH: Context = Context::new(
    &[
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
        REASON_STRING,
        USER_PROPERTY,
    ],
    &[USER_PROPERTY],
);

/// One decoded property value.
#[derive(Debug)]
pub(crate) enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(MqttString),
    Bin(Bytes),
    Pair(MqttString, MqttString),
}

/// Reads the properties of one packet: the Property Length, then identifier/value pairs.
pub(crate) struct Properties {
    r: Reader,
    ctx: Context,
    seen: u64,
}

impl Properties {
    /// Reads the Property Length and takes that many bytes out of `r`.
    pub(crate) fn read(r: &mut Reader, ctx: Context) -> Result<Self, DecodeError> {
        let len = r.varint()? as usize;
        if len > r.remaining() {
            return Err(DecodeError::malformed(
                "2.2.2.1",
                "property length exceeds the packet",
            ));
        }
        Ok(Self {
            r: Reader::new(r.take(len)?),
            ctx,
            seen: 0,
        })
    }

    /// The next property, after checking it is defined, allowed on this packet [2.2.2.2] and
    /// not repeated when it may appear only once.
    pub(crate) fn next(&mut self) -> Result<Option<(u8, Value)>, DecodeError> {
        if self.r.is_empty() {
            return Ok(None);
        }
        // Identifiers are Variable Byte Integers; every defined one fits in one byte.
        let id = self.r.varint()?;
        let (id, kind) = match u8::try_from(id).ok().and_then(|b| kind(b).map(|k| (b, k))) {
            Some(x) if self.ctx.allowed & (1 << x.0) != 0 => x,
            _ => {
                return Err(DecodeError::malformed(
                    "2.2.2.2",
                    "property identifier not valid for this packet",
                ));
            }
        };
        let bit = 1u64 << id;
        if self.seen & bit != 0 && self.ctx.repeatable & bit == 0 {
            return Err(DecodeError::protocol(
                "2.2.2.2",
                "property that may appear once appears twice",
            ));
        }
        self.seen |= bit;
        let value = match kind {
            Kind::Byte => Value::Byte(self.r.u8()?),
            Kind::U16 => Value::U16(self.r.u16()?),
            Kind::U32 => Value::U32(self.r.u32()?),
            Kind::VarInt => Value::VarInt(self.r.varint()?),
            Kind::Str => Value::Str(self.r.string()?),
            Kind::Bin => Value::Bin(self.r.binary()?),
            Kind::Pair => {
                let k = self.r.string()?;
                let v = self.r.string()?;
                Value::Pair(k, v)
            }
        };
        Ok(Some((id, value)))
    }
}

/// The error for a value of the wrong type; cannot happen after the table lookup, but the
/// packet parsers match on it rather than panicking.
pub(crate) const WRONG_TYPE: DecodeError =
    DecodeError::malformed("2.2.2.2", "property value of the wrong type");

/// A byte property that must be 0 or 1.
pub(crate) fn flag(v: u8, rule: &'static str, message: &'static str) -> Result<u8, DecodeError> {
    if v > 1 {
        return Err(DecodeError::protocol(rule, message));
    }
    Ok(v)
}

// === sizing ===

/// Adds up property sizes while checking strings and binary data.
#[derive(Debug, Default)]
pub(crate) struct Size(pub(crate) usize);

impl Size {
    pub(crate) fn byte(&mut self, v: Option<u8>) {
        if v.is_some() {
            self.0 += 2;
        }
    }
    pub(crate) fn u16(&mut self, v: Option<u16>) {
        if v.is_some() {
            self.0 += 3;
        }
    }
    pub(crate) fn u32(&mut self, v: Option<u32>) {
        if v.is_some() {
            self.0 += 5;
        }
    }
    pub(crate) fn varint(&mut self, v: Option<u32>) -> Result<(), EncodeError> {
        if let Some(v) = v {
            self.0 += 1 + wire::check_varint(v)?;
        }
        Ok(())
    }
    pub(crate) fn string(&mut self, v: Option<&MqttString>) -> Result<(), EncodeError> {
        if let Some(v) = v {
            self.0 += 1 + wire::string_len(v)?;
        }
        Ok(())
    }
    pub(crate) fn binary(&mut self, v: Option<&Bytes>) -> Result<(), EncodeError> {
        if let Some(v) = v {
            self.0 += 1 + wire::binary_len(v)?;
        }
        Ok(())
    }
    pub(crate) fn user(&mut self, v: &[(MqttString, MqttString)]) -> Result<(), EncodeError> {
        for (k, val) in v {
            self.0 += 1 + wire::string_len(k)? + wire::string_len(val)?;
        }
        Ok(())
    }
}

/// The size of a property block: its length prefix plus the properties.
pub(crate) fn block_len(props: usize) -> usize {
    wire::varint_len(props) + props
}

// === writing ===

pub(crate) fn put_byte(out: &mut BytesMut, id: u8, v: Option<u8>) {
    if let Some(v) = v {
        out.put_u8(id);
        out.put_u8(v);
    }
}
pub(crate) fn put_u16(out: &mut BytesMut, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        out.put_u8(id);
        out.put_u16(v);
    }
}
pub(crate) fn put_u32(out: &mut BytesMut, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        out.put_u8(id);
        out.put_u32(v);
    }
}
pub(crate) fn put_varint(out: &mut BytesMut, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        out.put_u8(id);
        wire::put_varint(out, v as usize);
    }
}
pub(crate) fn put_string(out: &mut BytesMut, id: u8, v: Option<&MqttString>) {
    if let Some(v) = v {
        out.put_u8(id);
        wire::put_string(out, v);
    }
}
pub(crate) fn put_binary(out: &mut BytesMut, id: u8, v: Option<&Bytes>) {
    if let Some(v) = v {
        out.put_u8(id);
        wire::put_binary(out, v);
    }
}
pub(crate) fn put_user(out: &mut BytesMut, v: &[(MqttString, MqttString)]) {
    for (k, val) in v {
        out.put_u8(USER_PROPERTY);
        wire::put_string(out, k);
        wire::put_string(out, val);
    }
}
