-- 100 tasks calling PlusServer's Plus, printing calls per second.
-- usage: lua5.4 examples/rpc_client.lua [HOST:PORT | /unix/path | NAME] [tasks] [seconds]
--                                       [NAMESERVICE[,NAMESERVICE...]]
--   a NAME (such as PlusServer) is looked up in the name services given last
local luanet = require "luanet"

local target = arg[1] or "127.0.0.1:8010"
local tasks = tonumber(arg[2]) or 100
local seconds = tonumber(arg[3]) or 5
for ns in (arg[4] or ""):gmatch("[^,]+") do luanet.UseNameService(ns) end

local calls, errors, running = 0, 0, true

local function caller(i)
   local j = 0
   while running do
      j = j + 1
      local sum, err, detail = luanet.RPCCall(target, "Plus", { a = i, b = j })
      if sum == i + j then
         calls = calls + 1
      else
         errors = errors + 1
         if errors <= 5 then   -- the first few say what is wrong; the count says the rest
            io.stderr:write(("rpc_client: %s (%s)\n"):format(tostring(err), tostring(detail)))
         end
         luanet.sleep(0.1)
      end
   end
end

luanet.run(function()
   for i = 1, tasks do luanet.spawn(caller, i) end
   local last, started = 0, luanet.now()
   for second = 1, seconds do
      luanet.sleep(1)
      print(("%ds  %d calls/s  (%d tasks, %d errors)"):format(second, calls - last, tasks, errors))
      io.stdout:flush()
      last = calls
   end
   running = false
   print(("average %.0f calls/s over %d s"):format(calls / (luanet.now() - started), seconds))
   os.exit(errors == 0 and 0 or 1)
end)
