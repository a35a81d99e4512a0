//! Fault injection for tests: the socket layer misbehaves the way a loaded kernel and a
//! bad network can, so the code above it is tried on the paths that rarely run.
//!
//! Switched on by the environment variable `LUANET_FAULTS`, read once per process, e.g.
//! `LUANET_FAULTS=short,eagain=3` (see docs/RELIABILITY.md, "Fault injection"):
//!
//! * `short`: every stream `recv` asks for a random 1..=n of the n bytes it could take,
//!   and every `send` hands the kernel a random 1..=n of its n bytes.
//! * `eagain=N`: every Nth stream `recv`, `send` or `accept` fails with EAGAIN without
//!   making the system call.
//! * `reset=B`: each stream connection is aborted once it has sent B bytes, in the middle
//!   of whatever message crosses that point (TCP: a RST; Unix: both directions shut).
//! * `seed=S`: the random choices' seed (default 1), so a failing run can be repeated.
//!
//! A real EAGAIN or short write means the kernel's buffer is full, and an edge follows
//! when it drains. An injected one has no such edge coming, so the socket is marked
//! (`EDGES`) and the loop delivers a made-up readiness event for it on its
//! next turn: what the code under test sees is what the kernel could have done.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::OnceLock;

use crate::socket::Kind;

pub const EDGE_READ: u8 = 1;
pub const EDGE_WRITE: u8 = 2;

#[derive(Debug, Default, PartialEq)]
pub struct Faults {
    pub short: bool,
    pub eagain_every: u64,
    pub reset_after: u64,
    pub seed: u64,
}

static CONFIG: OnceLock<Option<Faults>> = OnceLock::new();

thread_local! {
    static OPS: Cell<u64> = const { Cell::new(0) };
    static INJECTED: Cell<u64> = const { Cell::new(0) };
    static RNG: Cell<u64> = const { Cell::new(0) };
    /// Made-up edges owed, by descriptor (the socket table's entries stay small: this
    /// is test-only state, kept out of them).
    static EDGES: RefCell<Vec<(RawFd, u8)>> = const { RefCell::new(Vec::new()) };
    /// Bytes sent by each stream connection, and whether it was reset (for `reset=B`).
    static SENT: RefCell<HashMap<RawFd, (u64, bool)>> = RefCell::new(HashMap::new());
}

/// Parses `LUANET_FAULTS`. An unknown word is reported and the whole setting ignored:
/// a test run that thinks it injects faults but does not would prove nothing.
pub fn parse(spec: &str) -> Result<Faults, String> {
    let mut f = Faults { seed: 1, ..Default::default() };
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (item, None),
        };
        let number = || -> Result<u64, String> {
            value
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("LUANET_FAULTS: {name} needs a positive number, as in {name}=3"))
        };
        match name {
            "short" => f.short = true,
            "eagain" => f.eagain_every = number()?,
            "reset" => f.reset_after = number()?,
            "seed" => f.seed = number()?,
            _ => return Err(format!("LUANET_FAULTS: unknown fault {name:?} (short, eagain=N, reset=BYTES, seed=S)")),
        }
    }
    Ok(f)
}

fn config() -> Option<&'static Faults> {
    CONFIG
        .get_or_init(|| {
            let spec = std::env::var("LUANET_FAULTS").ok()?;
            match parse(&spec) {
                // Silent when on: the suite runs with it and some tests compare stderr and
                // logs exactly. `injected()` shows that it works.
                Ok(f) => {
                    RNG.with(|r| r.set(f.seed));
                    Some(f)
                }
                Err(e) => {
                    crate::reactor::report(&e);
                    None
                }
            }
        })
        .as_ref()
}

