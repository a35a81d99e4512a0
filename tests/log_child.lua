-- The child-process harness the logging specs share (log_spec.lua, regress_log_spec.lua):
-- logging is process-wide, so each test configures it in a child lua5.4 of its own.
-- require("log_child")(prelude) -> child(src, opts): see below.
local H = require "helper"
local luanet = require "luanet" -- now() only: nothing is logged in this process

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function sleep(s) os.execute("sleep " .. s) end

return function(PRELUDE)

-- A child lua5.4 running `src` (PRELUDE first) in a fresh directory, by absolute path (so
-- its DIR is known and a pid can be checked as ours). Synchronous unless opts.bg; killed
-- after opts.t seconds either way. opts.pre: shell commands run first, in the directory
-- (ending in ';' or '&'); opts.stderr: where its stderr goes (default the file err).
-- c.elapsed: the seconds a synchronous child took. The directory stays until c.cleanup()
-- (use finally).
local function child(src, opts)
  opts = opts or {}
  local c = { dir = H.tmpdir() }
  local main = c.dir .. "/main.lua"
  local f = assert(io.open(main, "wb"))
  f:write(PRELUDE, src)
  f:close()
  local cmd = ("cd %s && %s timeout -s KILL %d lua5.4 %s >out 2>%s </dev/null")
    :format(sh_quote(c.dir), opts.pre or "", opts.t or 10, sh_quote(main), opts.stderr or "err")
  function c.file(name) return H.readfile(c.dir .. "/" .. name) end
  function c.path(name) return c.dir .. "/" .. name end
  -- Ends the FIFO holder a child started, if it still runs (the child is gone by then).
  function c.release()
    local pid = tonumber(c.file("holder.pid"))
    if pid and H.readfile("/proc/" .. pid .. "/cmdline"):find("^sleep\0" .. "19") then
      os.execute("kill " .. pid .. " 2>/dev/null")
    end
  end
  function c.cleanup() if c.pid then c.kill("KILL") end c.release() H.rmdir(c.dir) end
  -- Only signals our own child: the pid must still run our main.lua.
  function c.kill(sig)
    if c.pid and H.readfile("/proc/" .. c.pid .. "/cmdline"):find(main, 1, true) then
      os.execute(("kill -%s %d 2>/dev/null"):format(sig, c.pid))
    end
  end
  -- Polls (every 20 ms) until file `name` exists, or t seconds pass.
  function c.wait_file(name, t)
    local deadline = os.time() + (t or 5) + 1
    while not H.exists(c.dir .. "/" .. name) do
      if os.time() > deadline then return false end
      sleep(0.02)
    end
    return true
  end
  -- Exit code of a background child (waits up to t s).
  function c.wait_exit(t)
    if not c.wait_file("code", t) then return nil end
    c.code = tonumber(c.file("code"))
    c.out, c.err = c.file("out"), c.file("err")
    return c.code
  end
  if opts.bg then
    assert(os.execute(("(%s; echo $? >%s/code.tmp; mv %s/code.tmp %s/code) >/dev/null 2>&1 </dev/null &")
      :format(cmd, sh_quote(c.dir), sh_quote(c.dir), sh_quote(c.dir))))
  else
    local t0 = luanet.now()
    local ok, _, code = os.execute(cmd)
    c.elapsed = luanet.now() - t0
    c.ok, c.code = ok == true, code
    c.out, c.err = c.file("out"), c.file("err")
  end
  return c
end

return child, sh_quote, sleep

end
