//! Stream framing against anything (the property: properties.rs, framing).
#![no_main]

#[path = "../properties.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| properties::framing(data));
