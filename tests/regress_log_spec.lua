-- Regression tests for the review of luanet.log (docs/log.md): one `it` per defect found,
-- each failing on the behaviour the review saw and passing on the fixed one.
--
-- Logging is process-wide state (one writer thread per process): every configure happens in
-- a child lua5.4 process, never in this one. Children write their files into a fresh
-- directory under /tmp; signals go only to a child's own pid (mostly the child signals
-- itself), or to a FIFO holder the child started, checked by its command line.
-- Set LOG_SPEC_NUMBERS=1 to see the numbers measured on stderr.

local H = require "helper"
local luanet = require "luanet" -- for now() only: nothing is logged in this process
local cjson = require "cjson"

local NUMBERS = os.getenv("LOG_SPEC_NUMBERS")
local function note(fmt, ...)
  if NUMBERS then io.stderr:write(("[regress_log_spec] " .. fmt .. "\n"):format(...)) end
end

-- Every child starts with DIR (its directory, absolute), put(file, text) (an atomic write
-- there), PID (its own process id), luanet, log, and a few helpers of its own.
local PRELUDE = H.CHILD_PUT .. [==[
local PID = io.open("/proc/self/stat"):read("l"):match("^(%d+)")
local luanet = require "luanet"
local log = luanet.log
local function exists(p) return os.rename(p, p) ~= nil end
local function size_of(p)
  local f = io.open(p, "rb")
  if not f then return -1 end
  local n = f:seek("end")
  f:close()
  return n
end
-- A process that holds DIR/fifo open for reading and never reads (the writer's writes
-- stall once the pipe is full); its pid goes to DIR/holder.pid.
local function stalled_fifo()
  assert(os.execute("mkfifo " .. DIR .. "/fifo"))
  os.execute(("timeout 20 sh -c 'echo $$ >%s/holder.pid; exec 3<%s/fifo; exec sleep 19'"
    .. " >/dev/null 2>&1 </dev/null &"):format(DIR, DIR))
  return DIR .. "/fifo"
end
-- Ends the holder (only it: the pid must still run 'sleep 19'): the writer's stalled write
-- then fails with EPIPE, and the exit does not wait 5 s for it.
local function release_fifo()
  local f = io.open(DIR .. "/holder.pid")
  local pid = f and tonumber(f:read("l"))
  if f then f:close() end
  local c = pid and io.open("/proc/" .. pid .. "/cmdline")
  if c and c:read("a"):find("^sleep\0" .. "19") then os.execute("kill " .. pid .. " 2>/dev/null") end
  if c then c:close() end
end
]==]

local child, sh_quote, sleep = require("log_child")(PRELUDE)

