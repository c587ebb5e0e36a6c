//! Property tests: every packet the strategies generate, in every version and direction it may
//! travel, encodes to `encoded_len` bytes and decodes back to itself; and a stream of packets
//! decodes the same whole or cut at any byte.

mod common;

#[path = "common/roundtrip.rs"]
mod roundtrip;

use bytes::BytesMut;
use proptest::prelude::*;
use starling_codec::Direction::{ToClient, ToServer};
use starling_codec::ProtocolVersion::{V3_1, V3_1_1, V5};
use starling_codec::strategies;
use starling_codec::{Direction, Packet, ProtocolVersion};

fn roundtrip(dir: Direction, v: ProtocolVersion, p: Packet) -> Result<(), TestCaseError> {
    let bytes = common::encode(&p, v);
    let back = common::decode(dir, v, &bytes).map_err(|e| {
        TestCaseError::fail(format!(
            "{p:?} encoded as {bytes:02X?} fails to decode: {e}"
        ))
    })?;
    prop_assert_eq!(&back, &p);
    roundtrip::check_roundtrip(dir, v, &p);
    Ok(())
}

macro_rules! roundtrip_tests {
    ($(fn $name:ident: $strategy:expr, $dirs:expr, $versions:expr, $wrap:expr;)*) => {$(
        #[test]
        fn $name() {
            for v in $versions {
                for dir in $dirs {
                    proptest!(ProptestConfig::with_cases(128), |(p in $strategy(v, dir))| {
                        roundtrip(dir, v, $wrap(p))?;
                    });
                }
            }
        }
    )*};
}

const ALL: [ProtocolVersion; 3] = [V3_1, V3_1_1, V5];
const BOTH: [Direction; 2] = [ToServer, ToClient];

roundtrip_tests! {
    fn connect_round_trips: |v, _| strategies::connect(v), [ToServer], ALL, |c| Packet::Connect(Box::new(c));
    fn connack_round_trips: |v, _| strategies::connack(v), [ToClient], ALL, Packet::ConnAck;
    fn publish_round_trips: strategies::publish, BOTH, ALL, Packet::Publish;
    fn subscribe_round_trips: |v, _| strategies::subscribe(v), [ToServer], ALL, Packet::Subscribe;
    fn suback_round_trips: |v, _| strategies::suback(v), [ToClient], ALL, Packet::SubAck;
    fn unsubscribe_round_trips: |v, _| strategies::unsubscribe(v), [ToServer], ALL, Packet::Unsubscribe;
    fn unsuback_round_trips: |v, _| strategies::unsuback(v), [ToClient], ALL, Packet::UnsubAck;
    fn disconnect_to_server_round_trips: strategies::disconnect, [ToServer], ALL, Packet::Disconnect;
    fn disconnect_to_client_round_trips: strategies::disconnect, [ToClient], [V5], Packet::Disconnect;
    fn auth_round_trips: |_, dir| strategies::auth(dir), BOTH, [V5], Packet::Auth;
    fn any_packet_round_trips: strategies::packet, BOTH, ALL, |p| p;
}

#[test]
fn acknowledgements_and_pings_round_trip() {
    // PUBACK, PUBREC, PUBREL, PUBCOMP, PINGREQ and PINGRESP come from the `packet` union.
    for v in ALL {
        for dir in BOTH {
            proptest!(ProptestConfig::with_cases(256), |(p in strategies::packet(v, dir))| {
                if matches!(
                    p,
                    Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_)
                        | Packet::PingReq | Packet::PingResp
                ) {
                    roundtrip(dir, v, p)?;
                }
            });
        }
    }
}

#[test]
fn a_stream_decodes_the_same_cut_at_any_byte() {
    for v in ALL {
        for dir in BOTH {
            let strategy = (
                proptest::collection::vec(strategies::packet(v, dir), 1..5),
                any::<prop::sample::Index>(),
            );
            proptest!(ProptestConfig::with_cases(64), |((packets, cut) in strategy)| {
                // A server decoder reads CONNECT only once: keep the stream to one CONNECT.
                let packets: Vec<Packet> = packets
                    .into_iter()
                    .filter(|p| !matches!(p, Packet::Connect(_)))
                    .collect();
                let mut stream = BytesMut::new();
                for p in &packets {
                    p.encode(v, &mut stream).map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                let cut = cut.index(stream.len() + 1);
                let got = roundtrip::decode_split(dir, Some(v), &stream, cut);
                let want: Vec<_> = packets.into_iter().map(Ok).collect();
                prop_assert_eq!(got, want);
            });
        }
    }
}

#[test]
fn arbitrary_bytes_never_panic_and_what_decodes_round_trips() {
    let strategy = (
        0..roundtrip::CONFIGS.len(),
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<prop::sample::Index>(),
    );
    proptest!(ProptestConfig::with_cases(2000), |((config, bytes, cut) in strategy)| {
        let (dir, version) = roundtrip::CONFIGS[config];
        roundtrip::check_input(dir, version, &bytes, cut.index(bytes.len() + 1));
    });
}

#[test]
fn corrupted_valid_packets_never_panic_and_what_decodes_round_trips() {
    for v in ALL {
        for dir in BOTH {
            let strategy = (
                strategies::packet(v, dir),
                any::<prop::sample::Index>(),
                any::<u8>(),
            );
            proptest!(ProptestConfig::with_cases(300), |((p, at, byte) in strategy)| {
                let mut bytes = common::encode(&p, v);
                let i = at.index(bytes.len());
                bytes[i] = byte;
                roundtrip::check_input(dir, Some(v), &bytes, i);
            });
        }
    }
}
