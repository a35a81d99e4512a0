-- Services by name, the caller's side: Register2Name, UseNameService,
-- GetRemoteFuncProvider, and the resolver that RPCCall and SendMsg use for a target that
-- is not an address (docs/names.md). The name service itself is luanet/nameservice.lua.
--
-- A name resolves to an address once; after that the connection is bound to the name and
-- calls find it with one table lookup. The cached address is dropped when that connection
-- ends, when a call by the name fails, and when a name service pushes a change.

local core = require "luanet.core"

return function(luanet, internal)
local config = internal.config

local name_services = {}     -- addresses of the name services, in the order given
local preferred = 1          -- index of the one that answered last: asked first
local cache = {}             -- name -> address
local missing = {}           -- name -> time until which "not registered" is believed
local lookups = {}           -- name -> the lookup under way: { done = cond, address | why }
local changed = {}           -- name -> pushes about it during its lookup (see look_up)
local keepers = {}           -- name service address -> its registration keeper
local MISSING_FOR = 1        -- seconds; a push from the name service ends it sooner
local missing_count, MISSING_MAX = 0, 10000   -- past this, the remembered misses are dropped
local BACKOFF_FIRST, BACKOFF_MAX = 0.05, 1

local function fail(word, detail) return nil, word, detail end

local function address_list(fname, v)
   if type(v) == "string" then v = { v } end
   if type(v) ~= "table" or #v == 0 then
      error(fname .. ": bad argument #1 (an address or a list of addresses expected)", 3)
   end
   local list = {}
   for i, a in ipairs(v) do
      if type(a) ~= "string" or a == "" then
         error(("%s: bad argument #1 (address %d is not a string)"):format(fname, i), 3)
      end
      list[i] = a
   end
   return list
end

