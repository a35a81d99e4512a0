-- Services that talk in Lua tables: StartLocalService, RegRPCFunction, RPCCall, SendMsg,
-- GetMsg (the original luanet's names). The wire is MessagePack-RPC (docs/PROTOCOL.md);
-- the API is in docs/services.md.
--
-- One connection per pair of peers, used both ways: a caller that is not a service gets
-- replies and messages over the connection it opened. Each connection has one reader task
-- that dispatches what arrives: responses wake the waiting caller, requests start a
-- handler task, notifications carry messages and luanet's own hello.

local core = require "luanet.core"

return function(luanet)

local REQUEST, RESPONSE, NOTIFY = 0, 1, 2
local unpack = table.unpack

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
}

local self_name               -- this process's service name, once started
local self_address            -- where it listens, as "tcp://host:port" or "unix:/path"
local handlers = {}           -- fname -> function
local peers = {}              -- address or name -> peer (a peer has several keys)
local live = {}               -- peer -> true while its connection is open
local replaced = 0            -- duplicate connections retired (service_stats)
local issued_nonces = {}      -- cluster token nonces we sent, until their peer authenticates
local inbox                   -- created on first use
local active_handlers = 0
local next_conn = 0

local function fail(word, detail) return nil, word, detail end
local introduce               -- defined with the notifications

---------------------------------------------------------------------------------------
-- Options: the last argument of RPCCall may be luanet.call_options{...}
---------------------------------------------------------------------------------------

local Options = {}

function luanet.call_options(t)
   if type(t) ~= "table" then
      error("luanet.call_options: bad argument #1 'opts' (table expected, got " .. type(t) .. ")", 2)
   end
   if t.timeout ~= nil and (type(t.timeout) ~= "number" or t.timeout < 0) then
      error("luanet.call_options: 'timeout' must be a number of seconds, 0 or more", 2)
   end
   return setmetatable(t, Options)
end

function luanet.configure(t)
   for k, v in pairs(t) do
      if k == "token" then
         if v ~= false and (type(v) ~= "string" or v == "") then
            error("luanet.configure: 'token' must be a non-empty string (or false for none)", 2)
         end
         config.token = v or nil
         goto next
      end
      if config[k] == nil then error("luanet.configure: unknown setting '" .. tostring(k) .. "'", 2) end
      if type(v) ~= "number" or v <= 0 then
         error("luanet.configure: '" .. k .. "' must be a positive number", 2)
      end
      config[k] = v
      ::next::
   end
   local copy = {}
   for k, v in pairs(config) do copy[k] = v end
   return copy
end

---------------------------------------------------------------------------------------
-- Peers
---------------------------------------------------------------------------------------

