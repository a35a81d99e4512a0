-- bench/instructions: PlusServer, stopped by a call to Stop.
local luanet = require "luanet"
luanet.RegRPCFunction("Plus", function(t) return t.a + t.b end)
luanet.RegRPCFunction("Stop", function() luanet.spawn(function() luanet.sleep(0.05) luanet.stop() end) return true end)
luanet.run(function()
  assert(luanet.StartLocalService("CgPlus", arg[1]))
  print("up") io.stdout:flush()
end)
