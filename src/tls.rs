//! TLS on TCP streams, with rustls (the ring provider: it builds with the C compiler
//! Debian already has, where aws-lc-rs would need cmake and a long build).
//!
//! A TLS stream is an ordinary stream socket whose `Cold::tls` is set: `stream.rs` calls
//! `recv` and `send` here instead of the system calls, so every read, write, buffer and
//! limit the plain socket has works unchanged on plaintext. What rustls holds is bounded:
//! `send` gives it at most `MAX_PLAINTEXT_PER_SEND` bytes, and only once it has handed
//! the kernel everything from before, so the records it keeps are one send's worth.
//!
//! The handshake is a blocking operation of its own (`tls_handshake`): the Lua face
//! (lua/luanet/tls.lua) runs it, with its timeout, before it gives anyone the connection.

use std::ffi::{c_int, CStr};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection};

use crate::errors;
use crate::lua::{self, ffi, lua_State, push_fail, Raise, Ret};
use crate::reactor::Reactor;
use crate::socket::{handle_at, push_closed, reactor, with_socket, Kind};
use crate::stream::{resume, start, Attempt, Dir, Fill, Op};

/// The most plaintext one `send` hands rustls: with the rule that it first gives the kernel
/// everything rustls still holds, this bounds the records rustls keeps per connection.
const MAX_PLAINTEXT_PER_SEND: usize = 64 * 1024;

/// Where Debian keeps the system's trusted roots (package ca-certificates).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

pub struct Tls {
    conn: Connection,
    /// What ended the session (a bad record, a rejected certificate): every later read
    /// and write reports it.
    failed: Option<String>,
    /// The peer's end of the TCP stream was read.
    eof: bool,
    /// Sending failed (the peer reset, say): what rustls still holds is dropped, or the
    /// loop would keep trying to flush it.
    write_dead: bool,
}

/// Marks an io::Error as TLS's own, so errors.rs gives it the word "tls error".
#[derive(Debug)]
pub struct TlsFailure(pub String);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsFailure {}

fn tls_error(text: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, TlsFailure(text))
}

/// Reads and writes the descriptor directly (rustls wants Read and Write), through the
/// same fault injection as plain streams (faults.rs).
struct FdIo(RawFd);

