-- Channels and conditions: FIFO order, capacity blocking senders, timeouts, close semantics
-- (waking waiters, draining queued values), cond signal/broadcast, and what run() does with
-- tasks deadlocked on a channel or cond (checked in a child process so a hang cannot stall
-- the suite).

local luanet = require "luanet"
local H = require "helper"

describe("channel", function()
  it("delivers values in FIFO order, any non-nil value including false", function()
    H.run(function()
      local ch = luanet.channel(8)
      local t = {}
      for _, v in ipairs({ 1, "two", t, false, 5.5 }) do assert.is_true(ch:send(v)) end
      assert.equals(5, #ch)
      assert.equals(5, ch:len())
      assert.equals(1, ch:recv())
      assert.equals("two", ch:recv())
      assert.equals(t, ch:recv())
      assert.equals(false, ch:recv())
      assert.equals(5.5, ch:recv())
      assert.equals(0, #ch)
    end)
  end)

  it("a full channel blocks the sender until a receiver takes a value", function()
    H.run(function()
      local ch = luanet.channel(2)
      local sent = 0
      H.go(function()
        for i = 1, 3 do assert.is_true(ch:send(i)); sent = i end
      end)
      luanet.sleep(0.05)
      assert.equals(2, sent) -- third send is blocked
      assert.equals(2, #ch)
      assert.equals(1, ch:recv())
      assert.is_true(H.wait_for(function() return sent == 3 end, 2))
      assert.equals(2, ch:recv())
      assert.equals(3, ch:recv())
    end)
  end)

  it("capacity defaults to 64", function()
    H.run(function()
      local ch = luanet.channel()
      for i = 1, 64 do assert.is_true(ch:send(i, 0.5)) end
      local el, ok, word = H.timed(ch.send, ch, 65, 0.05)
      assert.is_nil(ok)
      assert.equals("timeout", word)
      assert.is_true(el >= 0.045 and el < 0.5, "send timeout took " .. el)
    end)
  end)

  it("recv and send time out with nil, 'timeout'", function()
    H.run(function()
      local ch = luanet.channel(1)
      local el, v, word = H.timed(ch.recv, ch, 0.05)
      assert.is_nil(v)
      assert.equals("timeout", word)
      assert.is_true(el >= 0.045 and el < 0.5, "recv timeout took " .. el)
      assert.is_true(ch:send("x"))
      el, v, word = H.timed(ch.send, ch, "y", 0.05)
      assert.is_nil(v)
      assert.equals("timeout", word)
      assert.is_true(el >= 0.045 and el < 0.5, "send timeout took " .. el)
      assert.equals(1, #ch) -- the timed-out value was not queued
      assert.equals("x", ch:recv(0.1))
      assert.same({ nil, "timeout" }, H.two(ch:recv(0.01)))
    end)
  end)

  it("a value sent to a waiting receiver wakes it", function()
    H.run(function()
      local ch = luanet.channel(1)
      local got
      H.go(function() got = ch:recv(2) end)
      luanet.sleep(0.02)
      assert.is_nil(got)
      ch:send("hello")
      assert.is_true(H.wait_for(function() return got ~= nil end, 1))
      assert.equals("hello", got)
    end)
  end)

  it("close wakes every waiting receiver and sender with nil, 'closed'", function()
    H.run(function()
      local empty, full = luanet.channel(1), luanet.channel(1)
      full:send("queued")
      local results = {}
      for i = 1, 3 do
        -- (compute the result before indexing: `t[#t + 1] = f()` takes #t before f blocks)
        H.go(function() local r = { "recv", empty:recv(5) }; results[#results + 1] = r end)
        H.go(function() local r = { "send", full:send(i, 5) }; results[#results + 1] = r end)
      end
      luanet.sleep(0.02)
      assert.equals(0, #results)
      local t0 = luanet.now()
      empty:close()
      full:close()
      assert.is_true(H.wait_for(function() return #results == 6 end, 2))
      assert.is_true(luanet.now() - t0 < 0.5)
      for _, r in ipairs(results) do
        assert.same({ r[1], nil, "closed" }, { r[1], r[2], r[3] })
      end
      assert.same({ nil, "closed" }, H.two(empty:send("late")))
    end)
  end)

  it("values queued before close are still received, then nil, 'closed'", function()
    H.run(function()
      local ch = luanet.channel(4)
      ch:send(1); ch:send(2); ch:send(3)
      ch:close()
      assert.same({ nil, "closed" }, H.two(ch:send(4)))
      assert.equals(1, ch:recv())
      assert.equals(2, ch:recv())
      assert.equals(3, ch:recv())
      assert.same({ nil, "closed" }, H.two(ch:recv()))
      assert.same({ nil, "closed" }, H.two(ch:recv(1)))
    end)
  end)

  it("producer/consumer across tasks transfers every value once", function()
    H.run(function()
      local ch = luanet.channel(3)
      local got, N = {}, 1000
      H.go(function()
        for i = 1, N do assert.is_true(ch:send(i)) end
        ch:close()
      end)
      H.go(function()
        while true do
          local v = ch:recv(2)
          if v == nil then break end
          got[#got + 1] = v
        end
      end)
      assert.is_true(H.wait_for(function() return #got == N end, 5))
      for i = 1, N do assert.equals(i, got[i]) end
    end)
  end)

  it("misuse raises: nil value, capacity below 1", function()
    H.raises({ "capacity" }, luanet.channel, 0)
    H.run(function()
      local ch = luanet.channel(1)
      local e = H.raises({}, ch.send, ch, nil)
      assert.truthy(e:find("value", 1, true) or e:find("#1", 1, true), e)
    end)
  end)
end)

describe("cond", function()
  it("signal wakes the longest waiting task and reports whether it woke one", function()
    H.run(function()
      local c = luanet.cond()
      assert.is_false(c:signal())
      local woke = {}
      for _, name in ipairs({ "A", "B", "C" }) do
        H.go(function() assert.is_true(c:wait(5)); woke[#woke + 1] = name end)
        luanet.sleep(0.01)
      end
      assert.is_true(c:signal())
      luanet.sleep(0.02)
      assert.same({ "A" }, woke)
      assert.is_true(c:signal())
      luanet.sleep(0.02)
      assert.same({ "A", "B" }, woke)
      assert.equals(1, c:broadcast())
      luanet.sleep(0.02)
      assert.same({ "A", "B", "C" }, woke)
      assert.is_false(c:signal())
    end)
  end)

  it("broadcast wakes all waiters and returns how many", function()
    H.run(function()
      local c = luanet.cond()
      assert.equals(0, c:broadcast())
      local n = 0
      for _ = 1, 5 do H.go(function() assert.is_true(c:wait(5)); n = n + 1 end) end
      luanet.sleep(0.02)
      assert.equals(5, c:broadcast())
      assert.is_true(H.wait_for(function() return n == 5 end, 1))
      assert.equals(0, c:broadcast())
    end)
  end)

  it("wait times out with nil, 'timeout' and a timed-out waiter is not counted", function()
    H.run(function()
      local c = luanet.cond()
      local el, ok, word = H.timed(c.wait, c, 0.05)
      assert.is_nil(ok)
      assert.equals("timeout", word)
      assert.is_true(el >= 0.045 and el < 0.5, "wait timeout took " .. el)
      assert.is_false(c:signal())
      assert.equals(0, c:broadcast())
    end)
  end)
end)

describe("deadlock", function()
  it("run() returns when tasks wait forever on a channel or cond; their <close> runs", function()
    local r = H.child([[
      warn("@on")
      local luanet = require "luanet"
      local ch, full, cv = luanet.channel(1), luanet.channel(1), luanet.cond()
      local function closer(name)
        return setmetatable({}, { __close = function() print("closed " .. name) end })
      end
      luanet.spawn(function() local _ <close> = closer("recv"); ch:recv(); print("woke") end)
      luanet.spawn(function() local _ <close> = closer("cond"); cv:wait(); print("woke") end)
      luanet.spawn(function()
        local _ <close> = closer("send"); full:send(1); full:send(2); print("woke")
      end)
      local t0 = luanet.now()
      print("run", tostring(luanet.run()))
      print(string.format("el=%.3f", luanet.now() - t0))
    ]], 5)
    assert.is_true(r.ok, "child failed or hung (deadlock not detected?): " .. r.out .. r.err)
    assert.truthy(r.out:find("run\ttrue", 1, true), r.out)
    local el = tonumber(r.out:match("el=([%d.]+)"))
    assert.is_true(el ~= nil and el < 1, r.out)
    for _, name in ipairs({ "recv", "cond", "send" }) do
      local a = r.out:find("closed " .. name, 1, true)
      assert.truthy(a, "<close> of the task blocked in " .. name .. " did not run: " .. r.out)
      assert.is_true(a < r.out:find("run\ttrue", 1, true), "closed only after run returned")
    end
    assert.is_nil(r.out:find("woke", 1, true))
    -- "a warning names how many" (3 tasks)
    assert.truthy(r.err:find("%f[%d]3%f[%D]"), "no warning naming 3 tasks on stderr: " .. r.err)
  end)
end)
