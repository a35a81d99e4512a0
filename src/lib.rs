//! luanet's native core, loaded by `lua/luanet.lua` as `luanet.core`.
//!
//! # Layout
//!
//! * `lua.rs`: the seam to the Lua C API. Every Lua-callable function runs its body through
//!   `lua::entry`, which raises errors and yields only after the body's Rust frame is gone.
//! * `reactor.rs`: the loop: a mio `Poll`, the task table, the ready queue, and `run`.
//! * `timer.rs`: deadlines for sleeps, timeouts and lingering closes.
//! * `task.rs`: spawn, run, stop, sleep and the suspend/wake pair used by channels.
//! * `socket.rs`: what every socket kind shares: its state, the Lua handle, closing.
//! * `stream.rs`: TCP and Unix streams: reads, buffered writes, and the attempt/wait/retry
//!   machinery every blocking socket call uses.
//! * `message.rs`: whole MessagePack values over a stream (read_message, write_message).
//! * `listener.rs`, `datagram.rs`: accept; datagram send and receive.
//! * `tcp.rs`, `udp.rs`, `unix.rs`: creating each kind of socket, and kind-only options.
//! * `buffer.rs`: bytes waiting in one direction of a stream, allocated on first use.
//! * `msgpack/`: the codec: `encode.rs` walks the Lua stack, `decode.rs` checks then builds.
//! * `address.rs`, `errors.rs`: address strings; the stable error words.
//! * `tls.rs`: TLS on TCP streams with rustls: configurations, wrapping, the handshake.
//! * `auth.rs`: HMAC and nonces for the cluster token handshake.
//! * `hash.rs`: the specified key hash that group calls by key use.
//! * `faults.rs`: fault injection for tests (short reads and writes, EAGAIN, resets),
//!   switched on by `LUANET_FAULTS`.
//! * `signals.rs`: SIGINT and SIGTERM stop a running loop gracefully.
//! * `log/`: asynchronous logging: the bounded queue and its writer thread (`mod.rs`),
//!   line formats (`line.rs`), files and rotation (`sink.rs`).
//!
//! The core never calls `coroutine.yield` from Lua: a blocking call that would wait
//! registers the running task and yields a private sentinel with `lua_yieldk`; the loop
//! resumes the task and the call's continuation tries again.

// Every unsafe fn here is a Lua C function or a helper for one: its contract is "called
// by Lua (or from such a function) with a valid state", said once here instead of 60 times.
#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_int, CStr};

pub mod address;
pub mod auth;
pub mod buffer;
pub mod datagram;
pub mod errors;
pub mod faults;
pub mod hash;
pub mod listener;
pub mod log;
pub mod lua;
pub mod message;
pub mod msgpack;
pub mod reactor;
pub mod signals;
pub mod socket;
pub mod stream;
pub mod task;
pub mod tcp;
pub mod timer;
pub mod tls;
pub mod udp;
pub mod unix;

use lua::{ffi, lua_State};
use reactor::Reactor;

/// The userdata every core function holds as upvalue 1. The reactor is boxed so that the
/// finalizer can drop it and leave a null behind for finalizers that run after it.
struct ReactorSlot {
    reactor: *mut Reactor,
}

pub(crate) unsafe fn try_reactor_from_upvalue<'a>(l: *mut lua_State) -> Option<&'a Reactor> {
    let slot = ffi::lua_touserdata(l, ffi::lua_upvalueindex(1)) as *const ReactorSlot;
    if slot.is_null() || (*slot).reactor.is_null() {
        return None;
    }
    Some(&*(*slot).reactor)
}

pub(crate) unsafe fn reactor_from_upvalue<'a>(l: *mut lua_State) -> &'a Reactor {
    match try_reactor_from_upvalue(l) {
        Some(r) => r,
        // Only reachable from finalizers running after the loop's own: entry() turns the
        // panic into a Lua error.
        None => panic!("the luanet loop has already been closed"),
    }
}

/// Sets `t[name] = f` on the table at the top, with the reactor at `reactor_idx` as upvalue.
pub(crate) unsafe fn set_closure(l: *mut lua_State, reactor_idx: c_int, name: &CStr, f: ffi::lua_CFunction) {
    ffi::lua_pushvalue(l, reactor_idx);
    ffi::lua_pushcclosure(l, f, 1);
    ffi::lua_setfield(l, -2, name.as_ptr());
}

/// Runs at `lua_close` (the slot is referenced from the registry, so not earlier): closes
/// the tasks left so their `<close>` variables run, then every socket.
unsafe extern "C-unwind" fn reactor_gc(l: *mut lua_State) -> c_int {
    let slot = ffi::lua_touserdata(l, 1) as *mut ReactorSlot;
    if slot.is_null() || (*slot).reactor.is_null() {
        return 0;
    }
    (*(*slot).reactor).close_all_tasks(l);
    (*(*slot).reactor).linger_on_exit(std::time::Duration::from_secs(2));
    log::flush_at_exit();
    let reactor = Box::from_raw((*slot).reactor);
    (*slot).reactor = std::ptr::null_mut();
    drop(reactor);
    0
}