impl Read for FdIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let buf = match crate::faults::before_recv(self.0, buf.len()) {
            crate::faults::Injected::Len(n) => &mut buf[..n],
            crate::faults::Injected::WouldBlock => return Err(crate::faults::would_block()),
        };
        loop {
            let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Write for FdIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let buf = match crate::faults::before_send(self.0, buf.len()) {
            crate::faults::Injected::Len(n) => &buf[..n],
            crate::faults::Injected::WouldBlock => return Err(crate::faults::would_block()),
        };
        loop {
            let n = unsafe { libc::send(self.0, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
            if n >= 0 {
                crate::faults::after_send(self.0, Kind::TcpStream, n as usize);
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Tls {
    fn failure(&self) -> Option<io::Error> {
        self.failed.as_ref().map(|t| tls_error(t.clone()))
    }

    fn fail(&mut self, e: rustls::Error) -> io::Error {
        let text = e.to_string();
        self.failed = Some(text.clone());
        tls_error(text)
    }

    /// Hands the kernel the records rustls holds. `Err(WouldBlock)` when it is full.
    fn flush(&mut self, fd: RawFd) -> io::Result<()> {
        if self.write_dead {
            return Err(io::Error::from_raw_os_error(libc::EPIPE));
        }
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut FdIo(fd)) {
                // write_tls hands over nothing only if rustls's queue held empty records;
                // the loop would then spin.
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) => {
                    self.write_dead = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Whether rustls holds records the kernel has not taken yet (that it ever will).
    pub fn has_unsent(&self) -> bool {
        !self.write_dead && self.failed.is_none() && self.conn.wants_write()
    }

    /// Sending failed for good: what rustls holds is not waited for any more.
    pub fn abandon_output(&mut self) {
        self.write_dead = true;
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Takes what the kernel has into rustls and processes it. Ok(false): nothing more
    /// there now (the readiness hint must be cleared).
    fn pull(&mut self, fd: RawFd) -> io::Result<bool> {
        match self.conn.read_tls(&mut FdIo(fd)) {
            Ok(0) => self.eof = true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
        if let Err(e) = self.conn.process_new_packets() {
            let err = self.fail(e);
            // The alert rustls queued tells the peer why; best effort.
            let _ = self.flush(fd);
            return Err(err);
        }
        // Handshake replies, key updates: they go out now, or with the next write or edge.
        // A peer that has gone away fails this flush, but what it sent before is still to
        // be read (its close_notify too): the failure is the next write's to report.
        match self.flush(fd) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock && self.conn.is_handshaking() => Err(e),
            _ => Ok(true),
        }
    }

    /// Plaintext into `buf`, reading records from the kernel as needed.
    pub fn recv(&mut self, fd: RawFd, readable: &mut bool, buf: &mut [u8]) -> Fill {
        if let Some(e) = self.failure() {
            return Fill::Failed(e);
        }
        loop {
            match self.conn.reader().read(buf) {
                Ok(0) if !buf.is_empty() => return Fill::Eof,
                Ok(n) => return Fill::Data(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The TCP stream ended without close_notify: luanet's own messages are
                // framed, so a cut-off one shows as truncated; a stream just ends.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Fill::Eof,
                Err(e) => return Fill::Failed(e),
            }
            if self.eof {
                return Fill::Eof;
            }
            if !*readable {
                return Fill::WouldBlock;
            }
            let was_handshaking = self.conn.is_handshaking();
            match self.pull(fd) {
                Ok(true) => {}
                Ok(false) => {
                    *readable = false;
                    return Fill::WouldBlock;
                }
                Err(e) => return Fill::Failed(e),
            }
            if was_handshaking && !self.conn.is_handshaking() {
                // A writer may wait for the handshake (see `send`): it gets an edge.
                crate::faults::owe_edge(fd, crate::faults::EDGE_WRITE);
            }
        }
    }

    /// Plaintext from `data` into records, handed to the kernel. Returns how much of
    /// `data` was taken; `Err(WouldBlock)` when nothing can be yet.
    pub fn send(&mut self, fd: RawFd, data: &[u8]) -> io::Result<usize> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        self.flush(fd)?;
        if self.conn.is_handshaking() {
            // Its end owes this socket a write edge (see `recv` and `drive_handshake`).
            // (As the OS says it: the callers look at the errno.)
            return Err(crate::faults::would_block());
        }
        // Chunk by chunk while the kernel takes everything: a send that returns short must
        // mean the kernel is full (the caller then waits for its edge), as for plain TCP.
        let mut taken = 0;
        while taken < data.len() {
            let end = data.len().min(taken + MAX_PLAINTEXT_PER_SEND);
            taken += self.conn.writer().write(&data[taken..end])?;
            match self.flush(fd) {
                Ok(()) => {}
                // What the kernel did not take stays with rustls: `has_unsent` keeps the
                // socket on the flush path, and the kernel's edge comes when it drains.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(taken)
    }

    /// Queues close_notify and hands it to the kernel if it takes it now.
    pub fn close_notify(&mut self, fd: RawFd) {
        if self.failed.is_none() {
            self.conn.send_close_notify();
            let _ = self.flush(fd);
        }
        // Unread bytes in the kernel (session tickets the peer sent after the handshake,
        // say) make close send a RST, and a RST can throw away what we sent last. Read
        // them out first; a bounded effort, not a guarantee.
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            let n = unsafe { libc::recv(fd, sink.as_mut_ptr().cast(), sink.len(), libc::MSG_DONTWAIT) };
            if n <= 0 {
                break;
            }
        }
    }

    /// Moves the handshake on as far as the kernel allows. Ok(true) once it is done.
    fn drive_handshake(&mut self, fd: RawFd, readable: &mut bool) -> io::Result<bool> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        loop {
            match self.flush(fd) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.conn.is_handshaking() => return Ok(false),
                // Done, and only the messages after it (TLS 1.3 session tickets) are left:
                // they go with the next write or edge. If the peer is already gone, what
                // it sent before it went is still there to read.
                Err(_) if !self.conn.is_handshaking() => return Ok(true),
                Err(e) => return Err(e),
            }
            if !self.conn.is_handshaking() {
                return Ok(true);
            }
            if self.eof {
                return Err(tls_error("the peer closed the connection during the TLS handshake".into()));
            }
            if !*readable {
                return Ok(false);
            }
            if !self.pull(fd)? {
                *readable = false;
            }
        }
    }

    /// What was agreed, for `tls_info`.
    fn info(&self) -> (Option<String>, Option<String>, Option<String>, Option<String>) {
        let version = self.conn.protocol_version().map(|v| format!("{v:?}"));
        let suite = self.conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()));
        let alpn = self.conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
        let sni = match &self.conn {
            Connection::Server(s) => s.server_name().map(str::to_owned),
            Connection::Client(_) => None,
        };
        (version, suite, alpn, sni)
    }
}

// ---- configurations --------------------------------------------------------------------

enum Config {
    Client(Arc<ClientConfig>),
    Server(Arc<ServerConfig>),
}

const CONFIG_META: &CStr = c"luanet.tls.config";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {path}: {e}"))?
        .collect();
    let certs = certs.map_err(|e| format!("bad certificate in {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {path}"));
    }
    Ok(certs)
}

fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("cannot read a private key from {path}: {e}"))
}

