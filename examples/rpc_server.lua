-- The Plus service from the original luanet walk-through.
-- usage: lua5.4 examples/rpc_server.lua [HOST:PORT | /unix/path] [NAMESERVICE[,NAMESERVICE...]] [NAME]
--   (default 127.0.0.1:8010; with name services, it registers there as NAME, by default
--   PlusServer)
local luanet = require "luanet"

local addr = arg[1] or "127.0.0.1:8010"
local name_services = {}
for ns in (arg[2] or ""):gmatch("[^,]+") do name_services[#name_services + 1] = ns end
local name = arg[3] or "PlusServer"

luanet.RegRPCFunction("Plus", function(arg)
   return arg.a + arg.b
end)

luanet.run(function()
   local ok, err, detail = luanet.StartLocalService(name, addr)
   if not ok then
      io.stderr:write(("rpc_server: cannot serve on %s: %s (%s)\n"):format(addr, err, detail))
      os.exit(1)
   end
   print(name .. " serving on " .. luanet.service_listener:local_addr())
   if #name_services > 0 then
      ok, err, detail = luanet.Register2Name(name_services)
      if ok then
         print(name .. " registered with " .. table.concat(name_services, ", "))
      elseif err == "name taken" then
         io.stderr:write(("rpc_server: %s (%s)\n"):format(err, detail))
         os.exit(1)
      else
         print(("%s not registered yet (%s); retrying in the background"):format(name, detail))
      end
   end
   io.stdout:flush()
end)
