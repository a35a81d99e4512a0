-- Connections between luanet processes (docs/services.md "Connections",
-- docs/PROTOCOL.md): one per pair of peers, used both ways. Here: dialing with backoff,
-- the hello and the cluster token, settling duplicate connections, heartbeats, and the
-- reader that hands each message to the services layer (luanet/service.lua) or to a
-- notification hook. A peer is the table this file keeps for one connection.

local core = require "luanet.core"

return function(luanet, internal)

local REQUEST, RESPONSE, NOTIFY = 0, 1, 2
local config = internal.config

local peers = {}              -- address or name -> peer (a peer has several keys)
local live = {}               -- peer -> true while its connection is open
local replaced = 0            -- duplicate connections retired (service_stats)
local issued_nonces = {}      -- cluster token nonce we sent -> its peer, until that peer authenticates
local unauthenticated = 0     -- accepted connections that have not proved the token yet

-- With a cluster token: the largest message accepted before a peer has proved it holds
-- the token (a hello or a proof is far smaller), and how many such peers may wait at once.
local UNAUTHENTICATED_MESSAGE = 1024
local MAX_UNAUTHENTICATED = 64
local NONCE = 16              -- bytes; fixed, so the concatenations in a proof are unambiguous

local function fail(word, detail) return nil, word, detail end
local introduce               -- defined with the notifications

-- TLS between services, opt-in (docs/tls.md, "Between services"): TCP connections this
-- process accepts (with a certificate) and dials are TLS; Unix ones stay local and plain.
local tls_server, tls_client, tls_server_name

local TLS_KEYS = { cert = true, key = true, ca = true, verify = true, server_name = true, mutual = true }

function internal.set_tls(t)
   if t == false then
      tls_server, tls_client, tls_server_name = nil, nil, nil
      return
   end
   if type(t) ~= "table" then
      error("luanet.configure: 'tls' must be a table of TLS settings, or false for none", 3)
   end
   for k in pairs(t) do
      if not TLS_KEYS[k] then error("luanet.configure: tls: unknown setting '" .. tostring(k) .. "'", 3) end
   end
   if (t.cert == nil) ~= (t.key == nil) then error("luanet.configure: tls: 'cert' and 'key' go together", 3) end
   if t.mutual and not (t.cert and t.ca) then
      error("luanet.configure: tls: 'mutual' needs this process's own 'cert' and 'key', and 'ca' (the cluster's CA, which signs every member's certificate)", 3)
   end
   local client, _, detail = core.tls_client_config {
      ca = t.ca, verify = t.verify, cert = t.mutual and t.cert or nil, key = t.mutual and t.key or nil,
   }
   if not client then error("luanet.configure: tls: " .. tostring(detail), 3) end
   local server
   if t.cert then
      server, _, detail = core.tls_server_config {
         cert = t.cert, key = t.key, client_ca = t.mutual and t.ca or nil,
      }
      if not server then error("luanet.configure: tls: " .. tostring(detail), 3) end
   end
   tls_server, tls_client, tls_server_name = server, client, t.server_name
end

-- Two connections lead to the same process when their hellos give the same name and the
-- same listening address. A name alone is not enough: several name services all call
-- themselves luanet.names, and a restarted service may briefly overlap its old self.
local function same_service(a, b)
   local ha, hb = a.hello, b.hello
   return a.name == b.name and ha ~= nil and hb ~= nil and ha.address ~= nil and ha.address == hb.address
end

-- Decoded arrays carry this metatable (docs/codec.md): checking it here saves a C call
-- per message.
local ARRAY_MT = getmetatable(luanet.array())
local function is_array(t) return getmetatable(t) == ARRAY_MT end
internal.is_array = is_array