fn roots(ca: Option<&str>) -> Result<RootCertStore, String> {
    let path = ca.unwrap_or(SYSTEM_ROOTS);
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(read_certs(path)?);
    if added == 0 {
        return Err(format!("no usable CA certificate in {path}"));
    }
    Ok(store)
}

/// Accepts any certificate: only for `verify = false`, which the docs warn about.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn alpn_list(l: *mut lua_State, opts: c_int, func: &str) -> Result<Vec<Vec<u8>>, Raise> {
    Ok(unsafe { lua::opts_string(l, opts, c"alpn", func)? }
        .map(|s| s.split(',').map(|p| p.trim().as_bytes().to_vec()).filter(|p| !p.is_empty()).collect())
        .unwrap_or_default())
}

/// `core.tls_client_config{ ca, verify, cert, key, alpn }`
unsafe fn client_config(l: *mut lua_State) -> Result<Result<Config, String>, Raise> {
    const F: &str = "luanet.tls.client_config";
    lua::check_opts(l, 1, F)?;
    let ca = lua::opts_string(l, 1, c"ca", F)?;
    let verify = lua::opts_bool(l, 1, c"verify", F)?.unwrap_or(true);
    let cert = lua::opts_string(l, 1, c"cert", F)?;
    let key = lua::opts_string(l, 1, c"key", F)?;
    let alpn = alpn_list(l, 1, F)?;
    if cert.is_some() != key.is_some() {
        return Err(format!("{F}: 'cert' and 'key' go together (a client certificate needs its key)"));
    }
    Ok((|| {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if verify {
            builder.with_root_certificates(roots(ca.as_deref())?)
        } else {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
        };
        let mut config = match (cert, key) {
            (Some(c), Some(k)) => builder.with_client_auth_cert(read_certs(&c)?, read_key(&k)?).map_err(|e| e.to_string())?,
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn;
        Ok(Config::Client(Arc::new(config)))
    })())
}

/// `core.tls_server_config{ cert, key, sni = { [name] = { cert, key } }, client_ca, alpn }`
unsafe fn server_config(l: *mut lua_State) -> Result<Result<Config, String>, Raise> {
    const F: &str = "luanet.tls.server_config";
    lua::check_opts(l, 1, F)?;
    let cert = lua::opts_string(l, 1, c"cert", F)?;
    let key = lua::opts_string(l, 1, c"key", F)?;
    let client_ca = lua::opts_string(l, 1, c"client_ca", F)?;
    let alpn = alpn_list(l, 1, F)?;
    let mut by_name = Vec::new();
    if lua::opt_field(l, 1, c"sni") != ffi::LUA_TNIL {
        if ffi::lua_type(l, -1) != ffi::LUA_TTABLE {
            return Err(format!("{F}: 'sni' must be a table of name = {{ cert = ..., key = ... }}"));
        }
        let sni = ffi::lua_gettop(l);
        ffi::lua_pushnil(l);
        while ffi::lua_next(l, sni) != 0 {
            let top = ffi::lua_gettop(l);
            if ffi::lua_type(l, top - 1) != ffi::LUA_TSTRING || ffi::lua_type(l, top) != ffi::LUA_TTABLE {
                return Err(format!("{F}: 'sni' must be a table of name = {{ cert = ..., key = ... }}"));
            }
            let name = lua::lossy(l, top - 1);
            let c = lua::opts_string(l, top, c"cert", F)?;
            let k = lua::opts_string(l, top, c"key", F)?;
            let (Some(c), Some(k)) = (c, k) else {
                return Err(format!("{F}: sni[{name:?}] needs both cert and key"));
            };
            by_name.push((name, c, k));
            ffi::lua_settop(l, top - 1);
        }
        ffi::lua_settop(l, sni - 1);
    } else {
        ffi::lua_pop(l, 1);
    }
    if cert.is_some() != key.is_some() {
        return Err(format!("{F}: 'cert' and 'key' go together"));
    }
    if cert.is_none() && by_name.is_empty() {
        return Err(format!("{F}: a server needs 'cert' and 'key' (or 'sni')"));
    }
    Ok((|| {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match client_ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(Some(&ca))?), provider())
                    .build()
                    .map_err(|e| e.to_string())?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let default = match (cert, key) {
            (Some(c), Some(k)) => Some(certified_key(&c, &k)?),
            _ => None,
        };
        let mut resolver = SniResolver { by_name: Vec::new(), default };
        for (name, c, k) in by_name {
            resolver.by_name.push((name.to_ascii_lowercase(), certified_key(&c, &k)?));
        }
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = alpn;
        // No TLS 1.3 session tickets: luanet keeps its connections open, so resumption
        // gains little, and tickets sent after the handshake race a client that closes
        // at once: its kernel then answers them with a RST that can discard what it sent.
        config.send_tls13_tickets = 0;
        Ok(Config::Server(Arc::new(config)))
    })())
}

