//! The loop: one mio `Poll`, the tasks it resumes, and the timers that wake them.
//!
//! State lives in `RefCell`s borrowed for a few lines at a time and never across a call
//! into Lua: a resumed task calls back into Rust (read, write, spawn...), and a `__gc`
//! finalizer may run during any Lua allocation. Tasks are resumed with `lua_resume` on the
//! task's own thread; they come back by yielding the private sentinel (see `lua.rs`).

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::ffi::c_int;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::lua::{ffi, lua_State, Raise};
use crate::socket::Socket;
use crate::timer::{Expiry, TimerKey, Timers};

/// Why a suspended task was resumed. Kept on the task (not passed through the coroutine's
/// stack) so it reaches the continuation unchanged through any user coroutines between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum Reason {
    /// The thing waited for may be ready: retry.
    Ready = 1,
    Timeout = 2,
    /// The socket waited on was closed locally.
    Closed = 3,
}

/// What a wait keeps alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitKind {
    /// A socket: keeps `run` going until it is over.
    Io,
    /// A sleep or a condition: only its timer (if any) keeps `run` going.
    Plain,
    /// A connection's housekeeping: keeps nothing going, and outlives `run`.
    Background,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaskState {
    Ready,
    Running,
    Suspended,
}

pub struct Task {
    /// The coroutine; kept alive by `reference` in the registry.
    thread: *mut lua_State,
    reference: c_int,
    state: TaskState,
    /// The number of the current (or last) wait, from a loop-wide counter: a wake-up meant
    /// for an earlier wait (a timer racing an event, or a waiter left on a socket by a task
    /// that ended and whose slot was reused) never matches.
    wait: u32,
    timer: Option<TimerKey>,
    /// Whether this wait keeps the loop alive (sockets and timers do; conditions do not).
    waiting_io: bool,
    /// An idle wait (a parked worker): closing it when `run` ends is expected, not a leak.
    idle: bool,
    /// A background wait (a connection's reader): it neither keeps `run` going nor is
    /// closed when `run` ends, so the connection works again in a later `run`.
    background: bool,
    /// Why the last wait ended.
    reason: Reason,
}

/// A registered waiter: the task and which of its waits. Two u32s, the first never zero
/// (it holds the slab key plus one), so `Option<Waiter>` is 8 bytes and the socket's hot
/// state stays within a cache line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiter {
    task_plus_one: std::num::NonZeroU32,
    pub wait: u32,
}

impl Waiter {
    pub fn new(task: usize, wait: u32) -> Waiter {
        let plus_one = std::num::NonZeroU32::new((task as u32).wrapping_add(1)).unwrap_or(std::num::NonZeroU32::MAX);
        Waiter { task_plus_one: plus_one, wait }
    }

    pub fn task(&self) -> usize {
        self.task_plus_one.get() as usize - 1
    }
}

enum Resume {
    Start(c_int),
    /// After a plain `coroutine.yield` or a wait: no values passed.
    Continue,
}

struct Wake {
    task: usize,
    wait: u32,
    how: Resume,
}

pub const READ_BUFFER: usize = 64 * 1024;

/// The poll token of the signal pipe: socket keys are slab indexes, never this large.
const SIGNAL_TOKEN: usize = usize::MAX;

/// Ready tasks resumed between two sends of the corked sockets' queues (see `turns`).
/// Measured with 100 calls in flight: 4 gave 179k calls/s, 8 218-244k, 16 264k, 32 259k.
const CORK_FLUSH_EVERY: usize = 16;

