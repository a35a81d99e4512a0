-- Calling a group (docs/groups.md): a name service and three members, mail.1 to mail.3,
-- standing for master; then each policy, a broadcast, and the master killed under calls.
-- usage: lua5.4 examples/groups_demo.lua [NAMESERVICE HOST:PORT]
local luanet = require "luanet"
local ns = arg[1] or "127.0.0.1:8019"
local here = (arg[0]:match("^(.*)/[^/]*$") or ".")
local TTL = 1

local function start(script, ...)
   local p = io.popen(("exec lua5.4 %s/%s %s >&2 & echo $!"):format(here, script, table.concat({ ... }, " ")))
   local pid = p:read("l")
   p:close()
   return pid
end

local pids = { start("nameservice.lua", ns) }
os.execute("sleep 0.3")
for i = 1, 3 do pids[#pids + 1] = start("group_member.lua", "mail." .. i, ns, TTL) end
os.execute("sleep 0.5")
local function kill_all() os.execute("kill " .. table.concat(pids, " ") .. " 2>/dev/null") end

luanet.UseNameService(ns)
local ok, err = pcall(luanet.run, function()
   local function who(g, opts)
      local r, word, detail = luanet.RPCCall(g, "Who", opts)
      return r or ("%s (%s)"):format(word, detail)
   end
   local rr = luanet.Group("mail.*", "round-robin")
   print("members:", table.concat(assert(rr:members()), " "))
   local seen = {}
   for i = 1, 6 do seen[i] = who(rr) end
   print("round-robin:", table.concat(seen, " "))

   local hash = luanet.Group("mail.*", "hash")
   for _, key in ipairs { "alice", "bob", "carol", "alice" } do
      print(("hash %-6s -> %s"):format(key, who(hash, luanet.call_options { key = key })))
   end

   print("broadcast:")
   for _, each in ipairs(luanet.RPCCall(luanet.Group("mail.*", "broadcast"), "Who")) do
      print("", each.name, each.ok, each.result or each.word)
   end

   local master = luanet.Group("mail.*", "master")
   local opts = luanet.call_options { idempotent = true, retries = 3, timeout = 2 }
   local r = assert(luanet.RPCCall(master, "Write", "x", opts))
   print("master:", r.by)
   local pid = pids[1 + tonumber(r.by:match("%d+$"))]
   local killed = luanet.now()
   os.execute("kill -9 " .. pid)
   print(("killed %s (SIGKILL); calling Write on the master meanwhile"):format(r.by))
   local failures = 0
   while true do
      local w, word = luanet.RPCCall(master, "Write", "y", opts)
      if w and w.by ~= r.by then
         print(("%s took over: the first call answered %.1f ms after the kill (%d failed call(s))")
            :format(w.by, (luanet.now() - killed) * 1000, failures))
         break
      elseif not w then
         failures = failures + 1
         if luanet.now() - killed > 3 * TTL then print("no new master: " .. tostring(word)) break end
      end
   end
   luanet.stop()
end)
kill_all()
if not ok then error(err, 0) end
