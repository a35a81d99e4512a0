//! Datagram sockets (UDP and Unix datagram): whole messages in, whole messages out.

use std::ffi::{c_int, CStr};
use std::io;
use std::mem::MaybeUninit;

use socket2::SockAddr;

use crate::errors::{self, describe};
use crate::lua::{self, ffi, lua_State, push_fail, LuaResult, Raise, Ret};
use crate::reactor::{Reactor, READ_BUFFER};
use crate::socket::{handle_at, kind_of, push_closed, reactor, with_socket, Kind};
use crate::stream::{blocking_op, resume, start, Attempt, Dir, Op};

/// The largest UDP payloads IPv4 and IPv6 can carry (65535 minus the headers).
const MAX_UDP_V4: usize = 65507;
const MAX_UDP_V6: usize = 65527;

/// Parses a destination for this socket's kind.
unsafe fn destination(r: &Reactor, key: usize, generation: u32, text: &str) -> Option<Result<SockAddr, String>> {
    let kind = kind_of(r, key, generation)?;
    Some(if kind == Kind::Udp {
        crate::address::resolve_inet(text).map(|a| SockAddr::from(a[0]))
    } else {
        crate::address::unix(text)
    })
}

fn too_large(kind: Kind, len: usize, to: Option<&SockAddr>, local_v6: bool) -> bool {
    if kind != Kind::Udp {
        return false;
    }
    let v6 = to.map_or(local_v6, |a| a.is_ipv6());
    len > if v6 { MAX_UDP_V6 } else { MAX_UDP_V4 }
}

/// One send attempt of `data` (argument 2) to `to` (or the connected peer).
unsafe fn send_attempt_to(l: *mut lua_State, r: &Reactor, key: usize, generation: u32, to: Option<&SockAddr>) -> Result<Attempt, Raise> {
    let func = if to.is_some() { "sendto" } else { "send" };
    let data = lua::check_bytes(l, 2, func, "data")?;
    let outcome = with_socket(r, key, generation, |s| {
        let local_v6 = s.fd.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
        if too_large(s.kind, data.len(), to, local_v6) {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        if !s.writable {
            return Ok(false);
        }
        let sent = match to {
            Some(addr) => s.fd.send_to_with_flags(data, addr, libc::MSG_NOSIGNAL),
            None => s.fd.send_with_flags(data, libc::MSG_NOSIGNAL),
        };
        match sent {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                s.writable = false;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    });
    Ok(match outcome {
        None => Attempt::Done(push_closed(l)),
        Some(Ok(true)) => Attempt::Done(lua::push_true(l)),
        Some(Ok(false)) => Attempt::Wait,
        Some(Err(e)) => {
            let (word, detail) = describe(&e);
            Attempt::Done(push_fail(l, word, &detail))
        }
    })
}

unsafe fn sendto_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32) -> Result<Attempt, Raise> {
    lua::check_bytes(l, 2, "sendto", "data")?;
    let text = lua::check_str(l, 3, "sendto", "addr")?;
    match destination(r, key, generation, text) {
        None => Ok(Attempt::Done(push_closed(l))),
        Some(Err(detail)) => Ok(Attempt::Done(push_fail(l, errors::BAD_ADDRESS, &detail))),
        Some(Ok(addr)) => send_attempt_to(l, r, key, generation, Some(&addr)),
    }
}

unsafe fn send_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32) -> Result<Attempt, Raise> {
    send_attempt_to(l, r, key, generation, None)
}

/// One receive attempt; pushes `data, from` (`with_from`) or `data`.
unsafe fn recv_attempt_impl(l: *mut lua_State, r: &Reactor, key: usize, generation: u32, with_from: bool) -> Result<Attempt, Raise> {
    let outcome = with_socket(r, key, generation, |s| {
        if !s.readable {
            return Ok(None);
        }
        let scratch = r.scratch();
        // SAFETY: u8 and MaybeUninit<u8> have the same layout; the buffer is initialised.
        let buf = std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast::<MaybeUninit<u8>>(), scratch.len());
        loop {
            // MSG_TRUNC makes the kernel report a datagram's real length even when it did
            // not fit, so an oversized one is reported instead of silently cut.
            match s.fd.recv_from_with_flags(buf, libc::MSG_TRUNC) {
                Ok((n, from)) => return Ok(Some((n, from))),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    s.readable = false;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    });
    Ok(match outcome {
        None => Attempt::Done(push_closed(l)),
        Some(Ok(None)) => Attempt::Wait,
        Some(Err(e)) => {
            let (word, detail) = describe(&e);
            Attempt::Done(push_fail(l, word, &detail))
        }
        Some(Ok(Some((n, _)))) if n > READ_BUFFER => Attempt::Done(push_fail(
            l,
            errors::MESSAGE_TOO_LARGE,
            &format!("a {n}-byte datagram was dropped (the limit is {READ_BUFFER})"),
        )),
        Some(Ok(Some((n, from)))) => {
            lua::push_bytes(l, &r.scratch()[..n]);
            if with_from {
                lua::push_bytes(l, crate::address::format(&Some(from)).as_bytes());
                Attempt::Done(Ret::Values(2))
            } else {
                Attempt::Done(Ret::Values(1))
            }
        }
    })
}

unsafe fn recvfrom_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32) -> Result<Attempt, Raise> {
    recv_attempt_impl(l, r, key, generation, true)
}

unsafe fn recv_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32) -> Result<Attempt, Raise> {
    recv_attempt_impl(l, r, key, generation, false)
}

blocking_op!(SENDTO, sendto, sendto_k, "sendto", Dir::Write, sendto_attempt, 4);
blocking_op!(SEND, send, send_k, "send", Dir::Write, send_attempt, 3);
blocking_op!(RECVFROM, recvfrom, recvfrom_k, "recvfrom", Dir::Read, recvfrom_attempt, 2);
blocking_op!(RECV, recv, recv_k, "recv", Dir::Read, recv_attempt, 2);

unsafe extern "C-unwind" fn connect(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "connect")?;
        let text = lua::check_str(l, 2, "connect", "addr")?;
        let r = reactor(l);
        match destination(r, key, generation, text) {
            None => Ok(push_closed(l)),
            Some(Err(detail)) => Ok(push_fail(l, errors::BAD_ADDRESS, &detail)),
            Some(Ok(addr)) => result(l, with_socket(r, key, generation, |s| s.fd.connect(&addr))),
        }
    })
}

unsafe extern "C-unwind" fn set_broadcast(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "set_broadcast")?;
        let on = lua::check_boolean(l, 2, "set_broadcast", "on")?;
        let r = reactor(l);
        if kind_of(r, key, generation).is_some_and(|k| k != Kind::Udp) {
            return Err("set_broadcast: only UDP sockets have this option".into());
        }
        result(l, with_socket(r, key, generation, |s| s.fd.set_broadcast(on)))
    })
}

unsafe fn result(l: *mut lua_State, outcome: Option<io::Result<()>>) -> LuaResult {
    Ok(match outcome {
        None => push_closed(l),
        Some(Err(e)) => {
            let (word, detail) = describe(&e);
            push_fail(l, word, &detail)
        }
        Some(Ok(())) => lua::push_true(l),
    })
}

pub const METHODS: &[(&CStr, ffi::lua_CFunction)] = &[
    (c"sendto", sendto),
    (c"send", send),
    (c"recvfrom", recvfrom),
    (c"recv", recv),
    (c"connect", connect),
    (c"set_broadcast", set_broadcast),
];
