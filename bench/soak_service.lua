-- A service for bench/soak: Echo, Sleep and Who for the callers, and an inbox reader that
-- checks the sequence numbers of the callers' messages.
-- usage: lua5.4 bench/soak_service.lua NAME HOST:PORT NAMESERVICE INCARNATION [REPORT_EVERY]
--
-- Messages (from bench/soak_caller.lua, which is not a service, so GetMsg's sender is the
-- connection's key, "conn#N", here):
--   { k = "n", s = SRC, q = SEQ, n = #p, p = payload }  sent to us by name. SEQ counts the
--       sends to us that SendMsg accepted (returned true), 1, 2, 3 ... per source.
--   { k = "g", s = SRC, q = SEQ, n = #p, p = payload }  sent to the group soak.* (round
--       robin or broadcast): we see some of SEQ; it must only grow.
--   { k = "probe", s = SRC, L = SEQ, id = ID }  sent by name behind the "n" messages: SRC
--       had SEQ of its sends to us accepted when it sent this. Answered with an "ack".
-- Within one incarnation of this process and one connection from SRC, the "n" sequence
-- must go 1 by 1: a gap is a message accepted on a connection that stayed up (we are up:
-- we read the next one) and never delivered; a repeat is a duplicate. A probe whose SEQ
-- is past the last one read on its own connection means the tail was lost the same way.
-- Across a change of connection while this process stays up (the caller never restarts),
-- a gap is counted apart (reconnect_gap): the connection between two live processes
-- dropped, and what was queued on it went with it.
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
package.path = dir .. "/?.lua;" .. package.path
local lib = require "soak_lib"
local luanet = require "luanet"

local name, addr, ns, inc = arg[1], arg[2], arg[3], arg[4]
local every = tonumber(arg[5] or "1")
io.stdout:setvbuf("line")

local c = {
   rpc = 0, recv_n = 0, recv_g = 0, bytes = 0, probes = 0,
   live_lost = 0,       -- gaps in "n" on one connection
   tail_lost = 0,       -- probes past the last "n" read on their connection
   dup = 0,             -- a sequence number again (or going back) on one connection, or
                        -- one already seen arriving over a new connection
   reconnects = 0,      -- a source's messages arriving over a new connection, we being up
   reconnect_gap = 0,   -- messages missing across such a change
   anomalies = 0,       -- a probe claiming fewer accepted sends than we read; a bad payload
   acks_failed = 0,
}
local streams = { n = {}, g = {} }   -- kind -> source -> { conn =, last =, max = }
local t0 = luanet.now()

local function event(ev, t)
   t.ev, t.svc, t.inc, t.t = ev, name, inc, luanet.now() - t0
   lib.emit("E", t)
end

-- One message (or a probe, `probe` = true) with sequence number `seq` from `src` over `conn`.
local function check(kind, src, seq, conn, probe)
   if math.type(seq) ~= "integer" then
      c.anomalies = c.anomalies + 1
      return event("anomaly", { src = src, why = "no sequence number" })
   end
   local st = streams[kind][src]
   if not st then
      -- The first we hear of src in this incarnation: what came before went to an earlier
      -- incarnation (or is lost with it), which is not ours to judge.
      streams[kind][src] = { conn = conn, last = seq, max = seq }
      return
   end
   if st.conn ~= conn then
      c.reconnects = c.reconnects + 1
      local gap = 0
      if kind == "n" then gap = math.max(0, seq - st.last - (probe and 0 or 1)) end
      if probe and seq < st.max then
         c.anomalies = c.anomalies + 1
         event("anomaly", { src = src, why = "read more than the sender says it sent", accepted = seq,
            read = st.max, conn = conn, old_conn = st.conn })
      elseif not probe and seq <= st.max then
         c.dup = c.dup + 1
         event("dup", { kind = kind, src = src, seq = seq, max = st.max, conn = conn, old_conn = st.conn })
      end
      c.reconnect_gap = c.reconnect_gap + gap
      event("reconnect", { kind = kind, src = src, old_conn = st.conn, conn = conn, last = st.last,
         seq = seq, gap = gap, probe = probe or nil })
      st.conn, st.last, st.max = conn, seq, math.max(st.max, seq)
      return
   end
   if kind == "g" then
      if seq <= st.last then
         c.dup = c.dup + 1
         event("dup", { kind = kind, src = src, seq = seq, last = st.last, conn = conn })
      else
         st.last, st.max = seq, math.max(st.max, seq)
      end
      return
   end
   if probe then
      if seq > st.last then
         c.tail_lost = c.tail_lost + (seq - st.last)
         event("tail_lost", { src = src, accepted = seq, read = st.last, conn = conn, n = seq - st.last })
         st.last, st.max = seq, math.max(st.max, seq)
      elseif seq < st.last then
         c.anomalies = c.anomalies + 1
         event("anomaly", { src = src, why = "read more than the sender says it sent", accepted = seq,
            read = st.last, conn = conn })
      end
      return
   end
   if seq == st.last + 1 then
      st.last = seq
   elseif seq > st.last + 1 then
      c.live_lost = c.live_lost + (seq - st.last - 1)
      event("lost", { src = src, expected = st.last + 1, got = seq, n = seq - st.last - 1, conn = conn })
      st.last = seq
   else
      c.dup = c.dup + 1
      event("dup", { kind = kind, src = src, seq = seq, last = st.last, conn = conn })
   end
   st.max = math.max(st.max, seq)
end

luanet.RegRPCFunction("Echo", function(x)
   c.rpc = c.rpc + 1
   return x
end)
luanet.RegRPCFunction("Sleep", function(d)
   c.rpc = c.rpc + 1
   luanet.sleep(d)
   return d
end)
luanet.RegRPCFunction("Who", function()
   c.rpc = c.rpc + 1
   return { name = name, inc = inc }
end)

local function report(tag)
   local s = luanet.service_stats()
   local t = { t = luanet.now() - t0, name = name, inc = inc, lua_kb = math.floor(collectgarbage("count")),
      conns = s.connections, inbox = s.inbox, handlers = s.handlers }
   for k, v in pairs(c) do t[k] = v end
   lib.emit(tag, t)
end

local ack_opts = luanet.call_options { timeout = 1 }

local ok, why, sig = luanet.run(function()
   local ok, word, detail = luanet.StartLocalService(name, addr)
   if not ok then
      io.stderr:write(("soak_service %s: cannot serve on %s: %s (%s)\n"):format(name, addr, word, detail))
      os.exit(2)
   end
   -- The previous incarnation's registration goes when its connection to the name service
   -- closes; until the name service has seen that, the name is taken.
   local deadline = luanet.now() + 15
   while true do
      ok, word, detail = luanet.Register2Name(ns)
      if ok then break end
      if luanet.now() > deadline then
         io.stderr:write(("soak_service %s: not registered: %s (%s)\n"):format(name, word, tostring(detail)))
         os.exit(3)
      end
      if word == "name taken" then luanet.sleep(0.1) else break end   -- else: retried in the background
   end
   lib.emit("R", { name = name, inc = inc, addr = luanet.service_listener:local_addr(),
      registered = ok and true or false, word = word })

   luanet.spawn(function()
      while true do
         luanet.sleep(every)
         report("P")
      end
   end)

   while true do
      local m, from = luanet.GetMsg()
      if type(m) ~= "table" then
         c.anomalies = c.anomalies + 1
         event("anomaly", { why = "not a table", what = tostring(m) })
      elseif m.k == "n" or m.k == "g" then
         if m.k == "n" then c.recv_n = c.recv_n + 1 else c.recv_g = c.recv_g + 1 end
         if type(m.p) ~= "string" or #m.p ~= m.n then
            c.anomalies = c.anomalies + 1
            event("anomaly", { why = "payload length", src = m.s, seq = m.q, want = m.n,
               got = type(m.p) == "string" and #m.p or type(m.p) })
         else
            c.bytes = c.bytes + m.n
         end
         check(m.k, m.s, m.q, from)
      elseif m.k == "probe" then
         c.probes = c.probes + 1
         check("n", m.s, m.L, from, true)
         local st = streams.n[m.s]
         luanet.spawn(function()
            if not luanet.SendMsg(from, { k = "ack", id = m.id, inc = inc, svc = name,
               read = st and st.last, conn = from }, ack_opts) then
               c.acks_failed = c.acks_failed + 1
            end
         end)
      else
         c.anomalies = c.anomalies + 1
         event("anomaly", { why = "unknown kind", kind = tostring(m.k) })
      end
   end
end)

-- SIGTERM (or SIGINT) stops the loop; say what we counted. The connections then end
-- gracefully as the script ends.
report("F")
if not ok and why ~= "interrupted" then io.stderr:write(("soak_service %s: run ended: %s %s\n"):format(name, tostring(why), tostring(sig))) end
