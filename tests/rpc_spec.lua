-- Services (docs/services.md, docs/PROTOCOL.md): RPCCall / RegRPCFunction / SendMsg /
-- GetMsg between this process and services in child lua5.4 processes, over loopback TCP
-- and Unix sockets. Every error word, a callee killed with calls in flight, nested calls,
-- message order and flow control, a Python MessagePack-RPC client, protocol violations and
-- argument errors.
--
-- This process never becomes a service (a process can be one only once); services run in
-- children started with H.bg, which write their address to a file "addr" in their
-- directory. Settings changed here with luanet.configure are restored after the test.

local luanet = require "luanet"
local H = require "helper"

local HERE = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".")
local PYTHON = "/usr/bin/python3" -- has msgpack; the python3 first on PATH may not

-- A service child. @@NAME@@, @@KIND@@ ("tcp" or "unix") and @@EXTRA@@ (code run before
-- the loop: settings, more handlers, tasks) are filled in by start_service.
local SERVICE = H.CHILD_PUT .. [==[
local luanet = require "luanet"
local NAME, KIND = @@NAME@@, @@KIND@@
local active = 0
luanet.RegRPCFunction("Plus", function(t) return t.a + t.b end)
luanet.RegRPCFunction("Echo", function(...) return luanet.array(table.pack(...)) end)
luanet.RegRPCFunction("Count", function(...) return select("#", ...) end)
luanet.RegRPCFunction("Types", function(...)
  local t, r = table.pack(...), luanet.array({})
  r.n = t.n
  for i = 1, t.n do
    local v = t[i]
    local ty = math.type(v) or type(v)
    if ty == "table" then ty = luanet.is_array(v) and "array" or "map" end
    r[i] = ty
  end
  return r
end)
luanet.RegRPCFunction("Two", function() return 1, 2 end)
luanet.RegRPCFunction("Nothing", function() end)
luanet.RegRPCFunction("Sleep", function(s, v)
  active = active + 1
  luanet.sleep(s)
  active = active - 1
  return v
end)
luanet.RegRPCFunction("Active", function() return active end)
luanet.RegRPCFunction("Raise", function(msg) error(msg) end)
luanet.RegRPCFunction("BadResult", function() return { cb = print } end)
luanet.RegRPCFunction("Exit", function(code) os.exit(code or 0) end)
luanet.RegRPCFunction("Name", function() return luanet.service_name() end)
luanet.RegRPCFunction("Stats", function() return luanet.service_stats() end)
-- nested calls
luanet.RegRPCFunction("Relay", function(target, t)
  local r, word, detail = luanet.RPCCall(target, "Plus", t)
  if r == nil then error("relay: " .. tostring(word) .. ": " .. tostring(detail), 0) end
  return r * 10
end)
luanet.RegRPCFunction("Double", function(x) return 2 * x end)
luanet.RegRPCFunction("AskBack", function(caller, x)
  return assert(luanet.RPCCall(caller, "Double", x)) + 1
end)
luanet.RegRPCFunction("Start", function(target, x)
  return assert(luanet.RPCCall(target, "AskBack", NAME, x)) + 1000
end)
-- messages
luanet.RegRPCFunction("Inbox", function(t)
  local m, sender = luanet.GetMsg(t)
  return { msg = m, sender = sender }
end)
luanet.RegRPCFunction("Drain", function(t)
  local n, last, inorder = 0, 0, true
  while true do
    local m = luanet.GetMsg(t)
    if m == nil then break end
    n = n + 1
    if m.i ~= last + 1 then inorder = false end
    last = m.i
  end
  return { count = n, inorder = inorder }
end)
@@EXTRA@@
luanet.spawn(function() luanet.sleep(25) os.exit(3) end) -- never outlive the suite
luanet.run(function()
  local addr = KIND == "unix" and (DIR .. "/svc.sock") or "127.0.0.1:0"
  assert(luanet.StartLocalService(NAME, addr))
  put("addr", KIND == "unix" and addr or luanet.service_listener:local_addr())
end)
]==]

local seq = 0
local function uniq(base)
  seq = seq + 1
  return base .. seq
end

-- Starts a service child (inside H.run); returns the H.bg object with .addr and .name.
local function start_service(opts)
  opts = opts or {}
  local name = opts.name or uniq("Svc")
  local src = SERVICE:gsub("@@(%u+)@@", {
    NAME = ("%q"):format(name),
    KIND = ("%q"):format(opts.kind or "tcp"),
    EXTRA = opts.extra or "",
  })
  local p = H.bg(src)
  assert(H.wait_for(function() return p.file("addr") ~= "" end, 5),
    "service child did not start: " .. p.file("err"))
  p.addr, p.name = p.file("addr"), name
  return p
end

-- Runs fn with process-wide settings changed, then puts them back.
local function with_config(t, fn)
  local saved = luanet.configure({})
  local old = {}
  for k in pairs(t) do old[k] = saved[k] end
  luanet.configure(t)
  local ok, e = pcall(fn)
  luanet.configure(old)
  if not ok then error(e, 0) end
