-- bench/instructions: 10 connections, each N echoes of 16 bytes, one in flight.
local luanet = require "luanet"
local addr, per = arg[1], tonumber(arg[2])
luanet.run(function()
  for i = 1, 10 do
    luanet.spawn(function()
      local c = assert(luanet.tcp.connect(addr))
      local msg = ("x"):rep(16)
      for _ = 1, per do c:write(msg); local got = c:read_exact(16) end
      c:close()
    end)
  end
end)
