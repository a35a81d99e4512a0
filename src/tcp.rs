//! TCP: listen, connect, and the options only TCP connections have.

use std::ffi::c_int;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, SockAddr, Type};

use crate::errors::{self, describe};
use crate::lua::{self, ffi, lua_State, push_fail, LuaResult, Raise, Ret};
use crate::reactor::Reactor;
use crate::socket::{adopt, close_socket, handle_at, kind_of, push_closed, reactor, with_socket, Kind};
use crate::stream::{self, Attempt, Dir, Op};

const DEFAULT_BACKLOG: i64 = 1024;

fn new_socket(addr: &SocketAddr) -> io::Result<socket2::Socket> {
    socket2::Socket::new(Domain::for_address(*addr), Type::STREAM.nonblocking().cloexec(), None)
}

unsafe fn resolve(l: *mut lua_State, func: &str) -> Result<Result<SocketAddr, String>, Raise> {
    let text = lua::check_str(l, 1, func, "addr")?;
    Ok(crate::address::resolve_inet(text).map(|addrs| addrs[0]))
}

unsafe fn os_fail(l: *mut lua_State, e: &io::Error) -> Ret {
    let (word, detail) = describe(e);
    push_fail(l, word, &detail)
}

/// `luanet.tcp.listen(addr, opts)`
pub unsafe extern "C-unwind" fn listen(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        const F: &str = "luanet.tcp.listen";
        lua::check_opts(l, 2, F)?;
        let backlog = lua::opts_integer(l, 2, c"backlog", F)?.unwrap_or(DEFAULT_BACKLOG);
        let reuse = lua::opts_bool(l, 2, c"reuseaddr", F)?.unwrap_or(true);
        let v6only = lua::opts_bool(l, 2, c"ipv6only", F)?;
        let addr = match resolve(l, F)? {
            Ok(a) => a,
            Err(detail) => return Ok(push_fail(l, errors::BAD_ADDRESS, &detail)),
        };
        let r = reactor(l);
        let socket = match new_socket(&addr) {
            Ok(s) => s,
            Err(e) => return Ok(os_fail(l, &e)),
        };
        let prepared = (|| {
            socket.set_reuse_address(reuse)?;
            if let (Some(only), true) = (v6only, addr.is_ipv6()) {
                socket.set_only_v6(only)?;
            }
            socket.bind(&SockAddr::from(addr))
        })();
        if let Err(e) = prepared {
            return Ok(os_fail(l, &e));
        }
        let backlog = backlog.clamp(1, i32::MAX as i64) as i32;
        Ok(crate::listener::listen_and_adopt(l, r, socket, backlog, Kind::TcpListener, |_| {}))
    })
}

/// `luanet.tcp.connect(addr, opts)`
pub unsafe extern "C-unwind" fn connect(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        const F: &str = "luanet.tcp.connect";
        lua::check_opts(l, 2, F)?;
        let timeout = lua::opts_seconds_ms(l, 2, c"timeout", F)?;
        let nodelay = lua::opts_bool(l, 2, c"nodelay", F)?.unwrap_or(true);
        let local = lua::opts_string(l, 2, c"local_addr", F)?;
        let addr = match resolve(l, F)? {
            Ok(a) => a,
            Err(detail) => return Ok(push_fail(l, errors::BAD_ADDRESS, &detail)),
        };
        let local = match local.map(|t| crate::address::resolve_inet(&t)) {
            None => None,
            Some(Ok(addrs)) => Some(addrs[0]),
            Some(Err(detail)) => return Ok(push_fail(l, errors::BAD_ADDRESS, &detail)),
        };
        let r = reactor(l);
        let socket = match new_socket(&addr) {
            Ok(s) => s,
            Err(e) => return Ok(os_fail(l, &e)),
        };
        let _ = socket.set_tcp_nodelay(nodelay);
        if let Some(local) = local {
            if let Err(e) = socket.bind(&SockAddr::from(local)) {
                return Ok(os_fail(l, &e));
            }
        }
        let in_progress = match socket.connect(&SockAddr::from(addr)) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
            Err(e) => return Ok(os_fail(l, &e)),
        };
        let deadline = timeout.map(|ms| r.deadline_after(ms));
        finish_connect(l, r, socket, Kind::TcpStream, in_progress, deadline)
    })
}

