//! Stream connections (TCP and Unix): reading, buffered writing with a high-water mark,
//! and the machinery every blocking socket call uses (attempt; on EAGAIN wait and retry).

use std::ffi::{c_int, CStr};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use crate::errors::{self, describe};
use crate::lua::{self, ffi, lua_State, push_fail, LuaResult, Raise, Ret};
use crate::reactor::{Reactor, Reason, WaitKind, READ_BUFFER};
use crate::socket::{handle_at, push_closed, reactor, with_socket, Socket};

/// The most one `read_exact` or `read_all` may gather (memory stays bounded).
pub const MAX_GATHER: usize = 64 * 1024 * 1024;

// ---- blocking operations ---------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Read,
    Write,
}

pub enum Attempt {
    Done(Ret),
    /// Would block: wait for the socket in this direction, then attempt again.
    Wait,
    /// Wait as for `Wait`, but attempt again at this time (ms) at the latest.
    WaitUntil(u64),
}

/// A blocking socket operation: `attempt` reads its arguments from the stack (1 = the
/// socket) and either finishes or asks to wait; `k` is its continuation after a wait.
pub struct Op {
    pub name: &'static str,
    pub dir: Dir,
    pub attempt: unsafe fn(*mut lua_State, &Reactor, usize, u32) -> Result<Attempt, Raise>,
    pub k: unsafe extern "C-unwind" fn(*mut lua_State, c_int, ffi::lua_KContext) -> c_int,
}

/// Deadlines travel through the yield in the continuation context (0 = none).
fn encode_deadline(deadline: Option<u64>) -> ffi::lua_KContext {
    deadline.map_or(0, |d| d as ffi::lua_KContext + 1)
}

fn decode_deadline(ctx: ffi::lua_KContext) -> Option<u64> {
    (ctx > 0).then(|| ctx as u64 - 1)
}

/// When a wait gives up: at first a relative timeout (the call's argument, else the
/// socket's default, looked up only if the call has to wait); after a wait, the absolute
/// deadline carried through the yield, so spurious wake-ups do not extend it.
#[derive(Clone, Copy)]
pub enum Deadline {
    After(Option<u64>),
    At(Option<u64>),
}

/// First call of a blocking operation.
pub unsafe fn start(l: *mut lua_State, op: &Op, timeout_idx: c_int) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, op.name)?;
        let timeout = lua::opt_seconds_ms(l, timeout_idx, op.name, "timeout")?;
        drive(l, reactor(l), op, key, generation, Deadline::After(timeout))
    })
}

/// After a wait: the loop resumed us; the reason is on the task.
pub unsafe fn resume(l: *mut lua_State, op: &Op, ctx: ffi::lua_KContext) -> c_int {
    lua::entry(l, || {
        let r = reactor(l);
        match r.wake_reason() {
            // A timer that fires before the operation's own deadline was a retry timer.
            Reason::Timeout if decode_deadline(ctx).is_some_and(|d| r.now_ms() >= d) => {
                Ok(push_fail(l, errors::TIMEOUT, "the operation timed out"))
            }
            Reason::Closed => Ok(push_closed(l)),
            Reason::Ready | Reason::Timeout => {
                let (key, generation) = handle_at(l, 1, op.name)?;
                drive(l, r, op, key, generation, Deadline::At(decode_deadline(ctx)))
            }
        }
    })
}

unsafe fn drive(l: *mut lua_State, r: &Reactor, op: &Op, key: usize, generation: u32, deadline: Deadline) -> LuaResult {
    match (op.attempt)(l, r, key, generation)? {
        Attempt::Done(ret) => Ok(ret),
        Attempt::Wait => wait_until(l, r, op, key, generation, deadline, None),
        Attempt::WaitUntil(at) => wait_until(l, r, op, key, generation, deadline, Some(at)),
    }
}

enum NoWait {
    Busy,
    Expired,
    Refused(Raise),
}

