-- Calls to a group of services, the caller's side (docs/groups.md): luanet.Group, the
-- policies that pick a member, broadcast, retries. The membership comes from a name
-- service once (luanet.ns.group) and then by push (luanet.ns.group_changed); the name
-- service's side is luanet/ns_groups.lua, the master lease's candidate side
-- luanet/master.lua.

local core = require "luanet.core"

return function(luanet, internal)
local config = internal.config
local Options = internal.Options
local hash64, now, random = core.hash64, core.now, math.random
local RPCCall, peers = luanet.RPCCall, internal.peers
local TOP_BIT = math.mininteger

local PASS_OVER = 1          -- seconds a member whose call failed is passed over

local Group = {}
Group.__index = Group

local POLICIES = { random = true, ["round-robin"] = true, least = true, hash = true,
                   broadcast = true, master = true }

local states = {}            -- "kind:value" -> the membership every Group of that selector shares
local down = {}              -- member name -> time until which it is passed over
internal.group_listeners = {}  -- functions called with a state after each change

local function fail(word, detail) return nil, word, detail end

local function selector_of(fname, selector, level)
   if type(selector) == "string" and selector:sub(-1) == "*" and #selector <= 257 then
      return "prefix", selector:sub(1, -2)
   elseif type(selector) == "table" and getmetatable(selector) == nil then
      local f = selector.provides
      if type(f) == "string" and f ~= "" and #f <= 256 and next(selector, next(selector)) == nil then
         return "provides", f
      end
   end
   error(fname .. ": bad argument #1 'selector' (\"prefix*\" or { provides = fname } expected, got "
      .. (type(selector) == "string" and ("%q"):format(selector) or type(selector)) .. ")", level)
end

local function state_of(kind, value)
   local key = kind .. ":" .. value
   local st = states[key]
   if not st then
      st = { kind = kind, value = value, key = key, names = {}, seeds = {}, followers = {},
             version = -1, known = false, changed = luanet.cond() }
      states[key] = st
   end
   return st
end
-- For StandForMaster: the state of `selector`, or an error at the level given.
function internal.group_state(fname, selector, level)
   local kind, value = selector_of(fname, selector, level + 2)
   return state_of(kind, value), kind, value
end

---------------------------------------------------------------------------------------
-- Membership
---------------------------------------------------------------------------------------

-- Takes a view a name service sent (from the network: checked before it is believed).
local function apply(st, view, source)
   if type(view) ~= "table" or not luanet.is_array(view.members) or math.type(view.version) ~= "integer"
      or (view.master ~= nil and type(view.master) ~= "string") then
      core.report(("group %s: a name service sent a malformed membership; ignored"):format(st.key))
      return
   end
   if source == st.source and view.version <= st.version then return end   -- older than ours
   -- The whole view is checked before anything of it is believed.
   for _, m in ipairs(view.members) do
      local name, address = type(m) == "table" and m[1], type(m) == "table" and m[2]
      if type(name) ~= "string" or name == "" or type(address) ~= "string" or not internal.address_of(address) then
         core.report(("group %s: a name service sent a malformed member; the view is ignored"):format(st.key))
         return
      end
   end
   local names, seeds = {}, {}
   for i, m in ipairs(view.members) do
      local name = m[1]
      names[i], seeds[name] = name, hash64(name)
      internal.learn(name, m[2])
      if not st.seeds[name] then down[name] = nil end   -- listed again: a fresh start
   end
   for name in pairs(st.seeds) do
      if not seeds[name] then down[name] = nil end    -- gone: nothing to remember about it
   end
   local moved = st.master ~= view.master
   st.names, st.seeds, st.master = names, seeds, view.master
   st.version, st.source, st.known, st.stale = view.version, source, true, false
   st.changed:broadcast()
   if moved and view.master then
      for wake in pairs(st.followers) do wake:broadcast() end
   end
   for _, f in ipairs(internal.group_listeners) do f(st) end
end

local function fetch(st)
   local ok, view, detail = internal.ask_name_service(now() + config.call_timeout,
      "luanet.ns.group", st.kind, st.value)
   st.fetching = false
   if ok then
      apply(st, view, internal.peer(detail))
   else
      st.word, st.why = view, tostring(detail)
   end
   st.fetched = (st.fetched or 0) + 1
   st.changed:broadcast()
end

