-- A name service: services register here (Register2Name) and callers look them up.
-- usage: lua5.4 examples/nameservice.lua [HOST:PORT | /unix/path]   (default 127.0.0.1:8009)
local luanet = require "luanet"

local addr = arg[1] or "127.0.0.1:8009"

luanet.run(function()
   local ok, err, detail = luanet.StartNameService(addr)
   if not ok then
      io.stderr:write(("nameservice: cannot serve on %s: %s (%s)\n"):format(addr, err, detail))
      os.exit(1)
   end
   print("name service on " .. luanet.service_listener:local_addr())
   io.stdout:flush()
end)