-- Makes `key` (an address or a name) lead to `peer`; lose() undoes it.
local function bind(peer, key)
   peers[key] = peer
   peer.keys[#peer.keys + 1] = key
end

local function new_peer(conn, key, dialed)
   local peer = {
      conn = conn, key = key, keys = {}, name = nil, alive = true, dialed = dialed,
      pending = {}, waiting = 0, next_id = 0, drained = luanet.cond(), draining = false, handling = 0,
      -- With a cluster token, nothing but hello, auth and ping is accepted until the peer
      -- has proved it holds the token (see on_auth).
      authed = not config.token, introduced = luanet.cond(),
   }
   conn:set_cork(true)                -- many calls in flight, one send per loop turn
   conn:set_high_water(1 << 40)       -- this layer bounds the outbox itself (config.outbox)
   conn:set_background(true)          -- an open connection alone does not keep run() going
   if not peer.authed then conn:set_message_limit(UNAUTHENTICATED_MESSAGE) end
   peer.started = core.now()
   live[peer] = true
   bind(peer, key)
   return peer
end

-- The connection is gone: every call waiting on it fails now, not at its timeout.
-- `leave_socket`: forget the peer but leave its socket to close by itself, so that at
-- lua_close the graceful end (send what is queued, read until the peer closes) still runs.
local function lose(peer, why, leave_socket)
   if not peer.alive then return end
   peer.alive = false
   live[peer] = nil
   -- A retired duplicate to the same service takes over what this one served.
   local heir
   for other in pairs(live) do
      if other.retired and same_service(other, peer) then heir = other break end
   end
   if heir then heir.retired = false end
   for _, key in ipairs(peer.keys) do
      if peers[key] == peer then
         if heir then bind(heir, key) else peers[key] = nil end
      end
   end
   if not leave_socket then peer.conn:close() end
   for msgid, w in pairs(peer.pending) do
      peer.pending[msgid] = nil
      w.lost = why or "closed"
      core.wake(w.id, w.wait)
   end
   peer.waiting = 0
   peer.lost_why = why or "closed"
   if peer.my_nonce then issued_nonces[peer.my_nonce] = nil end
   if peer.counted_unauthenticated then unauthenticated = unauthenticated - 1 end
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
      -- Look again every quarter heartbeat: the flush above wakes us only once the whole
      -- queue is in the kernel, which a peer that reads slowly may never allow, while
      -- getting under the limit is enough to go on.
      local left = deadline and deadline - core.now()
      if left and left <= 0 then return fail("timeout", "the peer is not reading fast enough") end
      peer.drained:wait(math.min(left or math.huge, config.heartbeat / 4), "luanet send")
   end
   if not peer.alive then return fail("connection lost", "the connection closed") end
   return true
end

-- The spellings of a peer's advertised listening address that a caller may use as a
-- target. An unspecified host (0.0.0.0, [::]) means "where this connection comes from".
local function address_keys(peer, address)
   local path = address:match("^unix:(.+)$")
   if path then return { address, path } end
   local host, port = address:match("^tcp://(.+):(%d+)$")
   if not host then return {} end
   local from = peer.conn:peer_addr()
   local source = from and from:match("^(.+):%d+$")
   if host == "0.0.0.0" or host == "[::]" then
      host = source
      if not host then return {} end
   elseif not peer.authed_by_token and host ~= source then
      -- Without a cluster token nothing proves the claim: a peer may only speak for an
      -- address on the host it connects from, so it cannot capture calls meant for
      -- another machine's services.
      return {}
   end
   local hostport = host .. ":" .. port
   return { "tcp://" .. hostport, hostport }
end

-- The two ends of one connection, when a process connects to itself (so both are here).
-- Its own nonce coming back on such a connection is no attack, and its two ends are not
-- duplicates of each other.
local function is_self_connection(a, b)
   a, b = a.conn, b.conn
   local al, ar, bl, br = a:local_addr(), a:peer_addr(), b:local_addr(), b:peer_addr()
   return al ~= nil and ar ~= nil and al == br and ar == bl
end

-- Who dialed a connection: the tie-break below needs both ends to agree.
local function dialer_of(peer)
   if peer.dialed then return internal.name or "" end
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
      if same_service(other, peer) and not is_self_connection(other, peer) then
         settle_duplicate(other, peer)
         if peers[name] ~= peer then return end
      end
      -- Otherwise another process uses the same name: the name keeps leading where it
      -- did; this connection is still found by its address.
   else
      bind(peer, name)
   end
   for _, key in ipairs(address and address_keys(peer, address) or {}) do
      local holder = peers[key]
      if not (holder and holder.alive) then bind(peer, key) end
   end
end

-- The cluster token handshake (docs/PROTOCOL.md, "Cluster token"). A proof covers both
-- fixed-length nonces and the prover's role, and a hello that carries one of our own
-- outstanding nonces is refused, so nobody can make us prove for a nonce of their choosing
-- and replay it. It authenticates the ends once; it does not protect what follows.

local function auth_text(peer, mine)
   local dialer = peer.dialed == mine       -- is the prover the side that dialed?
   local verifier_nonce = mine and peer.their_nonce or peer.my_nonce
   local prover_nonce = mine and peer.my_nonce or peer.their_nonce
   return "luanet auth v1\0" .. (dialer and "dialer" or "acceptor") .. "\0" .. verifier_nonce .. prover_nonce
end

local function proof(peer, mine) return core.hmac_sha256(config.token, auth_text(peer, mine)) end

local function on_notify(peer, method, params)
   if type(method) ~= "string" or not is_array(params) then return false end
   if method == "luanet.hello" then
      local name, address, nonce = params[1], params[2], params[3]
      if type(name) ~= "string" or peer.hello then return true end
      peer.hello = { name = name, address = type(address) == "string" and address or nil }
      if not config.token then
         introduce(peer, name, peer.hello.address)
      elseif not peer.my_nonce then
         return false, "the cluster token was configured after this connection opened"
      elseif type(nonce) ~= "string" or #nonce ~= NONCE then
         return false, "the peer did not offer to prove it holds the cluster token"
      elseif issued_nonces[nonce] and not is_self_connection(issued_nonces[nonce], peer) then
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
      peer.authed, peer.authed_by_token = true, true
      issued_nonces[peer.my_nonce] = nil
      if peer.counted_unauthenticated then
         peer.counted_unauthenticated = false
         unauthenticated = unauthenticated - 1
      end
      peer.conn:set_message_limit(1 << 31)     -- from now on, the codec's max_size
      introduce(peer, peer.hello.name, peer.hello.address)
   elseif method ~= "luanet.ping" then
      if not peer.authed then return false, "not authenticated" end
      local hook = internal.notify[method]
      if hook then
         local ok, why = hook(peer, params)
         if ok == false then return false, why end
      end
   end
   return true
end

-- A connection that has been silent for three heartbeats is dead even if its port is
-- still open (a frozen or cut-off peer). Pings come from a task of their own, so a peer
-- whose reader is held back by a full inbox still shows it is alive.
local NO_PARAMS = luanet.array()

local function idle_duplicate(peer)
   return peer.retired and peer.dialed and next(peer.pending) == nil and peer.handling == 0
      and not peer.held and core.now() - peer.used >= 2 * config.heartbeat
end

-- A peer that reads nothing of what we send for three heartbeats (our outbox to it stays
-- over its limit and does not shrink) is treated like one that sends nothing: without
-- this, replies and pings to a client that never reads would pile up without bound.
local function stopped_reading(peer)
   -- Progress is bytes taken by the kernel, not a shorter queue: a sender that refills
   -- the queue as fast as the peer drains it keeps the queue long with a reading peer.
   local queued, sent = peer.conn:buffered()
   if queued <= config.outbox or sent ~= peer.sent_before then
      peer.stalled_since, peer.sent_before = nil, sent
      return false
   end
   peer.stalled_since = peer.stalled_since or core.now()
   return core.now() - peer.stalled_since >= 3 * config.heartbeat - 0.001
end

local function pinger(peer)
   while peer.alive do
      core.suspend(config.heartbeat, "heartbeat", false, true)
      if idle_duplicate(peer) then return lose(peer, "replaced by another connection") end
      if not peer.authed and core.now() - peer.started > config.connect_timeout then
         core.report(("connection %s: did not prove it holds the cluster token; closing it"):format(peer.key))
         return lose(peer, "not authenticated")
      end
      if stopped_reading(peer) then
         core.report(("connection %s: the peer has read nothing for %g s; closing it")
            :format(peer.name or peer.key, 3 * config.heartbeat))
         return lose(peer, "the peer stopped reading")
      end
      if peer.alive then
         -- A failed ping means the peer is gone, even while our reader is held back by a
         -- full inbox and cannot see the connection end.
         local ok, word = peer.conn:write_array(NOTIFY, "luanet.ping", NO_PARAMS)
         if not ok then return lose(peer, word) end
      end
   end
end

local HANDLING_BATCH = 16

local function reader(peer)
   local conn = peer.conn
   local on_request, on_response = internal.on_request, internal.on_response
   -- However this task ends (an error in a hook, or closed by run() while it waited), the
   -- connection ends with it: a connection nobody reads would only time out its callers.
   local _ <close> = setmetatable({}, { __close = function() lose(peer, peer.lost_why or "reader ended", true) end })
   while peer.alive do
      -- The envelope's elements come back as values: no table per message.
      -- Pings arrive every heartbeat: a read that waits three heartbeats for anything at
      -- all means the peer is gone (no clock read per message is needed to tell).
      local n, kind, a, b, c = conn:read_array(3 * config.heartbeat)
      if n == nil then
         if kind == "timeout" then
            core.report(("connection %s: no sign of life for %g s; closing it")
               :format(peer.name or peer.key, 3 * config.heartbeat))
            return lose(peer, "heartbeat timeout")
         end
         if kind ~= "closed" and kind ~= "connection reset" then
            core.report(("connection %s: %s (%s)"):format(peer.name or peer.key, kind, tostring(a)))
         end
         return lose(peer, kind)
      else
         local ok, why = false, nil
         if kind == NOTIFY and n == 3 then ok, why = on_notify(peer, a, b)
         elseif not peer.authed then why = "not authenticated"
         elseif kind == RESPONSE and n == 4 then ok = on_response(peer, a, b, c)
         elseif kind == REQUEST and n == 4 then
            -- Requests make replies: take no more while the replies already queued to this
            -- peer are over the outbox limit (the pinger drops a peer that stopped reading).
            if conn:buffered() > config.outbox then make_room(peer, nil) end
            ok = on_request(peer, a, b, c)
            -- Requests read in one go would all be handed to workers before any replied,
            -- and their replies would queue past the outbox: every HANDLING_BATCH, let
            -- the workers run (and reply) so the check above sees what they queued.
            if peer.handling >= HANDLING_BATCH then luanet.yield() end
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
   local hello = luanet.array { internal.name or "", internal.address }
   if config.token then
      peer.my_nonce = core.random_bytes(16)
      issued_nonces[peer.my_nonce] = peer
      hello[2], hello[3] = internal.address or false, peer.my_nonce
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
local backoff_count, BACKOFF_SWEEP = 0, 1024   -- past this many entries, forget stale ones

local function remember_failure(target, entry)
   if not backoff[target] then backoff_count = backoff_count + 1 end
   backoff[target] = entry
   if backoff_count > BACKOFF_SWEEP then
      local now = core.now()
      for key, e in pairs(backoff) do
         if e.next + BACKOFF_MAX < now then
            backoff[key], backoff_count = nil, backoff_count - 1
         end
      end
   end
end

local function forget_failure(target)
   if backoff[target] then backoff[target], backoff_count = nil, backoff_count - 1 end
end

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
      if peer and peer.alive then return get_peer(target, deadline) end
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
   if kind == "tcp" and tls_client then
      conn, word, detail = luanet.tls.connect(addr, {
         timeout = timeout, config = tls_client, server_name = tls_server_name, handshake_timeout = timeout,
      })
      -- Why the handshake failed (a rejected certificate) is the useful part.
      if word == "tls error" then word = "tls error: " .. tostring(detail) end
   elseif kind == "tcp" then
      conn, word, detail = luanet.tcp.connect(addr, { timeout = timeout })
   else
      conn, word, detail = luanet.unix.connect(addr, { timeout = timeout })
   end
   connecting[target] = nil
   if conn then
      forget_failure(target)
      peer = new_peer(conn, target, true)
      greet(peer)
   else
      local delay = failed and math.min(failed.delay * 2, BACKOFF_MAX) or BACKOFF_FIRST
      remember_failure(target, { next = core.now() + delay, delay = delay, why = ("%s: %s"):format(target, word) })
   end
   waiting:broadcast()
   if not conn then
      if word == "timeout" then return fail("timeout", "connecting to " .. target) end
      return fail("no such service", ("%s: %s"):format(target, word))
   end
   if not peer.authed then
      -- Nothing is sent to a peer before it has proved it holds the token. This caller
      -- waits as long as its own deadline allows; the handshake itself has until
      -- connect_timeout (the pinger ends it then), whoever is waiting.
      local ok
      ok, word, detail = await_introduction(peer, deadline)
      if not ok then
         if not peer.alive then
            remember_failure(target, { next = core.now() + BACKOFF_MAX, delay = BACKOFF_MAX,
               why = ("%s: %s"):format(target, detail) })
         end
         return fail(word, detail)
      end
   end
   return peer
end

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

-- Accepts connections for the service; each says hello and gets its reader.
function internal.serve(listener)
   local accepted, turned_away = 0, 0
   local failing, failures, reported_at = false, 0, 0   -- a spell of failed accepts (EMFILE)
   local over_tcp = not luanet.is_unix_address(listener:local_addr())
   while true do
      local conn, aerr = listener:accept()
      if conn and failing then
         core.report(("StartLocalService: accepting again after %d failed accept(s)"):format(failures), "info")
         failing, failures = false, 0
      end
      if conn and config.token and unauthenticated >= MAX_UNAUTHENTICATED then
         -- Too many strangers are still to prove themselves: this one is not even greeted.
         conn:close()
         turned_away = turned_away + 1
         if turned_away == 1 or turned_away % 1000 == 0 then
            core.report(("StartLocalService: %d connection(s) turned away: %d are still to prove the cluster token")
               :format(turned_away, MAX_UNAUTHENTICATED))
         end
      elseif conn then
         accepted = accepted + 1
         if tls_server and over_tcp then
            -- The handshake runs as the reader reads (hello and replies wait for it), so
            -- a client that stalls it holds up only itself, until its heartbeat ends it.
            core.tls_wrap(conn, tls_server)
         end
         -- "#" keeps the key from ever reading as a host:port address.
         local peer = new_peer(conn, "conn#" .. accepted, false)
         if not peer.authed then
            peer.counted_unauthenticated = true
            unauthenticated = unauthenticated + 1
         end
         greet(peer)
      elseif aerr == "closed" then
         return
      else
         -- Out of descriptors, say: retried every 50 ms, reported once per spell and then
         -- once a minute, not once per retry.
         failures = failures + 1
         if not failing or core.now() - reported_at >= 60 then
            core.report(("StartLocalService: accept failed: %s (%d time(s) in this spell; retrying every 50 ms)")
               :format(tostring(aerr), failures))
            failing, reported_at = true, core.now()
         end
         luanet.sleep(0.05)
      end
   end
end

function internal.peer(key) return peers[key] end
internal.peers = peers        -- read-only for the others: the "least" group policy reads it per call

-- The live connection that takes over from `peer` (a duplicate of it), if any.
function internal.successor(peer)
   local next_peer = peer.name and peers[peer.name]
   if next_peer and next_peer ~= peer and next_peer.alive and same_service(next_peer, peer) then
      return next_peer
   end
end

-- Open connections, and the calls waiting on them (service_stats).
function internal.connection_stats()
   local connections, waiting = 0, 0
   for peer in pairs(live) do
      connections = connections + 1
      waiting = waiting + peer.waiting
   end
   return connections, waiting, replaced
end

internal.ready_peer = ready_peer
internal.write_failed = write_failed
internal.address_of = address_of

end