/// Registers the running task as the socket's waiter in `op.dir` and yields.
pub unsafe fn wait(l: *mut lua_State, r: &Reactor, op: &Op, key: usize, generation: u32, deadline: Deadline) -> LuaResult {
    wait_until(l, r, op, key, generation, deadline, None)
}

/// As `wait`, with the timer set no later than `retry_at` (the deadline travels on).
unsafe fn wait_until(
    l: *mut lua_State,
    r: &Reactor,
    op: &Op,
    key: usize,
    generation: u32,
    deadline: Deadline,
    retry_at: Option<u64>,
) -> LuaResult {
    let registered = with_socket(r, key, generation, |s| {
        let slot = if op.dir == Dir::Read { &mut s.read_waiter } else { &mut s.write_waiter };
        if slot.is_some_and(|w| r.is_waiting(w)) {
            return Err(NoWait::Busy);
        }
        let deadline = match deadline {
            Deadline::At(at) => at,
            Deadline::After(ms) => ms.or_else(|| s.timeout_ms()).map(|ms| r.deadline_after(ms)),
        };
        if deadline.is_some_and(|d| r.now_ms() >= d) {
            return Err(NoWait::Expired);
        }
        let kind = if s.background { WaitKind::Background } else { WaitKind::Io };
        let timer = match (deadline, retry_at) {
            (Some(d), Some(t)) => Some(d.min(t)),
            (d, t) => d.or(t),
        };
        let waiter = r.begin_wait(l, op.name, timer, kind).map_err(NoWait::Refused)?;
        let slot = if op.dir == Dir::Read { &mut s.read_waiter } else { &mut s.write_waiter };
        *slot = Some(waiter);
        Ok(deadline)
    });
    // After a write, the bytes are already queued: waiting for the queue to drain is only
    // flow control. When that wait cannot happen (another writer holds the slot, or we are
    // not in a task), the write has still succeeded.
    let drained_write = std::ptr::eq(op, &WRITE_DRAIN);
    match registered {
        None => Ok(push_closed(l)),
        Some(Err(NoWait::Busy)) | Some(Err(NoWait::Refused(_))) if drained_write => Ok(lua::push_true(l)),
        Some(Ok(deadline)) => Ok(Ret::Yield(encode_deadline(deadline), op.k)),
        Some(Err(NoWait::Refused(raise))) => Err(raise),
        Some(Err(NoWait::Expired)) => Ok(push_fail(l, errors::TIMEOUT, "the operation timed out")),
        Some(Err(NoWait::Busy)) => {
            let what = if op.dir == Dir::Read { "reading from" } else { "writing to" };
            Ok(push_fail(l, errors::BUSY, &format!("another task is already {what} this socket")))
        }
    }
}

// ---- receiving -------------------------------------------------------------------------

pub enum Fill {
    Data(usize),
    Eof,
    WouldBlock,
    Failed(io::Error),
}

