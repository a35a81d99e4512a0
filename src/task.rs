//! The task functions the Lua face builds on: spawn, run, stop, sleep, and a bare
//! suspend/wake pair from which `luanet.lua` makes channels and conditions.

use std::ffi::c_int;

use crate::lua::{self, ffi, lua_State, push_fail, Ret};
use crate::reactor::{Reason, WaitKind, Waiter};
use crate::socket::reactor;

/// `core.spawn(co, ...)`: adopts a fresh coroutine as a task; `...` become its arguments.
pub unsafe extern "C-unwind" fn spawn(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let co = ffi::lua_tothread(l, 1);
        if co.is_null() {
            return Err(lua::bad_arg(l, "luanet.spawn", 1, "co", "thread"));
        }
        if ffi::lua_status(co) != ffi::LUA_OK || ffi::lua_gettop(co) != 1 {
            return Err("luanet.spawn: the coroutine must be new (created and never resumed)".into());
        }
        let nargs = ffi::lua_gettop(l) - 1;
        if ffi::lua_checkstack(co, nargs + 1) == 0 {
            return Err("luanet.spawn: too many arguments".into());
        }
        ffi::lua_xmove(l, co, nargs);
        ffi::lua_settop(l, 1);
        reactor(l).add_task(l, co, nargs);
        Ok(Ret::Values(0))
    })
}

/// `core.run()`
pub unsafe extern "C-unwind" fn run(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let r = reactor(l);
        r.run(l)?;
        match r.interrupted() {
            Some(sig) => Ok(lua::push_fail(l, "interrupted", crate::signals::name(sig))),
            None => Ok(lua::push_true(l)),
        }
    })
}

/// `core.stop()`
pub unsafe extern "C-unwind" fn stop(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        reactor(l).request_stop();
        Ok(Ret::Values(0))
    })
}

/// `core.sleep(seconds)`: `0` is a plain yield (back of the ready queue).
pub unsafe extern "C-unwind" fn sleep(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        const F: &str = "luanet.sleep";
        let ms = match lua::opt_seconds_ms(l, 1, F, "seconds")? {
            Some(ms) => ms,
            None => return Err(lua::bad_arg(l, F, 1, "seconds", "number")),
        };
        let r = reactor(l);
        if ms == 0 {
            // Checked like a wait, but nothing is registered: the loop requeues the task.
            if r.current_task().is_none() {
                return Err(format!("{F}: not inside a luanet task (start one with luanet.spawn(fn) or luanet.run(fn))"));
            }
            if ffi::lua_isyieldable(l) == 0 {
                return Err(format!("{F}: cannot block here (inside a metamethod or C function that cannot yield)"));
            }
        } else {
            let deadline = r.deadline_after(ms);
            r.begin_wait(l, F, Some(deadline), WaitKind::Plain)?;
            return Ok(Ret::Yield(deadline as ffi::lua_KContext + 1, sleep_k));
        }
        Ok(Ret::Yield(0, sleep_k))
    })
}

/// A sleep lasts until its deadline even if something woke the task earlier.
unsafe extern "C-unwind" fn sleep_k(l: *mut lua_State, _status: c_int, ctx: ffi::lua_KContext) -> c_int {
    lua::entry(l, || {
        ffi::lua_settop(l, 0);
        let r = reactor(l);
        if ctx > 0 {
            let deadline = ctx as u64 - 1;
            if r.now_ms() < deadline {
                r.begin_wait(l, "luanet.sleep", Some(deadline), WaitKind::Plain)?;
                return Ok(Ret::Yield(ctx, sleep_k));
            }
        }
        Ok(Ret::Values(0))
    })
}

/// `core.now()`: monotonic seconds.
pub unsafe extern "C-unwind" fn now(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        ffi::lua_pushnumber(l, reactor(l).timers.borrow().now_seconds());
        Ok(Ret::Values(1))
    })
}

/// `core.running()`: the running task's coroutine, or nil.
pub unsafe extern "C-unwind" fn running(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let r = reactor(l);
        match r.current_task() {
            Some(task) if r.push_task_thread(l, task) => {}
            _ => ffi::lua_pushnil(l),
        }
        Ok(Ret::Values(1))
    })
}

