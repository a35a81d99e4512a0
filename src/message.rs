//! Whole MessagePack values over a stream: `conn:read_message()` and
//! `conn:write_message(v)`. The wire format of services (docs/PROTOCOL.md) is a plain
//! sequence of such values.
//!
//! Reading checks before it builds: an incomplete value in the receive buffer is normal
//! (wait for more bytes); one that is not complete within `max_size` bytes is refused, so
//! a peer cannot make the buffer grow without bound.

use std::ffi::c_int;

use crate::errors;
use crate::lua::{self, ffi, lua_State, push_fail, LuaResult, Raise, Ret};
use crate::msgpack::{self, decode::{self, DecodeError}};
use crate::reactor::Reactor;
use crate::socket::{handle_at, push_closed, reactor, with_socket};
use crate::stream::{blocking_op, gather, resume, start, wait, Attempt, Deadline, Dir, Fill, Op, WRITE_DRAIN};

enum Next {
    /// A complete value: its bytes in `rbuf` (valid until consumed).
    Value(*const u8, usize),
    Closed,
    Wait,
    Fail(&'static str, String),
}

unsafe fn read_message_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32) -> Result<Attempt, Raise> {
    read_attempt(l, r, key, generation, false)
}

unsafe fn read_array_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32) -> Result<Attempt, Raise> {
    read_attempt(l, r, key, generation, true)
}

/// What unfinished messages may hold in receive buffers, over all connections of the
/// process. Each connection's own limit is the codec's max_size (16 MiB), so without this
/// ten peers each sending 15 MiB and then nothing held 150 MB until the heartbeat.
pub const PARTIAL_MESSAGES_BUDGET: usize = 64 * 1024 * 1024;

/// A connection holding no more than this of an unfinished message is never refused for
/// the budget: small requests in pieces are what every connection has.
const PARTIAL_EXEMPT: usize = 256 * 1024;

/// Counts `held` bytes of an unfinished message for this socket against the process-wide
/// budget. False when the budget is spent and this connection holds a large part of it.
fn count_partial(r: &Reactor, s: &mut crate::socket::Socket, held: usize) -> bool {
    let before = s.partial_counted();
    if before == held {
        return true;
    }
    let total = r.partial_held.get() - before + held;
    r.partial_held.set(total);
    s.set_partial_counted(held);
    total <= PARTIAL_MESSAGES_BUDGET || held <= PARTIAL_EXEMPT
}

/// The elements of an array message are pushed as values of their own (count first),
/// so a MessagePack-RPC envelope costs no Lua table.
const MAX_SPREAD: usize = 64;