/// One `recv` into `buf`, skipped when the readiness hint says it would fail.
pub fn recv_into(s: &mut Socket, buf: &mut [u8]) -> Fill {
    if s.tls().is_some() {
        return recv_tls(s, buf);
    }
    if !s.readable {
        return Fill::WouldBlock;
    }
    let buf = match crate::faults::before_recv(s.fd.as_raw_fd(), buf.len()) {
        crate::faults::Injected::Len(n) => &mut buf[..n],
        crate::faults::Injected::WouldBlock => {
            s.readable = false;
            return Fill::WouldBlock;
        }
    };
    loop {
        let n = unsafe { libc::recv(s.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            let n = n as usize;
            // A short read drained the socket; the next edge will say when more arrives.
            // After the peer's FIN no edge comes again, so then we keep reading until EOF.
            if n < buf.len() && !s.read_closed {
                s.readable = false;
            }
            return Fill::Data(n);
        }
        if n == 0 {
            s.eof = true;
            return Fill::Eof;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => {
                s.readable = false;
                return Fill::WouldBlock;
            }
            _ => return Fill::Failed(err),
        }
    }
}

/// As `recv_into`, through TLS: rustls may hold plaintext while the kernel has nothing,
/// so the readiness hint is its business (tls.rs).
#[cold]
fn recv_tls(s: &mut Socket, buf: &mut [u8]) -> Fill {
    let fd = s.fd.as_raw_fd();
    let mut readable = s.readable;
    let fill = match s.tls_mut() {
        Some(tls) => tls.recv(fd, &mut readable, buf),
        None => Fill::WouldBlock,
    };
    s.readable = readable;
    if matches!(fill, Fill::Eof) {
        s.eof = true;
    }
    fill
}

/// Receives more bytes onto the end of `rbuf`.
pub unsafe fn gather(r: &Reactor, s: &mut Socket) -> Fill {
    let scratch = r.scratch();
    let fill = recv_into(s, scratch);
    if let Fill::Data(n) = fill {
        s.rbuf.get_or_insert_with(Default::default).append(&scratch[..n]);
    }
    fill
}

/// What an attempt found, decided under the socket borrow and pushed after it is released.
enum Found {
    /// `len` bytes at `ptr`, then drop `consume` bytes from `rbuf` (0 when from scratch).
    Bytes { ptr: *const u8, len: usize, consume: usize },
    Closed,
    Failed(&'static str, String),
    Fail(&'static str, &'static str),
    Wait,
}

unsafe fn finish(l: *mut lua_State, r: &Reactor, key: usize, generation: u32, found: Option<Found>) -> Result<Attempt, Raise> {
    Ok(match found {
        None | Some(Found::Closed) => Attempt::Done(push_closed(l)),
        Some(Found::Wait) => Attempt::Wait,
        Some(Found::Failed(word, detail)) => Attempt::Done(push_fail(l, word, &detail)),
        Some(Found::Fail(word, detail)) => Attempt::Done(push_fail(l, word, detail)),
        Some(Found::Bytes { ptr, len, consume }) => {
            // The bytes live in the scratch buffer or in this socket's rbuf; neither is
            // touched by anything a Lua allocation can run (finalizers only queue closes
            // or close *other* sockets: this one is on our stack).
            lua::push_bytes(l, std::slice::from_raw_parts(ptr, len));
            if consume > 0 {
                with_socket(r, key, generation, |s| {
                    if let Some(b) = s.rbuf.as_mut() {
                        b.consume(consume);
                    }
                });
            }
            Attempt::Done(Ret::Values(1))
        }
    })
}

fn failed(e: &io::Error) -> Found {
    let (word, detail) = describe(e);
    Found::Failed(word, detail)
}

unsafe fn read_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32) -> Result<Attempt, Raise> {
    let want = match lua::opt_integer(l, 2, "read", "n")? {
        None => READ_BUFFER,
        Some(n) if n >= 1 => (n as usize).min(READ_BUFFER),
        Some(_) => return Err("read: bad argument #2 'n' (must be 1 or more)".into()),
    };
    let found = with_socket(r, key, generation, |s| {
        let received = s.received();
        if !received.is_empty() {
            let len = received.len().min(want);
            return Found::Bytes { ptr: received.as_ptr(), len, consume: len };
        }
        if s.eof {
            return Found::Closed;
        }
        let scratch = r.scratch();
        match recv_into(s, &mut scratch[..want]) {
            Fill::Data(n) => Found::Bytes { ptr: scratch.as_ptr(), len: n, consume: 0 },
            Fill::Eof => Found::Closed,
            Fill::WouldBlock => Found::Wait,
            Fill::Failed(e) => failed(&e),
        }
    });
    finish(l, r, key, generation, found)
}

unsafe fn read_exact_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32) -> Result<Attempt, Raise> {
    let n = lua::check_integer(l, 2, "read_exact", "n")?;
    if n < 0 || n as usize > MAX_GATHER {
        return Err(format!("read_exact: bad argument #2 'n' (must be 0 to {MAX_GATHER})"));
    }
    let n = n as usize;
    let found = with_socket(r, key, generation, |s| loop {
        if s.received().len() >= n {
            return Found::Bytes { ptr: s.received().as_ptr(), len: n, consume: n };
        }
        if s.eof {
            return Found::Closed;
        }
        match gather(r, s) {
            Fill::Data(_) => continue,
            Fill::Eof => return Found::Closed,
            Fill::WouldBlock => return Found::Wait,
            Fill::Failed(e) => return failed(&e),
        }
    });
    finish(l, r, key, generation, found)
}

