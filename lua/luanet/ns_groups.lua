-- The name service's side of groups (docs/groups.md): who is in a group, pushed to every
-- connection that asked, and the group's master lease. Loaded by luanet/nameservice.lua,
-- which tells it of every registration that comes, changes or goes (touch) and of every
-- connection that ends (lost).
--
-- A group is a selector over the registrations: ("prefix", "mail.") is every name
-- starting "mail.", ("provides", "Plus") every registration listing Plus.

local core = require "luanet.core"

return function(luanet, internal, regs)

local MAX_MEMBERS = 10000           -- in one view; a larger group is cut (and logged)
local MAX_WATCHES_PER_PEER = 10000  -- groups one connection may watch
local MAX_LEASES = 10000
local TTL_MIN, TTL_MAX = 0.1, 60

local groups = {}    -- "kind:value" -> { kind, value, watchers = { peer = true }, lease, version }
local watching = {}  -- peer -> { count, keys = { key = true } }
local leases = 0
local dirty, flushing = {}, false
local cut_reported = false

local function matches(g, name, r)
   if not r then return false end
   if g.kind == "prefix" then return name:sub(1, #g.value) == g.value end
   return r.functions[g.value] == true
end

local function view(g)
   local names = {}
   for name, r in pairs(regs) do
      if r.peer.alive and matches(g, name, r) then names[#names + 1] = name end
   end
   table.sort(names)
   if #names > MAX_MEMBERS and not cut_reported then
      cut_reported = true
      core.report(("name service: group %s:%s has %d members; views carry the first %d")
         :format(g.kind, g.value, #names, MAX_MEMBERS))
   end
   local members = {}
   for i = 1, math.min(#names, MAX_MEMBERS) do
      members[i] = luanet.array { names[i], regs[names[i]].address }
   end
   local l = g.lease
   return { members = luanet.array(members), master = l and not l.fenced and l.holder or nil, version = g.version }
end

local function forget_if_unused(key, g)
   if not g.lease and next(g.watchers) == nil and groups[key] == g then groups[key] = nil end
end

-- Changes are pushed once per loop turn, however many registrations a turn brought.
local function flush()
   luanet.yield()
   flushing = false
   local batch = dirty
   dirty = {}
   for key, g in pairs(batch) do
      if groups[key] == g then
         g.version = g.version + 1
         local v
         for peer in pairs(g.watchers) do
            if peer.alive then
               v = v or view(g)
               peer.conn:write_array(2, "luanet.ns.group_changed", luanet.array { g.kind, g.value, v })
            else
               g.watchers[peer] = nil
            end
         end
      end
   end
end

local function mark(key, g)
   dirty[key] = g
   if not flushing then
      flushing = true
      luanet.spawn(flush)
   end
end

local function end_lease(key, g, why)
   local l = g.lease
   core.report(("name service: %s lost the master lease of %s (%s)"):format(l.holder, key, why), "info")
   g.lease, leases = nil, leases - 1
   if l.expiry_id then core.wake(l.expiry_id, l.expiry_wait) end   -- its expiry task ends now
   mark(key, g)
end

local function release(key, g, why)
   if not g.lease then return end
   end_lease(key, g, why)
   forget_if_unused(key, g)
end

-- One task per granted lease (not per renewal) drops it when it is not renewed in time;
-- ending the lease otherwise wakes it, so no task outlives its lease.
local function expire(key, g, lease)
   while g.lease == lease do
      local left = lease.expires - core.now()
      if left <= 0 then return release(key, g, lease.fenced and "its time ran out" or "not renewed") end
      lease.expiry_id, lease.expiry_wait = core.prepare_wait("lease expiry")
      core.suspend(left, "lease expiry", false, true)
      lease.expiry_id = nil
   end
end

-- How a holder's connection ended decides what happens to its lease. Closed or reset by
-- the holder's side: the holder is dead or saw the close itself, and steps down (see
-- luanet/master.lua), so the lease is free at once. Anything else (no heartbeat, stopped
-- reading, a write that failed) may be a network cut the holder has not noticed yet: it
-- still believes until its lease time runs out, so nobody else gets the lease before then.
local function holder_saw_the_end(peer)
   local why = peer.lost_why
   return why == "closed" or why == "connection reset"
end

local function fence(key, g)
   local l = g.lease
   if l.fenced then return end
   l.fenced = true
   core.report(("name service: %s's connection ended uncleanly (%s); the master lease of %s is held back until it runs out (%.1f s)")
      :format(l.holder, tostring(l.peer.lost_why), key, l.expires - core.now()), "info")
   mark(key, g)
end

local function check_selector(kind, value)
   if kind ~= "prefix" and kind ~= "provides" then
      luanet.error("bad request", "a group's kind must be \"prefix\" or \"provides\"")
   end
   if type(value) ~= "string" or #value > 256 or (kind == "provides" and value == "") then
      luanet.error("bad request", "a group's value must be a string of at most 256 bytes")
   end
   return kind .. ":" .. value
end

local function group_of(kind, value)
   local key = check_selector(kind, value)
   local g = groups[key]
   if not g then
      g = { kind = kind, value = value, watchers = {}, version = 0 }
      groups[key] = g
   end
   return key, g
end

local function add_watch(peer, key, g)
   local mine = watching[peer]
   if not mine then
      mine = { count = 0, keys = {} }
      watching[peer] = mine
   end
   if not mine.keys[key] then
      mine.keys[key], mine.count = true, mine.count + 1
      g.watchers[peer] = true
   end
   return mine
end

local function watch(peer, key, g)
   local mine = watching[peer]
   if mine and not mine.keys[key] and mine.count >= MAX_WATCHES_PER_PEER then
      forget_if_unused(key, g)
      luanet.error("overloaded", ("one connection may watch %d groups"):format(MAX_WATCHES_PER_PEER))
   end
   add_watch(peer, key, g)
end

--- luanet.ns.group(kind, value) -> view; and the caller is told of every change.
local function group(kind, value)
   local peer = internal.caller_peer()
   local key, g = group_of(kind, value)
   -- A request still being handled when its connection ended: nobody to push to.
   if peer.alive then watch(peer, key, g) else forget_if_unused(key, g) end
   return view(g)
end

--- luanet.ns.lease(kind, value, name, ttl) -> { granted = true, ttl } | { granted = false, holder, remaining }
local function lease(kind, value, name, ttl)
   local peer = internal.caller_peer()
   local key = check_selector(kind, value)
   if type(name) ~= "string" then luanet.error("bad request", "the candidate's name must be a string") end
   if type(ttl) ~= "number" or ttl ~= ttl or ttl < TTL_MIN or ttl > TTL_MAX then
      luanet.error("bad request", ("the lease time must be %g to %g s"):format(TTL_MIN, TTL_MAX))
   end
   local r = regs[name]
   if not r or r.peer ~= peer or not peer.alive or not matches({ kind = kind, value = value }, name, r) then
      luanet.error("not member", ("'%s' is not a member of %s registered over this connection"):format(name, key))
   end
   local g
   key, g = group_of(kind, value)
   local now = core.now()
   local held = g.lease
   if held and held.expires <= now then
      end_lease(key, g, "expired")
      held = nil
   elseif held and not held.peer.alive and not held.fenced then
      if holder_saw_the_end(held.peer) then
         end_lease(key, g, "gone")
         held = nil
      else
         fence(key, g)
      end
   end
   if held and held.fenced then
      return { granted = false, remaining = held.expires - now }
   elseif held and held.holder == name and held.peer == peer then
      held.expires = now + ttl
      return { granted = true, ttl = ttl }
   elseif held then
      return { granted = false, holder = held.holder, remaining = held.expires - now }
   end
   if leases >= MAX_LEASES then
      forget_if_unused(key, g)
      luanet.error("overloaded", ("the name service holds %d leases"):format(MAX_LEASES))
   end
   local l = { holder = name, peer = peer, expires = now + ttl }
   g.lease, leases = l, leases + 1
   core.report(("name service: %s holds the master lease of %s"):format(name, key), "info")
   mark(key, g)
   luanet.spawn(expire, key, g, l)
   return { granted = true, ttl = ttl }
end

--- luanet.ns.release(kind, value, name) -> true | false
local function release_request(kind, value, name)
   local peer = internal.caller_peer()
   local key = check_selector(kind, value)
   local g = groups[key]
   if not g or not g.lease or g.lease.holder ~= name or g.lease.peer ~= peer then return false end
   release(key, g, "given back")
   return true
end

local M = {}

-- A registration came (after), changed (before and after) or went (before).
function M.touch(name, before, after)
   for key, g in pairs(groups) do
      local was, is = matches(g, name, before), matches(g, name, after)
      if was ~= is or (is and before.address ~= after.address) then mark(key, g) end
      local l = g.lease
      if l and not l.fenced and l.holder == name and (not is or after.peer ~= l.peer) then
         if after == nil and not l.peer.alive and not holder_saw_the_end(l.peer) then
            fence(key, g)
         else
            release(key, g, after and "no longer a member" or "gone")
         end
      end
   end
end

-- A connection ended; with a twin (a duplicate connection to the same service that
-- stays), what it watched and held now belongs to the twin.
function M.lost(peer, twin)
   for _, g in pairs(groups) do
      if g.lease and g.lease.peer == peer and twin then g.lease.peer = twin end
   end
   local mine = watching[peer]
   watching[peer] = nil
   if not mine then return end
   for key in pairs(mine.keys) do
      local g = groups[key]
      if g then
         g.watchers[peer] = nil
         if twin then add_watch(twin, key, g) else forget_if_unused(key, g) end
      end
   end
end

function M.stats()
   local n = 0
   for _ in pairs(groups) do n = n + 1 end
   return n, leases
end

function M.start()
   luanet.RegRPCFunction("luanet.ns.group", group)
   luanet.RegRPCFunction("luanet.ns.lease", lease)
   luanet.RegRPCFunction("luanet.ns.release", release_request)
end

return M

end
