//! Helpers shared by the integration tests: decode one packet from bytes, encode one packet.
#![allow(dead_code, unreachable_pub)]

use bytes::BytesMut;
use starling_codec::{DecodeError, Decoder, Direction, MAX_PACKET_SIZE, Packet, ProtocolVersion};

/// Decodes exactly one packet from `bytes` (CONNECT through a server decoder with no version).
pub fn decode(
    dir: Direction,
    version: ProtocolVersion,
    bytes: &[u8],
) -> Result<Packet, DecodeError> {
    let mut d = if dir == Direction::ToServer && bytes.first().map(|b| b >> 4) == Some(1) {
        Decoder::new(dir, MAX_PACKET_SIZE)
    } else {
        Decoder::with_version(dir, version, MAX_PACKET_SIZE)
    };
    let mut buf = BytesMut::from(bytes);
    let p = d.decode(&mut buf)?.expect("a whole packet");
    assert!(buf.is_empty(), "bytes left after one packet: {buf:?}");
    Ok(p)
}

/// Encodes `p` for `version`, checking `encoded_len` agrees.
pub fn encode(p: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    let n = p.encode(version, &mut out).expect("encodes");
    assert_eq!(n, out.len());
    assert_eq!(
        p.encoded_len(version),
        n,
        "encoded_len disagrees with encode"
    );
    out.to_vec()
}

/// Asserts `bytes` decode to `expected` and `expected` encodes to `bytes`.
pub fn check(dir: Direction, version: ProtocolVersion, bytes: &[u8], expected: Packet) {
    let got = decode(dir, version, bytes).unwrap_or_else(|e| panic!("decode failed: {e}"));
    assert_eq!(got, expected);
    assert_eq!(
        encode(&expected, version),
        bytes,
        "encoding differs from the spec bytes"
    );
}

/// Asserts `bytes` fail to decode with `code` and `rule`.
pub fn reject(dir: Direction, version: ProtocolVersion, bytes: &[u8], code: u8, rule: &str) {
    match decode(dir, version, bytes) {
        Ok(p) => panic!("decoded {p:?}, expected 0x{code:02X} [{rule}]"),
        Err(e) => {
            assert_eq!(e.reason_code().0, code, "reason code of `{e}`");
            assert_eq!(e.rule(), rule, "rule of `{e}`");
        }
    }
}
