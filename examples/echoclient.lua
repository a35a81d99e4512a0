-- Echo load client (the original luanet benchmark): N connections, a payload under 20
-- bytes, one message in flight on each; prints echoes per second.
-- usage: lua5.4 examples/echoclient.lua [HOST:PORT | /unix/path] [connections] [seconds]
local luanet = require "luanet"

local addr = arg[1] or "127.0.0.1:8010"
local connections = tonumber(arg[2]) or 10
local seconds = tonumber(arg[3]) or 5
local payload = "hello luanet 16b"                 -- 16 bytes

local echoes, errors, running = 0, 0, true

local function client()
   local conn, err = luanet.connect(addr, { timeout = 5 })
   if not conn then
      errors = errors + 1
      io.stderr:write("echoclient: connect failed: " .. tostring(err) .. "\n")
      return
   end
   while running do
      conn:write(payload)
      local got = conn:read_exact(#payload, 5)
      if got ~= payload then errors = errors + 1 break end
      echoes = echoes + 1
   end
   conn:close()
end

luanet.run(function()
   for _ = 1, connections do luanet.spawn(client) end
   local last, started = 0, luanet.now()
   for second = 1, seconds do
      luanet.sleep(1)
      print(("%ds  %d echoes/s  (%d connections, %d errors)"):format(second, echoes - last, connections, errors))
      io.stdout:flush()
      last = echoes
   end
   running = false
   print(("average %.0f echoes/s over %d s"):format(echoes / (luanet.now() - started), seconds))
end)
os.exit(errors == 0 and 0 or 1)
