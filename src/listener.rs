//! Listening sockets (TCP and Unix): accept.

use std::ffi::{c_int, CStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::errors::describe;
use crate::lua::{ffi, lua_State, push_fail, Raise};
use crate::reactor::Reactor;
use crate::socket::{adopt, push_closed, with_socket, Kind};
use crate::stream::{blocking_op, resume, start, Attempt, Dir, Op};

enum Accepted {
    Socket(socket2::Socket, Kind),
    WouldBlock,
    Failed(io::Error),
}

fn accept_one(s: &mut crate::socket::Socket) -> Accepted {
    if !s.readable {
        return Accepted::WouldBlock;
    }
    if crate::faults::before_accept(std::os::fd::AsRawFd::as_raw_fd(&s.fd)) {
        s.readable = false;
        return Accepted::WouldBlock;
    }
    let kind = if s.kind == Kind::UnixListener { Kind::UnixStream } else { Kind::TcpStream };
    loop {
        let fd = unsafe {
            libc::accept4(
                s.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            let socket = socket2::Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
            return Accepted::Socket(socket, kind);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // A connection that died in the queue is not the listener's failure.
            Some(libc::EINTR) | Some(libc::ECONNABORTED) | Some(libc::EPROTO) => continue,
            Some(libc::EAGAIN) => {
                s.readable = false;
                return Accepted::WouldBlock;
            }
            // EMFILE and friends: the pending connection stays queued; report and let the
            // caller decide (the hint stays set so the next accept tries again).
            _ => return Accepted::Failed(err),
        }
    }
}

/// After running out of descriptors, the next accept waits this long before trying again,
/// so an accept loop cannot spin and starve the tasks that would free some.
const ACCEPT_BACKOFF_MS: u64 = 100;

fn out_of_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM))
}

unsafe fn accept_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32) -> Result<Attempt, Raise> {
    let now = r.now_ms();
    let accepted = with_socket(r, key, generation, |s| {
        let retry_at = s.cold_mut().accept_retry_at;
        if let Some(at) = retry_at {
            if now < at {
                return Err(at);
            }
            s.cold_mut().accept_retry_at = None;
        }
        let outcome = accept_one(s);
        if let Accepted::Failed(e) = &outcome {
            if out_of_resources(e) {
                s.cold_mut().accept_retry_at = Some(now + ACCEPT_BACKOFF_MS);
            }
        }
        Ok(outcome)
    });
    Ok(match accepted {
        None => Attempt::Done(push_closed(l)),
        Some(Err(at)) => Attempt::WaitUntil(at),
        Some(Ok(Accepted::WouldBlock)) => Attempt::Wait,
        Some(Ok(Accepted::Failed(e))) => {
            let (word, detail) = describe(&e);
            Attempt::Done(push_fail(l, word, &detail))
        }
        Some(Ok(Accepted::Socket(socket, kind))) => {
            if kind == Kind::TcpStream {
                // Small request/response messages are the common case: no Nagle delay.
                let _ = socket.set_tcp_nodelay(true);
            }
            Attempt::Done(adopt(l, r, socket, kind, |_| {}))
        }
    })
}

blocking_op!(ACCEPT, accept, accept_k, "accept", Dir::Read, accept_attempt, 2);

pub const METHODS: &[(&CStr, ffi::lua_CFunction)] = &[(c"accept", accept)];

/// Shared by TCP and Unix listen: bind is done; listen and adopt.
pub unsafe fn listen_and_adopt(
    l: *mut lua_State,
    r: &Reactor,
    socket: socket2::Socket,
    backlog: i32,
    kind: Kind,
    setup: impl FnOnce(&mut crate::socket::Socket),
) -> crate::lua::Ret {
    if let Err(e) = socket.listen(backlog) {
        let (word, detail) = describe(&e);
        return push_fail(l, word, &detail);
    }
    adopt(l, r, socket, kind, setup)
}
