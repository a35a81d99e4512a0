-- Calls Plus through a group (or by name, for comparison) from many tasks; prints calls/s.
-- usage: lua5.4 bench/group_client.lua NAMESERVICE TARGET TASKS SECONDS
--   TARGET: name:NAME[,NAME...]        RPCCall by name (several: taken in turn, one call
--                                      after another, whichever task makes it: the
--                                      group-less way to spread calls)
--           group:POLICY:SELECTOR      RPCCall to luanet.Group(SELECTOR, POLICY); SELECTOR is
--                                      "provides=FNAME" or a "prefix*"; "hash" uses the
--                                      call's number as its key
-- With broadcast, one "call" is a broadcast; it also prints answers/s and the median
-- latency of a broadcast.
local luanet = require "luanet"

local ns, target, tasks, seconds = arg[1], arg[2], tonumber(arg[3]) or 100, tonumber(arg[4]) or 3
luanet.UseNameService(ns)

local how, rest = target:match("^(%a+):(.+)$")
local callee, policy, names
if how == "name" then
   names = {}
   for n in rest:gmatch("[^,]+") do names[#names + 1] = n end
   callee = names[1]
else
   local sel
   policy, sel = rest:match("^([%a-]+):(.+)$")
   local fname = sel:match("^provides=(.+)$")
   callee = luanet.Group(fname and { provides = fname } or sel, policy)
end

local calls, answers, errors, running = 0, 0, 0, true
local turn = 0
local latencies = {}

local function caller(i)
   local j = 0
   local opts = luanet.call_options { key = 0 }   -- one per task; the key changes per call
   while running do
      j = j + 1
      local r, err, detail
      if policy == "hash" then
         opts.key = j
         r, err, detail = luanet.RPCCall(callee, "Plus", { a = i, b = j }, opts)
      elseif policy == "broadcast" then
         local t0 = luanet.now()
         r, err, detail = luanet.RPCCall(callee, "Plus", { a = i, b = j })
         if r then
            latencies[#latencies + 1] = luanet.now() - t0
            for _, each in ipairs(r) do
               if each.ok and each.result == i + j then answers = answers + 1 end
            end
            r = i + j
         end
      elseif names and names[2] then
         turn = turn % #names + 1
         r, err, detail = luanet.RPCCall(names[turn], "Plus", { a = i, b = j })
      else
         r, err, detail = luanet.RPCCall(callee, "Plus", { a = i, b = j })
      end
      if r == i + j then
         calls = calls + 1
      else
         errors = errors + 1
         if errors <= 5 then io.stderr:write(("group_client: %s (%s)\n"):format(tostring(err), tostring(detail))) end
         luanet.sleep(0.1)
      end
   end
end

luanet.run(function()
   for i = 1, tasks do luanet.spawn(caller, i) end
   local started = luanet.now()
   luanet.sleep(seconds)
   running = false
   local elapsed = luanet.now() - started
   print(("average %.0f calls/s over %d s (%d errors)"):format(calls / elapsed, seconds, errors))
   if policy == "broadcast" then
      table.sort(latencies)
      print(("broadcast: %.0f answers/s, median %.3f ms"):format(answers / elapsed,
         (latencies[(#latencies + 1) // 2] or 0) * 1000))
   end
   os.exit(errors == 0 and 0 or 1)
end)
