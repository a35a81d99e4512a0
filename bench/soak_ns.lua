-- The name service for bench/soak: examples/nameservice.lua plus a progress line every
-- second (its Lua heap and connections), so that the driver can tell it is alive and
-- whether its Lua heap or only its RSS grows.
-- usage: lua5.4 bench/soak_ns.lua HOST:PORT
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
package.path = dir .. "/?.lua;" .. package.path
local lib = require "soak_lib"
local luanet = require "luanet"
io.stdout:setvbuf("line")

luanet.run(function()
   local ok, err, detail = luanet.StartNameService(arg[1])
   if not ok then
      io.stderr:write(("soak_ns: cannot serve on %s: %s (%s)\n"):format(arg[1], err, detail))
      os.exit(1)
   end
   lib.emit("R", { name = "luanet.names", addr = luanet.service_listener:local_addr() })
   local t0 = luanet.now()
   while true do
      luanet.sleep(1)
      local s = luanet.service_stats()
      lib.emit("P", { t = luanet.now() - t0, lua_kb = math.floor(collectgarbage("count")),
         conns = s.connections, handlers = s.handlers })
   end
end)
lib.emit("F", { lua_kb = math.floor(collectgarbage("count")) })