-- Makes sure the membership is known; a stale one (its name service went away) is used
-- while a fresh one is fetched.
local function ensure(st, deadline)
   if st.known and not st.stale then return true end
   if not st.fetching then
      st.fetching = true
      luanet.spawn(fetch, st)
   end
   if st.known then return true end
   local attempt = st.fetched
   while not st.known and st.fetched == attempt do
      if not st.changed:wait(math.max(0, deadline - now()), "group membership") then
         return fail("timeout", "fetching the members of " .. st.key)
      end
   end
   if st.known then return true end
   return fail(st.word or "no name service", "the members of " .. st.key .. ": " .. tostring(st.why))
end

internal.notify["luanet.ns.group_changed"] = function(peer, params)
   local kind, value, view = params[1], params[2], params[3]
   if type(kind) ~= "string" or type(value) ~= "string" then return end
   local st = states[kind .. ":" .. value]
   -- From the name service we follow, or (while the first answer is on its way) from any
   -- of the name services we were given: never from just any peer.
   if st and (peer == st.source or (st.fetching and internal.is_name_service(peer))) then
      apply(st, view, peer)
   end
end

internal.lost[#internal.lost + 1] = function(peer)
   for _, st in pairs(states) do
      if st.source == peer then st.stale = true end
      if peer.name and st.seeds[peer.name] then down[peer.name] = now() + PASS_OVER end
   end
end

---------------------------------------------------------------------------------------
-- Picking a member
---------------------------------------------------------------------------------------

local function usable(name, tried)
   if tried and tried[name] then return false end
   local d = down[name]
   if d and d <= now() then down[name], d = nil, nil end
   return not d
end

-- In turn from `start`, the first usable member; failing that, the first not yet tried.
local function scan(names, start, tried)
   local n = #names
   for i = 0, n - 1 do
      local name = names[(start + i - 1) % n + 1]
      if usable(name, tried) then return name end
   end
   for i = 0, n - 1 do
      local name = names[(start + i - 1) % n + 1]
      if not (tried and tried[name]) then return name end
   end
end

-- Rendezvous hashing (PROTOCOL.md): the member with the highest mix(H(key) ~ H(name)),
-- mix being SplitMix64's finaliser, written out in the loop, and the unsigned comparison
-- made signed by flipping the top bit: this runs per call, once per member.
local function by_hash(st, key, tried, ignore_down)
   local hk = hash64(key)     -- an integer key hashes as its decimal text
   local names, seeds = st.names, st.seeds
   local best, best_score
   for i = 1, #names do
      local name = names[i]
      local ok = not (tried and tried[name])
      if ok and not ignore_down and down[name] then ok = usable(name) end
      if ok then
         local x = hk ~ seeds[name]
         x = (x ~ (x >> 30)) * 0xbf58476d1ce4e5b9
         x = (x ~ (x >> 27)) * 0x94d049bb133111eb
         local score = (x ~ (x >> 31)) ~ TOP_BIT
         if best == nil or score > best_score or (score == best_score and name < best) then
            best, best_score = name, score
         end
      end
   end
   if not best and not ignore_down then return by_hash(st, key, tried, true) end
   return best
end

-- The member with the fewest calls from this process waiting for an answer on its
-- connection (any calls: by name, by address or through any group); ties in turn.
local function least(g, st, tried)
   local names = st.names
   local n = #names
   local t = g.turn % n + 1
   g.turn = t
   local best, fewest
   for i = t, t + n - 1 do
      local name = names[(i - 1) % n + 1]
      local ok = not (tried and tried[name])
      if ok and down[name] then ok = usable(name) end
      if ok then
         local peer = peers[name]
         local k = peer and peer.waiting or 0
         if k == 0 then return name end     -- nobody does better
         if best == nil or k < fewest then best, fewest = name, k end
      end
   end
   return best or scan(names, t, tried)
end

local function pick(g, st, opts, tried)
   local names = st.names
   local n = #names
   if n == 0 then return nil end
   local policy = g.policy
   if policy == "round-robin" then
      g.turn = g.turn % n + 1
      local name = names[g.turn]
      if not down[name] and not tried then return name end
      return scan(names, g.turn, tried)
   elseif policy == "random" then
      return scan(names, random(n), tried)
   elseif policy == "least" then
      return least(g, st, tried)
   elseif policy == "hash" then
      return by_hash(st, opts.key, tried)
   end
   -- master: only the lease holder will do (a passed-over master is still the master).
   local m = st.master
   if m and not (tried and tried[m]) then return m end
end

---------------------------------------------------------------------------------------
-- Calls and messages
---------------------------------------------------------------------------------------

local function options_of(...)
   local n = select("#", ...)
   if n == 0 then return nil end
   local last = select(n, ...)
   if getmetatable(last) == Options then return last end
end

-- Runs fn(name) for every member at once; returns when all have finished.
local function each(names, deadline, fn)
   local left, done = #names, luanet.cond()
   for i, name in ipairs(names) do
      luanet.spawn(function()
         fn(i, name)
         left = left - 1
         if left == 0 then done:broadcast() end
      end)
   end
   while left > 0 do
      if not done:wait(math.max(0, deadline - now()), "group broadcast") then return false end
   end
   return true
end

local function broadcast_call(st, timeout, fname, ...)
   local names = st.names
   if #names == 0 then return fail("no such service", "the group " .. st.key .. " has no members") end
   local args = table.pack(...)
   local results = {}
   -- Each call ends by its own timeout; the outer deadline only guards against a bug.
   local deadline = now() + timeout + config.connect_timeout + 1
   each(names, deadline, function(i, name)
      local r, word, detail = luanet.RPCCall(name, fname, table.unpack(args, 1, args.n))
      if word == nil then
         results[i] = { name = name, ok = true, result = r }
      else
         results[i] = { name = name, ok = false, word = word, detail = detail }
      end
   end)
   for i, name in ipairs(names) do
      results[i] = results[i] or { name = name, ok = false, word = "timeout", detail = "no answer in time" }
   end
   return results
end

-- "no such service": the member went (or its port is closed) before the push said so.
local function retryable(word, policy)
   return word == "connection lost" or word == "timeout" or word == "no such service"
      or (policy == "master" and (word == "not master" or word == "master moved"))
end

-- An idempotent call to the master stops waiting for the old master as soon as the name
-- service says another member holds the lease: a frozen master's callers follow the new
-- one within the lease time, not after their own timeout. (The call itself runs on in a
-- task of its own until it answers or times out; being idempotent, it may also run.)
local function call_following(st, timeout, name, fname, ...)
   local args = table.pack(...)
   local box, wake = {}, luanet.cond()
   luanet.spawn(function()
      local ok, r, word, detail = pcall(RPCCall, name, fname, table.unpack(args, 1, args.n))
      if ok then
         box.r, box.word, box.detail = r, word, detail
      else
         box.word, box.detail = "remote error", tostring(r)
      end
      box.done = true
      wake:broadcast()
   end)
   st.followers[wake] = true
   -- The call has its own timeout; this deadline only guards against a bug.
   local deadline = now() + timeout + config.connect_timeout + 1
   while not box.done and not (st.master and st.master ~= name) do
      if not wake:wait(math.max(0, deadline - now()), "group master") then break end
   end
   st.followers[wake] = nil
   if box.done then return box.r, box.word, box.detail end
   if not (st.master and st.master ~= name) then
      return fail("timeout", ("%s.%s did not answer within %g s"):format(name, fname, timeout))
   end
   return nil, "master moved", ("%s is no longer the master of %s; %s is"):format(name, st.key, st.master)
end

-- The master policy with no usable holder: waits for the lease to (move and) be held.
local function await_master(st, tried, deadline)
   while not st.master or (tried and tried[st.master]) do
      if not st.changed:wait(math.max(0, deadline - now()), "group master") then return nil end
   end
   return st.master
end

local function check_key(g, opts)
   if g.policy == "hash" and (not opts or opts.key == nil) then
      -- Level 3: RPCCall and SendMsg tail-call group_call and group_send, so their
      -- caller is two up.
      error("RPCCall/SendMsg: a group with the \"hash\" policy needs luanet.call_options{ key = ... }", 3)
   end
end

-- RPCCall comes here (a tail call: what this returns, RPCCall returns) for everything
-- but the common case: broadcast, retries, an unknown or stale membership, no
-- usable member, a member passed over.
function internal.group_call(g, fname, ...)
   local st = g.state
   local opts = options_of(...)
   check_key(g, opts)
   local timeout = opts and opts.timeout or config.call_timeout
   if not st.known or st.stale then
      local ok, word, detail = ensure(st, now() + timeout)
      if not ok then return nil, word, detail end
   end
   local policy = g.policy
   if policy == "broadcast" then return broadcast_call(st, timeout, fname, ...) end
   local retries = opts and opts.idempotent and (opts.retries or 2) or 0
   local tried
   local r, word, detail
   for attempt = 0, retries do
      local name = pick(g, st, opts, tried)
      if not name and policy == "master" then
         name = await_master(st, tried, now() + timeout)
         if not name then
            return fail("no master", ("no member of %s held the master lease within %g s"):format(st.key, timeout))
         end
      elseif not name then
         if tried then break end
         return fail("no such service", "the group " .. st.key .. " has no members")
      end
      if policy == "master" and retries > 0 then
         r, word, detail = call_following(st, timeout, name, fname, ...)
      else
         r, word, detail = RPCCall(name, fname, ...)
      end
      if word == nil then return r end
      if not retryable(word, policy) then return nil, word, detail end
      internal.group_failed(name, word)
      if word == "not master" then
         -- A new master may be told it won after the name service told us: give it a
         -- moment (10, 20, 40 ms ...) or a change of master, whichever comes first.
         st.changed:wait(math.min(0.01 * 2 ^ attempt, timeout), "group master")
      else
         tried = tried or {}
         tried[name] = true
      end
   end
   return nil, word, detail
end

-- RPCCall asks this first: the member for the common case (a known membership, a usable
-- member, no retries, not broadcast), or nil for the long way above. It is the whole
-- cost a group call adds to a call by name.
function internal.group_pick(g, opts)
   local st = g.state
   local names = st.names
   local count = #names
   if count == 0 or st.stale or (opts and opts.idempotent) then return nil end
   local policy, name = g.policy, nil
   if policy == "round-robin" then
      local t = g.turn % count + 1
      g.turn, name = t, names[t]
   elseif policy == "random" then
      name = names[random(count)]
   elseif policy == "hash" then
      if not (opts and opts.key ~= nil) then return nil end   -- the long way raises the error
      name = by_hash(st, opts.key)
   elseif policy == "master" then
      name = st.master
   elseif policy == "least" then
      name = least(g, st)
   end
   if name == nil then return nil end
   local d = down[name]
   if d and policy ~= "master" then  -- (a passed-over master is still the master)
      if d > now() then return nil end
      down[name] = nil              -- passed over long enough
   end
   return name
end

-- A call RPCCall made to a member from group_pick failed.
function internal.group_failed(name, word)
   if word ~= "not master" and word ~= "master moved" then down[name] = now() + PASS_OVER end
end

function internal.group_send(g, msg, opts)
   local st = g.state
   check_key(g, opts)
   local timeout = opts and opts.timeout or config.call_timeout
   if not st.known or st.stale then
      local ok, word, detail = ensure(st, now() + timeout)
      if not ok then return nil, word, detail end
   end
   if g.policy ~= "broadcast" then
      local name = pick(g, st, opts)
      if not name and g.policy == "master" then name = await_master(st, nil, now() + timeout) end
      if not name then
         return fail(g.policy == "master" and "no master" or "no such service",
            "the group " .. st.key .. " has no " .. (g.policy == "master" and "master" or "members"))
      end
      local ok, word, detail = luanet.SendMsg(name, msg, opts)
      if ok then return ok end
      if word == "connection lost" then down[name] = now() + PASS_OVER end
      return nil, word, detail
   end
   local names = st.names
   if #names == 0 then return fail("no such service", "the group " .. st.key .. " has no members") end
   local failures, sent = {}, 0
   each(names, now() + timeout + config.connect_timeout + 1, function(_, name)
      local ok, word, detail = luanet.SendMsg(name, msg, opts)
      if ok then
         sent = sent + 1
      else
         failures[#failures + 1] = { name = name, word = word, detail = detail }
      end
   end)
   if sent == 0 then
      local f = failures[1]
      return fail(f and f.word or "timeout", ("sent to none of %d members; %s: %s"):format(
         #names, f and f.name or "?", f and tostring(f.detail) or "no answer in time"))
   end
   table.sort(failures, function(a, b) return a.name < b.name end)
   return sent, failures
end

---------------------------------------------------------------------------------------
-- The public face
---------------------------------------------------------------------------------------


--- luanet.Group(selector, [policy]) -> group
function luanet.Group(selector, policy)
   local kind, value = selector_of("Group", selector, 3)
   if policy == nil then policy = "round-robin" end
   if not POLICIES[policy] then
      error("Group: bad argument #2 'policy' (random, round-robin, least, hash, broadcast or master expected, got "
         .. tostring(policy) .. ")", 2)
   end
   return setmetatable({ [internal.IS_GROUP] = true, state = state_of(kind, value), policy = policy, turn = 0 },
      Group)
end

--- group:members() -> { name, ... } | nil, word, detail
function Group:members()
   local ok, word, detail = ensure(self.state, now() + config.call_timeout)
   if not ok then return nil, word, detail end
   return table.move(self.state.names, 1, #self.state.names, 1, {})
end

--- group:master() -> name | nil
function Group:master()
   return self.state.master
end

function Group:__tostring()
   return ("luanet.Group(%s, %s)"):format(self.state.key, self.policy)
end

end
