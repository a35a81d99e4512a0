//! The key hash that group calls by key use (docs/PROTOCOL.md, "Hashing a key to a
//! member"). It must give every caller, in every language and every version, the same
//! number for the same bytes, so it is specified rather than borrowed from a std hasher
//! whose output may change between releases: FNV-1a 64 over the bytes, then the
//! SplitMix64 finaliser so that short keys that differ in one byte spread over all 64 bits.

use std::ffi::c_int;

use crate::lua::{self, ffi, lua_State, Ret};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// SplitMix64's finaliser; the Lua side applies it again to `key_hash ^ member_hash`.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    mix(h)
}

/// An integer key hashes as its decimal text, written here without making a Lua string.
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// `core.hash64(string | integer) -> integer` (the 64 bits as Lua's signed integer).
pub unsafe extern "C-unwind" fn hash64_lua(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let h = if ffi::lua_type(l, 1) == ffi::LUA_TNUMBER && ffi::lua_isinteger(l, 1) != 0 {
            let mut buf = [0u8; 20];
            hash64(decimal(ffi::lua_tointeger(l, 1), &mut buf))
        } else {
            hash64(lua::check_bytes(l, 1, "hash64", "key")?)
        };
        ffi::lua_pushinteger(l, h as ffi::lua_Integer);
        Ok(Ret::Values(1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_part_matches_the_published_vectors() {
        // FNV-1a 64 of "" and "a" (from the FNV reference), seen through the finaliser.
        assert_eq!(hash64(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash64(b"a"), mix(0xaf63_dc4c_8601_ec8c));
        assert_eq!(hash64(b"foobar"), mix(0x8594_4171_f739_67e8));
    }

    #[test]
    fn integers_hash_as_their_decimal_text() {
        let mut buf = [0u8; 20];
        for n in [0i64, 7, -7, 42, 1_000_000, i64::MAX, i64::MIN] {
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }

    #[test]
    fn finaliser_matches_splitmix64() {
        // SplitMix64's first output for seed 0 is mix(0x9e3779b97f4a7c15).
        assert_eq!(mix(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
    }
}
