-- UDP echo: a server task answers every datagram; a client task sends a few and checks them.
-- usage: lua5.4 examples/udp_echo.lua [HOST:PORT]   (default 127.0.0.1:8010)
local luanet = require "luanet"

local addr = arg[1] or "127.0.0.1:8010"

luanet.run(function()
   local server = assert(luanet.udp.bind(addr))
   luanet.spawn(function()
      while true do
         local data, from = server:recvfrom()
         if not data then break end
         server:sendto(data, from)
      end
   end)
   local client = assert(luanet.udp.connect(server:local_addr()))
   for i = 1, 3 do
      client:send("ping " .. i)
      print("udp echo: " .. assert(client:recv(1)))
   end
   server:close()
end)
