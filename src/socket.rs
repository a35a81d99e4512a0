//! What every socket kind shares: the per-socket state the loop keeps, the userdata handle
//! Lua holds, closing (now, lingering, or from `__gc`) and the common methods.

use std::ffi::{c_int, CStr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use crate::buffer::Pending;
use crate::errors;
use crate::lua::{self, ffi, lua_State, push_fail, LuaResult, Raise, Ret};
use crate::reactor::{Reactor, Reason, Waiter};
use crate::timer::{Expiry, TimerKey};

/// How long a closed connection keeps trying to send what was queued before it.
const LINGER_MS: u64 = 10_000;
pub const DEFAULT_HIGH_WATER: usize = 1024 * 1024;
pub const DEFAULT_LINE_LIMIT: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    TcpListener,
    TcpStream,
    Udp,
    UnixListener,
    UnixStream,
    UnixDatagram,
}

impl Kind {
    pub fn is_stream(self) -> bool {
        matches!(self, Kind::TcpStream | Kind::UnixStream)
    }
    pub fn is_unix(self) -> bool {
        matches!(self, Kind::UnixListener | Kind::UnixStream | Kind::UnixDatagram)
    }
    fn metatable(self) -> &'static CStr {
        match self {
            Kind::TcpListener | Kind::UnixListener => c"luanet.listener",
            Kind::TcpStream | Kind::UnixStream => c"luanet.stream",
            Kind::Udp | Kind::UnixDatagram => c"luanet.datagram",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Kind::TcpListener => "tcp listener",
            Kind::TcpStream => "tcp connection",
            Kind::Udp => "udp socket",
            Kind::UnixListener => "unix listener",
            Kind::UnixStream => "unix connection",
            Kind::UnixDatagram => "unix datagram socket",
        }
    }
}

/// A Unix socket file this process created, removed again on close if it is still ours.
pub struct OwnedPath {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

pub struct Socket {
    pub fd: socket2::Socket,
    pub kind: Kind,
    /// Distinguishes this socket from a later one in the same slab slot.
    pub generation: u32,
    /// Readiness hints: cleared by EAGAIN or a short read, set by the poll. A read that
    /// would fail makes no system call.
    pub readable: bool,
    pub writable: bool,
    pub read_waiter: Option<Waiter>,
    pub write_waiter: Option<Waiter>,
    /// Received bytes not yet handed to Lua: only `read_exact`, `read_line` and
    /// `read_all` leave anything here.
    pub rbuf: Option<Box<Pending>>,
    /// Bytes accepted by `write` and not yet taken by the kernel.
    pub wbuf: Option<Box<Pending>>,
    pub eof: bool,
    /// The peer's FIN (or an error) was seen: no further edge will come, so reads go on
    /// until they meet the end of the stream.
    pub read_closed: bool,
    pub connecting: bool,
    /// Closed by the user but still flushing `wbuf`.
    pub closing: bool,
    pub shutdown_after_flush: bool,
    /// Writes only queue; the loop sends once at the end of the turn (`set_cork`).
    pub corked: bool,
    /// Already on the loop's end-of-turn flush list.
    pub flush_scheduled: bool,
    /// Waits on this socket are background waits (`set_background`).
    pub background: bool,
    /// Settings and states most sockets never use, allocated on first use: an idle
    /// connection costs memory, and 10,000 of them are a normal day.
    cold: Option<Box<Cold>>,
}

pub struct Cold {
    /// A send failure met while flushing in the background, reported by the next write.
    pub write_error: Option<(&'static str, String)>,
    pub linger_timer: Option<TimerKey>,
    pub timeout_ms: Option<u64>,
    pub high_water: usize,
    pub line_limit: usize,
    /// Largest message read_message / read_array accept, below the codec's max_size
    /// (0: the codec's). The services layer keeps it small until a peer authenticates.
    pub message_limit: usize,
    /// Bytes handed to the kernel so far, counted once a socket has cold state (the
    /// services layer's connections do): its progress shows a peer that stopped reading.
    pub sent: u64,
    pub owned_path: Option<OwnedPath>,
    /// After the process ran out of descriptors, accept tries again only from here (ms).
    pub accept_retry_at: Option<u64>,
    /// Bytes of an unfinished message counted against the process-wide budget (message.rs).
    pub partial_counted: usize,
    /// Set once the connection speaks TLS (tls.rs): reads and writes go through it.
    pub tls: Option<Box<crate::tls::Tls>>,
}

impl Default for Cold {
    fn default() -> Self {
        Cold {
            write_error: None,
            linger_timer: None,
            timeout_ms: None,
            high_water: DEFAULT_HIGH_WATER,
            line_limit: DEFAULT_LINE_LIMIT,
            message_limit: 0,
            sent: 0,
            owned_path: None,
            accept_retry_at: None,
            tls: None,
            partial_counted: 0,
        }
    }
}

impl Socket {
    pub fn new(fd: socket2::Socket, kind: Kind, generation: u32) -> Socket {
        crate::faults::new_socket(std::os::fd::AsRawFd::as_raw_fd(&fd));
        Socket {
            fd,
            kind,
            generation,
            readable: true,
            writable: true,
            read_waiter: None,
            write_waiter: None,
            rbuf: None,
            wbuf: None,
            eof: false,
            read_closed: false,
            connecting: false,
            closing: false,
            shutdown_after_flush: false,
            corked: false,
            flush_scheduled: false,
            background: false,
            cold: None,
        }
    }