unsafe fn read_line_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32) -> Result<Attempt, Raise> {
    let found = with_socket(r, key, generation, |s| {
        // Resume the newline search where the last attempt stopped (a line trickling in
        // a byte at a time must not be rescanned from its start each time).
        let mut scanned = s.rbuf.as_ref().map_or(0, |b| b.scanned);
        loop {
            let pending = s.received();
            let scanned_from = scanned.min(pending.len());
            scanned = scanned_from;
            if let Some(at) = pending[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + at;
                if end > s.line_limit() {
                    return Found::Fail(errors::LINE_TOO_LONG, "a line longer than the socket's line limit");
                }
                let len = if end > 0 && pending[end - 1] == b'\r' { end - 1 } else { end };
                return Found::Bytes { ptr: pending.as_ptr(), len, consume: end + 1 };
            }
            scanned = pending.len();
            if let Some(b) = s.rbuf.as_mut() {
                b.scanned = scanned;
            }
            let pending = s.received();
            if pending.len() > s.line_limit() {
                return Found::Fail(errors::LINE_TOO_LONG, "no newline within the socket's line limit");
            }
            if s.eof {
                return if pending.is_empty() {
                    Found::Closed
                } else {
                    Found::Bytes { ptr: pending.as_ptr(), len: pending.len(), consume: pending.len() }
                };
            }
            match gather(r, s) {
                Fill::Data(_) | Fill::Eof => continue,
                Fill::WouldBlock => return Found::Wait,
                Fill::Failed(e) => return failed(&e),
            }
        }
    });
    finish(l, r, key, generation, found)
}

unsafe fn read_all_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32) -> Result<Attempt, Raise> {
    let found = with_socket(r, key, generation, |s| loop {
        let avail = s.received().len();
        if avail > MAX_GATHER {
            return Found::Fail(errors::MESSAGE_TOO_LARGE, "more than 64 MiB before the end of the stream");
        }
        if s.eof {
            return Found::Bytes { ptr: s.received().as_ptr(), len: avail, consume: avail };
        }
        match gather(r, s) {
            Fill::Data(_) | Fill::Eof => continue,
            Fill::WouldBlock => return Found::Wait,
            Fill::Failed(e) => return failed(&e),
        }
    });
    finish(l, r, key, generation, found)
}

macro_rules! blocking_op {
    ($op:ident, $start:ident, $k:ident, $name:literal, $dir:expr, $attempt:path, $timeout_idx:literal) => {
        static $op: Op = Op { name: $name, dir: $dir, attempt: $attempt, k: $k };
        unsafe extern "C-unwind" fn $start(l: *mut lua_State) -> c_int {
            start(l, &$op, $timeout_idx)
        }
        unsafe extern "C-unwind" fn $k(l: *mut lua_State, _status: c_int, ctx: ffi::lua_KContext) -> c_int {
            resume(l, &$op, ctx)
        }
    };
}
pub(crate) use blocking_op;

blocking_op!(READ, read, read_k, "read", Dir::Read, read_attempt, 3);
blocking_op!(READ_EXACT, read_exact, read_exact_k, "read_exact", Dir::Read, read_exact_attempt, 3);
blocking_op!(READ_LINE, read_line, read_line_k, "read_line", Dir::Read, read_line_attempt, 2);
blocking_op!(READ_ALL, read_all, read_all_k, "read_all", Dir::Read, read_all_attempt, 2);

// ---- sending ---------------------------------------------------------------------------

/// One `send` without SIGPIPE (the host process keeps the default disposition).
pub fn send_nosignal(s: &mut Socket, data: &[u8]) -> io::Result<usize> {
    let (fd, kind, tls, _) = s.send_parts();
    send_parts(fd, kind, tls, data)
}

