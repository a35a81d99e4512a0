-- The `connection` fuzz target's Lua side (the Rust side: fuzz/properties.rs, connection).
--
-- Loaded once per process with (lua_dir, work_dir). It makes this Lua state a luanet
-- service "svc" on a Unix socket in work_dir, which also serves names, and returns
-- one(input) -> nil | failure text, which feeds one fuzz input to that service over a
-- raw connection and then checks that the service is still sound.
--
-- An input is three control bytes and then the bytes the peer sends:
--   byte 1, flags: 1 = a cluster token is configured (for this input's connections)
--                  2 = half-close after writing and read until the service closes;
--                      otherwise close at once, without reading anything
--                  4 = the harness says a proper hello first (with the token, the whole
--                      handshake), so the bytes reach an introduced, authenticated peer
--                  8 = two connections at once: the second write goes on the second
--                 16 = after the last write, give the service a few loop turns before
--                      closing (or half-closing), so its workers' replies go out while
--                      the connection is still up (otherwise a request that arrives with
--                      the end of the stream is run, but its reply is dropped)
--   bytes 2, 3:    where the bytes are cut into up to three writes (each byte times the
--                  length / 256); the service gets a few loop turns between writes.
-- Missing control bytes count as 0; other flag bits are ignored.
--
-- The property, for any input (each failure is a sentence naming what went wrong):
--   * nothing raises out of luanet.run and no task dies of an error (luanet logs task
--     errors under the logger "luanet" at level error; that is all this log keeps);
--   * everything ends within its timeout: nothing the peer sends can make the harness wait
--     past the heartbeat's 3 s (docs/PROTOCOL.md) plus slack;
--   * with a half-close, the service closes its side too (it sees the end of the stream,
--     or at worst three missed heartbeats);
--   * once the raw connections are closed, the service lets go of them: no connection and no
--     handler is left, the inbox is drained (this harness reads it as a service would),
--     and the name service holds no name and watches nothing for it (a registration
--     "lasts as long as the connection it was made over"); a group outlives its
--     watchers only while someone holds its lease;
--   * a brand-new, well-behaved client (its own connection, a hello, with the token the
--     whole handshake, checking the service's proof) gets the service's hello first and
--     then the right answer to Echo within 2 s;
--   * the Lua heap stays bounded (64 MiB after a full collection).

local lua_dir, work_dir = ...
package.path = lua_dir .. "/?.lua;" .. lua_dir .. "/?/init.lua"
package.cpath = ""          -- luanet.core is preloaded: never an installed core.so

local luanet = require "luanet"
local core = require "luanet.core"

local ARRAY = luanet.array
local REQUEST, RESPONSE, NOTIFY = 0, 1, 2

local NAME = "svc"
local SOCKET = work_dir .. "/svc.sock"
local ADDRESS = "unix:" .. SOCKET
local LOG = work_dir .. "/task-errors.log"
local TOKEN = "luanet connection fuzz: a cluster token of more than 128 bits"

local SETTLE = 5            -- s: three heartbeats (3 s) and slack
local GOOD_CALL = 2         -- s for the good client's whole exchange
local WATCHDOG = 20         -- s for one input, whatever happens
local HEAP_LIMIT = 64 * 1024  -- KiB

-- Only task errors are logged (the logger "luanet" at level error): connections closed
-- for a reason are warnings, and there is one of those per bad input.
assert(luanet.log.configure { file = LOG, levels = { luanet = "error" } })

-- Lines the writer has finished with. (Its `queued` counts other messages too, such as a
-- flush, so it is left out; callers flush first.)
local function log_lines()
   local s = luanet.log.stats()
   return s.written + s.dropped + s.failed
end

local function log_text()
   luanet.log.flush(2)
   local f = io.open(LOG, "rb")
   if not f then return "(the log cannot be read)" end
   local text = f:read("a")
   f:close()
   return text
end

---------------------------------------------------------------------------------------
-- The service: Echo, two ways to fail, a call back to the caller, and the name service.
---------------------------------------------------------------------------------------

-- The caller's name, when calling it back cannot dial anything (RPCCall dials a target
-- that reads as an address; a fuzz input must not make this process connect out).
local function callable(who)
   return type(who) == "string" and who ~= "" and not who:find("[:/@#]") and who:sub(1, 2) ~= "./"
end

local function start()
   assert(luanet.StartLocalService(NAME, ADDRESS))
   assert(luanet.StartNameService())      -- in this process: luanet.ns.* are its functions
   luanet.RegRPCFunction("Echo", function(...) return ... end)
   -- Raise(word, detail): luanet.error with a string word, a plain error with anything else.
   luanet.RegRPCFunction("Raise", function(word, detail)
      if type(word) == "string" and word ~= "" then luanet.error(word, detail) end
      error(word)
   end)
   -- CallBack(v): calls Echo(v) back on the caller, so that responses the peer sends can
   -- meet a call that waits for one (the first call back on a connection has msgid 1).
   luanet.RegRPCFunction("CallBack", function(v)
      local who = luanet.caller()
      if not callable(who) then return nil end
      local r, word = luanet.RPCCall(who, "Echo", v, luanet.call_options { timeout = 0.5 })
      if word then return word end
      return r
   end)
end

do
   -- The service's tasks stay with the loop: each input's run() goes on with them.
   local started, why
   assert(luanet.run(function()
      started, why = xpcall(start, debug.traceback)
      luanet.stop()
   end))
   assert(started, why)
   assert(luanet.service_name() == NAME, "the service did not start")
   assert(luanet.log.flush(5))
   assert(log_lines() == 0, "task errors while starting the service:\n" .. log_text())
end

---------------------------------------------------------------------------------------
-- Helpers for one input (all run inside the input's task)
---------------------------------------------------------------------------------------

local Failure = {}          -- a failed property, as opposed to a bug in this harness
local function fail(fmt, ...) error(setmetatable({ text = fmt:format(...) }, Failure), 0) end

local function show(v)
   if type(v) == "string" then return ("%q"):format(#v > 80 and v:sub(1, 80) .. "..." or v) end
   if type(v) ~= "table" then return tostring(v) end
   local parts = {}
   for k, x in pairs(v) do
      parts[#parts + 1] = tostring(k) .. "=" .. (type(x) == "table" and "{...}" or show(x))
      if #parts > 8 then parts[#parts + 1] = "..." break end
   end
   return "{" .. table.concat(parts, ", ") .. "}"
end

-- The harness reads the inbox as a service would (GetMsg): otherwise it fills up and
-- holds the connections that send to it, which is flow control, not a fault.
-- (GetMsg(0) on an empty inbox waits for a 0 s timer, up to a millisecond: ask first.)
local function drain()
   while luanet.service_stats().inbox > 0 do luanet.GetMsg(0) end
end

-- Waits until `done()` holds, giving the loop turns; false once `limit` seconds passed.
local function wait_until(done, limit)
   local deadline = core.now() + limit
   local spins = 0
   while true do
      drain()
      if done() then return true end
      if core.now() >= deadline then return false end
      spins = spins + 1
      -- First with zero-timeout polls (a close is usually seen at once), then politely.
      if spins < 64 then luanet.yield() else luanet.sleep(0.001) end
   end
end

local function settled()
   local st = luanet.service_stats()
   return st.connections == 0 and st.handlers == 0 and st.inbox == 0
end

local function settle(after)
   if not wait_until(settled, SETTLE) then
      fail("%s, the service still had %s after %g s", after, show(luanet.service_stats()), SETTLE)
   end
end

-- The next message on `c` that is not a ping, as n, kind, a, b, c.
local function next_message(c, deadline, who)
   while true do
      local left = deadline - core.now()
      if left <= 0 then fail("%s: nothing came from the service within its time", who) end
      local n, kind, a, b, d = c:read_array(left)
      if n == nil then fail("%s: reading from the service: %s (%s)", who, tostring(kind), tostring(a)) end
      if not (n == 3 and kind == NOTIFY and a == "luanet.ping") then return n, kind, a, b, d end
   end
end

-- A client's side of the greeting (docs/PROTOCOL.md, "luanet's notifications" and
-- "Cluster token"): the service speaks first; with the token, both prove it.
local function greet(c, name, token, deadline, who, check_proof)
   local n, kind, method, params = next_message(c, deadline, who)
   if n ~= 3 or kind ~= NOTIFY or method ~= "luanet.hello" or not luanet.is_array(params) then
      fail("%s: the service's first message was not its hello: %s %s %s", who, show(kind), show(method), show(params))
   end
   if params[1] ~= NAME or params[2] ~= ADDRESS then
      fail("%s: the service's hello says %s at %s", who, show(params[1]), show(params[2]))
   end
   if not token then
      c:write_array(NOTIFY, "luanet.hello", ARRAY { name })
      return
   end
   local theirs = params[3]
   if type(theirs) ~= "string" or #theirs ~= 16 then
      fail("%s: with a cluster token, the service's hello has no 16-byte nonce: %s", who, show(theirs))
   end
   local mine = core.random_bytes(16)
   c:write_array(NOTIFY, "luanet.hello", ARRAY { name, false, mine })
   c:write_array(NOTIFY, "luanet.auth",
      ARRAY { core.hmac_sha256(TOKEN, "luanet auth v1\0dialer\0" .. theirs .. mine) })
   if check_proof then
      n, kind, method, params = next_message(c, deadline, who)
      if n ~= 3 or kind ~= NOTIFY or method ~= "luanet.auth" or not luanet.is_array(params)
         or type(params[1]) ~= "string"
         or not core.hmac_verify(TOKEN, "luanet auth v1\0acceptor\0" .. mine .. theirs, params[1]) then
         fail("%s: the service did not prove the cluster token: %s %s", who, show(method), show(params))
      end
   end
end

-- The response to request `id` on `c`, as err, result (notifications are skipped).
local function response(c, id, deadline, who)
   while true do
      local n, kind, msgid, err, result = next_message(c, deadline, who)
      if n == 4 and kind == RESPONSE and msgid == id then return err, result end
      if kind ~= NOTIFY then
         fail("%s: waiting for response %d, got %s-element message %s %s", who, id, show(n), show(kind), show(msgid))
      end
   end
end

-- A brand-new, well-behaved client: Echo must answer, and the name service must hold
-- nothing for a connection that is gone.
local good_calls = 0
local function good_client(token)
   good_calls = good_calls + 1
   local who = "the good client"
   local deadline = core.now() + GOOD_CALL
   local c, word, detail = luanet.unix.connect(SOCKET, { timeout = GOOD_CALL })
   if not c then fail("%s could not connect: %s (%s)", who, tostring(word), tostring(detail)) end
   greet(c, "", token, deadline, who, true)
   local want = "echo #" .. good_calls
   c:write_array(REQUEST, 1, "Echo", ARRAY { want })
   local err, result = response(c, 1, deadline, who .. ", Echo")
   if err ~= nil or result ~= want then
      fail("%s: Echo(%q) answered error %s, result %s", who, want, show(err), show(result))
   end
   local id = 1
   local function call(method, ...)
      id = id + 1
      c:write_array(REQUEST, id, method, ARRAY { ... })
      return response(c, id, deadline, who .. ", " .. method)
   end
   err, result = call("luanet.ns.stats")
   if err ~= nil or type(result) ~= "table" then
      fail("%s: luanet.ns.stats answered error %s, result %s", who, show(err), show(result))
   end
   local left_over = ""
   if result.names ~= 0 then
      local _, names = call("luanet.ns.list")
      names = type(names) == "table" and names or {}
      for name, r in pairs(names) do
         left_over = left_over .. ("\n  %s at %s"):format(show(name), show(type(r) == "table" and r.address))
      end
   end
   if result.names ~= 0 or result.watched_names ~= 0 or not (result.groups <= result.leases) then
      fail("once every other connection had closed, the name service still held %s%s", show(result), left_over)
   end
   c:close()
end

---------------------------------------------------------------------------------------
-- One input
---------------------------------------------------------------------------------------

local function feed(data)
   local flags, cut1, cut2 = data:byte(1, 3)
   flags, cut1, cut2 = flags or 0, cut1 or 0, cut2 or 0
   local bytes = data:sub(4)
   local token = flags & 1 ~= 0
   local half_close = flags & 2 ~= 0
   local introduce = flags & 4 ~= 0
   local two = flags & 8 ~= 0
   local linger = flags & 16 ~= 0
   local deadline = core.now() + SETTLE

   -- The raw peer's connections: one, or two open at once (the second piece goes on the
   -- second), so that two hellos can meet (duplicates, twins, hand-overs).
   local conns = {}
   for i = 1, two and 2 or 1 do
      local c, word, detail = luanet.unix.connect(SOCKET, { timeout = 2 })
      if not c then fail("the raw peer could not connect: %s (%s)", tostring(word), tostring(detail)) end
      conns[i] = c
      if introduce then greet(c, "fz", token, deadline, "the raw peer", false) end
   end

   local a, b = cut1 * #bytes // 256, cut2 * #bytes // 256
   if a > b then a, b = b, a end
   local last, broken = nil, {}
   for i, piece in ipairs { bytes:sub(1, a), bytes:sub(a + 1, b), bytes:sub(b + 1) } do
      local c = conns[i == 2 and #conns or 1]
      if piece ~= "" and not broken[c] then
         if last then
            -- Let the service read what came so far (and its workers run) first.
            last:flush(2)
            for _ = 1, 4 do drain() luanet.yield() end
         end
         -- A write fails once the service has closed that connection (it may refuse the
         -- first piece already).
         if c:write(piece, 2) then last = c else broken[c] = true end
      end
   end

   if linger and last then
      last:flush(2)
      for _ = 1, 4 do drain() luanet.yield() end
   end
   if half_close then
      for _, c in ipairs(conns) do c:shutdown("write") end
      for _, c in ipairs(conns) do
         while true do
            local got, why = c:read(65536, 0.01)
            if not got then
               if why ~= "timeout" then break end
               drain()
               if core.now() >= deadline then
                  fail("after the peer half-closed, the service did not close its side within %g s (%s)",
                     SETTLE, show(luanet.service_stats()))
               end
            end
         end
      end
   end
   for _, c in ipairs(conns) do c:close() end
   settle("once the raw peer had closed")
   good_client(token)
   settle("once the good client had closed")
end

local inputs = 0
local configured_token = false

--- one(input) -> nil | failure text
return function(data)
   inputs = inputs + 1
   local token = (data:byte(1) or 0) & 1 ~= 0
   if token ~= configured_token then
      luanet.configure { token = token and TOKEN or false }
      configured_token = token
   end
   local lines_before = log_lines()
   local failure, finished = nil, false
   local done = luanet.cond()
   -- The watchdog: an input that keeps the loop busy past WATCHDOG stops it.
   luanet.spawn(function()
      if not done:wait(WATCHDOG) and not finished then
         failure = failure or ("the input was still running after %g s"):format(WATCHDOG)
         luanet.stop()
      end
   end)
   local ok, why = luanet.run(function()
      local ran, e = xpcall(feed, function(e)
         if getmetatable(e) == Failure then return e.text end
         return "harness error: " .. debug.traceback(tostring(e), 2)
      end, data)
      if not ran then failure = failure or e end
      finished = true
      done:signal()
      luanet.stop()
   end)
   if ok == nil and why == "interrupted" then return "interrupted" end
   if not finished then
      failure = failure or ("luanet.run returned %s, %s before the input's task ended"):format(tostring(ok), tostring(why))
   end
   -- Flushed first: a line the writer has taken but not yet counted is in neither count.
   luanet.log.flush(2)
   if log_lines() ~= lines_before then
      failure = (failure and failure .. "\n" or "") .. "a task died of an error:\n" .. log_text()
   end
   if not failure and collectgarbage("count") > HEAP_LIMIT then
      collectgarbage()
      local kib = collectgarbage("count")
      if kib > HEAP_LIMIT then
         failure = ("the Lua heap is %.1f MiB after a full collection (input #%d)"):format(kib / 1024, inputs)
      end
   end
   return failure
end