-- Makes `key` (an address or a name) lead to `peer`; lose() undoes it.
local function bind(peer, key)
   peers[key] = peer
   peer.keys[#peer.keys + 1] = key
end

local function new_peer(conn, key, dialed)
   local peer = {
      conn = conn, key = key, keys = {}, name = nil, alive = true, dialed = dialed,
      pending = {}, next_id = 0, drained = luanet.cond(), draining = false, handling = 0,
      -- With a cluster token, nothing but hello, auth and ping is accepted until the peer
      -- has proved it holds the token (see on_auth).
      authed = not config.token, introduced = luanet.cond(),
   }
   conn:set_cork(true)                -- many calls in flight, one send per loop turn
   conn:set_high_water(1 << 40)       -- this layer bounds the outbox itself (config.outbox)
   conn:set_background(true)          -- an open connection alone does not keep run() going
   peer.heard = core.now()
   peer.started = peer.heard
   live[peer] = true
   bind(peer, key)
   return peer
end

-- The connection is gone: every call waiting on it fails now, not at its timeout.
local function lose(peer, why)
   if not peer.alive then return end
   peer.alive = false
   live[peer] = nil
   -- A retired duplicate to the same service takes over what this one served.
   local heir
   for other in pairs(live) do
      if other.retired and other.name == peer.name then heir = other break end
   end
   if heir then heir.retired = false end
   for _, key in ipairs(peer.keys) do
      if peers[key] == peer then
         if heir then bind(heir, key) else peers[key] = nil end
      end
   end
   peer.conn:close()
   for msgid, w in pairs(peer.pending) do
      peer.pending[msgid] = nil
      w.lost = why or "closed"
      core.wake(w.id, w.wait)
   end
   peer.lost_why = why or "closed"
   if peer.my_nonce then issued_nonces[peer.my_nonce] = nil end
   peer.drained:broadcast()
   peer.introduced:broadcast()
   for _, hook in ipairs(internal.lost) do hook(peer) end
end

-- Holds the sending task while the peer's outbox is over its limit.
local function make_room(peer, deadline)
   while peer.alive and peer.conn:buffered() > config.outbox do
      if not peer.draining then
         peer.draining = true
         luanet.spawn(function()
            peer.conn:flush()
            peer.draining = false
            peer.drained:broadcast()
         end)
      end
      local ok = peer.drained:wait(deadline and math.max(0, deadline - core.now()), "luanet send")
      if not ok then return fail("timeout", "the peer is not reading fast enough") end
   end
   if not peer.alive then return fail("connection lost", "the connection closed") end
   return true
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

local function run_handler(peer, msgid, handler, params)
   local ok, result = pcall(handler, unpack(params, 1, params.n or #params))
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

-- Decoded arrays carry this metatable (docs/codec.md): checking it here saves a C call
-- per message.
local ARRAY_MT = getmetatable(luanet.array())
local function is_array(t) return getmetatable(t) == ARRAY_MT end

local function on_request(peer, msgid, method, params)
   if not valid_msgid(msgid) or type(method) ~= "string" or not is_array(params) then
      return false
   end
   if peer.retired then peer.used = peer.heard end
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
   if peer.retired then peer.used = peer.heard end
   local w = peer.pending[msgid]
   if not w then return true end        -- a late reply to a call that timed out
   peer.pending[msgid] = nil
   w.err, w.result = err, result
   core.wake(w.id, w.wait)
   return true
end

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

-- The spellings of a peer's advertised listening address that a caller may use as a
-- target. An unspecified host (0.0.0.0, [::]) means "where this connection comes from".
local function address_keys(peer, address)
   local path = address:match("^unix:(.+)$")
   if path then return { address, path } end
   local host, port = address:match("^tcp://(.+):(%d+)$")
   if not host then return {} end
   if host == "0.0.0.0" or host == "[::]" then
      local from = peer.conn:peer_addr()
      host = from and from:match("^(.+):%d+$")
      if not host then return {} end
   end
   local hostport = host .. ":" .. port
   return { "tcp://" .. hostport, hostport }
end

-- Who dialed a connection: the tie-break below needs both ends to agree.
local function dialer_of(peer)
   if peer.dialed then return self_name or "" end
   return peer.name
end

-- Two services that dial each other at the same moment end up with two connections.
-- Both ends keep the one dialed by the service whose name sorts first and retire the
-- other: no new calls go on it, and its dialer closes it once it has been idle for two
-- heartbeats (see pinger), so nothing in flight on it is lost.
local function settle_duplicate(old, new)
   local keep, retire = old, new
   if dialer_of(new) < dialer_of(old) then keep, retire = new, old end
   retire.retired, retire.used = true, core.now()
   replaced = replaced + 1
   for key, p in pairs(peers) do
      if p == retire then bind(keep, key) end
   end
end

-- A hello names the peer and says where it listens: calls to that name or address now
-- use this connection instead of dialing a second one.
function introduce(peer, name, address)
   peer.greeted = true
   peer.introduced:broadcast()
   if name == "" then return end
   peer.name = name
   local other = peers[name]
   if other and other.alive and other ~= peer then
      settle_duplicate(other, peer)
      if peers[name] ~= peer then return end
   else
      bind(peer, name)
   end
   for _, key in ipairs(address and address_keys(peer, address) or {}) do
      local holder = peers[key]
      if not (holder and holder.alive) then bind(peer, key) end
   end
end

-- The cluster token handshake (docs/PROTOCOL.md, "Cluster token"). A proof covers both
-- nonces and the prover's role, and a hello that carries one of our own outstanding
-- nonces is refused: a proof obtained on one connection is useless on any other.

local function auth_text(peer, mine)
   local dialer = peer.dialed == mine       -- is the prover the side that dialed?
   local verifier_nonce = mine and peer.their_nonce or peer.my_nonce
   local prover_nonce = mine and peer.my_nonce or peer.their_nonce
   return "luanet auth v1\0" .. (dialer and "dialer" or "acceptor") .. "\0" .. verifier_nonce .. prover_nonce
end

local function proof(peer, mine) return core.hmac_sha256(config.token, auth_text(peer, mine)) end

local function on_notify(peer, method, params)
   if type(method) ~= "string" or not is_array(params) then return false end
   if method == "luanet.msg" and peer.authed then
      -- Blocks this reader while the inbox is full: the peer's sends back up to its own
      -- outbox limit and hold its sending tasks (memory stays bounded end to end).
      get_inbox():put(params[2], peer.name or peer.key)
   elseif method == "luanet.hello" then
      local name, address, nonce = params[1], params[2], params[3]
      if type(name) ~= "string" or peer.hello then return true end
      peer.hello = { name = name, address = type(address) == "string" and address or nil }
      if not config.token then
         introduce(peer, name, peer.hello.address)
      elseif not peer.my_nonce then
         return false, "the cluster token was configured after this connection opened"
      elseif type(nonce) ~= "string" or #nonce < 16 then
         return false, "the peer did not offer to prove it holds the cluster token"
      elseif issued_nonces[nonce] then
         return false, "the peer sent back one of our own nonces (a reflection attempt)"
      else
         peer.their_nonce = nonce
         peer.conn:write_array(NOTIFY, "luanet.auth", luanet.array { proof(peer, true) })
      end
   elseif method == "luanet.auth" then
      if not config.token then return true end
      local got = params[1]
      if peer.authed or not peer.their_nonce or type(got) ~= "string"
         or not core.hmac_verify(config.token, auth_text(peer, false), got) then
         return false, "wrong cluster token"
      end
      peer.authed = true
      issued_nonces[peer.my_nonce] = nil
      introduce(peer, peer.hello.name, peer.hello.address)
   elseif method ~= "luanet.ping" then
      if not peer.authed then return false, "not authenticated" end
      local hook = internal.notify[method]
      if hook then hook(peer, params) end
   end
   return true
end

-- A connection that has been silent for three heartbeats is dead even if its port is
-- still open (a frozen or cut-off peer). Pings come from a task of their own, so a peer
-- whose reader is held back by a full inbox still shows it is alive.
local NO_PARAMS = luanet.array()

local function idle_duplicate(peer)
   return peer.retired and peer.dialed and next(peer.pending) == nil and peer.handling == 0
      and core.now() - peer.used >= 2 * config.heartbeat
end

local function pinger(peer)
   while peer.alive do
      core.suspend(config.heartbeat, "heartbeat", false, true)
      if idle_duplicate(peer) then return lose(peer, "replaced by another connection") end
      if not peer.authed and core.now() - peer.started > config.connect_timeout then
         core.report(("connection %s: did not prove it holds the cluster token; closing it"):format(peer.key))
         return lose(peer, "not authenticated")
      end
      if peer.alive then peer.conn:write_array(NOTIFY, "luanet.ping", NO_PARAMS) end
   end
end

local function check_alive(peer)
   if core.now() - peer.heard >= 3 * config.heartbeat - 0.001 then
      core.report(("connection %s: no sign of life for %g s; closing it"):format(peer.name or peer.key, 3 * config.heartbeat))
      lose(peer, "heartbeat timeout")
   end
end

local function reader(peer)
   local conn = peer.conn
   while peer.alive do
      -- The envelope's elements come back as values: no table per message.
      -- Pings arrive every heartbeat: three heartbeats of silence mean the peer is gone.
      local n, kind, a, b, c = conn:read_array(3 * config.heartbeat)
      if n == nil then
         if kind == "timeout" then
            check_alive(peer)
         else
            if kind ~= "closed" and kind ~= "connection reset" then
               core.report(("connection %s: %s (%s)"):format(peer.name or peer.key, kind, tostring(a)))
            end
            return lose(peer, kind)
         end
      else
         peer.heard = core.now()
         local ok, why = false, nil
         if kind == NOTIFY and n == 3 then ok, why = on_notify(peer, a, b)
         elseif not peer.authed then why = "not authenticated"
         elseif kind == RESPONSE and n == 4 then ok = on_response(peer, a, b, c)
         elseif kind == REQUEST and n == 4 then ok = on_request(peer, a, b, c)
         end
         if not ok then
            core.report(("connection %s: %s; closing it"):format(peer.name or peer.key,
               why or "not a MessagePack-RPC message"))
            return lose(peer, why or "protocol error")
         end
      end
   end
end

-- A new connection: say who we are, then read what comes and keep it alive.
local function greet(peer)
   local hello = luanet.array { self_name or "", self_address }
   if config.token then
      peer.my_nonce = core.random_bytes(16)
      issued_nonces[peer.my_nonce] = true
      hello[2], hello[3] = self_address or false, peer.my_nonce
   end
   peer.conn:write_array(NOTIFY, "luanet.hello", hello)
   luanet.spawn(reader, peer)
   luanet.spawn(pinger, peer)
end

---------------------------------------------------------------------------------------
-- Finding a peer: an address connects (one connect shared by concurrent callers); a name
-- is a peer that introduced itself (the name service will resolve the rest).
---------------------------------------------------------------------------------------

local connecting = {}            -- key -> cond of callers waiting for that connect
-- Reconnect with backoff: after a failed connect, calls to that address fail at once
-- until the next attempt is due (50 ms, doubling to 1 s), so a dead address is not
-- hammered and a restarted service is reached again within a second.
local backoff = {}               -- key -> { next = time, delay = seconds, why = text }
local BACKOFF_FIRST, BACKOFF_MAX = 0.05, 1

-- "tcp://host:port", "unix:/path", or a bare "host:port" / "/path" / "@name"; anything
-- else is a service name.
local function address_of(target)
   if target:sub(1, 6) == "tcp://" then return target:sub(7), "tcp" end
   if target:sub(1, 5) == "unix:" then return target:sub(6), "unix" end
   local first = target:sub(1, 1)
   if first == "/" or first == "@" or target:sub(1, 2) == "./" then return target, "unix" end
   if target:match("^%[?[%w%.:%-]+%]?:%d+$") then return target, "tcp" end
   return nil
end

-- Waits until the peer's hello (and, with a cluster token, its proof) has arrived.
local function await_introduction(peer, deadline)
   while peer.alive and not peer.greeted do
      if not peer.introduced:wait(deadline and math.max(0, deadline - core.now()), "luanet hello") then
         return fail("timeout", "the peer did not introduce itself")
      end
   end
   if not peer.alive then
      local why = peer.lost_why
      if why == "closed" or why == "connection reset" then
         why = why .. (config.token and ": does it hold the same cluster token?" or " before it said hello")
      end
      return fail("connection lost", why)
   end
   return true
end

local get_peer

-- A name: where the name service says it is, checked against the hello found there.
local function get_named_peer(name, deadline)
   if not internal.resolve then
      return fail("no such service", ("no service is known as '%s' (no name service is configured)"):format(name))
   end
   local address, word, detail = internal.resolve(name, deadline)
   if not address then return fail(word, detail) end
   local peer, ok
   peer, word, detail = get_peer(address, deadline)
   if peer then
      ok, word, detail = await_introduction(peer, deadline)
      if ok and peer.name ~= name then
         ok, word, detail = false, "no such service",
            ("%s serves %s now, not %s"):format(address, tostring(peer.name), name)
      end
   end
   if not (peer and ok) then
      internal.forget(name)
      return fail(word, detail)
   end
   if peers[name] ~= peer then bind(peer, name) end
   return peer
end

function get_peer(target, deadline)
   local peer = peers[target]
   if peer and peer.alive then
      if peer.authed then return peer end
      local ok, word, detail = await_introduction(peer, deadline)
      if not ok then return fail(word, detail) end
      return peer
   end
   local addr, kind = address_of(target)
   if not addr then return get_named_peer(target, deadline) end
   local waiting = connecting[target]
   if waiting then
      local ok = waiting:wait(deadline and math.max(0, deadline - core.now()), "RPCCall")
      if not ok then return fail("timeout", "connecting to " .. target) end
      peer = peers[target]
      if peer and peer.alive then return peer end
      return fail("no such service", "could not connect to " .. target)
   end
   local failed = backoff[target]
   if failed and core.now() < failed.next then
      return fail("no such service", ("%s (next try in %.2f s)"):format(failed.why, failed.next - core.now()))
   end
   waiting = luanet.cond()
   connecting[target] = waiting
   local timeout = math.min(config.connect_timeout, deadline and math.max(0, deadline - core.now()) or math.huge)
   local conn, word, detail
   if kind == "tcp" then
      conn, word, detail = luanet.tcp.connect(addr, { timeout = timeout })
   else
      conn, word, detail = luanet.unix.connect(addr, { timeout = timeout })
   end
   connecting[target] = nil
   if conn then
      backoff[target] = nil
      peer = new_peer(conn, target, true)
      greet(peer)
      if config.token then
         -- Nothing is sent to a peer before it has proved it holds the token.
         local ok
         ok, word, detail = await_introduction(peer, deadline)
         if not ok then
            lose(peer, word)
            backoff[target] = { next = core.now() + BACKOFF_MAX, delay = BACKOFF_MAX,
               why = ("%s: %s"):format(target, detail) }
            waiting:broadcast()
            return fail(word, detail)
         end
      end
   else
      local delay = failed and math.min(failed.delay * 2, BACKOFF_MAX) or BACKOFF_FIRST
      backoff[target] = { next = core.now() + delay, delay = delay, why = ("%s: %s"):format(target, word) }
   end
   waiting:broadcast()
   if not conn then
      if word == "timeout" then return fail("timeout", "connecting to " .. target) end
      return fail("no such service", ("%s: %s"):format(target, word))
   end
   return peer
end

---------------------------------------------------------------------------------------
-- The public calls
---------------------------------------------------------------------------------------

-- A live connection to `target` with room in its outbox, and what is left of `timeout`.
-- The common case (connected, with room) reads no clock.
local function ready_peer(target, timeout)
   local peer = peers[target]
   if peer and peer.alive and peer.authed and peer.conn:buffered() <= config.outbox then return peer, timeout end
   local deadline = core.now() + timeout
   local word, detail, ok
   peer, word, detail = get_peer(target, deadline)
   if not peer then return nil, word, detail end
   ok, word, detail = make_room(peer, deadline)
   if not ok then return nil, word, detail end
   return peer, math.max(0, deadline - core.now())
end

-- A write that failed: an encode error is the caller's value; anything else lost the
-- connection.
local function write_failed(peer, word, detail)
   if word == "encode error" then return fail("encode error", detail) end
   lose(peer, word)
   return fail("connection lost", tostring(detail))
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
   luanet.spawn(function()
      while true do
         local conn, aerr = listener:accept()
         if conn then
            next_conn = next_conn + 1
            local peer = new_peer(conn, "conn:" .. next_conn, false)
            greet(peer)
         elseif aerr == "closed" then
            return
         else
            core.report("StartLocalService: accept failed: " .. tostring(aerr))
            luanet.sleep(0.05)
         end
      end
   end)
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
function internal.peer(key) return peers[key] end
internal.await_introduction = await_introduction

--- RPCCall(target, fname, args..., [luanet.call_options{timeout = s}]) -> result | nil, word, detail
function luanet.RPCCall(target, fname, ...)
   if type(target) ~= "string" then
      error("RPCCall: bad argument #1 'target' (string expected, got " .. type(target) .. ")", 2)
   end
   if type(fname) ~= "string" then
      error("RPCCall: bad argument #2 'fname' (string expected, got " .. type(fname) .. ")", 2)
   end
   local nargs = select("#", ...)
   local timeout = config.call_timeout
   if nargs > 0 then
      local last = select(nargs, ...)
      if getmetatable(last) == Options then
         timeout = last.timeout or timeout
         nargs = nargs - 1
      end
   end
   local peer, left, detail = ready_peer(target, timeout)
   if not peer then return nil, left, detail end
   peer.next_id = (peer.next_id + 1) & 0xffffffff
   local msgid = peer.next_id
   local ok, word
   ok, word, detail = peer.conn:write_call(3, nargs, REQUEST, msgid, fname, ...)
   if not ok then return write_failed(peer, word, detail) end
   local id, wait = core.prepare_wait("RPCCall")
   local w = { id = id, wait = wait }
   peer.pending[msgid] = w
   ok = core.suspend(left, "RPCCall")
   if not ok then
      peer.pending[msgid] = nil
      return fail("timeout", ("%s.%s did not answer within %g s"):format(target, fname, timeout))
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

--- SendMsg(target, msg) -> true | nil, word, detail
function luanet.SendMsg(target, msg)
   if type(target) ~= "string" then
      error("SendMsg: bad argument #1 'target' (string expected, got " .. type(target) .. ")", 2)
   end
   if msg == nil then error("SendMsg: bad argument #2 'msg' (any value but nil expected)", 2) end
   local peer, word, detail = ready_peer(target, config.call_timeout)
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
   local connections, waiting = 0, 0
   for peer in pairs(live) do
      connections = connections + 1
      for _ in pairs(peer.pending) do waiting = waiting + 1 end
   end
   return {
      connections = connections, calls_waiting = waiting, handlers = active_handlers,
      inbox = inbox and inbox.count or 0, replaced = replaced,
   }
end

return internal

end