/// As `send_nosignal`, from `wbuf`'s own bytes.
fn send_queued(s: &mut Socket) -> io::Result<usize> {
    let (fd, kind, tls, queued) = s.send_parts();
    send_parts(fd, kind, tls, queued)
}

fn send_parts(fd: RawFd, kind: crate::socket::Kind, tls: Option<&mut crate::tls::Tls>, data: &[u8]) -> io::Result<usize> {
    if let Some(tls) = tls {
        return tls.send(fd, data);
    }
    let data = match crate::faults::before_send(fd, data.len()) {
        crate::faults::Injected::Len(n) => &data[..n],
        crate::faults::Injected::WouldBlock => return Err(crate::faults::would_block()),
    };
    loop {
        let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
        if n >= 0 {
            crate::faults::after_send(fd, kind, n as usize);
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Keeps `Reactor::flushing` (sockets with unsent bytes keep the loop alive) in step.
fn note_unsent(r: &Reactor, before: bool, after: bool) {
    if before != after {
        let n = r.flushing.get();
        r.flushing.set(if after { n + 1 } else { n.saturating_sub(1) });
    }
}

/// Hands queued bytes to the kernel until it stops taking them.
pub fn flush_queued(s: &mut Socket, r: &Reactor) {
    let before = s.has_unsent();
    while s.has_unsent() && s.writable {
        let sent = send_queued(s);
        match sent {
            Ok(n) => {
                s.note_sent(n);
                if let Some(b) = s.wbuf.as_mut() {
                    b.consume(n);
                }
                if n == 0 && !s.wbuf.as_ref().is_some_and(|b| !b.is_empty()) {
                    break; // only TLS's own records were left, and it made no progress
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => s.writable = false,
            Err(e) => {
                // Nothing queued can be delivered any more; the next write reports why.
                s.cold_mut().write_error = Some(describe(&e));
                s.wbuf = None;
                if let Some(tls) = s.tls_mut() {
                    tls.abandon_output();
                }
                break;
            }
        }
    }
    if !s.has_unsent() && s.shutdown_after_flush {
        s.shutdown_after_flush = false;
        let _ = s.fd.shutdown(std::net::Shutdown::Write);
    }
    note_unsent(r, before, s.has_unsent());
}

/// Queues `data` (sending what the kernel takes at once). Returns whether the queue is
/// now past the high-water mark, or the error that stops this socket from sending.
pub fn queue(s: &mut Socket, r: &Reactor, key: usize, data: &[u8]) -> Result<bool, (&'static str, String)> {
    if let Some(err) = s.write_error() {
        return Err(err.clone());
    }
    let before = s.has_unsent();
    if s.corked {
        s.wbuf.get_or_insert_with(Default::default).append(data);
        if !s.flush_scheduled {
            s.flush_scheduled = true;
            r.schedule_flush(key, s.generation);
        }
        note_unsent(r, before, true);
        return Ok(s.unsent() > s.high_water());
    }
    let mut rest = data;
    if !before && s.writable {
        match send_nosignal(s, data) {
            Ok(n) => {
                s.note_sent(n);
                rest = &data[n..];
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => s.writable = false,
            Err(e) => {
                let err = describe(&e);
                s.cold_mut().write_error = Some(err.clone());
                return Err(err);
            }
        }
        if !rest.is_empty() {
            s.writable = false;
        }
    }
    if !rest.is_empty() {
        s.wbuf.get_or_insert_with(Default::default).append(rest);
        if s.writable {
            flush_queued(s, r);
        }
    }
    note_unsent(r, before, s.has_unsent());
    Ok(s.unsent() > s.high_water())
}

unsafe extern "C-unwind" fn write(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "write")?;
        let data = lua::check_bytes(l, 2, "write", "data")?;
        let timeout = lua::opt_seconds_ms(l, 3, "write", "timeout")?;
        let r = reactor(l);
        match with_socket(r, key, generation, |s| queue(s, r, key, data)) {
            None => Ok(push_closed(l)),
            Some(Err((word, detail))) => Ok(push_fail(l, word, &detail)),
            Some(Ok(false)) => Ok(lua::push_true(l)),
            Some(Ok(true)) => wait(l, r, &WRITE_DRAIN, key, generation, Deadline::After(timeout)),
        }
    })
}

/// After a write passed the high-water mark: done once back under half of it.
unsafe fn drain_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32) -> Result<Attempt, Raise> {
    let state = with_socket(r, key, generation, |s| (s.write_error().cloned(), s.unsent() <= s.high_water() / 2));
    Ok(match state {
        None => Attempt::Done(push_closed(l)),
        Some((Some((word, detail)), _)) => Attempt::Done(push_fail(l, word, &detail)),
        Some((None, true)) => Attempt::Done(lua::push_true(l)),
        Some((None, false)) => Attempt::Wait,
    })
}

pub static WRITE_DRAIN: Op = Op { name: "write", dir: Dir::Write, attempt: drain_attempt, k: write_k };
unsafe extern "C-unwind" fn write_k(l: *mut lua_State, _status: c_int, ctx: ffi::lua_KContext) -> c_int {
    resume(l, &WRITE_DRAIN, ctx)
}

unsafe fn flush_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32) -> Result<Attempt, Raise> {
    let state = with_socket(r, key, generation, |s| (s.write_error().cloned(), s.has_unsent()));
    Ok(match state {
        None => Attempt::Done(push_closed(l)),
        Some((Some((word, detail)), _)) => Attempt::Done(push_fail(l, word, &detail)),
        Some((None, false)) => Attempt::Done(lua::push_true(l)),
        Some((None, true)) => Attempt::Wait,
    })
}
blocking_op!(FLUSH, flush, flush_k, "flush", Dir::Write, flush_attempt, 2);

// ---- non-blocking methods --------------------------------------------------------------

unsafe extern "C-unwind" fn buffered(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "buffered")?;
        let (n, sent) = with_socket(reactor(l), key, generation, |s| (s.unsent(), s.sent())).unwrap_or((0, 0));
        ffi::lua_pushinteger(l, n as ffi::lua_Integer);
        ffi::lua_pushinteger(l, sent as ffi::lua_Integer);
        Ok(Ret::Values(2))
    })
}

