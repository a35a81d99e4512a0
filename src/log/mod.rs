//! Asynchronous logging (docs/log.md). The reactor thread stamps the time, copies the
//! logger's name and the already formatted message, and offers them to a bounded queue;
//! a writer thread of its own formats lines and writes them. A full queue drops the line
//! and counts it (the writer logs how many were dropped), so the reactor never waits for
//! the disk and memory stays bounded. The level check and string.format happen in
//! `lua/luanet/log.lua`, before anything reaches this file.
//!
//! Nothing queued is lost at exit: the Lua state's finalizer and an atexit hook (for
//! `os.exit` without closing the state) both ask the writer to drain and wait for it.

pub mod line;
pub mod sink;

use std::ffi::c_int;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Once, OnceLock};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::lua::{self, ffi, lua_State, Ret};
use line::Record;
use sink::{Rotation, Sink};

/// Lines that may wait for the writer, and their bytes. Past either, lines are dropped
/// and counted.
pub const QUEUE: usize = 65_536;
pub const QUEUE_BYTES: u64 = 64 * 1024 * 1024;
/// The writer looks at SIGHUP, drop notices and its counters at least this often, even
/// while the queue never empties.
const HOUSEKEEPING_EVERY: u32 = 4096;
/// How long an exit path waits for the writer to drain the queue.
const EXIT_FLUSH: Duration = Duration::from_secs(5);

enum Msg {
    Line(Record),
    /// A new sink, a new format: `None` keeps the current one.
    Configure(Option<Sink>, Option<bool>),
    Flush(Sender<()>),
}

struct Logger {
    tx: Sender<Msg>,
    /// Bytes of the lines waiting in the queue (QUEUE_BYTES bounds it).
    queued_bytes: AtomicU64,
    dropped: AtomicU64,
    written: AtomicU64,
    failed: AtomicU64,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();
/// Set by SIGHUP: the writer reopens its file (for logrotate).
static REOPEN: AtomicBool = AtomicBool::new(false);
static AT_EXIT: Once = Once::new();
/// When the process started to end: every exit path shares one 5 s budget (the Lua
/// state's finalizer and then atexit may both run), however many of them run.
static EXIT_DEADLINE: Mutex<Option<Instant>> = Mutex::new(None);
/// The level of luanet's own events (the logger "luanet"): below it they are not queued.
static EVENT_LEVEL: AtomicU8 = AtomicU8::new(1);

/// A note from the log machinery itself, straight to stderr: a failure here must not
/// take the process (or the writer thread) down.
fn tell(text: &str) {
    let _ = writeln!(io::stderr(), "luanet: {text}");
}
static ON_HUP: Once = Once::new();

fn logger() -> &'static Logger {
    LOGGER.get_or_init(|| {
        let (tx, rx) = bounded(QUEUE);
        let started = std::thread::Builder::new().name("luanet-log".into()).spawn(move || writer(rx));
        if let Err(e) = started {
            // Without a thread nothing drains the queue: lines are dropped and counted.
            tell(&format!("cannot start the log writer thread: {e}"));
        }
        AT_EXIT.call_once(|| unsafe {
            libc::atexit(flush_at_exit);
        });
        Logger {
            tx,
            queued_bytes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    })
}

extern "C" fn on_sighup(_: c_int) {
    REOPEN.store(true, Ordering::Relaxed);
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Waits (until `deadline`) until every line queued before this call is written.
fn flush(deadline: Instant) -> Result<(), &'static str> {
    let Some(log) = LOGGER.get() else { return Ok(()) };
    let (ack_tx, ack_rx) = bounded(1);
    let dead = "the log writer thread is not running";
    match log.tx.send_deadline(Msg::Flush(ack_tx), deadline) {
        Ok(()) => {}
        Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => return Err("timeout"),
        Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return Err(dead),
    }
    match ack_rx.recv_deadline(deadline) {
        Ok(()) => Ok(()),
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err("timeout"),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(dead),
    }
}

/// Drains the queue before the process goes: `lua_close`, then (for `os.exit` without
/// closing the state, or after it) atexit. Calls close together share one 5 s budget, so
/// a stuck writer delays the exit by 5 s, not 5 s per path; a close long after an earlier
/// one (a host that makes and closes several states) gets a budget of its own.
pub extern "C" fn flush_at_exit() {
    let deadline = match EXIT_DEADLINE.lock() {
        Ok(mut d) => {
            let now = Instant::now();
            match *d {
                Some(old) if old + EXIT_FLUSH > now => old,
                _ => *d.insert(now + EXIT_FLUSH),
            }
        }
        Err(_) => return,
    };
    let _ = flush(deadline);
}

fn writer(rx: Receiver<Msg>) {
    // A sink whose reader went away (a pipe, a closed stderr) must fail the write, not
    // kill the process: SIGPIPE is blocked on this thread, so write returns EPIPE.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mut sink = Sink::stderr();
    let mut json = false;
    let mut clock = line::Clock::default();
    let mut line = Vec::with_capacity(512);
    let mut dropped_told = 0u64;
    let mut failing = false;
    loop {
        let mut next = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Some(log) = LOGGER.get() else { continue };
        let mut handled = 0u32;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(r) => {
                    log.queued_bytes.fetch_sub(r.text.len() as u64, Ordering::Relaxed);
                    line.clear();
                    line::format(&mut line, &mut clock, &r, json);
                    write(&mut sink, &line, line::day_of(r.time_ms), log, &mut failing);
                }
                Msg::Configure(new_sink, new_json) => {
                    if let Some(new_sink) = new_sink {
                        settle(&mut sink, log, &mut failing);
                        sink = new_sink;
                    }
                    json = new_json.unwrap_or(json);
                }
                Msg::Flush(ack) => {
                    tell_dropped(&mut sink, &mut clock, json, log, &mut dropped_told, &mut failing);
                    settle(&mut sink, log, &mut failing);
                    let _ = ack.send(());
                }
            }
            handled += 1;
            if handled % HOUSEKEEPING_EVERY == 0 {
                housekeeping(&mut sink, &mut clock, json, log, &mut dropped_told, &mut failing);
            }
            next = rx.try_recv().ok();
        }
        housekeeping(&mut sink, &mut clock, json, log, &mut dropped_told, &mut failing);
    }
}

