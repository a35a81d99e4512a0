-- The name service: which service name is where, and which functions it offers
-- (docs/names.md; its methods are in docs/PROTOCOL.md). It is an ordinary luanet service:
-- its methods are RPC functions named "luanet.ns.*", so any MessagePack-RPC client can
-- look a service up and call it.
--
-- A registration belongs to the connection it came over: it ends when that connection
-- ends, at once for a process that exited or was killed (the kernel closes its sockets),
-- within three heartbeats (3 s by default) for one that froze or was cut off.

local core = require "luanet.core"

return function(luanet, internal)

local MAX_NAME = 256              -- bytes in a service or function name
local MAX_FUNCTIONS = 1000        -- functions one registration may list
local MAX_NAMES_PER_PEER = 64     -- names one connection may hold
local MAX_NAMES = 100000          -- registrations held at once
local MAX_WATCHES_PER_PEER = 10000

local started = false
local served = { register = 0, resolve = 0, providers = 0 }   -- requests answered (stats)
local regs = {}                   -- name -> { address, functions = set, peer }
local count = 0
local held = {}                   -- peer -> { name = true }
local watchers = {}               -- name -> { peer = true }
local watching = {}               -- peer -> { count, names = { name = true } }
local groups = require("luanet.ns_groups")(luanet, internal, regs)

local function changed(name)
   local w = watchers[name]
   if not w then return end
   for peer in pairs(w) do
      if peer.alive then
         peer.conn:write_array(2, "luanet.ns.changed", luanet.array { name })
      else
         w[peer] = nil
      end
   end
end

local function watch(peer, name)
   local mine = watching[peer]
   if not mine then
      mine = { count = 0, names = {} }
      watching[peer] = mine
   end
   if mine.names[name] or mine.count >= MAX_WATCHES_PER_PEER then return end
   mine.names[name], mine.count = true, mine.count + 1
   watchers[name] = watchers[name] or {}
   watchers[name][peer] = true
end

local function drop(name)
   local r = regs[name]
   if not r then return end
   regs[name], count = nil, count - 1
   if held[r.peer] then held[r.peer][name] = nil end
   changed(name)
   groups.touch(name, r, nil)
end

-- "tcp://0.0.0.0:port" means "on whatever address this connection came from".
local function reachable(peer, address)
   local host, port = address:match("^tcp://(.+):(%d+)$")
   if host == "0.0.0.0" or host == "[::]" then
      local from = peer.conn:peer_addr()
      local ip = from and from:match("^(.+):%d+$")
      if ip then return ("tcp://%s:%s"):format(ip, port) end
   end
   return address
end

local function check_name(what, v)
   if type(v) ~= "string" or v == "" or #v > MAX_NAME then
      luanet.error("bad request", ("%s must be a string of 1 to %d bytes"):format(what, MAX_NAME))
   end
end

local function register(name, address, functions)
   local peer = internal.caller_peer()
   check_name("the name", name)
   if type(address) ~= "string" or not (address:match("^tcp://.+:%d+$") or address:match("^unix:.")) then
      luanet.error("bad request", "the address must be \"tcp://host:port\" or \"unix:/path\"")
   end
   if not luanet.is_array(functions) or #functions > MAX_FUNCTIONS then
      luanet.error("bad request", ("the functions must be an array of at most %d names"):format(MAX_FUNCTIONS))
   end
   local set = {}
   for _, f in ipairs(functions) do
      check_name("a function name", f)
      set[f] = true
   end
   -- The request may be handled after its connection ended (it came with the peer's
   -- close): held[] is cleared when a connection ends, so a name stored now would stay
   -- forever, pointing at a process that is gone (found by the connection fuzz target).
   if not peer.alive then
      luanet.error("connection lost", "the connection that asked to register has closed")
   end
   local r = regs[name]
   if r and r.peer ~= peer and r.peer.alive then
      luanet.error("name taken", ("'%s' is held by the live service at %s"):format(name, r.address))
   end
   local mine = held[peer] or {}
   if not r or r.peer ~= peer then
      if count >= MAX_NAMES then luanet.error("overloaded", "the name service holds too many names") end
      local n = 0
      for _ in pairs(mine) do n = n + 1 end
      if n >= MAX_NAMES_PER_PEER then
         luanet.error("overloaded", ("one connection may hold %d names"):format(MAX_NAMES_PER_PEER))
      end
      if r then drop(name) end
      count = count + 1
   end
   served.register = served.register + 1
   address = reachable(peer, address)
   local moved = not r or r.address ~= address or r.peer ~= peer
   local before, new = regs[name], { address = address, functions = set, peer = peer }
   regs[name] = new
   groups.touch(name, before, new)
   mine[name] = true
   held[peer] = mine
   if moved then
      core.report(("name service: %s registered at %s"):format(name, address), "info")
      changed(name)
   end
   return true
