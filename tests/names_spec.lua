-- Services by name (lua/luanet/names.lua, lua/luanet/nameservice.lua, docs/names.md):
-- StartNameService, Register2Name, UseNameService, RPCCall / SendMsg by name,
-- GetRemoteFuncProvider, the name service's own methods ("luanet.ns.*") and the cluster
-- token.
--
-- Covered: register and resolve (TCP, 0.0.0.0 and Unix services); a duplicate name refused
-- and taken over once its holder dies; a missing name reached as soon as it registers; a
-- name pointing at another service's address; expiry after SIGKILL, SIGSTOP and for raw
-- clients, with timings; a service restarted on another port reached by a running caller;
-- the name service killed and restarted under load with no call hanging; two name
-- services (one killed, one restarted, one frozen, a name taken at one of them);
-- GetRemoteFuncProvider as services and functions come and go; the cluster token (wrong or
-- missing token, raw clients); failure paths, bad input and the name service's limits.
--
-- Every name service, service and caller that looks names up runs in a child lua5.4
-- process (H.bg): this process never becomes a service and never calls UseNameService
-- (both are process-wide and the other specs share this process). It talks to the name
-- services over raw MessagePack-RPC connections (ns_call), and to services by address,
-- through an "Eval" function every service child offers, which runs a chunk of Lua inside
-- that service. Children write their results to files in their directory, packed with
-- luanet.pack. Timestamps compared across processes come from /proc/uptime (10 ms steps).
-- Timings measured are written to stderr, prefixed with [names_spec].

local luanet = require "luanet"
local H = require "helper"

local HERE = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".")
do -- children run elsewhere: make it absolute
  local p = assert(io.popen("cd '" .. HERE .. "' && pwd"))
  HERE = p:read("l")
  p:close()
end
local PYTHON = "/usr/bin/python3" -- has msgpack; the python3 first on PATH may not

-- What every child starts with.
local PRELUDE = H.CHILD_PUT .. [==[
local luanet = require "luanet"
local function uptime()
  local f = assert(io.open("/proc/uptime"))
  local t = f:read("n")
  f:close()
  return t
end
luanet.spawn(function() luanet.sleep(@@LIFE@@) os.exit(3) end) -- never outlive the suite
]==]

-- A name service on @@ADDR@@; writes its bound address to "addr". With @@NAME@@ a string,
-- it is a service of that name that serves names too (StartNameService() with no address).
local NAMESERVICE = PRELUDE .. [==[
@@EXTRA@@
luanet.run(function()
  local ok, word, detail
  if @@NAME@@ then
    ok, word, detail = luanet.StartLocalService(@@NAME@@, @@ADDR@@)
    if ok then ok, word, detail = luanet.StartNameService() end
  else
    ok, word, detail = luanet.StartNameService(@@ADDR@@)
  end
  if not ok then
    put("failed", tostring(word) .. ": " .. tostring(detail))
    os.exit(1)
  end
  put("addr", luanet.service_listener:local_addr())
end)
]==]

-- A service named @@NAME@@ listening on @@LISTEN@@ ("unix" means a socket in its
-- directory); it registers with @@NS@@ and writes the outcome of Register2Name to "reg"
-- ({ ok, word, detail, at = uptime }).
local SERVICE = PRELUDE .. [==[
local NAME, LISTEN, NS = @@NAME@@, @@LISTEN@@, @@NS@@
luanet.RegRPCFunction("Plus", function(t) return t.a + t.b end)
luanet.RegRPCFunction("Whoami", function() return luanet.service_listener:local_addr() end)
luanet.RegRPCFunction("Inbox", function(t)
  local m, sender = luanet.GetMsg(t)
  return { msg = m, sender = sender }
end)
local ENV = setmetatable({ luanet = luanet }, { __index = _G })
luanet.RegRPCFunction("Eval", function(src, ...) return assert(load(src, "=eval", "t", ENV))(...) end)
@@EXTRA@@
luanet.run(function()
  local addr = LISTEN == "unix" and (DIR .. "/svc.sock") or LISTEN
  assert(luanet.StartLocalService(NAME, addr))
  put("addr", luanet.service_listener:local_addr())
  local ok, word, detail = luanet.Register2Name(NS)
  put("reg", luanet.pack({ ok = ok, word = word, detail = detail, at = uptime() }))
end)
]==]

-- A caller that is not a service: looks names up at @@NS@@ (false: nowhere), runs @@BODY@@
-- (a function body; `call` is RPCCall returning { v, word, detail, el }) and writes what
-- it returns to "result".
local CALLER = PRELUDE .. [==[
local NS = @@NS@@
@@EXTRA@@
local function call(target, fname, ...)
  local t0 = luanet.now()
  local v, word, detail = luanet.RPCCall(target, fname, ...)
  return { v = v, word = word, detail = detail, el = luanet.now() - t0 }
end
luanet.run(function()
  if NS then luanet.UseNameService(NS) end
  local r = (function() @@BODY@@ end)()
  put("result", luanet.pack(r))
  os.exit(0)
end)
]==]

-- A Lua literal for strings, booleans, numbers and (nested) arrays of them.
local function lit(v)
  if type(v) == "table" then
    local parts = {}
    for i, x in ipairs(v) do parts[i] = lit(x) end
    return "{" .. table.concat(parts, ", ") .. "}"
  elseif type(v) == "string" then
    return ("%q"):format(v)
  end
  return tostring(v)
end

local function fill(template, t)
  t.LIFE = t.LIFE or "25"
  t.EXTRA = t.EXTRA or ""
  return (template:gsub("@@(%u+)@@", function(k) return assert(t[k], k) end))
end

local seq = 0
local function uniq(base)
  seq = seq + 1
  return ("%s%d_%d"):format(base, seq, math.random(1e6))
end

local function uptime()
  return tonumber(H.readfile("/proc/uptime"):match("^[%d.]+"))
end

-- Starts a name service child (inside H.run) on opts.addr (default "127.0.0.1:0"), as the
-- service opts.name (default: luanet.names); opts.extra runs before it starts (luanet.configure ...). Returns the H.bg object with .addr.
local function start_ns(opts)
  opts = opts or {}
  local p = H.bg(fill(NAMESERVICE, { ADDR = lit(opts.addr or "127.0.0.1:0"), EXTRA = opts.extra,
    NAME = opts.name and lit(opts.name) or "false" }))
  assert(H.wait_for(function() return p.file("addr") ~= "" or p.file("failed") ~= "" end, 5),
    "name service child did not start: " .. p.file("err"))
  assert(p.file("addr") ~= "", "name service did not start: " .. p.file("failed") .. p.file("err"))
  p.addr = p.file("addr")
  return p
