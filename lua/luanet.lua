-- luanet: the Lua face of the native core (luanet.core).
--
-- The core does the waiting: a blocking call registers the running task and yields a
-- private sentinel. This file adds what is easier said in Lua: tasks that report their
-- errors, a coroutine shim so user coroutines pass that sentinel through, channels and
-- conditions built on suspend/wake, and addresses that pick TCP or Unix by their form.
-- Reference: docs/core.md.

local core = require "luanet.core"

local luanet = { _VERSION = "luanet 0.1.0" }

local SENTINEL = core.SENTINEL
-- The originals, kept on the (per-state, cached) core so that loading this file again
-- does not wrap the shim in itself.
core.original_coroutine = core.original_coroutine or { resume = coroutine.resume, wrap = coroutine.wrap }
local co_create, co_resume, co_yield, co_status, co_close =
   coroutine.create, core.original_coroutine.resume, coroutine.yield, coroutine.status, coroutine.close
local pack, unpack = table.pack, table.unpack

---------------------------------------------------------------------------------------
-- Pass-through coroutines: when a user's coroutine blocks in luanet, it yields the
-- sentinel; we yield it on to the loop and hand the loop's answer back down.
---------------------------------------------------------------------------------------

-- Keeps every value an ordinary yield or return produced.
local function resume_all(co, ...)
   local r = pack(co_resume(co, ...))
   while r[1] and r[2] == SENTINEL and co_status(co) == "suspended" do
      r = pack(co_resume(co, co_yield(SENTINEL)))
   end
   return r
end

local function resume(co, ...)
   local r = resume_all(co, ...)
   return unpack(r, 1, r.n)
end

local function wrap(fn)
   local co = co_create(fn)
   return function(...)
      local r = resume_all(co, ...)
      if not r[1] then
         local err = r[2]
         co_close(co)
         error(err, type(err) == "string" and 2 or 0)
      end
      return unpack(r, 2, r.n)
   end
end

coroutine.resume = resume
coroutine.wrap = wrap
luanet.coroutine = { resume = resume, wrap = wrap }

---------------------------------------------------------------------------------------
-- Tasks and the loop
---------------------------------------------------------------------------------------

--- Starts `fn(...)` as a task; returns the task (a coroutine).
function luanet.spawn(fn, ...)
   if type(fn) ~= "function" then
      error("luanet.spawn: bad argument #1 'fn' (function expected, got " .. type(fn) .. ")", 2)
   end
   -- No wrapper frame: an idle task costs only its coroutine. An error is reported (with
   -- the traceback of the coroutine it killed) by the loop.
   local co = co_create(fn)
   core.spawn(co, ...)
   return co
end

--- Runs the loop until stopped or idle; with `fn`, spawns it first.
function luanet.run(fn, ...)
   if fn ~= nil then luanet.spawn(fn, ...) end
   return core.run()
end

luanet.stop = core.stop
luanet.now = core.now
luanet.running = core.running

function luanet.sleep(seconds)
   return core.sleep(seconds)
end

function luanet.yield()
   return core.sleep(0)
end

---------------------------------------------------------------------------------------
-- Conditions and channels: waiter lists of (task id, wait number) pairs; `core.wake`
-- ignores a pair whose wait is over (timed out, or the task moved on).
---------------------------------------------------------------------------------------

local Cond = {}
Cond.__index = Cond

function luanet.cond()
   return setmetatable({ first = 1, last = 0 }, Cond)
end

local function enqueue(c, what, timeout)
   local id, wait = core.prepare_wait(what, timeout)   -- raises before anything is listed
   local n = c.last + 1
   c.last = n
   local entry = { id, wait }
   c[n] = entry
   return entry
end

-- A wait that timed out takes its entry out, so polling with short timeouts cannot grow
-- the list (entries are few: a linear search from the newest end is enough).
local function forget(c, entry)
   for i = c.last, c.first, -1 do
      if c[i] == entry then
         table.move(c, i + 1, c.last, i)
         c[c.last] = nil
         c.last = c.last - 1
         if c.first > c.last then c.first, c.last = 1, 0 end
         return
      end
   end
end

local function dequeue(c)
   local i = c.first
   if i > c.last then return nil end
   local w = c[i]
   c[i] = nil
   c.first = i + 1
   if c.first > c.last then c.first, c.last = 1, 0 end
   return w
end

--- Waits for signal/broadcast; returns true, or nil, "timeout".
function Cond:wait(timeout, what)
   what = what or "cond:wait"
   local entry = enqueue(self, what, timeout)
   local ok, err = core.suspend(timeout, what)
   if not ok then forget(self, entry) end
   return ok, err
end

--- Wakes the longest-waiting task; returns whether there was one.
function Cond:signal()
   while true do
      local w = dequeue(self)
      if not w then return false end
      if core.wake(w[1], w[2]) then return true end
   end
end

--- Wakes every waiting task; returns how many.
function Cond:broadcast()
   local n = 0
   while true do
      local w = dequeue(self)
      if not w then return n end
      if core.wake(w[1], w[2]) then n = n + 1 end
   end
end

