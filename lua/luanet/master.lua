-- The master lease, the candidate's side (docs/groups.md, "The master lease"): a task
-- per StandForMaster asks every name service this service registered with for the
-- group's lease and renews it. The lease is held while a majority of them granted it,
-- counted from when the request was sent, less a margin for clock rates, and only while
-- the connections those grants came over stay open. The name service's side is
-- luanet/ns_groups.lua.

local core = require "luanet.core"

return function(luanet, internal)
local now = core.now

local SAFETY = 0.9            -- of the lease time, the share the holder believes in
local TTL_MIN, TTL_MAX, TTL_DEFAULT = 0.1, 60, 3

local Lease = {}
Lease.__index = Lease
local standing = {}           -- lease -> true, while it stands
local standing_for = {}       -- group key -> the lease standing for it (one per process)

-- The candidate's background waits: `wait_id`/`wait_no`, not `wait`, which is a method.
local function park(l, timeout)
   l.wait_id, l.wait_no = core.prepare_wait("master lease")
   core.suspend(math.max(0, timeout), "master lease", false, true)
   l.wait_id = nil
end

local function unpark(l)
   if l.wait_id then core.wake(l.wait_id, l.wait_no) end
end

local function set_held(l, held)
   if l.is == held then return end
   l.is = held
   if not held then l.valid_until, l.grants = 0, nil end
   core.report(("StandForMaster: %s %s the master of %s"):format(
      (internal.self()), held and "is now" or "is no longer", l.state.key), "info")
   l.changed:broadcast()
   if l.on_change then luanet.spawn(l.on_change, held) end
end

-- Calls `method` on every name service at once. Returns, by address, each answer (false
-- for none) and the connection it came over.
local function ask_all(list, timeout, method, ...)
   local args = table.pack(...)
   args[args.n + 1] = luanet.call_options { timeout = timeout }
   local answers, over, left, done = {}, {}, #list, luanet.cond()
   for _, ns in ipairs(list) do
      luanet.spawn(function()
         local ok, r, word = pcall(luanet.RPCCall, ns, method, table.unpack(args, 1, args.n + 1))
         answers[ns] = ok and word == nil and r or false
         over[ns] = internal.peer(ns)
         left = left - 1
         if left == 0 then done:broadcast() end
      end)
   end
   local deadline = now() + timeout + 1
   while left > 0 and done:wait(math.max(0, deadline - now()), "master lease") do end
   return answers, over
end

local function release_all(l, list)
   ask_all(list, l.ttl / 3, "luanet.ns.release", l.kind, l.value, (internal.self()))
end

local function candidate(l)
   while not l.resigned do
      -- Subscribed to the group (again, after its name service went away): a push that
      -- the lease is free wakes this task at once.
      if not l.state.known or l.state.stale then luanet.Group(l.selector):members() end
      local list = internal.registered_with()
      local majority = #list // 2 + 1
      local sent = now()
      local answers, over = ask_all(list, l.ttl / 3, "luanet.ns.lease", l.kind, l.value, (internal.self()), l.ttl)
      if l.resigned then break end
      -- A grant counts only if the connection it came over is still the open one: a name
      -- service that closed it since may have restarted and forgotten it.
      local grants, count = {}, 0
      for ns, a in pairs(answers) do
         local peer = over[ns]
         if type(a) == "table" and a.granted == true and peer and peer.alive and internal.peer(ns) == peer then
            grants[ns], count = peer, count + 1
         end
      end
      if count >= majority then
         l.valid_until, l.majority, l.grants = sent + l.ttl * SAFETY, majority, grants
         set_held(l, true)
         park(l, math.min(l.ttl / 3, l.valid_until - now()))
      else
         if l.is and now() >= l.valid_until then set_held(l, false) end
         if not l.is and count > 0 then
            -- A minority blocks a rival from a majority and gives us nothing: give it back.
            local mine = {}
            for ns in pairs(grants) do mine[#mine + 1] = ns end
            release_all(l, mine)
         end
         local pause = l.ttl / 3 * (0.5 + math.random())
         if l.is then pause = math.min(pause, l.valid_until - now()) end
         park(l, pause)
      end
   end
end

-- A holder whose connection to a granting name service closes steps down at once if
-- the grants left are no majority: that name service drops a lease whose holder's
-- connection closed, and may grant it to a standby any moment, or it restarted and
-- forgot it.
internal.lost[#internal.lost + 1] = function(peer)
   for l in pairs(standing) do
      if l.is and l.grants then
         local left = 0
         for ns, p in pairs(l.grants) do
            if p == peer then l.grants[ns] = nil else left = left + 1 end
         end
         if left < l.majority then
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
   if type(ttl) ~= "number" or ttl ~= ttl or ttl < TTL_MIN or ttl > TTL_MAX then
      error(("StandForMaster: 'ttl' must be a number of seconds from %g to %g"):format(TTL_MIN, TTL_MAX), 2)
   end
   if opts.on_change ~= nil and type(opts.on_change) ~= "function" then
      error("StandForMaster: 'on_change' must be a function", 2)
   end
   if #internal.registered_with() == 0 then
      error("StandForMaster: call Register2Name first (the lease goes only to a registered member)", 2)
   end
   -- The name service knows this process by its one registration: two candidates here
   -- would both take its grants for their own.
   if standing_for[st.key] then
      error("StandForMaster: this service already stands for master of " .. st.key
         .. " (resign that lease first)", 2)
   end
   local l = setmetatable({ selector = selector, state = st, kind = kind, value = value, ttl = ttl,
                            on_change = opts.on_change, is = false, valid_until = 0,
                            changed = luanet.cond() }, Lease)
   standing[l], standing_for[st.key] = true, l
   luanet.spawn(candidate, l)
   return l
end

--- lease:held() -> boolean
function Lease:held()
   return self.is and now() < self.valid_until
end

--- lease:wait([timeout]) -> boolean
function Lease:wait(timeout)
   if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
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
   if standing_for[self.state.key] == self then standing_for[self.state.key] = nil end
   unpark(self)
   set_held(self, false)
   self.changed:broadcast()      -- wakes a lease:wait() even when the lease was never held
   luanet.spawn(release_all, self, internal.registered_with())
end

end