unsafe extern "C-unwind" fn shutdown(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "shutdown")?;
        let how = if lua::is_none_or_nil(l, 2) { "write" } else { lua::check_str(l, 2, "shutdown", "how")? };
        let (read, write) = match how {
            "write" => (false, true),
            "read" => (true, false),
            "both" => (true, true),
            _ => return Err(format!("shutdown: bad argument #2 'how' (\"read\", \"write\" or \"both\" expected, got \"{how}\")")),
        };
        let outcome = with_socket(reactor(l), key, generation, |s| {
            if read {
                s.fd.shutdown(std::net::Shutdown::Read)?;
            }
            if write {
                crate::socket::close_notify(s);
                if s.has_unsent() {
                    s.shutdown_after_flush = true;
                } else {
                    s.fd.shutdown(std::net::Shutdown::Write)?;
                }
            }
            Ok::<(), io::Error>(())
        });
        match outcome {
            None => Ok(push_closed(l)),
            Some(Err(e)) => {
                let (word, detail) = describe(&e);
                Ok(push_fail(l, word, &detail))
            }
            Some(Ok(())) => Ok(lua::push_true(l)),
        }
    })
}

/// Shared shape of the setters that take a positive size.
unsafe fn set_size(l: *mut lua_State, func: &str, apply: impl FnOnce(&mut Socket, usize) -> io::Result<()>) -> LuaResult {
    let (key, generation) = handle_at(l, 1, func)?;
    let n = lua::check_integer(l, 2, func, "bytes")?;
    if n < 1 {
        return Err(format!("{func}: bad argument #2 'bytes' (must be 1 or more)"));
    }
    match with_socket(reactor(l), key, generation, |s| apply(s, n as usize)) {
        None => Ok(push_closed(l)),
        Some(Err(e)) => {
            let (word, detail) = describe(&e);
            Ok(push_fail(l, word, &detail))
        }
        Some(Ok(())) => Ok(lua::push_true(l)),
    }
}

