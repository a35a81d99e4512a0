//! MessagePack to Lua, in two passes: `check` walks the bytes in pure Rust and rejects
//! anything malformed (truncated, forged lengths, nil or NaN keys, unknown types, too deep)
//! without allocating; `build` then creates the Lua values and cannot fail except for
//! running out of memory. A claimed length is believed only if the bytes left could hold
//! that many elements, so a 4-billion-element header allocates nothing.

use std::ffi::c_int;

use super::Limits;
use crate::lua::{ffi, lua_State};

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    Forged(&'static str),
    TooDeep(usize),
    TooLarge(usize),
    BadKey(&'static str),
    Unsupported(u8),
    Trailing(usize),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "truncated input"),
            DecodeError::Forged(what) => write!(f, "{what} claims more elements than the input holds"),
            DecodeError::TooDeep(limit) => write!(f, "nested deeper than {limit} levels"),
            DecodeError::TooLarge(limit) => write!(f, "input larger than {limit} bytes"),
            DecodeError::BadKey(what) => write!(f, "a map key is {what}, which a Lua table cannot hold"),
            DecodeError::Unsupported(byte) => write!(f, "unsupported MessagePack type 0x{byte:02x}"),
            DecodeError::Trailing(n) => write!(f, "unexpected bytes after the value ({n})"),
        }
    }
}

/// What one header byte (and its length fields) says comes next.
enum Item {
    Nil,
    Bool,
    Int,
    Float,
    Bytes(usize),
    Array(usize),
    Map(usize),
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.bytes.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Reads one header, skipping the payload of scalars (so the cursor is at the next item).
    fn item(&mut self) -> Result<(Item, u8), DecodeError> {
        let b = self.byte()?;
        let item = match b {
            0x00..=0x7f | 0xe0..=0xff => Item::Int,
            0x80..=0x8f => Item::Map((b & 0x0f) as usize),
            0x90..=0x9f => Item::Array((b & 0x0f) as usize),
            0xa0..=0xbf => Item::Bytes((b & 0x1f) as usize),
            0xc0 => Item::Nil,
            0xc2 | 0xc3 => Item::Bool,
            0xc4 | 0xd9 => Item::Bytes(self.be(1)? as usize),
            0xc5 | 0xda => Item::Bytes(self.be(2)? as usize),
            0xc6 | 0xdb => Item::Bytes(self.be(4)? as usize),
            0xca => {
                self.take(4)?;
                Item::Float
            }
            0xcb => {
                self.take(8)?;
                Item::Float
            }
            0xcc | 0xd0 => {
                self.take(1)?;
                Item::Int
            }
            0xcd | 0xd1 => {
                self.take(2)?;
                Item::Int
            }
            0xce | 0xd2 => {
                self.take(4)?;
                Item::Int
            }
            0xcf | 0xd3 => {
                self.take(8)?;
                Item::Int
            }
            0xdc => Item::Array(self.be(2)? as usize),
            0xdd => Item::Array(self.be(4)? as usize),
            0xde => Item::Map(self.be(2)? as usize),
            0xdf => Item::Map(self.be(4)? as usize),
            // 0xc1 (never used) and the extension types have no Lua meaning.
            _ => return Err(DecodeError::Unsupported(b)),
        };
        if let Item::Bytes(n) = item {
            self.take(n)?;
        }
        Ok((item, b))
    }
}

/// Validates one value starting at `pos`; returns where it ends.
pub fn check(bytes: &[u8], pos: usize, limits: &Limits) -> Result<usize, DecodeError> {
    if bytes.len() > limits.max_size {
        return Err(DecodeError::TooLarge(limits.max_size));
    }
    let mut c = Cursor { bytes, pos };
    check_value(&mut c, limits, 1)?;
    Ok(c.pos)
}

