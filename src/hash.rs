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

/// `core.hash64(bytes) -> integer` (the 64 bits as Lua's signed integer).
pub unsafe extern "C-unwind" fn hash64_lua(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let bytes = lua::check_bytes(l, 1, "hash64", "bytes")?;
        ffi::lua_pushinteger(l, hash64(bytes) as ffi::lua_Integer);
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
    fn finaliser_matches_splitmix64() {
        // SplitMix64's first output for seed 0 is mix(0x9e3779b97f4a7c15).
        assert_eq!(mix(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
    }
}
