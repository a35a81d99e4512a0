//! Whatever a peer sends on a service connection, against a running luanet service in
//! this process (the property: properties.rs, connection; the harness: connection.lua).
#![no_main]

#[path = "../properties.rs"]
mod properties;

use luanet_core::lua::{ffi, lua_State};

/// libFuzzer's instrumentation sees the Rust core, not the Lua that decides what a
/// connection does with a message (lua/luanet/*.lua). So each Lua line run bumps one of
/// these counters, which libFuzzer reads as coverage along with its own: an input that
/// reaches a new line of connections.lua is kept like one that reaches new Rust code.
const LINES: usize = 1 << 14;

#[used]
#[link_section = "__libfuzzer_extra_counters"]
static mut LUA_LINES: [u8; LINES] = [0; LINES];

/// The line hook: the chunk (its source string, interned for the chunk's life) and the
/// line, hashed to a counter.
unsafe extern "C-unwind" fn count_line(l: *mut lua_State, ar: *mut ffi::lua_Debug) {
    if ffi::lua_getinfo(l, c"S".as_ptr(), ar) == 0 {
        return;
    }
    let h = ((*ar).source as u64 ^ ((*ar).currentline as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_mul(0xff51_afd7_ed55_8ccd);
    let counter = std::ptr::addr_of_mut!(LUA_LINES).cast::<u8>().add((h >> 40) as usize % LINES);
    *counter = (*counter).wrapping_add(1);
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    properties::trace_lua_lines(count_line);
    properties::connection(data)
});