/// `core.prepare_wait(what)`: the task id and the number of the wait the next `suspend`
/// will start, for a waiter list. Raises outside a task.
pub unsafe extern "C-unwind" fn prepare_wait(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let r = reactor(l);
        let what = if lua::is_none_or_nil(l, 1) { "wait" } else { lua::check_str(l, 1, "prepare_wait", "what")? };
        let Some(task) = r.current_task() else {
            return Err(format!("{what}: not inside a luanet task (start one with luanet.spawn(fn) or luanet.run(fn))"));
        };
        // Every check `suspend` makes, made before the caller lists this wait anywhere: a
        // listed wait that then fails to start would take a later signal meant for others.
        if ffi::lua_isyieldable(l) == 0 {
            return Err(format!("{what}: cannot block here (inside a metamethod or C function that cannot yield)"));
        }
        lua::opt_seconds_ms(l, 2, what, "timeout")?;
        let (id, next_wait) = match (r.task_id(task), r.next_wait(task)) {
            (Some(id), Some(w)) => (id, w),
            _ => return Err(format!("{what}: the running task is gone")),
        };
        ffi::lua_pushinteger(l, id);
        ffi::lua_pushinteger(l, next_wait as ffi::lua_Integer);
        Ok(Ret::Values(2))
    })
}

/// `core.suspend(timeout, what, idle, background)`: waits until `wake` or the timeout;
/// returns true, or nil, "timeout". An `idle` wait (a parked worker) is closed quietly
/// when `run` finds nothing left to do; a `background` one (a heartbeat) does not keep
/// `run` going and outlives it.
pub unsafe extern "C-unwind" fn suspend(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let what = if lua::is_none_or_nil(l, 2) { "wait" } else { lua::check_str(l, 2, "suspend", "what")? };
        let ms = lua::opt_seconds_ms(l, 1, what, "timeout")?;
        let idle = ffi::lua_toboolean(l, 3) != 0;
        let kind = if ffi::lua_toboolean(l, 4) != 0 { WaitKind::Background } else { WaitKind::Plain };
        let r = reactor(l);
        let deadline = ms.map(|ms| r.deadline_after(ms));
        let waiter = r.begin_wait(l, what, deadline, kind)?;
        r.mark_idle(waiter.task(), idle);
        Ok(Ret::Yield(0, suspend_k))
    })
}

unsafe extern "C-unwind" fn suspend_k(l: *mut lua_State, _status: c_int, _ctx: ffi::lua_KContext) -> c_int {
    lua::entry(l, || {
        ffi::lua_settop(l, 0);
        if reactor(l).wake_reason() == Reason::Timeout {
            return Ok(push_fail(l, crate::errors::TIMEOUT, "the wait timed out"));
        }
        Ok(lua::push_true(l))
    })
}

/// `core.wake(id, wait)`: resumes that wait if it is still in progress; returns whether it was.
pub unsafe extern "C-unwind" fn wake(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let id = lua::check_integer(l, 1, "wake", "id")?;
        let wait = lua::check_integer(l, 2, "wake", "wait")?;
        let r = reactor(l);
        let woke = match r.task_from_id(id) {
            Some(task) => r.wake(Waiter::new(task, wait as u32), Reason::Ready),
            None => false,
        };
        ffi::lua_pushboolean(l, woke as c_int);
        Ok(Ret::Values(1))
    })
}

/// `core.report(text, [level])`: one of luanet's own events, logged under the logger
/// "luanet" at `level` ("info", "warn" (the default) or "error").
pub unsafe extern "C-unwind" fn report(l: *mut lua_State) -> c_int {
    lua::entry(l, || {
        let level = match lua::is_none_or_nil(l, 2) {
            true => crate::log::WARN,
            false => match lua::check_str(l, 2, "report", "level")? {
                "info" => crate::log::INFO,
                "error" => crate::log::ERROR,
                _ => crate::log::WARN,
            },
        };
        crate::log::event(level, &lua::lossy(l, 1));
        Ok(Ret::Values(0))
    })
}
