//! Lua to MessagePack, walking the Lua stack directly (no intermediate value tree: the
//! prototype measured the serde route through mlua values at 3-4x the cost).
//!
//! Only Lua API calls that cannot raise are used here (type queries, `lua_next` on an
//! unmodified table, raw gets), so the output `Vec` is never skipped by a longjmp.

use std::ffi::{c_int, c_void};

use super::Limits;
use crate::lua::{ffi, lua_State};

pub enum EncodeError {
    /// A value of this Lua type at this path.
    Unsupported(&'static str, String),
    Cycle(String),
    TooDeep(usize, String),
    TooLarge(usize),
    /// The Lua stack could not grow.
    NoStack,
}

impl EncodeError {
    fn at(self, step: &str) -> EncodeError {
        match self {
            EncodeError::Unsupported(t, p) => EncodeError::Unsupported(t, format!("{step}{p}")),
            EncodeError::Cycle(p) => EncodeError::Cycle(format!("{step}{p}")),
            EncodeError::TooDeep(n, p) => EncodeError::TooDeep(n, format!("{step}{p}")),
            other => other,
        }
    }

    /// The message, naming where the bad value sits under `root` (e.g. "args.cb").
    pub fn describe(&self, root: &str) -> String {
        let short = |p: &String| -> String {
            // A path through 100 levels says nothing more than its ends do.
            if p.len() <= 120 {
                return p.clone();
            }
            let head: String = p.chars().take(40).collect();
            let tail: String = p.chars().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            format!("{head}...{tail}")
        };
        match self {
            EncodeError::Unsupported(t, p) => format!("cannot encode a {t} (at {root}{})", short(p)),
            EncodeError::Cycle(p) => format!("a table contains itself (at {root}{})", short(p)),
            EncodeError::TooDeep(n, p) => format!("nested deeper than {n} levels (at {root}{})", short(p)),
            EncodeError::TooLarge(n) => format!("the encoded value is larger than {n} bytes"),
            EncodeError::NoStack => "the Lua stack cannot grow".to_string(),
        }
    }
}

pub struct Encoder<'a> {
    l: *mut lua_State,
    pub out: &'a mut Vec<u8>,
    limits: &'a Limits,
    /// Absolute stack index of the array metatable (tables carrying it are arrays).
    array_mt: c_int,
    /// Tables being encoded right now, from the root down: a table met again is a cycle.
    open: Vec<*const c_void>,
}

impl<'a> Encoder<'a> {
    pub fn new(l: *mut lua_State, out: &'a mut Vec<u8>, limits: &'a Limits, array_mt: c_int) -> Self {
        Encoder { l, out, limits, array_mt, open: Vec::new() }
    }

    /// Appends the value at absolute index `idx`.
    pub unsafe fn value(&mut self, idx: c_int) -> Result<(), EncodeError> {
        let l = self.l;
        match ffi::lua_type(l, idx) {
            ffi::LUA_TNIL | ffi::LUA_TNONE => self.out.push(0xc0),
            ffi::LUA_TBOOLEAN => self.out.push(if ffi::lua_toboolean(l, idx) != 0 { 0xc3 } else { 0xc2 }),
            ffi::LUA_TNUMBER => {
                if ffi::lua_isinteger(l, idx) != 0 {
                    self.int(ffi::lua_tointegerx(l, idx, std::ptr::null_mut()));
                } else {
                    self.out.push(0xcb);
                    self.out.extend_from_slice(&ffi::lua_tonumber(l, idx).to_be_bytes());
                }
            }
            ffi::LUA_TSTRING => {
                let mut len = 0usize;
                let p = ffi::lua_tolstring(l, idx, &mut len);
                self.bytes(std::slice::from_raw_parts(p.cast(), len));
            }
            ffi::LUA_TTABLE => self.table(idx)?,
            ffi::LUA_TFUNCTION => return Err(EncodeError::Unsupported("function", String::new())),
            ffi::LUA_TTHREAD => return Err(EncodeError::Unsupported("coroutine", String::new())),
            ffi::LUA_TLIGHTUSERDATA | ffi::LUA_TUSERDATA => {
                return Err(EncodeError::Unsupported("userdata", String::new()))
            }
            _ => return Err(EncodeError::Unsupported("value of unknown type", String::new())),
        }
        if self.out.len() > self.limits.max_size {
            return Err(EncodeError::TooLarge(self.limits.max_size));
        }
        Ok(())
    }