unsafe extern "C-unwind" fn set_high_water(l: *mut lua_State) -> c_int {
    lua::entry(l, || set_size(l, "set_high_water", |s, n| {
        s.cold_mut().high_water = n;
        Ok(())
    }))
}

/// `set_cork(on)`: while on, writes only queue and the loop sends everything queued once
/// at the end of the turn: many small messages from many tasks cost one system call.
unsafe extern "C-unwind" fn set_cork(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "set_cork")?;
        let on = lua::check_boolean(l, 2, "set_cork", "on")?;
        let r = reactor(l);
        let scheduled = with_socket(r, key, generation, |s| {
            s.corked = on;
            // Turning the cork off must not strand what it held.
            if !on && s.has_unsent() && !s.flush_scheduled {
                s.flush_scheduled = true;
                return true;
            }
            false
        });
        match scheduled {
            None => Ok(push_closed(l)),
            Some(schedule) => {
                if schedule {
                    r.schedule_flush(key, generation);
                }
                Ok(lua::push_true(l))
            }
        }
    })
}

/// `set_background(on)`: waits on this socket neither keep `run` going nor count as
/// stranded when it returns (a connection's reader, waiting for whatever comes).
unsafe extern "C-unwind" fn set_background(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "set_background")?;
        let on = lua::check_boolean(l, 2, "set_background", "on")?;
        match with_socket(reactor(l), key, generation, |s| s.background = on) {
            None => Ok(push_closed(l)),
            Some(()) => Ok(lua::push_true(l)),
        }
    })
}

unsafe extern "C-unwind" fn set_line_limit(l: *mut lua_State) -> c_int {
    lua::entry(l, || set_size(l, "set_line_limit", |s, n| {
        s.cold_mut().line_limit = n;
        Ok(())
    }))
}

unsafe extern "C-unwind" fn set_message_limit(l: *mut lua_State) -> c_int {
    lua::entry(l, || set_size(l, "set_message_limit", |s, n| {
        s.cold_mut().message_limit = n;
        Ok(())
    }))
}

unsafe extern "C-unwind" fn set_send_buffer(l: *mut lua_State) -> c_int {
    lua::entry(l, || set_size(l, "set_send_buffer", |s, n| s.fd.set_send_buffer_size(n)))
}

unsafe extern "C-unwind" fn set_recv_buffer(l: *mut lua_State) -> c_int {
    lua::entry(l, || set_size(l, "set_recv_buffer", |s, n| s.fd.set_recv_buffer_size(n)))
}

unsafe fn get_size(l: *mut lua_State, func: &str, get: impl FnOnce(&Socket) -> io::Result<usize>) -> LuaResult {
    let (key, generation) = handle_at(l, 1, func)?;
    match with_socket(reactor(l), key, generation, |s| get(s)) {
        None => Ok(push_closed(l)),
        Some(Err(e)) => {
            let (word, detail) = describe(&e);
            Ok(push_fail(l, word, &detail))
        }
        Some(Ok(n)) => {
            ffi::lua_pushinteger(l, n as ffi::lua_Integer);
            Ok(Ret::Values(1))
        }
    }
}

unsafe extern "C-unwind" fn send_buffer(l: *mut lua_State) -> c_int {
    lua::entry(l, || get_size(l, "send_buffer", |s| s.fd.send_buffer_size()))
}

unsafe extern "C-unwind" fn recv_buffer(l: *mut lua_State) -> c_int {
    lua::entry(l, || get_size(l, "recv_buffer", |s| s.fd.recv_buffer_size()))
}

/// Kernel buffer sizes: shared by streams and datagram sockets.
pub const BUFFER_METHODS: &[(&CStr, ffi::lua_CFunction)] = &[
    (c"set_send_buffer", set_send_buffer),
    (c"set_recv_buffer", set_recv_buffer),
    (c"send_buffer", send_buffer),
    (c"recv_buffer", recv_buffer),
];

