//! Drives the real loop from Rust: a Lua state with the core opened, Lua snippets as tasks.
//! (The busted specs in this folder cover the Lua API; these pin down the reactor itself.)

use std::ffi::CString;
use std::time::Instant;

use luanet_core::lua::ffi;

struct State(*mut ffi::lua_State);

impl State {
    fn new() -> State {
        unsafe {
            let l = ffi::luaL_newstate();
            assert!(!l.is_null());
            ffi::luaL_openlibs(l);
            // Make `require "luanet.core"` resolve to this build's luaopen.
            ffi::luaL_requiref(l, c"luanet.core".as_ptr(), luanet_core::luaopen_luanet_core, 0);
            ffi::lua_setglobal(l, c"core".as_ptr());
            State(l)
        }
    }

    /// Runs `code`; returns its first result as a string, or the error.
    fn eval(&self, code: &str) -> Result<String, String> {
        let code = CString::new(code).unwrap();
        unsafe {
            let l = self.0;
            let top = ffi::lua_gettop(l);
            let status = ffi::luaL_loadstring(l, code.as_ptr());
            let status = if status == ffi::LUA_OK { ffi::lua_pcall(l, 0, 1, 0) } else { status };
            let text = luanet_core::lua::lossy(l, -1);
            ffi::lua_settop(l, top);
            if status == ffi::LUA_OK { Ok(text) } else { Err(text) }
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        unsafe { ffi::lua_close(self.0) }
    }
}

#[test]
fn timers_wake_tasks_in_deadline_order() {
    let s = State::new();
    let order = s
        .eval(
            r#"
            local out = {}
            for _, ms in ipairs { 30, 10, 20 } do
              core.spawn(coroutine.create(function() core.sleep(ms / 1000) out[#out + 1] = ms end))
            end
            core.run()
            return table.concat(out, ",")
            "#,
        )
        .unwrap();
    assert_eq!(order, "10,20,30");
}

#[test]
fn hundred_thousand_sleeping_tasks_are_cheap() {
    let s = State::new();
    let start = Instant::now();
    let woke = s
        .eval(
            r#"
            local woke = 0
            for i = 1, 100000 do
              core.spawn(coroutine.create(function() core.sleep((i % 50) / 1000) woke = woke + 1 end))
            end
            core.run()
            return woke
            "#,
        )
        .unwrap();
    assert_eq!(woke, "100000");
    assert!(start.elapsed().as_secs_f64() < 5.0, "took {:?}", start.elapsed());
}

#[test]
fn a_socket_wait_keeps_the_loop_alive_and_a_close_wakes_it() {
    let s = State::new();
    let got = s
        .eval(
            r#"
            local l = assert(core.tcp_listen("127.0.0.1:0"))
            local result
            core.spawn(coroutine.create(function() local c, err = l:accept() result = err end))
            core.spawn(coroutine.create(function() core.sleep(0.02) l:close() end))
            core.run()
            return result
            "#,
        )
        .unwrap();
    assert_eq!(got, "closed");
}

#[test]
fn blocking_outside_a_task_is_an_error_and_registers_nothing() {
    let s = State::new();
    let err = s.eval("core.sleep(1)").unwrap_err();
    assert!(err.contains("not inside a luanet task"), "{err}");
    // Nothing was left behind: run returns at once.
    let start = Instant::now();
    s.eval("core.run()").unwrap();
    assert!(start.elapsed().as_millis() < 500);
}

#[test]
fn stranded_tasks_are_closed_and_their_close_variables_run() {
    let s = State::new();
    let closed = s
        .eval(
            r#"
            closed = false
            core.spawn(coroutine.create(function()
              local guard <close> = setmetatable({}, { __close = function() closed = true end })
              core.suspend(nil, "test")       -- nobody will ever wake this
            end))
            core.run()
            return tostring(closed)
            "#,
        )
        .unwrap();
    assert_eq!(closed, "true");
}

#[test]
fn stop_returns_and_run_resumes_where_it_left_off() {
    let s = State::new();
    let got = s
        .eval(
            r#"
            local n = 0
            core.spawn(coroutine.create(function()
              for i = 1, 3 do n = i if i == 2 then core.stop() end core.sleep(0.001) end
            end))
            core.run()
            local first = n
            core.run()
            return first .. "," .. n
            "#,
        )
        .unwrap();
    assert_eq!(got, "2,3");
}