local Channel = {}
Channel.__index = Channel
Channel.__len = function(ch) return ch.count end

function luanet.channel(capacity)
   if capacity == nil then capacity = 64 end
   if math.type(capacity) ~= "integer" or capacity < 1 then
      error("luanet.channel: bad argument #1 'capacity' (an integer of 1 or more expected)", 2)
   end
   return setmetatable({
      capacity = capacity, count = 0, head = 1, items = {},
      closed = false, readers = luanet.cond(), writers = luanet.cond(),
   }, Channel)
end

-- The deadline-keeping loop shared by send and recv: wait on `cond` while `blocked()`.
local function wait_while(ch, cond, blocked, timeout, what)
   local deadline = timeout and (core.now() + timeout)
   while blocked() do
      if ch.closed then return nil, "closed" end
      local left = deadline and math.max(0, deadline - core.now())
      local ok, err = cond:wait(left, what)
      if not ok then return nil, err end
   end
   return true
end

function Channel:send(value, timeout)
   if value == nil then
      error("channel:send: bad argument #1 'value' (any value but nil expected)", 2)
   end
   if self.closed then return nil, "closed" end
   local ok, err = wait_while(self, self.writers, function() return self.count >= self.capacity end,
      timeout, "channel:send")
   if not ok then return nil, err end
   if self.closed then return nil, "closed" end
   self.items[(self.head + self.count - 1) % self.capacity + 1] = value
   self.count = self.count + 1
   self.readers:signal()
   return true
end

function Channel:recv(timeout)
   local ok, err = wait_while(self, self.readers, function() return self.count == 0 end,
      timeout, "channel:recv")
   if not ok then
      -- Values queued before close are still delivered.
      if err == "closed" and self.count > 0 then return self:recv(0) end
      return nil, err
   end
   local value = self.items[self.head]
   self.items[self.head] = nil
   self.head = self.head % self.capacity + 1
   self.count = self.count - 1
   self.writers:signal()
   return value
end

function Channel:close()
   self.closed = true
   self.readers:broadcast()
   self.writers:broadcast()
end

function Channel:len()
   return self.count
end

---------------------------------------------------------------------------------------
-- Lua values as MessagePack (docs/codec.md)
---------------------------------------------------------------------------------------

luanet.pack = core.pack
luanet.unpack = core.unpack
luanet.array = core.array
luanet.is_array = core.is_array
luanet.codec_limits = core.codec_limits

---------------------------------------------------------------------------------------
-- Sockets
---------------------------------------------------------------------------------------

--- Connects to the first address of `addr` that accepts: a name such as "localhost" can
--- have several (::1 and 127.0.0.1), and a server usually listens on only one of them.
local function tcp_connect(addr, opts)
   if type(addr) ~= "string" then
      error("luanet.tcp.connect: bad argument #1 'addr' (string expected, got " .. type(addr) .. ")", 2)
   end
   local targets, err, detail = core.resolve(addr)
   if not targets then return nil, err, detail end
   if #targets == 1 then return core.tcp_connect(targets[1], opts) end
   local timeout = type(opts) == "table" and opts.timeout
   local deadline = type(timeout) == "number" and core.now() + timeout
   for i, target in ipairs(targets) do
      local these = opts
      if deadline then
         these = {}
         for k, v in pairs(opts) do these[k] = v end
         these.timeout = math.max(0, deadline - core.now())
      end
      local conn
      conn, err, detail = core.tcp_connect(target, these)
      if conn or err == "timeout" or i == #targets then return conn, err, detail end
   end
end

luanet.resolve = core.resolve
luanet.tcp = { listen = core.tcp_listen, connect = tcp_connect }
luanet.udp = { bind = core.udp_bind, connect = core.udp_connect }
luanet.unix = {
   listen = core.unix_listen, connect = core.unix_connect,
   bind = core.unix_bind, datagram = core.unix_datagram,
}

--- Whether `addr` names a Unix socket: "unix:PATH", a path with "/", or "@name".
function luanet.is_unix_address(addr)
   return type(addr) == "string"
      and (addr:sub(1, 5) == "unix:" or addr:find("/", 1, true) ~= nil or addr:sub(1, 1) == "@")
end

function luanet.listen(addr, opts)
   if luanet.is_unix_address(addr) then return core.unix_listen(addr, opts) end
   return core.tcp_listen(addr, opts)
end

function luanet.connect(addr, opts)
   if luanet.is_unix_address(addr) then return core.unix_connect(addr, opts) end
   return tcp_connect(addr, opts)
end

-- TLS for TCP streams (docs/tls.md).
require("luanet.tls")(luanet, core)

-- Services, RPC and messages (docs/services.md).
local internal = require("luanet.service")(luanet)
-- Services by name (docs/names.md): the resolver and registration, and the name service.
require("luanet.names")(luanet, internal)
require("luanet.nameservice")(luanet, internal)
-- Calls to groups of services and the master lease (docs/groups.md).
require("luanet.groups")(luanet, internal)
require("luanet.master")(luanet, internal)
-- Asynchronous logging (docs/log.md).
require("luanet.log")(luanet)

return luanet