/// Between batches, and every few thousand lines under load: tell of dropped lines,
/// reopen on SIGHUP, write out and count.
fn housekeeping(sink: &mut Sink, clock: &mut line::Clock, json: bool, log: &Logger, told: &mut u64, failing: &mut bool) {
    tell_dropped(sink, clock, json, log, told, failing);
    if REOPEN.swap(false, Ordering::Relaxed) {
        settle(sink, log, failing);
        if let Err(e) = sink.reopen() {
            tell(&format!("cannot reopen the log file: {e}"));
        }
    }
    settle(sink, log, failing);
}

fn write(sink: &mut Sink, line: &[u8], day: i64, log: &Logger, failing: &mut bool) {
    if let Err(e) = sink.write_line(line, day) {
        failed(failing, &e);
        count(sink, log);
    }
}

/// The sink's count of lines written and lost goes to the shared counters (log_stats).
fn count(sink: &mut Sink, log: &Logger) {
    let (written, lost) = sink.take_counts();
    log.written.fetch_add(written, Ordering::Relaxed);
    log.failed.fetch_add(lost, Ordering::Relaxed);
}

/// The writer's disk trouble is told on stderr once per spell of failures.
fn failed(failing: &mut bool, e: &io::Error) {
    if !*failing {
        *failing = true;
        tell(&format!("writing the log failed ({e}); lines are being lost and counted"));
    }
}

fn settle(sink: &mut Sink, log: &Logger, failing: &mut bool) {
    match sink.flush() {
        // Works again only once something was written: an empty buffer proves nothing.
        Ok(true) if *failing => {
            *failing = false;
            count(sink, log);
            tell(&format!("writing the log works again ({} lines lost)", log.failed.load(Ordering::Relaxed)));
        }
        Ok(_) => {}
        Err(e) => failed(failing, &e),
    }
    count(sink, log);
}

fn tell_dropped(sink: &mut Sink, clock: &mut line::Clock, json: bool, log: &Logger, told: &mut u64, failing: &mut bool) {
    let dropped = log.dropped.load(Ordering::Relaxed);
    if dropped > *told {
        let text = format!("luanet.log{} lines dropped: the log queue was full", dropped - *told).into_bytes();
        let r = Record { time_ms: now_ms(), level: 4, name_len: "luanet.log".len(), text };
        let mut line = Vec::new();
        line::format(&mut line, clock, &r, json);
        write(sink, &line, line::day_of(r.time_ms), log, failing);
        *told = dropped;
    }
}

pub const INFO: u8 = 3;
pub const WARN: u8 = 4;
pub const ERROR: u8 = 5;