end

-- Starts a service child registered with opts.ns (an address or a list); waits for its
-- Register2Name to return. Returns the H.bg object with .name,
-- .addr (its listener's address) and .reg (what Register2Name returned).
local function start_service(opts)
  local name = opts.name or uniq("Svc")
  local p = H.bg(fill(SERVICE, {
    NAME = lit(name), LISTEN = lit(opts.listen or "127.0.0.1:0"), NS = lit(opts.ns),
    EXTRA = opts.extra,
  }))
  p.name = name
  assert(H.wait_for(function() return p.file("addr") ~= "" end, 5),
    "service child did not start: " .. p.file("err"))
  p.addr = p.file("addr")
  assert(H.wait_for(function() return p.file("reg") ~= "" end, 12),
    "Register2Name did not return: " .. p.file("err"))
  p.reg = luanet.unpack(p.file("reg"))
  return p
end

-- Runs a caller child and waits for its result (the loop keeps running meanwhile).
local function caller(ns, body, opts)
  opts = opts or {}
  local p = H.bg(fill(CALLER, { NS = ns and lit(ns) or "false", BODY = body, EXTRA = opts.extra }))
  local ok = H.wait_for(function() return p.file("result") ~= "" end, opts.wait or 10)
  assert(ok, "caller did not finish: " .. p.file("err"))
  local r = luanet.unpack(p.file("result"))
  p.cleanup()
  return r
end

-- A name service method over a raw connection of this process's own (H.raw_call).
local ns_call = H.raw_call

local function resolve(ns, name)
  return ns_call(ns, "luanet.ns.resolve", name)
end

-- Polls until pred() is true; returns the seconds it took, or nil after `t` seconds.
local function time_until(pred, t)
  local t0 = luanet.now()
  if H.wait_for(pred, t) then return luanet.now() - t0 end
  return nil
end

local function report(fmt, ...)
  io.stderr:write(("\n[names_spec] " .. fmt .. "\n"):format(...))
end

describe("names: registration and lookup", function()
  it("register and resolve: RPCCall and SendMsg by name reach TCP, 0.0.0.0 and Unix services", function()
    H.run(function()
      local ns = start_ns()
      local tcp = start_service({ name = uniq("PlusTcp"), ns = ns.addr })
      assert.same({ ok = true, at = tcp.reg.at }, tcp.reg)
      local unix = start_service({ name = uniq("PlusUnix"), ns = ns.addr, listen = "unix" })
      assert.is_true(unix.reg.ok, tostring(unix.reg.detail))
      local any = start_service({ name = uniq("PlusAny"), ns = ns.addr, listen = "0.0.0.0:0" })
      assert.is_true(any.reg.ok, tostring(any.reg.detail))

      -- what the name service holds
      assert.equals("tcp://" .. tcp.addr, resolve(ns, tcp.name))
      assert.equals("unix:" .. unix.addr, resolve(ns, unix.name))
      -- a service on 0.0.0.0 is reachable where its connection came from
      assert.equals("tcp://127.0.0.1:" .. H.port_of(any.addr), resolve(ns, any.name))
      local v, word = resolve(ns, "NobodyHere")
      assert.same({ nil, nil }, { v, word })
      local list = ns_call(ns, "luanet.ns.list")
      assert.same({ address = "tcp://" .. tcp.addr,
        functions = { "Eval", "Inbox", "Plus", "Whoami" } }, list[tcp.name])
      assert.is_true(luanet.is_array(list[tcp.name].functions))
      assert.equals("unix:" .. unix.addr, list[unix.name].address)
      assert.is_nil(list["luanet.names"]) -- the name service does not list itself

      -- a caller by name
      local r = caller(ns.addr, ([[
        local out = {}
        for _, name in ipairs({ %s, %s, %s }) do
          local sent = { v = luanet.SendMsg(name, { hi = name }) }
          out[#out + 1] = call(name, "Plus", { a = 1, b = 2 }) -- arrives after the message
          out[#out + 1] = call(name, "Whoami")
          out[#out + 1] = sent
        end
        out[#out + 1] = call("NobodyHere", "Plus", { a = 1, b = 2 })
        return out
      ]]):format(lit(tcp.name), lit(unix.name), lit(any.name)))
      for i, svc in ipairs({ tcp, unix, any }) do
        local plus, who, sent = r[3 * i - 2], r[3 * i - 1], r[3 * i]
        assert.same({ 3, nil }, { plus.v, plus.word }, svc.name)
        assert.equals(svc.addr, who.v)
        assert.is_true(sent.v, svc.name)
        local got = luanet.RPCCall(svc.addr, "Inbox", 2)
        assert.same({ hi = svc.name }, got.msg)
      end
      assert.same({ nil, "no such service" }, { r[10].v, r[10].word })

      -- any MessagePack-RPC client can look a name up: a raw request, no hello
      local c = assert(luanet.tcp.connect(ns.addr, { timeout = 2 }))
      c:write_array(0, 1, "luanet.ns.resolve", luanet.array { tcp.name })
      local reply
      repeat reply = assert(c:read_message(2)) until reply[1] ~= 2
      assert.same({ 1, 1, nil, "tcp://" .. tcp.addr }, { reply[1], reply[2], reply[3], reply[4] })
      c:close()
    end, 20)
  end)

  it("a duplicate name is refused while its holder lives, and can be taken once it is killed", function()
    H.run(function()
      local ns = start_ns()
      local name = uniq("Dup")
      local first = start_service({ name = name, ns = ns.addr })
      assert.is_true(first.reg.ok)
      local second = start_service({ name = name, ns = ns.addr })
      assert.same({ nil, "name taken" }, { second.reg.ok, second.reg.word })
      assert.matches(first.addr, second.reg.detail, 1, true)
      -- the holder keeps its name
      assert.equals("tcp://" .. first.addr, resolve(ns, name))
      local r = caller(ns.addr, ("return call(%s, 'Whoami')"):format(lit(name)))
      assert.equals(first.addr, r.v)

      -- after SIGKILL the name service sees the connection close at once
      local t0 = luanet.now()
      first.kill("KILL")
      local took = luanet.RPCCall(second.addr, "Eval", [[
        local t0, tries, ok, word = luanet.now(), 0
        repeat
          tries = tries + 1
          ok, word = luanet.Register2Name(...)
          if not ok then luanet.sleep(0.05) end
        until ok or luanet.now() - t0 > 3
        return { ok = ok, word = word, tries = tries, el = luanet.now() - t0 }
      ]], ns.addr, luanet.call_options { timeout = 6 })
      assert.is_true(took.ok, ("Register2Name: %s after %d tries"):format(tostring(took.word), took.tries))
      local el = luanet.now() - t0
      assert.is_true(el < 1, "the name was free only after " .. el .. " s")
      report("duplicate: the name was taken over %.3f s after SIGKILL (%d tries)", el, took.tries)
      assert.equals("tcp://" .. second.addr, resolve(ns, name))
      r = caller(ns.addr, ("return call(%s, 'Whoami')"):format(lit(name)))
      assert.equals(second.addr, r.v)
    end, 20)
  end)
end)

describe("names: lookups follow the name service", function()
  it("a name that was missing is reached as soon as it registers (pushed), not a second later", function()
    H.run(function()
      local ns = start_ns()
      local name = uniq("Late")
      local c = H.bg(fill(CALLER, { NS = lit(ns.addr), BODY = ([[
        local first = call(%s, "Plus", { a = 1, b = 2 })
        put("asked", luanet.pack({ at = uptime(), word = first.word }))
        local t0, r = luanet.now()
        repeat
          luanet.sleep(0.01)
          r = call(%s, "Plus", { a = 1, b = 2 })
        until r.v or luanet.now() - t0 > 5
        r.at = uptime()
        return r
      ]]):format(lit(name), lit(name)) }))
      assert.is_true(H.wait_for(function() return c.file("asked") ~= "" end, 5), c.file("err"))
      local asked = luanet.unpack(c.file("asked"))
      assert.equals("no such service", asked.word)
      local s = start_service({ name = name, ns = ns.addr })
      assert.is_true(s.reg.ok)
      assert.is_true(H.wait_for(function() return c.file("result") ~= "" end, 6), c.file("err"))
      local r = luanet.unpack(c.file("result"))
      assert.same({ 3, nil }, { r.v, r.word })
      report("a missing name reached %.2f s after it registered (%.2f s after the failed lookup)",
        r.at - s.reg.at, r.at - asked.at)
      -- "not registered" is believed for 1 s from the failed lookup; the push ends that
      assert.is_true(s.reg.at - asked.at < 0.7, "the service took too long to start for this test")
      assert.is_true(r.at - s.reg.at < 0.25, ("reached %.2f s after it registered"):format(r.at - s.reg.at))
    end, 15)
  end)

  it("a name registered at another service's address is not reached there", function()
    H.run(function()
      local ns = start_ns()
      local s = start_service({ ns = ns.addr })
      -- this process registers a name of its own, pointing at s
      assert.is_true(ns_call(ns, "luanet.ns.register", "Impostor", "tcp://" .. s.addr, luanet.array { "Plus" }))
      assert.equals("tcp://" .. s.addr, resolve(ns, "Impostor"))
      local r = caller(ns.addr, [[
        return { call("Impostor", "Plus", { a = 1, b = 2 }), call(]] .. lit(s.name) .. [[, "Plus", { a = 1, b = 2 }) }
      ]])
      assert.same({ nil, "no such service" }, { r[1].v, r[1].word })
      assert.matches(s.name, r[1].detail, 1, true)
      assert.same({ 3, nil }, { r[2].v, r[2].word })
    end, 15)
  end)
end)

describe("names: liveness", function()
  it("a raw client's registration lasts as long as its connection: closed, silent, pinging", function()
    H.run(function()
      local HB = 0.3
      local ns = start_ns({ extra = ("luanet.configure{ heartbeat = %g }"):format(HB) })
      local function raw_register(name)
        local c = assert(luanet.tcp.connect(ns.addr, { timeout = 2 }))
        c:write_array(0, 1, "luanet.ns.register", luanet.array { name, "tcp://127.0.0.1:1", luanet.array {} })
        local reply
        repeat reply = assert(c:read_message(2)) until reply[1] ~= 2
        assert.same({ 1, 1, nil, true }, { reply[1], reply[2], reply[3], reply[4] })
        return c
      end
      local closed, silent, pinging = raw_register("RawClosed"), raw_register("RawSilent"), raw_register("RawPinging")
      local running = true
      H.go(function()
        while running do
          pinging:write_array(2, "luanet.ping", luanet.array())
          luanet.sleep(HB / 3)
        end
      end)
      local t0 = luanet.now()
      closed:close()
      local gone_closed = time_until(function() return resolve(ns, "RawClosed") == nil end, 3)
      local gone_silent = time_until(function() return resolve(ns, "RawSilent") == nil end, 3)
      assert.is_truthy(gone_closed, "a closed connection's name stayed")
      assert.is_truthy(gone_silent, "a silent connection's name stayed")
      local silent_after = luanet.now() - t0
      report("raw client: closed -> gone after %.3f s; silent -> gone %.3f s after registering (heartbeat %g)",
        gone_closed, silent_after, HB)
      assert.is_true(gone_closed < 0.5)
      assert.is_true(silent_after < 3 * HB + 0.6, "silent registration kept " .. silent_after .. " s")
      -- one that pings stays, well past three heartbeats
      luanet.sleep(math.max(0, 4 * HB - (luanet.now() - t0)))
      assert.equals("tcp://127.0.0.1:1", resolve(ns, "RawPinging"))
      running = false
      silent:close()
      pinging:close()
    end, 10)
  end)

  it("a SIGKILLed service is gone from resolve and providers at once", function()
    H.run(function()
      local ns = start_ns()
      local s = start_service({ ns = ns.addr, extra = [[luanet.RegRPCFunction("Work", function() return 1 end)]] })
      assert.is_true(s.reg.ok)
      assert.equals("tcp://" .. s.addr, resolve(ns, s.name))
      assert.same({ s.name }, ns_call(ns, "luanet.ns.providers", "Work"))
      local t0 = luanet.now()
      s.kill("KILL")
      local gone = time_until(function() return resolve(ns, s.name) == nil end, 5)
      local gone_p = time_until(function()
        local p = ns_call(ns, "luanet.ns.providers", "Work")
        return p and #p == 0
      end, 5)
      assert.is_truthy(gone, "still registered 5 s after SIGKILL")
      assert.is_truthy(gone_p, "still a provider 5 s after SIGKILL")
      local el = luanet.now() - t0
      report("SIGKILL: resolve nil after %.3f s, providers empty after %.3f s", gone, el)
      assert.is_true(gone < 3, "resolve nil after " .. gone .. " s")
      assert.is_true(el < 3, "providers empty after " .. el .. " s")
    end, 15)
  end)

  it("a frozen (SIGSTOP) service expires within 3 heartbeats, and registers again when it resumes", function()
    H.run(function()
      local HB = 0.3
      local hb = ("luanet.configure{ heartbeat = %g }"):format(HB)
      local ns = start_ns({ extra = hb })
      local s = start_service({ ns = ns.addr, extra = hb .. [[
luanet.RegRPCFunction("Work", function() return 1 end)]] })
      assert.is_true(s.reg.ok)
      -- alive with the short heartbeat: still there after several heartbeats
      luanet.sleep(5 * HB)
      assert.equals("tcp://" .. s.addr, resolve(ns, s.name))
      assert.is_nil(ns.file("err"):find("is gone", 1, true), ns.file("err"))

      local t0 = luanet.now()
      s.kill("STOP")
      local gone = time_until(function() return resolve(ns, s.name) == nil end, 5)
      local gone_p = time_until(function()
        local p = ns_call(ns, "luanet.ns.providers", "Work")
        return p and #p == 0
      end, 5)
      assert.is_truthy(gone, "a frozen service still registered after 5 s")
      assert.is_truthy(gone_p)
      local el = luanet.now() - t0
      report("SIGSTOP (heartbeat %g): resolve nil after %.3f s, providers empty after %.3f s", HB, gone, el)
      assert.is_true(gone >= 2 * HB - 0.05, "expired too early: " .. gone .. " s")
      assert.is_true(gone < 3 * HB + 0.6, "expired after " .. gone .. " s")
      assert.is_true(el < 3 * HB + 0.6, "providers empty after " .. el .. " s")
      assert.matches(s.name .. " is gone (heartbeat timeout)", ns.file("err"), 1, true)

      -- resumed: it finds its connection closed and registers again
      local t1 = luanet.now()
      s.kill("CONT")
      local back = time_until(function() return resolve(ns, s.name) == "tcp://" .. s.addr end, 5)
      assert.is_truthy(back, "not registered again 5 s after SIGCONT")
      report("SIGCONT: registered again after %.3f s", back)
      assert.is_true(luanet.now() - t1 < 3)
      s.kill("KILL")
    end, 20)
  end)
end)

describe("names: restarts", function()
  it("a caller keeps working when its service is restarted on another port", function()
    H.run(function()
      local ns = start_ns()
      local name = uniq("Restarted")
      local s1 = start_service({ name = name, ns = ns.addr })
      assert.is_true(s1.reg.ok)
      local loop = H.bg(fill(CALLER, { NS = lit(ns.addr), BODY = ([[
        local log = assert(io.open(DIR .. "/log", "w"))
        log:setvbuf("line")
        local t_end = luanet.now() + 15
        while luanet.now() < t_end and not io.open(DIR .. "/stop") do
          local t0 = luanet.now()
          local v, word = luanet.RPCCall(%s, "Whoami", luanet.call_options { timeout = 0.5 })
          local what = v or ("!" .. tostring(word):gsub(" ", "_"))
          log:write(("%%.2f %%.3f %%s\n"):format(uptime(), luanet.now() - t0, what))
          luanet.sleep(0.02)
        end
        log:close()
        return true
      ]]):format(lit(name)) }))
      local function lines()
        local out = {}
        for at, el, what in loop.file("log"):gmatch("([%d.]+) ([%d.]+) (%S+)\n") do
          out[#out + 1] = { at = tonumber(at), el = tonumber(el), what = what }
        end
        return out
      end
      local function count(what)
        local n = 0
        for _, l in ipairs(lines()) do if l.what == what then n = n + 1 end end
        return n
      end
      assert.is_true(H.wait_for(function() return count(s1.addr) >= 5 end, 5),
        "the caller does not reach the first service: " .. loop.file("log") .. loop.file("err"))

      s1.kill("KILL")
      assert.is_true(H.wait_for(function() return resolve(ns, name) == nil end, 3))
      luanet.sleep(0.3) -- the caller fails for a while
      local s2 = start_service({ name = name, ns = ns.addr })
      assert.is_true(s2.reg.ok, tostring(s2.reg.word))
      assert.not_equals(s1.addr, s2.addr)
      assert.is_true(H.wait_for(function() return count(s2.addr) >= 5 end, 5),
        "the caller never reached the restarted service: " .. loop.file("err"))
      assert.is_true(loop.alive(), "the caller exited")
      local f = assert(io.open(loop.dir .. "/stop", "w"))
      f:close()

      local first, failures, slowest = nil, 0, 0
      for _, l in ipairs(lines()) do
        if l.what == s2.addr and not first then first = l.at end
        if l.what:sub(1, 1) == "!" then failures = failures + 1 end
        slowest = math.max(slowest, l.el)
      end
      local delay = first - s2.reg.at
      report("restart: the caller reached the restarted service %.2f s after it registered "
        .. "(%d failed calls while it was down, slowest call %.3f s)", delay, failures, slowest)
      assert.is_true(failures > 0)
      assert.is_true(delay < 1.5, "reached " .. delay .. " s after the registration")
      assert.is_true(slowest < 0.5 + 0.2, "a call took " .. slowest .. " s")
    end, 25)
  end)

  it("the name service killed and restarted under load: no call hangs, the service registers again", function()
    H.run(function()
      local port = H.free_port()
      local addr = "127.0.0.1:" .. port
      local ns = start_ns({ addr = addr })
      local name = uniq("Loaded")
      local s = start_service({ name = name, ns = addr })
      assert.is_true(s.reg.ok)
      local TIMEOUT = 1
      local busy = H.bg(fill(CALLER, { NS = lit(addr), BODY = ([[
        local st = { ok = 0, fail = 0, max = 0, words = {} }
        local stop = false
        for i = 1, 20 do
          luanet.spawn(function()
            while not stop do
              local t0 = luanet.now()
              local v, word = luanet.RPCCall(%s, "Plus", { a = i, b = 1 },
                luanet.call_options { timeout = %g })
              local el = luanet.now() - t0
              st.max = math.max(st.max, el)
              if v == i + 1 then st.ok = st.ok + 1
              else
                st.fail = st.fail + 1
                st.words[tostring(word)] = (st.words[tostring(word)] or 0) + 1
                luanet.sleep(0.01)
              end
              luanet.sleep(0.002)
            end
          end)
        end
        local t_end = luanet.now() + 15
        while luanet.now() < t_end and not io.open(DIR .. "/stop") do
          put("stats", luanet.pack(st))
          luanet.sleep(0.05)
        end
        stop = true
        luanet.sleep(%g + 0.1)
        return st
      ]]):format(lit(name), TIMEOUT, TIMEOUT) }))
      local function stats()
        local b = busy.file("stats")
        return b ~= "" and luanet.unpack(b) or { ok = 0, fail = 0 }
      end
      assert.is_true(H.wait_for(function() return stats().ok >= 200 end, 5),
        "the loaded caller does not get through: " .. busy.file("err"))

      ns.kill("KILL")
      assert.is_true(H.wait_for(function() return not ns.alive() end, 2))
      local before = stats().ok
      luanet.sleep(0.5)
      assert.is_true(stats().ok > before + 100, "calls stopped while the name service was down")

      -- the name service comes back on the same port (examples/nameservice.lua)
      local ns2 = H.bg(([[
local luanet = require "luanet"
luanet.spawn(function() luanet.sleep(25) os.exit(3) end)
arg[1] = %q
dofile(%q)
]]):format(addr, HERE .. "/../examples/nameservice.lua"))
      assert.is_true(H.wait_for(function() return ns2.file("out"):find("name service on", 1, true) ~= nil end, 5),
        "the name service did not restart: " .. ns2.file("err"))
      assert.equals("name service on " .. addr .. "\n", ns2.file("out"))
      ns2.addr = addr
      local again = time_until(function()
        return resolve(ns2, name) == "tcp://" .. s.addr
      end, 5)
      assert.is_truthy(again, "the service did not register again within 5 s")
      report("name service restart: the service registered again %.3f s after it was back", again)
      assert.is_true(again < 2.5, "registered again after " .. again .. " s")

      -- a new caller finds it
      local r = caller(addr, ("return call(%s, 'Plus', { a = 2, b = 3 })"):format(lit(name)))
      assert.same({ 5, nil }, { r.v, r.word })

      local f = assert(io.open(busy.dir .. "/stop", "w"))
      f:close()
      assert.is_true(H.wait_for(function() return busy.file("result") ~= "" end, 5))
      local st = luanet.unpack(busy.file("result"))
      local words = {}
      for w, n in pairs(st.words) do words[#words + 1] = w .. " x" .. n end
      report("name service restart under load: %d calls, %d failed (%s), max latency %.3f s",
        st.ok, st.fail, table.concat(words, ", "), st.max)
      assert.equals(0, st.fail, table.concat(words, ", "))
      assert.is_true(st.max < TIMEOUT, "a call took " .. st.max .. " s")
      assert.is_true(st.ok > 500)
    end, 30)
  end)

  it("two name services: a service registers with both; callers still find it after one is killed", function()
    H.run(function()
      local ns1, ns2 = start_ns(), start_ns()
      local list = { ns1.addr, ns2.addr }
      local s = start_service({ ns = list })
      assert.is_true(s.reg.ok)
      assert.equals("tcp://" .. s.addr, resolve(ns1, s.name))
      assert.equals("tcp://" .. s.addr, resolve(ns2, s.name))
      local body = ("return call(%s, 'Plus', { a = 1, b = 2 })"):format(lit(s.name))
      local r = caller(list, body)
      assert.same({ 3, nil }, { r.v, r.word })

      ns1.kill("KILL")
      assert.is_true(H.wait_for(function() return not ns1.alive() end, 2))
      r = caller(list, body)
      assert.same({ 3, nil }, { r.v, r.word }, tostring(r.detail))
      assert.is_true(r.el < 1, "the call by name took " .. r.el .. " s")
      -- the other order too
      r = caller({ ns2.addr, ns1.addr }, body)
      assert.same({ 3, nil }, { r.v, r.word })
      -- a service started now registers with the one that is left
      local late = start_service({ ns = list })
      assert.same({ ok = true, at = late.reg.at }, late.reg)
      assert.equals("tcp://" .. late.addr, resolve(ns2, late.name))
      r = caller(list, ("return call(%s, 'Whoami')"):format(lit(late.name)))
      assert.equals(late.addr, r.v)
      -- with every name service gone: no name service
      ns2.kill("KILL")
      assert.is_true(H.wait_for(function() return not ns2.alive() end, 2))
      r = caller(list, ([[
        local p, word = luanet.GetRemoteFuncProvider("Plus")
        local c = call(%s, "Plus", { a = 1, b = 2 })
        return { p = p, word = word, call = c }
      ]]):format(lit(s.name)))
      assert.same({ nil, "no name service" }, { r.p, r.word })
      assert.same({ nil, "no such service" }, { r.call.v, r.call.word })
    end, 25)
  end)
end)

describe("names: several name services", function()
  it("a name taken at one name service is withdrawn from the others", function()
    H.run(function()
      local ns1, ns2 = start_ns(), start_ns()
      local name = uniq("Split")
      local holder = start_service({ name = name, ns = ns2.addr })
      assert.is_true(holder.reg.ok)
      local late = start_service({ name = name, ns = { ns1.addr, ns2.addr } })
      assert.same({ nil, "name taken" }, { late.reg.ok, late.reg.word })
      assert.is_nil(resolve(ns1, name), "late: " .. late.file("err") .. "\nns1: " .. ns1.file("err"))
      assert.equals("tcp://" .. holder.addr, resolve(ns2, name))
      -- and it does not come back on its own
      luanet.sleep(0.3)
      assert.is_nil(resolve(ns1, name))
    end, 15)
  end)

  it("a process talking to two name services gets each one's own answers", function()
    H.run(function()
      local ns1, ns2 = start_ns(), start_ns()
      local r = caller(false, ([[
        local NS1, NS2 = %q, %q
        local out = {}
        out.reg = luanet.RPCCall(NS1, "luanet.ns.register", "OnlyAtNs1", "tcp://127.0.0.1:1", luanet.array {})
        out.first = luanet.RPCCall(NS2, "luanet.ns.resolve", "OnlyAtNs1")
        out.second = luanet.RPCCall(NS2, "luanet.ns.resolve", "OnlyAtNs1")
        out.ns1 = luanet.RPCCall(NS1, "luanet.ns.resolve", "OnlyAtNs1")
        return out
      ]]):format(ns1.addr, ns2.addr))
      assert.is_true(r.reg)
      assert.equals("tcp://127.0.0.1:1", r.ns1)
      assert.is_nil(r.first)
      -- Regression: two connections whose hellos carried one name were once taken for
      -- duplicates of one peer; every name service is "luanet.names", so calls to NS2's
      -- address went to NS1 (this returned "tcp://127.0.0.1:1").
      assert.is_nil(r.second, "a call to the second name service's address was answered by the first")
    end, 15)
  end)

  -- With the default name for both (the regression above), and with names of their own.
  for _, case in ipairs({ { 1 }, { 2 }, { 1, "names.A", "names.B" }, { 2, "names.A", "names.B" } }) do
    local which, n1, n2 = case[1], case[2], case[3]
    it(("a service registered with two name services%s registers again with the one that restarted (#%d)")
      :format(n1 and " (named " .. n1 .. ", " .. n2 .. ")" or "", which), function()
      H.run(function()
        local ns = { start_ns({ name = n1 }), start_ns({ name = n2 }) }
        local s = start_service({ ns = { ns[1].addr, ns[2].addr } })
        assert.is_true(s.reg.ok)
        assert.equals("tcp://" .. s.addr, resolve(ns[1], s.name))
        assert.equals("tcp://" .. s.addr, resolve(ns[2], s.name))
        local addr = ns[which].addr
        ns[which].kill("KILL")
        assert.is_true(H.wait_for(function() return not ns[which].alive() end, 2))
        luanet.sleep(0.2)
        local again = start_ns({ addr = addr, name = case[1 + which] })
        -- Regression: with the default names, the service's two connections were once
        -- taken for one peer and it never registered with the restarted name service.
        local took = time_until(function() return resolve(again, s.name) == "tcp://" .. s.addr end, 3)
        assert.is_truthy(took, "the service did not register again with the restarted name service #" .. which)
        report("two name services, #%d restarted: the service registered again after %.3f s", which, took)
        assert.equals("tcp://" .. s.addr, resolve(ns[3 - which], s.name))
      end, 15)
    end)
  end

  -- A name service that froze (SIGSTOP) accepts connections (the kernel does) but never
  -- answers: a lookup must leave it time-boxed and go on to the next one within the
  -- call's own timeout; later lookups start with the one that answered.
  for _, timeout in ipairs({ 2, 1 }) do
    it(("a frozen first name service: a lookup with %g s moves on to the other, later ones start there"):format(timeout), function()
      H.run(function()
        local ns1, ns2 = start_ns(), start_ns()
        local a = start_service({ ns = { ns1.addr, ns2.addr } })
        local b = start_service({ ns = { ns1.addr, ns2.addr } })
        assert.is_true(a.reg.ok and b.reg.ok)
        ns1.kill("STOP")
        local r = caller({ ns1.addr, ns2.addr }, ([[
          return { call(%s, "Plus", { a = 1, b = 2 }), call(%s, "Plus", { a = 2, b = 2 }) }
        ]]):format(lit(a.name), lit(b.name)), { extra = ("luanet.configure{ call_timeout = %g }"):format(timeout) })
        report("frozen first name service (call_timeout %g): first call %.3f s (%s), the next %.3f s (%s)",
          timeout, r[1].el, tostring(r[1].v or r[1].word), r[2].el, tostring(r[2].v or r[2].word))
        -- Regression: ask() once gave the first name service at least 1 s, so with 1 s left
        -- a frozen one took the whole budget, and as it stayed first every later lookup
        -- failed the same way although the second one was up.
        assert.same({ 3, nil }, { r[1].v, r[1].word }, tostring(r[1].detail))
        assert.is_true(r[1].el < timeout, "took " .. r[1].el .. " s")
        assert.same({ 4, nil }, { r[2].v, r[2].word }, tostring(r[2].detail))
        assert.is_true(r[2].el < 0.3, "the second lookup asked the frozen one again: " .. r[2].el .. " s")
        ns1.kill("CONT")
      end, 15)
    end)
  end
end)

describe("names: GetRemoteFuncProvider", function()
  it("lists the services providing a function, sorted, not the caller; follows services and functions", function()
    H.run(function()
      local ns = start_ns()
      local work = [[luanet.RegRPCFunction("Work", function() return luanet.service_name() end)]]
      local b = start_service({ name = uniq("B_Worker"), ns = ns.addr, extra = work })
      local a = start_service({ name = uniq("A_Worker"), ns = ns.addr, extra = work })
      local c = start_service({ name = uniq("C_Idle"), ns = ns.addr })
      for _, s in ipairs({ a, b, c }) do assert.is_true(s.reg.ok) end
      local providers = [[
        local p, word, detail = luanet.GetRemoteFuncProvider(...)
        return { p = p, word = word, detail = detail, array = p and luanet.is_array(p) }
      ]]
      -- a caller that is not a service sees both, sorted
      local r = caller(ns.addr, ("return (function(...) %s end)('Work')"):format(providers))
      assert.same({ a.name, b.name }, r.p)
      assert.is_true(r.array)
      r = caller(ns.addr, ("return (function(...) %s end)('NoOneHasThis')"):format(providers))
      assert.same({}, r.p)
      assert.is_true(r.array)
      -- a service asking does not see itself
      -- (regression: ask() once passed `...` before the call options, which dropped the
      -- caller's name, so a service saw itself)
      r = luanet.RPCCall(a.addr, "Eval", providers, "Work")
      assert.same({ b.name }, r.p)
      r = luanet.RPCCall(c.addr, "Eval", providers, "Work")
      assert.same({ a.name, b.name }, r.p)

      -- one killed: gone from the list
      b.kill("KILL")
      local gone = time_until(function()
        local p = ns_call(ns, "luanet.ns.providers", "Work")
        return p and #p == 1
      end, 3)
      assert.is_truthy(gone, "a killed provider still listed")
      r = luanet.RPCCall(c.addr, "Eval", providers, "Work")
      assert.same({ a.name }, r.p)

      -- a function registered after Register2Name is announced
      local t0 = luanet.now()
      luanet.RPCCall(c.addr, "Eval", work)
      local seen = time_until(function()
        local p = ns_call(ns, "luanet.ns.providers", "Work")
        return p and #p == 2
      end, 3)
      assert.is_truthy(seen, "a function registered later did not appear")
      report("providers: a function registered later appeared after %.3f s", luanet.now() - t0)
      assert.is_true(luanet.now() - t0 < 1)
      r = caller(ns.addr, ("return (function(...) %s end)('Work')"):format(providers))
      assert.same({ a.name, c.name }, r.p)
      -- and the caller can call each provider by name
      r = caller(ns.addr, ([[
        local out = {}
        for _, n in ipairs(luanet.GetRemoteFuncProvider("Work")) do out[#out + 1] = call(n, "Work").v end
        return out
      ]]))
      assert.same({ a.name, c.name }, r)
      assert.same({ "Eval", "Inbox", "Plus", "Whoami", "Work" },
        ns_call(ns, "luanet.ns.list")[c.name].functions)
    end, 25)
  end)
end)

describe("names: cluster token", function()
  it("only holders of the token register, look up and call; raw clients are cut off unanswered", function()
    H.run(function()
      local T1, T2 = 'luanet.configure{ token = "t1" }', 'luanet.configure{ token = "t2" }'
      local ns = start_ns({ extra = T1 })
      local name = uniq("Secret")
      local s = start_service({ name = name, ns = ns.addr, extra = T1 })
      assert.is_true(s.reg.ok, tostring(s.reg.detail))
      local body = ("return call(%s, 'Plus', { a = 1, b = 2 })"):format(lit(name))

      local r = caller(ns.addr, body, { extra = T1 })
      assert.same({ 3, nil }, { r.v, r.word }, tostring(r.detail))
      for _, extra in ipairs({ T2, "" }) do
        r = caller(ns.addr, body, { extra = extra })
        assert.is_nil(r.v, extra)
        assert.is_string(r.word, extra)
        assert.is_true(r.el < 3, "failed after " .. r.el .. " s")
      end
      -- and not by address either
      r = caller(false, ("return call(%s, 'Plus', { a = 1, b = 2 })"):format(lit(s.addr)))
      assert.is_nil(r.v)
      assert.is_string(r.word)

      -- a service with the wrong token neither registers nor takes the name
      local bad = start_service({ name = name, ns = ns.addr, extra = T2 })
      assert.same({ nil, "no name service" }, { bad.reg.ok, bad.reg.word })
      local wrongname = start_service({ name = uniq("Other"), ns = ns.addr, extra = T2 })
      assert.same({ nil, "no name service" }, { wrongname.reg.ok, wrongname.reg.word })
      -- even after the holder is gone (it keeps trying in the background)
      s.kill("KILL")
      luanet.sleep(1.5)
      r = caller(ns.addr, ([[
        return { luanet.RPCCall(%q, "luanet.ns.list") }
      ]]):format(ns.addr), { extra = T1 })
      assert.same({ {} }, r)
      r = caller(ns.addr, body, { extra = T2 })
      assert.is_nil(r.v)

      -- raw clients: the request is not answered, the connection is closed at once
      local c = assert(luanet.tcp.connect(ns.addr, { timeout = 2 }))
      local hello = assert(c:read_message(2))
      assert.same({ 2, "luanet.hello" }, { hello[1], hello[2] })
      local t0 = luanet.now()
      c:write_array(0, 1, "luanet.ns.resolve", luanet.array { "x" })
      local v, word
      repeat v, word = c:read_message(2) until v == nil or v[1] ~= 2
      assert.is_nil(v, "the name service answered a raw request")
      assert.is_true(word == "closed" or word == "connection reset", tostring(word))
      assert.is_true(luanet.now() - t0 < 1)
      c:close()

      local dir = H.tmpdir()
      local f = assert(io.open(dir .. "/raw.py", "w"))
      f:write([==[
import socket, sys, time, msgpack
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=3)
s.sendall(msgpack.packb([0, 1, "luanet.ns.resolve", ["x"]]))
u = msgpack.Unpacker(raw=False)
kinds, closed, t0 = [], False, time.time()
try:
    while True:
        d = s.recv(4096)
        if not d:
            closed = True
            break
        u.feed(d)
        for m in u:
            kinds.append(m[0] if isinstance(m, list) and m else -1)
except (socket.timeout, ConnectionResetError):
    closed = True
print("closed=%s kinds=%s el=%.2f" % (closed, ",".join(map(str, kinds)), time.time() - t0))
]==])
      f:close()
      local host, port = ns.addr:match("^(.*):(%d+)$")
      local p = assert(io.popen(("timeout -s KILL 10 %s %s/raw.py %s %s 2>&1"):format(PYTHON, dir, host, port)))
      local out = p:read("a")
      p:close()
      H.rmdir(dir)
      local closed, kinds, el = out:match("closed=(%a+) kinds=(%S*) el=([%d.]+)")
      assert.equals("True", closed, out)
      assert.is_nil(kinds:find("1", 1, true), "the name service answered: " .. out)
      assert.is_true(tonumber(el) < 2, out)
      -- the name service still serves token holders
      r = caller(ns.addr, ("return { luanet.RPCCall(%q, 'luanet.ns.resolve', 'x') }"):format(ns.addr),
        { extra = T1 })
      assert.same({}, r)
    end, 30)
  end)
end)

describe("names: failure paths and bad input", function()
  it("argument errors raise, naming the function", function()
    -- none of these changes this process's state (no service, no name service list)
    H.raises({ "Register2Name", "StartLocalService" }, luanet.Register2Name, "127.0.0.1:1")
    H.raises({ "Register2Name" }, luanet.Register2Name, 42)
    H.raises({ "Register2Name" }, luanet.Register2Name, {})
    H.raises({ "Register2Name" }, luanet.Register2Name, { "127.0.0.1:1", 5 })
    H.raises({ "GetRemoteFuncProvider" }, luanet.GetRemoteFuncProvider, 42)
    H.raises({ "GetRemoteFuncProvider" }, luanet.GetRemoteFuncProvider, "")
    H.raises({ "UseNameService" }, luanet.UseNameService, 42)
    H.raises({ "UseNameService" }, luanet.UseNameService, { "" })
    H.raises({ "StartNameService" }, luanet.StartNameService, 42)
    -- in a service: a second Register2Name raises
    H.run(function()
      local ns = start_ns()
      local s = start_service({ ns = ns.addr })
      local r = luanet.RPCCall(s.addr, "Eval", [[
        local ok, e = pcall(luanet.Register2Name, ...)
        return { ok = ok, e = tostring(e) }
      ]], ns.addr)
      assert.is_false(r.ok)
      assert.matches("Register2Name", r.e, 1, true)
    end, 15)
  end)

  it("the name service's methods: bad request, not holder, name taken, replaced function lists, 64 names per connection", function()
    H.run(function()
      local ns = start_ns()
      local s = start_service({ ns = ns.addr })
      local good = "tcp://127.0.0.1:1"
      local cases = {
        { "empty name", "", good, luanet.array {} },
        { "name not a string", 5, good, luanet.array {} },
        { "name too long", ("n"):rep(257), good, luanet.array {} },
        { "address nowhere", "X", "nowhere", luanet.array {} },
        { "address not a string", "X", 5, luanet.array {} },
        { "functions a map", "X", good, { a = 1 } },
        { "functions missing", "X", good, nil },
        { "function name not a string", "X", good, luanet.array { 5 } },
        { "function name empty", "X", good, luanet.array { "" } },
        { "function name too long", "X", good, luanet.array { ("f"):rep(257) } },
      }
      local many = luanet.array {}
      for i = 1, 10001 do many[i] = "F" .. i end
      cases[#cases + 1] = { "10001 functions", "X", good, many }
      for _, case in ipairs(cases) do
        local v, word = ns_call(ns, "luanet.ns.register", case[2], case[3], case[4])
        assert.same({ nil, "bad request" }, { v, word }, case[1])
      end
      assert.same({ nil, "bad request" }, H.two(ns_call(ns, "luanet.ns.resolve", "")))
      assert.same({ nil, "bad request" }, H.two(ns_call(ns, "luanet.ns.resolve", 5)))
      assert.same({ nil, "bad request" }, H.two(ns_call(ns, "luanet.ns.providers", "")))
      assert.same({ nil, "bad request" }, H.two(ns_call(ns, "luanet.ns.unregister", "")))
      -- nothing of that was registered
      local names = {}
      for n in pairs(ns_call(ns, "luanet.ns.list")) do names[#names + 1] = n end
      assert.same({ s.name }, names)
      -- someone else's name can be neither unregistered nor taken
      assert.same({ nil, "not holder" }, H.two(ns_call(ns, "luanet.ns.unregister", s.name)))
      assert.same({ nil, "name taken" },
        H.two(ns_call(ns, "luanet.ns.register", s.name, good, luanet.array {})))
      assert.equals("tcp://" .. s.addr, resolve(ns, s.name))
      assert.is_false(ns_call(ns, "luanet.ns.unregister", "NeverRegistered"))
      -- the service unregisters itself
      assert.is_true(luanet.RPCCall(s.addr, "Eval",
        "return luanet.RPCCall(..., 'luanet.ns.unregister', luanet.service_name())", ns.addr))
      assert.is_nil(resolve(ns, s.name))

      -- registering again over the same connection replaces the function list
      assert.is_true(ns_call(ns, "luanet.ns.register", "Mine", good, luanet.array { "F1", "F2" }))
      assert.is_true(ns_call(ns, "luanet.ns.register", "Mine", good, luanet.array { "F2" }))
      assert.same({}, ns_call(ns, "luanet.ns.providers", "F1"))
      assert.same({ "Mine" }, ns_call(ns, "luanet.ns.providers", "F2"))
      assert.same({ "Mine" }, ns_call(ns, "luanet.ns.providers", "F2", "Other"))
      assert.same({}, ns_call(ns, "luanet.ns.providers", "F2", "Mine"))
      -- at most 64 names per connection (Mine is the first)
      for i = 2, 64 do
        assert.is_true(ns_call(ns, "luanet.ns.register", "Mine" .. i, good, luanet.array {}), "name " .. i)
      end
      assert.same({ nil, "overloaded" }, H.two(ns_call(ns, "luanet.ns.register", "Mine65", good, luanet.array {})))
      -- one given up makes room
      assert.is_true(ns_call(ns, "luanet.ns.unregister", "Mine64"))
      assert.is_true(ns_call(ns, "luanet.ns.register", "Mine65", good, luanet.array {}))
      -- the list shows them all, each with its sorted functions
      local list = ns_call(ns, "luanet.ns.list")
      local n = 0
      for _ in pairs(list) do n = n + 1 end
      assert.equals(64, n)
      assert.same({ address = good, functions = { "F2" } }, list.Mine)
    end, 15)
  end)

  it("unknown names and no name service: no such service, quickly; Register2Name retries until one is up", function()
    H.run(function()
      local ns = start_ns()
      local r = caller(ns.addr, [[
        local out = { call("NoSuchName", "Plus", { a = 1, b = 2 }), call("NoSuchName", "Plus", { a = 1, b = 2 }) }
        local ok, word = luanet.SendMsg("NoSuchName", "hi")
        out[3] = { v = ok, word = word }
        return out
      ]])
      for i = 1, 3 do assert.same({ nil, "no such service" }, { r[i].v, r[i].word }, "case " .. i) end
      assert.is_true(r[1].el < 1, "took " .. r[1].el .. " s")
      assert.is_true(r[2].el < 1, "took " .. r[2].el .. " s")

      -- no name service configured at all
      r = caller(false, [[
        local p, word = luanet.GetRemoteFuncProvider("Plus")
        local ok, sword = luanet.SendMsg("SomeName", "hi")
        return { call("SomeName", "Plus", { a = 1, b = 2 }), { v = p, word = word }, { v = ok, word = sword } }
      ]])
      assert.same({ nil, "no such service" }, { r[1].v, r[1].word })
      assert.is_true(r[1].el < 1)
      assert.same({ nil, "no name service" }, { r[2].v, r[2].word })
      assert.same({ nil, "no such service" }, { r[3].v, r[3].word })

      -- a name service that is not up yet: "no name service", then registered in the background
      local port = H.free_port()
      local addr = "127.0.0.1:" .. port
      local s = start_service({ ns = addr })
      assert.same({ nil, "no name service" }, { s.reg.ok, s.reg.word })
      assert.matches(addr, s.reg.detail, 1, true)
      local late = start_ns({ addr = addr })
      local t0 = luanet.now()
      local reg = time_until(function() return resolve(late, s.name) == "tcp://" .. s.addr end, 4)
      assert.is_truthy(reg, "not registered once the name service was up")
      report("a name service started late: the service registered %.3f s after it was up", reg)
      assert.is_true(luanet.now() - t0 < 2.5)
      r = caller(addr, ("return call(%s, 'Plus', { a = 1, b = 2 })"):format(lit(s.name)))
      assert.same({ 3, nil }, { r.v, r.word })
    end, 20)
  end)
end)
