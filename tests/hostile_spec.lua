-- Hostile clients against a running service (issue 7).
--
-- The service under attack is a child lua5.4 process (H.bg) offering Plus and Echo; it
-- logs to the file "service.log" in its directory (luanet.log.configure{file = ...}). The
-- attackers are raw sockets from this process (luanet.tcp.connect, conn:write of raw
-- bytes). This process never becomes a service and never sets a cluster token (both are
-- process-wide): with a token, its good client proves the token by hand (docs/PROTOCOL.md).
--
-- For each attack, `watch` runs a well-behaved client (one call of Plus every 20 ms over
-- its own connection, opened before the attack) and samples the service's VmRSS and CPU
-- time; `verdict` then asserts that
--   1. the service process is alive and a new connection still gets a correct answer;
--   2. the good client got a correct answer to every call during the attack, in < 1 s;
--   3. the service's RSS grew by less than 100 MB;
--   4. the attack was logged with a reason, and not once per byte or per message: the
--      log lines written during the case are few (a bound per attacking connection).
-- The figures (RSS growth, log lines, good-client latency, service CPU) are written to
-- stderr, prefixed with [hostile], with the case's distinct log lines.
--
-- A case that fails because of a defect in the implementation is kept, marked
-- pending("defect: ...") at its top.

local luanet = require "luanet"
local core = require "luanet.core"
local H = require "helper"

local MiB = 1024 * 1024
local RSS_BOUND_KB = 100 * 1024      -- growth allowed, in kB
-- s, worst good-client call during an attack. Under LUANET_FAULTS (make test-faults) a
-- third of all socket calls fail on purpose and every transfer takes several more: the
-- attacks' megabytes then cost the loop 2-3 times as many turns.
local LATENCY_BOUND = os.getenv("LUANET_FAULTS") and 3.0 or 1.0

local function say(fmt, ...)
  io.stderr:write("[hostile] " .. fmt:format(...) .. "\n")
end

-- The service under attack. @@CONFIG@@: luanet.configure calls.
local SERVICE = H.CHILD_PUT .. [==[
local luanet = require "luanet"
@@CONFIG@@
assert(luanet.log.configure{ file = DIR .. "/service.log", level = "info" })
luanet.RegRPCFunction("Plus", function(t) return t.a + t.b end)
luanet.RegRPCFunction("Echo", function(v) return v end)
-- The Lua heap, in kB (to tell Lua garbage from buffers in the RSS).
luanet.RegRPCFunction("Mem", function() return math.floor(collectgarbage("count")) end)
-- Waits until every line logged so far is in the file; returns the lines written.
luanet.RegRPCFunction("LogFlush", function()
  assert(luanet.log.flush(3))
  return luanet.log.stats().written
end)
luanet.spawn(function() luanet.sleep(60) os.exit(3) end) -- never outlive the suite
luanet.run(function()
  assert(luanet.StartLocalService("Hostile", "127.0.0.1:0"))
  put("addr", luanet.service_listener:local_addr())
end)
]==]

local function hex(s)
  return (s:gsub(".", function(ch) return ("%02x"):format(ch:byte()) end))
end

