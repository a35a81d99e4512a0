//! UDP sockets: bind and connect (the datagram methods are in `datagram.rs`).

use std::ffi::c_int;

use socket2::{Domain, SockAddr, Type};

use crate::errors::{self, describe};
use crate::lua::{self, lua_State, push_fail, Ret};
use crate::socket::{adopt, reactor, Kind};

unsafe fn open_bound(l: *mut lua_State, func: &str, local: &str, peer: Option<&str>, reuse: bool, broadcast: bool) -> Ret {
    let local = match crate::address::resolve_inet(local) {
        Ok(a) => a[0],
        Err(detail) => return push_fail(l, errors::BAD_ADDRESS, &detail),
    };
    let peer = match peer.map(crate::address::resolve_inet) {
        None => None,
        Some(Ok(a)) => Some(a[0]),
        Some(Err(detail)) => return push_fail(l, errors::BAD_ADDRESS, &detail),
    };
    let _ = func;
    let opened = (|| {
        let socket = socket2::Socket::new(Domain::for_address(local), Type::DGRAM.nonblocking().cloexec(), None)?;
        if reuse {
            socket.set_reuse_address(true)?;
        }
        if broadcast {
            socket.set_broadcast(true)?;
        }
        socket.bind(&SockAddr::from(local))?;
        if let Some(peer) = peer {
            socket.connect(&SockAddr::from(peer))?;
        }
        Ok::<_, std::io::Error>(socket)
    })();
    match opened {
        Ok(socket) => adopt(l, reactor(l), socket, Kind::Udp, |_| {}),
        Err(e) => {
            let (word, detail) = describe(&e);
            push_fail(l, word, &detail)
        }
    }
}

/// `luanet.udp.bind(addr, opts)`
pub unsafe extern "C-unwind" fn bind(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        const F: &str = "luanet.udp.bind";
        let addr = lua::check_str(l, 1, F, "addr")?;
        lua::check_opts(l, 2, F)?;
        let reuse = lua::opts_bool(l, 2, c"reuseaddr", F)?.unwrap_or(false);
        let broadcast = lua::opts_bool(l, 2, c"broadcast", F)?.unwrap_or(false);
        Ok(open_bound(l, F, addr, None, reuse, broadcast))
    })
}

/// `luanet.udp.connect(addr)`: an ephemeral local port of the peer's family.
pub unsafe extern "C-unwind" fn connect(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        const F: &str = "luanet.udp.connect";
        let addr = lua::check_str(l, 1, F, "addr")?;
        let local = match crate::address::resolve_inet(addr) {
            Ok(a) if a[0].is_ipv6() => "[::]:0",
            Ok(_) => "0.0.0.0:0",
            Err(detail) => return Ok(push_fail(l, errors::BAD_ADDRESS, &detail)),
        };
        Ok(open_bound(l, F, local, Some(addr), false, false))
    })
}