/// SplitMix64: small, and good enough to pick lengths.
fn random() -> u64 {
    RNG.with(|r| {
        let mut z = r.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        r.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

fn eagain_now(f: &Faults) -> bool {
    let now = f.eagain_every > 0
        && OPS.with(|n| {
            let next = n.get() + 1;
            n.set(next);
            next % f.eagain_every == 0
        });
    if now {
        count();
    }
    now
}

fn count() {
    INJECTED.with(|n| n.set(n.get() + 1));
}

/// `core.faults_injected()`: how many faults this process has injected (0 when off).
pub unsafe extern "C-unwind" fn injected(l: *mut crate::lua::lua_State) -> std::ffi::c_int {
    crate::lua::ffi::lua_pushinteger(l, INJECTED.with(|n| n.get()) as crate::lua::ffi::lua_Integer);
    1
}

fn mark(fd: RawFd, edge: u8) {
    owe_edge(fd, edge);
}

/// The loop delivers a readiness event for `fd` on its next turn. Fault injection uses it,
/// and so does TLS: a write that waited for the handshake has no kernel edge coming.
pub fn owe_edge(fd: RawFd, edge: u8) {
    EDGES.with(|e| e.borrow_mut().push((fd, edge)));
}

/// As `owe_edge`, for the socket at `key`.
pub fn owe_edge_for(r: &crate::reactor::Reactor, key: usize, edge: u8) {
    if let Some(s) = r.sockets.borrow().get(key) {
        owe_edge(std::os::fd::AsRawFd::as_raw_fd(&s.fd), edge);
    }
}

/// Whether made-up edges wait for the loop (it then polls without sleeping).
pub fn edges_pending() -> bool {
    EDGES.with(|e| !e.borrow().is_empty())
}

/// The made-up edges owed, by descriptor, taken. A stale one (its socket closed since)
/// finds no socket or a new one, for which a spurious edge is harmless.
pub fn take_edges() -> Vec<(RawFd, u8)> {
    EDGES.with(|e| std::mem::take(&mut *e.borrow_mut()))
}

/// A new socket on `fd`: whatever an earlier socket on that number sent is not its own.
pub fn new_socket(fd: RawFd) {
    if CONFIG.get().is_some_and(|c| c.is_some()) {
        SENT.with(|m| m.borrow_mut().remove(&fd));
    }
}

fn sent_so_far(fd: RawFd) -> (u64, bool) {
    SENT.with(|m| m.borrow().get(&fd).copied().unwrap_or((0, false)))
}

pub enum Injected {
    /// Go ahead with at most this many bytes.
    Len(usize),
    /// Fail as if the kernel said EAGAIN.
    WouldBlock,
}

/// Before a stream `recv` of up to `len` bytes.
pub fn before_recv(fd: RawFd, len: usize) -> Injected {
    let Some(f) = config() else { return Injected::Len(len) };
    if eagain_now(f) {
        mark(fd, EDGE_READ);
        return Injected::WouldBlock;
    }
    if f.short && len > 1 {
        // A short read of data that is there leaves the hint set (n == the asked length),
        // so no made-up edge is needed; the next read takes the rest.
        count();
        return Injected::Len(1 + (random() % len as u64) as usize);
    }
    Injected::Len(len)
}

/// Before an `accept`.
pub fn before_accept(fd: RawFd) -> bool {
    match config() {
        Some(f) if eagain_now(f) => {
            mark(fd, EDGE_READ);
            true
        }
        _ => false,
    }
}

/// Before a stream `send` of `len` bytes.
pub fn before_send(fd: RawFd, len: usize) -> Injected {
    let Some(f) = config() else { return Injected::Len(len) };
    if eagain_now(f) {
        mark(fd, EDGE_WRITE);
        return Injected::WouldBlock;
    }
    let mut take = len;
    if f.short && len > 1 {
        take = 1 + (random() % len as u64) as usize;
    }
    let (sent, reset) = sent_so_far(fd);
    if f.reset_after > 0 && !reset {
        let left = f.reset_after.saturating_sub(sent);
        take = take.min(usize::try_from(left).unwrap_or(usize::MAX));
    }
    if take < len {
        count();
        // The caller will wait for an edge the kernel has no reason to send.
        mark(fd, EDGE_WRITE);
    }
    Injected::Len(take)
}

/// After a stream `send` handed the kernel `n` bytes: past `reset=B`, the connection is
/// aborted in the middle of what it was sending.
pub fn after_send(fd: RawFd, kind: Kind, n: usize) {
    let Some(f) = config() else { return };
    if f.reset_after == 0 {
        return;
    }
    let (before, reset) = sent_so_far(fd);
    let sent = before + n as u64;
    let now_reset = reset || sent >= f.reset_after;
    SENT.with(|m| m.borrow_mut().insert(fd, (sent, now_reset)));
    if now_reset && !reset {
        abort_connection(fd, kind);
        crate::reactor::report(&format!("fault injection: connection reset after {sent} bytes sent"));
        mark(fd, EDGE_READ | EDGE_WRITE);
    }
}

fn abort_connection(fd: RawFd, kind: Kind) {
    if kind == Kind::TcpStream {
        // connect(AF_UNSPEC) on a connected TCP socket drops it and sends a RST, the way a
        // peer that crashed or a middlebox that gave up would.
        let addr = libc::sockaddr { sa_family: libc::AF_UNSPEC as libc::sa_family_t, sa_data: [0; 14] };
        unsafe { libc::connect(fd, &addr, std::mem::size_of::<libc::sockaddr>() as libc::socklen_t) };
    } else {
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
}

/// The error an injected EAGAIN stands for.
pub fn would_block() -> io::Error {
    io::Error::from_raw_os_error(libc::EAGAIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_docs_show_and_refuses_the_rest() {
        let f = parse("short,eagain=3,reset=1000,seed=7").unwrap();
        assert_eq!(f, Faults { short: true, eagain_every: 3, reset_after: 1000, seed: 7 });
        assert_eq!(parse("").unwrap(), Faults { seed: 1, ..Default::default() });
        assert!(parse("eagain").is_err());
        assert!(parse("eagain=0").is_err());
        assert!(parse("slow").is_err());
    }
}