/// Adopts a connecting socket, leaves its handle alone on the stack and waits for the
/// connection if it is still in progress. Shared with Unix connect.
pub unsafe fn finish_connect(
    l: *mut lua_State,
    r: &Reactor,
    socket: socket2::Socket,
    kind: Kind,
    in_progress: bool,
    deadline: Option<u64>,
) -> LuaResult {
    match adopt(l, r, socket, kind, |s| s.connecting = in_progress) {
        Ret::Values(1) => {}
        other => return Ok(other),
    }
    if !in_progress {
        return Ok(Ret::Values(1));
    }
    ffi::lua_replace(l, 1);
    ffi::lua_settop(l, 1);
    let (key, generation) = handle_at(l, 1, "connect")?;
    match connect_attempt(l, r, key, generation)? {
        Attempt::Done(ret) => Ok(ret),
        Attempt::Wait | Attempt::WaitUntil(_) => {
            let waited = stream::wait(l, r, &CONNECT, key, generation, stream::Deadline::At(deadline));
            // Unless the task is now waiting for the connection, nobody will: close it.
            if !matches!(waited, Ok(Ret::Yield(..))) {
                close_socket(r, key, generation);
            }
            waited
        }
    }
}

unsafe fn connect_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32) -> Result<Attempt, Raise> {
    let state = with_socket(r, key, generation, |s| {
        if !s.connecting {
            return Ok(true);
        }
        if let Some(e) = s.fd.take_error()? {
            return Err(e);
        }
        match s.fd.peer_addr() {
            Ok(_) => {
                s.connecting = false;
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(false),
            Err(e) => Err(e),
        }
    });
    Ok(match state {
        None => Attempt::Done(push_closed(l)),
        Some(Ok(true)) => {
            ffi::lua_pushvalue(l, 1);
            Attempt::Done(Ret::Values(1))
        }
        Some(Ok(false)) => Attempt::Wait,
        Some(Err(e)) => {
            close_socket(r, key, generation);
            Attempt::Done(os_fail(l, &e))
        }
    })
}

static CONNECT: Op = Op { name: "connect", dir: Dir::Write, attempt: connect_attempt, k: connect_k };

unsafe extern "C-unwind" fn connect_k(l: *mut lua_State, _status: c_int, ctx: ffi::lua_KContext) -> c_int {
    // A timed-out connect must not leave a half-open socket behind.
    if reactor(l).wake_reason() == crate::reactor::Reason::Timeout {
        if let Ok((key, generation)) = handle_at(l, 1, "connect") {
            close_socket(reactor(l), key, generation);
        }
    }
    stream::resume(l, &CONNECT, ctx)
}

unsafe fn tcp_only(l: *mut lua_State, func: &str) -> Result<(usize, u32), Raise> {
    let (key, generation) = handle_at(l, 1, func)?;
    match kind_of(reactor(l), key, generation) {
        Some(Kind::TcpStream) | None => Ok((key, generation)),
        Some(_) => Err(format!("{func}: only TCP connections have this option")),
    }
}

fn apply(l: *mut lua_State, outcome: Option<io::Result<()>>) -> LuaResult {
    unsafe {
        Ok(match outcome {
            None => push_closed(l),
            Some(Err(e)) => os_fail(l, &e),
            Some(Ok(())) => lua::push_true(l),
        })
    }
}

pub unsafe extern "C-unwind" fn set_nodelay(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = tcp_only(l, "set_nodelay")?;
        let on = lua::check_boolean(l, 2, "set_nodelay", "on")?;
        apply(l, with_socket(reactor(l), key, generation, |s| s.fd.set_tcp_nodelay(on)))
    })
}

/// `set_keepalive(false | true | seconds)`: seconds is the idle time before probes.
pub unsafe extern "C-unwind" fn set_keepalive(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        const F: &str = "set_keepalive";
        let (key, generation) = tcp_only(l, F)?;
        let idle = match ffi::lua_type(l, 2) {
            ffi::LUA_TBOOLEAN => (ffi::lua_toboolean(l, 2) != 0).then_some(None),
            ffi::LUA_TNUMBER => {
                let s = lua::check_number(l, 2, F, "on")?;
                if s.is_nan() || s < 1.0 {
                    return Err(format!("{F}: bad argument #2 'on' (idle seconds must be 1 or more)"));
                }
                Some(Some(Duration::from_secs_f64(s.min(1e6))))
            }
            _ => return Err(lua::bad_arg(l, F, 2, "on", "boolean or number")),
        };
        apply(
            l,
            with_socket(reactor(l), key, generation, |s| match idle {
                None => s.fd.set_keepalive(false),
                Some(None) => s.fd.set_keepalive(true),
                Some(Some(time)) => s.fd.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(time)),
            }),
        )
    })
}
