//! The Remaining Length of a fixed header (a Variable Byte Integer, section 1.5.5), for tools
//! and tests that write or frame packets by hand. The codec's own encoder and decoder use the
//! same functions.

use bytes::BufMut;

use crate::wire::{self, VarInt};

/// The largest Remaining Length: 268,435,455 (four bytes).
pub const MAX: usize = crate::MAX_REMAINING_LENGTH as usize;

/// Appends `n` as a Remaining Length. `n` is at most [`MAX`]; a larger one takes more than the
/// four bytes the protocol allows (which a test of malformed input may want).
pub fn put(out: &mut impl BufMut, n: usize) {
    wire::put_varint(out, n);
}

/// The size of the first packet in `buf` (its fixed header included) once all of it is there;
/// `None` while it is incomplete or when its Remaining Length is malformed.
pub fn packet_len(buf: &[u8]) -> Option<usize> {
    match wire::parse_varint(buf.get(1..)?) {
        Ok(VarInt::Value(len, n)) => {
            let total = 1 + n + len as usize;
            (buf.len() >= total).then_some(total)
        }
        Ok(VarInt::Incomplete) | Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_at_every_width() {
        for n in [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            let mut out = vec![0x30];
            put(&mut out, n);
            let header = out.len();
            assert_eq!(packet_len(&out), (n == 0).then_some(header), "{n}");
            out.resize(header + n, 0);
            assert_eq!(packet_len(&out), Some(header + n), "{n}");
        }
    }

    #[test]
    fn the_largest_length_takes_four_bytes() {
        let mut out = vec![0x30];
        put(&mut out, MAX);
        assert_eq!(out, [0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
    }

    #[test]
    fn an_incomplete_or_malformed_length_is_none() {
        assert_eq!(packet_len(&[0x30]), None);
        assert_eq!(packet_len(&[0x30, 0x80]), None);
        assert_eq!(packet_len(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), None);
        assert_eq!(packet_len(&[0x30, 0x02, 0x00]), None);
    }
}
