//! The data representations of section 1.5: a cursor that reads them out of a frozen packet body
//! (slicing, never copying) and the functions that size and write them.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{DecodeError, EncodeError, MAX_REMAINING_LENGTH, MqttString};

const SHORT: DecodeError = DecodeError::malformed(
    "2.1.4",
    "packet is shorter than its fields (remaining length too small)",
);

// === impl Reader ===

/// A cursor over one packet's body. Every read checks the bytes are there: running out is a
/// Malformed Packet, never a panic.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(SHORT);
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(SHORT);
        }
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(SHORT);
        }
        Ok(self.buf.get_u32())
    }

    /// A Variable Byte Integer: at most 4 bytes [MQTT-1.5.5], minimally encoded [MQTT-1.5.5-1].
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match parse_varint(&self.buf)? {
            VarInt::Value(v, n) => {
                self.buf.advance(n);
                Ok(v)
            }
            VarInt::Incomplete => Err(SHORT),
        }
    }

    /// `n` bytes, sharing the packet's buffer.
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(SHORT);
        }
        Ok(self.buf.split_to(n))
    }

    /// Binary Data: a two-byte length and that many bytes [MQTT-1.5.6].
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// A UTF-8 Encoded String [MQTT-1.5.4].
    pub(crate) fn string(&mut self) -> Result<MqttString, DecodeError> {
        let b = self.binary()?;
        MqttString::from_wire(b)
    }

    /// Everything left (a payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails when bytes are left over after the last field.
    pub(crate) fn finish(&self, rule: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::malformed(
                rule,
                "packet has bytes after its last field (remaining length too large)",
            ))
        }
    }
}

/// The outcome of reading a Variable Byte Integer from a prefix of a buffer.
pub(crate) enum VarInt {
    /// The value and how many bytes encoded it.
    Value(u32, usize),
    /// The buffer ends before the last byte (fewer than 4 bytes seen).
    Incomplete,
}

/// Reads a Variable Byte Integer from the start of `b` [MQTT-1.5.5].
pub(crate) fn parse_varint(b: &[u8]) -> Result<VarInt, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&byte) = b.get(i) else {
            return Ok(VarInt::Incomplete);
        };
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // [MQTT-1.5.5-1] the minimum number of bytes: a last byte of 0 after a first one
            // means a shorter encoding existed.
            if i > 0 && byte == 0 {
                return Err(DecodeError::malformed(
                    "MQTT-1.5.5-1",
                    "variable byte integer is not minimally encoded",
                ));
            }
            return Ok(VarInt::Value(value, i + 1));
        }
    }
    Err(DecodeError::malformed(
        "1.5.5",
        "variable byte integer longer than 4 bytes",
    ))
}

// === sizing and writing ===

/// How many bytes the Variable Byte Integer `v` takes.
pub(crate) const fn varint_len(v: usize) -> usize {
    if v < 128 {
        1
    } else if v < 16_384 {
        2
    } else if v < 2_097_152 {
        3
    } else {
        4
    }
}

/// Checks a Variable Byte Integer value is representable.
pub(crate) fn check_varint(v: u32) -> Result<usize, EncodeError> {
    if v > MAX_REMAINING_LENGTH {
        return Err(EncodeError::VarIntTooLarge(v));
    }
    Ok(varint_len(v as usize))
}

/// The size of a string on the wire, after checking [MQTT-1.5.4-2] and the length limit.
pub(crate) fn string_len(s: &MqttString) -> Result<usize, EncodeError> {
    let n = s.len();
    if n > usize::from(u16::MAX) {
        return Err(EncodeError::StringTooLong(n));
    }
    if s.as_bytes().contains(&0) {
        return Err(EncodeError::NullCharacter);
    }
    Ok(2 + n)
}

/// The size of binary data on the wire, after checking the length limit.
pub(crate) fn binary_len(b: &[u8]) -> Result<usize, EncodeError> {
    if b.len() > usize::from(u16::MAX) {
        return Err(EncodeError::BinaryTooLong(b.len()));
    }
    Ok(2 + b.len())
}

/// Writes a Variable Byte Integer; the caller has checked it fits in 4 bytes.
pub(crate) fn put_varint(out: &mut impl BufMut, mut v: usize) {
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

/// Writes a string whose size was checked by [`string_len`].
pub(crate) fn put_string(out: &mut BytesMut, s: &MqttString) {
    put_binary(out, s.as_bytes());
}

/// Writes binary data whose size was checked by [`binary_len`].
pub(crate) fn put_binary(out: &mut BytesMut, b: &[u8]) {
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

/// The total size of a packet with this remaining length, after checking the limit.
pub(crate) fn total_len(remaining: usize) -> Result<usize, EncodeError> {
    if remaining > MAX_REMAINING_LENGTH as usize {
        return Err(EncodeError::PacketTooLarge(remaining));
    }
    Ok(1 + varint_len(remaining) + remaining)
}

/// Writes a fixed header.
pub(crate) fn put_header(out: &mut BytesMut, first: u8, remaining: usize) {
    out.put_u8(first);
    put_varint(out, remaining);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_examples_of_table_1_1_round_trip() {
        for (v, bytes) in [
            (0usize, &[0x00u8][..]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            let mut out = BytesMut::new();
            put_varint(&mut out, v);
            assert_eq!(&out[..], bytes, "{v}");
            assert_eq!(varint_len(v), bytes.len());
            match parse_varint(bytes) {
                Ok(VarInt::Value(got, n)) => {
                    assert_eq!(got as usize, v);
                    assert_eq!(n, bytes.len());
                }
                _ => panic!("{v} did not parse"),
            }
        }
    }

    #[test]
    fn five_byte_varint_is_malformed() {
        let e = parse_varint(&[0x80, 0x80, 0x80, 0x80, 0x01]).err().unwrap();
        assert_eq!(e.rule(), "1.5.5");
        assert_eq!(e.reason_code().0, 0x81);
    }

    #[test]
    fn non_minimal_varint_is_malformed_per_1_5_5_1() {
        let e = parse_varint(&[0x80, 0x00]).err().unwrap();
        assert_eq!(e.rule(), "MQTT-1.5.5-1");
    }
}