local function add_name_services(list)
   for _, a in ipairs(list) do
      local known = false
      for _, b in ipairs(name_services) do known = known or a == b end
      if not known then name_services[#name_services + 1] = a end
   end
end

-- Calls `method` on the name services in turn, starting with the one that answered last,
-- until one answers. Returns true, result, that name service's address or nil, word, detail.
local function ask(deadline, method, ...)
   if #name_services == 0 then
      return fail("no name service", "no name service is configured (luanet.UseNameService)")
   end
   local last, answered, answered_detail
   local args = table.pack(...)
   local first = preferred
   for i = 0, #name_services - 1 do
      local k = (first - 1 + i) % #name_services + 1
      local left = deadline - core.now()
      if left <= 0 then break end
      -- One unreachable or frozen name service must not use up the whole budget: each
      -- still to be asked gets an equal share of what is left.
      local per_try = left / (#name_services - i)
      args[args.n + 1] = luanet.call_options { timeout = per_try }
      local r, word, detail = luanet.RPCCall(name_services[k], method, table.unpack(args, 1, args.n + 1))
      if word == nil then
         preferred = k
         return true, r, name_services[k]
      end
      if word == "bad request" then
         -- The request itself is wrong: every name service would say so.
         preferred = k
         return fail(word, ("%s: %s"):format(name_services[k], tostring(detail)))
      elseif word ~= "timeout" and word ~= "connection lost" and word ~= "no such service" then
         -- It answered with an error of its own (overloaded; no such function from
         -- something that is no name service): the others may still do better, but if
         -- none does, this is the word to give.
         answered, answered_detail = word, ("%s: %s"):format(name_services[k], tostring(detail))
      end
      last = ("%s: %s (%s)"):format(name_services[k], word, tostring(detail))
      -- It failed: the next lookup starts with the one after it.
      if preferred == k then preferred = k % #name_services + 1 end
   end
   if answered then return fail(answered, answered_detail) end
   return fail("no name service", "no name service answered: " .. (last or "out of time"))
end

--- luanet.UseNameService(addr_or_list): where this process looks names up.
function luanet.UseNameService(list)
   add_name_services(address_list("UseNameService", list))
end

-- One lookup of `name`, in a task of its own: every caller waits for it with its own
-- deadline, and none of them cuts it short for the others (it has call_timeout).
local function look_up(name, lookup)
   local changes = changed[name]
   local ok, result, detail = ask(core.now() + config.call_timeout, "luanet.ns.resolve", name)
   lookups[name] = nil
   local pushed = changed[name] ~= changes
   changed[name] = nil
   if ok and type(result) == "string" and not internal.address_of(result) then
      core.report(("name service answered '%s' for %s, which is not an address; ignored"):format(result, name))
      ok, result, detail = nil, "no name service", "the name service's answer was not an address"
   end
   -- A push that came while we asked is newer than our answer: keep neither.
   if not pushed then
      if ok and type(result) == "string" then
         cache[name], missing[name] = result, nil
      elseif ok then
         if not missing[name] then missing_count = missing_count + 1 end
         if missing_count > MISSING_MAX then missing, missing_count = {}, 1 end
         missing[name] = core.now() + MISSING_FOR
      end
   end
   if not ok then
      lookup.why = ("'%s': %s"):format(name, detail)
   elseif type(result) ~= "string" then
      lookup.why = ("no service is registered as '%s'"):format(name)
   else
      lookup.address = result
   end
   lookup.done:broadcast()
end

function internal.resolve(name, deadline)
   local address = cache[name]
   if address then return address end
   if #name_services == 0 then
      return fail("no such service", ("no service is known as '%s' (no name service is configured)"):format(name))
   end
   local until_ = missing[name]
   if until_ and core.now() < until_ then
      return fail("no such service", ("no service is registered as '%s'"):format(name))
   end
   local lookup = lookups[name]
   if not lookup then
      lookup = { done = luanet.cond() }
      lookups[name] = lookup
      luanet.spawn(look_up, name, lookup)
   end
   while not lookup.address and not lookup.why do
      if not lookup.done:wait(math.max(0, deadline - core.now()), "name lookup") then
         return fail("timeout", "looking up " .. name)
      end
   end
   if lookup.address then return lookup.address end
   return fail("no such service", lookup.why)
end

function internal.forget(name)
   cache[name] = nil
end

internal.ask_name_service = ask

-- Whether `peer` is the connection to one of the name services this process was given.
function internal.is_name_service(peer)
   for _, ns in ipairs(name_services) do
      if internal.peer(ns) == peer then return true end
   end
   return false
end

-- An address a name service sent unasked (in a group's membership): as good as a lookup.
function internal.learn(name, address)
   cache[name] = address
   if missing[name] then missing[name], missing_count = nil, missing_count - 1 end
end

-- A name service says a name changed hands, came or went.
internal.notify["luanet.ns.changed"] = function(_, params)
   local name = params[1]
   if type(name) == "string" then
      cache[name], missing[name] = nil, nil
      if lookups[name] then changed[name] = (changed[name] or 0) + 1 end
   end
end

---------------------------------------------------------------------------------------
-- Registration: one keeper task per name service keeps this service registered there,
-- re-registering when that connection ends (the name service restarted) and when a new
-- function is added. Its waits are background ones: they do not keep run() going.
---------------------------------------------------------------------------------------

local function park(k, timeout)
   k.id, k.wait = core.prepare_wait("name service")
   core.suspend(timeout, "name service", false, true)
   k.id = nil
end

local function unpark(k)
   if k.id then core.wake(k.id, k.wait) end
end

local function keeper(k)
   local delay = BACKOFF_FIRST
   while not k.stopped do
      local name, address = internal.self()
      k.dirty = false
      local ok, word, detail = luanet.RPCCall(k.ns, "luanet.ns.register", name, address,
         luanet.array(internal.function_names()))
      if k.stopped then break end
      if ok then
         if k.state ~= "registered" and k.state ~= nil then
            core.report(("Register2Name: registered as %s with %s again"):format(name, k.ns), "info")
         end
         k.state, k.detail, delay = "registered", nil, BACKOFF_FIRST
         k.settled:broadcast()
         k.peer = internal.peer(k.ns)
         while not k.stopped and not k.dirty and k.peer and k.peer.alive do park(k) end
      elseif (word == "name taken" and k.state == nil) or word == "bad request" then
         -- Refused on the first try (the name is somebody else's), or refused for good
         -- (a name or function list the name service does not take): Register2Name says so.
         core.report(("Register2Name: %s refused the name %s: %s"):format(k.ns, name, tostring(detail)))
         k.state, k.word, k.detail, k.stopped = "refused", word, detail, true
         k.settled:broadcast()
      else
         -- Unreachable, or the name is held there (by a holder the name service has not
         -- yet seen die, or by someone who took it while we were away): try again.
         local state = word == "name taken" and "taken" or "unreachable"
         if k.state == "registered" or (state == "taken" and k.state ~= "taken") then
            core.report(("Register2Name: %s with %s (%s); retrying"):format(
               state == "taken" and "the name is held by another service" or "lost the registration",
               k.ns, tostring(detail)))
         end
         k.state, k.detail = state, ("%s: %s (%s)"):format(k.ns, word, tostring(detail))
         k.settled:broadcast()
         park(k, delay)
         delay = math.min(delay * 2, BACKOFF_MAX)
      end
   end
end

internal.lost[#internal.lost + 1] = function(peer)
   if peer.name then cache[peer.name] = nil end
   for _, k in pairs(keepers) do
      if k.peer == peer then unpark(k) end
   end
end

-- Functions registered later are announced too (one update for a burst of them).
internal.functions_changed = function()
   for _, k in pairs(keepers) do
      k.dirty = true
      unpark(k)
   end
end

--- Register2Name(addr_or_list) -> true | nil, word, detail
function luanet.Register2Name(list)
   list = address_list("Register2Name", list)
   if not internal.self() then
      error("Register2Name: call StartLocalService first (this process has no name yet)", 2)
   end
   if next(keepers) then error("Register2Name: this service is registered already", 2) end
   add_name_services(list)
   for _, ns in ipairs(list) do
      local k = { ns = ns, settled = luanet.cond() }
      keepers[ns] = k
      luanet.spawn(keeper, k)
   end
   -- Wait for every name service's first answer (or failure to answer).
   local deadline = core.now() + config.connect_timeout + config.call_timeout
   for _, ns in ipairs(list) do
      local k = keepers[ns]
      while k.state == nil do
         if not k.settled:wait(math.max(0, deadline - core.now()), "Register2Name") then break end
      end
   end
   local registered, refused, why = 0, nil, nil
   for _, ns in ipairs(list) do
      local k = keepers[ns]
      if k.state == "registered" then registered = registered + 1 end
      if k.state == "refused" then refused = k end
      why = why or k.detail
   end
   if refused then
      -- The name is someone else's: take it back everywhere it was granted.
      for ns, k in pairs(keepers) do
         k.stopped = true
         unpark(k)
         if k.state == "registered" then
            luanet.RPCCall(ns, "luanet.ns.unregister", (internal.self()))
         end
      end
      keepers = {}
      return fail(refused.word, refused.detail)
   end
   if registered == 0 then
      return fail("no name service", (why or "no name service answered") .. "; still trying")
   end
   return true
end

-- The name services Register2Name registered this service with, in the order given.
function internal.registered_with()
   local list = {}
   for _, ns in ipairs(name_services) do
      if keepers[ns] then list[#list + 1] = ns end
   end
   return list
end

--- GetRemoteFuncProvider(fname) -> { names... } | nil, word, detail
function luanet.GetRemoteFuncProvider(fname)
   if type(fname) ~= "string" or fname == "" then
      error("GetRemoteFuncProvider: bad argument #1 'fname' (a non-empty string expected)", 2)
   end
   local ok, result, detail = ask(core.now() + config.call_timeout, "luanet.ns.providers", fname,
      (internal.self()))
   if not ok then return fail(result, detail) end
   return result
end

end
