//! The MessagePack codec: any Lua value (nil, booleans, integers and floats kept apart,
//! binary-safe strings, nested tables) to bytes and back. The rules are in docs/codec.md.

use std::cell::Cell;
use std::ffi::c_int;

use crate::lua::{self, ffi, lua_State, push_fail, Ret};
use crate::socket::reactor;

pub mod decode;
pub mod encode;

pub const ENCODE_ERROR: &str = "encode error";
pub const DECODE_ERROR: &str = "decode error";

/// The registry key of the metatable that marks a table as an array.
pub const ARRAY_MT: &std::ffi::CStr = c"luanet.array";

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Tables (or arrays and maps) nested deeper than this are refused both ways.
    pub max_depth: usize,
    /// Encoded size limit, for encoding and for the input of decoding.
    pub max_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 100, max_size: 16 * 1024 * 1024 }
    }
}

/// Per-state codec settings (kept in the reactor's state block).
#[derive(Default)]
pub struct Codec {
    pub limits: Cell<Limits>,
}

/// Pushes the array metatable; returns its absolute index.
pub unsafe fn push_array_mt(l: *mut lua_State) -> c_int {
    ffi::lua_getfield(l, ffi::LUA_REGISTRYINDEX, ARRAY_MT.as_ptr());
    ffi::lua_gettop(l)
}

/// Encodes the value at `idx` onto `out`. On failure, the message names the bad value's
/// place under `root`.
pub unsafe fn encode_into(l: *mut lua_State, idx: c_int, out: &mut Vec<u8>, limits: &Limits, root: &str) -> Result<(), String> {
    let idx = ffi::lua_absindex(l, idx);
    let array_mt = push_array_mt(l);
    let outcome = encode::Encoder::new(l, out, limits, array_mt).value(idx);
    ffi::lua_pop(l, 1);
    outcome.map_err(|e| e.describe(root))
}

unsafe fn limits_from(l: *mut lua_State, idx: c_int, func: &str, base: Limits) -> Result<Limits, String> {
    lua::check_opts(l, idx, func)?;
    let mut limits = base;
    if let Some(d) = lua::opts_integer(l, idx, c"max_depth", func)? {
        if !(1..=10_000).contains(&d) {
            return Err(format!("{func}: option 'max_depth' must be 1 to 10000"));
        }
        limits.max_depth = d as usize;
    }
    if let Some(s) = lua::opts_integer(l, idx, c"max_size", func)? {
        if !(1..=(1i64 << 31)).contains(&s) {
            return Err(format!("{func}: option 'max_size' must be 1 to 2^31 bytes"));
        }
        limits.max_size = s as usize;
    }
    Ok(limits)
}

/// `luanet.pack(value, [opts]) -> string | nil, "encode error", detail`
pub unsafe extern "C-unwind" fn pack(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let r = reactor(l);
        let limits = limits_from(l, 2, "luanet.pack", r.codec.limits.get())?;
        let mut out = r.take_scratch_out();
        let outcome = encode_into(l, 1, &mut out, &limits, "value");
        let ret = match outcome {
            Ok(()) => {
                lua::push_bytes(l, &out);
                Ret::Values(1)
            }
            Err(detail) => push_fail(l, ENCODE_ERROR, &detail),
        };
        r.give_back_scratch_out(out);
        Ok(ret)
    })
}

/// `luanet.unpack(bytes, [opts]) -> value | nil, "decode error", detail`
pub unsafe extern "C-unwind" fn unpack(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let bytes = lua::check_bytes(l, 1, "luanet.unpack", "bytes")?;
        let limits = limits_from(l, 2, "luanet.unpack", reactor(l).codec.limits.get())?;
        // Everything, leftover bytes included, is refused before any Lua value is built.
        match decode::check(bytes, 0, &limits) {
            Err(e) => Ok(push_fail(l, DECODE_ERROR, &e.to_string())),
            Ok(end) if end != bytes.len() => {
                Ok(push_fail(l, DECODE_ERROR, &decode::DecodeError::Trailing(bytes.len() - end).to_string()))
            }
            Ok(_) => {
                let array_mt = push_array_mt(l);
                decode::build(l, bytes, 0, array_mt);
                ffi::lua_remove(l, array_mt);
                Ok(Ret::Values(1))
            }
        }
    })
}

/// `luanet.array([t]) -> t`: marks `t` (or a new table) to encode as an array.
pub unsafe extern "C-unwind" fn array(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        match ffi::lua_type(l, 1) {
            ffi::LUA_TNONE | ffi::LUA_TNIL => {
                ffi::lua_settop(l, 0);
                ffi::lua_createtable(l, 0, 0);
            }
            ffi::LUA_TTABLE => {
                ffi::lua_settop(l, 1);
                if ffi::lua_getmetatable(l, 1) != 0 {
                    push_array_mt(l);
                    let same = ffi::lua_rawequal(l, -1, -2) != 0;
                    ffi::lua_pop(l, 2);
                    if !same {
                        return Err("luanet.array: the table already has a metatable".into());
                    }
                }
            }
            _ => return Err(lua::bad_arg(l, "luanet.array", 1, "t", "table or nil")),
        }
        push_array_mt(l);
        ffi::lua_setmetatable(l, 1);
        Ok(Ret::Values(1))
    })
}

/// `luanet.is_array(t) -> boolean`
pub unsafe extern "C-unwind" fn is_array(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let marked = ffi::lua_type(l, 1) == ffi::LUA_TTABLE && ffi::lua_getmetatable(l, 1) != 0 && {
            push_array_mt(l);
            ffi::lua_rawequal(l, -1, -2) != 0
        };
        ffi::lua_pushboolean(l, marked as c_int);
        Ok(Ret::Values(1))
    })
}

/// `luanet.codec_limits([opts]) -> { max_depth = n, max_size = n }`: sets the defaults for
/// this Lua state (every pack, unpack and message); returns them.
pub unsafe extern "C-unwind" fn codec_limits(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let r = reactor(l);
        let limits = limits_from(l, 1, "luanet.codec_limits", r.codec.limits.get())?;
        r.codec.limits.set(limits);
        ffi::lua_createtable(l, 0, 2);
        ffi::lua_pushinteger(l, limits.max_depth as ffi::lua_Integer);
        ffi::lua_setfield(l, -2, c"max_depth".as_ptr());
        ffi::lua_pushinteger(l, limits.max_size as ffi::lua_Integer);
        ffi::lua_setfield(l, -2, c"max_size".as_ptr());
        Ok(Ret::Values(1))
    })
}

/// Creates the array metatable in the registry (`__name` for error messages and tostring).
pub unsafe fn register(l: *mut lua_State) {
    ffi::luaL_newmetatable(l, ARRAY_MT.as_ptr());
    ffi::lua_pop(l, 1);
}
