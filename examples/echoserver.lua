-- TCP (or Unix-socket) echo server: one task per connection.
-- usage: lua5.4 examples/echoserver.lua [HOST:PORT | /unix/path]   (default 127.0.0.1:8010)
local luanet = require "luanet"

local addr = arg[1] or "127.0.0.1:8010"

local function serve(conn)
   while true do
      local data = conn:read()
      if not data then break end           -- "closed" or a reset: the client is gone
      if not conn:write(data) then break end
   end
   conn:close()
end

luanet.run(function()
   local listener, err, detail = luanet.listen(addr)
   if not listener then
      io.stderr:write(("echoserver: cannot listen on %s: %s (%s)\n"):format(addr, err, detail))
      os.exit(1)
   end
   print("echoserver listening on " .. listener:local_addr())
   io.stdout:flush()
   while true do
      local conn, aerr = listener:accept()
      if conn then
         luanet.spawn(serve, conn)
      else
         io.stderr:write("echoserver: accept failed: " .. tostring(aerr) .. "\n")
         luanet.sleep(0.1)                  -- e.g. out of descriptors: back off, keep serving
      end
   end
end)
