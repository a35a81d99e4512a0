-- Unix-domain echo over a socket file (or "@name" for an abstract socket).
-- usage: lua5.4 examples/unix_echo.lua [PATH]   (default /tmp/luanet-echo.sock)
local luanet = require "luanet"

local path = arg[1] or "/tmp/luanet-echo.sock"

luanet.run(function()
   local listener = assert(luanet.unix.listen(path))
   luanet.spawn(function()
      local conn = assert(listener:accept())
      while true do
         local line = conn:read_line()
         if not line then break end
         conn:write(line .. "\n")
      end
   end)
   local conn = assert(luanet.unix.connect(path))
   for _, word in ipairs { "alpha", "beta", "gamma" } do
      conn:write(word .. "\n")
      print("unix echo: " .. assert(conn:read_line(1)))
   end
   conn:close()
   listener:close()          -- removes the socket file
end)
