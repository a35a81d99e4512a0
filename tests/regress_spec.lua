-- Regression tests, one per fixed bug: each says what went wrong and what fixed it.
local luanet = require "luanet"

describe("regressions", function()
   -- Bug: wait numbers were counted per task from zero, and task slots are reused. A task
   -- that timed out reading a socket left its waiter on the socket; a new task in the same
   -- slot reached the same wait number while sleeping, and data arriving on that socket
   -- woke the sleep early. Fix: wait numbers come from one loop-wide counter.
   it("a stale socket waiter never wakes a later task that reuses the slot", function()
      local slept
      luanet.run(function()
         local l = assert(luanet.tcp.listen("127.0.0.1:0"))
         local client = assert(luanet.tcp.connect(l:local_addr(), { timeout = 1 }))
         local server = assert(l:accept(1))
         -- Task A: one wait on `server`, which times out; A then ends, freeing its slot.
         local a = luanet.spawn(function() assert(server:read(nil, 0.01) == nil) end)
         luanet.sleep(0.05)
         assert.equals("dead", coroutine.status(a))
         -- Task B (likely in A's old slot): its first wait is a sleep.
         luanet.spawn(function()
            local t0 = luanet.now()
            luanet.sleep(0.3)
            slept = luanet.now() - t0
         end)
         luanet.sleep(0.05)
         client:write("wake the stale waiter\n")   -- makes `server` readable
         luanet.sleep(0.4)
         client:close(); server:close(); l:close()
      end)
      assert.is_number(slept)
      assert.is_true(slept >= 0.3, ("the sleep ended after %.3f s"):format(slept))
   end)
end)
