//! Properties every input must keep, whatever its bytes: decoding never panics, "need more
//! bytes" consumes nothing, a decoded packet encodes to `encoded_len` bytes that decode back to
//! the same packet, and splitting the input anywhere gives the same packets. Shared by the fuzz
//! targets (`codec/fuzz`) and the corpus replay test (`codec/tests/corpus.rs`).

#![allow(dead_code, unreachable_pub)]
use bytes::BytesMut;
use starling_codec::{DecodeError, Decoder, Direction, MAX_PACKET_SIZE, Packet, ProtocolVersion};

/// A decoder for `dir`: with a version when one is given, else waiting for CONNECT.
pub fn decoder(dir: Direction, version: Option<ProtocolVersion>) -> Decoder {
    match version {
        Some(v) => Decoder::with_version(dir, v, MAX_PACKET_SIZE),
        None => Decoder::new(dir, MAX_PACKET_SIZE),
    }
}

/// Decodes every packet of `data` (stopping at the first error or when bytes run out) and checks
/// each one round-trips. Returns what was decoded, the error last if there was one.
pub fn decode_all(
    dir: Direction,
    version: Option<ProtocolVersion>,
    data: &[u8],
) -> Vec<Result<Packet, DecodeError>> {
    let mut d = decoder(dir, version);
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    loop {
        let before = buf.len();
        match d.decode(&mut buf) {
            Ok(Some(p)) => {
                let v = d.version().expect("the version is known after a packet");
                check_roundtrip(dir, v, &p);
                out.push(Ok(p));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "need-more-bytes consumed input");
                return out;
            }
            Err(e) => {
                assert!(!e.rule().is_empty());
                assert!(!e.to_string().is_empty());
                assert!(e.reason_code().is_error());
                out.push(Err(e));
                return out;
            }
        }
    }
}

/// Decodes `data` delivered in two parts, the first `split` bytes then the rest, and returns the
/// same kind of list as [`decode_all`].
pub fn decode_split(
    dir: Direction,
    version: Option<ProtocolVersion>,
    data: &[u8],
    split: usize,
) -> Vec<Result<Packet, DecodeError>> {
    let split = split.min(data.len());
    let mut d = decoder(dir, version);
    let mut buf = BytesMut::from(&data[..split]);
    let mut rest = Some(&data[split..]);
    let mut out = Vec::new();
    loop {
        match d.decode(&mut buf) {
            Ok(Some(p)) => out.push(Ok(p)),
            Ok(None) => match rest.take() {
                Some(r) => buf.extend_from_slice(r),
                None => return out,
            },
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
    }
}

/// Checks that `p` encodes to `encoded_len` bytes that decode to `p` again.
pub fn check_roundtrip(dir: Direction, v: ProtocolVersion, p: &Packet) {
    let mut out = BytesMut::new();
    let len = match p.encode(v, &mut out) {
        Ok(len) => len,
        Err(e) => panic!("a decoded packet does not encode: {e}: {p:?}"),
    };
    assert_eq!(len, out.len());
    assert_eq!(p.encoded_len(v), len, "encoded_len disagrees with encode");
    let encoded = out.clone();
    let mut d = Decoder::with_version(dir, v, MAX_PACKET_SIZE);
    let again = match d.decode(&mut out) {
        Ok(Some(again)) => again,
        other => panic!("re-decoding {encoded:?} of {p:?} gave {other:?}"),
    };
    assert!(out.is_empty(), "bytes left after re-decoding");
    assert_eq!(&again, p, "decode(encode(p)) != p");
}

/// Every decoder configuration the fuzz targets and the corpus test exercise.
pub const CONFIGS: [(Direction, Option<ProtocolVersion>); 7] = [
    (Direction::ToServer, None),
    (Direction::ToServer, Some(ProtocolVersion::V3_1)),
    (Direction::ToServer, Some(ProtocolVersion::V3_1_1)),
    (Direction::ToServer, Some(ProtocolVersion::V5)),
    (Direction::ToClient, Some(ProtocolVersion::V3_1)),
    (Direction::ToClient, Some(ProtocolVersion::V3_1_1)),
    (Direction::ToClient, Some(ProtocolVersion::V5)),
];

/// The whole check for one input: decode in one piece and split at `split`, same results.
pub fn check_input(dir: Direction, version: Option<ProtocolVersion>, data: &[u8], split: usize) {
    let whole = decode_all(dir, version, data);
    let parts = decode_split(dir, version, data, split);
    assert_eq!(whole, parts, "splitting the input changed the result");
}
