//! Replays the fuzz targets' committed corpus (fuzz/corpus) and every crash they ever
//! found (fuzz/regressions) through the same properties, under plain `cargo test`.
//! (These tests link Debian's liblua5.4, see build.rs: `connection` runs a real service
//! in a Lua state of its own, loading lua/ from this checkout and this build's core.)

#[path = "../fuzz/properties.rs"]
mod properties;

use std::path::Path;

fn replay(target: &str, property: fn(&[u8])) -> usize {
    let mut n = 0;
    for dir in ["fuzz/corpus", "fuzz/regressions"] {
        let Ok(entries) = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).expect("a corpus file that cannot be read");
            property(&bytes);
            n += 1;
        }
    }
    n
}

#[test]
fn decode_corpus() {
    assert!(replay("decode", properties::decode_round_trip) >= 10, "the decode corpus is missing");
}

#[test]
fn framing_corpus() {
    assert!(replay("framing", properties::framing) >= 10, "the framing corpus is missing");
}

#[test]
fn connection_corpus() {
    assert!(replay("connection", properties::connection) >= 10, "the connection corpus is missing");
}
