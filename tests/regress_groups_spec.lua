-- Regression tests for defects a review of groups (docs/groups.md) found: the master
-- lease (luanet/master.lua, luanet/ns_groups.lua), group membership and calls
-- (luanet/groups.lua, luanet/names.lua, luanet/service.lua). Each `it` reproduces one
-- defect the way the reviewer did and asserts the behaviour now expected; the number in
-- its comment is the review's. Every one of them failed before the fix (commit 7139bcb).
--
-- This process never becomes a service and never calls UseNameService: name services,
-- members and callers are child processes (H.bg), driven through an "Eval" function each
-- of them offers (a chunk of Lua run in that child, with a persistent table S), called by
-- address. Raw protocol peers are played with luanet.tcp from here, and with two Python
-- helpers (tests/fixtures/regress_groups_*.py: a fake name service and a relay that cuts
-- one direction) run by /usr/bin/python3, which has msgpack.

local luanet = require "luanet"
local H = require "helper"

local clock = H.clock

local HERE = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".")
if HERE:sub(1, 1) ~= "/" then         -- the children run elsewhere: make it absolute
  local p = assert(io.popen("cd '" .. HERE .. "' && pwd"))
  HERE = p:read("l")
  p:close()
end
local PYTHON = "/usr/bin/python3"

-- Measurements are printed with REGRESS_VERBOSE=1.
local VERBOSE = os.getenv("REGRESS_VERBOSE")
local function note(fmt, ...) if VERBOSE then print(("\n  [regress_groups] " .. fmt):format(...)) end end

-- A Lua literal for strings, numbers, booleans and nested tables of them.
local ser = H.ser

---------------------------------------------------------------------------------------
-- Children
---------------------------------------------------------------------------------------