    fn int(&mut self, v: i64) {
        let out = &mut *self.out;
        match v {
            0..=0x7f => out.push(v as u8),
            -32..=-1 => out.push(v as i8 as u8),
            0x80..=0xff => out.extend_from_slice(&[0xcc, v as u8]),
            0x100..=0xffff => {
                out.push(0xcd);
                out.extend_from_slice(&(v as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(0xce);
                out.extend_from_slice(&(v as u32).to_be_bytes());
            }
            -0x80..=-33 => out.extend_from_slice(&[0xd0, v as i8 as u8]),
            -0x8000..=-0x81 => {
                out.push(0xd1);
                out.extend_from_slice(&(v as i16).to_be_bytes());
            }
            -0x8000_0000..=-0x8001 => {
                out.push(0xd2);
                out.extend_from_slice(&(v as i32).to_be_bytes());
            }
            _ if v > 0 => {
                out.push(0xcf);
                out.extend_from_slice(&(v as u64).to_be_bytes());
            }
            _ => {
                out.push(0xd3);
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    /// Lua strings are bytes: valid UTF-8 goes out as `str`, anything else as `bin`, so
    /// other languages' clients get text as text and binary data intact.
    fn bytes(&mut self, s: &[u8]) {
        let n = s.len();
        let (small, b8, b16, b32) = if std::str::from_utf8(s).is_ok() {
            (n < 32, 0xd9, 0xda, 0xdb)
        } else {
            (false, 0xc4, 0xc5, 0xc6)
        };
        let out = &mut *self.out;
        if small {
            out.push(0xa0 | n as u8);
        } else if n <= 0xff {
            out.extend_from_slice(&[b8, n as u8]);
        } else {
            wide_len(out, n, b16, b32);
        }
        out.extend_from_slice(s);
    }

    /// Appends an array header for `n` elements (the caller appends the elements).
    pub fn array_header(&mut self, n: usize) {
        self.header(n, 0x90, 0xdc, 0xdd);
    }

    fn header(&mut self, n: usize, fix: u8, b16: u8, b32: u8) {
        if n < 16 {
            self.out.push(fix | n as u8);
        } else {
            wide_len(self.out, n, b16, b32);
        }
    }

    unsafe fn table(&mut self, idx: c_int) -> Result<(), EncodeError> {
        let l = self.l;
        if self.open.len() >= self.limits.max_depth {
            return Err(EncodeError::TooDeep(self.limits.max_depth, String::new()));
        }
        let me = ffi::lua_topointer(l, idx);
        if self.open.contains(&me) {
            return Err(EncodeError::Cycle(String::new()));
        }
        if ffi::lua_checkstack(l, 3) == 0 {
            return Err(EncodeError::NoStack);
        }
        self.open.push(me);
        let outcome = match self.shape(idx) {
            Shape::Array(n) => self.array(idx, n),
            Shape::Map(n) => self.map(idx, n),
        };
        self.open.pop();
        outcome
    }

    /// A sequence 1..n with nothing else is an array; a table carrying the array
    /// metatable is an array of length `t.n` when that is an integer (the `table.pack`
    /// convention, exact with holes), else of its raw length; anything else (the empty
    /// table included) is a map.
    unsafe fn shape(&mut self, idx: c_int) -> Shape {
        let l = self.l;
        let n = ffi::lua_rawlen(l, idx);
        if ffi::lua_getmetatable(l, idx) != 0 {
            let forced = ffi::lua_rawequal(l, -1, self.array_mt) != 0;
            ffi::lua_pop(l, 1);
            if forced {
                ffi::lua_pushstring(l, c"n".as_ptr());
                ffi::lua_rawget(l, idx);
                let mut isint = 0;
                let declared = ffi::lua_tointegerx(l, -1, &mut isint);
                let declared = (ffi::lua_isinteger(l, -1) != 0 && isint != 0 && declared >= 0).then_some(declared as usize);
                ffi::lua_pop(l, 1);
                return Shape::Array(declared.unwrap_or(n));
            }
        }
        let mut count = 0usize;
        let mut sequence = true;
        ffi::lua_pushnil(l);
        while ffi::lua_next(l, idx) != 0 {
            count += 1;
            if sequence {
                let mut isint = 0;
                let k = ffi::lua_tointegerx(l, -2, &mut isint);
                sequence = ffi::lua_type(l, -2) == ffi::LUA_TNUMBER
                    && ffi::lua_isinteger(l, -2) != 0
                    && isint != 0
                    && k >= 1
                    && (k as usize) <= n;
            }
            ffi::lua_pop(l, 1);
        }
        if sequence && count == n && n > 0 {
            Shape::Array(n)
        } else {
            Shape::Map(count)
        }
    }

    unsafe fn array(&mut self, idx: c_int, n: usize) -> Result<(), EncodeError> {
        self.header(n, 0x90, 0xdc, 0xdd);
        for i in 1..=n {
            ffi::lua_rawgeti(self.l, idx, i as ffi::lua_Integer);
            let top = ffi::lua_gettop(self.l);
            let done = self.value(top);
            ffi::lua_pop(self.l, 1);
            done.map_err(|e| e.at(&format!("[{i}]")))?;
        }
        Ok(())
    }

    unsafe fn map(&mut self, idx: c_int, n: usize) -> Result<(), EncodeError> {
        let l = self.l;
        self.header(n, 0x80, 0xde, 0xdf);
        ffi::lua_pushnil(l);
        while ffi::lua_next(l, idx) != 0 {
            let top = ffi::lua_gettop(l);
            let done = match self.value(top - 1) {
                Ok(()) => self.value(top),
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                let step = key_step(l, top - 1);
                ffi::lua_pop(l, 2);
                return Err(e.at(&step));
            }
            ffi::lua_pop(l, 1);
        }
        Ok(())
    }
}

/// The 16- or 32-bit length form that strings, binaries, arrays and maps share.
fn wide_len(out: &mut Vec<u8>, n: usize, b16: u8, b32: u8) {
    if n <= 0xffff {
        out.push(b16);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(b32);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

enum Shape {
    Array(usize),
    Map(usize),
}

/// How a key reads in an error path: `.name` for identifier-like strings, `[3]` for
/// integers, `["odd key"]` for other strings, `[?]` for the rest.
unsafe fn key_step(l: *mut lua_State, idx: c_int) -> String {
    match ffi::lua_type(l, idx) {
        ffi::LUA_TSTRING => {
            let mut len = 0usize;
            let p = ffi::lua_tolstring(l, idx, &mut len);
            let s = String::from_utf8_lossy(std::slice::from_raw_parts(p.cast::<u8>(), len)).into_owned();
            let ident = !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit());
            if ident { format!(".{s}") } else { format!("[{s:?}]") }
        }
        ffi::LUA_TNUMBER if ffi::lua_isinteger(l, idx) != 0 => {
            format!("[{}]", ffi::lua_tointegerx(l, idx, std::ptr::null_mut()))
        }
        _ => "[?]".to_string(),
    }
}
