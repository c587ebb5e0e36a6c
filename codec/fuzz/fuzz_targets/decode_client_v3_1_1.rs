//! Decodes arbitrary bytes as MQTT 3.1.1 sent to a client: no panic, and every
//! decoded packet round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_codec::{Direction, ProtocolVersion};
use starling_codec_fuzz::roundtrip::decode_all;

fuzz_target!(|data: &[u8]| {
    decode_all(Direction::ToClient, Some(ProtocolVersion::V3_1_1), data);
});
