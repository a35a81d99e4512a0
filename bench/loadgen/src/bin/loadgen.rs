//! Echo load generator for luanet's benchmark.
//!
//! Single-threaded, mio (epoll). Every connection sends a 16-byte message, waits for the
//! whole 16-byte echo, checks it byte for byte, and sends the next one: one message in
//! flight per connection. Network errors are counted, never unwrapped.
//!
//! Load mode (default):
//!   loadgen [--conns N] [--seconds S] [--warmup S] [--server-pid PID] HOST:PORT
//! Connections are opened at most --max-pending (64) at a time, so no listen backlog
//! overflows; a connection counts as open once its first echo came back. Then --warmup
//! seconds, then echoes are counted for --seconds. Prints one line:
//!   conns=100 echoes_per_sec=123456 errors=0 echoes=... seconds=... loadgen_busy=0.71 server_cpu=0.99 ...
//! errors adds up connect failures, I/O errors, early EOFs, wrong echo bytes, connections
//! that never opened, and stalls (a live connection whose message waited > --stall-ms at
//! the end, or that completed nothing in the window).
//! server_cpu is CPU seconds per wall second of --server-pid during the measured window
//! (/proc/PID/stat utime+stime, all threads); loadgen_cpu and loadgen_user the same for
//! the loadgen (getrusage). By default the loadgen busy-polls (epoll_wait with a zero
//! timeout) on its own core, so its wake-up latency does not add to a round trip; its
//! loadgen_cpu is then ~1 and loadgen_busy (wall time minus polls that found nothing)
//! tells how much of its core it needed. --no-spin sleeps in epoll_wait instead;
//! --spin-pause-us US busy-waits US microseconds after an empty poll (default 0).
//! other_cpu is the CPU (in cores) that everything else on the machine used meanwhile
//! (/proc/stat minus loadgen and server), steal what the hypervisor reported as stolen:
//! both should be ~0 on a quiet machine.
//!
//! Hold mode:
//!   loadgen --hold N [--seconds MAX] HOST:PORT
//! Opens N connections, echoes once on each, prints
//!   hold=N open=N errors=0 ...
//! and keeps them open until stdin reaches EOF, a signal ends it, or MAX seconds pass.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

const MSG: usize = 16;
const MAGIC: [u8; 4] = [0xA5, 0x5A, 0xC3, 0x3C];

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not started yet (waiting for a pending slot).
    Queued,
    /// Non-blocking connect in progress.
    Connecting,
    /// Writing the current message.
    Sending,
    /// Waiting for the echo of the current message.
    Receiving,
    /// Hold mode: echoed once, now idle.
    Idle,
    /// Failed (counted) and closed.
    Dead,
}

struct Conn {
    sock: Option<TcpStream>,
    state: State,
    msg: [u8; MSG],
    rbuf: [u8; MSG],
    sent: usize,
    got: usize,
    seq: u64,
    /// Coarse time (start of the poll iteration) when the current message was started.
    sent_at: Instant,
    /// A readable event came while not yet Receiving: try a read when we get there.
    rd_hint: bool,
    /// Echoes completed on this connection.
    echoes: u64,
}

#[derive(Default)]
struct Counters {
    echoes: u64,
    connect_errors: u64,
    io_errors: u64,
    eof: u64,
    bad_echo: u64,
    stalled: u64,
    not_opened: u64,
}

impl Counters {
    fn errors(&self) -> u64 {
        self.connect_errors + self.io_errors + self.eof + self.bad_echo + self.stalled + self.not_opened
    }
}