end

local function drain_inbox()
  while luanet.GetMsg(0) ~= nil do end
end

local GONE = { closed = true, ["connection reset"] = true }

describe("services: calls", function()
  it("RPCCall(addr, 'Plus', {a=1,b=2}) == 3 over TCP, Unix paths and the service's name", function()
    H.run(function()
      local tcp = start_service()
      assert.equals(3, luanet.RPCCall(tcp.addr, "Plus", { a = 1, b = 2 }))
      assert.equals("integer", math.type(luanet.RPCCall(tcp.addr, "Plus", { a = 1, b = 2 })))
      assert.equals(3.5, luanet.RPCCall("tcp://" .. tcp.addr, "Plus", { a = 1.5, b = 2 }))
      -- the service introduced itself: its name is now a target too
      assert.equals(7, luanet.RPCCall(tcp.name, "Plus", { a = 3, b = 4 }))
      assert.equals(tcp.name, luanet.RPCCall(tcp.name, "Name"))

      local unix = start_service({ kind = "unix" })
      assert.equals("/", unix.addr:sub(1, 1))
      assert.equals(3, luanet.RPCCall(unix.addr, "Plus", { a = 1, b = 2 }))
      assert.equals(5, luanet.RPCCall("unix:" .. unix.addr, "Plus", { a = 2, b = 3 }))
      assert.equals(unix.name, luanet.RPCCall(unix.name, "Name"))

      -- many concurrent calls on the one shared connection, each gets its own answer
      local got, done = {}, 0
      for i = 1, 200 do
        H.go(function()
          got[i] = luanet.RPCCall(tcp.addr, "Sleep", 0.2, i)
          done = done + 1
        end)
      end
      local el = H.timed(H.wait_for, function() return done == 200 end, 5)
      assert.equals(200, done)
      assert.is_true(el < 2, "200 concurrent 0.2 s calls took " .. el .. " s")
      for i = 1, 200 do assert.equals(i, got[i]) end
    end, 10)
  end)

  it("arguments and results round-trip: nils, nesting, binary, floats vs integers, empties", function()
    H.run(function()
      local s = start_service()
      local a = s.addr
      -- multiple arguments, nils in the middle and at the end
      local r = luanet.RPCCall(a, "Echo", 1, "two", { 3 }, nil, 5.5, nil)
      assert.equals(6, r.n)
      assert.same({ 1, "two", { 3 }, nil, 5.5, nil }, { r[1], r[2], r[3], r[4], r[5], r[6] })
      assert.equals(0, luanet.RPCCall(a, "Count"))
      assert.equals(1, luanet.RPCCall(a, "Count", nil))
      assert.equals(2, luanet.RPCCall(a, "Count", nil, nil))
      assert.equals(2, luanet.RPCCall(a, "Count", 1, nil))
      assert.equals(3, luanet.RPCCall(a, "Count", nil, 1, nil))
      -- call_options is not an argument; a plain table last is
      assert.equals(0, luanet.RPCCall(a, "Count", luanet.call_options({ timeout = 2 })))
      assert.equals(1, luanet.RPCCall(a, "Count", nil, luanet.call_options({ timeout = 2 })))
      assert.equals(1, luanet.RPCCall(a, "Count", { timeout = 2 }))

      -- what the handler sees
      local types = luanet.RPCCall(a, "Types", 1, 1.0, 2 ^ 53, -0.0, math.huge, 0 / 0,
        math.maxinteger, math.mininteger, "s", "\xff\xfe", true, false, {}, luanet.array(), { 1 }, nil)
      assert.same({ "integer", "float", "float", "float", "float", "float", "integer", "integer",
        "string", "string", "boolean", "boolean", "map", "array", "array", "nil" },
        { table.unpack(types, 1, 16) })

      -- what comes back
      local allbytes = {}
      for i = 0, 255 do allbytes[#allbytes + 1] = string.char(i) end
      allbytes = table.concat(allbytes)
      local big = ("\0\255\1\254"):rep(256 * 1024) -- 1 MiB, not UTF-8
      local nested = { a = { b = { c = { 1, 2, { d = "x" } } } }, [1.5] = "float key",
        [true] = "bool key", [-7] = "neg", list = { "p", "q" } }
      r = luanet.RPCCall(a, "Echo", 3, 3.0, -0.0, math.huge, -math.huge, 0 / 0, math.maxinteger,
        math.mininteger, allbytes, "h\xc3\xa9llo", "a\0b", big, nested, {}, luanet.array(), "")
      assert.is_nil(r.n) -- no nils: a plain array
      assert.equals(16, #r)
      assert.equals("integer", math.type(r[1])); assert.equals(3, r[1])
      assert.equals("float", math.type(r[2])); assert.equals(3.0, r[2])
      assert.equals(-math.huge, 1 / r[3])
      assert.equals(math.huge, r[4]); assert.equals(-math.huge, r[5])
      assert.is_true(r[6] ~= r[6])
      assert.equals(math.maxinteger, r[7]); assert.equals(math.mininteger, r[8])
      assert.equals(allbytes, r[9])
      assert.equals("h\xc3\xa9llo", r[10])
      assert.equals("a\0b", r[11])
      assert.is_true(r[12] == big, "1 MiB binary string changed")
      assert.same(nested, r[13])
      assert.is_false(luanet.is_array(r[14])); assert.is_nil(next(r[14]))
      assert.is_true(luanet.is_array(r[15])); assert.is_nil(next(r[15]))
      assert.equals("", r[16])

      -- results: only the first value; nil is a success with no error word
      local v, word = luanet.RPCCall(a, "Two")
      assert.equals(1, v); assert.is_nil(word)
      v, word = luanet.RPCCall(a, "Nothing")
      assert.is_nil(v); assert.is_nil(word)
      assert.same({ x = { y = { 1, 2.5, "z" } } },
        luanet.RPCCall(a, "Echo", { x = { y = { 1, 2.5, "z" } } })[1])
    end, 10)
  end)

  it("nested calls: a handler calls another service, and calls its caller back over the same connection", function()
    H.run(function()
      local b = start_service()
      local a = start_service()
      local c = start_service()
      -- parent -> a.Relay -> b.Plus
      assert.equals(30, luanet.RPCCall(a.addr, "Relay", b.addr, { a = 1, b = 2 }))
      -- parent -> c.Start -> a.AskBack -> c.Double (by name: a never dials c)
      assert.equals(1011, luanet.RPCCall(c.addr, "Start", a.addr, 5))
      -- an error deep down comes back as a remote error naming it
      local v, word, detail = luanet.RPCCall(a.addr, "Relay", "127.0.0.1:" .. H.free_port(), { a = 1, b = 1 })
      assert.is_nil(v)
      assert.equals("remote error", word)
      assert.matches("no such service", detail, 1, true)
    end, 10)
  end)
end)

describe("services: error words", function()
  it("timeout: call_options and call_timeout; a late reply is dropped and the connection works", function()
    H.run(function()
      local s = start_service()
      -- call A times out; its reply arrives while call B waits on the same connection
      local el, v, word = H.timed(luanet.RPCCall, s.addr, "Sleep", 0.5, "A", luanet.call_options({ timeout = 0.15 }))
      assert.same({ nil, "timeout" }, { v, word })
      assert.is_true(el >= 0.14 and el < 0.45, "timeout after " .. el)
      el, v, word = H.timed(luanet.RPCCall, s.addr, "Sleep", 0.6, "B", luanet.call_options({ timeout = 3 }))
      assert.same({ "B", nil }, { v, word })
      assert.equals(3, luanet.RPCCall(s.addr, "Plus", { a = 1, b = 2 }))
      -- the default comes from configure{call_timeout}
      with_config({ call_timeout = 0.2 }, function()
        el, v, word = H.timed(luanet.RPCCall, s.addr, "Sleep", 1, "C")
        assert.same({ nil, "timeout" }, { v, word })
        assert.is_true(el >= 0.19 and el < 0.6, "timeout after " .. el)
      end)
      assert.equals(5, luanet.configure({}).call_timeout)
      luanet.sleep(0.9) -- C's late reply comes and goes
      assert.equals(3, luanet.RPCCall(s.addr, "Plus", { a = 1, b = 2 }))
    end, 10)
  end)

  it("no such service: a refused TCP port, a missing Unix path, an unknown name", function()
    H.run(function()
      local dir = H.tmpdir()
      for _, target in ipairs({ "127.0.0.1:" .. H.free_port(), "tcp://127.0.0.1:" .. H.free_port(),
        dir .. "/none.sock", "unix:" .. dir .. "/none.sock", "NoSuchServiceName", "localhost" }) do
        local el, v, word = H.timed(luanet.RPCCall, target, "Plus", { a = 1, b = 2 })
        assert.same({ nil, "no such service" }, { v, word }, target)
        assert.is_true(el < 1, target .. " took " .. el)
        assert.same({ nil, "no such service" }, H.two(luanet.SendMsg(target, "hi")), target)
      end
      H.rmdir(dir)
    end, 10)
  end)

  it("no such function, remote error (with the message), encode error (naming args[...])", function()
    H.run(function()
      local s = start_service()
      local v, word, detail = luanet.RPCCall(s.addr, "NoSuchFunc", 1)
      assert.same({ nil, "no such function" }, { v, word })
      assert.matches("NoSuchFunc", detail, 1, true)

      v, word, detail = luanet.RPCCall(s.addr, "Raise", "boom 42")
      assert.same({ nil, "remote error" }, { v, word })
      assert.matches("boom 42", detail, 1, true)

      v, word, detail = luanet.RPCCall(s.addr, "Echo", { cb = print })
      assert.same({ nil, "encode error" }, { v, word })
      assert.matches("args[1].cb", detail, 1, true)
      v, word, detail = luanet.RPCCall(s.addr, "Echo", 1, nil, function() end)
      assert.same({ nil, "encode error" }, { v, word })
      assert.matches("args[3]", detail, 1, true)
      local selfref = {}
      selfref.me = selfref
      assert.same({ nil, "encode error" }, H.two(luanet.RPCCall(s.addr, "Echo", selfref)))
      -- the result cannot be encoded
      v, word = luanet.RPCCall(s.addr, "BadResult")
      assert.same({ nil, "encode error" }, { v, word })
      -- SendMsg names the message
      v, word, detail = luanet.SendMsg(s.addr, { 1, { f = print } })
      assert.same({ nil, "encode error" }, { v, word })
      assert.matches("msg", detail, 1, true)
      -- nothing half-sent: the connection still works
      assert.equals(3, luanet.RPCCall(s.addr, "Plus", { a = 1, b = 2 }))
    end, 10)
  end)

  it("connection lost: reported at once when the callee exits, then no such service", function()
    H.run(function()
      local s = start_service()
      assert.equals(3, luanet.RPCCall(s.addr, "Plus", { a = 1, b = 2 }))
      local other
      H.go(function() other = { H.timed(luanet.RPCCall, s.addr, "Sleep", 10, "x") } end)
      luanet.sleep(0.05)
      local el, v, word = H.timed(luanet.RPCCall, s.addr, "Exit", 0)
      assert.same({ nil, "connection lost" }, { v, word })
      assert.is_true(el < 1, "connection lost after " .. el)
      assert.is_true(H.wait_for(function() return other ~= nil end, 1))
      assert.same({ nil, "connection lost" }, { other[2], other[3] })
      -- once the process is gone (until then its listener may still take a connection)
      assert.is_true(H.wait_for(function() return not s.alive() end, 3), "the service did not exit")
      assert.same({ nil, "no such service" }, H.two(luanet.RPCCall(s.addr, "Plus", { a = 1, b = 2 })))
      assert.same({ nil, "no such service" }, H.two(luanet.RPCCall(s.name, "Plus", { a = 1, b = 2 })))
    end, 10)
  end)

  it("overloaded past max_handlers; the count recovers after errors and finished calls", function()
    H.run(function()
      local s = start_service({ extra = "luanet.configure{ max_handlers = 3 }" })
      -- handlers that raise give their slot back
      for _ = 1, 5 do assert.equals("remote error", select(2, luanet.RPCCall(s.addr, "Raise", "x"))) end
      local res = {}
      for i = 1, 3 do H.go(function() res[i] = { luanet.RPCCall(s.addr, "Sleep", 0.5, i) } end) end
      luanet.sleep(0.2) -- the three requests go out and their handlers start
      assert.is_nil(res[1] or res[2] or res[3], "a Sleep call ended early")
      local el, v, word = H.timed(luanet.RPCCall, s.addr, "Plus", { a = 1, b = 2 })
      assert.same({ nil, "overloaded" }, { v, word })
      assert.is_true(el < 0.3)
      assert.is_true(H.wait_for(function() return res[1] and res[2] and res[3] end, 3))
      for i = 1, 3 do assert.same({ i }, res[i]) end
      assert.equals(3, luanet.RPCCall(s.addr, "Plus", { a = 1, b = 2 }))
    end, 10)
  end)

  for _, kind in ipairs({ "tcp", "unix" }) do
    it("a callee killed (SIGKILL) with 20 calls in flight: all get connection lost at once (" .. kind .. ")", function()
      H.run(function()
        local s = start_service({ kind = kind })
        local res, done = {}, 0
        for i = 1, 20 do
          H.go(function()
            res[i] = { H.timed(luanet.RPCCall, s.addr, "Sleep", 30, i) }
            done = done + 1
          end)
        end
        assert.is_true(H.wait_for(function() return luanet.RPCCall(s.addr, "Active") == 20 end, 3),
          "the 20 calls did not all reach the service")
        local t0 = luanet.now()
        s.kill("KILL")
        assert.is_true(H.wait_for(function() return done == 20 end, 4.5), "calls still waiting")
        local el = luanet.now() - t0
        assert.is_true(el < 1.5, "connection lost noticed after " .. el .. " s")
        for i = 1, 20 do
          assert.same({ nil, "connection lost" }, { res[i][2], res[i][3] }, "call " .. i)
          assert.is_true(res[i][1] < 4.5)
        end
        assert.is_true(H.wait_for(function() return not s.alive() end, 3))
        assert.same({ nil, "no such service" }, H.two(luanet.RPCCall(s.addr, "Plus", { a = 1, b = 2 })))
        assert.same({ nil, "no such service" }, H.two(luanet.SendMsg(s.addr, 1)))
      end, 10)
    end)
  end
end)

describe("services: messages", function()
  it("1000 messages arrive in order; replies go to the sender over the same connection", function()
    H.run(function()
      drain_inbox()
      local s = start_service({ extra = [[
luanet.spawn(function()
  while true do
    local m, sender = luanet.GetMsg()
    assert(luanet.SendMsg(sender, { echo = m, from = sender }))
  end
end)]] })
      for i = 1, 1000 do assert.is_true(luanet.SendMsg(s.addr, { i = i })) end
      local from
      for i = 1, 1000 do
        local m, sender = luanet.GetMsg(3)
        assert.is_table(m, "message " .. i .. ": " .. tostring(sender))
        assert.equals(i, m.echo.i)
        assert.equals(s.name, sender) -- a service is named by its hello
        from = from or m.from
        assert.equals(from, m.from)
      end
      -- the service saw us (not a service) under a name it could answer to
      assert.is_string(from)
      assert.not_equals("", from)
      assert.not_equals(s.name, from)
      -- any value but nil, both ways
      local values = { false, 0, 1.5, "", "\xff\x00", {}, luanet.array(), { a = { b = { 1, nil, 3 } } } }
      for _, val in ipairs(values) do assert.is_true(luanet.SendMsg(s.addr, val)) end
      for i, val in ipairs(values) do
        local m, sender = luanet.GetMsg(3)
        assert.equals(s.name, sender)
        assert.same(val, m.echo, "value " .. i)
        if type(val) == "table" then assert.equals(luanet.is_array(val), luanet.is_array(m.echo)) end
      end
      -- by name, too
      assert.is_true(luanet.SendMsg(s.name, { i = 1001 }))
      assert.equals(1001, luanet.GetMsg(3).echo.i)
    end, 15)
  end)

  it("GetMsg times out with nil, 'timeout'; SendMsg(target, nil) raises", function()
    H.run(function()
      drain_inbox()
      local el, v, word = H.timed(luanet.GetMsg, 0.15)
      assert.same({ nil, "timeout" }, { v, word })
      assert.is_true(el >= 0.14 and el < 0.6, "GetMsg(0.15) took " .. el)
      H.raises({ "SendMsg" }, luanet.SendMsg, "127.0.0.1:1", nil)
      H.raises({ "SendMsg" }, luanet.SendMsg, nil, 1)
    end, 5)
  end)

  -- stall: seconds the receiver keeps not reading after the sender gave up, before it
  -- drains (longer than three heartbeats in the second case: a receiver held back by
  -- flow control is alive, and what SendMsg accepted must still arrive).
  for _, stall in ipairs({ 0, 4 }) do
    it(("backpressure: a full receiver blocks only the sending task, which times out; bounded memory; drained after %g s"):format(stall), function()
      H.run(function()
        local recv = start_service({ kind = "unix", extra = "luanet.configure{ inbox = 8 }" })
        local function rss()
          return tonumber(H.readfile("/proc/" .. recv.pid .. "/status"):match("VmRSS:%s*(%d+)")) or 0
        end
        local rss0 = rss()
        local sender = H.bg(([==[
local luanet = require "luanet"
local TARGET = %q
local DIR = arg[0]:match("^(.*)/[^/]*$")
luanet.configure{ outbox = 64 * 1024, call_timeout = 1 }
local ticks = 0
luanet.spawn(function() while true do ticks = ticks + 1; luanet.sleep(0.01) end end)
luanet.spawn(function() luanet.sleep(25) os.exit(3) end)
luanet.run(function()
  local pad = ("x"):rep(1000)
  local sent, word, el, during = 0, "none", -1, -1
  for i = 1, 40000 do
    local t0, k0 = luanet.now(), ticks
    local ok, w = luanet.SendMsg(TARGET, { i = i, pad = pad })
    if not ok then word, el, during = tostring(w), luanet.now() - t0, ticks - k0 break end
    sent = i
  end
  local f = assert(io.open(DIR .. "/result.tmp", "w"))
  f:write(("return { sent = %%d, word = %%q, el = %%.3f, ticks = %%d }"):format(sent, word, el, during))
  f:close()
  os.rename(DIR .. "/result.tmp", DIR .. "/result")
  luanet.sleep(30) -- keep the connection (and its queued messages) alive
end)
]==]):format(recv.addr))
        assert.is_true(H.wait_for(function() return sender.file("result") ~= "" end, 8),
          "sender never finished: " .. sender.file("err"))
        local r = load(sender.file("result"))()
        assert.is_true(r.sent < 40000, "SendMsg never blocked (" .. r.sent .. " messages accepted)")
        assert.equals("timeout", r.word)
        assert.is_true(r.el >= 0.9 and r.el < 2.5, "the blocked SendMsg failed after " .. r.el .. " s")
        assert.is_true(r.ticks >= 30, "the ticker ran only " .. r.ticks .. " times while SendMsg blocked")
        -- what was accepted is bounded by the outbox and the kernel buffers, not the whole flood
        assert.is_true(r.sent * 1000 < 4 * 1024 * 1024, r.sent .. " messages accepted")
        local grew = rss() - rss0
        assert.is_true(grew < 16 * 1024, "receiver RSS grew by " .. grew .. " kB")
        luanet.sleep(stall)
        -- the receiver drains: every accepted message arrives, in order, none more
        local d = luanet.RPCCall(recv.addr, "Drain", 0.7, luanet.call_options({ timeout = 8 }))
        assert.is_table(d)
        assert.equals(r.sent, d.count)
        assert.is_true(d.inorder)
        assert.is_true(sender.alive(), "the sender died: " .. sender.file("err"))
        sender.kill("KILL")
      end, 20)
    end)
  end
end)

describe("services: interop and protocol", function()
  it("a Python MessagePack-RPC client (plain socket) calls Plus, a missing function and sends luanet.msg", function()
    H.run(function()
      local s = start_service()
      local host, port = s.addr:match("^(.*):(%d+)$")
      local p = assert(io.popen(("timeout -s KILL 15 %s %s/fixtures/rpc_client.py %s %s %s 2>&1; echo \"rc=$?\"")
        :format(PYTHON, HERE, host, port, s.name)))
      local out = p:read("a")
      p:close()
      assert.matches("OK\nrc=0\n$", out)
      -- the service still serves
      assert.equals(3, luanet.RPCCall(s.addr, "Plus", { a = 1, b = 2 }))
    end, 20)
  end)

  local function raw_client(addr)
    local c = assert(luanet.tcp.connect(addr, { timeout = 2 }))
    local hello = assert(c:read_message(2))
    return c, hello
  end

  -- The next message on a raw connection that is not a notification (luanet.ping...).
  local function next_reply(c, t)
    local deadline = luanet.now() + t
    while true do
      local v, word = c:read_message(math.max(0, deadline - luanet.now()))
      if v == nil or type(v) ~= "table" or v[1] ~= 2 then return v, word end
    end
  end

  -- Sends `bytes` on a fresh connection; true if the service then closed it without
  -- answering. Waits 1.5 s at most (the service's heartbeat would close a silent
  -- connection after 3 s).
  local function closes(addr, bytes)
    local c = raw_client(addr)
    c:write(bytes)
    local v, word = next_reply(c, 1.5)
    c:close()
    return v == nil and GONE[word] == true, v, word
  end

  -- Runs closes() for every case at once; returns the names of the cases not closed.
  local function not_closed(addr, cases)
    local bad, done = {}, 0
    for _, case in ipairs(cases) do
      H.go(function()
        local ok, v, word = closes(addr, case[2])
        if not ok then
          bad[#bad + 1] = ("%s (got %s, %s)"):format(case[1],
            type(v) == "table" and "a reply" or tostring(v), tostring(word))
        end
        done = done + 1
      end)
    end
    assert(H.wait_for(function() return done == #cases end, 5))
    table.sort(bad)
    return bad
  end

  it("garbage bytes or a MessagePack value that is not an RPC message close that connection only", function()
    H.run(function()
      local s = start_service()
      local keep, hello = raw_client(s.addr)
      assert.same({ 2, "luanet.hello", { s.name, "tcp://" .. s.addr } }, hello)
      assert.equals(3, luanet.RPCCall(s.addr, "Plus", { a = 1, b = 2 }))
      local cases = {
        { "garbage 0xc1", "\xc1\xc1\xc1\xc1" },
        { "not msgpack text", "\xc1hello\n" },
        { "nil", luanet.pack(nil) },
        { "integer", luanet.pack(42) },
        { "string", luanet.pack("hello") },
        { "map", luanet.pack({ a = 1 }) },
        { "empty array", luanet.pack(luanet.array()) },
        { "unknown kind", luanet.pack({ 7, 1, 2 }) },
        { "request without params", luanet.pack({ 0, 1, "Plus" }) },
        { "request msgid a string", luanet.pack({ 0, "x", "Plus", luanet.array() }) },
        { "request method not a string", luanet.pack({ 0, 1, 42, luanet.array() }) },
        { "notification without params", luanet.pack({ 2, "luanet.msg" }) },
      }
      keep:write(luanet.pack({ 2, "luanet.ping", luanet.array() })) -- a sign of life
      local bad = not_closed(s.addr, cases)
      assert.is_true(#bad == 0, "not closed: " .. table.concat(bad, "; "))
      -- the service keeps serving others: our own connection and the raw one
      assert.equals(3, luanet.RPCCall(s.addr, "Plus", { a = 1, b = 2 }))
      keep:write(luanet.pack({ 0, 7, "Plus", { { a = 2, b = 2 } } }))
      local reply = assert(next_reply(keep, 2))
      assert.same({ 1, 7, nil, 4 }, { reply[1], reply[2], reply[3], reply[4] })
      keep:close()
    end, 15)
  end)

  it("values that break the documented message shapes close the connection", function()
    H.run(function()
      local s = start_service()
      local args = { { a = 1, b = 2 } }
      local cases = {
        { "response with 3 elements", luanet.pack(luanet.array({ 1, 5, nil, n = 3 })) },
        { "response with 5 elements", luanet.pack({ 1, 5, false, 3, 4 }) },
        { "request with 5 elements", luanet.pack({ 0, 1, "Plus", args, "extra" }) },
        { "request msgid negative", luanet.pack({ 0, -1, "Plus", args }) },
        { "request msgid over 32 bits", luanet.pack({ 0, 1 << 32, "Plus", args }) },
        { "request msgid a float", luanet.pack({ 0, 1.5, "Plus", args }) },
        { "request params a map", luanet.pack({ 0, 1, "Plus", { a = 1, b = 2 } }) },
        { "notification method not a string", luanet.pack({ 2, 5, luanet.array() }) },
        { "notification params a map", luanet.pack({ 2, "luanet.msg", { x = 1 } }) },
        { "notification with 4 elements", luanet.pack({ 2, "some.thing", luanet.array(), 1 }) },
      }
      local bad = not_closed(s.addr, cases)
      assert.equals(3, luanet.RPCCall(s.addr, "Plus", { a = 1, b = 2 }))
      assert.is_true(#bad == 0, "not closed: " .. table.concat(bad, "; "))
    end, 15)
  end)

  it("a value over the receiver's max_size closes the connection: the caller gets connection lost", function()
    H.run(function()
      local s = start_service({ extra = "luanet.codec_limits{ max_size = 4096 }" })
      assert.equals(3, luanet.RPCCall(s.addr, "Plus", { a = 1, b = 2 }))
      local el, v, word = H.timed(luanet.RPCCall, s.addr, "Count", ("x"):rep(10000))
      assert.same({ nil, "connection lost" }, { v, word })
      assert.is_true(el < 2, "connection lost after " .. el)
      assert.equals(3, luanet.RPCCall(s.addr, "Plus", { a = 1, b = 2 })) -- a new connection
    end, 10)
  end)
end)

describe("services: one connection per pair of services", function()
  for _, kind in ipairs({ "tcp", "unix" }) do
    it("a service calls its caller back by address over the connection the caller opened (" .. kind .. ")", function()
      H.run(function()
        local a, b = start_service({ kind = kind }), start_service({ kind = kind })
        assert.equals(30, luanet.RPCCall(a.addr, "Relay", b.addr, { a = 1, b = 2 }))   -- a dials b
        assert.equals(40, luanet.RPCCall(b.addr, "Relay", a.addr, { a = 2, b = 2 }))   -- b reuses it
        local spelled = (kind == "tcp" and "tcp://" or "unix:") .. a.addr
        assert.equals(50, luanet.RPCCall(b.addr, "Relay", spelled, { a = 2, b = 3 }))
        local sa, sb = luanet.RPCCall(a.addr, "Stats"), luanet.RPCCall(b.addr, "Stats")
        assert.equals(2, sa.connections)       -- this process and b
        assert.equals(2, sb.connections)       -- this process and a
        assert.equals(0, sb.replaced)
        assert.equals(0, sb.calls_waiting)
      end, 10)
    end)
  end

  -- This process plays a service named `fake` by hand, over raw sockets: the service
  -- under test dials us (connection Y) while our own connection to it (X) has not said
  -- hello yet, the race two services dialing each other at once run into.
  for _, case in ipairs({ { fake = "Aaa", keeps = "X" }, { fake = "Zzz", keeps = "Y" } }) do
    it(("two services that dial each other keep the connection dialed by the name that sorts first (%s keeps %s)")
      :format(case.fake, case.keeps), function()
      -- Our own connections ping as often as the service expects (it closes one silent for
      -- three of its heartbeats): else the 0.6 s sleep below races its idle close.
      luanet.configure { heartbeat = 0.2 }
      finally(function() luanet.configure { heartbeat = 1 } end)
      H.run(function()
        local s = start_service({ extra = "luanet.configure{ heartbeat = 0.2 }" })
        local listener = assert(luanet.tcp.listen("127.0.0.1:0"))
        local here = listener:local_addr()
        local X = assert(luanet.tcp.connect(s.addr, { timeout = 2 }))
        assert.same({ 2, "luanet.hello", { s.name, "tcp://" .. s.addr } }, X:read_message(2))
        local running, Y = true, nil
        H.go(function()   -- the service closes connections that stay silent for 3 heartbeats
          while running do
            X:write_array(2, "luanet.ping", luanet.array())
            if Y then Y:write_array(2, "luanet.ping", luanet.array()) end
            luanet.sleep(0.05)
          end
        end)
        local function next_call(c)
          while true do
            local v, word = c:read_message(2)
            assert(v, word)
            if v[1] ~= 2 then return v end
          end
        end

        -- X asks the service to call us by address before X has said who it is: it dials.
        X:write_array(0, 1, "Relay", luanet.array { here, { a = 1, b = 2 } })
        Y = assert(listener:accept(2))
        Y:write_array(2, "luanet.hello", luanet.array { case.fake, "tcp://" .. here })
        assert.same({ 2, "luanet.hello", { s.name, "tcp://" .. s.addr } }, Y:read_message(2))
        local call = next_call(Y)
        assert.same({ 0, call[2], "Plus", { { a = 1, b = 2 } } }, call)
        -- Now X says hello (as `fake`, listening at `here`): two connections, one peer.
        X:write_array(2, "luanet.hello", luanet.array { case.fake, "tcp://" .. here })
        X:write_array(0, 2, "Name", luanet.array())
        assert.same({ 1, 2, nil, s.name, n = 4 }, next_call(X))
        Y:write_array(1, call[2], nil, 3)
        assert.same({ 1, 1, nil, 30, n = 4 }, next_call(X))

        -- The next call to us goes over the connection both ends keep.
        X:write_array(0, 3, "Relay", luanet.array { here, { a = 2, b = 2 } })
        local kept = case.keeps == "X" and X or Y
        call = next_call(kept)
        assert.equals("Plus", call[3])
        kept:write_array(1, call[2], nil, 4)
        assert.same({ 1, 3, nil, 40, n = 4 }, next_call(X))
        local stats = luanet.RPCCall(s.addr, "Stats")
        assert.equals(1, stats.replaced)

        if case.keeps == "X" then
          -- Y was dialed by the service: it closes Y once Y has been idle for two heartbeats.
          local t0, v, word = luanet.now()
          repeat v, word = Y:read_message(2) until v == nil
          assert.equals("closed", word)
          assert.is_true(luanet.now() - t0 < 1.5)
          assert.equals(2, luanet.RPCCall(s.addr, "Stats").connections)   -- X and this RPCCall's
        else
          -- X is ours to close; the service leaves it open and still answers on it.
          luanet.sleep(0.6)
          X:write_array(0, 4, "Name", luanet.array())
          assert.same({ 1, 4, nil, s.name, n = 4 }, next_call(X))
          assert.equals(3, luanet.RPCCall(s.addr, "Stats").connections)
          -- When the kept connection goes, the retired one takes over at once.
          Y:close()
          luanet.sleep(0.1)
          X:write_array(0, 5, "Relay", luanet.array { here, { a = 3, b = 3 } })
          call = next_call(X)
          assert.equals("Plus", call[3])
          X:write_array(1, call[2], nil, 6)
          assert.same({ 1, 5, nil, 60, n = 4 }, next_call(X))
        end
        running = false
        X:close()
        Y:close()
        listener:close()
      end, 10)
    end)
  end
end)

describe("services: argument errors", function()
  it("raise naming the function", function()
    H.run(function()
      H.raises({ "RPCCall", "target" }, luanet.RPCCall, nil, "Plus")
      H.raises({ "RPCCall", "fname" }, luanet.RPCCall, "127.0.0.1:1", 5)
      H.raises({ "RegRPCFunction", "handler" }, luanet.RegRPCFunction, "x", 1)
      H.raises({ "RegRPCFunction", "fname" }, luanet.RegRPCFunction, 1, print)
      H.raises({ "SendMsg" }, luanet.SendMsg, nil, "m")
      H.raises({ "StartLocalService" }, luanet.StartLocalService, nil, "127.0.0.1:0")
      H.raises({ "call_options" }, luanet.call_options, 5)
      H.raises({ "configure" }, luanet.configure, { no_such_setting = 1 })
      H.raises({ "configure" }, luanet.configure, { call_timeout = "soon" })
    end, 5)
  end)

  it("StartLocalService: a failed start returns a word; a second start raises", function()
    local r = H.child([[
local luanet = require "luanet"
local s = luanet.configure({})
assert(s.call_timeout == 5 and s.connect_timeout == 5 and s.inbox == 1024
  and s.outbox == 1024 * 1024 and s.max_handlers == 10000, "defaults")
luanet.run(function()
  local taken = assert(luanet.tcp.listen("127.0.0.1:0"))
  local ok, word = luanet.StartLocalService("Twice", taken:local_addr())
  assert(ok == nil and word == "address in use", tostring(word))
  assert(luanet.service_name() == nil)
  assert(luanet.StartLocalService("Twice", "127.0.0.1:0"))
  assert(luanet.service_name() == "Twice")
  local okk, e = pcall(luanet.StartLocalService, "Again", "127.0.0.1:0")
  assert(not okk and tostring(e):find("StartLocalService", 1, true), tostring(e))
  assert(luanet.service_name() == "Twice")
  local msg_ok = luanet.SendMsg(luanet.service_listener:local_addr(), { text = "hi" })
  local m, sender = luanet.GetMsg(2)
  assert(msg_ok and m.text == "hi" and sender == "Twice", tostring(sender))
  print("done")
  os.exit(0)
end)
]], 10)
    assert.is_true(r.ok, r.err)
    assert.equals("done\n", r.out)
  end)
end)
