//! Decode → encode → decode equality in every configuration, including a server that does not
//! know the version before CONNECT, with the input also delivered in two parts: the first byte
//! picks the configuration, the second where to split, the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_codec_fuzz::roundtrip::{CONFIGS, check_input};

fuzz_target!(|data: &[u8]| {
    let [pick, split, stream @ ..] = data else {
        return;
    };
    let (dir, version) = CONFIGS[usize::from(*pick) % CONFIGS.len()];
    check_input(dir, version, stream, usize::from(*split));
});