pub struct Reactor {
    poll: RefCell<Poll>,
    events: RefCell<Events>,
    pub sockets: RefCell<Slab<Socket>>,
    tasks: RefCell<Slab<Task>>,
    ready: RefCell<VecDeque<Wake>>,
    pub timers: RefCell<Timers>,
    current: Cell<Option<usize>>,
    stop_requested: Cell<bool>,
    running: Cell<bool>,
    /// SIGINT/SIGTERM reach the loop through this pipe while `run` runs (signals.rs).
    signal_pipe: Option<crate::signals::WakePipe>,
    /// The signal that stopped the last `run`, or 0.
    interrupted: Cell<c_int>,
    /// Tasks waiting on a socket: they keep `run` going.
    io_waits: Cell<usize>,
    /// Sockets with bytes queued but unsent: they keep `run` going until flushed.
    pub flushing: Cell<usize>,
    /// Sockets whose userdata was collected, closed at the next safe point.
    pub gc_queue: RefCell<Vec<(usize, u32)>>,
    /// One receive buffer for every socket, allocated (and zeroed) once.
    scratch: UnsafeCell<Box<[u8]>>,
    next_generation: Cell<u32>,
    /// Source of wait numbers (see `Task::wait`).
    last_wait: Cell<u32>,
    pub codec: crate::msgpack::Codec,
    /// An encode buffer kept between calls, so packing allocates only the Lua string.
    scratch_out: RefCell<Vec<u8>>,
    /// Bytes of unfinished messages held over all connections (message.rs budget).
    pub partial_held: Cell<usize>,
    /// Corked sockets with bytes queued this turn, sent after the ready tasks ran.
    corked: RefCell<Vec<(usize, u32)>>,
}

/// luanet's own events (connection trouble, protocol violations, name changes) go to the
/// log as warnings under the logger name "luanet"; task errors as errors.
pub fn report(text: &str) {
    crate::log::event(crate::log::WARN, text);
}

fn report_error(text: &str) {
    crate::log::event(crate::log::ERROR, text);
}

impl Reactor {
    pub fn new() -> io::Result<Reactor> {
        let poll = Poll::new()?;
        // Without the pipe the loop still works; signals then keep their usual action.
        let signal_pipe = crate::signals::WakePipe::new().ok().filter(|p| {
            let fd = p.read.as_raw_fd();
            poll.registry().register(&mut SourceFd(&fd), Token(SIGNAL_TOKEN), Interest::READABLE).is_ok()
        });
        Ok(Reactor {
            poll: RefCell::new(poll),
            events: RefCell::new(Events::with_capacity(1024)),
            sockets: RefCell::new(Slab::new()),
            tasks: RefCell::new(Slab::new()),
            ready: RefCell::new(VecDeque::new()),
            timers: RefCell::new(Timers::new()),
            current: Cell::new(None),
            stop_requested: Cell::new(false),
            running: Cell::new(false),
            signal_pipe,
            interrupted: Cell::new(0),
            io_waits: Cell::new(0),
            flushing: Cell::new(0),
            gc_queue: RefCell::new(Vec::new()),
            scratch: UnsafeCell::new(vec![0u8; READ_BUFFER].into_boxed_slice()),
            next_generation: Cell::new(1),
            last_wait: Cell::new(0),
            codec: Default::default(),
            scratch_out: RefCell::new(Vec::new()),
            corked: RefCell::new(Vec::new()),
            partial_held: Cell::new(0),
        })
    }

    pub fn generation(&self) -> u32 {
        let g = self.next_generation.get();
        self.next_generation.set(g.wrapping_add(1).max(1));
        g
    }

