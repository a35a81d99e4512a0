//! Unix-domain sockets: stream listen/connect and datagram bind, on paths or `@abstract` names.

use std::ffi::c_int;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use socket2::{Domain, SockAddr, Type};

use crate::errors::{self, describe};
use crate::lua::{self, lua_State, push_fail, Ret};
use crate::socket::{adopt, reactor, Kind, OwnedPath};

fn new_socket(ty: Type) -> io::Result<socket2::Socket> {
    socket2::Socket::new(Domain::UNIX, ty.nonblocking().cloexec(), None)
}

unsafe fn os_fail(l: *mut lua_State, e: &io::Error) -> Ret {
    let (word, detail) = describe(e);
    push_fail(l, word, &detail)
}

/// Binds `socket` to `text`. A socket file whose listener died is stale and replaced; a
/// live one is never stolen.
fn bind_path(socket: &socket2::Socket, addr: &SockAddr, text: &str, ty: Type) -> io::Result<Option<OwnedPath>> {
    match socket.bind(addr) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) && !text.starts_with('@') => {
            if is_stale(addr, text, ty)? {
                std::fs::remove_file(text)?;
                socket.bind(addr)?;
            } else {
                return Err(e);
            }
        }
        Err(e) => return Err(e),
    }
    if text.starts_with('@') {
        return Ok(None);
    }
    let meta = std::fs::metadata(text)?;
    Ok(Some(OwnedPath { path: PathBuf::from(text), dev: meta.dev(), ino: meta.ino() }))
}

/// Whether nobody is bound to the socket file at `text` any more. The kernel's table of
/// bound Unix sockets answers without touching a live listener; only a path missing from
/// it (bound in another network namespace, say) is probed by connecting, and a refused
/// connect is the proof of death.
fn is_stale(addr: &SockAddr, text: &str, ty: Type) -> io::Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    // Only a socket file can be a stale socket: anything else at the path is the user's.
    if !std::fs::symlink_metadata(text)?.file_type().is_socket() {
        return Ok(false);
    }
    if bound_in_proc(text) {
        return Ok(false);
    }
    let probe = socket2::Socket::new(Domain::UNIX, ty.cloexec(), None)?;
    Ok(matches!(probe.connect(addr), Err(p) if p.raw_os_error() == Some(libc::ECONNREFUSED)))
}

fn bound_in_proc(text: &str) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else { return false };
    let absolute = std::fs::canonicalize(text).ok();
    table.lines().skip(1).any(|line| {
        // Num RefCount Protocol Flags Type St Inode Path: the path is the 8th field.
        match line.split_whitespace().nth(7) {
            Some(path) => path == text || absolute.as_deref().is_some_and(|a| a.as_os_str() == path),
            None => false,
        }
    })
}

unsafe fn address(l: *mut lua_State, func: &str) -> Result<Result<(String, SockAddr), String>, String> {
    let text = lua::check_str(l, 1, func, "path")?;
    let text = text.strip_prefix("unix:").unwrap_or(text);
    Ok(crate::address::unix(text).map(|a| (text.to_string(), a)))
}

/// A Unix socket of `ty` bound to the path argument, or the failure already pushed as
/// `nil, word, detail`.
unsafe fn bound(l: *mut lua_State, func: &str, ty: Type) -> Result<Result<(socket2::Socket, Option<OwnedPath>), Ret>, String> {
    let (text, addr) = match address(l, func)? {
        Ok(a) => a,
        Err(detail) => return Ok(Err(push_fail(l, errors::BAD_ADDRESS, &detail))),
    };
    let socket = match new_socket(ty) {
        Ok(s) => s,
        Err(e) => return Ok(Err(os_fail(l, &e))),
    };
    Ok(match bind_path(&socket, &addr, &text, ty) {
        Ok(owned) => Ok((socket, owned)),
        Err(e) => Err(os_fail(l, &e)),
    })
}

/// `luanet.unix.listen(path, opts)`
pub unsafe extern "C-unwind" fn listen(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        const F: &str = "luanet.unix.listen";
        lua::check_opts(l, 2, F)?;
        let backlog = lua::opts_integer(l, 2, c"backlog", F)?.unwrap_or(1024).clamp(1, i32::MAX as i64) as i32;
        let (socket, owned) = match bound(l, F, Type::STREAM)? {
            Ok(b) => b,
            Err(failed) => return Ok(failed),
        };
        let r = reactor(l);
        Ok(crate::listener::listen_and_adopt(l, r, socket, backlog, Kind::UnixListener, |s| {
            s.cold_mut().owned_path = owned
        }))
    })
}

/// `luanet.unix.connect(path, opts)`
pub unsafe extern "C-unwind" fn connect(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        const F: &str = "luanet.unix.connect";
        lua::check_opts(l, 2, F)?;
        let timeout = lua::opts_seconds_ms(l, 2, c"timeout", F)?;
        let (_, addr) = match address(l, F)? {
            Ok(a) => a,
            Err(detail) => return Ok(push_fail(l, errors::BAD_ADDRESS, &detail)),
        };
        let socket = match new_socket(Type::STREAM) {
            Ok(s) => s,
            Err(e) => return Ok(os_fail(l, &e)),
        };
        let in_progress = match socket.connect(&addr) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
            // Unix sockets do not finish a connect in the background: a full backlog is EAGAIN.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                return Ok(push_fail(l, errors::BUSY, "the listener's backlog is full"))
            }
            Err(e) => return Ok(os_fail(l, &e)),
        };
        let r = reactor(l);
        let deadline = timeout.map(|ms| r.deadline_after(ms));
        crate::tcp::finish_connect(l, r, socket, Kind::UnixStream, in_progress, deadline)
    })
}

/// `luanet.unix.bind(path)`: a datagram socket bound to `path`.
pub unsafe extern "C-unwind" fn bind(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        const F: &str = "luanet.unix.bind";
        let (socket, owned) = match bound(l, F, Type::DGRAM)? {
            Ok(b) => b,
            Err(failed) => return Ok(failed),
        };
        Ok(adopt(l, reactor(l), socket, Kind::UnixDatagram, |s| s.cold_mut().owned_path = owned))
    })
}

/// `luanet.unix.datagram()`: an unbound datagram socket (for sending, or after `connect`).
pub unsafe extern "C-unwind" fn datagram(l: *mut lua_State) -> c_int {
    lua::entry(l, || match new_socket(Type::DGRAM) {
        Ok(socket) => Ok(adopt(l, reactor(l), socket, Kind::UnixDatagram, |_| {})),
        Err(e) => Ok(os_fail(l, &e)),
    })
}
