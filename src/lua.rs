//! The thin, unsafe seam between Rust and the Lua C API.
//!
//! Every Lua-callable function goes through [`entry`]: its body runs inside `catch_unwind`
//! and returns a [`Ret`]; only after the body has returned (so no Rust value with a
//! destructor is alive) does `entry` raise a Lua error or yield. That is the rule that keeps
//! Lua's longjmp from skipping Rust destructors.

use std::ffi::{c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use mlua::ffi;
pub use mlua::ffi::lua_State;

/// What a Lua-callable body asks `entry` to do once the body's frame is gone.
pub enum Ret {
    /// Return this many values from the top of the stack.
    Values(c_int),
    /// Yield the task to the loop; resume into `k` with `ctx`.
    Yield(ffi::lua_KContext, ffi::lua_KFunction),
}

/// A failure that becomes a Lua error (misuse, never a runtime condition).
pub type Raise = String;
pub type LuaResult = Result<Ret, Raise>;

/// The yield sentinel: a light userdata no Lua code can forge. The coroutine shim in
/// `luanet.lua` recognises it and passes the yield through user coroutines.
static SENTINEL: u8 = 0;

pub fn sentinel_ptr() -> *mut std::ffi::c_void {
    &SENTINEL as *const u8 as *mut std::ffi::c_void
}

/// Runs a Lua-callable body and turns its outcome into a C return, a yield or an error.
#[inline]
pub unsafe fn entry(l: *mut lua_State, body: impl FnOnce() -> LuaResult) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(body));
    match outcome {
        Ok(Ok(Ret::Values(n))) => n,
        Ok(Ok(Ret::Yield(ctx, k))) => {
            ffi::lua_pushlightuserdata(l, sentinel_ptr());
            ffi::lua_yieldk(l, 1, ctx, Some(k))
        }
        Ok(Err(message)) => raise(l, message),
        Err(panic) => {
            let message = panic_text(&panic);
            drop(panic);
            raise(l, format!("luanet internal error: {message}"))
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// Pushes `message`, frees it, then raises: nothing owned is left for longjmp to skip.
unsafe fn raise(l: *mut lua_State, message: String) -> c_int {
    ffi::lua_pushlstring(l, message.as_ptr().cast(), message.len());
    drop(message);
    ffi::lua_error(l)
}

// ---- argument checks: each names the function and the argument --------------------------

pub unsafe fn type_name(l: *mut lua_State, idx: c_int) -> &'static str {
    let t = ffi::lua_type(l, idx);
    match CStr::from_ptr(ffi::lua_typename(l, t)).to_str() {
        Ok("nil") => "nil",
        Ok("boolean") => "boolean",
        Ok("number") => "number",
        Ok("string") => "string",
        Ok("table") => "table",
        Ok("function") => "function",
        Ok("thread") => "thread",
        Ok("userdata") => "userdata",
        _ => "value",
    }
}

pub unsafe fn bad_arg(l: *mut lua_State, func: &str, idx: c_int, name: &str, expected: &str) -> Raise {
    format!(
        "{func}: bad argument #{idx} '{name}' ({expected} expected, got {})",
        type_name(l, idx)
    )
}

pub unsafe fn is_none_or_nil(l: *mut lua_State, idx: c_int) -> bool {
    ffi::lua_type(l, idx) <= ffi::LUA_TNIL
}

/// A string argument, borrowed from the Lua stack (valid while the value stays there).
pub unsafe fn check_bytes<'a>(l: *mut lua_State, idx: c_int, func: &str, name: &str) -> Result<&'a [u8], Raise> {
    if ffi::lua_type(l, idx) != ffi::LUA_TSTRING {
        return Err(bad_arg(l, func, idx, name, "string"));
    }
    let mut len = 0usize;
    let ptr = ffi::lua_tolstring(l, idx, &mut len);
    Ok(std::slice::from_raw_parts(ptr.cast(), len))
}

pub unsafe fn check_str<'a>(l: *mut lua_State, idx: c_int, func: &str, name: &str) -> Result<&'a str, Raise> {
    let bytes = check_bytes(l, idx, func, name)?;
    std::str::from_utf8(bytes).map_err(|_| format!("{func}: bad argument #{idx} '{name}' (not valid UTF-8)"))
}

pub unsafe fn check_integer(l: *mut lua_State, idx: c_int, func: &str, name: &str) -> Result<i64, Raise> {
    let mut isnum = 0;
    let v = ffi::lua_tointegerx(l, idx, &mut isnum);
    if isnum == 0 || ffi::lua_type(l, idx) != ffi::LUA_TNUMBER {
        return Err(bad_arg(l, func, idx, name, "integer"));
    }
    Ok(v)
}

pub unsafe fn opt_integer(l: *mut lua_State, idx: c_int, func: &str, name: &str) -> Result<Option<i64>, Raise> {
    if is_none_or_nil(l, idx) {
        return Ok(None);
    }
    check_integer(l, idx, func, name).map(Some)
}

pub unsafe fn check_number(l: *mut lua_State, idx: c_int, func: &str, name: &str) -> Result<f64, Raise> {
    if ffi::lua_type(l, idx) != ffi::LUA_TNUMBER {
        return Err(bad_arg(l, func, idx, name, "number"));
    }
    Ok(ffi::lua_tonumber(l, idx))
}

/// A duration in seconds (nil = none) turned into whole milliseconds, rounded up so a
/// timer never fires early.
pub unsafe fn opt_seconds_ms(l: *mut lua_State, idx: c_int, func: &str, name: &str) -> Result<Option<u64>, Raise> {
    if is_none_or_nil(l, idx) {
        return Ok(None);
    }
    let s = check_number(l, idx, func, name)?;
    seconds_to_ms(s).map(Some).ok_or_else(|| {
        format!("{func}: bad argument #{idx} '{name}' (a duration in seconds, 0 or more, expected)")
    })
}

pub fn seconds_to_ms(s: f64) -> Option<u64> {
    if s.is_nan() || s < 0.0 {
        return None;
    }
    // About 292 million years: far enough to mean "never" without overflowing deadlines.
    let ms = (s * 1000.0).ceil().min(1e16);
    Some(ms as u64)
}

pub unsafe fn check_boolean(l: *mut lua_State, idx: c_int, func: &str, name: &str) -> Result<bool, Raise> {
    if ffi::lua_type(l, idx) != ffi::LUA_TBOOLEAN {
        return Err(bad_arg(l, func, idx, name, "boolean"));
    }
    Ok(ffi::lua_toboolean(l, idx) != 0)
}

// ---- option tables -----------------------------------------------------------------------

/// Reads `opts[key]` onto the stack top and gives its type; the caller pops it.
/// `opts` must be a table (checked by [`check_opts`]); a raw get never runs metamethods.
pub unsafe fn opt_field(l: *mut lua_State, opts: c_int, key: &CStr) -> c_int {
    if ffi::lua_type(l, opts) != ffi::LUA_TTABLE {
        ffi::lua_pushnil(l);
        return ffi::LUA_TNIL;
    }
    ffi::lua_pushstring(l, key.as_ptr());
    ffi::lua_rawget(l, opts)
}

pub unsafe fn check_opts(l: *mut lua_State, idx: c_int, func: &str) -> Result<(), Raise> {
    match ffi::lua_type(l, idx) {
        ffi::LUA_TNONE | ffi::LUA_TNIL | ffi::LUA_TTABLE => Ok(()),
        _ => Err(bad_arg(l, func, idx, "opts", "table")),
    }
}

pub unsafe fn opts_bool(l: *mut lua_State, opts: c_int, key: &CStr, func: &str) -> Result<Option<bool>, Raise> {
    let t = opt_field(l, opts, key);
    let out = match t {
        ffi::LUA_TNIL => Ok(None),
        ffi::LUA_TBOOLEAN => Ok(Some(ffi::lua_toboolean(l, -1) != 0)),
        _ => Err(format!("{func}: option '{}' must be a boolean", key.to_string_lossy())),
    };
    ffi::lua_pop(l, 1);
    out
}

pub unsafe fn opts_integer(l: *mut lua_State, opts: c_int, key: &CStr, func: &str) -> Result<Option<i64>, Raise> {
    let t = opt_field(l, opts, key);
    let mut isnum = 0;
    let v = ffi::lua_tointegerx(l, -1, &mut isnum);
    let out = match t {
        ffi::LUA_TNIL => Ok(None),
        ffi::LUA_TNUMBER if isnum != 0 => Ok(Some(v)),
        _ => Err(format!("{func}: option '{}' must be an integer", key.to_string_lossy())),
    };
    ffi::lua_pop(l, 1);
    out
}

pub unsafe fn opts_seconds_ms(l: *mut lua_State, opts: c_int, key: &CStr, func: &str) -> Result<Option<u64>, Raise> {
    let t = opt_field(l, opts, key);
    let out = match t {
        ffi::LUA_TNIL => Ok(None),
        ffi::LUA_TNUMBER => seconds_to_ms(ffi::lua_tonumber(l, -1))
            .map(Some)
            .ok_or_else(|| format!("{func}: option '{}' must be 0 or more seconds", key.to_string_lossy())),
        _ => Err(format!("{func}: option '{}' must be a number of seconds", key.to_string_lossy())),
    };
    ffi::lua_pop(l, 1);
    out
}

/// Returns (copied) `opts[key]` as a string, if present.
pub unsafe fn opts_string(l: *mut lua_State, opts: c_int, key: &CStr, func: &str) -> Result<Option<String>, Raise> {
    let t = opt_field(l, opts, key);
    let out = match t {
        ffi::LUA_TNIL => Ok(None),
        ffi::LUA_TSTRING => {
            let mut len = 0usize;
            let p = ffi::lua_tolstring(l, -1, &mut len);
            let bytes = std::slice::from_raw_parts(p.cast::<u8>(), len);
            Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
        }
        _ => Err(format!("{func}: option '{}' must be a string", key.to_string_lossy())),
    };
    ffi::lua_pop(l, 1);
    out
}

// ---- pushing results ---------------------------------------------------------------------

pub unsafe fn push_bytes(l: *mut lua_State, bytes: &[u8]) {
    ffi::lua_pushlstring(l, bytes.as_ptr().cast(), bytes.len());
}

/// The one runtime-failure shape: `nil, word, detail`.
pub unsafe fn push_fail(l: *mut lua_State, word: &str, detail: &str) -> Ret {
    ffi::lua_pushnil(l);
    push_bytes(l, word.as_bytes());
    push_bytes(l, detail.as_bytes());
    Ret::Values(3)
}

pub unsafe fn push_true(l: *mut lua_State) -> Ret {
    ffi::lua_pushboolean(l, 1);
    Ret::Values(1)
}

/// The value at `idx` as text, without running metamethods (for reports).
pub unsafe fn lossy(l: *mut lua_State, idx: c_int) -> String {
    if ffi::lua_type(l, idx) == ffi::LUA_TSTRING || ffi::lua_type(l, idx) == ffi::LUA_TNUMBER {
        let mut len = 0usize;
        let p = ffi::lua_tolstring(l, idx, &mut len);
        if !p.is_null() {
            return String::from_utf8_lossy(std::slice::from_raw_parts(p.cast::<u8>(), len)).into_owned();
        }
    }
    format!("({} error object)", type_name(l, idx))
}