const FUNCTIONS: &[(&CStr, ffi::lua_CFunction)] = &[
    (c"spawn", task::spawn),
    (c"run", task::run),
    (c"stop", task::stop),
    (c"sleep", task::sleep),
    (c"now", task::now),
    (c"running", task::running),
    (c"prepare_wait", task::prepare_wait),
    (c"suspend", task::suspend),
    (c"wake", task::wake),
    (c"report", task::report),
    (c"pack", msgpack::pack),
    (c"unpack", msgpack::unpack),
    (c"array", msgpack::array),
    (c"is_array", msgpack::is_array),
    (c"codec_limits", msgpack::codec_limits),
    (c"resolve", address::resolve),
    (c"hmac_sha256", auth::hmac_sha256),
    (c"hmac_verify", auth::hmac_verify),
    (c"random_bytes", auth::random_bytes),
    (c"hash64", hash::hash64_lua),
    (c"log_write", log::log_write),
    (c"log_configure", log::log_configure),
    (c"log_flush", log::log_flush),
    (c"log_stats", log::log_stats),
    (c"tcp_listen", tcp::listen),
    (c"tcp_connect", tcp::connect),
    (c"udp_bind", udp::bind),
    (c"udp_connect", udp::connect),
    (c"unix_listen", unix::listen),
    (c"unix_connect", unix::connect),
    (c"unix_bind", unix::bind),
    (c"unix_datagram", unix::datagram),
    (c"faults_injected", faults::injected),
    (c"tls_client_config", tls::new_client_config),
    (c"tls_server_config", tls::new_server_config),
    (c"tls_wrap", tls::wrap),
];

unsafe fn open(l: *mut lua_State) -> c_int {
    // One loop per Lua state: loading the module again (busted's insulation clears
    // package.loaded) must return the same one, or old handles would name new sockets.
    if ffi::lua_getfield(l, ffi::LUA_REGISTRYINDEX, MODULE_KEY.as_ptr()) == ffi::LUA_TTABLE {
        return 1;
    }
    ffi::lua_pop(l, 1);
    let reactor = match Reactor::new() {
        Ok(r) => Box::into_raw(Box::new(r)),
        Err(e) => {
            let msg = format!("luanet: cannot create the event loop: {e}");
            ffi::lua_pushlstring(l, msg.as_ptr().cast(), msg.len());
            drop(msg);
            ffi::lua_error(l)
        }
    };
    let slot = ffi::lua_newuserdatauv(l, std::mem::size_of::<ReactorSlot>(), 0) as *mut ReactorSlot;
    slot.write(ReactorSlot { reactor });
    ffi::lua_createtable(l, 0, 1);
    ffi::lua_pushcfunction(l, reactor_gc);
    ffi::lua_setfield(l, -2, c"__gc".as_ptr());
    ffi::lua_setmetatable(l, -2);
    let reactor_idx = ffi::lua_gettop(l);
    // Kept in the registry so it lives (and is finalized) with the state, not the module table.
    ffi::lua_pushvalue(l, reactor_idx);
    ffi::lua_setfield(l, ffi::LUA_REGISTRYINDEX, c"luanet.reactor".as_ptr());

    msgpack::register(l);
    let stream_methods: Vec<_> = stream::METHODS.iter().chain(stream::BUFFER_METHODS).chain(tls::METHODS).copied().collect();
    let datagram_methods: Vec<_> = datagram::METHODS.iter().chain(stream::BUFFER_METHODS).copied().collect();
    socket::register_metatable(l, reactor_idx, c"luanet.listener", listener::METHODS);
    socket::register_metatable(l, reactor_idx, c"luanet.stream", &stream_methods);
    socket::register_metatable(l, reactor_idx, c"luanet.datagram", &datagram_methods);

    ffi::lua_createtable(l, 0, FUNCTIONS.len() as c_int + 1);
    for (name, f) in FUNCTIONS {
        set_closure(l, reactor_idx, name, *f);
    }
    ffi::lua_pushlightuserdata(l, lua::sentinel_ptr());
    ffi::lua_setfield(l, -2, c"SENTINEL".as_ptr());
    ffi::lua_pushvalue(l, -1);
    ffi::lua_setfield(l, ffi::LUA_REGISTRYINDEX, MODULE_KEY.as_ptr());
    1
}

const MODULE_KEY: &CStr = c"luanet.core.module";

/// `require "luanet.core"`
///
/// # Safety
/// Called by Lua's module loader with a valid state.
#[no_mangle]
pub unsafe extern "C-unwind" fn luaopen_luanet_core(l: *mut lua_State) -> c_int {
    open(l)
}
