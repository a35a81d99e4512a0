//! SIGINT and SIGTERM while `luanet.run` runs stop the loop gracefully: `run` returns
//! `nil, "interrupted", "SIGTERM"`, the script goes on from there (usually to its end),
//! and closing the Lua state ends connections and drains the log as on a normal exit.
//! Outside `run` the signals keep whatever action they had (the Lua interpreter's own
//! SIGINT handler, or the default).
//!
//! The handler only stores the signal number and writes a byte to a pipe the loop polls:
//! both are async-signal-safe. It runs once (SA_RESETHAND): a second signal before the loop
//! has stopped (a task that never yields keeps it from stopping) takes the default action
//! and ends the process, as a second Ctrl-C should.

use std::ffi::c_int;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
static CAUGHT: AtomicI32 = AtomicI32::new(0);

const SIGNALS: [c_int; 2] = [libc::SIGINT, libc::SIGTERM];

extern "C" fn on_signal(sig: c_int) {
    // The interrupted code may be looking at errno: keep it as it was.
    let saved = unsafe { *libc::__errno_location() };
    CAUGHT.store(sig, Ordering::Relaxed);
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = 1u8;
        // A full pipe already holds a wake-up: nothing to do about a failed write here.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
    unsafe { *libc::__errno_location() = saved };
}

/// The pipe the handler writes to; its read end is registered with the loop's poll.
pub struct WakePipe {
    pub read: OwnedFd,
    write: OwnedFd,
}

impl WakePipe {
    pub fn new() -> io::Result<WakePipe> {
        let mut fds = [0 as c_int; 2];
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(unsafe { WakePipe { read: OwnedFd::from_raw_fd(fds[0]), write: OwnedFd::from_raw_fd(fds[1]) } })
    }

    /// Empties the pipe; returns the signal caught since the last call, if any.
    pub fn take(&self) -> Option<c_int> {
        let mut buf = [0u8; 64];
        while unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        match CAUGHT.swap(0, Ordering::Relaxed) {
            0 => None,
            sig => Some(sig),
        }
    }
}

/// Our handlers, installed while the loop runs; the previous actions come back on drop.
pub struct Installed {
    previous: Vec<(c_int, libc::sigaction)>,
}

pub fn install(pipe: &WakePipe) -> Installed {
    WAKE_FD.store(pipe.write.as_raw_fd(), Ordering::Relaxed);
    CAUGHT.store(0, Ordering::Relaxed);
    let mut previous = Vec::new();
    for sig in SIGNALS {
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
            libc::sigemptyset(&mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, &action, &mut old) == 0 {
                previous.push((sig, old));
            }
        }
    }
    Installed { previous }
}

impl Drop for Installed {
    fn drop(&mut self) {
        for (sig, old) in &self.previous {
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
        WAKE_FD.store(-1, Ordering::Relaxed);
    }
}

pub fn name(sig: c_int) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}