end

local function unregister(name)
   local peer = internal.caller_peer()
   check_name("the name", name)
   local r = regs[name]
   if not r then return false end
   if r.peer ~= peer then luanet.error("not holder", ("'%s' is held by another connection"):format(name)) end
   drop(name)
   return true
end

local function resolve(name)
   local peer = internal.caller_peer()
   check_name("the name", name)
   served.resolve = served.resolve + 1
   if peer.alive then watch(peer, name) end   -- (a request outliving its connection watches nothing)
   local r = regs[name]
   return r and r.address
end

local function providers(fname, exclude)
   check_name("the function name", fname)
   served.providers = served.providers + 1
   local names = {}
   for name, r in pairs(regs) do
      if r.functions[fname] and name ~= exclude and r.peer.alive then names[#names + 1] = name end
   end
   table.sort(names)
   return luanet.array(names)
end

local function list()
   local out = {}
   for name, r in pairs(regs) do
      local fs = {}
      for f in pairs(r.functions) do fs[#fs + 1] = f end
      table.sort(fs)
      out[name] = { address = r.address, functions = luanet.array(fs) }
   end
   return out
end

local function stats()
   local watched = 0
   for _ in pairs(watchers) do watched = watched + 1 end
   local watched_groups, leases = groups.stats()
   return { names = count, watched_names = watched, registers = served.register,
            resolves = served.resolve, providers = served.providers,
            groups = watched_groups, leases = leases }
end

-- Takes `peer` off every watch list; with a twin, the twin watches those names instead.
local function move_watches(peer, twin)
   local w = watching[peer]
   watching[peer] = nil
   if not w then return end
   for name in pairs(w.names) do
      local list = watchers[name]
      if list then
         list[peer] = nil
         if next(list) == nil then watchers[name] = nil end
      end
      if twin then watch(twin, name) end
   end
end

-- A duplicate connection to a service closed while its twin stays: what the service
-- registered or watched over it now belongs to the twin (nothing is dropped).
local function hand_over(peer, twin)
   local names = held[peer]
   held[peer] = nil
   if names then
      held[twin] = held[twin] or {}
      for name in pairs(names) do
         if regs[name] and regs[name].peer == peer then regs[name].peer = twin end
         held[twin][name] = true
      end
   end
   move_watches(peer, twin)
   groups.lost(peer, twin)
end

internal.lost[#internal.lost + 1] = function(peer)
   if not started then return end
   local twin = internal.successor(peer)
   if twin then return hand_over(peer, twin) end
   local names = held[peer]
   held[peer] = nil
   if names then
      for name in pairs(names) do
         core.report(("name service: %s is gone (%s)"):format(name, peer.lost_why), "info")
         drop(name)
      end
   end
   move_watches(peer)
   groups.lost(peer)
end

--- luanet.StartNameService([addr]) -> true | nil, word, detail
function luanet.StartNameService(addr)
   if started then error("StartNameService: this process runs a name service already", 2) end
   if addr ~= nil and type(addr) ~= "string" then
      error("StartNameService: bad argument #1 'addr' (string or nil expected, got " .. type(addr) .. ")", 2)
   end
   if addr then
      if internal.self() then
         error("StartNameService: this process is the service '" .. internal.self()
            .. "' already; call StartNameService() without an address to serve names there", 2)
      end
      local ok, word, detail = luanet.StartLocalService("luanet.names", addr)
      if not ok then return nil, word, detail end
      -- Nobody reads the inbox of a process that only serves names: messages sent to it
      -- are dropped (and counted) instead of filling it and holding their connections.
      local dropped = 0
      internal.notify["luanet.msg"] = function()
         dropped = dropped + 1
         if dropped == 1 or dropped % 10000 == 0 then
            core.report(("name service: %d message(s) dropped: a name service has no inbox"):format(dropped))
         end
         return true
      end
   elseif not internal.self() then
      error("StartNameService: bad argument #1 'addr' (an address is needed: this process is not a service yet)", 2)
   end
   started = true
   luanet.RegRPCFunction("luanet.ns.register", register)
   luanet.RegRPCFunction("luanet.ns.unregister", unregister)
   luanet.RegRPCFunction("luanet.ns.resolve", resolve)
   luanet.RegRPCFunction("luanet.ns.providers", providers)
   luanet.RegRPCFunction("luanet.ns.list", list)
   luanet.RegRPCFunction("luanet.ns.stats", stats)
   groups.start()
   return true
end

end