fn check_value(c: &mut Cursor, limits: &Limits, depth: usize) -> Result<(), DecodeError> {
    let (item, _) = c.item()?;
    match item {
        Item::Array(n) => {
            if depth > limits.max_depth {
                return Err(DecodeError::TooDeep(limits.max_depth));
            }
            if n > c.left() {
                return Err(DecodeError::Forged("an array"));
            }
            for _ in 0..n {
                check_value(c, limits, depth + 1)?;
            }
        }
        Item::Map(n) => {
            if depth > limits.max_depth {
                return Err(DecodeError::TooDeep(limits.max_depth));
            }
            if n > c.left() / 2 {
                return Err(DecodeError::Forged("a map"));
            }
            for _ in 0..n {
                check_key(c)?;
                check_value(c, limits, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Keys must be values a Lua table can be indexed by: not nil, not NaN. Container keys
/// are refused too (they are legal MessagePack but no Lua code could look them up).
fn check_key(c: &mut Cursor) -> Result<(), DecodeError> {
    let start = c.pos;
    let (item, b) = c.item()?;
    match item {
        Item::Nil => Err(DecodeError::BadKey("nil")),
        Item::Array(_) | Item::Map(_) => Err(DecodeError::BadKey("an array or map")),
        Item::Float => {
            let raw = &c.bytes[start + 1..c.pos];
            let nan = if b == 0xca {
                f32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]).is_nan()
            } else {
                f64::from_be_bytes(raw.try_into().unwrap_or([0; 8])).is_nan()
            };
            if nan { Err(DecodeError::BadKey("NaN")) } else { Ok(()) }
        }
        _ => Ok(()),
    }
}

/// Pushes the value at `pos` (already validated by `check`); returns where it ends.
/// Decoded arrays get the array metatable (at `array_mt`, an absolute index) so they
/// encode back as arrays even when empty.
pub unsafe fn build(l: *mut lua_State, bytes: &[u8], pos: usize, array_mt: c_int) -> usize {
    let mut c = Cursor { bytes, pos };
    build_value(l, &mut c, array_mt);
    c.pos
}

unsafe fn build_value(l: *mut lua_State, c: &mut Cursor, array_mt: c_int) {
    // `check` accepted these bytes, so every read below succeeds; the fallbacks only keep
    // the code free of panics.
    ffi::lua_checkstack(l, 4);
    let start = c.pos;
    let Ok((item, b)) = c.item() else {
        ffi::lua_pushnil(l);
        return;
    };
    let raw = &c.bytes[start + 1..c.pos];
    match item {
        Item::Nil => ffi::lua_pushnil(l),
        Item::Bool => ffi::lua_pushboolean(l, (b == 0xc3) as c_int),
        Item::Int => ffi::lua_pushinteger(l, int_value(b, raw)),
        Item::Float => ffi::lua_pushnumber(l, float_value(b, raw)),
        Item::Bytes(n) => {
            let payload = &c.bytes[c.pos - n..c.pos];
            ffi::lua_pushlstring(l, payload.as_ptr().cast(), payload.len());
        }
        Item::Array(n) => {
            ffi::lua_createtable(l, n as c_int, 0);
            let mut holes = false;
            for i in 1..=n {
                build_value(l, c, array_mt);
                holes |= ffi::lua_type(l, -1) == ffi::LUA_TNIL;
                ffi::lua_rawseti(l, -2, i as ffi::lua_Integer);
            }
            if holes {
                // `#t` is unreliable with nils inside: give the length as `t.n`.
                ffi::lua_pushinteger(l, n as ffi::lua_Integer);
                ffi::lua_setfield(l, -2, c"n".as_ptr());
            }
            ffi::lua_pushvalue(l, array_mt);
            ffi::lua_setmetatable(l, -2);
        }
        Item::Map(n) => {
            ffi::lua_createtable(l, 0, n as c_int);
            for _ in 0..n {
                build_value(l, c, array_mt);
                build_value(l, c, array_mt);
                ffi::lua_rawset(l, -3);
            }
        }
    }
}

/// For an (already checked) array value: its length and where its first element starts.
pub fn array_len(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut c = Cursor { bytes, pos: 0 };
    match c.item() {
        Ok((Item::Array(n), _)) => Some((n, c.pos)),
        _ => None,
    }
}

fn int_value(b: u8, raw: &[u8]) -> i64 {
    let be = raw.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64);
    match b {
        0x00..=0x7f => b as i64,
        0xe0..=0xff => b as i8 as i64,
        0xcc..=0xce => be as i64,
        // Above i64::MAX wraps like Lua's own integer overflow (documented).
        0xcf => be as i64,
        0xd0 => be as u8 as i8 as i64,
        0xd1 => be as u16 as i16 as i64,
        0xd2 => be as u32 as i32 as i64,
        _ => be as i64,
    }
}

fn float_value(b: u8, raw: &[u8]) -> f64 {
    if b == 0xca {
        f32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as f64
    } else {
        f64::from_be_bytes(raw.try_into().unwrap_or([0; 8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn accepts_well_formed_values_and_reports_their_end() {
        let cases: &[&[u8]] = &[
            &[0xc0],
            &[0x82, 0xa1, b'a', 0x01, 0xa1, b'b', 0x02],
            &[0x93, 0x01, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0xc4, 0x01, 0xff],
            &[0xdc, 0x00, 0x01, 0xc3],
        ];
        for bytes in cases {
            assert_eq!(check(bytes, 0, &limits()), Ok(bytes.len()), "{bytes:02x?}");
        }
    }

    #[test]
    fn rejects_truncation_at_every_length() {
        let whole = [0x82, 0xa1, b'a', 0xcd, 0x01, 0x00, 0xa1, b'b', 0x92, 0xc2, 0xc3];
        assert_eq!(check(&whole, 0, &limits()), Ok(whole.len()));
        for cut in 0..whole.len() {
            // A cut container is caught as soon as its count exceeds what is left.
            let got = check(&whole[..cut], 0, &limits());
            assert!(matches!(got, Err(DecodeError::Truncated) | Err(DecodeError::Forged(_))), "cut at {cut}: {got:?}");
        }
    }

    #[test]
    fn forged_lengths_allocate_nothing() {
        assert_eq!(check(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0], 0, &limits()), Err(DecodeError::Forged("an array")));
        assert_eq!(check(&[0xdf, 0xff, 0xff, 0xff, 0xff], 0, &limits()), Err(DecodeError::Forged("a map")));
        assert_eq!(check(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'x'], 0, &limits()), Err(DecodeError::Truncated));
    }

    #[test]
    fn rejects_bad_keys_unknown_types_and_depth() {
        assert_eq!(check(&[0x81, 0xc0, 0x01], 0, &limits()), Err(DecodeError::BadKey("nil")));
        let nan = [0x81, 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0, 0x01];
        assert_eq!(check(&nan, 0, &limits()), Err(DecodeError::BadKey("NaN")));
        assert_eq!(check(&[0xc1], 0, &limits()), Err(DecodeError::Unsupported(0xc1)));
        assert_eq!(check(&[0xd4, 0x01, 0x00], 0, &limits()), Err(DecodeError::Unsupported(0xd4)));
        let deep = vec![0x91u8; 1000];
        assert_eq!(check(&deep, 0, &limits()), Err(DecodeError::TooDeep(limits().max_depth)));
    }

    #[test]
    fn integers_of_every_width() {
        let cases: &[(&[u8], i64)] = &[
            (&[0x7f], 127),
            (&[0xe0], -32),
            (&[0xcc, 0xff], 255),
            (&[0xd0, 0x80], -128),
            (&[0xd1, 0x80, 0x00], -32768),
            (&[0xd2, 0x80, 0, 0, 0], i32::MIN as i64),
            (&[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0], i64::MIN),
            (&[0xce, 0xff, 0xff, 0xff, 0xff], u32::MAX as i64),
        ];
        for (bytes, want) in cases {
            assert_eq!(int_value(bytes[0], &bytes[1..]), *want, "{bytes:02x?}");
        }
    }
}