    pub fn cold_mut(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(Default::default)
    }

    pub fn write_error(&self) -> Option<&(&'static str, String)> {
        self.cold.as_ref().and_then(|c| c.write_error.as_ref())
    }

    pub fn note_sent(&mut self, n: usize) {
        if let Some(c) = self.cold.as_mut() {
            c.sent += n as u64;
        }
    }

    pub fn sent(&self) -> u64 {
        self.cold.as_ref().map_or(0, |c| c.sent)
    }

    /// The message size limit for this socket, given the codec's.
    pub fn message_limit(&self, codec_max: usize) -> usize {
        match self.cold.as_ref().map_or(0, |c| c.message_limit) {
            0 => codec_max,
            n => n.min(codec_max),
        }
    }

    pub fn timeout_ms(&self) -> Option<u64> {
        self.cold.as_ref().and_then(|c| c.timeout_ms)
    }

    pub fn high_water(&self) -> usize {
        self.cold.as_ref().map_or(DEFAULT_HIGH_WATER, |c| c.high_water)
    }

    pub fn line_limit(&self) -> usize {
        self.cold.as_ref().map_or(DEFAULT_LINE_LIMIT, |c| c.line_limit)
    }

    pub fn take_linger_timer(&mut self) -> Option<TimerKey> {
        self.cold.as_mut().and_then(|c| c.linger_timer.take())
    }

    pub fn has_unsent(&self) -> bool {
        self.wbuf.as_ref().is_some_and(|b| !b.is_empty()) || self.tls().is_some_and(|t| t.has_unsent())
    }

    pub fn tls(&self) -> Option<&crate::tls::Tls> {
        self.cold.as_ref().and_then(|c| c.tls.as_deref())
    }

    pub fn tls_mut(&mut self) -> Option<&mut crate::tls::Tls> {
        self.cold.as_mut().and_then(|c| c.tls.as_deref_mut())
    }

    /// What a send needs at once: the descriptor, its kind, TLS, and the queued bytes.
    pub fn send_parts(&mut self) -> (RawFd, Kind, Option<&mut crate::tls::Tls>, &[u8]) {
        let tls = self.cold.as_mut().and_then(|c| c.tls.as_deref_mut());
        (self.fd.as_raw_fd(), self.kind, tls, crate::buffer::data(&self.wbuf))
    }

    pub fn partial_counted(&self) -> usize {
        self.cold.as_ref().map_or(0, |c| c.partial_counted)
    }

    pub fn set_partial_counted(&mut self, n: usize) {
        self.cold_mut().partial_counted = n;
    }

    pub fn set_tls(&mut self, tls: Box<crate::tls::Tls>) {
        self.cold_mut().tls = Some(tls);
    }

    pub fn unsent(&self) -> usize {
        self.wbuf.as_ref().map_or(0, |b| b.len())
    }

    /// Received bytes waiting to be read.
    pub fn received(&self) -> &[u8] {
        crate::buffer::data(&self.rbuf)
    }

    /// Called by the loop on a writable edge. Returns true when a closing socket is done
    /// and should be removed.
    pub fn on_writable(&mut self, reactor: &Reactor) -> bool {
        if self.has_unsent() {
            crate::stream::flush_queued(self, reactor);
        }
        let low_water = self.high_water() / 2;
        let failed = self.write_error().is_some();
        if self.connecting || self.unsent() <= low_water || failed {
            if let Some(w) = self.write_waiter.take() {
                reactor.wake(w, Reason::Ready);
            }
        }
        self.closing && (!self.has_unsent() || failed)
    }