fn certified_key(cert: &str, key: &str) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let signing = provider()
        .key_provider
        .load_private_key(read_key(key)?)
        .map_err(|e| format!("unusable private key in {key}: {e}"))?;
    let ck = rustls::sign::CertifiedKey::new(read_certs(cert)?, signing);
    ck.keys_match().map_err(|e| format!("{cert} and {key} do not belong together: {e}"))?;
    Ok(Arc::new(ck))
}

/// Picks the certificate by the name the client asked for (SNI), else the default.
#[derive(Debug)]
struct SniResolver {
    by_name: Vec<(String, Arc<rustls::sign::CertifiedKey>)>,
    default: Option<Arc<rustls::sign::CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        hello
            .server_name()
            .and_then(|asked| self.by_name.iter().find(|(n, _)| n.eq_ignore_ascii_case(asked)))
            .map(|(_, k)| k.clone())
            .or_else(|| self.default.clone())
    }
}

unsafe fn push_config(l: *mut lua_State, config: Config) {
    let slot = ffi::lua_newuserdatauv(l, std::mem::size_of::<*mut Config>(), 0) as *mut *mut Config;
    slot.write(Box::into_raw(Box::new(config)));
    if ffi::luaL_newmetatable(l, CONFIG_META.as_ptr()) != 0 {
        ffi::lua_pushcfunction(l, config_gc);
        ffi::lua_setfield(l, -2, c"__gc".as_ptr());
    }
    ffi::lua_setmetatable(l, -2);
}

unsafe extern "C-unwind" fn config_gc(l: *mut lua_State) -> c_int {
    let slot = ffi::luaL_testudata(l, 1, CONFIG_META.as_ptr()) as *mut *mut Config;
    if !slot.is_null() && !(*slot).is_null() {
        drop(Box::from_raw(*slot));
        *slot = std::ptr::null_mut();
    }
    0
}

unsafe fn config_at<'a>(l: *mut lua_State, idx: c_int, func: &str) -> Result<&'a Config, Raise> {
    let slot = ffi::luaL_testudata(l, idx, CONFIG_META.as_ptr()) as *mut *mut Config;
    if slot.is_null() || (*slot).is_null() {
        return Err(lua::bad_arg(l, func, idx, "config", "TLS config"));
    }
    Ok(&**slot)
}

/// A config built from the options table, or `nil, "tls error", detail` (a file that
/// cannot be read, a key that does not match); bad arguments raise.
unsafe fn new_config(l: *mut lua_State, build: unsafe fn(*mut lua_State) -> Result<Result<Config, String>, Raise>) -> c_int {
    lua::entry(l, || match build(l)? {
        Ok(c) => {
            push_config(l, c);
            Ok(Ret::Values(1))
        }
        Err(detail) => Ok(push_fail(l, errors::TLS, &detail)),
    })
}

pub unsafe extern "C-unwind" fn new_client_config(l: *mut lua_State) -> c_int {
    new_config(l, client_config)
}