local function lines_of(s)
  local t = {}
  for l in s:gmatch("([^\n]*)\n") do t[#t + 1] = l end
  return t
end

local function count_of(s, plain)
  local n, at = 0, 1
  while true do
    local i, j = s:find(plain, at, true)
    if not i then return n end
    n, at = n + 1, j + 1
  end
end

local STAMP = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ "

-- "k=v k=v ..." (what the children put) as a table of strings.
local function fields(s)
  local t = {}
  for k, v in s:gmatch("(%w+)=(%S+)") do t[k] = v end
  return t
end

describe("log regressions", function()
  -- 1 ----------------------------------------------------------------------------------------
  it("1. configure with the writer stuck (a FIFO nobody reads, 150,000 lines logged) fails within ~6 s, not forever",
    function()
    local c = child([==[
      assert(log.configure{ file = stalled_fifo() })
      for i = 1, 150000 do log.info("line %d", i) end
      local s = log.stats()
      local t0 = luanet.now()
      local ok, word, detail = log.configure{ file = DIR .. "/other.log" }
      local el = luanet.now() - t0
      put("result", ("ok=%s word=%s el=%.3f queued=%d dropped=%d"):format(tostring(ok),
        tostring(word):gsub(" ", "_"), el, s.queued, s.dropped))
      put("detail", tostring(detail))
      release_fifo()
    ]==], { t = 12 })
    finally(c.cleanup)
    local r = fields(c.file("result"))
    note("1: configure returned %s, %s (%s) after %s s; queued %s, dropped %s; child took %.2f s, exit %s",
      tostring(r.ok), tostring(r.word), c.file("detail"), tostring(r.el), tostring(r.queued),
      tostring(r.dropped), c.elapsed, tostring(c.code))
    assert.truthy(r.ok, ("configure never returned (the child was killed after %.1f s, exit %s); stderr: %s")
      :format(c.elapsed, tostring(c.code), c.err))
    assert.is_true(tonumber(r.dropped) > 0, "the queue never filled: the test proves nothing")
    assert.equals("nil", r.ok)
    assert.equals("log_error", r.word)
    assert.truthy(c.file("detail"):find("stuck", 1, true), c.file("detail"))
    assert.is_true(tonumber(r.el) < 6.5, "configure took " .. r.el .. " s")
    assert.equals(0, c.code, c.err)
  end)

  -- 2 ----------------------------------------------------------------------------------------
  it("2. configure without file/dir keeps the sink and the format; format alone changes stderr's format", function()
    local c = child([==[
      assert(log.configure{ file = DIR .. "/a.log", format = "json" })
      log.info("one")
      assert(log.configure{ level = "debug" })
      log.debug("two")
      log.logger("db").info("three")
      assert(log.configure{ levels = { db = "warn" } })
      log.info("four")
      assert(log.flush())
    ]==])
    finally(c.cleanup)
    assert.equals(0, c.code, c.err)
    assert.equals("", c.err, "lines went to stderr")
    local got = {}
    for _, l in ipairs(lines_of(c.file("a.log"))) do
      local ok, rec = pcall(cjson.decode, l)
      assert.is_true(ok, "not a JSON line: " .. l)
      got[#got + 1] = rec.level .. " " .. (rec.logger or "") .. " " .. rec.msg
    end
    assert.same({ "info  one", "debug  two", "info db three", "info  four" }, got)

    -- stderr: text, then JSON once format = "json" alone is configured, and JSON it stays
    local e = child([==[
      log.info("plain")
      assert(log.flush())
      assert(log.configure{ format = "json" })
      log.info("as json")
      assert(log.configure{ level = "warn" })
      log.info("filtered")
      log.warn("still json")
      assert(log.flush())
    ]==])
    finally(e.cleanup)
    assert.equals(0, e.code, e.err)
    local lines = lines_of(e.err)
    assert.equals(3, #lines, e.err)
    assert.truthy(lines[1]:match(STAMP .. "INFO  plain$"), lines[1])
    local j2, j3 = cjson.decode(lines[2]), cjson.decode(lines[3])
    assert.same({ "info", "as json" }, { j2.level, j2.msg })
    assert.same({ "warn", "still json" }, { j3.level, j3.msg })
  end)

  -- 3 ----------------------------------------------------------------------------------------
  it("3. a log file removed from outside: later lines are counted, the file comes back, stderr is not spammed",
    function()
    local c = child([==[
      local A = DIR .. "/app.log"
      assert(log.configure{ file = A, max_bytes = 1000 })
      local n = 0
      for _ = 1, 10 do n = n + 1; log.info("a %03d padding-padding", n) end
      assert(log.flush())
      assert(os.remove(A))
      -- 105 lines of ~50 bytes in 7 batches (a flush after each)
      for _ = 1, 7 do
        for _ = 1, 15 do n = n + 1; log.info("b %03d padding-padding", n) end
        assert(log.flush())
      end
      local s = log.stats()
      put("result", ("logged=%d written=%d failed=%d dropped=%d"):format(n, s.written, s.failed, s.dropped))
    ]==])
    finally(c.cleanup)
    local r = fields(c.file("result"))
    local notes = count_of(c.err, "writing the log failed") + count_of(c.err, "works again")
    local text = c.file("app.log")
    local lines = lines_of(text)
    note("3: logged %s, written %s, failed %s, dropped %s; %d failure notes on stderr; app.log %s (%d lines)",
      tostring(r.logged), tostring(r.written), tostring(r.failed), tostring(r.dropped), notes,
      H.exists(c.path("app.log")) and "exists" or "missing", #lines)
    assert.equals(0, c.code, c.err)
    assert.equals("115", r.logged)
    assert.equals(115, tonumber(r.written) + tonumber(r.failed), "written + failed ~= logged")
    assert.is_true(H.exists(c.path("app.log")), "app.log was not created again")
    assert.truthy(lines[#lines] and lines[#lines]:match(STAMP .. "INFO  b 115 padding%-padding$"),
      "the newest line is not the last in app.log: " .. text)
    assert.is_true(notes <= 2, notes .. " failure notes on stderr: " .. c.err)
  end)

  -- 4 ----------------------------------------------------------------------------------------
  it("4. under sustained load, SIGHUP reopens the file and written grows before the load stops", function()
    local c = child([==[
      local A = DIR .. "/app.log"
      assert(log.configure{ file = A, format = "json" })
      local big = ('"\\\1'):rep(600) -- 1,800 bytes, 6,000 escaped: the writer stays behind
      local t0, n, moved, checked = luanet.now(), 0, false, false
      while luanet.now() - t0 < 2 do
        for _ = 1, 1000 do n = n + 1; log.info(big) end
        local el = luanet.now() - t0
        if not moved and el > 0.5 then
          moved = n
          assert(os.rename(A, A .. ".old"))
          os.execute("kill -HUP " .. PID)
        end
        if not checked and el > 1.5 then
          checked = true
          local s = log.stats()
          put("mid", ("exists=%s size=%d written=%d queued=%d dropped=%d moved=%d logged=%d el=%.3f")
            :format(tostring(exists(A)), size_of(A), s.written, s.queued, s.dropped, moved, n, el))
        end
      end
      put("done", tostring(n))
    ]==], { t = 15 })
    finally(c.cleanup)
    local m = fields(c.file("mid"))
    note("4: at %s s: new file %s, size %s; written %s, queued %s, dropped %s (moved after %s of %s lines)",
      tostring(m.el), tostring(m.exists), tostring(m.size), tostring(m.written), tostring(m.queued),
      tostring(m.dropped), tostring(m.moved), tostring(m.logged))
    assert.equals(0, c.code, c.err)
    assert.truthy(m.exists, "the child wrote no mid-run record; stderr: " .. c.err)
    assert.is_true(tonumber(m.queued) > 0 or tonumber(m.dropped) > 0,
      "the writer kept up (nothing queued): the load was not sustained, the test proves nothing")
    assert.equals("true", m.exists, "1 s after SIGHUP the new file did not exist")
    assert.is_true(tonumber(m.size) > 0, "1 s after SIGHUP the new file was empty")
    assert.is_true(tonumber(m.written) > 0, "stats().written was still 0 after 1.5 s of logging")
    assert.is_true(H.exists(c.path("app.log.old")))
  end)

  -- 5 ----------------------------------------------------------------------------------------
  it("5. stderr a broken pipe: the writer thread survives, a later file gets the lines", function()
    -- stderr is a FIFO read by `head -c 100`, which goes once it has 100 bytes (the child
    -- gives it 200 first); later writes to stderr fail with EPIPE.
    local c = child([==[
      io.stderr:write(("-"):rep(199) .. "\n")
      local t0 = luanet.now()
      while not exists(DIR .. "/head.done") and luanet.now() - t0 < 5 do os.execute("sleep 0.02") end
      assert(exists(DIR .. "/head.done"))
      for i = 1, 2000 do log.info("line %d", i) end
      local f1, f2 = log.flush(2)
      local s = log.stats()
      local ok, word, detail = log.configure{ file = DIR .. "/b.log" }
      put("result", ("flush=%s/%s written=%d failed=%d configure=%s/%s"):format(tostring(f1), tostring(f2),
        s.written, s.failed, tostring(ok), tostring(word):gsub(" ", "_")))
      put("detail", tostring(detail))
      log.info("after")
      assert(log.flush(2))
    ]==], {
      pre = "mkfifo errfifo; (timeout 10 head -c 100 errfifo; touch head.done) >/dev/null 2>&1 </dev/null &",
      stderr = "errfifo",
    })
    finally(c.cleanup)
    local r = fields(c.file("result"))
    note("5: flush %s; written %s, failed %s; configure %s (%s); child exit %s",
      tostring(r.flush), tostring(r.written), tostring(r.failed), tostring(r.configure), c.file("detail"),
      tostring(c.code))
    assert.truthy(r.configure, "the child wrote no result (exit " .. tostring(c.code) .. ")")
    assert.equals("true/nil", r.configure, "configure: " .. c.file("detail"))
    assert.equals("true/nil", r.flush)
    assert.equals(2000, tonumber(r.written) + tonumber(r.failed))
    assert.is_true(tonumber(r.failed) > 0, "no write failed: stderr was not broken, the test proves nothing")
    assert.truthy(c.file("b.log"):match(STAMP .. "INFO  after\n$"), "b.log: " .. c.file("b.log"))
    assert.equals(0, c.code)
  end)

  -- 7 ----------------------------------------------------------------------------------------
  it("7. SIGTERM while a task keeps the CPU: run returns nil, 'interrupted'; a second SIGTERM ends the process",
    function()
    -- (a) one TERM at 0.5 s into a 1.5 s busy task; the loop then goes idle
    local c = child([==[
      local r = table.pack(luanet.run(function()
        local t0, sent = luanet.now(), false
        while luanet.now() - t0 < 1.5 do
          if not sent and luanet.now() - t0 > 0.5 then sent = true; os.execute("kill -TERM " .. PID) end
        end
      end))
      put("result", ("%s %s %s"):format(tostring(r[1]), tostring(r[2]), tostring(r[3])))
    ]==])
    finally(c.cleanup)
    note("7a: run -> %s (exit %s, %.2f s)", c.file("result"), tostring(c.code), c.elapsed)
    assert.equals(0, c.code, c.err)
    assert.equals("nil interrupted SIGTERM", c.file("result"))

    -- (b) TERM at 0.3 s and again at 0.6 s into a task busy for 5 s: the second one kills
    local d = child([==[
      local r = table.pack(luanet.run(function()
        local t0, sent = luanet.now(), 0
        while luanet.now() - t0 < 5 do
          local el = luanet.now() - t0
          if (sent == 0 and el > 0.3) or (sent == 1 and el > 0.6) then
            sent = sent + 1
            os.execute("kill -TERM " .. PID)
          end
        end
      end))
      put("survived", ("%s %s %s"):format(tostring(r[1]), tostring(r[2]), tostring(r[3])))
    ]==])
    finally(d.cleanup)
    note("7b: two SIGTERMs: exit %s after %.2f s%s", tostring(d.code), d.elapsed,
      H.exists(d.path("survived")) and (", run -> " .. d.file("survived")) or "")
    assert.equals(128 + 15, d.code, "the second SIGTERM did not end the process by signal 15 (run -> "
      .. d.file("survived") .. ")")
    assert.is_false(H.exists(d.path("survived")))
    assert.is_true(d.elapsed < 3, ("the child took %.1f s"):format(d.elapsed))
  end)

  -- 8 ----------------------------------------------------------------------------------------
  it("8. luanet's own events follow levels: luanet = 'error' keeps task errors, not warnings", function()
    local c = child([==[
      local function events(file, level)
        assert(log.configure{ file = DIR .. "/" .. file, levels = { luanet = level } })
        -- a task blocked forever when run ends: a warning
        assert(luanet.run(function() luanet.spawn(function() luanet.cond():wait() end) end))
        -- a task error: an error
        luanet.spawn(function() error("kaboom 8") end)
        assert(luanet.run())
        assert(log.flush())
      end
      events("error.log", "error")
      events("warn.log", "warn") -- the control: the warning is made at all
    ]==])
    finally(c.cleanup)
    assert.equals(0, c.code, c.err)
    local control, text = c.file("warn.log"), c.file("error.log")
    note("8: levels.luanet = 'error': %d warnings, %d task errors; 'warn': %d warnings, %d task errors",
      count_of(text, "WARN "), count_of(text, "task error"), count_of(control, "WARN "),
      count_of(control, "task error"))
    assert.truthy(control:find("WARN  [luanet] ", 1, true) and control:find("blocked forever", 1, true),
      "no 'blocked forever' warning even at level warn: the test proves nothing: " .. control)
    assert.truthy(text:find("ERROR %[luanet%] task error: [^\n]*kaboom 8"), text)
    assert.is_nil(text:find("blocked forever", 1, true), "a warn event passed the level 'error': " .. text)
    assert.is_nil(text:find("WARN", 1, true), text)
  end)

  -- 9 ----------------------------------------------------------------------------------------
  it("9. memory is bounded by bytes: 300 messages of 1 MB to a stalled FIFO stay under ~150 MB", function()
    local c = child([==[
      assert(log.configure{ file = stalled_fifo() })
      local big = ("x"):rep(1024 * 1024)
      for _ = 1, 300 do log.info(big) end
      local st = io.open("/proc/self/status"):read("a")
      local s = log.stats()
      put("result", ("rss=%s hwm=%s queued=%d dropped=%d"):format(st:match("VmRSS:%s*(%d+)"),
        st:match("VmHWM:%s*(%d+)"), s.queued, s.dropped))
      release_fifo()
    ]==], { t = 15 })
    finally(c.cleanup)
    local r = fields(c.file("result"))
    note("9: VmRSS %s kB, VmHWM %s kB, queued %s, dropped %s; child took %.2f s",
      tostring(r.rss), tostring(r.hwm), tostring(r.queued), tostring(r.dropped), c.elapsed)
    assert.equals(0, c.code, c.err)
    assert.truthy(r.rss, "the child wrote no result: " .. c.err)
    assert.is_true(tonumber(r.rss) < 150 * 1024, "VmRSS " .. r.rss .. " kB")
    assert.is_true(tonumber(r.hwm) < 150 * 1024, "VmHWM " .. r.hwm .. " kB")
    assert.is_true(tonumber(r.dropped) > 0, "nothing dropped")
    assert.is_true(tonumber(r.queued) <= 64, "queued " .. r.queued .. " lines of 1 MB (the budget is 64 MiB)")
  end)
end)