struct Opts {
    addr: SocketAddr,
    conns: usize,
    seconds: f64,
    warmup: f64,
    open_timeout: f64,
    max_pending: usize,
    server_pid: Option<u32>,
    hold: Option<usize>,
    stall_ms: u64,
    spin: bool,
    spin_pause_us: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen [--conns N] [--seconds S] [--warmup S] [--server-pid PID]\n\
         \x20              [--open-timeout S] [--max-pending N] [--stall-ms MS]\n\
         \x20              [--spin | --no-spin] [--spin-pause-us US] HOST:PORT\n\
         \x20      loadgen --hold N [--seconds MAX] [--open-timeout S] HOST:PORT"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        addr: "127.0.0.1:0".parse().expect("literal"),
        conns: 100,
        seconds: 3.0,
        warmup: 1.0,
        open_timeout: 30.0,
        max_pending: 64,
        server_pid: None,
        hold: None,
        stall_ms: 1000,
        spin: true,
        spin_pause_us: 0,
    };
    let mut addr = None;
    let mut seconds_given = false;
    let mut args = std::env::args().skip(1);
    fn val<T: std::str::FromStr>(args: &mut impl Iterator<Item = String>, name: &str) -> T {
        match args.next().and_then(|v| v.parse().ok()) {
            Some(v) => v,
            None => {
                eprintln!("loadgen: {name} needs a valid value");
                usage()
            }
        }
    }
    while let Some(a) = args.next() {
        match a.as_str() {
            "--conns" | "-c" => o.conns = val(&mut args, &a),
            "--seconds" | "-d" => {
                o.seconds = val(&mut args, &a);
                seconds_given = true;
            }
            "--warmup" | "-w" => o.warmup = val(&mut args, &a),
            "--open-timeout" => o.open_timeout = val(&mut args, &a),
            "--max-pending" => o.max_pending = val(&mut args, &a),
            "--server-pid" => o.server_pid = Some(val(&mut args, &a)),
            "--hold" => o.hold = Some(val(&mut args, &a)),
            "--stall-ms" => o.stall_ms = val(&mut args, &a),
            "--spin" => o.spin = true,
            "--no-spin" => o.spin = false,
            "--spin-pause-us" => o.spin_pause_us = val(&mut args, &a),
            "-h" | "--help" => usage(),
            s if s.starts_with('-') => {
                eprintln!("loadgen: unknown option {s}");
                usage()
            }
            s => addr = Some(s.to_string()),
        }
    }
    let Some(addr) = addr else { usage() };
    o.addr = match addr.to_socket_addrs().ok().and_then(|mut it| it.next()) {
        Some(a) => a,
        None => {
            eprintln!("loadgen: bad address {addr}");
            usage()
        }
    };
    if let Some(n) = o.hold {
        o.conns = n;
        if !seconds_given {
            o.seconds = 600.0;
        }
    }
    if o.conns == 0 || o.max_pending == 0 {
        usage()
    }
    o
}

/// (user, system) CPU seconds of this process.
fn cpu_self() -> (f64, f64) {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// utime+stime of a process (all its threads), in seconds.
fn cpu_of(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that closes comm: state is field 3; utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((ut + st) / if hz > 0.0 { hz } else { 100.0 })
}

/// (busy, steal) CPU seconds of the whole machine so far, from /proc/stat's "cpu" line.
fn cpu_machine() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal guest guest_nice
    if v.len() < 8 {
        return None;
    }
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let hz = if hz > 0.0 { hz } else { 100.0 };
    let busy = v[0] + v[1] + v[2] + v[5] + v[6];
    Some((busy / hz, v[7] / hz))
}

struct Gen {
    poll: Poll,
    conns: Vec<Conn>,
    c: Counters,
    addr: SocketAddr,
    /// Connections connecting or waiting for their first echo.
    pending: usize,
    /// Connections that completed their first echo.
    open: usize,
    next_queued: usize,
    hold: bool,
    now: Instant,
    /// Busy-poll (epoll_wait with a zero timeout) instead of sleeping.
    spin: bool,
    /// Busy-wait this long after an empty poll before polling again.
    spin_pause: Duration,
    /// Time spent in polls that returned no event (idle, whether spinning or asleep).
    idle: Duration,
}