fn enqueue(level: u8, text: Vec<u8>, name_len: usize) {
    let log = logger();
    let bytes = text.len() as u64;
    if log.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes > QUEUE_BYTES {
        log.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        log.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
        log.tx.try_send(Msg::Line(Record { time_ms: now_ms(), level, text, name_len }))
    {
        log.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        log.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// One of luanet's own events, logged under the name "luanet" if its level is enabled.
pub fn event(level: u8, message: &str) {
    if level >= EVENT_LEVEL.load(Ordering::Relaxed) {
        enqueue(level, format!("luanet{message}").into_bytes(), "luanet".len());
    }
}

// ---- the Lua side --------------------------------------------------------------------------

/// `core.log_write(level, name, message)`: queues one line, or drops and counts it.
pub unsafe extern "C-unwind" fn log_write(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let level = ffi::lua_tointegerx(l, 1, std::ptr::null_mut()).clamp(1, 5) as u8;
        let name = lua::check_bytes(l, 2, "log", "name")?;
        let message = lua::check_bytes(l, 3, "log", "message")?;
        let mut text = Vec::with_capacity(name.len() + message.len());
        text.extend_from_slice(name);
        text.extend_from_slice(message);
        enqueue(level, text, name.len());
        Ok(Ret::Values(0))
    })
}

/// `core.log_configure{ file = path, format = "text"|"json", max_bytes = n, daily = bool,
/// keep = n }` (no `file`: stderr) -> true | nil, "log error", detail. The file is opened
/// here, so a path that cannot be written is an error now rather than lost lines later.
pub unsafe extern "C-unwind" fn log_configure(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let func = "luanet.log.configure";
        lua::check_opts(l, 1, func)?;
        let format = lua::opts_string(l, 1, c"format", func)?;
        let json = match format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => return Err(format!("{func}: 'format' must be \"text\" or \"json\", not {other:?}")),
        };
        let count = |key, what: &str| -> Result<u64, String> {
            match lua::opts_integer(l, 1, key, func)? {
                None => Ok(0),
                Some(n) if n >= 0 => Ok(n as u64),
                Some(_) => Err(format!("{func}: '{what}' must be 0 or more")),
            }
        };
        let rotation = Rotation {
            max_bytes: count(c"max_bytes", "max_bytes")?,
            daily: lua::opts_bool(l, 1, c"daily", func)?.unwrap_or(false),
            keep: count(c"keep", "keep")? as usize,
        };
        if let Some(level) = lua::opts_integer(l, 1, c"events_level", func)? {
            EVENT_LEVEL.store(level.clamp(1, 6) as u8, Ordering::Relaxed);
        }
        let sink = match lua::opts_string(l, 1, c"file", func)? {
            None => None,
            Some(path) => match Sink::file(path.clone().into(), rotation, line::day_of(now_ms())) {
                Ok(f) => {
                    ON_HUP.call_once(|| {
                        libc::signal(libc::SIGHUP, on_sighup as *const () as libc::sighandler_t);
                    });
                    Some(f)
                }
                Err(e) => return Ok(lua::push_fail(l, "log error", &format!("cannot open {path}: {e}"))),
            },
        };
        if sink.is_none() && format.is_none() {
            return Ok(lua::push_true(l));
        }
        let json = format.map(|_| json);
        match logger().tx.send_timeout(Msg::Configure(sink, json), EXIT_FLUSH) {
            Ok(()) => Ok(lua::push_true(l)),
            Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => {
                Ok(lua::push_fail(l, "log error", "the log writer is stuck (its queue stayed full for 5 s)"))
            }
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => {
                Ok(lua::push_fail(l, "log error", "the log writer thread is not running"))
            }
        }
    })
}

/// `core.log_flush([timeout])` -> true | nil, "timeout": waits until every line logged
/// before the call is written.
pub unsafe extern "C-unwind" fn log_flush(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let ms = lua::opt_seconds_ms(l, 1, "luanet.log.flush", "timeout")?.unwrap_or(EXIT_FLUSH.as_millis() as u64);
        match flush(Instant::now() + Duration::from_millis(ms)) {
            Ok(()) => Ok(lua::push_true(l)),
            Err("timeout") => Ok(lua::push_fail(l, "timeout", "the log writer did not catch up in time")),
            Err(why) => Ok(lua::push_fail(l, "log error", why)),
        }
    })
}

/// `core.log_stats()` -> { written, dropped, failed, queued }
pub unsafe extern "C-unwind" fn log_stats(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let log = logger();
        ffi::lua_createtable(l, 0, 4);
        for (key, value) in [
            (c"written", log.written.load(Ordering::Relaxed)),
            (c"dropped", log.dropped.load(Ordering::Relaxed)),
            (c"failed", log.failed.load(Ordering::Relaxed)),
            (c"queued", log.tx.len() as u64),
        ] {
            ffi::lua_pushinteger(l, value as ffi::lua_Integer);
            ffi::lua_setfield(l, -2, key.as_ptr());
        }
        Ok(Ret::Values(1))
    })
}
