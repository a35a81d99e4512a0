#![allow(dead_code)] // each fuzz target uses one of these
//! What the fuzz targets assert, shared with `tests/fuzz_corpus.rs`, which replays the
//! committed corpus and every past crash under `cargo test` (stable, no sanitizer), so a
//! fixed crash stays fixed even where cargo fuzz cannot run.

use std::ffi::CString;
use std::path::{Path, PathBuf};

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

/// A running luanet service in this thread's own Lua state, fed one input at a time by
/// `connection` (the Lua side, and the property in full: fuzz/connection.lua).
struct Service {
    l: *mut lua_State,
    /// Registry reference of `one(input) -> nil | failure text`.
    one: std::ffi::c_int,
}

/// The repository's `lua/` directory: the fuzz crate's manifest is fuzz/, the main
/// crate's (tests/fuzz_corpus.rs) is the repository itself.
fn lua_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    [manifest.join("lua"), manifest.join("../lua")]
        .into_iter()
        .find(|d| d.join("luanet.lua").is_file())
        .expect("the repository's lua/ directory (with luanet.lua) is not where it should be")
}

impl Service {
    /// A fresh Lua state with the standard libraries, `require "luanet"` served from the
    /// repository's lua/ (no installed rock) and `luanet.core` from this very build (the
    /// crate linked in as an rlib), running the harness that starts the service.
    fn start() -> Service {
        // A Unix socket path must stay under 108 bytes: a short directory per process
        // (removed first: a pid can come round again).
        let work = std::env::temp_dir().join(format!("luanet-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("cannot make the fuzz work directory");
        let lua_dir = lua_dir();
        unsafe {
            let l = ffi::luaL_newstate();
            assert!(!l.is_null(), "no memory for a Lua state");
            if let Some(hook) = LINE_HOOK.with(std::cell::Cell::get) {
                ffi::lua_sethook(l, Some(hook), ffi::LUA_MASKLINE, 0);
            }
            ffi::luaL_openlibs(l);
            // package.preload["luanet.core"] = luaopen_luanet_core
            ffi::lua_getglobal(l, c"package".as_ptr());
            ffi::lua_getfield(l, -1, c"preload".as_ptr());
            ffi::lua_pushcfunction(l, luanet_core::luaopen_luanet_core);
            ffi::lua_setfield(l, -2, c"luanet.core".as_ptr());
            ffi::lua_settop(l, 0);

            let code = include_str!("connection.lua");
            let loaded = ffi::luaL_loadbuffer(l, code.as_ptr().cast(), code.len(), c"@fuzz/connection.lua".as_ptr());
            assert_eq!(loaded, ffi::LUA_OK, "fuzz/connection.lua: {}", luanet_core::lua::lossy(l, -1));
            for arg in [lua_dir.as_path(), work.as_path()] {
                let arg = CString::new(arg.to_string_lossy().as_bytes()).expect("a path with a NUL in it");
                ffi::lua_pushstring(l, arg.as_ptr());
            }
            let status = ffi::lua_pcall(l, 2, 1, 0);
            assert_eq!(status, ffi::LUA_OK, "starting the service failed: {}", luanet_core::lua::lossy(l, -1));
            assert_eq!(ffi::lua_type(l, -1), ffi::LUA_TFUNCTION, "fuzz/connection.lua must return a function");
            let one = ffi::luaL_ref(l, ffi::LUA_REGISTRYINDEX);
            Service { l, one }
        }
    }

    /// Feeds one input; panics (a crash for libFuzzer, a failure for cargo test) when the
    /// property does not hold or the harness raised.
    fn feed(&self, data: &[u8]) {
        let l = self.l;
        let outcome = unsafe {
            ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, self.one as ffi::lua_Integer);
            ffi::lua_pushlstring(l, data.as_ptr().cast(), data.len());
            let status = ffi::lua_pcall(l, 1, 1, 0);
            let outcome = match (status, ffi::lua_type(l, -1)) {
                (ffi::LUA_OK, ffi::LUA_TNIL) => None,
                (ffi::LUA_OK, _) => Some(luanet_core::lua::lossy(l, -1)),
                _ => Some(format!("an error came out of the harness: {}", luanet_core::lua::lossy(l, -1))),
            };
            ffi::lua_settop(l, 0);
            outcome
        };
        match outcome.as_deref() {
            None => {}
            // Ctrl-C while luanet.run ran: luanet stopped the loop instead of the process.
            Some("interrupted") => std::process::exit(130),
            Some(failure) => panic!("connection property failed: {failure}"),
        }
    }
}

thread_local! {
    static SERVICE: Service = Service::start();
    /// A line hook for the service's Lua state, set before its first input (see
    /// `trace_lua_lines`).
    static LINE_HOOK: std::cell::Cell<Option<ffi::lua_Hook>> = const { std::cell::Cell::new(None) };
}

/// Has the service's Lua state call `hook` on every Lua line it runs, from the start
/// (coroutines inherit it). The fuzz target uses it to show libFuzzer which Lua lines an
/// input reached: most of the protocol handling is Lua, which its instrumentation of
/// the Rust code cannot see. Without it (cargo test), nothing is hooked.
pub fn trace_lua_lines(hook: ffi::lua_Hook) {
    LINE_HOOK.with(|h| h.set(Some(hook)));
}

/// What a running service does with any bytes a peer sends on a service connection
/// (docs/PROTOCOL.md), however they are cut into reads: the service stays up, no task of
/// it dies of an error, it lets go of the connection and of everything held for it once
/// the peer is gone, and a new well-behaved client still gets its Echo answered within
/// 2 s. The first three bytes of `data` are control (flags and cut points), the rest
/// goes on the wire: see fuzz/connection.lua.
pub fn connection(data: &[u8]) {
    SERVICE.with(|s| s.feed(data));
}
