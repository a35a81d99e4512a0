-- For bench/restart: calls PlusServer by name in a loop and prints "up" or "down WORD" each
-- time the outcome changes, so the driver can timestamp the moment calls work again.
-- usage: lua5.4 bench/restart_caller.lua NAMESERVICE
local luanet = require "luanet"
luanet.UseNameService(arg[1])
luanet.run(function()
   local state, opts = nil, luanet.call_options { timeout = 1 }
   while true do
      local r, word = luanet.RPCCall("PlusServer", "Plus", { a = 1, b = 2 }, opts)
      local now = r == 3 and "up" or "down " .. tostring(word)
      if now:sub(1, 2) ~= (state or ""):sub(1, 2) then
         print(now)
         io.stdout:flush()
         state = now
      end
      if r ~= 3 then luanet.sleep(0.001) end
   end
end)