impl Gen {
    fn new(o: &Opts) -> io::Result<Gen> {
        let now = Instant::now();
        let conns = (0..o.conns)
            .map(|_| Conn {
                sock: None,
                state: State::Queued,
                msg: [0; MSG],
                rbuf: [0; MSG],
                sent: 0,
                got: 0,
                seq: 0,
                sent_at: now,
                rd_hint: false,
                echoes: 0,
            })
            .collect();
        Ok(Gen {
            poll: Poll::new()?,
            conns,
            c: Counters::default(),
            addr: o.addr,
            pending: 0,
            open: 0,
            next_queued: 0,
            hold: o.hold.is_some(),
            now,
            spin: o.spin && o.hold.is_none(),
            spin_pause: Duration::from_micros(o.spin_pause_us),
            idle: Duration::ZERO,
        })
    }

    /// Start connects while fewer than max_pending are in progress.
    fn start_connects(&mut self, max_pending: usize) {
        while self.pending < max_pending && self.next_queued < self.conns.len() {
            let i = self.next_queued;
            self.next_queued += 1;
            match TcpStream::connect(self.addr) {
                Ok(mut s) => {
                    match self.poll.registry().register(
                        &mut s,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        Ok(()) => {
                            let c = &mut self.conns[i];
                            c.sock = Some(s);
                            c.state = State::Connecting;
                            c.sent_at = self.now;
                            self.pending += 1;
                        }
                        Err(_) => {
                            self.conns[i].state = State::Dead;
                            self.c.connect_errors += 1;
                        }
                    }
                }
                Err(_) => {
                    self.conns[i].state = State::Dead;
                    self.c.connect_errors += 1;
                }
            }
        }
    }

    /// Close a connection that failed (its error is already counted).
    fn kill(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.state == State::Dead || c.state == State::Queued {
            c.state = State::Dead;
            return;
        }
        if let Some(mut s) = c.sock.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.state = State::Dead;
        if c.echoes == 0 {
            self.pending -= 1;
        } else {
            self.open -= 1;
        }
    }

    fn fail_io(&mut self, i: usize, e: &io::Error) {
        let connecting = self.conns[i].state == State::Connecting;
        if connecting {
            self.c.connect_errors += 1;
        } else if e.kind() == io::ErrorKind::UnexpectedEof {
            self.c.eof += 1;
        } else {
            self.c.io_errors += 1;
        }
        self.kill(i);
    }

    fn handle(&mut self, i: usize, readable: bool, writable: bool, error: bool) {
        match self.conns[i].state {
            State::Connecting => {
                let Some(s) = self.conns[i].sock.as_ref() else { return };
                if let Ok(Some(e)) | Err(e) = s.take_error() {
                    self.fail_io(i, &e);
                    return;
                }
                match s.peer_addr() {
                    Ok(_) => {
                        let _ = s.set_nodelay(true);
                        self.begin_message(i);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected && !error => {}
                    Err(e) => self.fail_io(i, &e),
                }
            }
            State::Sending => {
                if readable {
                    self.conns[i].rd_hint = true;
                }
                if writable || error {
                    self.send(i);
                }
            }
            State::Receiving => {
                if readable || error {
                    self.recv(i);
                }
            }
            State::Idle => {
                // Hold mode: the server should stay quiet. Data or EOF on an idle
                // connection is an error.
                if readable || error {
                    let mut b = [0u8; 64];
                    let Some(s) = self.conns[i].sock.as_mut() else { return };
                    match s.read(&mut b) {
                        Ok(0) => self.fail_io(i, &io::ErrorKind::UnexpectedEof.into()),
                        Ok(_) => {
                            self.c.bad_echo += 1;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => self.fail_io(i, &e),
                    }
                }
            }
            State::Queued | State::Dead => {}
        }
    }

    fn begin_message(&mut self, i: usize) {
        let c = &mut self.conns[i];
        c.seq += 1;
        c.msg[0..4].copy_from_slice(&(i as u32).to_le_bytes());
        c.msg[4..12].copy_from_slice(&c.seq.to_le_bytes());
        c.msg[12..16].copy_from_slice(&MAGIC);
        c.sent = 0;
        c.got = 0;
        c.sent_at = self.now;
        c.state = State::Sending;
        self.send(i);
    }

    fn send(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(s) = c.sock.as_mut() else { return };
        while c.sent < MSG {
            match s.write(&c.msg[c.sent..]) {
                Ok(0) => {
                    self.fail_io(i, &io::ErrorKind::WriteZero.into());
                    return;
                }
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail_io(i, &e);
                    return;
                }
            }
        }
        c.state = State::Receiving;
        if c.rd_hint {
            c.rd_hint = false;
            self.recv(i);
        }
    }

    fn recv(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(s) = c.sock.as_mut() else { return };
        // Read at most what the echo still owes: with one message in flight nothing
        // else can arrive, so stopping at 16 bytes loses no edge.
        while c.got < MSG {
            match s.read(&mut c.rbuf[c.got..]) {
                Ok(0) => {
                    self.fail_io(i, &io::ErrorKind::UnexpectedEof.into());
                    return;
                }
                Ok(n) => c.got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail_io(i, &e);
                    return;
                }
            }
        }
        if c.rbuf != c.msg {
            self.c.bad_echo += 1;
            self.kill(i);
            return;
        }
        c.echoes += 1;
        self.c.echoes += 1;
        if c.echoes == 1 {
            self.pending -= 1;
            self.open += 1;
        }
        if self.hold {
            c.state = State::Idle;
        } else {
            self.begin_message(i);
        }
    }

