-- Reconnecting to a service that went away: backoff between connect attempts, and a
-- service restarted on the same address reached again without restarting the caller.
local luanet = require "luanet"
local H = require "helper"

local SERVICE = [[
local luanet = require "luanet"
luanet.RegRPCFunction("Plus", function(arg) return arg.a + arg.b end)
luanet.run(function()
  assert(luanet.StartLocalService("PlusServer", "127.0.0.1:%d"))
  local f = io.open("ready", "w") f:write("yes") f:close()
end)
]]

describe("reconnect", function()
   it("calls to a refused address fail at once while the next attempt is not due", function()
      H.run(function()
         local port = H.free_port()
         local target = "127.0.0.1:" .. port
         local _, word = luanet.RPCCall(target, "Plus", {})
         assert.equals("no such service", word)
         local t0 = luanet.now()
         local _, word2, detail = luanet.RPCCall(target, "Plus", {})
         assert.equals("no such service", word2)
         assert.matches("next try in", detail)
         assert.is_true(luanet.now() - t0 < 0.01, "a call inside the backoff window waited")
      end)
   end)

   it("a service restarted on the same address is reached again within the backoff cap", function()
      H.run(function()
         local port = H.free_port()
         local target = "127.0.0.1:" .. port
         local first = H.bg(SERVICE:format(port))
         assert.is_true(H.wait_for(function() return first.file("ready") == "yes" end, 5))
         assert.equals(3, luanet.RPCCall(target, "Plus", { a = 1, b = 2 }))
         first.kill("KILL")
         -- Calls fail while it is down (connection lost, then no such service)...
         local down_since = luanet.now()
         local failures = 0
         while luanet.now() - down_since < 1.5 do
            local v = luanet.RPCCall(target, "Plus", { a = 1, b = 2 }, luanet.call_options { timeout = 0.2 })
            if v == nil then failures = failures + 1 end
            luanet.sleep(0.05)
         end
         assert.is_true(failures > 5)
         -- ...and succeed again soon after it is back, from the same caller.
         local second = H.bg(SERVICE:format(port))
         assert.is_true(H.wait_for(function() return second.file("ready") == "yes" end, 5))
         local back_at = luanet.now()
         local v
         repeat
            v = luanet.RPCCall(target, "Plus", { a = 2, b = 3 }, luanet.call_options { timeout = 0.2 })
            if v == nil then luanet.sleep(0.05) end
         until v ~= nil or luanet.now() - back_at > 3
         assert.equals(5, v)
         assert.is_true(luanet.now() - back_at < 1.5, ("reached after %.2f s"):format(luanet.now() - back_at))
         second.cleanup()
         first.cleanup()
      end, 15)
   end)
end)
