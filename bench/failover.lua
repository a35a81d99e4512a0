-- How fast a group's master is replaced (bench/groups runs it): a name service and
-- three members of mail.* standing for master (examples/group_member.lua, lease time
-- TTL), and a caller here calling Write on the master with idempotent retries from 10
-- tasks. Each round kills the master (SIGKILL, or SIGSTOP: frozen) and times the first
-- call a new master answers; the old master is then replaced by a fresh process.
-- usage: lua5.4 bench/failover.lua [ROUNDS] [TTL] [NAMESERVICE]
local luanet = require "luanet"
local ROUNDS, TTL = tonumber(arg[1]) or 5, tonumber(arg[2]) or 1
local ns = arg[3] or "127.0.0.1:8029"
local root = (arg[0]:match("^(.*)/bench/[^/]*$") or ".")

local function start(script, ...)
   local p = io.popen(("exec lua5.4 %s/%s %s >/dev/null 2>&1 & echo $!"):format(root, script, table.concat({ ... }, " ")))
   local pid = p:read("l")
   p:close()
   return pid
end

local ns_pid = start("examples/nameservice.lua", ns)
os.execute("sleep 0.3")
local pids = {}
for i = 1, 3 do pids["mail." .. i] = start("examples/group_member.lua", "mail." .. i, ns, TTL) end
os.execute("sleep 0.5")

local function median(t)
   table.sort(t)
   return t[(#t + 1) // 2]
end

luanet.UseNameService(ns)
local ok, err = pcall(luanet.run, function()
   local master = luanet.Group("mail.*", "master")
   local opts = luanet.call_options { idempotent = true, retries = 5, timeout = 2 * TTL }
   local results = {}
   for _, signal in ipairs { "KILL", "STOP" } do
      local times, failed, slowest = {}, 0, 0
      for _ = 1, ROUNDS do
         local r = assert(luanet.RPCCall(master, "Write", 0, opts))
         local old = r.by
         local killed, took_over, running = luanet.now(), nil, 10
         os.execute(("kill -%s %s"):format(signal, pids[old]))
         local done = luanet.cond()
         for _ = 1, 10 do
            luanet.spawn(function()
               while not took_over do
                  local t0 = luanet.now()
                  local w = luanet.RPCCall(master, "Write", 1, opts)
                  slowest = math.max(slowest, luanet.now() - t0)
                  if w and w.by ~= old then
                     took_over = took_over or luanet.now()
                  elseif not w then
                     failed = failed + 1
                  end
                  if luanet.now() - killed > 5 * TTL then break end
               end
               running = running - 1
               if running == 0 then done:broadcast() end
            end)
         end
         done:wait()
         times[#times + 1] = took_over and (took_over - killed) or math.huge
         os.execute(("kill -9 %s"):format(pids[old]))
         pids[old] = start("examples/group_member.lua", old, ns, TTL)
         luanet.sleep(0.5)
      end
      results[#results + 1] = ("  master %-8s (lease %g s): a new master answered after median %.1f ms (rounds: %s); %d call(s) failed, slowest call %.0f ms")
         :format(signal == "KILL" and "SIGKILL" or "SIGSTOP", TTL, median(times) * 1000,
            table.concat((function()
               local s = {}
               for i, t in ipairs(times) do s[i] = ("%.0f"):format(t * 1000) end
               return s
            end)(), " "), failed, slowest * 1000)
   end
   for _, line in ipairs(results) do print(line) end
   luanet.stop()
end)
local all = { ns_pid }
for _, pid in pairs(pids) do all[#all + 1] = pid end
os.execute("kill -9 " .. table.concat(all, " ") .. " 2>/dev/null")
if not ok then error(err, 0) end
