#![allow(dead_code)] // each fuzz target uses one of these
//! What the fuzz targets assert, shared with `tests/fuzz_corpus.rs`, which replays the
//! committed corpus and every past crash under `cargo test` (stable, no sanitizer), so a
//! fixed crash stays fixed even where cargo fuzz cannot run.

use luanet_core::lua::{ffi, lua_State};
use luanet_core::msgpack::decode::{self, DecodeError};
use luanet_core::msgpack::{encode_into, push_array_mt, Limits, ARRAY_MT};

pub const LIMITS: Limits = Limits { max_depth: 100, max_size: 1 << 20 };

struct State(*mut lua_State);

thread_local! {
    static STATE: State = unsafe {
        let l = ffi::luaL_newstate();
        assert!(!l.is_null(), "no memory for a Lua state");
        ffi::luaL_newmetatable(l, ARRAY_MT.as_ptr());
        ffi::lua_settop(l, 0);
        State(l)
    };
}

/// The decoder against anything: `check` must reject what `build` could not build,
/// `build` must end where `check` said, and what was built must encode again into bytes
/// that `check` accepts whole and that come round to the same length (map order aside,
/// the same value).
pub fn decode_round_trip(data: &[u8]) {
    let Ok(end) = decode::check(data, 0, &LIMITS) else { return };
    assert!(end <= data.len());
    STATE.with(|s| unsafe {
        let l = s.0;
        let mt = push_array_mt(l);
        let built_end = decode::build(l, data, 0, mt);
        assert_eq!(built_end, end, "build ended elsewhere than check");
        let mut first = Vec::new();
        let encoded = encode_into(l, -1, &mut first, &LIMITS, "value");
        ffi::lua_settop(l, 0);
        if encoded.is_ok() {
            assert_eq!(decode::check(&first, 0, &LIMITS), Ok(first.len()), "re-encoded bytes rejected");
            let mt = push_array_mt(l);
            decode::build(l, &first, 0, mt);
            let mut second = Vec::new();
            assert!(encode_into(l, -1, &mut second, &LIMITS, "value").is_ok(),
                "a value decoded from our own bytes did not encode");
            assert_eq!(first.len(), second.len(), "the value changed on its way round");
            ffi::lua_settop(l, 0);
        }
        ffi::lua_gc(l, ffi::LUA_GCSTEP, 0);
    });
}

fn waits(r: &Result<usize, DecodeError>) -> bool {
    matches!(r, Err(DecodeError::Truncated) | Err(DecodeError::Forged(_)))
}

/// Stream framing: a reader calls `check` on whatever part of a message has arrived and
/// waits for more on `Truncated` or `Forged` (docs/PROTOCOL.md, "Framing"). So every
/// prefix of a complete value must say "wait", never "done" early or "malformed"; the
/// value must be found again with any bytes after it; an incomplete input is incomplete
/// at every prefix; and no prefix of a malformed input passes for a complete value.
pub fn framing(data: &[u8]) {
    let whole = decode::check(data, 0, &LIMITS);
    let prefix = |k: usize| decode::check(&data[..k], 0, &LIMITS);
    match whole {
        Ok(end) => {
            for k in 0..end {
                let r = prefix(k);
                assert!(waits(&r), "prefix {k} of a {end}-byte value gave {r:?}");
            }
            assert_eq!(prefix(end), Ok(end));
        }
        Err(ref e) if waits(&whole) => {
            for k in 0..data.len() {
                let r = prefix(k);
                assert!(waits(&r), "prefix {k} of incomplete input ({e:?}) gave {r:?}");
            }
        }
        Err(_) => {
            for k in 0..data.len() {
                let r = prefix(k);
                assert!(r.is_err(), "prefix {k} of malformed input passed as a value: {r:?}");
            }
        }
    }
}