unsafe fn read_attempt(l: *mut lua_State, r: &Reactor, key: usize, generation: u32, spread: bool) -> Result<Attempt, Raise> {
    let codec_limits = r.codec.limits.get();
    let next = with_socket(r, key, generation, |s| loop {
        let data = s.received();
        if !data.is_empty() {
            let mut limits = codec_limits;
            limits.max_size = s.message_limit(codec_limits.max_size);
            let window = &data[..data.len().min(limits.max_size)];
            match decode::check(window, 0, &limits) {
                Ok(end) => {
                    count_partial(r, s, 0);
                    return Next::Value(s.received().as_ptr(), end);
                }
                Err(DecodeError::Truncated) | Err(DecodeError::Forged(_)) if window.len() < limits.max_size => {}
                Err(DecodeError::Truncated) | Err(DecodeError::Forged(_)) => {
                    return Next::Fail(
                        errors::MESSAGE_TOO_LARGE,
                        format!("no complete message within {} bytes", limits.max_size),
                    )
                }
                Err(e) => return Next::Fail(msgpack::DECODE_ERROR, e.to_string()),
            }
        }
        if s.eof {
            return Next::Closed;
        }
        match gather(r, s) {
            Fill::Data(_) | Fill::Eof => continue,
            Fill::WouldBlock => {
                let held = s.received().len();
                if !count_partial(r, s, held) {
                    count_partial(r, s, 0);
                    return Next::Fail(
                        errors::MESSAGE_TOO_LARGE,
                        format!(
                            "{held} bytes into an unfinished message while unfinished messages fill the \
                             process's budget of {PARTIAL_MESSAGES_BUDGET} bytes"
                        ),
                    );
                }
                return Next::Wait;
            }
            Fill::Failed(e) => {
                let (word, detail) = errors::describe(&e);
                return Next::Fail(word, detail);
            }
        }
    });
    Ok(match next {
        None | Some(Next::Closed) => Attempt::Done(push_closed(l)),
        Some(Next::Wait) => Attempt::Wait,
        Some(Next::Fail(word, detail)) => Attempt::Done(push_fail(l, word, &detail)),
        Some(Next::Value(ptr, len)) => {
            // Copy the message out of rbuf first, as a Lua string anchored on the stack:
            // building the values allocates, an allocation can run a user's __gc, and a
            // __gc may close this very socket (freeing rbuf).
            lua::push_bytes(l, std::slice::from_raw_parts(ptr, len));
            with_socket(r, key, generation, |s| {
                if let Some(b) = s.rbuf.as_mut() {
                    b.consume(len);
                }
            });
            let copy = ffi::lua_gettop(l);
            let mut copy_len = 0usize;
            let copy_ptr = ffi::lua_tolstring(l, copy, &mut copy_len);
            let bytes = std::slice::from_raw_parts(copy_ptr.cast::<u8>(), copy_len);
            let array_mt = msgpack::push_array_mt(l);
            let pushed = if spread {
                match decode::array_len(bytes) {
                    Some((n, mut pos)) if n <= MAX_SPREAD => {
                        ffi::lua_checkstack(l, n as c_int + 2);
                        ffi::lua_pushinteger(l, n as ffi::lua_Integer);
                        for _ in 0..n {
                            pos = decode::build(l, bytes, pos, array_mt);
                        }
                        Some(n as c_int + 1)
                    }
                    _ => None,
                }
            } else {
                decode::build(l, bytes, 0, array_mt);
                Some(1)
            };
            ffi::lua_remove(l, array_mt);
            ffi::lua_remove(l, copy);
            match pushed {
                Some(n) => Attempt::Done(Ret::Values(n)),
                None => Attempt::Done(push_fail(
                    l,
                    msgpack::DECODE_ERROR,
                    &format!("expected an array of at most {MAX_SPREAD} elements"),
                )),
            }
        }
    })
}

blocking_op!(READ_MESSAGE, read_message_start, read_message_k, "read_message", Dir::Read, read_message_attempt, 2);

/// `conn:read_message([timeout]) -> value | nil, word, detail`
pub unsafe extern "C-unwind" fn read_message(l: *mut lua_State) -> c_int {
    read_message_start(l)
}

blocking_op!(READ_ARRAY, read_array_start, read_array_k, "read_array", Dir::Read, read_array_attempt, 2);

/// `conn:read_array([timeout]) -> n, v1, ..., vn | nil, word, detail`: one message that
/// must be an array (of at most 64 elements), its elements returned as values.
pub unsafe extern "C-unwind" fn read_array(l: *mut lua_State) -> c_int {
    read_array_start(l)
}

/// Queues encoded bytes (lent by `take_scratch_out`, handed back here) and reports like
/// `write`: true, a failure, or a wait for the queue to drain below the high-water mark.
unsafe fn send_encoded(l: *mut lua_State, r: &Reactor, key: usize, generation: u32, out: Vec<u8>, timeout: Option<u64>) -> LuaResult {
    let queued = with_socket(r, key, generation, |s| crate::stream::queue(s, r, key, &out));
    r.give_back_scratch_out(out);
    match queued {
        None => Ok(push_closed(l)),
        Some(Err((word, detail))) => Ok(push_fail(l, word, &detail)),
        Some(Ok(false)) => Ok(lua::push_true(l)),
        Some(Ok(true)) => {
            // The drain wait reads only the socket (index 1); the timeout travels in ctx.
            ffi::lua_settop(l, 1);
            wait(l, r, &WRITE_DRAIN, key, generation, Deadline::After(timeout))
        }
    }
}

