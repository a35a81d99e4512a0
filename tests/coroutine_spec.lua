-- User coroutines inside tasks: coroutine.wrap / coroutine.resume pass luanet's waits
-- (sleep, channel, socket reads) through to the loop while still receiving their ordinary
-- yields; errors propagate; <close> variables of abandoned tasks run (stopped tasks when the
-- Lua state closes, deadlocked tasks when run() gives up on them), checked in child processes.

local luanet = require "luanet"
local H = require "helper"

describe("user coroutines inside tasks", function()
  it("coroutine.wrap gets its yields while luanet.sleep suspends the whole task", function()
    H.run(function()
      local ticks = 0
      local going = true
      H.go(function() while going do ticks = ticks + 1; luanet.sleep(0.005) end end)
      local gen = coroutine.wrap(function()
        for i = 1, 3 do
          luanet.sleep(0.03)
          coroutine.yield(i)
        end
        return "done"
      end)
      local got = {}
      local t0 = luanet.now()
      for _ = 1, 4 do got[#got + 1] = gen() end
      going = false
      assert.same({ 1, 2, 3, "done" }, got)
      assert.is_true(luanet.now() - t0 >= 0.085)
      assert.is_true(ticks >= 5, "other task did not run during the sleeps: " .. ticks)
    end)
  end)

  it("coroutine.resume passes values both ways around a luanet wait", function()
    H.run(function()
      local co = coroutine.create(function(a)
        local b = coroutine.yield(a + 1)
        luanet.sleep(0.01)
        local ch = luanet.channel(1)
        H.go(function() luanet.sleep(0.01); ch:send(b * 10) end)
        local c = coroutine.yield(ch:recv(2))
        return "end", c
      end)
      assert.same({ true, 2 }, { coroutine.resume(co, 1) })
      assert.equals("suspended", coroutine.status(co))
      assert.same({ true, 50 }, { coroutine.resume(co, 5) })
      assert.same({ true, "end", "x" }, { coroutine.resume(co, "x") })
      assert.equals("dead", coroutine.status(co))
      assert.same({ false, "cannot resume dead coroutine" }, { coroutine.resume(co) })
    end)
  end)

  it("a socket read inside a wrapped coroutine blocks only until data arrives", function()
    H.run(function()
      local client, server = H.pair()
      H.go(function() luanet.sleep(0.05); client:write("line one\nline two\n") end)
      local reader = coroutine.wrap(function()
        while true do
          local line, err = server:read_line(2)
          if not line then return nil, err end
          coroutine.yield(line)
        end
      end)
      local t0 = luanet.now()
      assert.equals("line one", reader())
      assert.is_true(luanet.now() - t0 >= 0.045)
      assert.equals("line two", reader())
      client:close()
      assert.same({ nil, "closed" }, H.two(reader()))
      server:close()
    end)
  end)

  it("nested coroutines and pcall inside them pass waits through", function()
    H.run(function()
      local outer = coroutine.wrap(function()
        local inner = coroutine.wrap(function()
          local ok, v = pcall(function()
            luanet.sleep(0.01)
            coroutine.yield("inner-1")
            luanet.yield()
            return "inner-ret"
          end)
          coroutine.yield(ok and v)
        end)
        coroutine.yield(inner())
        luanet.sleep(0.01)
        coroutine.yield(inner())
        return "outer-ret"
      end)
      assert.equals("inner-1", outer())
      assert.equals("inner-ret", outer())
      assert.equals("outer-ret", outer())
    end)
  end)

  it("errors inside wrap propagate to the caller, and resume returns them", function()
    H.run(function()
      local f = coroutine.wrap(function()
        luanet.sleep(0.01)
        error("inner-err-42")
      end)
      local ok, e = pcall(f)
      assert.is_false(ok)
      assert.truthy(tostring(e):find("inner-err-42", 1, true), tostring(e))

      local obj = {}
      local co = coroutine.create(function() luanet.yield(); error(obj) end)
      local r = { coroutine.resume(co) }
      assert.same({ false, obj }, r)
      assert.equals(obj, r[2])
      assert.equals("dead", coroutine.status(co))
      luanet.sleep(0.01) -- the task itself is intact
    end)
  end)

  it("outside a task, ordinary coroutines work and luanet waits in them raise", function()
    local gen = coroutine.wrap(function() coroutine.yield(1); coroutine.yield(2) end)
    assert.equals(1, gen())
    assert.equals(2, gen())
    local ok, e = coroutine.resume(coroutine.create(function() luanet.sleep(0.01) end))
    assert.is_false(ok)
    assert.truthy(tostring(e):find("not inside a luanet task", 1, true), tostring(e))
  end)
end)

describe("<close> variables of abandoned tasks", function()
  it("run when the Lua state closes after stop()", function()
    local r = H.child([[
      local luanet = require "luanet"
      local function closer(name)
        return setmetatable({}, { __close = function() print("closed " .. name) end })
      end
      local l = assert(luanet.tcp.listen("127.0.0.1:0"))
      luanet.spawn(function() local _ <close> = closer("sleeper"); luanet.sleep(30) end)
      luanet.spawn(function() local _ <close> = closer("acceptor"); l:accept() end)
      luanet.spawn(function()
        local _ <close> = closer("wrapped")
        coroutine.wrap(function() luanet.sleep(30) end)()
      end)
      luanet.spawn(function() luanet.sleep(0.05); luanet.stop() end)
      luanet.run()
      print("after run")
    ]], 5)
    assert.is_true(r.ok, "child failed or hung: " .. r.out .. r.err)
    local after = r.out:find("after run", 1, true)
    assert.truthy(after, r.out)
    for _, name in ipairs({ "sleeper", "acceptor", "wrapped" }) do
      local at = r.out:find("closed " .. name, 1, true)
      assert.truthy(at, name .. "'s <close> did not run at state close: " .. r.out)
      assert.is_true(at > after, "stop() closed " .. name .. " (tasks must keep their state)")
    end
  end)

  it("run for a task deadlocked inside a user coroutine", function()
    local r = H.child([[
      local luanet = require "luanet"
      local ch = luanet.channel(1)
      luanet.run(function()
        local _ <close> = setmetatable({}, { __close = function() print("closed task") end })
        coroutine.wrap(function() ch:recv() end)()
        print("woke")
      end)
      print("after run")
    ]], 5)
    assert.is_true(r.ok, "child failed or hung: " .. r.out .. r.err)
    local a, b = r.out:find("closed task", 1, true), r.out:find("after run", 1, true)
    assert.truthy(a, r.out)
    assert.truthy(b, r.out)
    assert.is_true(a < b)
    assert.is_nil(r.out:find("woke", 1, true))
  end)
end)