    /// The shared receive buffer. Callers use it between two Lua calls only; nothing that
    /// runs during a Lua call (finalizers included) touches it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn scratch(&self) -> &mut [u8] {
        &mut *self.scratch.get()
    }

    /// Lends the encode buffer (empty); hand it back with `give_back_scratch_out`.
    pub fn take_scratch_out(&self) -> Vec<u8> {
        std::mem::take(&mut *self.scratch_out.borrow_mut())
    }

    pub fn give_back_scratch_out(&self, mut out: Vec<u8>) {
        out.clear();
        if out.capacity() <= 1024 * 1024 {
            *self.scratch_out.borrow_mut() = out;
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.timers.borrow().now_ms()
    }

    pub fn deadline_after(&self, ms: u64) -> u64 {
        self.timers.borrow().deadline_after(ms)
    }

    /// Why the running task's last wait ended (for continuations).
    pub fn wake_reason(&self) -> Reason {
        match self.current.get() {
            Some(task) => self.tasks.borrow().get(task).map_or(Reason::Ready, |t| t.reason),
            None => Reason::Ready,
        }
    }

    pub fn current_task(&self) -> Option<usize> {
        self.current.get()
    }

    /// The signal (SIGINT or SIGTERM) that stopped the last `run`, if one did.
    pub fn interrupted(&self) -> Option<c_int> {
        match self.interrupted.get() {
            0 => None,
            sig => Some(sig),
        }
    }

    pub fn request_stop(&self) {
        self.stop_requested.set(true);
    }

    // ---- sockets in the poll ----------------------------------------------------------------

    /// Registers a socket once, edge-triggered for both directions: no epoll_ctl per message.
    pub fn add_socket(&self, socket: Socket) -> io::Result<usize> {
        let mut sockets = self.sockets.borrow_mut();
        let entry = sockets.vacant_entry();
        let key = entry.key();
        let fd = socket.fd.as_raw_fd();
        self.poll
            .borrow()
            .registry()
            .register(&mut SourceFd(&fd), Token(key), Interest::READABLE | Interest::WRITABLE)?;
        entry.insert(socket);
        Ok(key)
    }

    /// Deregisters and drops a socket (closing its descriptor).
    pub fn remove_socket(&self, key: usize) {
        let removed = {
            let mut sockets = self.sockets.borrow_mut();
            if !sockets.contains(key) {
                return;
            }
            sockets.remove(key)
        };
        let fd = removed.fd.as_raw_fd();
        let _ = self.poll.borrow().registry().deregister(&mut SourceFd(&fd));
        if removed.has_unsent() {
            self.flushing.set(self.flushing.get().saturating_sub(1));
        }
        self.partial_held.set(self.partial_held.get().saturating_sub(removed.partial_counted()));
        let mut removed = removed;
        if let Some(linger) = removed.take_linger_timer() {
            self.timers.borrow_mut().cancel(linger);
        }
        for w in [removed.read_waiter, removed.write_waiter].into_iter().flatten() {
            self.wake(w, Reason::Closed);
        }
        removed.cleanup_path();
        drop(removed);
    }

    pub fn schedule_flush(&self, key: usize, generation: u32) {
        self.corked.borrow_mut().push((key, generation));
    }

    /// Sends what corked sockets queued during the turn (one send per socket).
    fn flush_corked(&self) {
        if self.corked.borrow().is_empty() {
            return;
        }
        let mut due = std::mem::take(&mut *self.corked.borrow_mut());
        let mut finished = Vec::new();
        {
            let mut sockets = self.sockets.borrow_mut();
            for &(key, generation) in &due {
                let Some(s) = sockets.get_mut(key) else { continue };
                if s.generation != generation {
                    continue;
                }
                s.flush_scheduled = false;
                if s.on_writable(self) {
                    finished.push(key);
                }
            }
        }
        // Flushing queues nothing new: hand the list (and its allocation) back for the
        // next turn instead of growing a fresh one every turn that corks a write.
        due.clear();
        let mut list = self.corked.borrow_mut();
        if list.is_empty() {
            *list = due;
        }
        drop(list);
        for key in finished {
            self.remove_socket(key);
        }
    }

    /// Closes sockets whose userdata was garbage collected (queued by `__gc`).
    pub fn collect_garbage(&self) {
        let queued = std::mem::take(&mut *self.gc_queue.borrow_mut());
        for (key, generation) in queued {
            crate::socket::close_socket(self, key, generation);
        }
    }

    // ---- tasks ------------------------------------------------------------------------------

    /// Adopts coroutine `thread` (already on top of `l`'s stack, popped here) as a task
    /// whose first resume passes `nargs` values already moved onto its stack.
    pub unsafe fn add_task(&self, l: *mut lua_State, thread: *mut lua_State, nargs: c_int) -> usize {
        let reference = ffi::luaL_ref(l, ffi::LUA_REGISTRYINDEX);
        let key = self.tasks.borrow_mut().insert(Task {
            thread,
            reference,
            state: TaskState::Ready,
            wait: 0,
            timer: None,
            waiting_io: false,
            idle: false,
            background: false,
            reason: Reason::Ready,
        });
        self.ready.borrow_mut().push_back(Wake { task: key, wait: 0, how: Resume::Start(nargs) });
        key
    }

    pub unsafe fn push_task_thread(&self, l: *mut lua_State, task: usize) -> bool {
        let reference = match self.tasks.borrow().get(task) {
            Some(t) => t.reference,
            None => return false,
        };
        ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, reference as ffi::lua_Integer);
        true
    }

    /// Task identity for Lua (`core.current()`): key and wait count are stable for the
    /// task's life, so the pair cannot name a later task that reuses the slab slot.
    pub fn task_id(&self, task: usize) -> Option<i64> {
        let tasks = self.tasks.borrow();
        let t = tasks.get(task)?;
        Some(((t.reference as i64) << 32) | task as i64)
    }

    pub fn task_from_id(&self, id: i64) -> Option<usize> {
        let task = (id & 0xffff_ffff) as usize;
        let reference = (id >> 32) as c_int;
        let tasks = self.tasks.borrow();
        match tasks.get(task) {
            Some(t) if t.reference == reference => Some(task),
            _ => None,
        }
    }

    /// The number the task's next wait will have (for waiter lists built in Lua).
    /// Valid until the task's next `begin_wait`, which nothing can come before when the
    /// caller suspends right after (as `luanet.lua` does).
    pub fn next_wait(&self, task: usize) -> Option<u32> {
        self.tasks.borrow().get(task).map(|_| self.last_wait.get().wrapping_add(1))
    }

    /// Starts a wait for the running task. Fails (as a Lua error) outside a task or where
    /// Lua cannot yield; in that case nothing is registered.
    pub unsafe fn begin_wait(
        &self,
        l: *mut lua_State,
        func: &str,
        deadline_ms: Option<u64>,
        kind: WaitKind,
    ) -> Result<Waiter, Raise> {
        let Some(task) = self.current.get() else {
            return Err(format!(
                "{func}: not inside a luanet task (start one with luanet.spawn(fn) or luanet.run(fn))"
            ));
        };
        if ffi::lua_isyieldable(l) == 0 {
            return Err(format!(
                "{func}: cannot block here (inside a metamethod or C function that cannot yield)"
            ));
        }
        let mut tasks = self.tasks.borrow_mut();
        let Some(t) = tasks.get_mut(task) else {
            return Err(format!("{func}: the running task is gone"));
        };
        if t.state == TaskState::Suspended {
            // An earlier wait never reached the loop (its yield was swallowed, e.g. by a
            // resume saved before luanet was loaded): undo it before starting this one.
            if let Some(timer) = t.timer.take() {
                self.timers.borrow_mut().cancel(timer);
            }
            if t.waiting_io {
                t.waiting_io = false;
                self.io_waits.set(self.io_waits.get().saturating_sub(1));
            }
        }
        let wait = self.last_wait.get().wrapping_add(1);
        self.last_wait.set(wait);
        t.wait = wait;
        t.state = TaskState::Suspended;
        let background = kind == WaitKind::Background;
        t.background = background;
        t.idle = false;
        if let Some(deadline) = deadline_ms {
            let expiry = Expiry::Task { task: task as u32, wait: t.wait };
            t.timer = Some(self.timers.borrow_mut().arm(deadline, expiry, background));
        }
        if kind == WaitKind::Io {
            t.waiting_io = true;
            self.io_waits.set(self.io_waits.get() + 1);
        }
        Ok(Waiter::new(task, t.wait))
    }

    /// Marks the running task's current wait as idle (see `Task::idle`).
    pub fn mark_idle(&self, task: usize, idle: bool) {
        if let Some(t) = self.tasks.borrow_mut().get_mut(task) {
            t.idle = idle;
        }
    }

    /// Wakes `w` if it is still that wait; returns whether it did.
    pub fn wake(&self, w: Waiter, reason: Reason) -> bool {
        let mut tasks = self.tasks.borrow_mut();
        let Some(t) = tasks.get_mut(w.task()) else { return false };
        if t.state != TaskState::Suspended || t.wait != w.wait {
            return false;
        }
        t.state = TaskState::Ready;
        t.reason = reason;
        if let Some(timer) = t.timer.take() {
            self.timers.borrow_mut().cancel(timer);
        }
        if t.waiting_io {
            t.waiting_io = false;
            self.io_waits.set(self.io_waits.get().saturating_sub(1));
        }
        self.ready.borrow_mut().push_back(Wake { task: w.task(), wait: w.wait, how: Resume::Continue });
        true
    }

    /// Whether `w` is a wait still in progress (so its socket slot is taken).
    pub fn is_waiting(&self, w: Waiter) -> bool {
        matches!(self.tasks.borrow().get(w.task()), Some(t) if t.state == TaskState::Suspended && t.wait == w.wait)
    }

    // ---- the loop ---------------------------------------------------------------------------

    /// Runs until stopped or idle. `l` is the thread that called `run`.
    pub unsafe fn run(&self, l: *mut lua_State) -> Result<(), Raise> {
        if self.running.get() {
            return Err("luanet.run: the loop is already running (run cannot be called from inside a task)".into());
        }
        self.running.set(true);
        self.stop_requested.set(false);
        self.interrupted.set(0);
        let signals = self.signal_pipe.as_ref().map(crate::signals::install);
        let outcome = self.turns(l);
        drop(signals);
        // A signal that came after the last poll (the loop then went idle) still counts.
        if let Some(sig) = self.signal_pipe.as_ref().and_then(|p| p.take()) {
            self.interrupted.set(sig);
        }
        self.running.set(false);
        if outcome.is_ok() && !self.stop_requested.get() {
            self.close_stranded_tasks(l);
        }
        outcome
    }

    unsafe fn turns(&self, l: *mut lua_State) -> Result<(), Raise> {
        loop {
            // Only the tasks ready at the start of the turn: a task that yields goes to the
            // next turn, after I/O has been polled, so nobody starves the sockets.
            let n = self.ready.borrow().len();
            for i in 0..n {
                let next = self.ready.borrow_mut().pop_front();
                let Some(wake) = next else { break };
                self.resume(l, wake);
                if self.stop_requested.get() {
                    break;
                }
                // Send what is corked every few tasks rather than only at the end of the
                // turn: the peer starts on the first requests while the rest are being
                // made, instead of the two sides taking turns to idle (with 100 calls in
                // flight this took RPC from about 140k to 250k calls/s).
                if (i + 1) % CORK_FLUSH_EVERY == 0 {
                    self.flush_corked();
                }
            }
            self.flush_corked();
            self.collect_garbage();
            if self.stop_requested.get() {
                return Ok(());
            }
            let timeout = if !self.ready.borrow().is_empty() || crate::faults::edges_pending() {
                Some(Duration::ZERO)
            } else if !self.timers.borrow().has_foreground() && self.io_waits.get() == 0 && self.flushing.get() == 0 {
                // Only background waits (connection readers, their heartbeats) are left.
                return Ok(());
            } else {
                let next = self.timers.borrow().next_deadline_ms();
                next.map(|deadline| Duration::from_millis(deadline.saturating_sub(self.now_ms())))
            };
            self.poll_once(timeout)?;
            if crate::faults::edges_pending() {
                self.deliver_made_up_edges();
            }
            self.fire_timers();
        }
    }

    fn poll_once(&self, timeout: Option<Duration>) -> Result<(), Raise> {
        let mut events = self.events.borrow_mut();
        if let Err(e) = self.poll.borrow_mut().poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(format!("luanet.run: polling failed: {e}"));
        }
        let mut finished = Vec::new();
        {
            let mut sockets = self.sockets.borrow_mut();
            for event in events.iter() {
                let key = event.token().0;
                if key == SIGNAL_TOKEN {
                    if let Some(sig) = self.signal_pipe.as_ref().and_then(|p| p.take()) {
                        self.interrupted.set(sig);
                        self.stop_requested.set(true);
                    }
                    continue;
                }
                let Some(s) = sockets.get_mut(key) else { continue };
                if event.is_read_closed() || event.is_error() {
                    s.read_closed = true;
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    s.readable = true;
                    if let Some(w) = s.read_waiter.take() {
                        self.wake(w, Reason::Ready);
                    }
                }
                if event.is_writable() || event.is_write_closed() || event.is_error() {
                    s.writable = true;
                    if s.on_writable(self) {
                        finished.push(key);
                    }
                }
            }
        }
        for key in finished {
            self.remove_socket(key);
        }
        Ok(())
    }

    /// The readiness events fault injection owes (faults.rs): handled as poll's own.
    #[cold]
    fn deliver_made_up_edges(&self) {
        let owed: std::collections::HashMap<_, u8> =
            crate::faults::take_edges().into_iter().fold(Default::default(), |mut m, (fd, e)| {
                *m.entry(fd).or_default() |= e;
                m
            });
        let mut finished = Vec::new();
        {
            let mut sockets = self.sockets.borrow_mut();
            for (key, s) in sockets.iter_mut() {
                let edges = owed.get(&s.fd.as_raw_fd()).copied().unwrap_or(0);
                if edges & crate::faults::EDGE_READ != 0 {
                    s.readable = true;
                    if let Some(w) = s.read_waiter.take() {
                        self.wake(w, Reason::Ready);
                    }
                }
                if edges & crate::faults::EDGE_WRITE != 0 {
                    s.writable = true;
                    if s.on_writable(self) {
                        finished.push(key);
                    }
                }
            }
        }
        for key in finished {
            self.remove_socket(key);
        }
    }

    fn fire_timers(&self) {
        let now = self.now_ms();
        loop {
            let expired = self.timers.borrow_mut().pop_expired(now);
            match expired {
                None => break,
                Some(Expiry::Task { task, wait }) => {
                    if let Some(t) = self.tasks.borrow_mut().get_mut(task as usize) {
                        if t.wait == wait {
                            t.timer = None;
                        }
                    }
                    self.wake(Waiter::new(task as usize, wait), Reason::Timeout);
                }
                Some(Expiry::Linger { socket, generation }) => {
                    let still_there = matches!(self.sockets.borrow().get(socket), Some(s) if s.generation == generation);
                    if still_there {
                        if let Some(s) = self.sockets.borrow_mut().get_mut(socket) {
                            s.take_linger_timer();
                        }
                        self.remove_socket(socket);
                    }
                }
            }
        }
    }

    unsafe fn resume(&self, l: *mut lua_State, wake: Wake) {
        let (thread, nargs) = {
            let mut tasks = self.tasks.borrow_mut();
            let Some(t) = tasks.get_mut(wake.task) else { return };
            if t.state != TaskState::Ready || t.wait != wake.wait {
                return;
            }
            let nargs = match wake.how {
                Resume::Start(n) => n,
                Resume::Continue => 0,
            };
            // The coroutine is the user's too (spawn returns it): one resumed or closed
            // behind the loop's back must not be resumed blind (Lua 5.4 does not check).
            let status = ffi::lua_status(t.thread);
            let fit = match wake.how {
                Resume::Start(n) => status == ffi::LUA_OK && ffi::lua_gettop(t.thread) == n + 1,
                Resume::Continue => status == ffi::LUA_YIELD,
            };
            if !fit {
                drop(tasks);
                report("a task was resumed or closed outside luanet; it has been dropped");
                self.finish(l, wake.task);
                return;
            }
            t.state = TaskState::Running;
            (t.thread, nargs)
        };
        self.current.set(Some(wake.task));
        let mut nres: c_int = 0;
        let status = ffi::lua_resume(thread, l, nargs, &mut nres);
        self.current.set(None);
        match status {
            ffi::LUA_YIELD => {
                ffi::lua_pop(thread, nres);
                let mut tasks = self.tasks.borrow_mut();
                if let Some(t) = tasks.get_mut(wake.task) {
                    if t.state == TaskState::Running {
                        // A plain coroutine.yield() from the task body: run again next turn.
                        t.state = TaskState::Ready;
                        self.ready.borrow_mut().push_back(Wake { task: wake.task, wait: t.wait, how: Resume::Continue });
                    }
                }
            }
            ffi::LUA_OK => self.finish(l, wake.task),
            _ => {
                // An error ended the task. Its coroutine keeps the stack it died with, so
                // the traceback is taken here; `finish` then runs its <close> variables.
                let message = crate::lua::lossy(thread, -1);
                ffi::luaL_traceback(l, thread, std::ptr::null(), 0);
                let trace = crate::lua::lossy(l, -1);
                ffi::lua_pop(l, 1);
                report_error(&format!("task error: {message}\n{trace}"));
                self.finish(l, wake.task);
            }
        }
    }

    unsafe fn finish(&self, l: *mut lua_State, task: usize) {
        let removed = {
            let mut tasks = self.tasks.borrow_mut();
            if !tasks.contains(task) {
                return;
            }
            tasks.remove(task)
        };
        if let Some(timer) = removed.timer {
            self.timers.borrow_mut().cancel(timer);
        }
        if removed.waiting_io {
            self.io_waits.set(self.io_waits.get().saturating_sub(1));
        }
        let status = ffi::lua_status(removed.thread);
        if status != ffi::LUA_OK || ffi::lua_gettop(removed.thread) > 0 {
            close_thread(removed.thread, status == ffi::LUA_YIELD);
        }
        ffi::luaL_unref(l, ffi::LUA_REGISTRYINDEX, removed.reference);
    }

    /// Tasks still suspended when `run` found nothing left to do can never be woken:
    /// close them so their `<close>` variables run.
    unsafe fn close_stranded_tasks(&self, l: *mut lua_State) {
        let suspended: Vec<(usize, bool)> = self
            .tasks
            .borrow()
            .iter()
            .filter(|(_, t)| t.state == TaskState::Suspended && !t.background)
            .map(|(k, t)| (k, t.idle))
            .collect();
        // Parked workers (idle waits) are expected; anything else was blocked forever.
        let blocked = suspended.iter().filter(|(_, idle)| !idle).count();
        if blocked > 0 {
            report(&format!(
                "{blocked} task(s) were blocked forever (waiting on a channel or condition nobody can signal) and have been closed"
            ));
        }
        let stranded = suspended.into_iter().map(|(k, _)| k);
        for task in stranded {
            self.finish(l, task);
        }
    }

    /// At `lua_close`: end open streams gracefully. A process that closes a connection
    /// with unread input (or that gets input after closing, such as the peer's heartbeats)
    /// makes the kernel reset it, and a reset makes the peer throw away what it has
    /// received but not yet read, such as our last messages. So: send FIN behind what is
    /// queued, then read and discard until each peer closes its side too, for at most
    /// `max` in all. Never touches Lua.
    pub fn linger_on_exit(&self, max: Duration) {
        use std::os::fd::RawFd;
        let mut open: Vec<RawFd> = Vec::new();
        {
            let Ok(sockets) = self.sockets.try_borrow() else { return };
            for (_, s) in sockets.iter() {
                if s.kind.is_stream() && !s.eof && !s.connecting && !s.has_unsent() {
                    let _ = s.fd.shutdown(std::net::Shutdown::Write);
                    open.push(s.fd.as_raw_fd());
                }
            }
        }
        let deadline = std::time::Instant::now() + max;
        let mut sink = [0u8; 16 * 1024];
        while !open.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let mut polled: Vec<libc::pollfd> =
                open.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
            let ready = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, left.as_millis().max(1) as c_int) };
            if ready <= 0 {
                break;
            }
            let mut still_open = Vec::with_capacity(open.len());
            for p in polled {
                if p.revents == 0 {
                    still_open.push(p.fd);
                    continue;
                }
                loop {
                    let n = unsafe { libc::recv(p.fd, sink.as_mut_ptr().cast(), sink.len(), libc::MSG_DONTWAIT) };
                    if n > 0 {
                        continue;
                    }
                    let again = n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN);
                    if again {
                        still_open.push(p.fd);
                    }
                    break;
                }
            }
            open = still_open;
        }
    }

    /// At `lua_close`: close every task left, so their `<close>` variables run.
    pub unsafe fn close_all_tasks(&self, l: *mut lua_State) {
        let all: Vec<usize> = self.tasks.borrow().iter().map(|(k, _)| k).collect();
        for task in all {
            self.finish(l, task);
        }
        self.ready.borrow_mut().clear();
    }
}

/// Closes a suspended or dead coroutine, running its pending `<close>` variables. For a
/// coroutine killed by an error, `lua_resetthread` hands back that (already reported) error.
unsafe fn close_thread(thread: *mut lua_State, was_suspended: bool) {
    let status = ffi::lua_resetthread(thread);
    if status != ffi::LUA_OK && was_suspended {
        report_error(&format!("error while closing a task: {}", crate::lua::lossy(thread, -1)));
    }
}
