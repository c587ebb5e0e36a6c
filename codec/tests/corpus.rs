//! Replays the committed fuzz corpus (`codec/fuzz/corpus/<target>/`) as an ordinary test: every
//! file goes through the same checks as the fuzz target (no panic, round trips, same result
//! when split), so CI covers the corpus even where cargo-fuzz does not run.
//!
//! `cargo test -p starling-codec --test corpus -- --ignored write_seed_corpus` regenerates the
//! seed files (deterministically, from the proptest strategies and the spec vectors).

#[path = "common/roundtrip.rs"]
mod roundtrip;

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use roundtrip::{CONFIGS, check_input, decode_all};
use starling_codec::{Direction, Packet, ProtocolVersion, strategies};

/// The fuzz targets and the decoder each one drives (`None` for `roundtrip`, whose first input
/// byte picks a configuration).
const TARGETS: [(&str, Option<(Direction, ProtocolVersion)>); 7] = [
    (
        "decode_server_v3_1",
        Some((Direction::ToServer, ProtocolVersion::V3_1)),
    ),
    (
        "decode_server_v3_1_1",
        Some((Direction::ToServer, ProtocolVersion::V3_1_1)),
    ),
    (
        "decode_server_v5",
        Some((Direction::ToServer, ProtocolVersion::V5)),
    ),
    (
        "decode_client_v3_1",
        Some((Direction::ToClient, ProtocolVersion::V3_1)),
    ),
    (
        "decode_client_v3_1_1",
        Some((Direction::ToClient, ProtocolVersion::V3_1_1)),
    ),
    (
        "decode_client_v5",
        Some((Direction::ToClient, ProtocolVersion::V5)),
    ),
    ("roundtrip", None),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn replay(target: Option<(Direction, ProtocolVersion)>, data: &[u8]) {
    match target {
        Some((dir, v)) => {
            decode_all(dir, Some(v), data);
            check_input(dir, Some(v), data, data.len() / 2);
        }
        None => {
            if let [pick, split, stream @ ..] = data {
                let (dir, version) = CONFIGS[usize::from(*pick) % CONFIGS.len()];
                check_input(dir, version, stream, usize::from(*split));
            }
        }
    }
}

#[test]
fn committed_corpus_decodes_without_panic_and_round_trips() {
    let mut files = 0;
    for (name, target) in TARGETS {
        let dir = corpus_dir(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus directory {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            let result = std::panic::catch_unwind(|| replay(target, &data));
            assert!(result.is_ok(), "{} failed", path.display());
            files += 1;
        }
    }
    assert!(files >= 100, "only {files} corpus files");
}

/// Encodes 1..=3 generated packets into one stream.
fn stream(runner: &mut TestRunner, dir: Direction, v: ProtocolVersion) -> Vec<u8> {
    let strategy = proptest::collection::vec(strategies::packet(v, dir), 1..=3);
    let packets = strategy.new_tree(runner).expect("a value").current();
    let mut out = BytesMut::new();
    for p in packets.iter().filter(|p| !matches!(p, Packet::Connect(_))) {
        p.encode(v, &mut out).expect("generated packets encode");
    }
    out.to_vec()
}

fn connect(runner: &mut TestRunner, v: ProtocolVersion) -> Vec<u8> {
    let c = strategies::connect(v)
        .new_tree(runner)
        .expect("a value")
        .current();
    let mut out = BytesMut::new();
    Packet::Connect(Box::new(c))
        .encode(v, &mut out)
        .expect("generated packets encode");
    out.to_vec()
}

#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seed_corpus() {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    for (name, target) in TARGETS {
        let dir = corpus_dir(name);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        for i in 0..30 {
            let data = match target {
                Some((d, v)) => {
                    let mut s = if d == Direction::ToServer && i % 5 == 0 {
                        connect(&mut runner, v)
                    } else {
                        Vec::new()
                    };
                    s.extend(stream(&mut runner, d, v));
                    // Every third seed is cut short or has one byte flipped.
                    match i % 3 {
                        1 if s.len() > 2 => s.truncate(s.len() - 1),
                        2 if !s.is_empty() => {
                            let at = (i * 7) % s.len();
                            s[at] ^= 0x5A;
                        }
                        _ => {}
                    }
                    s
                }
                None => {
                    let pick = i % CONFIGS.len();
                    let (d, version) = CONFIGS[pick];
                    let mut s = vec![pick as u8, (i * 13 % 256) as u8];
                    match version {
                        None => {
                            let v = [
                                ProtocolVersion::V3_1,
                                ProtocolVersion::V3_1_1,
                                ProtocolVersion::V5,
                            ][i % 3];
                            s.extend(connect(&mut runner, v));
                            s.extend(stream(&mut runner, d, v));
                        }
                        Some(v) => s.extend(stream(&mut runner, d, v)),
                    }
                    s
                }
            };
            std::fs::write(dir.join(format!("seed-{i:02}")), &data).expect("write seed");
        }
    }
}
