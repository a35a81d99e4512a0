-- The master lease, the candidate's side (docs/groups.md, "The master lease"): a task
-- per StandForMaster asks every name service this service registered with for the
-- group's lease and renews it. The lease is held while a majority of them granted it,
-- counted from when the request was sent, less a margin for clock rates. The name
-- service's side is luanet/ns_groups.lua.

local core = require "luanet.core"

return function(luanet, internal)
local now = core.now

local SAFETY = 0.9            -- of the lease time, the share the holder believes in
local TTL_MIN, TTL_MAX, TTL_DEFAULT = 0.1, 60, 3

local Lease = {}
Lease.__index = Lease
local standing = {}           -- lease -> true, while it stands

local function park(l, timeout)
   l.id, l.wait = core.prepare_wait("master lease")
   core.suspend(math.max(0, timeout), "master lease", false, true)
   l.id = nil
end

local function unpark(l)
   if l.id then core.wake(l.id, l.wait) end
end

local function set_held(l, held)
   if l.is == held then return end
   l.is = held
   core.report(("StandForMaster: %s %s the master of %s"):format(
      (internal.self()), held and "is now" or "is no longer", l.state.key), "info")
   l.changed:broadcast()
   if l.on_change then luanet.spawn(l.on_change, held) end
end

-- Calls `method` on every name service at once; returns the list of answers by address.
local function ask_all(list, timeout, method, ...)
   local args = table.pack(...)
   args[args.n + 1] = luanet.call_options { timeout = timeout }
   local answers, left, done = {}, #list, luanet.cond()
   for _, ns in ipairs(list) do
      luanet.spawn(function()
         local r, word = luanet.RPCCall(ns, method, table.unpack(args, 1, args.n + 1))
         answers[ns] = word == nil and r or false
         left = left - 1
         if left == 0 then done:broadcast() end
      end)
   end
   while left > 0 do done:wait(timeout + 1, "master lease") end
   return answers
end

local function release_all(l, list)
   local name = internal.self()
   ask_all(list, l.ttl / 3, "luanet.ns.release", l.kind, l.value, name)
end

local function candidate(l)
   -- Subscribe to the group: a push that the lease is free wakes this task at once.
   luanet.Group(l.selector):members()
   while not l.resigned do
      local list = internal.registered_with()
      local majority = #list // 2 + 1
      local sent = now()
      local answers = ask_all(list, l.ttl / 3, "luanet.ns.lease", l.kind, l.value, (internal.self()), l.ttl)
      if l.resigned then break end
      local granted = {}
      for ns, a in pairs(answers) do
         if type(a) == "table" and a.granted == true then granted[#granted + 1] = ns end
      end
      if #granted >= majority then
         l.valid_until = sent + l.ttl * SAFETY
         l.majority, l.grants = majority, {}
         for _, ns in ipairs(granted) do l.grants[ns] = internal.peer(ns) or true end
         set_held(l, true)
         park(l, math.min(l.ttl / 3, l.valid_until - now()))
      else
         if l.is and now() >= l.valid_until then set_held(l, false) end
         if not l.is and #granted > 0 then
            -- A minority blocks a rival from a majority and gives us nothing: give it back.
            release_all(l, granted)
         end
         local pause = l.ttl / 3 * (0.5 + math.random())
         if l.is then pause = math.min(pause, l.valid_until - now()) end
         park(l, pause)
      end
   end
end

-- A holder whose connection to a granting name service closes steps down at once: that
-- name service has dropped the lease (it drops a holder's lease when its connection
-- ends) and may grant it to a standby any moment, or it restarted and forgot it.
internal.lost[#internal.lost + 1] = function(peer)
   for l in pairs(standing) do
      if l.is and l.grants then
         local left = 0
         for ns, p in pairs(l.grants) do
            if p == peer then l.grants[ns] = nil else left = left + 1 end
         end
         if left < l.majority then
            l.valid_until = 0
            set_held(l, false)
            unpark(l)
         end
      end
   end
end

internal.group_listeners[#internal.group_listeners + 1] = function(st)
   if st.master ~= nil then return end
   for l in pairs(standing) do
      if l.state == st and not l.is then unpark(l) end
   end
end

--- luanet.StandForMaster(selector, [opts]) -> lease
function luanet.StandForMaster(selector, opts)
   local st, kind, value = internal.group_state("StandForMaster", selector, 2)
   if opts ~= nil and type(opts) ~= "table" then
      error("StandForMaster: bad argument #2 'opts' (table or nil expected, got " .. type(opts) .. ")", 2)
   end
   opts = opts or {}
   local ttl = opts.ttl == nil and TTL_DEFAULT or opts.ttl
   if type(ttl) ~= "number" or ttl < TTL_MIN or ttl > TTL_MAX then
      error(("StandForMaster: 'ttl' must be a number of seconds from %g to %g"):format(TTL_MIN, TTL_MAX), 2)
   end
   if opts.on_change ~= nil and type(opts.on_change) ~= "function" then
      error("StandForMaster: 'on_change' must be a function", 2)
   end
   if #internal.registered_with() == 0 then
      error("StandForMaster: call Register2Name first (the lease goes only to a registered member)", 2)
   end
   local l = setmetatable({ selector = selector, state = st, kind = kind, value = value, ttl = ttl,
                            on_change = opts.on_change, is = false, valid_until = 0,
                            changed = luanet.cond() }, Lease)
   standing[l] = true
   luanet.spawn(candidate, l)
   return l
end

--- lease:held() -> boolean
function Lease:held()
   return self.is and now() < self.valid_until
end

--- lease:wait([timeout]) -> boolean
function Lease:wait(timeout)
   if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
      error("lease:wait: bad argument #1 'timeout' (a number of seconds, 0 or more, expected)", 2)
   end
   local deadline = timeout and now() + timeout
   while not self:held() do
      if self.resigned then return false end
      local left = deadline and math.max(0, deadline - now())
      if not self.changed:wait(left, "lease:wait") then return self:held() end
   end
   return true
end

--- lease:resign()
function Lease:resign()
   if self.resigned then return end
   self.resigned = true
   standing[self] = nil
   unpark(self)
   set_held(self, false)
   self.valid_until = 0
   luanet.spawn(release_all, self, internal.registered_with())
end

end