    fn poll_once(&mut self, events: &mut Events, timeout: Duration) -> io::Result<()> {
        let before = Instant::now();
        let timeout = if self.spin { Duration::ZERO } else { timeout };
        match self.poll.poll(events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        self.now = Instant::now();
        if events.is_empty() {
            if self.spin && !self.spin_pause.is_zero() {
                // Stay on the CPU but leave the epoll instance alone for a moment: a tight
                // epoll_wait(0) loop contends with the peer core's wake-ups on its lock.
                let until = self.now + self.spin_pause;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                self.now = Instant::now();
            }
            self.idle += self.now - before;
        }
        for ev in events.iter() {
            self.handle(ev.token().0, ev.is_readable() || ev.is_read_closed(), ev.is_writable(), ev.is_error());
        }
        Ok(())
    }

    /// Open every connection (connect + first echo), max_pending at a time.
    fn open_all(&mut self, events: &mut Events, max_pending: usize, timeout: f64) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs_f64(timeout);
        loop {
            self.start_connects(max_pending);
            if self.pending == 0 && self.next_queued == self.conns.len() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                // Count and drop whatever did not open in time.
                for i in 0..self.conns.len() {
                    let st = self.conns[i].state;
                    if st == State::Queued || (st != State::Dead && self.conns[i].echoes == 0) {
                        self.c.not_opened += 1;
                        self.kill(i);
                    }
                }
                self.next_queued = self.conns.len();
                return Ok(());
            }
            self.poll_once(events, (deadline - now).min(Duration::from_millis(100)))?;
        }
    }
}

