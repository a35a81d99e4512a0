-- The Plus service from the original luanet walk-through.
-- usage: lua5.4 examples/rpc_server.lua [HOST:PORT | /unix/path]   (default 127.0.0.1:8010)
local luanet = require "luanet"

local addr = arg[1] or "127.0.0.1:8010"

luanet.RegRPCFunction("Plus", function(arg)
   return arg.a + arg.b
end)

luanet.run(function()
   local ok, err, detail = luanet.StartLocalService("PlusServer", addr)
   if not ok then
      io.stderr:write(("rpc_server: cannot serve on %s: %s (%s)\n"):format(addr, err, detail))
      os.exit(1)
   end
   print("PlusServer serving on " .. luanet.service_listener:local_addr())
   io.stdout:flush()
end)
