//! Minimal single-threaded mio echo server: the benchmark's ceiling.
//!
//! Usage: mio-echo HOST:PORT
//!
//! Edge-triggered (mio registrations always are), one reusable read buffer shared by
//! all connections. Bytes that cannot be written at once are kept per connection and
//! reading from that connection pauses until they are flushed.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    sock: TcpStream,
    pending: Vec<u8>,
}

enum Outcome {
    Open,
    Close,
}

fn main() {
    let addr: SocketAddr = match std::env::args().nth(1).and_then(|a| a.parse().ok()) {
        Some(a) => a,
        None => {
            eprintln!("usage: mio-echo HOST:PORT");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(addr) {
        eprintln!("mio-echo: {e}");
        std::process::exit(1);
    }
}

fn run(addr: SocketAddr) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("mio-echo listening on {addr}");

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = Events::with_capacity(1024);

    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut sock, _)) => {
                            let _ = sock.set_nodelay(true);
                            let idx = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            poll.registry().register(
                                &mut sock,
                                Token(idx),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns[idx] = Some(Conn { sock, pending: Vec::new() });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // EMFILE, ECONNABORTED...: drop this round, the next event retries.
                        Err(e) => {
                            eprintln!("mio-echo: accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let idx = ev.token().0;
            let outcome = match conns.get_mut(idx).and_then(|c| c.as_mut()) {
                Some(conn) => serve(conn, &mut buf),
                None => continue,
            };
            if let Outcome::Close = outcome {
                if let Some(mut conn) = conns[idx].take() {
                    let _ = poll.registry().deregister(&mut conn.sock);
                }
                free.push(idx);
            }
        }
    }
}

/// Flush what is pending, then read until WouldBlock, echoing every chunk.
fn serve(conn: &mut Conn, buf: &mut [u8]) -> Outcome {
    if !conn.pending.is_empty() && !flush(conn) {
        return Outcome::Close;
    }
    while conn.pending.is_empty() {
        match conn.sock.read(buf) {
            Ok(0) => return Outcome::Close,
            Ok(n) => {
                let mut off = 0;
                while off < n {
                    match conn.sock.write(&buf[off..n]) {
                        Ok(0) => return Outcome::Close,
                        Ok(w) => off += w,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            conn.pending.extend_from_slice(&buf[off..n]);
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Outcome::Close,
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Outcome::Close,
        }
    }
    Outcome::Open
}

/// Write pending bytes; false if the connection failed.
fn flush(conn: &mut Conn) -> bool {
    while !conn.pending.is_empty() {
        match conn.sock.write(&conn.pending) {
            Ok(0) => return false,
            Ok(w) => {
                conn.pending.drain(..w);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}