pub const METHODS: &[(&CStr, ffi::lua_CFunction)] = &[
    (c"read", read),
    (c"read_exact", read_exact),
    (c"read_line", read_line),
    (c"read_all", read_all),
    (c"write", write),
    (c"flush", flush),
    (c"buffered", buffered),
    (c"shutdown", shutdown),
    (c"set_high_water", set_high_water),
    (c"set_line_limit", set_line_limit),
    (c"set_message_limit", set_message_limit),
    (c"set_cork", set_cork),
    (c"set_background", set_background),
    (c"read_message", crate::message::read_message),
    (c"write_message", crate::message::write_message),
    (c"write_array", crate::message::write_array),
    (c"write_call", crate::message::write_call),
    (c"read_array", crate::message::read_array),
    (c"set_nodelay", crate::tcp::set_nodelay),
    (c"set_keepalive", crate::tcp::set_keepalive),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::Kind;
    use socket2::{Domain, Type};

    fn pair() -> (Socket, socket2::Socket) {
        let (a, b) = socket2::Socket::pair(Domain::UNIX, Type::STREAM, None).unwrap();
        a.set_nonblocking(true).unwrap();
        (Socket::new(a, Kind::UnixStream, 1), b)
    }

    #[test]
    fn short_read_clears_the_hint_and_eof_is_seen() {
        let (mut s, peer) = pair();
        let mut buf = [0u8; 64];
        assert!(matches!(recv_into(&mut s, &mut buf), Fill::WouldBlock));
        assert!(!s.readable);
        // With the hint cleared no system call is made, even though data is there now.
        peer.send(b"hello").unwrap();
        assert!(matches!(recv_into(&mut s, &mut buf), Fill::WouldBlock));
        s.readable = true;
        assert!(matches!(recv_into(&mut s, &mut buf), Fill::Data(5)));
        assert!(!s.readable, "a short read drained the socket");
        drop(peer);
        s.readable = true;
        assert!(matches!(recv_into(&mut s, &mut buf), Fill::Eof));
    }

    #[test]
    fn queue_passes_high_water_and_flush_drains() {
        let r = Reactor::new().unwrap();
        let (mut s, peer) = pair();
        s.fd.set_send_buffer_size(4096).unwrap();
        s.cold_mut().high_water = 64 * 1024;
        let chunk = vec![7u8; 16 * 1024];
        let mut over = false;
        for _ in 0..64 {
            over = queue(&mut s, &r, 0, &chunk).unwrap();
            if over {
                break;
            }
        }
        assert!(over, "a peer that never reads must push the queue past high water");
        assert_eq!(r.flushing.get(), 1);
        peer.set_nonblocking(true).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        let mut received = 0usize;
        for _ in 0..10_000 {
            if let Ok(n) = (&peer).read_some(&mut sink) {
                received += n;
            }
            s.writable = true;
            flush_queued(&mut s, &r);
            if !s.has_unsent() {
                break;
            }
        }
        assert!(!s.has_unsent());
        assert_eq!(r.flushing.get(), 0);
        assert!(received > 0);
    }

    #[test]
    fn send_to_a_closed_peer_reports_broken_pipe_without_sigpipe() {
        let r = Reactor::new().unwrap();
        let (mut s, peer) = pair();
        drop(peer);
        let err = queue(&mut s, &r, 0, b"x").unwrap_err();
        assert_eq!(err.0, "broken pipe");
        assert_eq!(queue(&mut s, &r, 0, b"y").unwrap_err().0, "broken pipe");
    }

    trait ReadSome {
        fn read_some(self, buf: &mut [u8]) -> io::Result<usize>;
    }
    impl ReadSome for &socket2::Socket {
        fn read_some(self, buf: &mut [u8]) -> io::Result<usize> {
            use std::io::Read;
            let mut s: &socket2::Socket = self;
            s.read(buf)
        }
    }
}