/// Encodes the `count` values from stack index `first`; a failure names the value as
/// `{name}[i]` (or `argument #i`), counting from 1.
unsafe fn encode_run(encoder: &mut msgpack::encode::Encoder, first: c_int, count: c_int, name: &str) -> Option<String> {
    for i in 0..count {
        if let Err(e) = encoder.value(first + i) {
            let what = if name.ends_with('#') { format!("{name}{}", i + 1) } else { format!("{name}[{}]", i + 1) };
            return Some(e.describe(&what));
        }
    }
    None
}

/// `conn:write_message(value, [timeout]) -> true | nil, word, detail`: encodes `value`
/// straight into the send queue (no Lua string in between); blocks like `write` past the
/// high-water mark.
pub unsafe extern "C-unwind" fn write_message(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "write_message")?;
        let timeout = lua::opt_seconds_ms(l, 3, "write_message", "timeout")?;
        let r = reactor(l);
        let limits = r.codec.limits.get();
        let mut out = r.take_scratch_out();
        if let Err(detail) = msgpack::encode_into(l, 2, &mut out, &limits, "value") {
            r.give_back_scratch_out(out);
            return Ok(push_fail(l, msgpack::ENCODE_ERROR, &detail));
        }
        send_encoded(l, r, key, generation, out, timeout)
    })
}

/// `conn:write_call(nhead, nrest, ...) -> true | nil, word, detail`: sends one array of
/// the first `nhead` values followed by an array of the next `nrest` (nils included):
/// `write_call(3, n, 0, msgid, "Plus", ...)` is a MessagePack-RPC request carrying the
/// caller's own varargs, with no table built for them.
pub unsafe extern "C-unwind" fn write_call(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "write_call")?;
        let nhead = lua::check_integer(l, 2, "write_call", "nhead")?;
        let nrest = lua::check_integer(l, 3, "write_call", "nrest")?;
        let given = (ffi::lua_gettop(l) - 3) as i64;
        // Extra values after the counted ones are ignored (RPCCall passes its options
        // table last); fewer than counted is misuse.
        if nhead < 0 || nrest < 0 || nhead + nrest > given {
            return Err(format!("write_call: 'nhead' + 'nrest' must be 0 to {given} (the values given)"));
        }
        let r = reactor(l);
        let limits = r.codec.limits.get();
        let mut out = r.take_scratch_out();
        let array_mt = msgpack::push_array_mt(l);
        let mut encoder = msgpack::encode::Encoder::new(l, &mut out, &limits, array_mt);
        let (nhead, nrest) = (nhead as c_int, nrest as c_int);
        encoder.array_header(nhead as usize + 1);
        let mut failed = encode_run(&mut encoder, 4, nhead, "head");
        if failed.is_none() {
            encoder.array_header(nrest as usize);
            failed = encode_run(&mut encoder, 4 + nhead, nrest, "args");
        }
        ffi::lua_settop(l, 1);
        if let Some(detail) = failed {
            r.give_back_scratch_out(out);
            return Ok(push_fail(l, msgpack::ENCODE_ERROR, &detail));
        }
        send_encoded(l, r, key, generation, out, None)
    })
}

/// `conn:write_array(...) -> true | nil, word, detail`: sends its arguments as one
/// MessagePack array, nils included, with no Lua table in between (the shape of every
/// MessagePack-RPC message). Blocks like `write` past the high-water mark.
pub unsafe extern "C-unwind" fn write_array(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let (key, generation) = handle_at(l, 1, "write_array")?;
        let count = ffi::lua_gettop(l) - 1;
        let r = reactor(l);
        let limits = r.codec.limits.get();
        let mut out = r.take_scratch_out();
        let array_mt = msgpack::push_array_mt(l);
        let mut encoder = msgpack::encode::Encoder::new(l, &mut out, &limits, array_mt);
        encoder.array_header(count as usize);
        let failed = encode_run(&mut encoder, 2, count, "argument #");
        ffi::lua_settop(l, count + 1);
        if let Some(detail) = failed {
            r.give_back_scratch_out(out);
            return Ok(push_fail(l, msgpack::ENCODE_ERROR, &detail));
        }
        send_encoded(l, r, key, generation, out, None)
    })
}
