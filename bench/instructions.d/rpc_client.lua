-- bench/instructions: N calls of Plus with 100 in flight, then Stop.
local luanet = require "luanet"
local addr, total, inflight = arg[1], tonumber(arg[2]), 100
luanet.run(function()
  local done, left = 0, total
  local tasks = {}
  for i = 1, inflight do
    tasks[i] = luanet.spawn(function()
      while left > 0 do
        left = left - 1
        assert(luanet.RPCCall(addr, "Plus", { a = 1, b = 2 }) == 3)
        done = done + 1
      end
    end)
  end
  while done < total do luanet.sleep(0.01) end
  luanet.RPCCall(addr, "Stop")
end)
