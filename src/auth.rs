//! What the cluster token handshake needs from native code (docs/PROTOCOL.md,
//! "Cluster token"): HMAC-SHA-256, a constant-time check of a proof, and nonces from the
//! kernel's random source. The handshake itself is in `lua/luanet/connections.lua`.

use std::ffi::c_int;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::lua::{self, ffi, lua_State, Ret};

type HmacSha256 = Hmac<Sha256>;

/// The most random bytes one call hands out: nonces need 16.
const MAX_RANDOM: i64 = 256;

fn mac(key: &[u8], data: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length: new_from_slice cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    m.update(data);
    m
}

/// `core.hmac_sha256(key, data) -> 32 bytes`
pub unsafe extern "C-unwind" fn hmac_sha256(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let key = lua::check_bytes(l, 1, "hmac_sha256", "key")?;
        let data = lua::check_bytes(l, 2, "hmac_sha256", "data")?;
        let digest = mac(key, data).finalize().into_bytes();
        lua::push_bytes(l, &digest);
        Ok(Ret::Values(1))
    })
}

/// `core.hmac_verify(key, data, proof) -> boolean`, in time that does not depend on
/// where a wrong proof first differs.
pub unsafe extern "C-unwind" fn hmac_verify(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let key = lua::check_bytes(l, 1, "hmac_verify", "key")?;
        let data = lua::check_bytes(l, 2, "hmac_verify", "data")?;
        let proof = lua::check_bytes(l, 3, "hmac_verify", "proof")?;
        let ok = mac(key, data).verify_slice(proof).is_ok();
        ffi::lua_pushboolean(l, ok as c_int);
        Ok(Ret::Values(1))
    })
}

/// `core.random_bytes(n) -> n bytes` from getrandom(2).
pub unsafe extern "C-unwind" fn random_bytes(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let n = lua::check_integer(l, 1, "random_bytes", "n")?;
        if !(1..=MAX_RANDOM).contains(&n) {
            return Err(lua::bad_arg(l, "random_bytes", 1, "n", "a count from 1 to 256"));
        }
        let mut buf = vec![0u8; n as usize];
        let mut filled = 0;
        while filled < buf.len() {
            let got = libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0);
            if got < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("random_bytes: the kernel's random source failed: {e}"));
            }
            filled += got as usize;
        }
        lua::push_bytes(l, &buf);
        Ok(Ret::Values(1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let d = mac(b"Jefe", b"what do ya want for nothing?").finalize().into_bytes();
        assert_eq!(hex(&d), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn verify_refuses_a_wrong_or_short_proof() {
        let good = mac(b"k", b"d").finalize().into_bytes();
        assert!(mac(b"k", b"d").verify_slice(&good).is_ok());
        let mut bad = good;
        bad[31] ^= 1;
        assert!(mac(b"k", b"d").verify_slice(&bad).is_err());
        assert!(mac(b"k", b"d").verify_slice(&good[..16]).is_err());
    }
}
