//! The MessagePack decoder against anything (the property: properties.rs, decode_round_trip).
#![no_main]

#[path = "../properties.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| properties::decode_round_trip(data));