-- What every Lua child starts with (after DIR/put and `local CONF = ...`). clock() is
-- CLOCK_MONOTONIC (luasystem's monotime, which busted itself needs), shared by all the
-- children, so their timestamps can be compared.
local PRELUDE = [==[
local luanet = require "luanet"
]==] .. H.CHILD_CLOCK .. [==[
if CONF.configure then luanet.configure(CONF.configure) end
luanet.spawn(function() luanet.sleep(CONF.life or 30) os.exit(3) end) -- never outlive the suite
local S = {}
local ENV = setmetatable({ luanet = luanet, clock = clock, put = put, CONF = CONF, S = S, DIR = DIR },
  { __index = _G })
luanet.RegRPCFunction("Eval", function(src, ...)
  return assert(load(src, "=eval", "t", ENV))(...)
end)
luanet.RegRPCFunction("Who", function() return luanet.service_name() end)
]==]

-- A name service on 127.0.0.1:0; writes its address to "addr".
local NAMESERVICE = [==[
luanet.run(function()
  assert(luanet.StartNameService("127.0.0.1:0"))
  put("addr", luanet.service_listener:local_addr())
end)
]==]

-- A member CONF.name registered at CONF.ns (an address or a list); writes "addr", then
-- "reg" once Register2Name returned. With CONF.master = { selector, ttl }, it stands for
-- master and appends every change of lease:held() (sampled every 5 ms) to "samples" as
-- "<clock> true|false".
local MEMBER = [==[
luanet.run(function()
  assert(luanet.StartLocalService(CONF.name, "127.0.0.1:0"))
  put("addr", luanet.service_listener:local_addr())
  local ok, word, detail = luanet.Register2Name(CONF.ns)
  put("reg", ok and "ok" or (tostring(word) .. ": " .. tostring(detail)))
  local m = CONF.master
  if m then
    S.lease = luanet.StandForMaster(m.selector, { ttl = m.ttl })
    luanet.spawn(function()
      local last = false
      while true do
        local h = S.lease:held()
        if h ~= last then
          local f = assert(io.open(DIR .. "/samples", "a"))
          f:write(("%.6f %s\n"):format(clock(), tostring(h)))
          f:close()
          last = h
        end
        luanet.sleep(0.005)
      end
    end)
  end
end)
]==]

-- A caller: the service CONF.name (never registered), looking names up at CONF.ns if given.
local CALLER = [==[
luanet.run(function()
  assert(luanet.StartLocalService(CONF.name, "127.0.0.1:0"))
  if CONF.ns then luanet.UseNameService(CONF.ns) end
  put("addr", luanet.service_listener:local_addr())
end)
]==]

local function child_source(conf, body)
  return H.CHILD_PUT .. "local CONF = " .. ser(conf) .. "\n" .. PRELUDE .. body
end

local function wait_file(p, file, t, what)
  assert(H.wait_for(function() return p.file(file) ~= "" end, t or 5),
    ("%s did not write %s: %s"):format(what or "child", file, p.file("err")))
  return p.file(file)
end

local function start_ns(conf)
  local p = H.bg(child_source(conf or {}, NAMESERVICE))
  p.name = "name service"
  p.addr = wait_file(p, "addr", 5, "name service")
  return p
end

-- Starts the members (CONF tables) at once and waits until each one has registered.
local function start_members(list)
  local ps = {}
  for i, conf in ipairs(list) do
    ps[i] = H.bg(child_source(conf, MEMBER))
    ps[i].name = conf.name
  end
  for _, p in ipairs(ps) do
    p.addr = wait_file(p, "addr", 5, p.name)
    local reg = wait_file(p, "reg", 10, p.name)
    assert(reg == "ok", p.name .. " did not register: " .. reg)
  end
  return table.unpack(ps)
end

local ncallers = 0
local function start_caller(conf)
  conf = conf or {}
  ncallers = ncallers + 1
  conf.name = conf.name or ("caller." .. ncallers)
  local p = H.bg(child_source(conf, CALLER))
  p.name = conf.name
  p.addr = wait_file(p, "addr", 5, p.name)
  return p
end

-- Runs `src` in the child p and returns its first result; raises when the call fails.
local function eval(p, timeout, src, ...)
  local args = table.pack(...)
  args.n = args.n + 1
  args[args.n] = luanet.call_options { timeout = timeout }
  local v, word, detail = luanet.RPCCall(p.addr, "Eval", src, table.unpack(args, 1, args.n))
  if v == nil and word ~= nil then
    error(("Eval in %s failed: %s: %s\n-- its stderr:\n%s"):format(p.name, tostring(word),
      tostring(detail), p.file("err")), 2)
  end
  return v
end

-- A Python helper from tests/fixtures, run by /usr/bin/python3 as an H.bg child (the
-- python3 first on PATH may lack msgpack): the stub H.bg starts execs it in place, so
-- H.bg's kill still finds it (its directory is on the command line) and cleans it up.
local function start_python(fixture, ...)
  local args = { ("%q"):format(PYTHON), ("%q"):format(HERE .. "/fixtures/" .. fixture) }
  for _, a in ipairs({ ... }) do args[#args + 1] = a == "@DIR" and "D" or ("%q"):format(a) end
  local p = H.bg(([[
import os
D = os.path.dirname(os.path.abspath(__file__))
os.execv(%q, [%s])
]]):format(PYTHON, table.concat(args, ", ")), "python")
  p.name = fixture
  return p
end

-- The fake name service (fixtures/regress_groups_fake_ns.py) in `mode`.
local function start_fake_ns(mode)
  local p = start_python("regress_groups_fake_ns.py", mode, "@DIR")
  p.addr = wait_file(p, "addr", 5, "fake name service")
  return p
end

-- "<clock> true|false" lines of a child's file, sorted by time.
local function transitions(p, file) return H.held_transitions(p.file(file)) end

-- [from, to] intervals during which a member held, the last one open until `end_at`.
local intervals = H.held_intervals

local function mentions(s, parts)
  for _, p in ipairs(parts) do
    if not tostring(s):find(p, 1, true) then return false end
  end
  return true
end

-- Sleeps until clock() reaches `at`.
local function sleep_until(at)
  local left = at - clock()
  if left > 0 then luanet.sleep(left) end
end

describe("groups regressions", function()
  -- Defect 1 (t_grant_close3): the candidate counted every grant of a round, even one whose
  -- connection closed before the round ended: a name service that granted and then
  -- restarted (forgetting the lease, free to grant it to another) still counted. Three
  -- fake name services: "close" grants the first renewal and closes the connection at
  -- once, "slow" grants it 0.3 s later, "deny" says db.2 holds the lease. The round ends
  -- with one live grant of three: no majority, so the lease must not be held after it.
  it("1: a grant whose connection closed before the round ended does not count", function()
    H.run(function()
      local f1, f2, f3 = start_fake_ns("close"), start_fake_ns("slow"), start_fake_ns("deny")
      local m = start_members({ { name = "db.1", ns = { f1.addr, f2.addr, f3.addr },
        configure = { connect_timeout = 0.3 }, master = { selector = "db.*", ttl = 3 } } })
      assert(H.wait_for(function() return #transitions(m, "samples") > 0 end, 5),
        "db.1 never held the lease its three name services' majority granted: " .. m.file("err"))
      local t1 = transitions(m, "samples")[1].at
      -- The first renewal goes out at t1 + 1 s (a third of the lease time): f1 grants it
      -- and closes, f2 grants 0.3 s later. A counted dead grant would keep the lease
      -- believed until about t1 + 3.7 s.
      sleep_until(t1 + 3.4)
      local from, to = t1 + 1.8, t1 + 3.4
      local held_for = 0
      for _, iv in ipairs(intervals(transitions(m, "samples"), clock())) do
        held_for = held_for + math.max(0, math.min(iv[2], to) - math.max(iv[1], from))
      end
      note("defect 1: held %.2f s of [t1+1.8, t1+3.4]; transitions %s", held_for, m.file("samples"):gsub("\n", " "))
      assert(held_for == 0, ("db.1 held the lease %.2f s of the 1.6 s after the renewal round in which a "
        .. "granting name service closed its connection (one live grant of three)"):format(held_for))
    end, 15)
  end)

  -- Defect 2 (t_partition): the name service freed the lease of a holder whose connection
  -- ended uncleanly (no heartbeat) and granted it to a standby, while the holder, cut off
  -- one way only, still believed it held the lease. Now the lease is fenced until its time
  -- runs out. db.1 reaches the name service through a relay; the relay cuts db.1 -> name
  -- service, and 0.3 s later name service -> db.1 too. With a 0.2 s heartbeat the name
  -- service gives db.1 up after 0.6 s, db.1 hears nothing for 0.6 s only after the second
  -- cut: two masters for about 0.3 s, unless the lease is held back.
  it("2: a holder cut off one way keeps its lease fenced until it runs out: never two masters", function()
    H.run(function()
      local ns = start_ns({ configure = { heartbeat = 0.2 } })
      local relay = start_python("regress_groups_relay.py", ns.addr, "@DIR")
      relay.addr = wait_file(relay, "addr", 5, "relay")
      local conf = { heartbeat = 0.2, connect_timeout = 0.3, call_timeout = 1 }
      local a = start_members({ { name = "db.1", ns = relay.addr, configure = conf,
        master = { selector = "db.*", ttl = 3 } } })
      assert(H.wait_for(function() return #transitions(a, "samples") > 0 end, 5),
        "db.1 did not get the lease: " .. a.file("err"))
      local b = start_members({ { name = "db.2", ns = ns.addr, configure = conf,
        master = { selector = "db.*", ttl = 3 } } })
      luanet.sleep(0.3)
      assert.equals(0, #transitions(b, "samples"), "db.2 got the lease while db.1 held it")
      local t0 = clock()
      assert(io.open(relay.dir .. "/block_up", "w")):close()
      luanet.sleep(0.3)
      assert(io.open(relay.dir .. "/block_down", "w")):close()
      -- db.2 gets the lease when db.1's has run out (fixed) or as soon as the name service
      -- gave db.1 up (before the fix); either way within about 3.5 s.
      assert(H.wait_for(function() return #transitions(b, "samples") > 0 end, 6),
        "db.2 never got the lease after db.1 was cut off: " .. b.file("err"))
      assert(H.wait_for(function()
        local t = transitions(a, "samples")
        return #t > 0 and not t[#t].held
      end, 3), "db.1 still believes it holds the lease 3 s after db.2 got it")
      local now = clock()
      local ia, ib = intervals(transitions(a, "samples"), now), intervals(transitions(b, "samples"), now)
      local overlap = 0
      for _, x in ipairs(ia) do
        for _, y in ipairs(ib) do
          overlap = overlap + math.max(0, math.min(x[2], y[2]) - math.max(x[1], y[1]))
        end
      end
      note("defect 2: db.1 stopped believing %.2f s after the first cut, db.2 held from %.2f s; overlap %.3f s",
        ia[#ia][2] - t0, ib[1][1] - t0, overlap)
      assert(overlap < 0.02, ("db.1 and db.2 both held the lease for %.3f s (db.1 until %.2f s after the "
        .. "first cut, db.2 from %.2f s)"):format(overlap, ia[#ia][2] - t0, ib[1][1] - t0))
    end, 15)
  end)

  -- Defect 3 (t_twice): a second StandForMaster for the same group in one process made two
  -- candidates the name service cannot tell apart (one registration): both believed every
  -- grant, and resigning one gave the lease back while the other went on believing.
  it("3: a second StandForMaster for the same group in one process raises", function()
    H.run(function()
      local ns = start_ns()
      local m = start_members({ { name = "db.1", ns = ns.addr } })
      local r = eval(m, 8, [[
        local out = {}
        S.l1 = luanet.StandForMaster("db.*", { ttl = 3 })
        local ok, e = pcall(luanet.StandForMaster, "db.*", { ttl = 3 })
        out.second_ok, out.second_err = ok, tostring(e)
        if ok then e:resign() end
        out.first_held = S.l1:wait(3)
        -- another group is another candidacy; after resigning, the group may be stood for again
        local ok2, l2 = pcall(luanet.StandForMaster, "d*", { ttl = 3 })
        out.other_ok, out.other_err = ok2, tostring(l2)
        if ok2 then l2:resign() end
        S.l1:resign()
        local ok3, l3 = pcall(luanet.StandForMaster, "db.*", { ttl = 3 })
        out.again_ok, out.again_err = ok3, tostring(l3)
        if ok3 then
          out.again_held = l3:wait(3)
          l3:resign()
        end
        return out
      ]])
      assert.is_false(r.second_ok, "a second StandForMaster(\"db.*\") in the same process did not raise")
      assert.is_true(mentions(r.second_err, { "StandForMaster", "already" }), r.second_err)
      assert.is_true(r.first_held, "the first candidacy did not get the lease")
      assert.is_true(r.other_ok, "StandForMaster for another group raised: " .. r.other_err)
      assert.is_true(r.again_ok, "StandForMaster after resign raised: " .. r.again_err)
      assert.is_true(r.again_held, "the new candidacy after resign did not get the lease")
    end, 15)
  end)

  -- Defect 4 (t_waitshadow): the candidate kept its wait number in the field `wait`, which
  -- shadowed the method once it first parked: lease:wait() raised "attempt to call a
  -- number value" after the first renewal.
  it("4: lease:wait() works after the first renewal", function()
    H.run(function()
      local ns = start_ns()
      local m = start_members({ { name = "db.1", ns = ns.addr } })
      local r = eval(m, 8, [[
        local l = luanet.StandForMaster("db.*", { ttl = 0.3 })
        local out = { first = l:wait(2) }
        luanet.sleep(0.35)                -- renewed every 0.1 s: parked several times since
        local ok, v = pcall(function() return l:wait(1) end)
        out.ok, out.second = ok, tostring(v)
        l:resign()
        return out
      ]])
      assert.is_true(r.first, "the lease was not held within 2 s")
      assert.is_true(r.ok, "lease:wait() after the first renewal raised: " .. r.second)
      assert.equals("true", r.second)
    end, 15)
  end)

  -- Defect 5 (t_waiting): when a call's reply and its timeout met in one loop turn, the
  -- reply's handler and the timed-out call both took it off peer.waiting: the count (what
  -- the "least" policy reads, and service_stats().calls_waiting) went negative, -1280
  -- after 4000 calls.
  it("5: calls_waiting never goes negative when replies and timeouts meet in one loop turn", function()
    H.run(function()
      local s = start_caller({ name = "slow.1" })
      local c = start_caller()
      eval(s, 3, "luanet.RegRPCFunction('Slow', function(d) luanet.sleep(d) return 1 end) return true")
      local r = eval(c, 20, [[
        local target = ...
        local lowest, timeouts, oks, left = 0, 0, 0, 0
        local running = true
        luanet.spawn(function()
          while running do
            lowest = math.min(lowest, luanet.service_stats().calls_waiting)
            luanet.sleep(0.001)
          end
        end)
        for round = 1, 12 do
          for i = 1, 200 do
            left = left + 1
            luanet.spawn(function()
              local d = 0.02 + (i % 7) * 0.001
              local v, w = luanet.RPCCall(target, "Slow", d,
                luanet.call_options { timeout = d + 0.0005 * (i % 5 - 2) })
              if w == "timeout" then timeouts = timeouts + 1 elseif v then oks = oks + 1 end
              left = left - 1
            end)
          end
          while left > 0 do luanet.sleep(0.005) end
          lowest = math.min(lowest, luanet.service_stats().calls_waiting)
        end
        luanet.sleep(0.3)                 -- every late reply has come
        running = false
        return { lowest = lowest, final = luanet.service_stats().calls_waiting, oks = oks, timeouts = timeouts }
      ]], s.addr)
      note("defect 5: %d answered, %d timed out; calls_waiting lowest %d, at the end %d",
        r.oks, r.timeouts, r.lowest, r.final)
      assert.is_true(r.oks > 0 and r.timeouts > 0, "the calls did not mix replies and timeouts")
      assert.equals(0, r.final, "calls_waiting after every call ended")
      assert.is_true(r.lowest >= 0, "calls_waiting went down to " .. r.lowest)
    end, 25)
  end)

  -- Defect 6 (t_nan.py, t_nan2.lua): NaN passed every range check (NaN < x and NaN > x are
  -- both false): a name service granted a lease of NaN seconds that never ran out, and
  -- StandForMaster, call_options and configure took NaN times.
  it("6: NaN lease times and timeouts are refused", function()
    H.run(function()
      local ns = start_ns()
      -- over the wire: a raw client registers x.1 and asks for a lease of NaN seconds
      local c = assert(luanet.tcp.connect(ns.addr, { timeout = 2 }))
      local id = 0
      local function call(method, ...)
        id = id + 1
        assert(c:write_call(3, select("#", ...), 0, id, method, ...))
        while true do
          local v, word = c:read_message(3)
          assert(v, "the name service did not answer " .. method .. ": " .. tostring(word))
          if v[1] == 1 and v[2] == id then
            if v[3] ~= nil then return nil, v[3][1], v[3][2] end
            return v[4]
          end
        end
      end
      assert.is_true(call("luanet.ns.register", "x.1", "tcp://127.0.0.1:1", luanet.array { "Who" }))
      local got, word = call("luanet.ns.lease", "prefix", "x.", "x.1", 0 / 0)
      local view = call("luanet.ns.group", "prefix", "x.")
      c:close()
      -- every part is checked, then all that went wrong is reported at once
      local wrong = {}
      if got ~= nil or word ~= "bad request" then
        wrong[#wrong + 1] = ("luanet.ns.lease with a NaN ttl answered %s (%s), not \"bad request\""):format(
          tostring(got and ("granted = " .. tostring(got.granted)) or got), tostring(word))
      end
      if view.master ~= nil then
        wrong[#wrong + 1] = "the name service made " .. tostring(view.master) .. " the master for NaN seconds"
      end

      -- in the API
      local m = start_members({ { name = "db.1", ns = ns.addr } })
      local r = eval(m, 5, [[
        local out = {}
        local function try(name, f, ...)
          local ok, e = pcall(f, ...)
          if ok and name == "StandForMaster" then e:resign() end
          out[name] = ok and "accepted" or tostring(e)
        end
        try("StandForMaster", luanet.StandForMaster, "db.*", { ttl = 0 / 0 })
        try("call_options", luanet.call_options, { timeout = 0 / 0 })
        try("configure", luanet.configure, { call_timeout = 0 / 0 })
        local l = luanet.StandForMaster("db.*", { ttl = 3 })
        try("wait", l.wait, l, 0 / 0)
        l:resign()
        return out
      ]])
      local expect = { StandForMaster = "'ttl'", call_options = "'timeout'", configure = "call_timeout",
                       wait = "'timeout'" }
      for _, k in ipairs({ "StandForMaster", "call_options", "configure", "wait" }) do
        if not mentions(r[k], { expect[k] }) then
          wrong[#wrong + 1] = ("%s with NaN: %s"):format(k == "wait" and "lease:wait" or k, r[k])
        end
      end
      assert(#wrong == 0, "NaN taken for a time:\n  " .. table.concat(wrong, "\n  "))
    end, 15)
  end)

  -- Defect 7 (t_churn.py): each lease granted started a task that slept the whole lease
  -- time even when the lease was given back at once: 30,000 lease/release cycles of 60 s
  -- grew a name service to 93 MB. A raw client here registers x.1 and takes and gives back
  -- a 60 s lease 5,000 times; the name service's Lua memory (its parked tasks live there)
  -- and its RSS must not grow with the cycles.
  it("7: a lease's expiry task ends with the lease (5,000 lease/release cycles)", function()
    H.run(function()
      local ns = start_ns()
      local function lua_kb()
        return eval(ns, 5, "collectgarbage() collectgarbage() return collectgarbage('count')")
      end
      local function rss_kb()
        return tonumber(H.readfile("/proc/" .. ns.pid .. "/status"):match("VmRSS:%s*(%d+) kB"))
      end
      local c = assert(luanet.tcp.connect(ns.addr, { timeout = 2 }))
      local id = 0
      local function call(method, ...)
        id = id + 1
        assert(c:write_call(3, select("#", ...), 0, id, method, ...))
        while true do
          local v, word = c:read_message(3)
          assert(v, "the name service did not answer " .. method .. ": " .. tostring(word))
          if v[1] == 1 and v[2] == id then
            if v[3] ~= nil then return nil, v[3][1], v[3][2] end
            return v[4]
          end
        end
      end
      assert.is_true(call("luanet.ns.register", "x.1", "tcp://127.0.0.1:1", luanet.array { "Who" }))
      local function cycles(n)
        for _ = 1, n do
          local r, word, detail = call("luanet.ns.lease", "prefix", "x.", "x.1", 60)
          assert(r and r.granted, ("lease not granted: %s %s"):format(tostring(word), tostring(detail)))
          assert.is_true(call("luanet.ns.release", "prefix", "x.", "x.1"))
        end
      end
      cycles(200)                          -- warm up (worker tasks, tables at their size)
      local lua0, rss0 = lua_kb(), rss_kb()
      local t0 = luanet.now()
      cycles(5000)
      local took = luanet.now() - t0
      luanet.sleep(0.1)
      local lua1, rss1 = lua_kb(), rss_kb()
      local stats = call("luanet.ns.stats")
      c:close()
      note("defect 7: 5000 cycles in %.2f s; name service Lua memory %+.0f KiB, RSS %+d KiB; %d lease(s) open",
        took, lua1 - lua0, rss1 - rss0, stats.leases)
      assert.equals(0, stats.leases)
      assert(lua1 - lua0 < 1024, ("the name service's Lua memory grew %.0f KiB over 5,000 lease/release cycles")
        :format(lua1 - lua0))
      assert(rss1 - rss0 < 4096, ("the name service's RSS grew %d KiB over 5,000 lease/release cycles")
        :format(rss1 - rss0))
    end, 20)
  end)

  -- Defect 8 (t_resignwait): resign() on a lease never held woke nobody: a lease:wait()
  -- with no timeout waited for ever.
  it("8: resign() wakes a lease:wait() with no timeout on a lease never held", function()
    H.run(function()
      local ns = start_ns()
      local a = start_members({ { name = "db.1", ns = ns.addr, master = { selector = "db.*", ttl = 3 } } })
      assert(H.wait_for(function() return #transitions(a, "samples") > 0 end, 5), "db.1 did not get the lease")
      local b = start_members({ { name = "db.2", ns = ns.addr } })
      local r = eval(b, 5, [[
        local l = luanet.StandForMaster("db.*", { ttl = 3 })
        local wait = l.wait               -- the method (before the candidate ever parked)
        luanet.spawn(function() S.r = wait(l); S.done = clock() end)
        luanet.sleep(0.3)
        local held_before = l:held()
        local t = clock()
        l:resign()
        local deadline = luanet.now() + 2
        while not S.done and luanet.now() < deadline do luanet.sleep(0.01) end
        return { held_before = held_before, done = S.done ~= nil, r = S.r, after = S.done and S.done - t }
      ]])
      assert.is_false(r.held_before, "db.2 held the lease db.1 holds")
      assert.is_true(r.done, "lease:wait() was still waiting 2 s after resign()")
      assert.is_false(r.r)
      note("defect 8: lease:wait() returned %.3f s after resign()", r.after)
    end, 15)
  end)

  -- Twenty raw clients each pipeline 500 `method` requests (params from `params(round, i)`)
  -- and close at once; the name service's stats field `field` (what it watches for them)
  -- must come back to what it was: a request handled after its connection ended must not
  -- leave a watch behind.
  local function pipelined_and_closed(method, params, field)
    H.run(function()
      local ns = start_ns()
      local function stats() return eval(ns, 5, "return luanet.RPCCall(luanet.service_listener:local_addr(), 'luanet.ns.stats')") end
      local before = stats()
      for round = 1, 20 do
        local c = assert(luanet.tcp.connect(ns.addr, { timeout = 2 }))
        for i = 1, 500 do c:write_array(0, i, method, params(round, i)) end
        c:flush(2)
        c:close()
      end
      -- The name service has read them all well within this.
      luanet.sleep(1)
      local after
      local back = H.wait_for(function()
        after = stats()
        return after[field] == before[field]
      end, 2)
      note("%s: %s %d before, %d after 20 clients sent 500 requests each and closed",
        method, field, before[field], after[field])
      assert(back, ("the name service still keeps %d %s (%d before) for clients that closed")
        :format(after[field], field, before[field]))
    end, 15)
  end

  -- Defect 9 (t_deadwatch.py): a luanet.ns.group request handled after its connection had
  -- ended added a watch for that dead connection, and nothing ever removed it: clients
  -- that pipeline requests and close left groups behind for good. Twenty raw clients here
  -- each send 500 group requests (each a group of its own) and close at once; the name
  -- service's count of groups must come back to what it was.
  it("9: no group watches are kept for connections that already ended", function()
    pipelined_and_closed("luanet.ns.group", function(round, i)
      return luanet.array { "prefix", ("r%d.%d."):format(round, i) }
    end, "groups")
  end)

  -- Defect 10 (t_manygroups): a name service's own error word did not reach the caller:
  -- the resolver took "overloaded" for a name service that did not answer and said "no
  -- name service". One connection may watch 10,000 groups; a caller here watches that many,
  -- then asks for one more, with group:members() and with RPCCall to the group.
  it("10: a name service's \"overloaded\" reaches the caller of group:members() and RPCCall(group)", function()
    H.run(function()
      local ns = start_ns()
      local c = start_caller({ ns = ns.addr })
      local r = eval(c, 30, [[
        local failed, left = nil, 8
        for t = 1, 8 do
          luanet.spawn(function()
            for i = t, 10000, 8 do
              local m, w, d = luanet.Group("u" .. i .. ".*"):members()
              if not m then failed = failed or ("group %d: %s %s"):format(i, tostring(w), tostring(d)) end
            end
            left = left - 1
          end)
        end
        while left > 0 do luanet.sleep(0.01) end
        local out = { failed = failed }
        out.m, out.m_word, out.m_detail = luanet.Group("u10001.*"):members()
        out.r, out.r_word, out.r_detail = luanet.RPCCall(luanet.Group("u10002.*"), "Who")
        return out
      ]])
      assert.is_nil(r.failed, "one of the first 10,000 groups failed")
      note("defect 10: members(): %s (%s); RPCCall(group): %s (%s)", tostring(r.m_word), tostring(r.m_detail),
        tostring(r.r_word), tostring(r.r_detail))
      assert.is_nil(r.m, "the 10,001st group had members")
      assert.equals("overloaded", r.m_word, "group:members() of the 10,001st group: " .. tostring(r.m_detail))
      assert.is_nil(r.r)
      assert.equals("overloaded", r.r_word, "RPCCall to the 10,002nd group: " .. tostring(r.r_detail))
    end, 30)
  end)

  -- Defect 11 (t_levels): StandForMaster's errors about its selector named a line in
  -- luanet/master.lua instead of the caller's.
  it("11: StandForMaster's argument errors point at the caller's file and line", function()
    H.run(function()
      local ns = start_ns()
      local m = start_members({ { name = "db.1", ns = ns.addr } })
      local r = eval(m, 5, [[
        local chunk = assert(load(table.concat({
          "local luanet, out = ...",                                                   -- 1
          "out.a = select(2, pcall(function()",                                        -- 2
          "  luanet.StandForMaster('db')",                                             -- 3
          "end))",                                                                     -- 4
          "out.b = select(2, pcall(function()",                                        -- 5
          "  luanet.StandForMaster(42)",                                               -- 6
          "end))",                                                                     -- 7
          "out.c = select(2, pcall(function()",                                        -- 8
          "  luanet.StandForMaster({ provides = 'Who', extra = 1 })",                  -- 9
          "end))",                                                                     -- 10
          "out.d = select(2, pcall(function()",                                        -- 11
          "  luanet.StandForMaster('db.*', { ttl = 0 })",                              -- 12
          "end))",                                                                     -- 13
        }, "\n"), "@probe.lua"))
        local out = {}
        chunk(luanet, out)
        for k, v in pairs(out) do out[k] = tostring(v) end
        return out
      ]])
      assert.is_true(mentions(r.a, { "probe.lua:3:", "selector" }), "StandForMaster('db'): " .. r.a)
      assert.is_true(mentions(r.b, { "probe.lua:6:", "selector" }), "StandForMaster(42): " .. r.b)
      assert.is_true(mentions(r.c, { "probe.lua:9:", "selector" }), "StandForMaster({ provides, extra }): " .. r.c)
      assert.is_true(mentions(r.d, { "probe.lua:12:", "ttl" }), "StandForMaster('db.*', { ttl = 0 }): " .. r.d)
    end, 15)
  end)

  -- Defect 12: while a caller's first request for a group's members was on its way, it
  -- took a luanet.ns.group_changed push from any peer at all, and it believed a view
  -- member by member, whatever the addresses. A rogue peer (a raw connection from this
  -- process) pushes a view of its own to a caller whose name service is stopped (SIGSTOP)
  -- in the middle of the fetch; and a fake name service answers a view with a member whose
  -- address is "x".
  it("12: a group view pushed by a peer that is not a name service, or with a malformed member, is ignored", function()
    H.run(function()
      local ns = start_ns()
      start_members({ { name = "db.1", ns = ns.addr } })
      local c = start_caller({ ns = ns.addr })
      ns.kill("STOP")
      local stopped = true
      local ok, e = pcall(function()
        eval(c, 3, [[
          S.g = luanet.Group("db.*")
          luanet.spawn(function() S.first = { S.g:members() }; S.done = true end)
          return true
        ]])
        luanet.sleep(0.1)                 -- the fetch is on its way to the stopped name service
        local rogue = assert(luanet.tcp.connect(c.addr, { timeout = 2 }))
        rogue:write_array(2, "luanet.hello", luanet.array { "rogue", false })
        rogue:write_array(2, "luanet.ns.group_changed", luanet.array { "prefix", "db.",
          { members = luanet.array { luanet.array { "db.evil", "tcp://127.0.0.1:1" } }, version = 7 } })
        rogue:flush(2)
        luanet.sleep(0.2)
        ns.kill("CONT")
        stopped = false
        rogue:close()
      end)
      if stopped then ns.kill("CONT") end
      assert(ok, e)
      local r = eval(c, 8, [[
        local deadline = luanet.now() + 5
        while not S.done and luanet.now() < deadline do luanet.sleep(0.01) end
        return { done = S.done, first = S.first, now = { S.g:members() }, who = luanet.RPCCall(S.g, "Who") }
      ]])
      -- every part is checked, then all that went wrong is reported at once
      local wrong = {}
      local function list(t) return t[1] and table.concat(t[1], ",") or ("nil, " .. tostring(t[2])) end
      if not r.done then
        wrong[#wrong + 1] = "group:members() did not return within 5 s of the name service's resuming"
      elseif list(r.first) ~= "db.1" then
        wrong[#wrong + 1] = "group:members() while a rogue peer pushed its view: " .. list(r.first)
      end
      if list(r.now) ~= "db.1" then wrong[#wrong + 1] = "group:members() afterwards: " .. list(r.now) end
      if r.who ~= "db.1" then wrong[#wrong + 1] = "RPCCall to the group afterwards: " .. tostring(r.who) end

      -- a view with a malformed member, from the name service the caller was given
      local fake = start_fake_ns("bad")
      local c2 = start_caller({ ns = fake.addr })
      local b = eval(c2, 8, [[
        local g = luanet.Group("db.*")
        local function show(ok, a, b)
          if not ok then return "raised: " .. tostring(a) end
          return (type(a) == "table" and table.concat(a, ",") or tostring(a)) .. " " .. tostring(b)
        end
        return {
          members = show(pcall(g.members, g)),
          call = show(pcall(luanet.RPCCall, g, "Who", luanet.call_options { timeout = 0.5 })),
          bad = show(pcall(luanet.RPCCall, "db.bad", "Who", luanet.call_options { timeout = 0.5 })),
        }
      ]])
      note("defect 12: rogue push: members() %s; malformed view: members() %s; RPCCall(group) %s; RPCCall('db.bad') %s",
        list(r.first), b.members, b.call, b.bad)
      if b.members:find("db.bad", 1, true) or not b.members:find("^nil ") then
        wrong[#wrong + 1] = "group:members() believed a view with the member { \"db.bad\", \"x\" }: " .. b.members
      end
      if not b.call:find("^nil ") then wrong[#wrong + 1] = "RPCCall to that group: " .. b.call end
      if not b.bad:find("^nil ") then wrong[#wrong + 1] = "RPCCall to db.bad: " .. b.bad end
      local alive = pcall(eval, c2, 2, "return true")
      if not alive then wrong[#wrong + 1] = "the caller died: " .. c2.file("err") end
      assert(#wrong == 0, "a group view it should not have believed:\n  " .. table.concat(wrong, "\n  "))
    end, 20)
  end)

  -- Defect 15 (t_masterdown): after one failed call (a timeout) the master was passed over
  -- (as any member is, for a second), but for the master policy the mark was never taken
  -- off: every later call to the group left the fast path for good. (They still reached
  -- the master, so what shows it is the way they took.) The caller counts, by wrapping
  -- the slow path (internal.group_call, reached through RPCCall's upvalue "internal"),
  -- how many of 200 calls made after the pass-over took it.
  it("15: a master passed over after a failure is called the common way again", function()
    H.run(function()
      local ns = start_ns()
      local m = start_members({ { name = "db.1", ns = ns.addr, master = { selector = "db.*", ttl = 3 } } })
      eval(m, 3, "luanet.RegRPCFunction('Slow', function(d) luanet.sleep(d) return 1 end) return true")
      assert(H.wait_for(function() return #transitions(m, "samples") > 0 end, 5), "db.1 did not get the lease")
      local c = start_caller({ ns = ns.addr })
      local r = eval(c, 10, [[
        local internal
        for i = 1, 200 do
          local name, v = debug.getupvalue(luanet.RPCCall, i)
          if name == nil then break end
          if name == "internal" then internal = v end
        end
        assert(internal and type(internal.group_call) == "function", "RPCCall has no upvalue 'internal' with group_call")
        local g = luanet.Group("db.*", "master")
        local deadline = luanet.now() + 5
        while g:master() == nil and luanet.now() < deadline do g:members() luanet.sleep(0.01) end
        local out = { master = g:master() }
        out.before = luanet.RPCCall(g, "Who")
        local _, word = luanet.RPCCall(g, "Slow", 0.3, luanet.call_options { timeout = 0.05 })
        out.failure = tostring(word)
        luanet.sleep(1.3)                 -- past the pass-over (1 s)
        local slow, answered = 0, 0
        local orig = internal.group_call
        internal.group_call = function(...) slow = slow + 1 return orig(...) end
        local ok, e = pcall(function()
          for _ = 1, 200 do
            if luanet.RPCCall(g, "Who") == "db.1" then answered = answered + 1 end
          end
        end)
        internal.group_call = orig
        assert(ok, e)
        out.slow, out.answered = slow, answered
        return out
      ]])
      assert.equals("db.1", r.master)
      assert.equals("db.1", r.before)
      assert.equals("timeout", r.failure)
      note("defect 15: of 200 calls after the pass-over, %d answered by db.1, %d took the slow path", r.answered, r.slow)
      assert.equals(200, r.answered, "calls to the master after the pass-over that db.1 answered")
      assert(r.slow == 0, ("%d of 200 calls to the master made after its pass-over had ended took the slow path")
        :format(r.slow))
    end, 20)
  end)
  -- Found while writing these: luanet.ns.resolve kept a watch for a connection that had
  -- already ended (pipelined resolves, then close), for good for names never registered.
  it("9b: no name watches are kept for connections that already ended", function()
    pipelined_and_closed("luanet.ns.resolve", function(round, i)
      return luanet.array { ("nobody.%d.%d"):format(round, i) }
    end, "watched_names")
  end)

  -- Found while writing these: after the fix for 10, one listed address that answered
  -- with an error of its own (here an ordinary service: no such function) ended the
  -- lookup, and the real name service after it in the list was never asked.
  it("10b: an address that answers with an error does not keep the next name service from being asked", function()
    H.run(function()
      local ns = start_ns()
      local m = start_members({ { name = "db.1", ns = ns.addr } })
      local plain = start_caller({})          -- a service, but no name service
      local c = start_caller({ ns = { plain.addr, ns.addr } })
      local r = eval(c, 10, [[
        local out = {}
        out.by_name, out.word, out.detail = luanet.RPCCall("db.1", "Who")
        out.members, out.m_word = luanet.Group("db.*"):members()
        return out
      ]])
      assert.equals("db.1", r.by_name, ("RPCCall by name: %s (%s)"):format(tostring(r.word), tostring(r.detail)))
      assert.same({ "db.1" }, r.members, "group:members(): " .. tostring(r.m_word))
      m.kill()
    end, 20)
  end)
end)