-- Starts the service (inside H.run). opts.token: a cluster token; opts.nofile: run it
-- under `ulimit -n <nofile>` (a python3 child that execs `sh -c "ulimit -n N; exec lua5.4"`,
-- so the pid stays the service's and H.bg still cleans it up).
local function start_service(opts)
  opts = opts or {}
  local src = SERVICE:gsub("@@CONFIG@@", function()
    return opts.token and ("luanet.configure{ token = %q }"):format(opts.token) or ""
  end)
  local p
  if opts.nofile then
    p = H.bg(([==[
import os
d = os.path.dirname(os.path.abspath(__file__))
with open(d + "/svc.lua", "wb") as f:
    f.write(bytes.fromhex("%s"))
os.execv("/bin/sh", ["sh", "-c", "ulimit -n %d && exec lua5.4 '" + d + "/svc.lua'"])
]==]):format(hex(src), opts.nofile), "python")
  else
    p = H.bg(src)
  end
  assert(H.wait_for(function() return p.file("addr") ~= "" end, 5),
    "service did not start: " .. p.file("err"))
  p.addr = p.file("addr")
  p.token = opts.token
  return p
end

-- /proc/<pid>/status VmRSS in kB; /proc/<pid>/stat utime+stime in seconds.
local function rss_kb(pid)
  return tonumber(H.readfile("/proc/" .. pid .. "/status"):match("VmRSS:%s*(%d+) kB"))
end
local function cpu_s(pid)
  local st = H.readfile("/proc/" .. pid .. "/stat"):match("^%d+ %b() (.*)$")
  if not st then return nil end
  local f = {}
  for w in st:gmatch("%S+") do f[#f + 1] = w end
  return (tonumber(f[12]) + tonumber(f[13])) / 100 -- fields 14, 15 of stat; USER_HZ = 100
end

local function auth_text(role, verifier_nonce, prover_nonce)
  return "luanet auth v1\0" .. role .. "\0" .. verifier_nonce .. prover_nonce
end

-- A raw MessagePack-RPC client on a connection of its own: says nothing but requests (a
-- non-luanet client may skip the hello), or, with a token, proves it first. Close it
-- within 3 s of its last call (it sends no pings).
local function raw_client(addr, token)
  local c, word = luanet.tcp.connect(addr, { timeout = 2 })
  if not c then return nil, word end
  if token then
    local hello, w = c:read_message(2)
    if not (hello and hello[2] == "luanet.hello") then
      c:close()
      return nil, "no hello: " .. tostring(w)
    end
    local theirs, mine = hello[3][3], core.random_bytes(16)
    c:write_array(2, "luanet.hello", luanet.array { "", false, mine })
    c:write_array(2, "luanet.auth", luanet.array { core.hmac_sha256(token, auth_text("dialer", theirs, mine)) })
  end
  local id = 0
  local o = { conn = c }
  function o.call(fname, arg, t)
    id = id + 1
    local ok, w = c:write_array(0, id, fname, luanet.array { arg })
    if not ok then return nil, w end
    local deadline = luanet.now() + (t or 3)
    while true do
      local v, w2, d = c:read_message(math.max(0, deadline - luanet.now()))
      if v == nil then return nil, w2, d end
      if v[1] == 1 and v[2] == id then
        if v[3] ~= nil then return nil, "error", v[3] end
        return v[4]
      end
    end
  end
  function o.close() c:close() end
  return o
end

-- The good client of a service: RPCCall (this process as a plain client) without a token,
-- a raw authenticated connection with one.
local function good_client(svc)
  if svc.token then
    return assert(raw_client(svc.addr, svc.token))
  end
  local opts = luanet.call_options { timeout = 3 }
  return {
    call = function(fname, arg) return luanet.RPCCall(svc.addr, fname, arg, opts) end,
    close = function() end,
  }
end

-- The service's log, flushed: its lines as an array.
local function log_lines(svc, gc)
  local written, word, detail = gc.call("LogFlush")
  assert(written, ("LogFlush failed: %s %s"):format(tostring(word), tostring(detail)))
  local t = {}
  for line in H.readfile(svc.dir .. "/service.log"):gmatch("[^\n]+") do t[#t + 1] = line end
  return t
end

-- Starts the good client's calls and the RSS / CPU sampler. Returns a stop() that ends
-- them and returns the figures.
local function watch(svc)
  local gc = good_client(svc)
  assert.equals(3, gc.call("Plus", { a = 1, b = 2 }))       -- connected before the attack
  local st = {
    gc = gc, calls = 0, bad = 0, max_lat = 0, sum_lat = 0, errors = {},
    rss0 = rss_kb(svc.pid), cpu0 = cpu_s(svc.pid), t0 = luanet.now(),
  }
  st.rss_max = st.rss0
  st.heap0 = gc.call("Mem")
  st.heap_max = st.heap0
  st.log0 = #log_lines(svc, gc)
  local running, done = true, 0
  H.go(function()
    local i = 0
    while running do
      i = i + 1
      local t0 = luanet.now()
      local r, word, detail = gc.call("Plus", { a = i, b = 1 })
      local lat = luanet.now() - t0
      st.calls = st.calls + 1
      st.sum_lat = st.sum_lat + lat
      if lat > st.max_lat then st.max_lat = lat end
      if r ~= i + 1 then
        st.bad = st.bad + 1
        if #st.errors < 5 then st.errors[#st.errors + 1] = ("%s %s %s"):format(tostring(r), tostring(word), tostring(detail)) end
      end
      if i % 10 == 0 then
        local kb = gc.call("Mem")
        if kb and kb > st.heap_max then st.heap_max = kb end
      end
      luanet.sleep(0.02)
    end
    done = done + 1
  end)
  H.go(function()
    while running do
      local r = rss_kb(svc.pid)
      if r and r > st.rss_max then st.rss_max = r end
      luanet.sleep(0.05)
    end
    done = done + 1
  end)
  return function()
    -- the good client runs for at least 1 s, so that it overlaps the attack
    while luanet.now() - st.t0 < 1 do luanet.sleep(0.05) end
    running = false
    H.wait_for(function() return done == 2 end, 5)
    st.elapsed = luanet.now() - st.t0
    st.cpu = (cpu_s(svc.pid) or st.cpu0) - st.cpu0
    return st
  end
end

-- The checks every case ends with. `max_lines`: bound on the log lines of the case;
-- `reason`: a pattern one of them must match (the attack is logged with a reason).
local function verdict(name, svc, stop, opts)
  local st = stop()
  -- 1. alive, and a new connection is served
  assert(svc.alive(), name .. ": the service died; stderr: " .. svc.file("err"))
  local fresh = assert(raw_client(svc.addr, svc.token))
  local r, word, detail = fresh.call("Plus", { a = 40, b = 2 }, 3)
  fresh.close()
  assert(r == 42, ("%s: a new client got %s %s %s"):format(name, tostring(r), tostring(word), tostring(detail)))
  -- 4. the log
  local lines = log_lines(svc, st.gc)
  local case = {}
  for i = st.log0 + 1, #lines do case[#case + 1] = lines[i] end
  st.gc.close()
  local distinct, seen = {}, {}
  for _, l in ipairs(case) do
    local k = l:gsub("^%S+%s+", ""):gsub("conn#%d+", "conn#N"):gsub("%d+", "N")
    if not seen[k] then seen[k] = 0; distinct[#distinct + 1] = k end
    seen[k] = seen[k] + 1
  end
  local growth = st.rss_max - st.rss0
  say("%s: %d log line(s) for %s; RSS %d -> max %d kB (+%.1f MB); good client %d calls, %d bad, latency max %.1f ms, mean %.1f ms; Lua heap %d -> max %d kB; service CPU %.2f s in %.1f s",
    name, #case, opts.what or "?", st.rss0, st.rss_max, growth / 1024, st.calls, st.bad,
    st.max_lat * 1000, st.sum_lat / math.max(1, st.calls) * 1000, st.heap0, st.heap_max, st.cpu, st.elapsed)
  for _, k in ipairs(distinct) do say("    %4d x %s", seen[k], k:sub(1, 200)) end
  -- 2. the good client
  assert(st.calls > 0, name .. ": the good client made no call")
  assert(st.bad == 0, ("%s: the good client got %d wrong answers: %s"):format(name, st.bad, table.concat(st.errors, "; ")))
  assert(st.max_lat < LATENCY_BOUND, ("%s: a good call took %.3f s"):format(name, st.max_lat))
  -- 3. memory
  assert(growth < RSS_BOUND_KB, ("%s: RSS grew by %.1f MB"):format(name, growth / 1024))
  -- 4. the log: bounded, with a reason
  assert(#case <= opts.max_lines, ("%s: %d log lines (bound %d):\n%s"):format(name, #case,
    opts.max_lines, table.concat(case, "\n", 1, math.min(#case, 20))))
  if opts.reason then
    local found = false
    for _, l in ipairs(case) do if l:find(opts.reason) then found = true break end end
    assert(found, ("%s: no log line matches %q:\n%s"):format(name, opts.reason,
      table.concat(case, "\n", 1, math.min(#case, 20))))
  end
  return st, case
end

-- Attacker helpers --------------------------------------------------------------------

local function connect(addr)
  return assert(luanet.tcp.connect(addr, { timeout = 2 }))
end

-- Reads (and drops) what the service sends until it closes the connection or `t` s pass.
-- Returns the ending word ("closed", "connection reset", "timeout") and the time it took.
local function until_closed(c, t)
  local t0 = luanet.now()
  local deadline = t0 + t
  while true do
    local left = deadline - luanet.now()
    if left <= 0 then return "timeout", luanet.now() - t0 end
    local s, word = c:read(65536, left)
    if s == nil then return word, luanet.now() - t0 end
  end
end
local GONE = { closed = true, ["connection reset"] = true, ["broken pipe"] = true }

-- Runs fn(i) in `n` tracked tasks and waits for all of them (at most t s).
local function parallel(n, t, fn)
  local done = 0
  for i = 1, n do
    H.go(function() fn(i) done = done + 1 end)
  end
  assert(H.wait_for(function() return done == n end, t), ("only %d of %d attackers finished"):format(done, n))
end

local urandom = assert(io.open("/dev/urandom", "rb"))
local function random_bytes(n) return urandom:read(n) end

local PLUS = luanet.pack(luanet.array { 0, 1, "Plus", luanet.array { { a = 1, b = 2 } } })

-- A request to Echo whose single parameter is the raw MessagePack `param` bytes (the
-- envelope [0, 7, "Echo", [param]] with param spliced in).
local function echo_with(param)
  return "\x94\x00\x07\xa4Echo\x91" .. param
end

describe("hostile clients", function()
  it("random bytes: each connection is closed once, with a reason, and nobody else notices", function()
    H.run(function()
      local svc = start_service()
      local stop = watch(svc)
      local N = 40
      local words = {}
      parallel(N, 8, function(i)
        local c = connect(svc.addr)
        -- 4 KiB of noise, the last 4 attackers 1 MiB
        local ok = c:write(random_bytes(i > N - 4 and MiB or 4096), 5)
        local word, took = until_closed(c, 4.5)
        words[#words + 1] = word
        c:close()
      end)
      -- and one connection sending 10,000 well-formed MessagePack values of the wrong shape
      local c = connect(svc.addr)
      local junk = {}
      for i = 1, 10000 do junk[i] = luanet.pack(luanet.array { 0, i, 2, 3 }) end
      c:write(table.concat(junk), 5)
      local word = until_closed(c, 4.5)
      c:close()
      words[#words + 1] = word
      local closed = 0
      for _, w in ipairs(words) do if GONE[w] then closed = closed + 1 end end
      say("random bytes: %d of %d attacking connections closed by the service", closed, #words)
      assert.equals(#words, closed)
      verdict("random bytes", svc, stop, { what = (N + 1) .. " connections, 10,000 bad messages",
        max_lines = 2 * (N + 1), reason = "decode error" })
    end, 20)
  end)

  it("truncated messages: requests cut short, then the peer closes", function()
    H.run(function()
      local svc = start_service()
      local stop = watch(svc)
      local N = 30
      local big = luanet.pack(luanet.array { 0, 1, "Echo", luanet.array { string.rep("x", 100000) } })
      parallel(N, 5, function(i)
        local c = connect(svc.addr)
        local src = i % 2 == 0 and PLUS or big
        local cut = 1 + (i * 7919) % (#src - 1)             -- 1 .. #src - 1 bytes
        c:write(src:sub(1, cut), 2)
        luanet.sleep(0.05)
        c:shutdown("write")
        local word = until_closed(c, 3)
        assert(GONE[word], "the service did not close a truncated connection: " .. tostring(word))
        c:close()
      end)
      verdict("truncated", svc, stop, { what = N .. " connections", max_lines = 2 * N })
    end, 15)
  end)

  it("oversized messages: over the 16 MiB message limit", function()
    H.run(function()
      local svc = start_service()
      local stop = watch(svc)
      local N = 3
      local words = {}
      parallel(N, 12, function(i)
        local c = connect(svc.addr)
        -- Echo(bin32 of 17 MiB), sent in full; the last one also claims it in a str32
        local size = 17 * MiB
        local head = i == N and "\xdb" or "\xc6"
        local req = echo_with(head .. string.pack(">I4", size))
        c:write(req, 5)
        local chunk = string.rep("z", MiB)
        local sent = 0
        for _ = 1, 17 do
          local ok, w = c:write(chunk, 5)
          if not ok then break end
          sent = sent + 1
        end
        local word = until_closed(c, 4)
        words[#words + 1] = word
        say("oversized %d: %d MiB sent before the service stopped taking them; ended %s", i, sent, word)
        c:close()
      end)
      for _, w in ipairs(words) do assert(GONE[w], "an oversized sender was not cut off: " .. w) end
      verdict("oversized 16 MiB", svc, stop, { what = N .. " connections of 17 MiB", max_lines = 2 * N,
        reason = "too large" })
    end, 20)
  end)

  it("oversized messages before the cluster token is proved (1 KiB limit), and silent strangers", function()
    H.run(function()
      local TOKEN = "hostile spec token 0123456789abcdef"
      local svc = start_service({ token = TOKEN })
      local stop = watch(svc)
      local words = {}
      -- (a) a hello of 2 KiB, (b) 2 KiB of something else first, (c) a request before auth
      local attacks = {
        luanet.pack(luanet.array { 2, "luanet.hello", luanet.array { string.rep("n", 2048), false, string.rep("\0", 16) } }),
        luanet.pack(luanet.array { 0, 1, "Echo", luanet.array { string.rep("e", 2048) } }),
        PLUS,
        luanet.pack(luanet.array { 2, "luanet.hello", luanet.array { "short nonce", false, "abc" } }),
      }
      parallel(#attacks * 4, 10, function(i)
        local c = connect(svc.addr)
        c:write(attacks[(i - 1) % #attacks + 1], 2)
        local word, took = until_closed(c, 3)
        words[#words + 1] = word
        c:close()
      end)
      for _, w in ipairs(words) do assert(GONE[w], "an unauthenticated attacker was not cut off: " .. w) end
      -- (d) 100 strangers that connect and say nothing (the service keeps 64 waiting)
      local strangers = {}
      for i = 1, 100 do strangers[i] = connect(svc.addr) end
      luanet.sleep(0.3)
      local fresh, w = raw_client(svc.addr, TOKEN)
      local r, word = nil, w
      if fresh then r, word = fresh.call("Plus", { a = 1, b = 1 }, 2) fresh.close() end
      say("1 KiB limit: a new authenticated client while 100 strangers wait: %s %s (turned away by design)",
        tostring(r), tostring(word))
      for _, c in ipairs(strangers) do c:close() end
      luanet.sleep(0.2)
      verdict("pre-auth 1 KiB", svc, stop, { what = "16 attackers + 100 silent strangers",
        max_lines = 2 * 16 + 10, reason = "closing it" })
    end, 20)
  end)

  it("forged lengths: array32, map32, str32, bin32, ext32 headers claiming billions", function()
    H.run(function()
      local svc = start_service()
      local stop = watch(svc)
      local forged = {
        "\xdd\xff\xff\xff\xff",                                     -- top-level array32 of 4e9
        "\xdf\xff\xff\xff\xff",                                     -- top-level map32 of 4e9
        echo_with("\xdd\xff\xff\xff\xff\xc0\xc0\xc0"),                -- param array32 of 4e9
        echo_with("\xdf\xff\xff\xff\xff\xc0\xc0"),                    -- param map32 of 4e9
        echo_with("\xdb\xff\xff\xff\xffabc"),                         -- str32 of 4 GiB
        echo_with("\xc6\xff\xff\xff\xffabc"),                         -- bin32 of 4 GiB
        echo_with("\xc9\xff\xff\xff\xff\x01abc"),                     -- ext32 of 4 GiB
        echo_with("\xdd\x7f\xff\xff\xff" .. string.rep("\xc0", MiB)), -- 2e9 nils claimed, 1 Mi sent
        echo_with("\xdd\x00\x10\x00\x00" .. string.rep("\xdd\xff\xff\xff\xff", 1000)), -- nested claims
        echo_with("\xdb\x00\xa0\x00\x00abc"),                         -- str32 of 10 MiB (in limit), 3 bytes sent
      }
      local words, took = {}, {}
      parallel(#forged, 8, function(i)
        local c = connect(svc.addr)
        c:write(forged[i], 3)
        words[i], took[i] = until_closed(c, 4.5)
        c:close()
      end)
      for i = 1, #forged do
        say("forged %d (%s...): %s after %.2f s", i, hex(forged[i]:sub(1, 14)), words[i], took[i])
        assert(GONE[words[i]], ("forged header %d left open: %s"):format(i, words[i]))
      end
      verdict("forged lengths", svc, stop, { what = #forged .. " connections", max_lines = 2 * #forged,
        reason = "no sign of life" })
    end, 15)
  end)

  it("deep nesting past the depth limit (100)", function()
    H.run(function()
      local svc = start_service()
      local stop = watch(svc)
      local function nest(n, open) return echo_with(string.rep(open, n) .. "\xc0") end
      local deep = {
        nest(101, "\x91"), nest(200, "\x91"), nest(100000, "\x91"), nest(1000000, "\x91"),
        nest(100000, "\x81\xa1k"), nest(1000000, "\x81\xc0"),
        string.rep("\x91", 1000000),                                 -- nesting, never finished
      }
      local words, took = {}, {}
      parallel(#deep, 8, function(i)
        local c = connect(svc.addr)
        c:write(deep[i], 3)
        words[i], took[i] = until_closed(c, 4.5)
        c:close()
      end)
      for i = 1, #deep do
        say("deep %d (%d bytes): %s after %.2f s", i, #deep[i], words[i], took[i])
        assert(GONE[words[i]], ("deep nesting %d left open: %s"):format(i, words[i]))
      end
      -- a value nested within the limit still goes through
      local ok_nest = {}
      local v = ok_nest
      for _ = 1, 90 do v[1] = {}; v = v[1] end
      local c = assert(raw_client(svc.addr))
      local r, word, detail = c.call("Echo", ok_nest, 3)
      c.close()
      assert(type(r) == "table", ("depth 90 refused: %s %s"):format(tostring(word), tostring(detail)))
      verdict("deep nesting", svc, stop, { what = #deep .. " connections", max_lines = 2 * #deep,
        reason = "nested deeper than 100 levels" })
    end, 15)
  end)

  it("slowloris: a request trickled one byte every 100-200 ms", function()
    H.run(function()
      local svc = start_service()
      local stop = watch(svc)
      local N = 8
      local req = luanet.pack(luanet.array { 0, 1, "Echo", luanet.array { string.rep("s", 200) } })
      local ends = {}
      parallel(N, 9, function(i)
        local c = connect(svc.addr)
        local closed_by_service
        local reader_done = false
        H.go(function()
          local word, took = until_closed(c, 6.5)
          if GONE[word] then closed_by_service = took end
          reader_done = true
        end)
        local deadline = luanet.now() + 6
        local pos = 1
        while luanet.now() < deadline and pos <= #req and closed_by_service == nil do
          local ok = c:write(req:sub(pos, pos), 1)
          if not ok then break end
          pos = pos + 1
          luanet.sleep(0.1 + (pos * 37 % 100) / 1000)
        end
        H.wait_for(function() return reader_done end, 7)
        ends[i] = { closed = closed_by_service, sent = pos - 1 }
        c:close()
      end)
      local closed = 0
      for i = 1, N do
        say("slowloris %d: %d bytes trickled; %s", i, ends[i].sent,
          ends[i].closed and ("closed by the service after %.2f s"):format(ends[i].closed) or "still open after 6 s")
        if ends[i].closed then closed = closed + 1 end
      end
      verdict("slowloris", svc, stop, { what = N .. " trickling connections", max_lines = 2 * N })
    end, 20)
  end)

  it("more connections than the descriptor limit (ulimit -n 64)", function()
    H.run(function()
      local svc = start_service({ nofile = 64 })
      assert.equals("64", H.readfile("/proc/" .. svc.pid .. "/limits"):match("Max open files%s+(%d+)"))
      local stop = watch(svc)
      local conns = {}
      for i = 1, 200 do conns[i] = connect(svc.addr) end
      luanet.sleep(2.5)       -- the good client keeps calling meanwhile
      for _, c in ipairs(conns) do c:close() end
      -- the backlog drains; new connections are served again
      local served = H.wait_for(function()
        local c = raw_client(svc.addr)
        if not c then return false end
        local r = c.call("Plus", { a = 1, b = 1 }, 0.5)
        c.close()
        return r == 2
      end, 5)
      assert(served, "new connections are not served after the flood")
      verdict("descriptor limit", svc, stop, { what = "200 connections at ulimit -n 64", max_lines = 200 + 20 })
    end, 20)
  end)

  it("half-open peers: a partial request, then silence", function()
    H.run(function()
      local svc = start_service()
      local stop = watch(svc)
      local N = 30
      local words, took = {}, {}
      parallel(N, 8, function(i)
        local c = connect(svc.addr)
        local cut = 1 + (i * 13) % (#PLUS - 1)
        c:write(PLUS:sub(1, cut), 1)
        -- silent: neither reads nor writes; then see when the service gave up on it
        luanet.sleep(4.5)
        words[i], took[i] = until_closed(c, 0.5)
        c:close()
      end)
      local closed = 0
      for i = 1, N do if GONE[words[i]] then closed = closed + 1 end end
      say("half-open: %d of %d silent peers closed by the service within 4.5 s", closed, N)
      assert.equals(N, closed)
      verdict("half-open", svc, stop, { what = N .. " silent connections", max_lines = 2 * N,
        reason = "no sign of life" })
    end, 15)
  end)

  -- N peers each writing up to `max` requests of Echo(64 KiB), never reading a reply.
  local function never_read(name, N, max)
    H.run(function()
      local svc = start_service()
      local stop = watch(svc)
      local payload = string.rep("r", 64 * 1024)
      local req = luanet.pack(luanet.array { 0, 1, "Echo", luanet.array { payload } })
      local sent = {}
      parallel(N, 10, function(i)
        local c = connect(svc.addr)
        c:set_recv_buffer(4096)
        local deadline = luanet.now() + 6
        local n = 0
        -- requests whose replies are as big; nothing is ever read
        while n < max and luanet.now() < deadline do
          local ok = c:write(req, math.max(0.01, deadline - luanet.now()))
          if not ok then break end
          n = n + 1
        end
        sent[i] = n
        luanet.sleep(math.max(0, deadline - luanet.now()))
        c:close()
      end)
      local total = 0
      for i = 1, N do total = total + sent[i] end
      say("%s: %d requests of 64 KiB written by %d peers (%.1f MiB), min %d, max %d per peer", name, total, N,
        total / 16, math.min(table.unpack(sent)), math.max(table.unpack(sent)))
      local _, case = verdict(name, svc, stop, { what = N .. " connections", max_lines = 3 * N,
        reason = "closing it" })
      -- each is dropped once, as a peer that reads nothing or (its reader held) sends nothing
      local dropped = 0
      for _, l in ipairs(case) do
        if l:find("read nothing", 1, true) or l:find("no sign of life", 1, true) then dropped = dropped + 1 end
      end
      assert.equals(N, dropped)
    end, 20)
  end

  it("peers that never read their replies (3 peers, up to 8 MiB of requests each)", function()
    never_read("never read x3", 3, 128)
  end)

  it("peers that never read their replies (10 peers, up to 32 MiB of requests each)", function()
    never_read("never read x10", 10, 512)
  end)

  -- Found here as a defect (each connection held to 16 MiB, none over all of them: +150 MB
  -- for 3 s); now unfinished messages share a process-wide budget of 64 MiB (message.rs).
  it("many connections each holding a message just under the 16 MiB limit", function()
    H.run(function()
      local svc = start_service()
      local stop = watch(svc)
      local N = 10
      local chunk = string.rep("q", MiB)
      local sent = {}
      parallel(N, 10, function(i)
        local c = connect(svc.addr)
        -- Echo(bin32 of 16 MiB - 1 KiB): 15 MiB of it sent, then silence
        c:write(echo_with("\xc6" .. string.pack(">I4", 16 * MiB - 1024)), 2)
        local n = 0
        for _ = 1, 15 do
          if not c:write(chunk, 3) then break end
          n = n + 1
        end
        sent[i] = n
        until_closed(c, 4.5)
        c:close()
      end)
      local total = 0
      for i = 1, N do total = total + sent[i] end
      say("near-limit: %d MiB sent over %d connections", total, N)
      local _, case = verdict("near-limit partial messages", svc, stop, { what = N .. " connections of 15 MiB",
        max_lines = 2 * N, reason = "budget" })
      local refused = 0
      for _, l in ipairs(case) do if l:find("budget", 1, true) then refused = refused + 1 end end
      assert.is_true(refused >= 4, refused .. " connection(s) refused for the budget")
    end, 20)
  end)

  it("descriptor exhaustion is logged once per spell, not once per accept retry", function()
    H.run(function()
      local svc = start_service({ nofile = 64 })
      local stop = watch(svc)
      local conns = {}
      for i = 1, 200 do conns[i] = connect(svc.addr) end
      luanet.sleep(4)
      for _, c in ipairs(conns) do c:close() end
      local _, case = verdict("descriptor spell", svc, stop, { what = "200 connections held 4 s at ulimit -n 64",
        max_lines = 200 + 80 })
      local failures = 0
      for _, l in ipairs(case) do if l:find("accept failed", 1, true) then failures = failures + 1 end end
      say("descriptor spell: %d 'accept failed' lines in 4 s", failures)
      assert(failures <= 5, ("%d 'accept failed' lines for one 4 s spell of descriptor exhaustion"):format(failures))
    end, 20)
  end)
end)
