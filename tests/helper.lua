-- Shared helpers for the luanet busted specs.
--
--   H.run(fn, [timeout])   run fn as a task under luanet.run with a watchdog; errors raised in
--                          fn or in tasks started with H.go are re-raised after run returns,
--                          so busted reports them. The loop is stopped once fn and every H.go
--                          task have finished; a test still busy after `timeout` seconds
--                          (default 10) fails instead of hanging.
--   H.go(fn, ...)          spawn a tracked task (errors captured; the watchdog waits for it).
--   H.free_port()          a TCP port on 127.0.0.1 nobody listens on (call inside a task).
--   H.pair([addr])         a connected TCP pair {client, server} over loopback (inside a task).
--   H.child(src, [t], [sh]) run a Lua script in a child lua5.4 (synchronously, killed after
--                          t s; `sh` is a shell prefix such as "ulimit -n 64;");
--                          returns { ok, code, out, err }.
--   H.bg(src, [lang])      start a background child (lua5.4 or python3), returns { pid, kill, ... };
--                          inside H.run it is killed and its directory removed when run ends.
--   H.wait_for(pred, t)    poll pred() from a task every 10 ms until it is true or t s pass.
--   H.tmpdir()             a fresh directory under /tmp (removed by H.rmdir).
--   H.two(...)             { first, second } of a call's results (drops the detail text).
--   H.CHILD_PUT            source that gives a child DIR and put(file, text) (atomic write).
--   H.NAMESERVICE_CHILD    source of a child serving names on a free port (file "addr").
--   H.clock()              CLOCK_MONOTONIC in seconds, the same in every process (luasystem's
--                          monotime, which busted needs; /proc/uptime otherwise);
--                          H.CHILD_CLOCK is source that gives a child the same `clock`.
--   H.ser(v)               a Lua literal for strings, numbers, booleans and nested tables.
--   H.raw_call(svc, m, ...) method m on svc.addr over a raw MessagePack-RPC connection of
--                          this process's own (kept in svc.raw); result | nil, word, detail.
--   H.held_transitions(text), H.held_intervals(transitions, end_at)
--                          "<clock> true|false" lines of lease:held() samples, sorted;
--                          and the [from, to] intervals held (the last open until end_at).

local luanet = require "luanet"

local H = { luanet = luanet }

local unpack = table.unpack

-- Current H.run context (one at a time: luanet.run cannot nest).
local ctx

local function handler(e)
  if type(e) == "string" then
    return debug.traceback(e, 2)
  end
  return e
end

local function record(c, e)
  if c and not c.err then c.err = e end
end

function H.go(fn, ...)
  local c = assert(ctx, "H.go must be called during H.run")
  c.live = c.live + 1
  local args = table.pack(...)
  return luanet.spawn(function()
    local ok, e = xpcall(fn, handler, unpack(args, 1, args.n))
    if not ok then record(c, e) end
    c.live = c.live - 1
  end)
end

