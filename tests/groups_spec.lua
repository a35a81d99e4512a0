-- Groups of services (docs/groups.md): luanet.Group and its policies (random, round-robin,
-- least, hash, broadcast, master), call_options key / idempotent / retries,
-- group:members(), group:master(), luanet.StandForMaster and its lease, membership pushes.
--
-- Covered: the spread of round-robin and random over four member processes; least in-flight
-- with one slow member; hash agreement between two caller processes, the keys that move
-- when a member joins and leaves, hash without a key; broadcast with a frozen, a crashing
-- and an unreachable member, broadcast SendMsg, an empty group; the master lease held by
-- exactly one candidate, taken over after SIGKILL (a caller calling in a loop meanwhile) and
-- after SIGSTOP, three candidates racing and handing over by resign with no overlap;
-- retries after a timeout, after a lost connection (hash: the key's next member), around a
-- member killed under load, and for calls that start after a member or the master was
-- killed but before the caller heard it left (also with the name service's pushes held 150
-- ms by a relay); membership changes pushed to a caller that makes no request (a relay
-- counts its requests); the rendezvous hash checked against PROTOCOL.md's formula; failure
-- paths and bad input, in the API and over the wire (luanet.ns.lease).
--
-- As in names_spec, every name service, member and caller is a child lua5.4 process (H.bg):
-- this process never becomes a service and never calls UseNameService. It drives the
-- children through an "Eval" function each of them offers (a chunk of Lua run inside that
-- child, with a persistent table S), called by address. Members are named "<type>.<n>";
-- callers are services named caller.<n> that never register, so no group here includes them.
-- Timestamps compared across processes come from CLOCK_MONOTONIC (luasystem's monotime,
-- which busted itself needs; /proc/uptime otherwise). Figures are written to stderr,
-- prefixed with [groups_spec].

local luanet = require "luanet"
local H = require "helper"

local clock = H.clock

local function report(fmt, ...)
  io.stderr:write(("\n[groups_spec] " .. fmt .. "\n"):format(...))
end

-- A Lua literal for strings, numbers, booleans and nested tables of them.
local ser = H.ser

---------------------------------------------------------------------------------------
-- Children
---------------------------------------------------------------------------------------

-- What every child starts with (after DIR/put and `local CONF = ...`).
local PRELUDE = [==[
local luanet = require "luanet"
]==] .. H.CHILD_CLOCK .. [==[
local function append(file, line)
  local f = assert(io.open(DIR .. "/" .. file, "a"))
  f:write(line, "\n")
  f:close()
end
if CONF.configure then luanet.configure(CONF.configure) end
luanet.spawn(function() luanet.sleep(CONF.life or 40) os.exit(3) end) -- never outlive the suite
local S = {}
local ENV = setmetatable({ luanet = luanet, clock = clock, put = put, append = append,
  CONF = CONF, S = S, DIR = DIR }, { __index = _G })
luanet.RegRPCFunction("Eval", function(src, ...)
  return assert(load(src, "=eval", "t", ENV))(...)
end)
]==]

-- A name service on 127.0.0.1:0; writes its address to "addr".
local NAMESERVICE = [==[
luanet.run(function()
  local ok, word, detail = luanet.StartNameService("127.0.0.1:0")
  if not ok then
    put("failed", tostring(word) .. ": " .. tostring(detail))
    os.exit(1)
  end
  put("addr", luanet.service_listener:local_addr())
end)
]==]

-- A member CONF.name registered at CONF.ns. Functions: Who (its name), Work (sleeps
-- CONF.work s), Boom (exits at once when CONF.boom), Write (its name if it holds the master
-- lease, else luanet.error("not master")), Msgs (the messages its inbox got). With
-- CONF.master = { selector, ttl, start_at }, it stands for master right after registering
-- (at start_at on the shared clock if given), logs on_change calls to "changes" and the
-- transitions of lease:held() (sampled every 2 ms) to "samples".
local MEMBER = [==[
local NAME = CONF.name
S.msgs = {}
luanet.RegRPCFunction("Who", function() return NAME end)
luanet.RegRPCFunction("Work", function()
  luanet.sleep(CONF.work or 0.001)
  return NAME
end)
luanet.RegRPCFunction("Boom", function()
  if CONF.boom then os.exit(7) end
  return NAME
end)
luanet.RegRPCFunction("Write", function(v)
  if CONF.write_delay then luanet.sleep(CONF.write_delay) end
  if not (S.lease and S.lease:held()) then luanet.error("not master", NAME .. " does not hold the lease") end
  return NAME
end)
luanet.RegRPCFunction("Msgs", function() return S.msgs end)
luanet.run(function()
  assert(luanet.StartLocalService(NAME, "127.0.0.1:0"))
  put("addr", luanet.service_listener:local_addr())
  luanet.spawn(function()
    while true do
      local m = luanet.GetMsg(1)
      if m ~= nil then S.msgs[#S.msgs + 1] = m end
    end
  end)
  local ok, word, detail = luanet.Register2Name(CONF.ns)
  put("reg", luanet.pack({ ok = ok, word = word, detail = detail, at = clock() }))
  local m = CONF.master
  if m then
    if m.start_at then
      while clock() < m.start_at do luanet.sleep(0.001) end
    end
    local t0 = clock()
    S.lease = luanet.StandForMaster(m.selector, { ttl = m.ttl, on_change = function(is_master)
      append("changes", ("%.6f %s"):format(clock(), tostring(is_master)))
    end })
    put("standing", ("%.6f"):format(t0))
    luanet.spawn(function()
      local last = false
      while true do
        local h = S.lease:held()
        if h ~= last then
          append("samples", ("%.6f %s"):format(clock(), tostring(h)))
          last = h
        end
        luanet.sleep(0.002)
      end
    end)
  end
end)
]==]

-- A caller: the service CONF.name, never registered, looking names up at CONF.ns.
-- Helpers for the Eval chunks: wait_members(group, n_or_pred, [t]) and
-- hash_map(group, n): the member each of the keys 1..n answers from (odd: the integer i,
-- even: the string "key-<i>").
local CALLER = [==[
function ENV.wait_members(g, want, t)
  local deadline = luanet.now() + (t or 5)
  while true do
    local m, w, d = g:members()
    if m and ((type(want) == "number" and #m == want) or (type(want) == "function" and want(m))) then
      return m
    end
    if luanet.now() > deadline then
      error(("members: wanted %s, have %s (%s %s)"):format(tostring(want),
        m and table.concat(m, ",") or "nil", tostring(w), tostring(d)))
    end
    luanet.sleep(0.005)
  end
end
function ENV.key_of(i) return (i % 2 == 0) and ("key-" .. i) or i end
function ENV.hash_map(g, n, fname)
  local out, done = {}, 0
  for t = 1, 4 do
    luanet.spawn(function()
      for i = t, n, 4 do
        local v, w, d = luanet.RPCCall(g, fname or "Who",
          luanet.call_options { key = ENV.key_of(i), timeout = 3 })
        out[i] = v or ("!" .. tostring(w) .. ": " .. tostring(d))
      end
      done = done + 1
    end)
  end
  while done < 4 do luanet.sleep(0.005) end
  return out
end
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
  assert(H.wait_for(function() return p.file(file) ~= "" or p.file("failed") ~= "" end, t or 5),
    (what or "child") .. " did not start: " .. p.file("err"))
  assert(p.file(file) ~= "", (what or "child") .. " failed: " .. p.file("failed") .. p.file("err"))
  return p.file(file)
end

-- A name service child (opts.configure: its luanet.configure table). Returns the H.bg
-- object with .addr.
local function start_ns(opts)
  opts = opts or {}
  local p = H.bg(child_source({ configure = opts.configure }, NAMESERVICE))
  p.name = "nameservice"
  p.addr = wait_file(p, "addr", 5, "name service")
  return p
end

-- Starts every member in `list` (CONF tables without ns) at once, waits for each one's
-- Register2Name. Returns name -> H.bg object (with .name, .addr, .reg).
local function start_members(ns, list)
  local ps = {}
  for _, conf in ipairs(list) do
    conf.ns = conf.ns or ns.addr
    local p = H.bg(child_source(conf, MEMBER))
    p.name = conf.name
    ps[#ps + 1] = p
  end
  local out = {}
  for _, p in ipairs(ps) do
    p.addr = wait_file(p, "addr", 5, "member " .. p.name)
    assert(H.wait_for(function() return p.file("reg") ~= "" end, 10),
      "Register2Name did not return in " .. p.name .. ": " .. p.file("err"))
    p.reg = luanet.unpack(p.file("reg"))
    assert(p.reg.ok, ("%s did not register: %s %s"):format(p.name, tostring(p.reg.word), tostring(p.reg.detail)))
    out[p.name] = p
  end
  return out
end

local ncallers = 0
local function start_caller(ns, opts)
  opts = opts or {}
  ncallers = ncallers + 1
  local conf = { name = "caller." .. ncallers, ns = opts.ns or (ns and ns.addr), configure = opts.configure }
  local p = H.bg(child_source(conf, CALLER))
  p.name = conf.name
  p.addr = wait_file(p, "addr", 5, "caller")
  return p
end

-- Runs `src` in the child p (Eval, by address) and returns its first result; raises when
-- the call fails.
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

-- A name service method over a raw connection of this process's own (H.raw_call).
local ns_call = H.raw_call

-- Keeps ns.raw alive (a ping every 0.3 s) until stop() is called.
local function keep_raw_alive(ns)
  local running = true
  H.go(function()
    while running do
      if ns.raw then ns.raw:write_array(2, "luanet.ping", luanet.array()) end
      luanet.sleep(0.3)
    end
  end)
  return function() running = false end
end

-- The lease:held() samples a child wrote to `file` (H.held_transitions).
local function transitions(p, file) return H.held_transitions(p.file(file)) end

local intervals = H.held_intervals

-- Pairs of intervals of different members that overlap by more than `tol` seconds.
local function overlaps(by_member, tol)
  local found = {}
  local names = {}
  for n in pairs(by_member) do names[#names + 1] = n end
  table.sort(names)
  for i = 1, #names do
    for j = i + 1, #names do
      for _, a in ipairs(by_member[names[i]]) do
        for _, b in ipairs(by_member[names[j]]) do
          local o = math.min(a[2], b[2]) - math.max(a[1], b[1])
          if o > tol then
            found[#found + 1] = ("%s [%.3f, %.3f] and %s [%.3f, %.3f] overlap by %.3f s")
              :format(names[i], a[1], a[2], names[j], b[1], b[2], o)
          end
        end
      end
    end
  end
  return found
end

-- Rendezvous hashing as docs/PROTOCOL.md specifies it ("Hashing a key to a member"),
-- written from that text alone: H = FNV-1a 64 passed through SplitMix64's finaliser (Lua
-- integers wrap modulo 2^64, >> is a logical shift).
local function mix64(x)
  x = (x ~ (x >> 30)) * 0xbf58476d1ce4e5b9
  x = (x ~ (x >> 27)) * 0x94d049bb133111eb
  return x ~ (x >> 31)
end
local function fnv1a64(str)
  local h = 0xcbf29ce484222325
  for i = 1, #str do h = (h ~ str:byte(i)) * 0x100000001b3 end
  return mix64(h)
end
local function rendezvous(key, members)
  local hk = fnv1a64(tostring(key))   -- an integer key is hashed as its decimal text
  local sorted = { table.unpack(members) }
  table.sort(sorted)
  local best, best_score
  for _, m in ipairs(sorted) do
    local sc = mix64(hk ~ fnv1a64(m))
    if best == nil or math.ult(best_score, sc) then best, best_score = m, sc end
  end
  return best, best_score
end
local function key_of(i) return (i % 2 == 0) and ("key-" .. i) or i end

local function held(p)
  return eval(p, 2, "return S.lease ~= nil and S.lease:held()")
end

-- Names of the processes in `ps` (a list) that hold their lease now.
local function holders(ps)
  local out = {}
  for _, p in ipairs(ps) do
    if held(p) then out[#out + 1] = p.name end
  end
  table.sort(out)
  return out
end

local function first_true_after(p, file, t)
  for _, l in ipairs(transitions(p, file)) do
    if l.held and l.at >= t then return l.at end
  end
  return nil
end

local function count(list)
  local c = {}
  for _, v in pairs(list) do c[v] = (c[v] or 0) + 1 end
  return c
end

local function fmt_counts(c)
  local keys = {}
  for k in pairs(c) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = ("%s=%d"):format(k, c[k]) end
  return table.concat(parts, " ")
end

-- An error text (raised, or the word and detail of nil, word, detail) mentions one of `words`.
local function mentions(text, words)
  text = tostring(text):lower()
  for _, w in ipairs(words) do
    if text:find(w:lower(), 1, true) then return true end
  end
  return false
end

-- A TCP relay in this process between a caller and its name service: it keeps what the
-- caller sent (px.up, to count the name-service requests, "luanet.ns.*", it made), and
-- holds what the name service sends back for px.delay seconds when that is set.
local function start_proxy(target)
  local l = assert(luanet.tcp.listen("127.0.0.1:0"))
  local px = { addr = l:local_addr(), up = "", running = true, delay = 0 }
  local function pump(from, to, upstream)
    H.go(function()
      while px.running do
        local d, err = from:read(nil, 0.05)
        if d then
          if upstream then
            px.up = px.up .. d
          elseif px.delay > 0 then
            luanet.sleep(px.delay)
          end
          if not to:write(d) then break end
        elseif err ~= "timeout" then
          break
        end
      end
      pcall(from.close, from)
      pcall(to.close, to)
    end)
  end
  H.go(function()
    while px.running do
      local c = l:accept(0.05)
      if c then
        local u = assert(luanet.tcp.connect(target, { timeout = 2 }))
        pump(c, u, true)
        pump(u, c, false)
      end
    end
    l:close()
  end)
  -- the name-service methods the caller sent since byte `from`
  function px.requests(from)
    local out = {}
    for m in px.up:sub((from or 0) + 1):gmatch("luanet%.ns%.[%w_]+") do out[#out + 1] = m end
    return out
  end
  function px.stop() px.running = false end
  return px
end

---------------------------------------------------------------------------------------
-- Tests
---------------------------------------------------------------------------------------

describe("groups: spreading calls", function()
  it("round-robin takes the four members in turn, exactly equally; random gives each a fair share", function()
    H.run(function()
      local ns = start_ns()
      start_members(ns, { { name = "w.1" }, { name = "w.2" }, { name = "w.3" }, { name = "w.4" } })
      local c = start_caller(ns)
      local r = eval(c, 25, [[
        local rr = luanet.Group("w.*", "round-robin")
        local members = wait_members(rr, 4)
        local seq = {}
        for i = 1, 400 do
          local v, w, d = luanet.RPCCall(rr, "Who")
          seq[i] = v or ("!" .. tostring(w) .. ": " .. tostring(d))
        end
        local default = luanet.Group("w.*")         -- round-robin is the default
        local dseq = {}
        for i = 1, 8 do dseq[i] = luanet.RPCCall(default, "Who") or "!" end
        local rnd = luanet.Group("w.*", "random")
        local rseq = {}
        for i = 1, 400 do rseq[i] = luanet.RPCCall(rnd, "Who") or "!" end
        local counts, done = {}, 0
        for _ = 1, 8 do
          luanet.spawn(function()
            for _ = 1, 500 do
              local v, w = luanet.RPCCall(rnd, "Who")
              local k = v or ("!" .. tostring(w))
              counts[k] = (counts[k] or 0) + 1
            end
            done = done + 1
          end)
        end
        while done < 8 do luanet.sleep(0.01) end
        return { members = members, seq = seq, dseq = dseq, rseq = rseq, counts = counts }
      ]])
      local names = { "w.1", "w.2", "w.3", "w.4" }
      assert.same(names, r.members)
      local succ = { ["w.1"] = "w.2", ["w.2"] = "w.3", ["w.3"] = "w.4", ["w.4"] = "w.1" }

      -- round-robin: exactly 100 each, and each call goes to the next member in name order
      local rc = count(r.seq)
      report("round-robin, 400 calls over 4 members: %s", fmt_counts(rc))
      assert.same({ ["w.1"] = 100, ["w.2"] = 100, ["w.3"] = 100, ["w.4"] = 100 }, rc)
      for i = 2, #r.seq do
        assert.equals(succ[r.seq[i - 1]], r.seq[i], ("call %d went to %s after %s"):format(i, r.seq[i], r.seq[i - 1]))
      end
      for i = 2, #r.dseq do
        assert.equals(succ[r.dseq[i - 1]], r.dseq[i], "the default policy is not round-robin: " .. table.concat(r.dseq, " "))
      end

      -- random: every member 20-30% of 4000 calls, no failure
      report("random, 4000 calls from 8 tasks over 4 members: %s", fmt_counts(r.counts))
      local total = 0
      for k, n in pairs(r.counts) do
        assert.is_truthy(succ[k], ("a call ended %s (x%d)"):format(k, n))
        total = total + n
      end
      assert.equals(4000, total)
      for _, n in ipairs(names) do
        local share = (r.counts[n] or 0) / 4000
        assert.is_true(share >= 0.20 and share <= 0.30, ("%s got %.3f of the random calls"):format(n, share))
      end
      -- and it is not a rotation in disguise: consecutive picks repeat about 1 time in 4
      local repeats, rotations = 0, 0
      for i = 2, #r.rseq do
        if r.rseq[i] == r.rseq[i - 1] then repeats = repeats + 1 end
        if r.rseq[i] == succ[r.rseq[i - 1]] then rotations = rotations + 1 end
      end
      report("random, 400 calls in a row: %d repeats of the previous member, %d steps to the next (expected ~100 each)",
        repeats, rotations)
      assert.is_true(repeats >= 50 and repeats <= 160, "repeats: " .. repeats)
      assert.is_true(rotations <= 160, "random looks like round-robin: " .. rotations .. " steps to the next member")
    end, 40)
  end)

  it("least: a slow member gets far fewer of many concurrent calls", function()
    H.run(function()
      local ns = start_ns()
      start_members(ns, { { name = "w.1", work = 0.5 }, { name = "w.2", work = 0.002 },
        { name = "w.3", work = 0.002 }, { name = "w.4", work = 0.002 } })
      local c = start_caller(ns)
      local r = eval(c, 10, [[
        local g = luanet.Group("w.*", "least")
        wait_members(g, 4)
        local counts, done, stop = {}, 0, luanet.now() + 1.5
        for _ = 1, 8 do
          luanet.spawn(function()
            while luanet.now() < stop do
              local v, w = luanet.RPCCall(g, "Work", luanet.call_options { timeout = 3 })
              local k = v or ("!" .. tostring(w))
              counts[k] = (counts[k] or 0) + 1
            end
            done = done + 1
          end)
        end
        while done < 8 do luanet.sleep(0.01) end
        return counts
      ]])
      report("least, 8 tasks for 1.5 s, w.1 slow (0.5 s a call), the others 2 ms: %s", fmt_counts(r))
      local total, fastest_min = 0, math.huge
      for k, n in pairs(r) do
        assert.is_truthy(k:match("^w%.%d$"), ("a call ended %s (x%d)"):format(k, n))
        total = total + n
        if k ~= "w.1" then fastest_min = math.min(fastest_min, n) end
      end
      local slow = r["w.1"] or 0
      for _, n in ipairs({ "w.2", "w.3", "w.4" }) do assert.is_truthy(r[n], n .. " got no call") end
      assert.is_true(total >= 100, "only " .. total .. " calls were made")
      assert.is_true(slow >= 1, "the slow member got no call at all")
      -- round-robin or random would give it about a quarter
      assert.is_true(slow / total < 0.05, ("the slow member got %.3f of the calls"):format(slow / total))
      assert.is_true(slow * 5 <= fastest_min, ("slow %d, the least busy fast one %d"):format(slow, fastest_min))
    end, 25)
  end)
end)

describe("groups: hash", function()
  it("two callers agree on each key's member; a join moves ~1/n of the keys, all to the newcomer; a leave moves only the leaver's", function()
    H.run(function()
      local N = 1000
      local ns = start_ns()
      local ms = start_members(ns, { { name = "w.1" }, { name = "w.2" }, { name = "w.3" }, { name = "w.4" } })
      local a, b = start_caller(ns), start_caller(ns)
      local MAP = [[
        S.g = S.g or luanet.Group("w.*", "hash")
        wait_members(S.g, ...)
        return hash_map(S.g, ]] .. N .. [[)
      ]]
      local function check_map(m, what)
        assert.equals(N, #m, what)
        for i = 1, N do
          assert.is_truthy(m[i]:match("^w%.%d$"), ("%s: key %s -> %s"):format(what, tostring(i), m[i]))
        end
      end
      local m1a = eval(a, 20, MAP, 4)
      local m1b = eval(b, 20, MAP, 4)
      check_map(m1a, "caller A, 4 members")
      check_map(m1b, "caller B, 4 members")
      local differ = 0
      for i = 1, N do if m1a[i] ~= m1b[i] then differ = differ + 1 end end
      assert.equals(0, differ, "two callers disagree on keys")
      local c1 = count(m1a)
      report("hash, %d keys over 4 members: %s", N, fmt_counts(c1))
      -- what PROTOCOL.md says a caller in another language computes
      assert.equals("c5d1556d66774a5c", ("%016x"):format(fnv1a64("alice")))  -- the doc's check values
      assert.equals("787354f609f5be2e", ("%016x"):format(fnv1a64("mail.1")))
      assert.equals("mail.2", (rendezvous("alice", { "mail.1", "mail.2", "mail.3" })))
      local function check_protocol(m, members, what)
        local off = {}
        for i = 1, N do
          local want = rendezvous(key_of(i), members)
          if m[i] ~= want then off[#off + 1] = ("%s -> %s, not %s"):format(tostring(key_of(i)), m[i], want) end
        end
        assert.equals(0, #off, what .. ": keys not where PROTOCOL.md's hashing puts them: "
          .. table.concat(off, "; ", 1, math.min(#off, 5)))
      end
      check_protocol(m1a, { "w.1", "w.2", "w.3", "w.4" }, "4 members")
      for _, n in ipairs({ "w.1", "w.2", "w.3", "w.4" }) do
        assert.is_true((c1[n] or 0) >= 150 and (c1[n] or 0) <= 350, ("%s has %d keys"):format(n, c1[n] or 0))
      end

      -- a member joins: only keys moving to it move, about 1/5 of them
      local t0 = luanet.now()
      start_members(ns, { { name = "w.5" } })
      local m2a = eval(a, 20, MAP, 5)
      local m2b = eval(b, 20, MAP, 5)
      check_map(m2a, "caller A, 5 members")
      differ = 0
      for i = 1, N do if m2a[i] ~= m2b[i] then differ = differ + 1 end end
      assert.equals(0, differ, "after the join, two callers disagree on keys")
      local moved, elsewhere = 0, 0
      for i = 1, N do
        if m2a[i] ~= m1a[i] then
          moved = moved + 1
          if m2a[i] ~= "w.5" then elsewhere = elsewhere + 1 end
        end
      end
      report("hash, member w.5 joined 4: %d of %d keys moved (share %.3f; ideal 0.200), %d of them not to w.5; took %.2f s",
        moved, N, moved / N, elsewhere, luanet.now() - t0)
      assert.equals(0, elsewhere, "keys moved between old members on a join")
      check_protocol(m2a, { "w.1", "w.2", "w.3", "w.4", "w.5" }, "5 members")
      assert.is_true(moved / N >= 0.10 and moved / N <= 0.35, ("moved share %.3f"):format(moved / N))

      -- a member leaves (SIGKILL): only its keys move, each to a live member
      ms["w.2"].kill("KILL")
      local m3a = eval(a, 20, [[
        wait_members(S.g, function(m)
          for _, n in ipairs(m) do if n == "w.2" then return false end end
          return #m == 4
        end)
        return hash_map(S.g, ]] .. N .. [[)
      ]])
      check_map(m3a, "caller A, w.2 gone")
      local own, others_moved = 0, 0
      for i = 1, N do
        if m2a[i] == "w.2" then
          own = own + 1
          assert.not_equals("w.2", m3a[i])
        elseif m3a[i] ~= m2a[i] then
          others_moved = others_moved + 1
        end
      end
      report("hash, member w.2 left 5: its %d keys moved, %d other keys moved", own, others_moved)
      assert.equals(0, others_moved, "keys of members that stayed moved when w.2 left")
      check_protocol(m3a, { "w.1", "w.3", "w.4", "w.5" }, "w.2 gone")

      -- hash without a key: a clear error, raised or returned
      local r = eval(a, 5, [[
        local ok, v, w, d = pcall(luanet.RPCCall, S.g, "Who")
        local ok2, v2, w2, d2 = pcall(luanet.RPCCall, S.g, "Who", luanet.call_options { timeout = 1 })
        return { { ok = ok, v = v, w = w, d = d }, { ok = ok2, v = v2, w = w2, d = d2 } }
      ]])
      for i, x in ipairs(r) do
        if x.ok then
          assert.is_nil(x.v, ("hash without a key (case %d) was answered by %s"):format(i, tostring(x.v)))
          assert.is_string(x.w)
          assert.is_true(mentions(x.w .. " " .. tostring(x.d), { "key" }),
            ("hash without a key (case %d): %s %s"):format(i, x.w, tostring(x.d)))
        else
          assert.is_true(mentions(x.v, { "key" }), "hash without a key raised: " .. tostring(x.v))
        end
      end
      report("hash without a key: %s", r[1].ok and (tostring(r[1].w) .. ": " .. tostring(r[1].d)) or ("raised " .. tostring(r[1].v)))
    end, 60)
  end)
end)

describe("groups: broadcast", function()
  it("calls every member: a frozen, a crashing and an unreachable one fail in their entries, in name order; SendMsg reaches the live ones; an empty group is no such service", function()
    H.run(function()
      local ns = start_ns()
      local ms = start_members(ns, { { name = "w.1" }, { name = "w.2" }, { name = "w.3", boom = true } })
      -- w.4: registered over a raw connection of ours, at an address nobody listens on
      local dead_addr = "tcp://127.0.0.1:" .. H.free_port()
      assert.is_true(ns_call(ns, "luanet.ns.register", "w.4", dead_addr, luanet.array { "Who" }))
      local stop_ping = keep_raw_alive(ns)
      local c = start_caller(ns)
      eval(c, 5, [[
        S.b = luanet.Group("w.*", "broadcast")
        return wait_members(S.b, 4)
      ]])

      -- w.2 frozen: its entry times out, the others answer
      ms["w.2"].kill("STOP")
      local r = eval(c, 10, [[
        local t0 = luanet.now()
        local each, w, d = luanet.RPCCall(S.b, "Who", luanet.call_options { timeout = 0.5 })
        return { each = each, w = w, d = d, el = luanet.now() - t0 }
      ]])
      ms["w.2"].kill("CONT")
      assert.is_table(r.each, tostring(r.w) .. " " .. tostring(r.d))
      assert.equals(4, #r.each)
      local order = {}
      for i, e in ipairs(r.each) do order[i] = e.name end
      assert.same({ "w.1", "w.2", "w.3", "w.4" }, order)
      assert.same({ name = "w.1", ok = true, result = "w.1" }, r.each[1])
      assert.same({ name = "w.3", ok = true, result = "w.3" }, r.each[3])
      assert.is_false(r.each[2].ok)
      assert.equals("timeout", r.each[2].word)
      assert.is_false(r.each[4].ok)
      assert.is_string(r.each[4].word)
      assert.is_nil(r.each[4].result)
      report("broadcast with w.2 frozen, w.4 unreachable: answered in %.3f s; w.2: %s, w.4: %s (%s)",
        r.el, r.each[2].word, r.each[4].word, tostring(r.each[4].detail))
      assert.is_true(r.el >= 0.45 and r.el < 1.5, "broadcast took " .. r.el .. " s")

      -- w.3 exits while handling the call: connection lost in its entry
      luanet.sleep(0.1)
      r = eval(c, 10, [[
        local each, w, d = luanet.RPCCall(S.b, "Boom", luanet.call_options { timeout = 2 })
        return { each = each, w = w, d = d }
      ]])
      assert.is_table(r.each, tostring(r.w) .. " " .. tostring(r.d))
      assert.equals(4, #r.each)
      assert.same({ name = "w.1", ok = true, result = "w.1" }, r.each[1])
      assert.same({ name = "w.2", ok = true, result = "w.2" }, r.each[2])
      assert.same({ "w.3", false, "connection lost" }, { r.each[3].name, r.each[3].ok, r.each[3].word })
      assert.same({ "w.4", false }, { r.each[4].name, r.each[4].ok })

      -- SendMsg to every member: written to the two live ones, w.4 in the failures
      r = eval(c, 10, [[
        wait_members(S.b, 3)
        local sent, failures, d = luanet.SendMsg(S.b, { hello = "all" })
        return { sent = sent, failures = failures, d = d, members = S.b:members() }
      ]])
      assert.same({ "w.1", "w.2", "w.4" }, r.members)
      assert.equals(2, r.sent, tostring(r.failures) .. " " .. tostring(r.d))
      assert.is_table(r.failures)
      assert.equals(1, #r.failures)
      assert.equals("w.4", r.failures[1].name)
      assert.is_string(r.failures[1].word)
      for _, n in ipairs({ "w.1", "w.2" }) do
        assert.is_true(H.wait_for(function()
          local msgs = luanet.RPCCall(ms[n].addr, "Msgs")
          return msgs and #msgs == 1
        end, 3), n .. " did not get the message")
        assert.same({ { hello = "all" } }, luanet.RPCCall(ms[n].addr, "Msgs"))
      end

      -- an empty group
      r = eval(c, 10, [[
        local e = luanet.Group("nobody.*", "broadcast")
        local out = {}
        out.members = { e:members() }
        out.call = { luanet.RPCCall(e, "Who", luanet.call_options { timeout = 1 }) }
        out.msg = { luanet.SendMsg(e, "hi") }
        out.rr = { luanet.RPCCall(luanet.Group("nobody.*"), "Who", luanet.call_options { timeout = 1 }) }
        return out
      ]])
      assert.same({}, r.members[1])
      assert.same({ nil, "no such service" }, { r.call[1], r.call[2] })
      assert.same({ nil, "no such service" }, { r.msg[1], r.msg[2] })
      assert.same({ nil, "no such service" }, { r.rr[1], r.rr[2] })
      stop_ping()
    end, 30)
  end)
end)

describe("groups: the master lease", function()
  it("exactly one candidate holds it; after SIGKILL a standby takes over within the lease time while a caller calls the master in a loop", function()
    H.run(function()
      local TTL, TIMEOUT = 1, 0.5
      local ns = start_ns()
      local conf = {}
      for i = 1, 3 do
        conf[i] = { name = "m." .. i, write_delay = 0.05, master = { selector = "m.*", ttl = TTL } }
      end
      local t_start = clock()
      local ms = start_members(ns, conf)
      local all = { ms["m.1"], ms["m.2"], ms["m.3"] }
      local h
      assert.is_true(H.wait_for(function()
        h = holders(all)
        return #h >= 1
      end, 3), "nobody holds the lease 3 s after standing")
      luanet.sleep(0.3)
      h = holders(all)
      assert.equals(1, #h, "holders: " .. table.concat(h, ", "))
      local master = ms[h[1]]
      local won = first_true_after(master, "changes", 0)
      assert.is_truthy(won, master.name .. " holds the lease but on_change(true) was not called")
      report("master: %s holds the lease %.3f s after the candidates started", master.name, won - t_start)

      local c = start_caller(ns)
      local r = eval(c, 5, [[
        S.g = luanet.Group("m.*", "master")
        local v, w, d = luanet.RPCCall(S.g, "Write", 0)
        return { v = v, w = w, d = d, master = S.g:master() }
      ]])
      assert.same({ master.name, nil }, { r.v, r.w }, tostring(r.d))
      assert.equals(master.name, r.master)
      eval(c, 5, [[
        S.log, S.stop, S.done = {}, false, 0
        for k = 1, 3 do     -- Write takes 50 ms, the tasks are staggered: calls are always waiting on the master
          luanet.spawn(function()
            luanet.sleep((k - 1) * 0.017)
            local i = 0
            while not S.stop do
              i = i + 1
              local t0 = luanet.now()
              local v, w, d = luanet.RPCCall(S.g, "Write", i,
                luanet.call_options { timeout = ]] .. TIMEOUT .. [[, idempotent = true })
              S.log[#S.log + 1] = { at = clock(), el = luanet.now() - t0, v = v, w = w, d = d }
              luanet.sleep(0.001)
            end
            S.done = S.done + 1
          end)
        end
        function S.oks(name, since)
          local n = 0
          for _, l in ipairs(S.log) do
            if l.v == name and l.at >= since then n = n + 1 end
          end
          return n
        end
      ]])
      assert.is_true(H.wait_for(function() return eval(c, 2, "return S.oks(...)", master.name, 0) >= 10 end, 5),
        "the loop does not reach the master")
      luanet.sleep(0.01 + math.random() * 0.05) -- not in step with the loop

      local t_kill = clock()
      master.kill("KILL")
      local t_killed = clock() -- the master died between t_kill and t_killed
      local others = {}
      for _, p in ipairs(all) do if p ~= master then others[#others + 1] = p end end
      local new
      assert.is_true(H.wait_for(function()
        for _, p in ipairs(others) do
          if first_true_after(p, "changes", t_kill) then new = p return true end
        end
        return false
      end, 5), "no standby took over within 5 s")
      assert.is_true(H.wait_for(function() return eval(c, 2, "return S.oks(...)", new.name, t_kill) >= 10 end, 5),
        "the caller's loop does not reach the new master")
      local log = eval(c, 5, [[
        S.stop = true
        while S.done < 3 do luanet.sleep(0.01) end
        return S.log
      ]])
      local takeover = first_true_after(new, "changes", t_kill) - t_kill
      local first_ok, failures, words, slowest, after = nil, 0, {}, 0, 0
      local in_flight, in_flight_ok = 0, 0   -- calls that may have been waiting when the master died
      for _, l in ipairs(log) do
        slowest = math.max(slowest, l.el)
        if l.at - l.el < t_killed and l.at > t_kill and l.v ~= master.name then
          in_flight = in_flight + 1
          if l.v == new.name then in_flight_ok = in_flight_ok + 1 end
        end
        if l.v == nil then
          failures = failures + 1
          words[#words + 1] = ("%s: %s (started %+.3f s from the kill, took %.3f s)"):format(tostring(l.w),
            tostring(l.d), l.at - l.el - t_kill, l.el)
        elseif l.at > t_kill then
          after = after + 1
          if l.v == new.name and not first_ok then first_ok = l.at end
        end
      end
      report("master kill: os.execute(kill) took %.3f s", t_killed - t_kill)
      if not first_ok then
        local lines = {}
        for i = math.max(1, #log - 40), #log do
          local l = log[i]
          lines[#lines + 1] = ("%.3f %.3f %s %s %s"):format(l.at - t_kill, l.el, tostring(l.v), tostring(l.w), tostring(l.d))
        end
        error("no call succeeded on the new master " .. new.name .. "; the last calls (at - t_kill, el, result):\n" .. table.concat(lines, "\n"))
      end
      report("master SIGKILLed (ttl %g): %s took over after %.3f s (on_change), the caller's first call on it "
        .. "returned %.3f s after the kill; %d calls, %d failed%s, slowest %.3f s (bound %.1f s); "
        .. "%d calls were waiting on the old master when it was killed, %d of them answered by the new one",
        TTL, new.name, takeover, first_ok - t_kill, #log, failures,
        failures > 0 and (" (" .. table.concat(words, "; ") .. ")") or "", slowest, TIMEOUT * 3,
        in_flight, in_flight_ok)
      assert.is_true(takeover < TTL, ("took over after %.3f s"):format(takeover))
      assert.is_true(slowest <= TIMEOUT * 3 + 0.25, ("a call took %.3f s"):format(slowest))
      assert.equals(0, failures, table.concat(words, "; "))
      assert.is_true(in_flight >= 1, "no call was waiting on the master when it was killed: the test proves nothing")
      assert.equals(in_flight, in_flight_ok, "calls waiting at the kill that the new master did not answer")
      -- calls succeed on the new master, and only there
      for i = #log - 9, #log do
        assert.equals(new.name, log[i].v, ("call %d after the takeover: %s %s"):format(i, tostring(log[i].w), tostring(log[i].d)))
      end
      -- exactly one holds it now, the caller knows it
      assert.same({ new.name }, holders(others))
      assert.equals(new.name, eval(c, 2, "return S.g:master()"))
      -- nobody believed it held the lease before the old master died
      for _, p in ipairs(others) do
        for _, l in ipairs(transitions(p, "changes")) do
          if l.held then
            assert.is_true(l.at > t_kill, ("%s became master at %.3f, before the kill at %.3f"):format(p.name, l.at, t_kill))
          end
        end
      end
    end, 30)
  end)

  it("a frozen (SIGSTOP) master is replaced within ttl plus a small margin, its callers follow the new one, and it no longer holds when it resumes", function()
    H.run(function()
      local TTL = 1
      local ns = start_ns()
      local ms = start_members(ns, {
        { name = "n.1", master = { selector = "n.*", ttl = TTL } },
        { name = "n.2", master = { selector = "n.*", ttl = TTL } },
      })
      local all = { ms["n.1"], ms["n.2"] }
      local h
      assert.is_true(H.wait_for(function()
        h = holders(all)
        return #h >= 1
      end, 3), "nobody holds the lease")
      luanet.sleep(0.5) -- a few renewals
      h = holders(all)
      assert.equals(1, #h, "holders: " .. table.concat(h, ", "))
      local x = ms[h[1]]
      local y = x == all[1] and all[2] or all[1]
      -- a caller calls the master in a loop, idempotent, with a timeout well over the ttl
      local CALL_TIMEOUT = 3
      local c = start_caller(ns)
      eval(c, 5, [[
        S.g = luanet.Group("n.*", "master")
        S.log, S.stop, S.done = {}, false, false
        luanet.spawn(function()
          while not S.stop do
            local t0 = luanet.now()
            local v, w, d = luanet.RPCCall(S.g, "Write", 1,
              luanet.call_options { timeout = ]] .. CALL_TIMEOUT .. [[, idempotent = true })
            S.log[#S.log + 1] = { at = clock(), el = luanet.now() - t0, v = v, w = w, d = d }
            luanet.sleep(0.01)
          end
          S.done = true
        end)
      ]])
      assert.is_true(H.wait_for(function()
        local log = eval(c, 2, "return S.log")
        return #log >= 5 and log[#log].v == x.name
      end, 3), "the caller does not reach the master")

      local t_stop = clock()
      x.kill("STOP")
      local took
      assert.is_true(H.wait_for(function()
        took = first_true_after(y, "changes", t_stop)
        return took ~= nil
      end, 4), "the standby did not take over from a frozen master within 4 s")
      local takeover = took - t_stop
      report("master SIGSTOPped (ttl %g): %s took over after %.3f s", TTL, y.name, takeover)
      local followed
      assert.is_true(H.wait_for(function()
        for _, l in ipairs(eval(c, 2, "return S.log")) do
          if l.v == y.name then followed = l.at return true end
        end
        return false
      end, CALL_TIMEOUT + 1), "the caller did not reach the new master")
      local log = eval(c, 5, [[
        S.stop = true
        while not S.done do luanet.sleep(0.01) end
        return S.log
      ]])
      local fails, slowest = {}, 0
      for _, l in ipairs(log) do
        slowest = math.max(slowest, l.el)
        if l.v == nil then fails[#fails + 1] = tostring(l.w) .. ": " .. tostring(l.d) end
      end
      report("frozen master: the caller's first answer from %s came %.3f s after SIGSTOP; %d calls, %d failed, "
        .. "slowest %.3f s (call timeout %g s)", y.name, followed - t_stop, #log, #fails, slowest, CALL_TIMEOUT)
      assert.same({}, fails)
      -- it followed the new master within the lease time, not after its own timeout
      assert.is_true(followed - t_stop <= TTL + 0.5, ("the caller followed after %.3f s"):format(followed - t_stop))
      assert.is_true(slowest <= TTL + 0.5, ("a call took %.3f s"):format(slowest))
      -- not while the frozen master's lease could still be valid, and within ttl + margin
      assert.is_true(takeover >= TTL / 3, ("took over after only %.3f s"):format(takeover))
      assert.is_true(takeover <= TTL + 0.5, ("took over after %.3f s"):format(takeover))

      local t_cont = clock()
      x.kill("CONT")
      local r = eval(x, 3, "return { held = S.lease:held(), at = clock() }")
      assert.is_false(r.held, "the master that was frozen still believes it holds the lease")
      luanet.sleep(0.5)
      assert.same({ y.name }, holders(all))
      -- it was told it stopped being master
      assert.is_truthy(H.wait_for(function()
        for _, l in ipairs(transitions(x, "changes")) do
          if not l.held and l.at >= t_cont then return true end
        end
        return false
      end, 1), "on_change(false) was not called in the resumed master: " .. x.file("changes"))
      report("frozen master resumed: on_change(false) %.3f s after SIGCONT", (function()
        for _, l in ipairs(transitions(x, "changes")) do
          if not l.held and l.at >= t_cont then return l.at - t_cont end
        end
      end)())
    end, 20)
  end)

  it("three candidates racing from the same moment: exactly one wins; handovers by resign never overlap", function()
    H.run(function()
      local TTL = 1
      local ns = start_ns()
      local start_at = clock() + 1.2
      local conf = {}
      for i = 1, 3 do
        conf[i] = { name = "r." .. i, master = { selector = "r.*", ttl = TTL, start_at = start_at } }
      end
      local ms = start_members(ns, conf)
      local all = { ms["r.1"], ms["r.2"], ms["r.3"] }
      for _, p in ipairs(all) do wait_file(p, "standing", 3, p.name .. " standing") end
      local spread = 0
      for _, p in ipairs(all) do
        spread = math.max(spread, tonumber(p.file("standing")) - start_at)
      end
      assert.is_true(spread < 0.05, ("the candidates stood %.3f s apart"):format(spread))
      local h
      assert.is_true(H.wait_for(function()
        h = holders(all)
        return #h >= 1
      end, 3), "nobody won")
      luanet.sleep(math.max(0, start_at + TTL + 0.2 - clock()))
      h = holders(all)
      assert.equals(1, #h, "holders: " .. table.concat(h, ", "))
      local trues = 0
      for _, p in ipairs(all) do
        for _, l in ipairs(transitions(p, "changes")) do
          assert.is_true(l.held, p.name .. " lost the lease: " .. p.file("changes"))
          trues = trues + 1
        end
      end
      assert.equals(1, trues, "on_change(true) calls after the race")
      report("race of 3 candidates started %.3f s apart: %s won, %.3f s after the start", spread, h[1],
        first_true_after(ms[h[1]], "changes", 0) - start_at)

      -- hand over twice by resign: each time the lease goes to one other candidate
      local resigned = {}
      local order = { h[1] }
      for round = 1, 2 do
        local cur = ms[order[#order]]
        local r = eval(cur, 3, [[
          local t0 = clock()
          S.lease:resign()
          return { at = clock(), t0 = t0, held = S.lease:held() }
        ]])
        assert.is_false(r.held, cur.name .. " still holds after resign()")
        resigned[cur.name] = r.at
        local nxt
        assert.is_true(H.wait_for(function()
          for _, p in ipairs(all) do
            if not resigned[p.name] and first_true_after(p, "changes", r.t0) then nxt = p return true end
          end
          return false
        end, TTL + 1.5), ("round %d: nobody took over after %s resigned"):format(round, cur.name))
        report("handover %d: %s resigned, %s master %.3f s later", round, cur.name, nxt.name,
          first_true_after(nxt, "changes", r.t0) - r.at)
        assert.is_true(H.wait_for(function()
          for _, l in ipairs(transitions(cur, "changes")) do
            if not l.held and l.at >= r.t0 then return true end
          end
          return false
        end, 1), cur.name .. ": on_change(false) was not called on resign")
        order[#order + 1] = nxt.name
        luanet.sleep(0.1)
        local now = holders(all)
        assert.same({ nxt.name }, now)
      end
      luanet.sleep(0.1)
      local t_end = clock()
      -- no two members ever believed they held it at once: by on_change and by held()
      for _, file in ipairs({ "changes", "samples" }) do
        local by = {}
        for _, p in ipairs(all) do
          local lines = transitions(p, file)
          -- a resigner's interval ends when resign() returned, if it logged no false
          if resigned[p.name] then lines[#lines + 1] = { at = resigned[p.name] + 0.0005, held = false } end
          table.sort(lines, function(a, b) return a.at < b.at end)
          by[p.name] = intervals(lines, t_end)
        end
        local bad = overlaps(by, 0.005)
        assert.same({}, bad, file)
      end
      assert.equals(3, #order)
    end, 25)
  end)
end)

describe("groups: retries", function()
  it("a frozen member: without idempotent the call times out; with it the call lands on a live member", function()
    H.run(function()
      local TIMEOUT = 0.3
      -- heartbeat 2 s at the name service: the frozen member stays listed for this test
      local ns = start_ns({ configure = { heartbeat = 2 } })
      local ms = start_members(ns, { { name = "t.1" }, { name = "t.2" }, { name = "t.3" } })
      local c = start_caller(ns, { configure = { heartbeat = 2 } })
      eval(c, 5, [[
        S.g = luanet.Group("t.*", "round-robin")
        wait_members(S.g, 3)
        for i = 1, 3 do assert(luanet.RPCCall(S.g, "Who")) end
      ]])
      ms["t.1"].kill("STOP")
      local CALLS = [[
        local n, opts = ...
        local out = {}
        for i = 1, n do
          local t0 = luanet.now()
          local v, w, d = luanet.RPCCall(S.g, "Who", luanet.call_options(opts))
          out[i] = { v = v, w = w, d = d, el = luanet.now() - t0 }
        end
        return out
      ]]
      local plain = eval(c, 10, CALLS, 3, { timeout = TIMEOUT })
      local fails, oks = 0, 0
      for _, x in ipairs(plain) do
        if x.v == nil then
          fails = fails + 1
          assert.equals("timeout", x.w)
          assert.is_true(x.el < TIMEOUT + 0.2, "a call without retries took " .. x.el .. " s")
        else
          oks = oks + 1
          assert.is_true(x.v == "t.2" or x.v == "t.3", x.v)
        end
      end
      assert.same({ 1, 2 }, { fails, oks }, "3 calls in turn with t.1 frozen, no retries")

      luanet.sleep(1.05) -- t.1 is no longer passed over
      local retried = eval(c, 15, CALLS, 6, { timeout = TIMEOUT, idempotent = true })
      local slow, slowest = 0, 0
      for i, x in ipairs(retried) do
        assert.is_true(x.v == "t.2" or x.v == "t.3", ("idempotent call %d: %s %s %s"):format(i,
          tostring(x.v), tostring(x.w), tostring(x.d)))
        if x.el >= TIMEOUT - 0.02 then slow = slow + 1 end
        slowest = math.max(slowest, x.el)
      end
      report("retry after a timeout: 6 idempotent calls with t.1 frozen all answered, %d of them after "
        .. "trying t.1 first, slowest %.3f s", slow, slowest)
      assert.is_true(slow >= 1, "no call tried the frozen member (it was passed over for more than 1 s?)")
      assert.is_true(slowest < 3 * TIMEOUT + 0.2, "a call took " .. slowest .. " s")
      ms["t.1"].kill("CONT")
    end, 20)
  end)

  it("a member that drops the connection: without idempotent connection lost; with it the key's next member answers", function()
    H.run(function()
      local ns = start_ns()
      start_members(ns, { { name = "h.1", boom = true }, { name = "h.2" }, { name = "h.3", boom = true } })
      local c = start_caller(ns)
      local r = eval(c, 15, [[
        S.g = luanet.Group("h.*", "hash")
        wait_members(S.g, 3)
        local map = hash_map(S.g, 60)
        local k1, k3
        for i = 1, 60 do
          if map[i] == "h.1" and not k1 then k1 = key_of(i) end
          if map[i] == "h.3" and not k3 then k3 = key_of(i) end
        end
        assert(k1 and k3, "no key for h.1 or h.3 in 60: " .. table.concat(map, " "))
        local out = { k1 = k1, k3 = k3 }
        -- h.3 exits while handling the call: no retry without idempotent
        out.plain = { luanet.RPCCall(S.g, "Boom", luanet.call_options { key = k3, timeout = 2 }) }
        out.after = wait_members(S.g, 2)
        out.who1 = luanet.RPCCall(S.g, "Who", luanet.call_options { key = k1, timeout = 2 })
        -- h.1 exits while handling the call: tried again on the key's next member
        local t0 = luanet.now()
        out.retried = { luanet.RPCCall(S.g, "Boom", luanet.call_options { key = k1, timeout = 2, idempotent = true }) }
        out.el = luanet.now() - t0
        return out
      ]])
      assert.same({ nil, "connection lost" }, { r.plain[1], r.plain[2] })
      assert.same({ "h.1", "h.2" }, r.after)
      assert.equals("h.1", r.who1, "the keys of h.1 moved when h.3 left")
      assert.same({ "h.2" }, { r.retried[1] }, tostring(r.retried[2]) .. " " .. tostring(r.retried[3]))
      report("retry after connection lost (hash): answered by the key's next member in %.3f s", r.el)
      assert.is_true(r.el < 2, "took " .. r.el .. " s")
    end, 20)
  end)

  it("a member SIGKILLed while 4 tasks call the group in turn with idempotent retries: no call fails", function()
    H.run(function()
      local TIMEOUT = 1
      local ns = start_ns()
      -- k.2 takes 0.3 s a call: when it is killed, calls are waiting on it
      local ms = start_members(ns, { { name = "k.1", work = 0.002 }, { name = "k.2", work = 0.3 },
        { name = "k.3", work = 0.002 } })
      local c = start_caller(ns)
      eval(c, 5, [[
        S.g = luanet.Group("k.*", "round-robin")
        wait_members(S.g, 3)
        S.log, S.stop, S.done = {}, false, 0
        for _ = 1, 4 do
          luanet.spawn(function()
            while not S.stop do
              local t0 = luanet.now()
              local v, w, d = luanet.RPCCall(S.g, "Work", luanet.call_options { timeout = ]] .. TIMEOUT .. [[, idempotent = true })
              S.log[#S.log + 1] = { at = clock(), el = luanet.now() - t0, v = v, w = w, d = d }
              luanet.sleep(0.002)
            end
            S.done = S.done + 1
          end)
        end
      ]])
      assert.is_true(H.wait_for(function()
        return eval(c, 2, [[
          local seen = {}
          for _, l in ipairs(S.log) do if l.v then seen[l.v] = true end end
          return seen["k.1"] and seen["k.2"] and seen["k.3"] and #S.log > 30
        ]])
      end, 5), "the loop does not reach all three members")
      local t_kill = clock()
      ms["k.2"].kill("KILL")
      luanet.sleep(1)
      local log = eval(c, 5, [[
        S.stop = true
        while S.done < 4 do luanet.sleep(0.01) end
        return S.log
      ]])
      local fails, words, slowest, after, k2_after = 0, {}, 0, {}, 0
      local in_flight = 0 -- calls waiting when k.2 was killed (most of them on k.2)
      for _, l in ipairs(log) do
        slowest = math.max(slowest, l.el)
        if l.at - l.el < t_kill and l.at > t_kill then in_flight = in_flight + 1 end
        if l.v == nil then
          fails = fails + 1
          words[#words + 1] = tostring(l.w) .. ": " .. tostring(l.d)
        elseif l.at > t_kill + 0.05 then
          after[l.v] = (after[l.v] or 0) + 1
          if l.v == "k.2" then k2_after = k2_after + 1 end
        end
      end
      report("member SIGKILLed under load (idempotent, timeout %g): %d calls, %d failed%s, slowest %.3f s; "
        .. "%d calls waiting at the kill; after the kill: %s",
        TIMEOUT, #log, fails, fails > 0 and (" (" .. table.concat(words, "; ", 1, math.min(#words, 5)) .. ")") or "",
        slowest, in_flight, fmt_counts(after))
      assert.equals(0, fails, table.concat(words, "; ", 1, math.min(#words, 5)))
      assert.equals(0, k2_after)
      assert.is_true(in_flight >= 2, "hardly any call was waiting when k.2 was killed: the test proves little")
      assert.is_true((after["k.1"] or 0) > 10 and (after["k.3"] or 0) > 10)
      assert.is_true(slowest < 3 * TIMEOUT + 0.2, "a call took " .. slowest .. " s")
    end, 20)
  end)
end)

describe("groups: a member killed just before the call", function()
  -- The caller kills the member itself (os.execute, which blocks it ~2 ms) while 4 of its
  -- tasks call the group back to back with idempotent retries, and starts 2 more tasks 20 ms
  -- later, so that calls start while the dead member is still listed: before the end of its
  -- connection is seen, between that and the name service's push, and after.
  local KILLER = [[ -- selector, policy, function, the pid to kill
    local selector, policy, fname, pid = ...
    S.g = S.g or luanet.Group(selector, policy)
    wait_members(S.g, 3)
    for _ = 1, 6 do assert(luanet.RPCCall(S.g, fname, luanet.call_options { timeout = 2 })) end
    local log, stop, done = {}, false, 0
    local function run(task, n)
      for _ = 1, n do luanet.spawn(task) end
    end
    local function task()
      while not stop do
        local t0 = luanet.now()
        local v, w, d = luanet.RPCCall(S.g, fname, luanet.call_options { timeout = 1, idempotent = true })
        log[#log + 1] = { at = clock(), el = luanet.now() - t0, v = v, w = w, d = d }
        luanet.yield()
      end
      done = done + 1
    end
    run(task, 4)
    luanet.sleep(0.05)
    local t_kill = clock()
    os.execute("kill -9 " .. pid)
    luanet.sleep(0.02)
    run(task, 2) -- calls that start once the end of the connection has been seen
    luanet.sleep(0.4)
    stop = true
    while done < 6 do luanet.sleep(0.01) end
    return { log = log, t_kill = t_kill, members = S.g:members() }
  ]]

  local function judge(r, victim, what)
    local fails, words, slowest, after = 0, {}, 0, {}
    for _, l in ipairs(r.log) do
      slowest = math.max(slowest, l.el)
      if l.v == nil then
        fails = fails + 1
        if #words < 4 then
          words[#words + 1] = ("%s: %s (started %+.4f s from the kill)"):format(tostring(l.w), tostring(l.d),
            l.at - l.el - r.t_kill)
        end
      elseif l.at - l.el > r.t_kill + 0.01 then
        after[l.v] = (after[l.v] or 0) + 1
      end
    end
    report("%s killed just before calls (idempotent): %d calls, %d failed%s; slowest %.3f s; after the kill: %s",
      what, #r.log, fails, fails > 0 and (" (" .. table.concat(words, "; ") .. ")") or "", slowest, fmt_counts(after))
    assert.equals(0, fails, table.concat(words, "; "))
    assert.is_nil(after[victim])
    assert.is_true(slowest < 3 + 0.2)
  end

  -- delayed: the caller's name service is behind a relay that holds its pushes for 150 ms,
  -- so the caller sees the member's connection end well before it hears that it left.
  for _, delayed in ipairs({ false, true }) do
    local how = delayed and " (pushes reach the caller 150 ms late)" or ""
    local function setup(ns)
      if not delayed then return start_caller(ns), function() end end
      local px = start_proxy(ns.addr)
      return start_caller(ns, { ns = px.addr }), function() px.stop() end, px
    end

    it("round-robin: every idempotent call lands on a live member" .. how, function()
      H.run(function()
        local ns = start_ns()
        local ms = start_members(ns, { { name = "j.1" }, { name = "j.2" }, { name = "j.3" } })
        local c, stop, px = setup(ns)
        local ok, e = pcall(function()
          if px then
            eval(c, 5, "S.g = luanet.Group('j.*', 'round-robin') wait_members(S.g, 3)")
            px.delay = 0.15
          end
          local r = eval(c, 10, KILLER, "j.*", "round-robin", "Who", ms["j.2"].pid)
          assert.same({ "j.1", "j.3" }, r.members)
          judge(r, "j.2", "a round-robin member" .. how)
        end)
        stop()
        if not ok then error(e, 0) end
      end, 20)
    end)

    it("master: every idempotent call reaches the new master" .. how, function()
      H.run(function()
        local ns = start_ns()
        local conf = {}
        for i = 1, 3 do conf[i] = { name = "q." .. i, master = { selector = "q.*", ttl = 1 } } end
        local ms = start_members(ns, conf)
        local all = { ms["q.1"], ms["q.2"], ms["q.3"] }
        local h
        assert.is_true(H.wait_for(function()
          h = holders(all)
          return #h == 1
        end, 3), "nobody holds the lease")
        local c, stop, px = setup(ns)
        local ok, e = pcall(function()
          if px then
            eval(c, 5, "S.g = luanet.Group('q.*', 'master') wait_members(S.g, 3)")
            px.delay = 0.15
          end
          local r = eval(c, 10, KILLER, "q.*", "master", "Write", ms[h[1]].pid)
          judge(r, h[1], "the master" .. how)
        end)
        stop()
        if not ok then error(e, 0) end
      end, 20)
    end)
  end
end)

describe("groups: membership is pushed", function()
  it("a member registering is seen by a caller's members() with no request made, a killed one disappears", function()
    H.run(function()
      local ns = start_ns()
      local px = start_proxy(ns.addr)
      local ok, e = pcall(function()
        local ms = start_members(ns, { { name = "p.1" } })
        local c = start_caller(ns, { ns = px.addr })
        local first = eval(c, 5, [[
          S.g = luanet.Group("p.*", "random")
          local m = wait_members(S.g, 1)
          S.seen = {}
          luanet.spawn(function()      -- looks at members() every 2 ms; makes no call
            local last = ""
            while not S.stop do
              local list = S.g:members()
              local now = list and table.concat(list, ",") or "nil"
              if now ~= last then
                S.seen[#S.seen + 1] = { at = clock(), members = now }
                last = now
              end
              luanet.sleep(0.002)
            end
          end)
          return m
        ]])
        assert.same({ "p.1" }, first)
        local asked = px.requests()
        assert.is_true(#asked >= 1, "the caller never asked the name service through the relay")
        report("membership: the first members() sent %s", table.concat(asked, ", "))
        local mark = #px.up

        local function seen_at(members)
          local s = eval(c, 2, "return S.seen")
          for _, x in ipairs(s) do
            if x.members == members then return x.at end
          end
        end
        ms = start_members(ns, { { name = "p.2" } })
        local at
        assert.is_true(H.wait_for(function()
          at = seen_at("p.1,p.2")
          return at ~= nil
        end, 3), "the caller did not see p.2 join within 3 s")
        local joined = at - ms["p.2"].reg.at
        local t_kill = clock()
        ms["p.2"].kill("KILL")
        local gone
        assert.is_true(H.wait_for(function()
          local s = eval(c, 2, "return S.seen")
          for _, x in ipairs(s) do
            if x.members == "p.1" and x.at > t_kill then gone = x.at return true end
          end
          return false
        end, 3), "the caller did not see p.2 go within 3 s")
        eval(c, 2, "S.stop = true")
        local later = px.requests(mark)
        report("membership pushed: a join seen %.3f s after Register2Name returned, a SIGKILL seen %.3f s after the kill; "
          .. "%d name-service requests meanwhile", joined, gone - t_kill, #later)
        assert.same({}, later, "the caller asked the name service instead of being told")
        assert.is_true(joined < 0.5, ("join seen after %.3f s"):format(joined))
        assert.is_true(gone - t_kill < 0.5, ("leave seen after %.3f s"):format(gone - t_kill))
      end)
      px.stop()
      if not ok then error(e, 0) end
    end, 20)
  end)
end)

describe("groups: failure paths and bad input", function()
  it("bad selectors, policies, keys, retries without idempotent, ttl out of range, StandForMaster before Register2Name raise; a lease for another group is refused", function()
    H.run(function()
      local ns = start_ns()
      local ms = start_members(ns, { { name = "f.1" } })
      local r = eval(ms["f.1"], 10, [[
        local hash = luanet.Group("f.*", "hash")
        local cases = {
          { "selector 42", { "selector" }, function() return luanet.Group(42) end },
          { "selector nil", { "selector" }, function() return luanet.Group(nil) end },
          { "selector empty", { "selector" }, function() return luanet.Group("") end },
          { "selector without *", { "selector" }, function() return luanet.Group("f") end },
          { "selector * in the middle", { "selector" }, function() return luanet.Group("f*1") end },
          { "selector {}", { "selector", "provides" }, function() return luanet.Group({}) end },
          { "provides 42", { "selector", "provides" }, function() return luanet.Group({ provides = 42 }) end },
          { "provides empty", { "selector", "provides" }, function() return luanet.Group({ provides = "" }) end },
          { "unknown policy", { "policy", "fastest" }, function() return luanet.Group("f.*", "fastest") end },
          { "policy 42", { "policy" }, function() return luanet.Group("f.*", 42) end },
          { "retries without idempotent", { "retries", "idempotent" }, function()
            return luanet.RPCCall(luanet.Group("f.*", "random"), "Who", luanet.call_options { retries = 2 })
          end },
          { "key a table", { "key" }, function()
            return luanet.RPCCall(hash, "Who", luanet.call_options { key = {} })
          end },
          { "key a float", { "key" }, function()
            return luanet.RPCCall(hash, "Who", luanet.call_options { key = 1.5 })
          end },
          { "key a boolean", { "key" }, function()
            return luanet.RPCCall(hash, "Who", luanet.call_options { key = true })
          end },
          { "SendMsg key a table", { "key" }, function()
            return luanet.SendMsg(hash, "x", luanet.call_options { key = {} })
          end },
          { "ttl 0.05", { "ttl" }, function() return luanet.StandForMaster("f.*", { ttl = 0.05 }) end },
          { "ttl 61", { "ttl" }, function() return luanet.StandForMaster("f.*", { ttl = 61 }) end },
          { "ttl a string", { "ttl" }, function() return luanet.StandForMaster("f.*", { ttl = "3" }) end },
          { "StandForMaster selector 42", { "selector" }, function() return luanet.StandForMaster(42) end },
        }
        local out = {}
        for i, case in ipairs(cases) do
          local ok, v, w = pcall(case[3])
          out[i] = { name = case[1], words = case[2], ok = ok, msg = tostring(v), w = tostring(w) }
        end
        -- a group f.1 is not a member of
        local lease_ok, lease = pcall(luanet.StandForMaster, "other.*", { ttl = 0.5 })
        local other = { raised = not lease_ok, msg = tostring(lease) }
        if lease_ok then
          other.got = lease:wait(1.5)
          other.held = lease:held()
          lease:resign()
        end
        -- ttl at the bounds is fine
        local edge = {}
        for _, x in ipairs({ { 0.1, "f.*" }, { 60, { provides = "Who" } } }) do
          local ok2, e2 = pcall(luanet.StandForMaster, x[2], { ttl = x[1] })
          edge[#edge + 1] = { ttl = x[1], ok = ok2, msg = tostring(e2) }
          if ok2 then pcall(e2.resign, e2) end
        end
        return { cases = out, other = other, edge = edge }
      ]])
      local failed = {}
      for _, x in ipairs(r.cases) do
        if x.ok then
          failed[#failed + 1] = ("%s: no error (returned %s %s)"):format(x.name, x.msg, x.w)
        elseif not mentions(x.msg, x.words) then
          failed[#failed + 1] = ("%s: the error %q mentions none of %s"):format(x.name, x.msg, table.concat(x.words, ", "))
        end
      end
      assert.same({}, failed)
      for _, x in ipairs(r.cases) do report("failure path, %s: %s", x.name, x.msg) end
      for _, e in ipairs(r.edge) do
        assert.is_true(e.ok, ("ttl %g was refused: %s"):format(e.ttl, e.msg))
      end
      if r.other.raised then
        report("a lease for a group it is not a member of: raised %q", r.other.msg)
      else
        assert.is_false(r.other.got, "a lease was granted for a group the service is not a member of")
        assert.is_false(r.other.held)
        report("a lease for a group it is not a member of: never held")
      end

      -- the same over the wire (PROTOCOL.md, Groups and leases): a raw client registers
      -- f.9 over its own connection and asks for leases
      assert.is_true(ns_call(ns, "luanet.ns.register", "f.9", "tcp://127.0.0.1:1", luanet.array { "Who" }))
      local stop_ping = keep_raw_alive(ns)
      local function lease(...) return H.two(ns_call(ns, "luanet.ns.lease", ...)) end
      assert.same({ nil, "not member" }, lease("prefix", "other.", "f.9", 1))
      assert.same({ nil, "not member" }, lease("provides", "Nobody", "f.9", 1))
      local elsewhere = lease("prefix", "f.", "f.1", 1) -- f.1 registered over another connection
      assert.is_nil(elsewhere[1], "a lease was granted to a name registered over another connection")
      assert.same({ nil, "bad request" }, lease("prefix", "f.", "f.9", 0.05))
      assert.same({ nil, "bad request" }, lease("prefix", "f.", "f.9", 61))
      assert.same({ nil, "bad request" }, lease("bogus", "f.", "f.9", 1))
      assert.same({ nil, "bad request" }, H.two(ns_call(ns, "luanet.ns.group", "bogus", "f.")))
      -- and the positive control: f.9 is a member of "f." and of providers of Who
      local got = ns_call(ns, "luanet.ns.lease", "prefix", "f.", "f.9", 1)
      assert.same({ granted = true, ttl = 1 }, got)
      local view = ns_call(ns, "luanet.ns.group", "prefix", "f.")
      assert.equals("f.9", view.master)
      assert.is_true(ns_call(ns, "luanet.ns.release", "prefix", "f.", "f.9"))
      assert.is_false(ns_call(ns, "luanet.ns.release", "prefix", "f.", "f.9"))
      stop_ping()

      -- a service that has not registered, and a process that is not a service
      local c = start_caller(ns)
      local e = eval(c, 5, [[
        local ok, e = pcall(luanet.StandForMaster, "caller.*", { ttl = 1 })
        return { ok = ok, e = tostring(e) }
      ]])
      assert.is_false(e.ok, "StandForMaster before Register2Name did not raise")
      assert.is_true(mentions(e.e, { "Register2Name" }), e.e)
    end, 25)
    -- a process that is not a service (H.child blocks: outside H.run)
    local child = H.child(H.CHILD_PUT .. [[
        local luanet = require "luanet"
        luanet.run(function()
          local ok, e = pcall(luanet.StandForMaster, "x.*", { ttl = 1 })
          io.write(tostring(ok), "\n", tostring(e), "\n")
        end)
      ]], 10)
    assert.is_true(child.ok, child.err)
    assert.matches("^false\n", child.out)
    assert.is_true(mentions(child.out, { "Register2Name", "StartLocalService" }), child.out)
  end)
end)