fn run_load(o: &Opts) -> io::Result<()> {
    let mut g = Gen::new(o)?;
    let mut events = Events::with_capacity(1024);
    let t_open = Instant::now();
    g.open_all(&mut events, o.max_pending, o.open_timeout)?;
    let open_secs = t_open.elapsed().as_secs_f64();

    // Warm-up.
    let warm_end = Instant::now() + Duration::from_secs_f64(o.warmup);
    loop {
        let now = Instant::now();
        if now >= warm_end {
            break;
        }
        g.poll_once(&mut events, (warm_end - now).min(Duration::from_millis(50)))?;
    }

    // Measured window.
    let srv0 = o.server_pid.and_then(cpu_of);
    let mach0 = cpu_machine();
    let cpu0 = cpu_self();
    let e0 = g.c.echoes;
    let idle0 = g.idle;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(o.seconds);
    let per_conn0: Vec<u64> = g.conns.iter().map(|c| c.echoes).collect();
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        g.poll_once(&mut events, (end - now).min(Duration::from_millis(50)))?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_self();
    let srv1 = o.server_pid.and_then(cpu_of);
    let mach1 = cpu_machine();
    let echoes = g.c.echoes - e0;
    let idle = (g.idle - idle0).as_secs_f64();
    let cpu_user = (cpu1.0 - cpu0.0) / wall;
    let cpu = (cpu1.0 + cpu1.1 - cpu0.0 - cpu0.1) / wall;
    // Share of the window spent doing work: when spinning, wall time minus empty polls;
    // when sleeping, the CPU time (sleeping polls are not on the CPU).
    let busy = if g.spin { ((wall - idle) / wall).clamp(0.0, 1.0) } else { cpu };

    // A live connection whose message has waited more than stall_ms, or that completed
    // nothing in the whole window, is stuck: count it.
    let now = Instant::now();
    let stall = Duration::from_millis(o.stall_ms);
    let mut min_c = u64::MAX;
    let mut max_c = 0;
    for (c, before) in g.conns.iter().zip(&per_conn0) {
        if c.state == State::Dead {
            continue;
        }
        let done = c.echoes - before;
        min_c = min_c.min(done);
        max_c = max_c.max(done);
        if done == 0 || (c.state != State::Idle && now.duration_since(c.sent_at) > stall) {
            g.c.stalled += 1;
        }
    }
    if min_c == u64::MAX {
        min_c = 0;
    }
    let srv_cpu = match (srv0, srv1) {
        (Some(a), Some(b)) => Some((b - a) / wall),
        _ => None,
    };
    let srv = srv_cpu.map_or("na".to_string(), |c| format!("{c:.3}"));
    // CPU used by anything but this loadgen and the server (other processes, kernel
    // threads), in cores; tick-sampled, so about +-0.02. And the hypervisor's steal.
    let (other, steal) = match (mach0, mach1) {
        (Some(a), Some(b)) => (
            format!("{:.3}", (b.0 - a.0) / wall - cpu - srv_cpu.unwrap_or(0.0)),
            format!("{:.3}", (b.1 - a.1) / wall),
        ),
        _ => ("na".to_string(), "na".to_string()),
    };
    println!(
        "conns={} echoes_per_sec={:.0} errors={} echoes={} seconds={:.3} loadgen_busy={:.3} server_cpu={} \
         loadgen_cpu={:.3} loadgen_user={:.3} spin={} other_cpu={} steal={} \
         open={} open_secs={:.3} connect_errors={} io_errors={} eof={} bad_echo={} stalled={} not_opened={} \
         per_conn_min={} per_conn_max={}",
        o.conns,
        echoes as f64 / wall,
        g.c.errors(),
        echoes,
        wall,
        busy,
        srv,
        cpu,
        cpu_user,
        g.spin as u8,
        other,
        steal,
        g.open,
        open_secs,
        g.c.connect_errors,
        g.c.io_errors,
        g.c.eof,
        g.c.bad_echo,
        g.c.stalled,
        g.c.not_opened,
        min_c,
        max_c,
    );
    io::stdout().flush()?;
    Ok(())
}

fn run_hold(o: &Opts) -> io::Result<()> {
    let mut g = Gen::new(o)?;
    let mut events = Events::with_capacity(1024);
    let t = Instant::now();
    g.open_all(&mut events, o.max_pending, o.open_timeout)?;
    println!(
        "hold={} open={} errors={} open_secs={:.3} connect_errors={} io_errors={} eof={} bad_echo={} not_opened={}",
        o.conns,
        g.open,
        g.c.errors(),
        t.elapsed().as_secs_f64(),
        g.c.connect_errors,
        g.c.io_errors,
        g.c.eof,
        g.c.bad_echo,
        g.c.not_opened
    );
    io::stdout().flush()?;

    // Hold until stdin closes (a helper thread exits the process), a signal, or MAX.
    std::thread::spawn(|| {
        let mut b = [0u8; 256];
        let mut stdin = io::stdin();
        loop {
            match stdin.read(&mut b) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        std::process::exit(0);
    });
    let end = Instant::now() + Duration::from_secs_f64(o.seconds);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        g.poll_once(&mut events, (end - now).min(Duration::from_millis(500)))?;
    }
    Ok(())
}

fn main() {
    let o = parse_opts();
    let r = if o.hold.is_some() { run_hold(&o) } else { run_load(&o) };
    if let Err(e) = r {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}
