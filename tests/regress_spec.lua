-- Regression tests, one per fixed bug: each says what went wrong and what fixed it.
-- Those that crashed or hung run in a child process (H.child kills it after a few seconds).
local luanet = require "luanet"
local H = require "helper"

-- Outside a task (around H.child, which blocks), poll a background child's file.
local function wait_file(child, name, seconds)
   for _ = 1, seconds * 20 do
      if child.file(name) ~= "" then return true end
      os.execute("sleep 0.05")
   end
   return false
end

local function child_ok(src, t, prefix)
   local r = H.child(src, t or 10, prefix)
   assert(r.ok, ("child failed (%s %s)\nstdout:\n%s\nstderr:\n%s"):format(tostring(r.how), tostring(r.code), r.out, r.err))
   return r
end

describe("regressions", function()
   -- Bug: wait numbers were counted per task from zero, and task slots are reused. A task
   -- that timed out reading a socket left its waiter on the socket; a new task in the same
   -- slot reached the same wait number while sleeping, and data arriving on that socket
   -- woke the sleep early. Fix: wait numbers come from one loop-wide counter.
   it("a stale socket waiter never wakes a later task that reuses the slot", function()
      local slept
      H.run(function()
         local l = assert(luanet.tcp.listen("127.0.0.1:0"))
         local client = assert(luanet.tcp.connect(l:local_addr(), { timeout = 1 }))
         local server = assert(l:accept(1))
         -- Task A: one wait on `server`, which times out; A then ends, freeing its slot.
         local a = luanet.spawn(function() assert(server:read(nil, 0.01) == nil) end)
         luanet.sleep(0.05)
         assert.equals("dead", coroutine.status(a))
         -- Task B (likely in A's old slot): its first wait is a sleep.
         luanet.spawn(function()
            local t0 = luanet.now()
            luanet.sleep(0.3)
            slept = luanet.now() - t0
         end)
         luanet.sleep(0.05)
         client:write("wake the stale waiter\n")   -- makes `server` readable
         luanet.sleep(0.4)
         client:close(); server:close(); l:close()
      end)
      assert.is_number(slept)
      assert.is_true(slept >= 0.3, ("the sleep ended after %.3f s"):format(slept))
   end)

   -- Bug: read_message built Lua values straight from the socket's receive buffer; a __gc
   -- run by one of those allocations closed the socket, freed the buffer, and the build
   -- read freed memory (segfault). Fix: copy the message into a Lua string first.
   it("a finalizer closing the socket during read_message cannot corrupt it", function()
      local r = child_ok([[
local luanet = require "luanet"
luanet.run(function()
  local l = assert(luanet.tcp.listen("127.0.0.1:0"))
  local c = assert(luanet.tcp.connect(l:local_addr()))
  local s = assert(l:accept())
  local big = {}
  for i = 1, 40000 do big[i] = ("item%06d"):format(i) end
  assert(c:write(luanet.pack(big)))
  luanet.sleep(0.1)
  collectgarbage("stop")
  local wrapper = setmetatable({ conn = s }, { __gc = function(w) w.conn:close() end })
  wrapper = nil
  collectgarbage("incremental", 0, 1000)
  collectgarbage("restart")
  local v = assert(s:read_message(1))
  local bad = 0
  for i = 1, #v do if v[i] ~= ("item%06d"):format(i) then bad = bad + 1 end end
  print(#v, bad)
end)]])
      assert.equals("40000\t0", r.out:match("[^\n]+"))
   end)

   -- Bug: the loop resumed a task's coroutine without checking it; one the user had run
   -- to completion made lua_resume call garbage (segfault). Fix: check, report, drop.
   it("a task resumed behind the loop's back is dropped, not resumed blind", function()
      local r = child_ok([[
local luanet = require "luanet"
local task = luanet.spawn(function() return 42 end)
print(coroutine.resume(task))
print(luanet.run())
]])
      assert.matches("true\t42", r.out)
      assert.matches("true\n$", r.out)
      assert.matches("resumed or closed outside luanet", r.err)
   end)

   -- Bug: a wait registered in a context whose yield never reached the loop stayed
   -- registered; the next wait counted twice and run() never returned. Fix: a new wait
   -- undoes an earlier one that never reached the loop.
   it("a swallowed yield leaves nothing registered", function()
      local r = child_ok([[
local luanet = require "luanet"
luanet.run(function()
  local l = assert(luanet.tcp.listen("127.0.0.1:0"))
  local gen = coroutine.wrap(function() l:accept() end)
  print("sort", pcall(table.sort, { 2, 1 }, function() gen() return true end))
  print("accept", l:accept(0.05))
  l:close()
end)
print("run returned")
]], 8)
      assert.matches("run returned", r.out)
   end)

   -- Bug: cond:wait listed its entry before checking it could block; a failed wait left
   -- an entry that a later signal() spent on an unrelated sleep, which ended at once.
   -- Fix: every check before listing; a sleep lasts to its deadline.
   it("a failed cond:wait leaves no entry, and a sleep cannot be cut short", function()
      local r = child_ok([[
local luanet = require "luanet"
luanet.run(function()
  local c = luanet.cond()
  print("wait in sort", pcall(table.sort, { 2, 1 }, function() c:wait(1) return true end))
  luanet.spawn(function() luanet.sleep(0.02) print("signal", c:signal()) end)
  local t0 = luanet.now()
  luanet.sleep(0.2)
  print(("slept %.2f"):format(luanet.now() - t0))
end)
]])
      assert.matches("signal\tfalse", r.out)
      local slept = tonumber(r.out:match("slept ([%d.]+)"))
      assert.is_true(slept >= 0.2, r.out)
   end)

   -- Bug: timed-out waits stayed in a condition's waiter list: polling a channel with
   -- short timeouts grew it without bound. Fix: a timed-out wait removes its entry.
   it("polling a channel with timeouts does not grow its waiter list", function()
      H.run(function()
         local ch = luanet.channel(1)
         for _ = 1, 2000 do assert(ch:recv(0) == nil) end
         assert.equals(0, ch.readers.last - ch.readers.first + 1)
      end)
   end)

   -- Bug: a second writer past the high-water mark got nil, "busy" although its bytes
   -- were already queued (a retry sent them twice). Fix: queued bytes mean success.
   it("a write whose bytes were queued never reports failure", function()
      H.run(function()
         local l = assert(luanet.tcp.listen("127.0.0.1:0"))
         local c = assert(luanet.tcp.connect(l:local_addr()))
         local s = assert(l:accept())
         -- Small kernel buffers, so that A's write really stays blocked.
         c:set_send_buffer(4096)
         s:set_recv_buffer(4096)
         c:set_high_water(1024)
         local results = {}
         luanet.spawn(function() results.a = { c:write(("A"):rep(256 * 1024), 10) } end)
         luanet.sleep(0.02)
         assert.is_nil(results.a, "A should be held by the high-water mark")
         luanet.spawn(function() results.b = { c:write("BBBB", 5) } end)
         luanet.sleep(0.02)
         assert.same({ true }, results.b)
         local got = assert(s:read_exact(256 * 1024 + 4, 15))
         assert.equals("BBBB", got:sub(-4))
         c:close(); s:close(); l:close()
      end, 20)
   end)

   -- Bug: unix.listen took a connect refused by a regular file for a dead socket and
   -- deleted the file. Fix: only a socket file is ever replaced.
   it("unix.listen never removes a file that is not a socket", function()
      local path = os.tmpname()
      local f = assert(io.open(path, "w")) f:write("user data") f:close()
      H.run(function()
         local l, word = luanet.unix.listen(path)
         assert.is_nil(l)
         assert.equals("address in use", word)
      end)
      local f2 = assert(io.open(path)) local text = f2:read("a") f2:close()
      os.remove(path)
      assert.equals("user data", text)
   end)

   -- Bug: loading luanet.core again (busted insulation) made a second loop; an old
   -- handle then named a new socket, and its __gc closed it. Fix: one loop per state.
   it("loading the core twice gives the same loop", function()
      local a = require "luanet.core"
      package.loaded["luanet.core"] = nil
      local b = require "luanet.core"
      assert.equals(a, b)
   end)

   -- Bug: a connect that could not wait (outside a task) raised and left its socket
   -- registered and open. Fix: it is closed.
   it("a connect that raises leaves no descriptor open", function()
      local r = child_ok([[
local luanet = require "luanet"
local function fds() local n = 0 for _ in io.popen("ls /proc/self/fd"):lines() do n = n + 1 end return n end
local l = assert(luanet.tcp.listen("127.0.0.1:0"))
local before = fds()
for _ = 1, 20 do pcall(luanet.tcp.connect, "127.0.0.1:9", {}) end
collectgarbage() collectgarbage()
print(fds() - before)
]])
      assert.equals("0", r.out:match("%-?%d+"))
   end)

   -- Bug: a process that sent messages and exited at once lost the receiver's unread
   -- tail: it closed with unread input (the receiver's heartbeats), the kernel reset the
   -- connection, and the reset made the receiver drop what it had not read yet. Also,
   -- the sockets' finalizers closed them before the loop's could end them gracefully.
   -- Fix: at lua_close, send FIN behind the queue and read until the peer closes (2 s at
   -- most); socket finalizers only queue their close.
   it("a sender that exits right after SendMsg loses nothing", function()
      local port = H.free_port()
      local sink = H.bg(([[
local luanet = require "luanet"
-- Receiver and sender on separate cores, as in a real deployment: the receiver then runs
-- a little behind the sender, which is when the reset lost messages.
local pid = io.open("/proc/self/stat"):read("n")
os.execute("taskset -p -c 0 " .. pid .. " >/dev/null 2>&1")
luanet.run(function()
  assert(luanet.StartLocalService("Sink", "127.0.0.1:%d"))
  local f = io.open("ready", "w") f:write("yes") f:close()
  local n = 0
  while true do
    local m = luanet.GetMsg()
    n = n + 1
    if m == "stop" then
      local out = io.open("count", "w") out:write(tostring(n)) out:close()
      os.exit(0)
    end
  end
end)]]):format(port))
      finally(sink.cleanup)   -- a sink that never got "stop" must not outlive the test
      assert.is_true(wait_file(sink, "ready", 5))
      local r = child_ok(([[
local luanet = require "luanet"
luanet.run(function()
  -- Full speed for 2 s: the receiver falls a little behind, and its heartbeats keep
  -- coming (a late one reaching a sender that already closed made its kernel reset).
  local sent, t0 = 0, luanet.now()
  while luanet.now() - t0 < 2 do
    for _ = 1, 1000 do sent = sent + 1 assert(luanet.SendMsg("127.0.0.1:%d", sent)) end
    luanet.yield()
  end
  assert(luanet.SendMsg("127.0.0.1:%d", "stop"))
  print("sent " .. (sent + 1))
end)]]):format(port, port), 20, "taskset -c 1")
      local sent = r.out:match("sent (%d+)")
      assert.is_string(sent, r.out)
      assert.is_true(wait_file(sink, "count", 10), "the sink never got 'stop'")
      assert.equals(sent, sink.file("count"))
   end)
end)