    pub fn cleanup_path(&self) {
        use std::os::unix::fs::MetadataExt;
        if let Some(owned) = self.cold.as_ref().and_then(|c| c.owned_path.as_ref()) {
            // Only remove the file if it is still the one we bound (not a newer listener's).
            if let Ok(meta) = std::fs::metadata(&owned.path) {
                if meta.dev() == owned.dev && meta.ino() == owned.ino {
                    let _ = std::fs::remove_file(&owned.path);
                }
            }
        }
    }
}

// ---- the Lua handle ----------------------------------------------------------------------

const MAGIC: u32 = 0x4c4e_534b; // "LNSK"

/// The userdata Lua holds: it names a slab slot; the socket itself lives in the reactor.
#[repr(C)]
struct Handle {
    magic: u32,
    generation: u32,
    key: usize,
}

/// Pushes a new handle for socket `key` with the metatable of its kind.
pub unsafe fn push_handle(l: *mut lua_State, key: usize, generation: u32, kind: Kind) {
    let h = ffi::lua_newuserdatauv(l, std::mem::size_of::<Handle>(), 0) as *mut Handle;
    h.write(Handle { magic: MAGIC, generation, key });
    ffi::luaL_setmetatable(l, kind.metatable().as_ptr());
}

/// Reads the handle at `idx` (a socket of any kind): (key, generation).
pub unsafe fn handle_at(l: *mut lua_State, idx: c_int, func: &str) -> Result<(usize, u32), Raise> {
    let p = ffi::lua_touserdata(l, idx) as *const Handle;
    // A light userdata also has an address, but its raw length is 0.
    if p.is_null()
        || ffi::lua_rawlen(l, idx) != std::mem::size_of::<Handle>()
        || (*p).magic != MAGIC
    {
        return Err(lua::bad_arg(l, func, idx, "self", "luanet socket"));
    }
    Ok(((*p).key, (*p).generation))
}

/// The reactor every core function carries as upvalue 1.
pub unsafe fn reactor<'a>(l: *mut lua_State) -> &'a Reactor {
    crate::reactor_from_upvalue(l)
}

/// Runs `f` on open socket `key` of this `generation`; a closed one gives `None`.
pub unsafe fn with_socket<T>(
    r: &Reactor,
    key: usize,
    generation: u32,
    f: impl FnOnce(&mut crate::socket::Socket) -> T,
) -> Option<T> {
    let mut sockets = r.sockets.borrow_mut();
    match sockets.get_mut(key) {
        Some(s) if s.generation == generation && !s.closing => Some(f(s)),
        _ => None,
    }
}

pub unsafe fn push_closed(l: *mut lua_State) -> Ret {
    push_fail(l, errors::CLOSED, "the socket is closed")
}

// ---- closing -----------------------------------------------------------------------------

/// Closes socket `key` from the caller's view: waiters wake with "closed"; queued bytes
/// keep flushing in the background for up to `LINGER_MS`.
pub fn close_socket(r: &Reactor, key: usize, generation: u32) {
    let linger = {
        let mut sockets = r.sockets.borrow_mut();
        let Some(s) = sockets.get_mut(key) else { return };
        if s.generation != generation || s.closing {
            return;
        }
        for w in [s.read_waiter.take(), s.write_waiter.take()].into_iter().flatten() {
            r.wake(w, Reason::Closed);
        }
        close_notify(s);
        if s.has_unsent() && s.write_error().is_none() {
            s.closing = true;
            let deadline = r.deadline_after(LINGER_MS);
            s.cold_mut().linger_timer = Some(r.timers.borrow_mut().arm_at(deadline, Expiry::Linger { socket: key, generation }));
            true
        } else {
            false
        }
    };
    if !linger {
        r.remove_socket(key);
    }
}

/// A TLS stream says close_notify when it closes or shuts down writing, once what is
/// queued in plaintext has been handed to TLS (else the peer just sees the stream end).
pub fn close_notify(s: &mut Socket) {
    let fd = s.fd.as_raw_fd();
    let plaintext_queued = s.wbuf.as_ref().is_some_and(|b| !b.is_empty());
    if let (Some(tls), false) = (s.tls_mut(), plaintext_queued) {
        tls.close_notify(fd);
    }
}

unsafe extern "C-unwind" fn close(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "close")?;
        close_socket(reactor(l), key, generation);
        Ok(Ret::Values(0))
    })
}

/// `__gc`: only queues the close for the loop's next safe point (or `lua_close`). It may
/// run during any Lua allocation, when the socket table can be borrowed; and at
/// `lua_close` the sockets' finalizers run before the loop's, which must still find the
/// connections open to end them gracefully (`Reactor::linger_on_exit`).
unsafe extern "C-unwind" fn gc(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "__gc")?;
        if let Some(r) = crate::try_reactor_from_upvalue(l) {
            r.gc_queue.borrow_mut().push((key, generation));
        }
        Ok(Ret::Values(0))
    })
}

