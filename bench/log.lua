-- Logging benchmark (make bench runs it last): the cost of a log call on the calling
-- thread with the level disabled and enabled, and lines per second written to a file,
-- next to io.write to a fully buffered file in the same run. Medians of RUNS runs.
-- usage: lua5.4 bench/log.lua [runs] [dir]
local luanet = require "luanet"

local RUNS = tonumber(arg[1]) or 5
local dir = arg[2] or os.getenv("TMPDIR") or "/tmp"
local path = ("%s/luanet-bench-%d.log"):format(dir, math.random(1e9))
local io_path = path .. ".io"
local now = luanet.now

local function median(t)
   table.sort(t)
   return t[(#t + 1) // 2]
end

-- Waits until the writer has room, so that the calls measured are never dropped ones.
local function room()
   while luanet.log.stats().queued > 32768 do end
end

local function disabled_ns()
   local debug, n = luanet.log.debug, 5000000
   local t0 = now()
   for i = 1, n do debug("request %d from %s", i, "10.0.0.1") end
   return (now() - t0) / n * 1e9
end

-- Time on the calling thread only: bursts that fit the queue, the writer's catching up
-- between them not counted.
local function enabled_ns()
   local info, total, n = luanet.log.info, 0, 0
   for _ = 1, 20 do
      room()
      assert(luanet.log.flush())
      local t0 = now()
      for i = 1, 30000 do info("request %d from %s", i, "10.0.0.1") end
      total, n = total + (now() - t0), n + 30000
   end
   return total / n * 1e9
end

-- Lines per second through to the file: from the first call until flush returns, with the
-- caller held back only when the queue is half full (nothing is dropped). With `plain`,
-- messages need no formatting, so the caller outruns the writer and the figure is the
-- writer's; formatted, it is the caller's string.format that sets the pace.
local function sustained(plain)
   local info, lines = luanet.log.info, 2000000
   assert(luanet.log.flush())
   local before = luanet.log.stats()
   local t0 = now()
   for i = 1, lines, 1000 do
      room()
      if plain then
         for _ = i, i + 999 do info("request served for 10.0.0.1") end
      else
         for j = i, i + 999 do info("request %d from %s", j, "10.0.0.1") end
      end
   end
   assert(luanet.log.flush(60))
   local elapsed = now() - t0
   local after = luanet.log.stats()
   assert(after.dropped == before.dropped, "lines were dropped")
   assert(after.written - before.written == lines, "not every line was written")
   return lines / elapsed
end

-- The baseline: the same lines with a timestamp, io.write to a file with a 256 KiB buffer.
local function io_write()
   local f = assert(io.open(io_path, "w"))
   f:setvbuf("full", 256 * 1024)
   local lines, format = 2000000, string.format
   local t0 = now()
   for i = 1, lines do
      f:write(format("%s INFO  request %d from %s\n", os.date("!%Y-%m-%dT%H:%M:%S"), i, "10.0.0.1"))
   end
   f:close()
   local elapsed = now() - t0
   os.remove(io_path)
   return lines / elapsed, elapsed / lines * 1e9
end

assert(luanet.log.configure { file = path, level = "info" })
local d, e, s, p, io_rate, io_ns = {}, {}, {}, {}, {}, {}
for _ = 1, RUNS do
   d[#d + 1] = disabled_ns()
   e[#e + 1] = enabled_ns()
   s[#s + 1] = sustained(false)
   p[#p + 1] = sustained(true)
   local rate, ns = io_write()
   io_rate[#io_rate + 1], io_ns[#io_ns + 1] = rate, ns
end
os.remove(path)
for n = 1, 100 do os.remove(path .. "." .. n) end

print(("== logging, median of %d runs (the writer thread has the other core)"):format(RUNS))
print(("  disabled level, per call on the caller          %8.0f ns   (goal < 100)"):format(median(d)))
print(("  enabled, per call on the caller                 %8.0f ns   (goal < 1000)"):format(median(e)))
print(("  io.write with string.format + os.date, per line %8.0f ns"):format(median(io_ns)))
print(("  lines/s to the file, formatted messages         %8.0f"):format(median(s)))
print(("  lines/s to the file, plain messages (writer)     %8.0f      (goal >= 1,000,000)"):format(median(p)))
print(("  io.write lines/s to a buffered file              %8.0f"):format(median(io_rate)))
