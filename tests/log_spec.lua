-- Logging (docs/log.md): luanet.log's exit paths, rotation and retention, JSON lines, files
-- that cannot be opened, a timer's schedule while a task logs at full speed, levels and
-- named loggers, SIGHUP reopening, luanet's own events in the log, and a full queue.
--
-- Logging is process-wide state (one writer thread per process): every configure happens in
-- a child lua5.4 process, never in this one. Children write their log files into a fresh
-- directory under /tmp; signals go only to a child's own pid, which it reports itself.
-- Set LOG_SPEC_NUMBERS=1 to see the rates and latencies measured on stderr.

local H = require "helper"

local NUMBERS = os.getenv("LOG_SPEC_NUMBERS")
local function note(fmt, ...)
  if NUMBERS then io.stderr:write(("[log_spec] " .. fmt .. "\n"):format(...)) end
end

-- Every child starts with DIR (its directory, absolute), put(file, text) (an atomic write
-- there), PID (its own process id) and luanet, log.
local PRELUDE = H.CHILD_PUT .. [==[
local PID = io.open("/proc/self/stat"):read("l"):match("^(%d+)")
local luanet = require "luanet"
local log = luanet.log
]==]

local child, sh_quote, sleep = require("log_child")(PRELUDE)

local function lines_of(s)
  local t = {}
  for l in s:gmatch("([^\n]*)\n") do t[#t + 1] = l end
  return t
end

local STAMP = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ "

-- Checks a text log of "line <n>" entries (and whatever `extra` accepts); returns
-- { count, first, last, gaps, dropped_lines, other = {...} }.
local function scan(text)
  local r = { count = 0, gaps = 0, dropped_lines = 0, other = {}, bad = {} }
  local prev
  for _, l in ipairs(lines_of(text)) do
    local n = l:match(STAMP .. "INFO  line (%d+)")
    if n then
      n = tonumber(n)
      r.count = r.count + 1
      r.first = r.first or n
      if prev and n ~= prev + 1 then r.gaps = r.gaps + 1 end
      prev, r.last = n, n
    elseif l:find("lines dropped", 1, true) then
      r.dropped_lines = r.dropped_lines + 1
    elseif l:match(STAMP) then
      r.other[#r.other + 1] = l
    else
      r.bad[#r.bad + 1] = l
    end
  end
  return r
end

local function files_in(dir)
  local p = assert(io.popen("ls -1 " .. sh_quote(dir)))
  local t = {}
  for name in p:lines() do t[#t + 1] = name end
  p:close()
  return t
end

local function is_root()
  local p = io.popen("id -u")
  local u = p:read("l")
  p:close()
  return u == "0"
end

-- 1. ---------------------------------------------------------------------------------------

local N = 100000
-- Lines padded so the writer has real bytes to write (about 100 bytes a line).
local PAD = ("x"):rep(60)

local EXIT_CHILD = [==[
assert(log.configure{ file = DIR .. "/app.log" })
local N, PAD = @@N@@, @@PAD@@
for i = 1, N do log.info("line %d %s", i, PAD) end
local s = log.stats()
put("stats", ("%d %d"):format(s.dropped, s.queued))
@@EXIT@@
]==]

local SIGNAL_CHILD = [==[
assert(log.configure{ file = DIR .. "/app.log" })
local PAD = @@PAD@@
local last = 0
luanet.spawn(function()
  local t0, i = luanet.now(), 0
  -- Logs until the signal stops the loop (3 s at most: then run returns true, a failure).
  while luanet.now() - t0 < 3 do
    for _ = 1, 1000 do
      i = i + 1
      log.info("line %d %s", i, PAD)
      last = i
    end
    if i == 20000 then put("ready", PID) end
    luanet.sleep(0)
  end
end)
local r = table.pack(luanet.run())
log.info("after run")
local s = log.stats()
put("result", ("%s %s %s %d %d"):format(tostring(r[1]), tostring(r[2]), tostring(r[3]), last, s.dropped))
]==]

-- The same with a writer that is behind at exit: the sink is a FIFO whose reader starts
-- only 0.5 s after the child did, so at exit nearly every line still waits in the queue.
local FIFO_SETUP = [==[
assert(os.execute("mkfifo " .. DIR .. "/fifo"))
os.execute(("timeout 15 sh -c 'exec 3<%s/fifo; sleep 0.5; cat <&3 >%s/copy; touch %s/cat.done'"
  .. " >/dev/null 2>&1 </dev/null &"):format(DIR, DIR, DIR))
assert(log.configure{ file = DIR .. "/fifo" })
]==]

local FIFO_EXIT_CHILD = FIFO_SETUP .. [==[
local N, PAD = @@N@@, @@PAD@@
for i = 1, N do log.info("line %d %s", i, PAD) end
local s = log.stats()
put("stats", ("%d %d"):format(s.dropped, s.queued))
@@EXIT@@
]==]

local FIFO_SIGNAL_CHILD = FIFO_SETUP .. [==[
local N, PAD = @@N@@, @@PAD@@
local queued
luanet.spawn(function()
  for i = 1, N do
    log.info("line %d %s", i, PAD)
    if i % 1000 == 0 then luanet.sleep(0) end
  end
  queued = log.stats().queued
  put("ready", PID)
  local t0 = luanet.now()
  while luanet.now() - t0 < 3 do luanet.sleep(0.02) end
end)
local r = table.pack(luanet.run())
log.info("after run")
local s = log.stats()
put("result", ("%s %s %s %d %d %d"):format(tostring(r[1]), tostring(r[2]), tostring(r[3]), N, s.dropped, queued))
]==]

local function fill(src, t)
  return (src:gsub("@@(%u+)@@", function(k) return t[k] end))
end

-- Asserts the log holds lines 1..logged (less exactly the dropped ones, if any were).
local function check_all_there(what, text, logged, dropped)
  local r = scan(text)
  assert.same({}, r.bad, what .. ": lines that are not log lines")
  if dropped == 0 then
    assert.equals(logged, r.count, what .. ": lines in the file")
    assert.equals(0, r.gaps, what .. ": gaps in the numbering")
    assert.equals(1, r.first, what .. ": first line")
    assert.equals(logged, r.last, what .. ": last line")
    assert.equals(0, r.dropped_lines, what .. ": a 'lines dropped' line though stats().dropped == 0")
  else
    -- Drops are allowed only when they are all accounted for.
    assert.equals(logged - dropped, r.count, what .. ": written + dropped ~= logged")
    assert.is_true(r.dropped_lines > 0, what .. ": lines were dropped but no 'lines dropped' line")
  end
  return r
end

describe("log: exit paths", function()
  local cases = {
    { "the script ends", "", 0 },
    { "os.exit(3)", "os.exit(3)", 3 },
    { "os.exit(4, true)", "os.exit(4, true)", 4 },
    { "an error in the main chunk", 'error("boom")', 1 },
  }
  for _, case in ipairs(cases) do
    local what, exit, code = case[1], case[2], case[3]
    it(("lose no line when %s right after %d lines"):format(what, N), function()
      local c = child(fill(EXIT_CHILD, { N = N, PAD = ("%q"):format(PAD), EXIT = exit }), { t = 15 })
      finally(c.cleanup)
      assert.equals(code, c.code, what .. ": exit code; stderr: " .. c.err)
      if what:find("error") then assert.truthy(c.err:find("boom", 1, true), c.err) end
      local dropped, queued = c.file("stats"):match("^(%d+) (%d+)$")
      assert.truthy(dropped, "child wrote no stats; stderr: " .. c.err)
      dropped, queued = tonumber(dropped), tonumber(queued)
      note("exit %-28s queued at exit %6d, dropped %d", what, queued, dropped)
      check_all_there(what, c.file("app.log"), N, dropped)
    end)
  end

  for _, sig in ipairs({ "TERM", "INT" }) do
    it(("lose no line on SIG%s inside luanet.run, which returns nil, 'interrupted', 'SIG%s'")
      :format(sig, sig), function()
      local c = child(fill(SIGNAL_CHILD, { PAD = ("%q"):format(PAD) }), { t = 15, bg = true })
      finally(c.cleanup)
      assert.is_true(c.wait_file("ready", 8), "child did not start logging: " .. c.file("err"))
      c.pid = tonumber(c.file("ready"))
      c.kill(sig)
      local code = c.wait_exit(12)
      c.pid = nil
      assert.equals(0, code, "exit code; stderr: " .. tostring(c.err))
      local r1, r2, r3, last, dropped = c.file("result"):match("^(%S+) (%S+) (%S+) (%d+) (%d+)$")
      assert.truthy(r1, "child wrote no result; stderr: " .. c.err)
      assert.same({ "nil", "interrupted", "SIG" .. sig }, { r1, r2, r3 })
      last, dropped = tonumber(last), tonumber(dropped)
      assert.is_true(last >= 20000)
      note("SIG%s: %d lines logged before the loop stopped, dropped %d", sig, last, dropped)
      local r = check_all_there("SIG" .. sig, c.file("app.log"), last, dropped)
      -- the script went on after run: its last line is there, last
      local tail = r.other[#r.other]
      assert.truthy(tail and tail:match(STAMP .. "INFO  after run$"), "no 'after run' line: " .. tostring(tail))
      local text = c.file("app.log")
      assert.truthy(text:match("INFO  after run\n$"), "'after run' is not the last line")
    end)
  end

  -- With the writer stuck until 0.5 s after the start, the exit path itself has to wait for
  -- the queue: the child reports how many lines were still queued when it went.
  local NF = 50000
  for _, case in ipairs(cases) do
    local what, exit, code = case[1], case[2], case[3]
    it(("lose no line when %s with %d lines still queued (a FIFO read late)"):format(what, NF), function()
      local c = child(fill(FIFO_EXIT_CHILD, { N = NF, PAD = ("%q"):format(PAD), EXIT = exit }), { t = 15 })
      finally(c.cleanup)
      assert.equals(code, c.code, what .. ": exit code; stderr: " .. c.err)
      local dropped, queued = c.file("stats"):match("^(%d+) (%d+)$")
      assert.truthy(dropped, "child wrote no stats; stderr: " .. c.err)
      dropped, queued = tonumber(dropped), tonumber(queued)
      note("fifo exit %-23s queued at exit %6d, dropped %d", what, queued, dropped)
      assert.equals(0, dropped)
      assert.is_true(queued > 40000, "the writer was not behind (" .. queued .. " queued): the test proves nothing")
      assert.is_true(c.wait_file("cat.done", 5), "the FIFO's reader did not finish")
      check_all_there(what, c.file("copy"), NF, dropped)
    end)
  end

  for _, sig in ipairs({ "TERM", "INT" }) do
    it(("lose no line on SIG%s inside luanet.run with the lines still queued (a FIFO read late)"):format(sig), function()
      local c = child(fill(FIFO_SIGNAL_CHILD, { N = NF, PAD = ("%q"):format(PAD) }), { t = 15, bg = true })
      finally(c.cleanup)
      assert.is_true(c.wait_file("ready", 8), "child did not start logging: " .. c.file("err"))
      c.pid = tonumber(c.file("ready"))
      c.kill(sig)
      local code = c.wait_exit(12)
      c.pid = nil
      assert.equals(0, code, "exit code; stderr: " .. tostring(c.err))
      local r1, r2, r3, n, dropped, queued = c.file("result"):match("^(%S+) (%S+) (%S+) (%d+) (%d+) (%d+)$")
      assert.truthy(r1, "child wrote no result; stderr: " .. c.err)
      assert.same({ "nil", "interrupted", "SIG" .. sig }, { r1, r2, r3 })
      n, dropped, queued = tonumber(n), tonumber(dropped), tonumber(queued)
      note("fifo SIG%s: queued when signalled %d, dropped %d", sig, queued, dropped)
      assert.equals(0, dropped)
      assert.is_true(queued > 40000, "the writer was not behind (" .. queued .. " queued): the test proves nothing")
      assert.is_true(c.wait_file("cat.done", 5), "the FIFO's reader did not finish")
      local text = c.file("copy")
      check_all_there("SIG" .. sig, text, n, dropped)
      assert.truthy(text:match("\n" .. STAMP:sub(2) .. "INFO  after run\n$"), "'after run' is not the last line")
    end)
  end

  it("a writer stuck for good delays the end by 5 s at most (docs: 'Draining waits 5 s at most')", function()
    local luanet = require "luanet" -- for now() only: nothing is logged in this process
    local t0 = luanet.now()
    local c = child([==[
      assert(os.execute("mkfifo " .. DIR .. "/fifo"))
      -- holds the FIFO open for reading and never reads
      os.execute(("timeout 15 sh -c 'echo $$ >%s/holder.pid; exec 3<%s/fifo; exec sleep 14'"
        .. " >/dev/null 2>&1 </dev/null &"):format(DIR, DIR))
      assert(log.configure{ file = DIR .. "/fifo" })
      for i = 1, 100000 do log.info("line %d", i) end
      put("logged", tostring(log.stats().dropped))
    ]==], { t = 20 })
    local el = luanet.now() - t0
    finally(function()
      local pid = tonumber(c.file("holder.pid"))
      if pid and H.readfile("/proc/" .. pid .. "/cmdline"):find("^sleep\0" .. "14") then
        os.execute("kill " .. pid .. " 2>/dev/null")
      end
      c.cleanup()
    end)
    note("stuck writer: the child took %.2f s to end", el)
    assert.equals(0, c.code, c.err)
    assert.is_true(tonumber(c.file("logged")) > 0, "the queue never filled")
    assert.is_true(el < 7, ("the child took %.1f s to end"):format(el))
  end)
end)

-- 2. ---------------------------------------------------------------------------------------

describe("log: rotation", function()
  -- Checks dir/app.log*: three rotated files, consecutive and the highest numbers, each at
  -- most 2000 bytes, holding lines 1..total in order, where the sizes say each file begins.
  local function verify(dir, total)
    local rotated, live = {}, false
    for _, name in ipairs(files_in(dir)) do
      if name == "app.log" then
        live = true
      else
        local n = name:match("^app%.log%.(%d+)$")
        assert.truthy(n, "unexpected file " .. name)
        rotated[#rotated + 1] = tonumber(n)
      end
    end
    table.sort(rotated)
    assert.is_true(live, "no live app.log")
    assert.equals(3, #rotated, "rotated files kept: " .. table.concat(rotated, ","))
    -- the files in order: rotated (ascending), then the live one
    local order = {}
    for _, n in ipairs(rotated) do order[#order + 1] = "app.log." .. n end
    order[#order + 1] = "app.log"
    local all, prev_last = {}, nil
    for i, name in ipairs(order) do
      local text = H.readfile(dir .. "/" .. name)
      assert.is_true(#text <= 2000, name .. " has " .. #text .. " bytes")
      local r = scan(text)
      assert.same({}, r.bad)
      assert.same({}, r.other)
      assert.equals(0, r.gaps, name)
      assert.is_true(r.count > 0, name .. " is empty")
      if prev_last then assert.equals(prev_last + 1, r.first, name .. " does not follow the previous file") end
      prev_last = r.last
      if i < #order then
        -- a file is rotated only when the next line would not fit
        assert.is_true(#text > 2000 - 60, name .. " was rotated early, at " .. #text .. " bytes")
      end
      all[#all + 1] = r
    end
    assert.equals(total, prev_last, "the newest line is in the live file")
    -- The files the writer made, worked out from the line sizes (timestamps are fixed width):
    -- the kept ones are the three highest numbers, and begin where the sizes say.
    local made, size, first_of = 0, 0, { [0] = 1 }
    for i = 1, total do
      local len = 25 + #("INFO  line " .. i .. " rotation test\n")
      if size > 0 and size + len > 2000 then
        made, size = made + 1, 0
        first_of[made] = i
      end
      size = size + len
    end
    assert.is_true(made > 3)
    assert.same({ made - 2, made - 1, made }, rotated, "rotated numbers")
    assert.equals(first_of[made - 3], all[1].first, "first line of app.log." .. rotated[1])
    assert.equals(first_of[made], all[4].first, "first line of the live file")
    return made
  end

  local ROTATING = [==[
    assert(log.configure{ dir = @@DIR@@, name = "app", max_bytes = 2000, keep = 3 })
    for i = @@FROM@@, @@TO@@ do log.info("line %d rotation test", i) end
    assert(log.flush())
    local s = log.stats()
    print(s.written, s.dropped, s.failed)
  ]==]

  it("max_bytes = 2000, keep = 3: three rotated files, the newest, each at most 2000 bytes", function()
    local dir = H.tmpdir()
    finally(function() H.rmdir(dir) end)
    local c = child(fill(ROTATING, { DIR = ("%q"):format(dir), FROM = 1, TO = 200 }), { t = 10 })
    finally(c.cleanup)
    assert.equals(0, c.code, c.err)
    assert.equals("200\t0\t0\n", c.out)
    local made = verify(dir, 200)
    -- a new process goes on where the last one stopped: the live file's size counts, and
    -- the next rotated file is one more than the highest there
    c = child(fill(ROTATING, { DIR = ("%q"):format(dir), FROM = 201, TO = 300 }), { t = 10 })
    finally(c.cleanup)
    assert.equals(0, c.code, c.err)
    assert.equals("100\t0\t0\n", c.out)
    assert.is_true(verify(dir, 300) > made)
  end)
end)

-- 3. ---------------------------------------------------------------------------------------

describe("log: JSON lines", function()
  it("every line parses (cjson and python3), fields right, the message round-trips", function()
    local msgs = {
      'plain',
      'quotes "double" and \'single\'',
      [[back\slash \\ \n (literal)]],
      "new\nline and\r\nCRLF",
      "tab\there",
      "controls \0 \1 \2 \8 \11 \12 \27 \31 del \127",
      "utf-8: h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80 \xe4\xb8\xad\xe6\x96\x87",
      "line sep \xe2\x80\xa8 para sep \xe2\x80\xa9",
      "",
      ("long "):rep(2000),
    }
    local quoted = {}
    for i, m in ipairs(msgs) do quoted[i] = ("%q"):format(m) end
    local c = child(([==[
      assert(log.configure{ file = DIR .. "/app.json", format = "json", level = "trace" })
      local MSGS = { %s }
      local odd = log.logger('we"ird\\name\n')
      for i, m in ipairs(MSGS) do log.info(m) end
      for i, m in ipairs(MSGS) do odd.warn("%%s|%%d", m, i) end
      log.error("bad %%d", "x")
      log.trace("t") log.debug("d") log.info("i") log.warn("w") log.error("e")
      log.info("not utf-8: \xff\xfe end")
      assert(log.flush())
    ]==]):format(table.concat(quoted, ", ")), { t = 10 })
    finally(c.cleanup)
    assert.equals(0, c.code, c.err)
    local text = c.file("app.json")
    local cjson = require "cjson"
    local recs = {}
    for i, l in ipairs(lines_of(text)) do
      local ok, v = pcall(cjson.decode, l)
      assert.is_true(ok, ("line %d does not parse: %s: %q"):format(i, tostring(v), l))
      recs[i] = v
    end
    local n = #msgs
    assert.equals(2 * n + 1 + 5 + 1, #recs)
    for _, r in ipairs(recs) do
      local keys = {}
      for k in pairs(r) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.same({ "level", "logger", "msg", "time" }, keys)
      assert.truthy(r.time:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"), r.time)
    end
    for i, m in ipairs(msgs) do
      assert.same({ level = "info", logger = "", msg = m }, { level = recs[i].level, logger = recs[i].logger, msg = recs[i].msg })
      local o = recs[n + i]
      assert.same({ level = "warn", logger = 'we"ird\\name\n', msg = m .. "|" .. i },
        { level = o.level, logger = o.logger, msg = o.msg })
    end
    local fe = recs[2 * n + 1]
    assert.equals("error", fe.level)
    assert.truthy(fe.msg:find("(log format error: ", 1, true), fe.msg)
    assert.truthy(fe.msg:find("bad %d", 1, true), fe.msg)
    local levels = {}
    for i = 2 * n + 2, 2 * n + 6 do levels[#levels + 1] = recs[i].level .. "=" .. recs[i].msg end
    assert.same({ "trace=t", "debug=d", "info=i", "warn=w", "error=e" }, levels)
    -- bytes that are not UTF-8 become U+FFFD: the line stays valid JSON
    assert.equals("not utf-8: \xef\xbf\xbd\xef\xbf\xbd end", recs[#recs].msg)

    -- python's json is strict about raw control characters in strings
    local f = assert(io.open(c.path("check.py"), "w"))
    f:write([[
import json, sys
n = 0
for line in open(sys.argv[1], encoding="utf-8"):
    assert line.endswith("\n")
    r = json.loads(line)
    assert set(r) == {"time", "level", "logger", "msg"}, r
    n += 1
print(n)
]])
    f:close()
    local p = io.popen(("python3 %s %s 2>&1"):format(sh_quote(c.path("check.py")), sh_quote(c.path("app.json"))))
    local out = p:read("a")
    p:close()
    assert.equals(tostring(#recs) .. "\n", out)
  end)
end)

-- 4. ---------------------------------------------------------------------------------------

describe("log: files that cannot be opened", function()
  it("configure fails with nil, 'log error', detail; stderr keeps working; the old file stays", function()
    local root = is_root()
    local c = child(([==[
      local ROOT = %s
      local function show(tag, ok, word, detail)
        print(tag, tostring(ok), tostring(word), tostring(detail))
      end
      -- a fresh process: the sink is stderr, and stays so
      show("nodir", log.configure{ dir = "/nonexistent/x" })
      log.info("still on stderr %%d", 7)
      assert(log.flush())
      -- a path in a read-only directory (as root, which writes anyway: paths no one can open)
      os.execute("mkdir " .. DIR .. "/ro && touch " .. DIR .. "/plain")
      if not ROOT then
        os.execute("chmod 500 " .. DIR .. "/ro")
        show("readonly", log.configure{ file = DIR .. "/ro/app.log" })
      end
      show("isdir", log.configure{ file = DIR .. "/ro" })
      show("notdir", log.configure{ file = DIR .. "/plain/app.log" })
      show("proc", log.configure{ file = "/proc/luanet-log-test.log" })
      -- with a good file configured, a failed configure leaves it (and the old level) in place
      assert(log.configure{ file = DIR .. "/good.log", level = "info" })
      log.info("one")
      show("again", log.configure{ dir = "/nonexistent/y", level = "error" })
      log.info("two")
      assert(log.flush())
      local s = log.stats()
      print("stats", s.written, s.dropped, s.failed)
      os.execute("chmod 700 " .. DIR .. "/ro")
    ]==]):format(tostring(root)), { t = 10 })
    finally(c.cleanup)
    assert.equals(0, c.code, c.err)
    local got = {}
    for _, l in ipairs(lines_of(c.out)) do
      local tag, rest = l:match("^(%S+)\t(.*)$")
      got[tag] = rest
    end
    local function failed(tag, path, reason)
      local ok, word, detail = (got[tag] or ""):match("^(%S+)\t(%S+ ?%S*)\t(.*)$")
      assert.equals("nil", ok, tag .. ": " .. tostring(got[tag]))
      assert.equals("log error", word, tag)
      assert.truthy(detail:find("cannot open " .. path, 1, true), tag .. ": detail " .. detail)
      assert.truthy(detail:find(reason, 1, true), tag .. ": detail " .. detail .. " lacks " .. reason)
    end
    failed("nodir", "/nonexistent/x/luanet.log", "No such file or directory")
    if not root then failed("readonly", c.dir .. "/ro/app.log", "Permission denied") end
    failed("isdir", c.dir .. "/ro", "Is a directory")
    failed("notdir", c.dir .. "/plain/app.log", "Not a directory")
    failed("proc", "/proc/luanet-log-test.log", "")
    failed("again", "/nonexistent/y/luanet.log", "No such file or directory")
    -- logging to stderr worked after the failure
    assert.truthy(c.err:match(STAMP:sub(2) .. "INFO  still on stderr 7\n"), "stderr: " .. c.err)
    local good = lines_of(c.file("good.log"))
    assert.equals(2, #good, c.file("good.log"))
    assert.truthy(good[1]:match(STAMP .. "INFO  one$"))
    assert.truthy(good[2]:match(STAMP .. "INFO  two$"), "a failed configure changed the sink or the level")
    assert.equals("stats\t3\t0\t0", got.stats and ("stats\t" .. got.stats))
  end)
  it("a full disk (/dev/full) loses lines counted and reported once; the process keeps serving", function()
    local c = child([==[
      assert(log.configure{ file = "/dev/full" })
      for i = 1, 5000 do log.info("line %d", i) end
      log.flush(2)
      luanet.run(function() luanet.sleep(0.05) end)   -- the loop still runs
      for i = 1, 5000 do log.info("line %d", i) end
      log.flush(2)
      local s = log.stats()
      print("full", s.written, s.failed)
    ]==], { t = 10 })
    finally(c.cleanup)
    assert.equals(0, c.code, c.err)
    assert.equals("full\t0\t10000\n", c.out)
    local _, notes = c.err:gsub("writing the log failed", "")
    assert.equals(1, notes, c.err)
    assert.truthy(c.err:find("No space left on device", 1, true), c.err)
  end)

  it("a write that fails later (a pipe whose reader went away) is counted; the process keeps going", function()
    local c = child([==[
      assert(os.execute("mkfifo " .. DIR .. "/fifo"))
      -- a reader that takes 100 bytes and goes
      os.execute(("timeout 10 head -c 100 %s/fifo >/dev/null 2>&1 </dev/null &"):format(DIR))
      assert(log.configure{ file = DIR .. "/fifo" })
      for i = 1, 1000 do log.info("line %d", i) end
      log.flush(2)
      luanet.run(function() luanet.sleep(0.3) end)
      for i = 1, 1000 do log.info("line %d", i) end
      log.flush(2)
      local s = log.stats()
      print("alive", s.written + s.failed, s.failed)
      -- and a good file works again
      assert(log.configure{ file = DIR .. "/good.log" })
      log.info("recovered")
      assert(log.flush())
    ]==], { t = 10 })
    finally(c.cleanup)
    assert.equals(0, c.code, ("the child died (exit code %s: 141 is SIGPIPE); stderr: %s"):format(c.code, c.err))
    local total, failed = c.out:match("alive\t(%d+)\t(%d+)")
    assert.equals("2000", total, c.out)
    assert.is_true(tonumber(failed) > 0, c.out)
    assert.truthy(c.err:find("writing the log failed", 1, true), c.err)
    assert.truthy(c.file("good.log"):match(STAMP .. "INFO  recovered\n$"))
  end)
end)

-- 5. ---------------------------------------------------------------------------------------

describe("log: the loop keeps its schedule", function()
  it("a 10 ms timer stays on time while another task logs at full speed for 1 s", function()
    local c = child([==[
      assert(log.configure{ file = DIR .. "/app.log" })
      local function median(t)
        table.sort(t)
        return t[(#t + 1) // 2]
      end
      local function measure(with_flood)
        local late, logged, flooding = {}, 0, with_flood
        if with_flood then
          luanet.spawn(function()
            local t0 = luanet.now()
            while luanet.now() - t0 < 1 do
              for _ = 1, 1000 do
                logged = logged + 1
                log.info("flood line %d with some text to write", logged)
              end
              luanet.sleep(0)
            end
            flooding = false
          end)
        end
        luanet.spawn(function()
          for i = 1, 100 do
            local t = luanet.now()
            luanet.sleep(0.01)
            late[i] = luanet.now() - t - 0.01
          end
        end)
        local t0 = luanet.now()
        assert(luanet.run())
        local el = luanet.now() - t0
        local max = math.max(table.unpack(late))
        return median(late), max, logged, el, #late
      end
      local bm, bx = measure(false)
      local s0 = log.stats()
      local med, max, logged, el, n = measure(true)
      assert(log.flush(10))
      local s = log.stats()
      print(("%d %.6f %.6f %.6f %.6f %d %.3f %d %d"):format(n, bm, bx, med, max, logged, el,
        s.written - s0.written, s.dropped - s0.dropped))
    ]==], { t = 15 })
    finally(c.cleanup)
    assert.equals(0, c.code, c.err)
    local n, bm, bx, med, max, logged, el, written, dropped = c.out:match(
      "^(%d+) (%S+) (%S+) (%S+) (%S+) (%d+) (%S+) (%d+) (%d+)\n$")
    assert.truthy(n, "child output: " .. c.out)
    n, bm, bx, med, max = tonumber(n), tonumber(bm), tonumber(bx), tonumber(med), tonumber(max)
    logged, el, written, dropped = tonumber(logged), tonumber(el), tonumber(written), tonumber(dropped)
    note("timer: idle median %.2f ms max %.2f ms; flooding median %.2f ms max %.2f ms",
      bm * 1000, bx * 1000, med * 1000, max * 1000)
    note("flood: %d lines logged in 1 s, %d written, %d dropped (%.0f lines/s logged)", logged, written,
      dropped, logged / 1.0)
    assert.equals(100, n)
    assert.is_true(med < 0.005, ("median lateness %.2f ms"):format(med * 1000))
    assert.is_true(max < 0.050, ("max lateness %.2f ms"):format(max * 1000))
    assert.equals(logged, written + dropped, "written + dropped ~= logged")
    assert.is_true(logged >= 100000, "only " .. logged .. " lines logged in 1 s")
    assert.is_true(written >= 100000, "only " .. written .. " lines written in 1 s")
    local r = scan(c.file("app.log"):gsub("flood line", "line"))
    assert.equals(written, r.count + r.dropped_lines + #r.other, "lines in the file")
  end)
end)

-- 6. ---------------------------------------------------------------------------------------

describe("log: levels and named loggers", function()
  it("level = 'warn', levels = { db = 'debug' }: filtering, enabled(), nothing formatted below the level", function()
    local c = child([==[
      local before = os.date("!%Y-%m-%dT%H:%M:%S")
      assert(log.configure{ file = DIR .. "/app.log", level = "warn", levels = { db = "debug" } })
      local db, other = log.logger("db"), log.logger("other")
      local calls = 0
      local obj = setmetatable({}, { __tostring = function() calls = calls + 1; return "OBJ" end })
      local boom = setmetatable({}, { __tostring = function() error("formatted!") end })
      log.info("root info %s", obj)
      log.info(obj)
      log.debug("root debug %s %s", obj, boom)
      log.trace(boom)
      other.info("other info %s", obj)
      db.trace("db trace %s", obj)
      db.trace(boom)
      print("disabled_calls", calls)
      log.warn("root warn %s", obj)
      db.debug("db debug %s", obj)
      db.info(obj)
      other.error("other error")
      log.error(obj)
      print("enabled_calls", calls)
      print("enabled", log.enabled("info"), log.enabled("warn"), log.enabled("error"), db.enabled("debug"),
        db.enabled("trace"), other.enabled("warn"), other.enabled("info"), (pcall(log.enabled, "bogus")))
      print("same", tostring(log.logger("db") == db), tostring(log.logger("") == log), db.name)
      log.warn("bad %d", "x")
      log.warn("%d%%", 5)
      log.warn("no args %d")
      log.warn(42)
      log.warn("multi\nline")
      -- errors in configure raise, and change nothing
      local function raises(t) local ok, e = pcall(log.configure, t); print("raises", tostring(not ok), e) end
      raises({ bogus = 1 })
      raises({ level = "loud" })
      raises({ levels = { db = "loud" } })
      raises({ format = "xml" })
      raises({ file = DIR .. "/x.log", dir = DIR })
      raises({ max_bytes = -1 })
      print("badlogger", pcall(log.logger, 42))
      log.info("still filtered")
      log.warn("still here")
      db.debug("db still debug")
      assert(log.flush())
      print("between", before, os.date("!%Y-%m-%dT%H:%M:%S"))
    ]==], { t = 10 })
    finally(c.cleanup)
    assert.equals(0, c.code, c.err)
    local out = c.out
    assert.truthy(out:find("disabled_calls\t0\n", 1, true), "a call below the level formatted its arguments: " .. out)
    assert.truthy(out:find("enabled_calls\t4\n", 1, true), out)
    assert.truthy(out:find("enabled\tfalse\ttrue\ttrue\ttrue\tfalse\ttrue\tfalse\tfalse\n", 1, true), out)
    assert.truthy(out:find("same\ttrue\ttrue\tdb\n", 1, true), out)
    local raised = {}
    for ok, e in out:gmatch("raises\t(%S+)\t([^\n]*)") do raised[#raised + 1] = ok .. " " .. e end
    assert.equals(6, #raised)
    for _, r in ipairs(raised) do assert.truthy(r:match("^true "), r) end
    assert.truthy(raised[1]:find("unknown setting 'bogus'", 1, true), raised[1])
    assert.truthy(raised[2]:find("unknown level loud", 1, true), raised[2])
    assert.truthy(raised[3]:find("unknown level loud", 1, true), raised[3])
    assert.truthy(raised[4]:find("format", 1, true), raised[4])
    assert.truthy(out:find("badlogger\tfalse\t", 1, true), out)
    local before, after = out:match("between\t(%S+)\t(%S+)")

    local got = {}
    for _, l in ipairs(lines_of(c.file("app.log"))) do
      local stamp = l:match("^(%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d)%.%d%d%dZ ")
      if stamp then
        -- UTC, taken at the call
        assert.is_true(stamp >= before and stamp <= after, ("%s not in [%s, %s]"):format(stamp, before, after))
        -- (Lua names the function 'format' or 'string.format' in the message, by version)
        got[#got + 1] = l:sub(26):gsub("'string%.format'", "'format'")
      else
        got[#got] = got[#got] .. "\n" .. l -- a message's own lines continue the entry
      end
    end
    assert.same({
      "WARN  root warn OBJ",
      "DEBUG [db] db debug OBJ",
      "INFO  [db] OBJ",
      "ERROR [other] other error",
      "ERROR OBJ",
      "WARN  (log format error: bad argument #2 to 'format' (number expected, got string)) bad %d",
      "WARN  5%",
      "WARN  no args %d",
      "WARN  42",
      "WARN  multi\nline",
      "WARN  still here",
      "DEBUG [db] db still debug",
    }, got)
  end)
end)

-- 7. ---------------------------------------------------------------------------------------

describe("log: SIGHUP", function()
  it("reopens the file by name after it was moved; nothing is lost, in order", function()
    local c = child([==[
      assert(log.configure{ file = DIR .. "/app.log" })
      local n = 0
      local function more(k) for _ = 1, k do n = n + 1; log.info("line %d", n) end end
      local function wait(file)
        local t0 = luanet.now()
        while io.open(DIR .. "/" .. file) == nil do
          assert(luanet.now() - t0 < 5, "no " .. file)
          luanet.sleep(0.01)
        end
      end
      luanet.run(function()
        -- quiet: 1000 lines, then (after mv + HUP) 1000 more, all in the new file
        more(1000)
        assert(log.flush())
        put("phase1", PID)
        wait("go1")
        luanet.sleep(0.3)
        more(1000)
        assert(log.flush())
        put("phase2", tostring(n))
        -- busy: lines go on while the file is moved and HUP arrives
        local t0 = luanet.now()
        local went
        while luanet.now() - t0 < 5 do
          more(100)
          luanet.sleep(0.001) -- busy, but well within what the writer keeps up with
          if not went and io.open(DIR .. "/go2") then went = luanet.now() end
          if went and luanet.now() - went > 0.3 then break end
        end
      end)
      assert(log.flush())
      local s = log.stats()
      put("result", ("%d %d %d"):format(n, s.written, s.dropped))
    ]==], { t = 15, bg = true })
    finally(c.cleanup)
    assert.is_true(c.wait_file("phase1", 5), "child: " .. c.file("err"))
    c.pid = tonumber(c.file("phase1"))
    assert(os.rename(c.path("app.log"), c.path("app.log.old")))
    c.kill("HUP")
    local f = assert(io.open(c.path("go1"), "w")); f:close()
    assert.is_true(c.wait_file("phase2", 5), "child: " .. c.file("err"))
    sleep(0.05)
    assert(os.rename(c.path("app.log"), c.path("app.log.old2")))
    c.kill("HUP")
    f = assert(io.open(c.path("go2"), "w")); f:close()
    local code = c.wait_exit(10)
    c.pid = nil
    assert.equals(0, code, "stderr: " .. tostring(c.err))
    local n, written, dropped = c.file("result"):match("^(%d+) (%d+) (%d+)$")
    n, written, dropped = tonumber(n), tonumber(written), tonumber(dropped)
    assert.truthy(n, c.file("err"))
    assert.equals(0, dropped)
    assert.equals(n, written)
    local old = scan(c.file("app.log.old"))
    assert.same({ 1000, 1, 1000, 0 }, { old.count, old.first, old.last, old.gaps }, "app.log.old")
    local mid = scan(c.file("app.log.old2"))
    assert.equals(1001, mid.first, "lines logged 0.3 s after SIGHUP went to the old file")
    assert.equals(0, mid.gaps)
    assert.is_true(mid.last >= 2000)
    local new = scan(c.file("app.log"))
    assert.is_true(new.count > 0, "nothing in the file opened after the second SIGHUP")
    assert.equals(mid.last + 1, new.first)
    assert.equals(n, new.last)
    assert.equals(0, new.gaps)
    assert.equals(n, old.count + mid.count + new.count)
    note("SIGHUP: %d lines, %d in app.log.old2 (after the busy move), %d in the new file", n, mid.count, new.count)
  end)
end)

-- 8. ---------------------------------------------------------------------------------------

describe("log: luanet's own events", function()
  it("a task error lands in the log file at ERROR under [luanet], with its traceback", function()
    local c = child([==[
      assert(log.configure{ file = DIR .. "/app.log" })
      local function inner_function_name() error("kaboom 42") end
      luanet.spawn(function() inner_function_name() end)
      print("run", tostring(luanet.run()))
      -- the same in JSON, to a second file
      assert(log.configure{ file = DIR .. "/app.json", format = "json" })
      luanet.spawn(function() error({}) end)
      luanet.spawn(function() inner_function_name() end)
      print("run", tostring(luanet.run()))
      -- a connection that speaks nonsense to a service: a warning
      assert(luanet.StartLocalService("LogTest", "127.0.0.1:0"))
      local addr = luanet.service_listener:local_addr()
      luanet.run(function()
        local conn = assert(luanet.tcp.connect(addr, { timeout = 2 }))
        conn:write("\x93\x05\x05\x05\x93\x05\x05\x05")
        conn:read(1, 2)
        conn:close()
        luanet.sleep(0.1)
        luanet.stop()
      end)
      assert(log.flush())
    ]==], { t = 10 })
    finally(c.cleanup)
    assert.equals(0, c.code, c.err)
    assert.equals("run\ttrue\nrun\ttrue\n", c.out)
    -- nothing of it on stderr: it all went to the file
    assert.is_nil(c.err:find("kaboom", 1, true), "stderr: " .. c.err)
    local text = c.file("app.log")
    local first = lines_of(text)
    assert.truthy(first[1] and first[1]:match(STAMP .. "ERROR %[luanet%] task error: .*kaboom 42$"), text)
    assert.equals("stack traceback:", first[2], text)
    assert.truthy(text:find("inner_function_name", 1, true), "no traceback in: " .. text)
    -- the traceback's lines belong to the one entry: no other timestamped line
    local stamped = 0
    for _, l in ipairs(first) do if l:match(STAMP) then stamped = stamped + 1 end end
    assert.equals(1, stamped, text)

    local cjson = require "cjson"
    local recs = {}
    for _, l in ipairs(lines_of(c.file("app.json"))) do recs[#recs + 1] = cjson.decode(l) end
    local errors, warns = {}, {}
    for _, r in ipairs(recs) do
      assert.equals("luanet", r.logger)
      if r.level == "error" then errors[#errors + 1] = r.msg else warns[#warns + 1] = r end
    end
    assert.equals(2, #errors, c.file("app.json"))
    assert.truthy(errors[1]:find("^task error: "), errors[1])
    assert.truthy(errors[2]:find("^task error: .*kaboom 42\nstack traceback:\n"), errors[2])
    assert.truthy(errors[2]:find("inner_function_name", 1, true), errors[2])
    assert.is_true(#warns >= 1, "no warning for the connection that broke the protocol: " .. c.file("app.json"))
    for _, w in ipairs(warns) do
      assert.equals("warn", w.level)
      assert.truthy(w.msg:find("^connection "), w.msg)
    end
  end)
end)

-- 9. ---------------------------------------------------------------------------------------

describe("log: overload", function()
  it("1,000,000 lines of 200 bytes: written + dropped == logged, drops are told, the loop stays responsive", function()
    local c = child([==[
      assert(log.configure{ file = DIR .. "/app.log" })
      local PAD = ("y"):rep(160)
      local N, logged, late = 1000000, 0, {}
      luanet.spawn(function()
        while logged < N do
          for _ = 1, 1000 do logged = logged + 1; log.info("line %07d %s", logged, PAD) end
          luanet.sleep(0)
        end
      end)
      luanet.spawn(function()
        while logged < N do
          local t = luanet.now()
          luanet.sleep(0.005)
          late[#late + 1] = luanet.now() - t - 0.005
        end
      end)
      local t0 = luanet.now()
      assert(luanet.run())
      local el = luanet.now() - t0
      local s1 = log.stats()
      local t1 = luanet.now()
      local ok, word = log.flush(20)
      local fl = luanet.now() - t1
      local s = log.stats()
      table.sort(late)
      print(("%d %.3f %.3f %s %d %d %d %d %d %.6f"):format(logged, el, fl, tostring(ok or word), s.written,
        s.dropped, s.failed, s.queued, s1.dropped, late[#late] or -1))
    ]==], { t = 30 })
    finally(c.cleanup)
    assert.equals(0, c.code, c.err)
    local logged, el, fl, ok, written, dropped, failed, queued, _, maxlate = c.out:match(
      "^(%d+) (%S+) (%S+) (%S+) (%d+) (%d+) (%d+) (%d+) (%d+) (%S+)\n$")
    assert.truthy(logged, "child output: " .. c.out .. c.err)
    logged, el, fl = tonumber(logged), tonumber(el), tonumber(fl)
    written, dropped, failed, queued, maxlate = tonumber(written), tonumber(dropped), tonumber(failed),
      tonumber(queued), tonumber(maxlate)
    note("overload: %d lines logged in %.2f s (%.0f/s), flush took %.2f s, written %d, dropped %d, max timer lateness %.1f ms",
      logged, el, logged / el, fl, written, dropped, maxlate * 1000)
    assert.equals("true", ok, "flush")
    assert.equals(0, failed)
    assert.equals(0, queued)
    local r = scan(c.file("app.log"))
    assert.same({}, r.bad)
    -- the "lines dropped" notices are written lines too
    assert.equals(written, r.count + r.dropped_lines + #r.other, "lines in the file vs stats().written")
    assert.equals(logged, r.count + dropped, "written + dropped ~= logged")
    if dropped > 0 then
      assert.is_true(r.dropped_lines > 0, "lines were dropped but the file does not say so")
      local told = 0
      for l in c.file("app.log"):gmatch("WARN  %[luanet%.log%] (%d+) lines dropped: the log queue was full\n") do
        told = told + tonumber(l)
      end
      assert.equals(dropped, told, "the 'lines dropped' lines do not add up to stats().dropped")
    end
    assert.is_true(maxlate < 0.1, ("a 5 ms timer was %.1f ms late during the flood"):format(maxlate * 1000))
  end)

  it("a stalled writer (a FIFO nobody reads yet): the queue fills, lines are dropped and counted, told later", function()
    local c = child([==[
      assert(os.execute("mkfifo " .. DIR .. "/fifo"))
      -- a read end held open, so opening for writing does not block; nobody reads it yet
      local hold = assert(io.open(DIR .. "/fifo", "r+"))
      assert(log.configure{ file = DIR .. "/fifo" })
      local N = 100000
      local t0 = luanet.now()
      for i = 1, N do log.info("line %d", i) end
      local el = luanet.now() - t0
      local s1 = log.stats()
      -- now a reader drains the FIFO into a file
      os.execute(("cat %s/fifo > %s/copy &"):format(DIR, DIR))
      assert(log.flush(10))
      local s = log.stats()
      hold:close()
      print(("%d %.4f %d %d %d %d"):format(N, el, s1.dropped, s.written, s.dropped, s.failed))
    ]==], { t = 20 })
    finally(c.cleanup)
    assert.equals(0, c.code, c.err)
    local n, el, d1, written, dropped, failed = c.out:match("^(%d+) (%S+) (%d+) (%d+) (%d+) (%d+)\n$")
    assert.truthy(n, "child output: " .. c.out .. c.err)
    n, el, d1, written, dropped, failed = tonumber(n), tonumber(el), tonumber(d1), tonumber(written),
      tonumber(dropped), tonumber(failed)
    note("stalled writer: %d lines logged in %.1f ms, %d dropped, %d written", n, el * 1000, dropped, written)
    assert.is_true(el < 1, "logging waited for the stalled writer: " .. el .. " s")
    assert.is_true(dropped > 0 and dropped <= n - 65536, "dropped " .. dropped)
    assert.equals(d1, dropped)
    assert.equals(0, failed)
    -- the FIFO's contents reach the copy once the writer flushed them; wait for the tail
    local deadline = os.time() + 5
    local text
    repeat
      sleep(0.05)
      text = c.file("copy")
    until text:find("lines dropped", 1, true) or os.time() > deadline
    local r = scan(text)
    assert.equals(n - dropped, r.count, "written + dropped ~= logged")
    assert.equals(0, r.gaps, "the first lines are kept, the later ones dropped")
    assert.equals(1, r.first)
    assert.equals(1, r.dropped_lines)
    assert.truthy(text:find("WARN  [luanet.log] " .. dropped .. " lines dropped: the log queue was full\n", 1, true), text:sub(-300))
    assert.equals(written, r.count + 1)
  end)
end)