pub unsafe extern "C-unwind" fn new_server_config(l: *mut lua_State) -> c_int {
    new_config(l, server_config)
}

/// `core.tls_wrap(conn, config, [server_name])`: the connection speaks TLS from now on
/// (client side with a client config, which needs the name to check; server side with a
/// server config). The handshake starts with `conn:tls_handshake`.
pub unsafe extern "C-unwind" fn wrap(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        const F: &str = "luanet.tls.wrap";
        let (key, generation) = handle_at(l, 1, F)?;
        let config = config_at(l, 2, F)?;
        let conn = match config {
            Config::Client(c) => {
                let name = lua::check_str(l, 3, F, "server_name")?;
                let name = match ServerName::try_from(name.to_owned()) {
                    Ok(n) => n,
                    Err(e) => return Ok(push_fail(l, errors::BAD_ADDRESS, &format!("{name:?} is not a host name or address: {e}"))),
                };
                ClientConnection::new(c.clone(), name).map(Connection::Client)
            }
            Config::Server(c) => ServerConnection::new(c.clone()).map(Connection::Server),
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => return Ok(push_fail(l, errors::TLS, &e.to_string())),
        };
        let r = reactor(l);
        let outcome = with_socket(r, key, generation, |s| {
            if s.kind != Kind::TcpStream && s.kind != Kind::UnixStream {
                return Err("only a stream connection can speak TLS");
            }
            if s.tls().is_some() {
                return Err("the connection already speaks TLS");
            }
            if s.has_unsent() || !s.received().is_empty() {
                return Err("bytes are already buffered in plaintext; start TLS before any I/O");
            }
            s.set_tls(Box::new(Tls { conn, failed: None, eof: false, write_dead: false }));
            Ok(())
        });
        match outcome {
            None => Ok(push_closed(l)),
            Some(Err(why)) => Err(format!("{F}: {why}")),
            Some(Ok(())) => {
                ffi::lua_pushvalue(l, 1);
                Ok(Ret::Values(1))
            }
        }
    })
}

unsafe fn handshake_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32) -> Result<Attempt, Raise> {
    let outcome = with_socket(r, key, generation, |s| {
        let fd = s.fd.as_raw_fd();
        let mut readable = s.readable;
        let done = match s.tls_mut() {
            None => return Err(tls_error("the connection does not speak TLS (luanet.tls.wrap first)".into())),
            Some(tls) => tls.drive_handshake(fd, &mut readable),
        };
        s.readable = readable;
        done
    });
    Ok(match outcome {
        None => Attempt::Done(push_closed(l)),
        Some(Ok(true)) => {
            crate::faults::owe_edge_for(r, key, crate::faults::EDGE_WRITE);
            Attempt::Done(lua::push_true(l))
        }
        // The kernel's send buffer was full with handshake records (rare: they are
        // small): look again soon rather than wait for a read edge that may not come.
        Some(Ok(false)) if with_socket(r, key, generation, |s| s.has_unsent()).unwrap_or(false) => {
            Attempt::WaitUntil(r.now_ms() + 10)
        }
        Some(Ok(false)) => Attempt::Wait,
        Some(Err(e)) => {
            let (word, detail) = errors::describe(&e);
            Attempt::Done(push_fail(l, word, &detail))
        }
    })
}

crate::stream::blocking_op!(HANDSHAKE, tls_handshake, tls_handshake_k, "tls_handshake", Dir::Read, handshake_attempt, 2);

/// `conn:tls_info()` -> { version, cipher, alpn, server_name } | nil
unsafe extern "C-unwind" fn tls_info(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "tls_info")?;
        let info = with_socket(reactor(l), key, generation, |s| s.tls().map(|t| t.info())).flatten();
        let Some((version, suite, alpn, sni)) = info else {
            ffi::lua_pushnil(l);
            return Ok(Ret::Values(1));
        };
        ffi::lua_createtable(l, 0, 4);
        for (k, v) in [(c"version", version), (c"cipher", suite), (c"alpn", alpn), (c"server_name", sni)] {
            if let Some(v) = v {
                lua::push_bytes(l, v.as_bytes());
                ffi::lua_setfield(l, -2, k.as_ptr());
            }
        }
        Ok(Ret::Values(1))
    })
}

pub const METHODS: &[(&CStr, ffi::lua_CFunction)] = &[(c"tls_handshake", tls_handshake), (c"tls_info", tls_info)];