function H.run(fn, timeout)
  timeout = timeout or 10
  assert(ctx == nil, "H.run cannot nest")
  local c = { live = 0, timeout = timeout, cleanups = {} }
  ctx = c
  local t0 = luanet.now()
  H.go(fn)
  -- Watchdog: stops the loop once every tracked task has finished (so a broken "return when
  -- idle" cannot hang the suite; that behaviour is tested in child processes), or when the
  -- test overruns its time.
  luanet.spawn(function()
    while c.live > 0 do
      if luanet.now() - t0 > timeout then
        c.timed_out = true
        break
      end
      luanet.sleep(0.01)
    end
    luanet.stop()
  end)
  local ok, e = pcall(luanet.run)
  ctx = nil
  for i = #c.cleanups, 1, -1 do pcall(c.cleanups[i]) end
  if not ok then error(e, 0) end
  if c.err then error(c.err, 0) end
  if c.timed_out then
    error(("watchdog: test still busy after %g s (%d tracked task(s) unfinished)")
      :format(timeout, c.live), 2)
  end
  return true
end

-- Seconds elapsed while calling fn(...); returns elapsed, results...
function H.timed(fn, ...)
  local t0 = luanet.now()
  local r = table.pack(fn(...))
  return luanet.now() - t0, unpack(r, 1, r.n)
end

function H.wait_for(pred, t)
  local deadline = luanet.now() + (t or 5)
  while not pred() do
    if luanet.now() > deadline then return false end
    luanet.sleep(0.01)
  end
  return true
end

function H.port_of(addr)
  return tonumber(addr:match(":(%d+)$"))
end

function H.free_port()
  local l = assert(luanet.tcp.listen("127.0.0.1:0"))
  local port = H.port_of(l:local_addr())
  l:close()
  return port
end

-- A connected TCP pair (connect completes in the kernel before accept).
-- Returns client, server, listener-address.
function H.pair(addr)
  local l = assert(luanet.tcp.listen(addr or "127.0.0.1:0"))
  local a = l:local_addr()
  local client = assert(luanet.tcp.connect(a, { timeout = 5 }))
  local server = assert(l:accept(5))
  l:close()
  return client, server, a
end

function H.has_ipv6()
  local f = io.open("/proc/net/if_inet6")
  if not f then return false end
  local s = f:read("a")
  f:close()
  return s:find("00000000000000000000000000000001", 1, true) ~= nil
end

function H.exists(path)
  return os.rename(path, path) ~= nil
end

local function readfile(p)
  local f = io.open(p, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end
H.readfile = readfile

local function writefile(p, s)
  local f = assert(io.open(p, "wb"))
  f:write(s)
  f:close()
end

function H.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p '" .. p .. "'"))
  return p
end

function H.rmdir(p)
  if p and p:match("^/tmp/") then os.execute("rm -rf '" .. p .. "'") end
end

-- Run `src` in a child lua5.4 (LUA_PATH/LUA_CPATH are inherited, so it can require "luanet").
-- Blocking: call it from the test body, not from inside a task. Killed after `t` seconds.
function H.child(src, t, shell_prefix)
  local dir = H.tmpdir()
  writefile(dir .. "/main.lua", src)
  local ok, how, code = os.execute(("cd '%s' && %s timeout -s KILL %d lua5.4 main.lua >out 2>err </dev/null")
    :format(dir, shell_prefix or "", t or 10))
  local r = { ok = ok == true, how = how, code = code,
              out = readfile(dir .. "/out"), err = readfile(dir .. "/err") }
  H.rmdir(dir)
  return r
end

-- Start a background child: lang "lua" (default) or "python". Returns an object with
-- pid, dir (its cwd: files it writes can be polled), kill([sig]), alive(), cleanup().
function H.bg(src, lang)
  local dir = H.tmpdir()
  local file = dir .. (lang == "python" and "/main.py" or "/main.lua")
  writefile(file, src)
  local interp = lang == "python" and "python3" or "lua5.4"
  local p = assert(io.popen(("cd '%s' && { %s '%s' >out 2>err </dev/null & echo $!; }")
    :format(dir, interp, file)))
  local pid = tonumber(p:read("l"))
  p:close()
  assert(pid, "could not start child")
  local o = { pid = pid, dir = dir }
  -- Only signals our own child: the pid must still run the script in our directory.
  function o.kill(sig)
    if readfile("/proc/" .. pid .. "/cmdline"):find(dir, 1, true) then
      os.execute(("kill -%s %d 2>/dev/null"):format(sig or "KILL", pid))
    end
  end
  function o.alive()
    local st = readfile("/proc/" .. pid .. "/stat")
    local state = st:match("^%d+ %b() (%a)")
    return state ~= nil and state ~= "Z" and state ~= "X"
  end
  function o.file(name) return readfile(dir .. "/" .. name) end
  function o.cleanup() o.kill("KILL"); H.rmdir(dir) end
  -- also cleaned up when the current H.run ends, even if the test failed first
  if ctx then table.insert(ctx.cleanups, o.cleanup) end
  return o
end

-- Prepended to a child's source: DIR (the child's directory) and put(file, text), which
-- writes a file there atomically, so a test polling for it never reads half of it.
H.CHILD_PUT = [==[
local DIR = arg[0]:match("^(.*)/[^/]*$")
local function put(file, s)
  local f = assert(io.open(DIR .. "/" .. file .. ".tmp", "wb"))
  f:write(s)
  f:close()
  assert(os.rename(DIR .. "/" .. file .. ".tmp", DIR .. "/" .. file))
end
]==]

-- A child that runs a name service on a free loopback port and writes its address to the
-- file "addr" (for H.bg; it exits by itself after 25 s).
H.NAMESERVICE_CHILD = H.CHILD_PUT .. [==[
local luanet = require "luanet"
luanet.spawn(function() luanet.sleep(25) os.exit(3) end)   -- never outlive the suite
luanet.run(function()
  assert(luanet.StartNameService("127.0.0.1:0"))
  put("addr", luanet.service_listener:local_addr())
end)
]==]

H.CHILD_CLOCK = [==[
local clock
do
  local ok, sys = pcall(require, "system")
  if ok and type(sys) == "table" and sys.monotime then
    clock = sys.monotime
  else
    clock = function()
      local f = assert(io.open("/proc/uptime"))
      local t = f:read("n")
      f:close()
      return t
    end
  end
end
]==]
H.clock = assert(load(H.CHILD_CLOCK .. "return clock", "=H.clock"))()

function H.ser(v)
  local t = type(v)
  if t == "table" then
    local parts = {}
    for k, x in pairs(v) do parts[#parts + 1] = "[" .. H.ser(k) .. "]=" .. H.ser(x) end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "string" then
    return ("%q"):format(v)
  elseif t == "number" then
    return math.type(v) == "integer" and tostring(v) or ("%.17g"):format(v)
  end
  return tostring(v)
end

-- Kept apart from this process's own service layer, so that what it does cannot colour
-- what a test observes. A connection the other side closed (idle for three heartbeats)
-- is made again once.
function H.raw_call(svc, method, ...)
  local nargs = select("#", ...)
  for _ = 1, 2 do
    if not svc.raw then
      local c, word, detail = luanet.tcp.connect(svc.addr, { timeout = 2 })
      if not c then return nil, "no such service", tostring(word) .. ": " .. tostring(detail) end
      svc.raw, svc.msgid = c, 0
    end
    local c = svc.raw
    svc.msgid = svc.msgid + 1
    local id = svc.msgid
    local ok = c:write_call(3, nargs, 0, id, method, ...)
    while ok do
      local v = c:read_message(3)
      if v == nil then break end
      if v[1] == 1 and v[2] == id then
        if v[3] ~= nil then return nil, v[3][1], v[3][2] end
        return v[4]
      end
    end
    c:close()
    svc.raw = nil
  end
  return nil, "connection lost", "the peer closed the connection"
end

function H.held_transitions(text)
  local out = {}
  for at, v in text:gmatch("([%d.]+) (%a+)\n") do
    out[#out + 1] = { at = tonumber(at), held = v == "true" }
  end
  table.sort(out, function(a, b) return a.at < b.at end)
  return out
end

function H.held_intervals(lines, end_at)
  local out, open = {}, nil
  for _, l in ipairs(lines) do
    if l.held and not open then
      open = l.at
    elseif not l.held and open then
      out[#out + 1] = { open, l.at }
      open = nil
    end
  end
  if open then out[#out + 1] = { open, end_at } end
  return out
end

-- The first two results only ({ value, word }): failures also return a detail text
-- that may change, so specs compare just { nil, word }.
function H.two(a, b) return { a, b } end

-- Assert that pcall(fn, ...) fails with a message matching every plain substring in `parts`.
function H.raises(parts, fn, ...)
  local ok, e = pcall(fn, ...)
  assert(not ok, "expected an error, got success")
  e = tostring(e)
  for _, p in ipairs(parts) do
    assert(e:find(p, 1, true), ("error %q does not mention %q"):format(e, p))
  end
  return e
end

return H
