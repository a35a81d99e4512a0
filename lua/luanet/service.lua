-- Services that talk in Lua tables: StartLocalService, RegRPCFunction, RPCCall, SendMsg,
-- GetMsg (the original luanet's names). The wire is MessagePack-RPC (docs/PROTOCOL.md);
-- the API is in docs/services.md.
--
-- Connections (one per pair of peers, used both ways; luanet/connections.lua) hand this
-- file what arrives: responses wake the waiting caller, requests start a handler in a
-- pooled worker task, luanet.msg notifications fill the inbox.

local core = require "luanet.core"

return function(luanet)

local REQUEST, RESPONSE, NOTIFY = 0, 1, 2
local unpack = table.unpack
local type, select, getmetatable = type, select, getmetatable    -- RPCCall's per-call checks
local IS_GROUP = {}           -- the private key that marks a luanet.Group (a table lookup, no C call)

local config = {
   call_timeout = 5,          -- seconds, per call unless overridden
   connect_timeout = 5,
   inbox = 1024,              -- messages waiting for GetMsg before senders are held back
   outbox = 1024 * 1024,      -- bytes queued to one peer before its senders block
   max_handlers = 10000,      -- requests being handled at once before "overloaded"
   heartbeat = 1,             -- seconds between pings on a quiet connection; 3 missed = dead
}

-- What the name service (luanet/names.lua, luanet/nameservice.lua) builds on; not public.
local internal = {
   config = config,
   notify = {},               -- notification method -> function(peer, params)
   lost = {},                 -- functions called with each peer whose connection ends
   resolve = nil,             -- function(name, deadline) -> address | nil, word, detail
   forget = nil,              -- function(name): a call by that name failed; drop the cached address
   functions_changed = nil,   -- function(): RegRPCFunction added a function
   IS_GROUP = IS_GROUP,       -- luanet/groups.lua sets group[IS_GROUP] = true in each group
   group_pick = nil,          -- function(group, opts) -> member name | nil: take the long way
   group_call = nil,          -- function(group, fname, ...): RPCCall to a group, the long way
   group_failed = nil,        -- function(name, word): a call to that member failed
   group_send = nil,          -- function(group, msg, opts): SendMsg to a group
}

local self_name               -- this process's service name, once started
local self_address            -- where it listens, as "tcp://host:port" or "unix:/path"
local handlers = {}           -- fname -> function
local inbox                   -- created on first use
local active_handlers = 0

local function fail(word, detail) return nil, word, detail end

require("luanet.connections")(luanet, internal)
local ready_peer, write_failed, address_of = internal.ready_peer, internal.write_failed, internal.address_of

---------------------------------------------------------------------------------------
-- Options: the last argument of RPCCall may be luanet.call_options{...}
---------------------------------------------------------------------------------------

local Options = {}
internal.Options = Options

function luanet.call_options(t)
   if type(t) ~= "table" then
      error("luanet.call_options: bad argument #1 'opts' (table expected, got " .. type(t) .. ")", 2)
   end
   if t.timeout ~= nil and (type(t.timeout) ~= "number" or t.timeout ~= t.timeout or t.timeout < 0) then
      error("luanet.call_options: 'timeout' must be a number of seconds, 0 or more", 2)
   end
   -- For calls to a group (docs/groups.md):
   if t.key ~= nil and type(t.key) ~= "string" and math.type(t.key) ~= "integer" then
      error("luanet.call_options: 'key' must be a string or an integer", 2)
   end
   if t.idempotent ~= nil and type(t.idempotent) ~= "boolean" then
      error("luanet.call_options: 'idempotent' must be a boolean", 2)
   end
   if t.retries ~= nil then
      if math.type(t.retries) ~= "integer" or t.retries < 0 then
         error("luanet.call_options: 'retries' must be an integer, 0 or more", 2)
      end
      if not t.idempotent then
         error("luanet.call_options: 'retries' needs 'idempotent = true' (a retried call may run twice)", 2)
      end
   end
   return setmetatable(t, Options)
end

function luanet.configure(t)
   for k, v in pairs(t) do
      if k == "tls" then
         internal.set_tls(v)
         goto next
      end
      if k == "token" then
         if v ~= false and (type(v) ~= "string" or v == "") then
            error("luanet.configure: 'token' must be a non-empty string (or false for none)", 2)
         end
         config.token = v or nil
         goto next
      end
      if config[k] == nil then error("luanet.configure: unknown setting '" .. tostring(k) .. "'", 2) end
      if type(v) ~= "number" or v ~= v or v <= 0 then
         error("luanet.configure: '" .. k .. "' must be a positive number", 2)
      end
      config[k] = v
      ::next::
   end
   local copy = {}
   for k, v in pairs(config) do copy[k] = v end
   return copy
end

-- luanet.error(word, detail): raised in a handler, the caller gets nil, word, detail.
local RaisedWord = { __tostring = function(e) return e.word .. ": " .. e.detail end }

function luanet.error(word, detail)
   if type(word) ~= "string" or word == "" then
      error("luanet.error: bad argument #1 'word' (a non-empty string expected)", 2)
   end
   error(setmetatable({ word = word, detail = tostring(detail or word) }, RaisedWord), 2)
end

local function respond(peer, msgid, err, result)
   if peer.alive then peer.conn:write_array(RESPONSE, msgid, err, result) end
end

-- Unpacking runs inside the pcall: a peer can send more arguments than Lua can unpack.
local function call_handler(handler, params)
   return handler(unpack(params, 1, params.n or #params))
end

local function run_handler(peer, msgid, handler, params)
   local ok, result = pcall(call_handler, handler, params)
   active_handlers = active_handlers - 1
   peer.handling = peer.handling - 1
   if ok then
      local sent, word, detail = true
      if peer.alive then sent, word, detail = peer.conn:write_array(RESPONSE, msgid, nil, result) end
      if not sent and word == "encode error" then
         respond(peer, msgid, luanet.array { "encode error", "the result: " .. tostring(detail) }, nil)
      end
   elseif getmetatable(result) == RaisedWord then
      respond(peer, msgid, luanet.array { result.word, result.detail }, nil)
   else
      respond(peer, msgid, luanet.array { "remote error", tostring(result) }, nil)
   end
end

-- Handlers run in pooled worker tasks: a request wakes a parked worker instead of
-- creating a coroutine. At most `MAX_IDLE` workers stay parked.
local MAX_IDLE = 256
local idle_workers = {}
local worker_of = setmetatable({}, { __mode = "k" })   -- task coroutine -> its worker

local function worker(w)
   worker_of[core.running()] = w
   while true do
      run_handler(w.peer, w.msgid, w.handler, w.params)
      w.peer, w.handler, w.params = nil, nil, nil
      if #idle_workers >= MAX_IDLE then return end
      w.id, w.wait = core.prepare_wait("worker")
      idle_workers[#idle_workers + 1] = w
      core.suspend(nil, "worker", true)
   end
end

local function start_handler(peer, msgid, handler, params)
   active_handlers = active_handlers + 1
   peer.handling = peer.handling + 1
   local w = idle_workers[#idle_workers]
   if w then
      idle_workers[#idle_workers] = nil
      w.peer, w.msgid, w.handler, w.params = peer, msgid, handler, params
      if core.wake(w.id, w.wait) then return end
   end
   luanet.spawn(worker, { peer = peer, msgid = msgid, handler = handler, params = params })
end

-- The shapes docs/PROTOCOL.md allows; anything else closes the connection.
local function valid_msgid(msgid)
   return math.type(msgid) == "integer" and msgid >= 0 and msgid <= 0xffffffff
end

local is_array = internal.is_array

local function on_request(peer, msgid, method, params)
   if not valid_msgid(msgid) or type(method) ~= "string" or not is_array(params) then
      return false
   end
   if peer.retired then peer.used = core.now() end
   local handler = handlers[method]
   if not handler then
      respond(peer, msgid, luanet.array { "no such function",
         ("%s has no function '%s'"):format(self_name or "this process", method) }, nil)
   elseif active_handlers >= config.max_handlers then
      respond(peer, msgid, luanet.array { "overloaded",
         ("%d requests are being handled already"):format(active_handlers) }, nil)
   else
      start_handler(peer, msgid, handler, params)
   end
   return true
end

local function on_response(peer, msgid, err, result)
   if not valid_msgid(msgid) then return false end
   if peer.retired then peer.used = core.now() end
   local w = peer.pending[msgid]
   if not w then return true end        -- a late reply to a call that timed out
   peer.pending[msgid] = nil
   peer.waiting = peer.waiting - 1
   w.err, w.result = err, result
   core.wake(w.id, w.wait)
   return true
end

internal.on_request, internal.on_response = on_request, on_response

-- The inbox: a bounded ring of messages and their senders (two arrays, so a message
-- costs no table of its own), with conditions for a full and an empty ring.
local Inbox = {}
Inbox.__index = Inbox

local function get_inbox()
   if not inbox then
      inbox = setmetatable({ msgs = {}, froms = {}, head = 1, count = 0, capacity = config.inbox,
         readers = luanet.cond(), writers = luanet.cond() }, Inbox)
   end
   return inbox
end

function Inbox:put(msg, from)
   while self.count >= self.capacity do self.writers:wait(nil, "inbox") end
   local i = (self.head + self.count - 1) % self.capacity + 1
   self.msgs[i], self.froms[i] = msg, from
   self.count = self.count + 1
   self.readers:signal()
end

function Inbox:take(timeout)
   local deadline = timeout and core.now() + timeout
   while self.count == 0 do
      local ok, err = self.readers:wait(deadline and math.max(0, deadline - core.now()), "GetMsg")
      if not ok then return nil, err end
   end
   local i = self.head
   local msg, from = self.msgs[i], self.froms[i]
   self.msgs[i], self.froms[i] = nil, nil
   self.head = i % self.capacity + 1
   self.count = self.count - 1
   self.writers:signal()
   return msg, from
end

---------------------------------------------------------------------------------------
-- The public calls
---------------------------------------------------------------------------------------

-- A message for GetMsg. Blocks the connection's reader while the inbox is full: the
-- peer's sends back up to its own outbox limit and hold its sending tasks (memory stays
-- bounded end to end).
internal.notify["luanet.msg"] = function(peer, params)
   local msg = params[2]
   if msg == nil then return false, "a luanet.msg without a message" end
   if peer.retired then peer.used = core.now() end
   -- The sender as a target that leads back over this connection: its name, unless that
   -- name leads to another process (two processes may claim one name).
   local from = peer.name
   if not from or internal.peer(from) ~= peer then from = peer.key end
   peer.held = true
   get_inbox():put(msg, from)
   peer.held = false
   return true
end

--- StartLocalService(name, addr, [opts]) -> true | nil, word, detail
function luanet.StartLocalService(name, addr, opts)
   if type(name) ~= "string" or name == "" then
      error("StartLocalService: bad argument #1 'name' (a non-empty string expected)", 2)
   end
   if type(addr) ~= "string" then
      error("StartLocalService: bad argument #2 'addr' (string expected, got " .. type(addr) .. ")", 2)
   end
   if self_name then
      error("StartLocalService: this process is already the service '" .. self_name .. "'", 2)
   end
   local listen_addr, kind = address_of(addr)
   listen_addr = listen_addr or addr
   local listener, word, detail
   if kind == "unix" or (not kind and luanet.is_unix_address(addr)) then
      listener, word, detail = luanet.unix.listen(listen_addr, opts)
   else
      listener, word, detail = luanet.tcp.listen(listen_addr, opts)
   end
   if not listener then return fail(word, detail) end
   self_name = name
   local bound = listener:local_addr()
   self_address = (kind == "unix" or bound:sub(1, 1) == "/" or bound:sub(1, 1) == "@")
      and "unix:" .. bound or "tcp://" .. bound
   internal.name, internal.address = self_name, self_address
   luanet.spawn(internal.serve, listener)
   luanet.service_listener = listener
   return true
end

--- RegRPCFunction(fname, handler): handler(args...) runs in its own task; its first
--- result is the reply, an error it raises reaches the caller as "remote error".
function luanet.RegRPCFunction(fname, handler)
   if type(fname) ~= "string" or fname == "" then
      error("RegRPCFunction: bad argument #1 'fname' (a non-empty string expected)", 2)
   end
   if type(handler) ~= "function" then
      error("RegRPCFunction: bad argument #2 'handler' (function expected, got " .. type(handler) .. ")", 2)
   end
   local new = handlers[fname] == nil
   handlers[fname] = handler
   if new and internal.functions_changed then internal.functions_changed() end
end

function internal.function_names()
   local names = {}
   for fname in pairs(handlers) do
      if fname:sub(1, 7) ~= "luanet." then names[#names + 1] = fname end
   end
   table.sort(names)
   return names
end

function internal.self() return self_name, self_address end

--- RPCCall(target, fname, args..., [luanet.call_options{timeout = s}]) -> result | nil, word, detail
--- target: an address, a name, or a luanet.Group (docs/groups.md).
function luanet.RPCCall(target, fname, ...)
   local group
   local kind = type(target)
   if kind ~= "string" then
      if kind ~= "table" or not target[IS_GROUP] then
         error("RPCCall: bad argument #1 'target' (a name, an address or a group expected, got "
            .. kind .. ")", 2)
      end
      group = target
   end
   if type(fname) ~= "string" then
      error("RPCCall: bad argument #2 'fname' (string expected, got " .. type(fname) .. ")", 2)
   end
   local nargs = select("#", ...)
   local timeout, opts = config.call_timeout, nil
   if nargs > 0 then
      local last = select(nargs, ...)
      if getmetatable(last) == Options then
         opts = last
         timeout = last.timeout or timeout
         nargs = nargs - 1
      end
   end
   if group then
      -- The common case picks a member and goes on as a call by its name, here: a group
      -- call costs one pick more than a call by name. Broadcast, retries and everything
      -- unusual take the longer way (luanet/groups.lua), which calls back in by name.
      target = internal.group_pick(group, opts)
      if not target then return internal.group_call(group, fname, ...) end
   end
   local peer, left, detail = ready_peer(target, timeout)
   if not peer then
      if group then internal.group_failed(target, left) end
      return nil, left, detail
   end
   peer.next_id = (peer.next_id + 1) & 0xffffffff
   local msgid = peer.next_id
   local ok, word
   ok, word, detail = peer.conn:write_call(3, nargs, REQUEST, msgid, fname, ...)
   if not ok then return write_failed(peer, word, detail) end
   local id, wait = core.prepare_wait("RPCCall")
   local w = { id = id, wait = wait }
   peer.pending[msgid] = w
   peer.waiting = peer.waiting + 1         -- the "least" group policy reads it
   ok = core.suspend(left, "RPCCall")
   if not ok then
      if peer.pending[msgid] == w then
         peer.pending[msgid] = nil
         peer.waiting = peer.waiting - 1
         if group then internal.group_failed(target, "timeout") end
         return fail("timeout", ("%s.%s did not answer within %g s"):format(target, fname, timeout))
      end
      -- The reply (or the end of the connection) came in the same turn as the timeout:
      -- it took the entry already, and it is the answer.
   end
   if w.lost then
      if internal.forget then internal.forget(target) end
      return fail("connection lost", ("%s: %s"):format(target, w.lost))
   end
   local err = w.err
   if err ~= nil then
      if type(err) == "table" and type(err[1]) == "string" and err[1] ~= "" then
         return fail(err[1], err[2])
      end
      return fail("remote error", tostring(type(err) == "table" and (err[2] or err[1]) or err))
   end
   return w.result
end

--- SendMsg(target, msg, [opts]) -> true | nil, word, detail
function luanet.SendMsg(target, msg, opts)
   if msg == nil then error("SendMsg: bad argument #2 'msg' (any value but nil expected)", 2) end
   if opts ~= nil and getmetatable(opts) ~= Options then
      error("SendMsg: bad argument #3 'opts' (luanet.call_options{...} or nil expected)", 2)
   end
   if type(target) ~= "string" then
      if type(target) == "table" and target[IS_GROUP] then
         return internal.group_send(target, msg, opts)
      end
      error("SendMsg: bad argument #1 'target' (a name, an address or a group expected, got "
         .. type(target) .. ")", 2)
   end
   local peer, word, detail = ready_peer(target, opts and opts.timeout or config.call_timeout)
   if not peer then return nil, word, detail end
   local ok
   ok, word, detail = peer.conn:write_call(2, 2, NOTIFY, "luanet.msg", self_name or "", msg)
   if not ok then
      -- The message is the second value of the notification's params: name it as the caller does.
      return write_failed(peer, word, word == "encode error" and detail:gsub("^(.-)args%[2%]", "%1msg", 1) or detail)
   end
   return true
end

--- GetMsg([timeout]) -> msg, sender | nil, "timeout"
function luanet.GetMsg(timeout)
   if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
      error("GetMsg: bad argument #1 'timeout' (a number of seconds, 0 or more, expected)", 2)
   end
   return get_inbox():take(timeout)
end

-- The peer whose request the running handler serves (before the handler's first yield
-- or after: each worker handles one request at a time).
function internal.caller_peer()
   local w = worker_of[core.running()]
   return w and w.peer
end

--- luanet.caller() -> name | nil: inside a handler, the calling service's name ("" for a
--- process that is not a service); nil outside a handler.
function luanet.caller()
   local peer = internal.caller_peer()
   if peer then return peer.name or "" end
end

--- The name this process serves as, or nil.
function luanet.service_name() return self_name end

--- Counters for monitoring: open connections, calls waiting for a reply, requests being
--- handled, messages waiting in the inbox, duplicate connections retired.
function luanet.service_stats()
   local connections, waiting, replaced = internal.connection_stats()
   return {
      connections = connections, calls_waiting = waiting, handlers = active_handlers,
      inbox = inbox and inbox.count or 0, replaced = replaced,
   }
end

return internal

end
