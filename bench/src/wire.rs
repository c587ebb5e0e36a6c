//! Just enough of MQTT 3.1.1 and 5.0 for load generation: CONNECT, SUBSCRIBE, PUBLISH (QoS 0
//! and 1), PUBACK and DISCONNECT out; CONNACK, SUBACK, PUBLISH and PUBACK in.
//!
//! Written here rather than taken from `starling-codec` or a client crate on purpose: the
//! generator must not share packet code with the broker it measures, it must cost little CPU on
//! a machine whose cores it shares with that broker, and every byte it sends is known. The one
//! piece it takes from the codec is the Variable Byte Integer writer
//! ([`starling_codec::remaining_length::put`], tested there at every width); it reads them
//! itself, since it needs a packet's header and body lengths before the body is in. The only
//! property it ever sends is a persistent session's Session Expiry Interval (every other v5
//! property block is empty), so 3.1.1 and 5.0 traffic differ only by those bytes.

use std::io;

use starling_codec::remaining_length;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

/// DISCONNECT with reason 0x00 (the two-byte form is valid in 3.1.1 and 5.0).
pub(crate) const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// Packet types, the high nibble of the first byte.
pub(crate) const CONNACK: u8 = 2;
pub(crate) const PUBLISH: u8 = 3;
pub(crate) const PUBACK: u8 = 4;
pub(crate) const SUBACK: u8 = 9;

/// Decodes a variable byte integer: `(value, bytes used)`; `None` when incomplete or longer than
/// the four bytes MQTT allows.
pub(crate) fn get_varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &byte) in b.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let len = u16::try_from(s.len()).expect("MQTT strings are at most 65535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    remaining_length::put(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// CONNECT, no will, no credentials: a clean session (3.1.1) or clean start (5.0), or with
/// `keep_session` (a Session Expiry Interval in seconds,
/// v5; any value in 3.1.1) a persistent session: clean session / clean start 0, and in v5 the
/// Session Expiry Interval property, the only property the generator ever sends.
pub(crate) fn connect_session(
    v5: bool,
    client_id: &str,
    keep_alive_secs: u16,
    keep_session: Option<u32>,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(24 + client_id.len());
    put_str(&mut body, b"MQTT");
    body.push(if v5 { 5 } else { 4 });
    body.push(if keep_session.is_some() { 0x00 } else { 0x02 });
    body.extend_from_slice(&keep_alive_secs.to_be_bytes());
    if v5 {
        match keep_session {
            Some(expiry) => {
                body.extend_from_slice(&[5, 0x11]);
                body.extend_from_slice(&expiry.to_be_bytes());
            }
            None => body.push(0),
        }
    }
    put_str(&mut body, client_id.as_bytes());
    frame(0x10, &body)
}

/// Whether a CONNACK body says the session was resumed (session present).
pub(crate) fn session_present(body: &[u8]) -> bool {
    body.first().is_some_and(|flags| flags & 1 == 1)
}

/// SUBSCRIBE to one filter at `qos`.
pub(crate) fn subscribe(v5: bool, packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + filter.len());
    body.extend_from_slice(&packet_id.to_be_bytes());
    if v5 {
        body.push(0);
    }
    put_str(&mut body, filter.as_bytes());
    body.push(qos);
    frame(0x82, &body)
}

/// Appends one PUBLISH (no retain, no dup) to `out`; `packet_id` is left out at QoS 0.
pub(crate) fn publish(
    out: &mut Vec<u8>,
    v5: bool,
    topic: &[u8],
    qos: u8,
    packet_id: u16,
    payload: &[u8],
) {
    publish_with(out, v5, topic, qos, false, packet_id, payload);
}

