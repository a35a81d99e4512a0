-- A member of a group, for examples/groups_demo.lua and bench/groups.
-- usage: lua5.4 examples/group_member.lua NAME NAMESERVICE [TTL]
--   registers as NAME (such as mail.1); with TTL, stands for master of its group
--   (mail.*) with that lease time and prints "NAME is master" when it becomes master.
-- Offers Who() -> its name, Plus(t) -> t.a + t.b, and Write(v), which only the master
-- takes: a standby raises luanet.error("not master"), which callers' retries follow.
local luanet = require "luanet"

local name, ns, ttl = arg[1], arg[2], tonumber(arg[3])
local group = name:match("^(.*%.)") .. "*"
local lease

luanet.RegRPCFunction("Who", function() return name end)
luanet.RegRPCFunction("Plus", function(t) return t.a + t.b end)
luanet.RegRPCFunction("Write", function(v)
   if not (lease and lease:held()) then luanet.error("not master", name .. " is not the master") end
   return { by = name, value = v }
end)

luanet.run(function()
   assert(luanet.StartLocalService(name, "127.0.0.1:0"))
   assert(luanet.Register2Name(ns))
   if ttl then
      lease = luanet.StandForMaster(group, {
         ttl = ttl,
         on_change = function(is_master)
            print(("%s %s"):format(name, is_master and "is master" or "is no longer master"))
            io.stdout:flush()
         end,
      })
   end
   print(name .. " ready")
   io.stdout:flush()
end)