unsafe extern "C-unwind" fn tostring(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "__tostring")?;
        let r = reactor(l);
        let text = with_socket(r, key, generation, |s| {
            let addr = crate::address::format(&s.fd.local_addr().ok());
            format!("luanet {} ({addr})", s.kind.label())
        })
        .unwrap_or_else(|| "luanet socket (closed)".to_string());
        lua::push_bytes(l, text.as_bytes());
        Ok(Ret::Values(1))
    })
}

unsafe extern "C-unwind" fn local_addr(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "local_addr")?;
        let addr = with_socket(reactor(l), key, generation, |s| s.fd.local_addr());
        push_addr_result(l, addr)
    })
}

unsafe extern "C-unwind" fn peer_addr(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "peer_addr")?;
        let addr = with_socket(reactor(l), key, generation, |s| s.fd.peer_addr());
        push_addr_result(l, addr)
    })
}

unsafe fn push_addr_result(l: *mut lua_State, addr: Option<std::io::Result<socket2::SockAddr>>) -> LuaResult {
    match addr {
        None => Ok(push_closed(l)),
        Some(Err(e)) => {
            let (word, detail) = errors::describe(&e);
            Ok(push_fail(l, word, &detail))
        }
        Some(Ok(a)) => {
            lua::push_bytes(l, crate::address::format(&Some(a)).as_bytes());
            Ok(Ret::Values(1))
        }
    }
}

unsafe extern "C-unwind" fn set_timeout(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "set_timeout")?;
        let ms = lua::opt_seconds_ms(l, 2, "set_timeout", "seconds")?;
        match with_socket(reactor(l), key, generation, |s| s.cold_mut().timeout_ms = ms) {
            Some(()) => Ok(lua::push_true(l)),
            None => Ok(push_closed(l)),
        }
    })
}

unsafe extern "C-unwind" fn fileno(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "fileno")?;
        match with_socket(reactor(l), key, generation, |s| s.fd.as_raw_fd()) {
            Some(fd) => {
                ffi::lua_pushinteger(l, fd as ffi::lua_Integer);
                Ok(Ret::Values(1))
            }
            None => Ok(push_closed(l)),
        }
    })
}

/// Methods every socket kind has.
pub const COMMON_METHODS: &[(&CStr, ffi::lua_CFunction)] = &[
    (c"close", close),
    (c"local_addr", local_addr),
    (c"peer_addr", peer_addr),
    (c"set_timeout", set_timeout),
    (c"fileno", fileno),
];

/// Creates the metatable `name` in the registry: `__index` holds `methods` plus the common
/// ones, each with the reactor (at `reactor_idx`) as upvalue.
pub unsafe fn register_metatable(
    l: *mut lua_State,
    reactor_idx: c_int,
    name: &CStr,
    methods: &[(&CStr, ffi::lua_CFunction)],
) {
    ffi::luaL_newmetatable(l, name.as_ptr());
    ffi::lua_createtable(l, 0, (methods.len() + COMMON_METHODS.len()) as c_int);
    for (method, f) in COMMON_METHODS.iter().chain(methods.iter()) {
        crate::set_closure(l, reactor_idx, method, *f);
    }
    ffi::lua_setfield(l, -2, c"__index".as_ptr());
    crate::set_closure(l, reactor_idx, c"__gc", gc);
    crate::set_closure(l, reactor_idx, c"__close", close);
    crate::set_closure(l, reactor_idx, c"__tostring", tostring);
    ffi::lua_pop(l, 1);
}

/// Adds socket `fd` to the loop and pushes its handle; an OS failure is pushed as `nil, word, detail`.
pub unsafe fn adopt(l: *mut lua_State, r: &Reactor, fd: socket2::Socket, kind: Kind, setup: impl FnOnce(&mut Socket)) -> Ret {
    r.collect_garbage();
    let generation = r.generation();
    let mut socket = Socket::new(fd, kind, generation);
    setup(&mut socket);
    match r.add_socket(socket) {
        Ok(key) => {
            push_handle(l, key, generation, kind);
            Ret::Values(1)
        }
        Err(e) => {
            let (word, detail) = errors::describe(&e);
            push_fail(l, word, &detail)
        }
    }
}

/// The kind of the open socket behind a handle (for methods that only some kinds have).
pub unsafe fn kind_of(r: &Reactor, key: usize, generation: u32) -> Option<Kind> {
    with_socket(r, key, generation, |s| s.kind)
}


#[cfg(test)]
mod tests {
    /// The echo path touches one socket entry per message; keep its hot state within a
    /// cache line, so 1000 busy connections stay cheap to visit.
    #[test]
    fn socket_state_fits_a_cache_line() {
        let size = std::mem::size_of::<super::Socket>();
        assert!(size <= 64, "Socket is {size} bytes");
    }
}