/// Appends one PUBLISH (no dup), retained or not, to `out`; `packet_id` is left out at QoS 0.
pub(crate) fn publish_with(
    out: &mut Vec<u8>,
    v5: bool,
    topic: &[u8],
    qos: u8,
    retain: bool,
    packet_id: u16,
    payload: &[u8],
) {
    let id_len = if qos > 0 { 2 } else { 0 };
    out.push(0x30 | (qos << 1) | u8::from(retain));
    remaining_length::put(
        out,
        2 + topic.len() + id_len + usize::from(v5) + payload.len(),
    );
    put_str(out, topic);
    if qos > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    if v5 {
        out.push(0);
    }
    out.extend_from_slice(payload);
}

/// Appends a PUBACK with success (the short form, valid in 3.1.1 and 5.0).
pub(crate) fn puback(out: &mut Vec<u8>, packet_id: u16) {
    out.extend_from_slice(&[0x40, 0x02]);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

/// A PUBLISH body (after the fixed header) as `(packet id, payload)`; the id is 0 at QoS 0.
pub(crate) fn parse_publish(v5: bool, first: u8, body: &[u8]) -> Option<(u16, &[u8])> {
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let mut i = 2 + topic_len;
    let mut packet_id = 0;
    if (first >> 1) & 3 > 0 {
        packet_id = u16::from_be_bytes([*body.get(i)?, *body.get(i + 1)?]);
        i += 2;
    }
    if v5 {
        let (props_len, n) = get_varint(body.get(i..)?)?;
        i += n + props_len;
    }
    Some((packet_id, body.get(i..)?))
}

/// A CONNACK body: `Ok(receive maximum)` when accepted (`None` unless a v5 broker sent one),
/// `Err(reason code)` when refused.
pub(crate) fn parse_connack(v5: bool, body: &[u8]) -> Result<Option<u16>, u8> {
    let code = *body.get(1).ok_or(0xff)?;
    if code != 0 {
        return Err(code);
    }
    Ok(if v5 { receive_maximum(body) } else { None })
}

/// Receive Maximum (property 0x21) from a v5 CONNACK body, skipping the properties before it.
fn receive_maximum(body: &[u8]) -> Option<u16> {
    let (len, n) = get_varint(body.get(2..)?)?;
    let props = body.get(2 + n..2 + n + len)?;
    let u16_at = |j: usize| Some(u16::from_be_bytes([*props.get(j)?, *props.get(j + 1)?]));
    let mut i = 0;
    while i < props.len() {
        let id = props[i];
        i += 1;
        i += match id {
            0x21 => return u16_at(i),
            // byte properties
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            // two-byte integers
            0x13 | 0x22 | 0x23 => 2,
            // four-byte integers
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            // subscription identifier, a variable byte integer
            0x0B => get_varint(props.get(i..)?)?.1,
            // user property: two strings
            0x26 => {
                let key = 2 + usize::from(u16_at(i)?);
                key + 2 + usize::from(u16_at(i + key)?)
            }
            // strings and binary data
            _ => 2 + usize::from(u16_at(i)?),
        };
    }
    None
}

/// Reads whole packets from a TCP read half through one buffer, handing each out as a borrowed
/// slice: no allocation per packet. The buffer grows to the largest packet seen.
pub(crate) struct PacketReader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl PacketReader {
    pub(crate) fn new(rd: OwnedReadHalf, capacity: usize) -> Self {
        Self {
            rd,
            buf: vec![0; capacity.max(64)],
            start: 0,
            end: 0,
        }
    }

    /// `(fixed header length, remaining length)` of the next packet, once its header is in.
    fn header(&self) -> Option<(usize, usize)> {
        let (len, n) = get_varint(self.buf.get(self.start + 1..self.end)?)?;
        Some((1 + n, len))
    }

    /// True when a whole packet is buffered, so `next` returns without reading.
    pub(crate) fn has_packet(&self) -> bool {
        matches!(self.header(), Some((h, len)) if self.end - self.start >= h + len)
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// The next packet as `(first byte, body)`. Cancel-safe: a read cut short keeps its bytes.
    pub(crate) async fn next(&mut self) -> io::Result<(u8, &[u8])> {
        let (header_len, len) = loop {
            match self.header() {
                Some((h, len)) if self.end - self.start >= h + len => break (h, len),
                Some((h, len)) if self.start + h + len > self.buf.len() => {
                    self.compact();
                    if h + len > self.buf.len() {
                        self.buf.resize(h + len, 0);
                    }
                }
                None if self.end - self.start >= 5 => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed remaining length",
                    ));
                }
                _ => {}
            }
            if self.end == self.buf.len() {
                self.compact();
            }
            let n = self.rd.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.end += n;
        };
        let first = self.buf[self.start];
        let body = self.start + header_len;
        self.start = body + len;
        if self.start == self.end {
            // Empty: the next read starts at the front again (the slice stays valid until then).
            (self.start, self.end) = (0, 0);
        }
        Ok((first, &self.buf[body..body + len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_length_boundary() {
        for n in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut b = Vec::new();
            remaining_length::put(&mut b, n);
            assert_eq!(get_varint(&b), Some((n, b.len())), "{n}");
        }
        assert_eq!(get_varint(&[0x80, 0x80]), None, "incomplete");
        assert_eq!(
            get_varint(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            None,
            "five bytes"
        );
    }

    #[test]
    fn publishes_parse_back_to_their_id_and_payload() {
        for v5 in [false, true] {
            for qos in [0u8, 1] {
                let mut b = Vec::new();
                publish(&mut b, v5, b"a/b", qos, 7, b"hello");
                let (len, n) = get_varint(&b[1..]).unwrap();
                assert_eq!(1 + n + len, b.len());
                let parsed = parse_publish(v5, b[0], &b[1 + n..]).unwrap();
                let id = if qos == 1 { 7 } else { 0 };
                assert_eq!(parsed, (id, &b"hello"[..]), "v5 {v5} qos {qos}");
            }
        }
    }

    #[test]
    fn connect_and_subscribe_have_the_spec_layout() {
        assert_eq!(
            connect_session(false, "c", 60, None),
            [
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'c'
            ]
        );
        assert_eq!(
            connect_session(true, "c", 60, None),
            [
                0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0, 1, b'c'
            ]
        );
        // A persistent session: flags 0, properties of 5 bytes (0x11, expiry 3600).
        assert_eq!(
            connect_session(true, "c", 60, Some(3600)),
            [
                0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 5, 0, 0, 60, 5, 0x11, 0, 0, 0x0E, 0x10, 0,
                1, b'c'
            ]
        );
        assert_eq!(
            connect_session(false, "c", 60, Some(3600)),
            [
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0, 0, 60, 0, 1, b'c'
            ]
        );
        assert!(session_present(&[1, 0]));
        assert!(!session_present(&[0, 0]));
        let mut b = Vec::new();
        publish_with(&mut b, true, b"t", 1, true, 9, b"x");
        assert_eq!(b, [0x33, 7, 0, 1, b't', 0, 9, 0, b'x']);
        assert_eq!(subscribe(false, 1, "t", 1), [0x82, 6, 0, 1, 0, 1, b't', 1]);
        assert_eq!(
            subscribe(true, 1, "t", 0),
            [0x82, 7, 0, 1, 0, 0, 1, b't', 0]
        );
    }

    #[test]
    fn receive_maximum_is_found_after_other_properties() {
        // flags, reason 0, properties (10 bytes): maximum QoS 1, assigned client id "ab",
        // receive maximum 20
        let body = [0, 0, 10, 0x24, 1, 0x12, 0, 2, b'a', b'b', 0x21, 0, 20];
        assert_eq!(parse_connack(true, &body), Ok(Some(20)));
        assert_eq!(parse_connack(true, &[0, 0, 0]), Ok(None));
        assert_eq!(parse_connack(false, &[0, 0]), Ok(None));
        assert_eq!(parse_connack(true, &[0, 0x87, 0]), Err(0x87));
        assert_eq!(parse_connack(false, &[0, 5]), Err(5));
    }
}
