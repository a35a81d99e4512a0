-- A caller for bench/soak: for SECONDS, RPC calls (by name, to the group soak.* with
-- each policy, with call_options timeouts) and messages (by name with sequence numbers,
-- and to the group) from several tasks; a progress line every second; at the end,
-- a last probe to every receiver and a final report.
-- usage: lua5.4 bench/soak_caller.lua ID NAMESERVICE SECONDS
-- Knobs (environment): SOAK_PACE (seconds between one task's calls, 0.002),
-- SOAK_MSG_RATE (messages a second to each receiver, 200).
--
-- Output lines (TAG {json}): P progress (cumulative counts), E an event (a hang, a wrong
-- reply), F the final report. A call "hangs" when it takes longer than its bound + 1 s:
-- the bound is its timeout (times the tries for an idempotent group call with retries).
-- The progress task also reports a call still in flight past that, so a call that never
-- returns is seen; a caller whose loop stops prints nothing, which the driver sees.
local dir = arg[0]:match("^(.*)/[^/]*$") or "."
package.path = dir .. "/?.lua;" .. package.path
local lib = require "soak_lib"
local luanet = require "luanet"

local ID, NS, SECONDS = arg[1], arg[2], tonumber(arg[3] or "60")
local PACE = tonumber(os.getenv("SOAK_PACE") or "0.002")
local MSG_RATE = tonumber(os.getenv("SOAK_MSG_RATE") or "200")
io.stdout:setvbuf("line")
math.randomseed(os.time() + tonumber(ID:match("%d+") or "0") * 7919)
lib.payloads(tonumber(ID:match("%d+") or "0") * 1000)

luanet.UseNameService(NS)

local t0 = luanet.now()
local stopping = false
local c = {
   ok = 0,                -- calls that returned the expected result
   fail = {},             -- word -> calls that failed with it (all targets)
   fail_keeper = {},      -- word -> calls to Keeper (never restarted) that failed with it
   exp_timeout = 0,       -- Sleep(0.5) with a 0.2 s timeout that timed out, as they should
   unexp_ok = 0,          -- ... that did not
   wrong = 0,             -- a reply that was not the echo of what was sent
   hangs = 0,
   bcast_members_ok = 0, bcast_members_fail = {},
   msent = {},            -- receiver -> messages SendMsg accepted (by name)
   gsent = 0,             -- messages to the group SendMsg accepted (broadcast: per member)
   mfail = {},            -- word -> SendMsg failures
   probes = 0, acks = 0,
}
local hist = {}           -- latencies of the Echo calls that succeeded (lib.hist_add)
local hist_sleep = {}     -- ... and of the Sleep(20-300 ms) calls
local fail_max = 0        -- the longest failed call
local longest = { lat = 0 }
local window_max = 0      -- the longest call (any outcome) since the last progress line
local inflight = {}       -- slot -> { t0, bound, what }

local function bump(t, k, n) t[k] = (t[k] or 0) + (n or 1) end

local function event(ev, t)
   t.ev, t.caller, t.t = ev, ID, luanet.now() - t0
   lib.emit("E", t)
end

-- Runs fn(...) as one timed call in `slot`; returns its results and its latency.
local function timed(slot, what, bound, fn, ...)
   local rec = { t0 = luanet.now(), bound = bound, what = what }
   inflight[slot] = rec
   local r, word, detail = fn(...)
   inflight[slot] = nil
   local lat = luanet.now() - rec.t0
   if lat > window_max then window_max = lat end
   if lat > longest.lat then
      longest = { lat = lat, what = what, word = word, bound = bound, at = rec.t0 - t0 }
   end
   if lat > bound + 1 and not rec.flagged then
      c.hangs = c.hangs + 1
      event("hang", { what = what, lat = lat, bound = bound, word = word, detail = tostring(detail) })
   end
   return r, word, detail, lat
end

local function outcome(keeper, ok, word, lat, h)
   if ok then
      c.ok = c.ok + 1
      lib.hist_add(h or hist, lat)
   else
      bump(c.fail, word)
      if keeper then bump(c.fail_keeper, word) end
      if lat > fail_max then fail_max = lat end
   end
end

local function pause() luanet.sleep(PACE * (0.5 + math.random())) end

local function echo_arg(i)
   local p = lib.payload()
   return { i = i, src = ID, p = p }, p
end

local function check_echo(what, r, i, p)
   if type(r) == "table" and r.i == i and r.p == p then return true end
   c.wrong = c.wrong + 1
   event("wrong reply", { what = what, want_i = i, got = type(r) == "table" and r.i or tostring(r) })
   return false
end

-- Echo by name, in a loop.
local function named_echo(target, timeout)
   local slot, opts, i = {}, luanet.call_options { timeout = timeout }, 0
   local what = target .. ".Echo"
   while not stopping do
      i = i + 1
      local a, p = echo_arg(i)
      local r, word, _, lat = timed(slot, what, timeout, luanet.RPCCall, target, "Echo", a, opts)
      if word == nil then outcome(target == "Keeper", check_echo(what, r, i, p), "wrong reply", lat)
      else outcome(target == "Keeper", false, word, lat) end
      pause()
   end
end

-- Echo on the group soak.*, each policy in turn; idempotent with retries; now and then a
-- broadcast.
local function group_echo()
   local slot, i = {}, 0
   local G = {
      ["round-robin"] = luanet.Group("soak.*", "round-robin"),
      random = luanet.Group("soak.*", "random"),
      least = luanet.Group("soak.*", "least"),
      hash = luanet.Group("soak.*", "hash"),
      broadcast = luanet.Group("soak.*", "broadcast"),
   }
   G["round-robin"]:members()          -- the membership, once, before timing calls
   local plain = luanet.call_options { timeout = 1 }
   local keyed = luanet.call_options { timeout = 1, key = 0 }
   local retried = luanet.call_options { timeout = 1, idempotent = true, retries = 2 }
   local kinds = { "round-robin", "random", "least", "hash", "idempotent" }
   while not stopping do
      i = i + 1
      local a, p = echo_arg(i)
      if i % 25 == 0 then
         local r, word, _, lat = timed(slot, "soak.*[broadcast].Echo", 1, luanet.RPCCall, G.broadcast, "Echo", a, plain)
         if word == nil then
            local good = type(r) == "table" and #r > 0
            for _, m in ipairs(type(r) == "table" and r or {}) do
               if m.ok then
                  c.bcast_members_ok = c.bcast_members_ok + 1
                  good = check_echo("broadcast " .. tostring(m.name), m.result, i, p) and good
               else
                  bump(c.bcast_members_fail, m.word)
               end
            end
            outcome(false, good, "wrong reply", lat)
         else
            outcome(false, false, word, lat)
         end
      else
         local kind = kinds[i % #kinds + 1]
         local r, word, lat
         if kind == "idempotent" then
            r, word, _, lat = timed(slot, "soak.*[idempotent,retries=2].Echo", 3, luanet.RPCCall, G["round-robin"], "Echo", a, retried)
         elseif kind == "hash" then
            keyed.key = math.random(1000)
            r, word, _, lat = timed(slot, "soak.*[hash].Echo", 1, luanet.RPCCall, G.hash, "Echo", a, keyed)
         else
            r, word, _, lat = timed(slot, "soak.*[" .. kind .. "].Echo", 1, luanet.RPCCall, G[kind], "Echo", a, plain)
         end
         if word == nil then outcome(false, check_echo("soak.*[" .. kind .. "]", r, i, p), "wrong reply", lat)
         else outcome(false, false, word, lat) end
      end
      pause()
   end
end

-- Calls that are slow on purpose, so that calls are in flight when a service is killed:
-- Sleep(20-300 ms) on `target` (a group or a name), timeout 1 s.
local function sleepy(target, label)
   local slot, opts = {}, luanet.call_options { timeout = 1 }
   local what = label .. ".Sleep"
   if type(target) == "table" then target:members() end
   while not stopping do
      local d = 0.02 + 0.28 * math.random()
      local r, word, _, lat = timed(slot, what, 1, luanet.RPCCall, target, "Sleep", d, opts)
      if word == nil and r ~= d then
         c.wrong = c.wrong + 1
         event("wrong reply", { what = what, want = d, got = tostring(r) })
      end
      outcome(false, word == nil and r == d, word, lat, hist_sleep)
      pause()
   end
end

-- Sleep(0.5) on Keeper with a 0.2 s timeout, which must time out.
local function expected_timeouts()
   local slot, short = {}, luanet.call_options { timeout = 0.2 }
   local what = "Keeper.Sleep(0.5) timeout 0.2"
   while not stopping do
      local r, word, _, lat = timed(slot, what, 0.2, luanet.RPCCall, "Keeper", "Sleep", 0.5, short)
      if word == "timeout" then
         c.exp_timeout = c.exp_timeout + 1
      elseif word == nil then
         c.unexp_ok = c.unexp_ok + 1
         event("no timeout", { what = what, lat = lat, r = r })
      else
         outcome(true, false, word, lat)
      end
      luanet.sleep(0.1 + 0.1 * math.random())
   end
end

-- Messages by name, sequence-numbered per receiver, with a probe every 2 s.
local seq = {}            -- receiver -> sends SendMsg accepted
local acks = {}           -- probe id -> the ack, for the probes in `awaited` (the last ones)
local awaited = {}
local probe_id = 0
local msg_opts = luanet.call_options { timeout = 1 }

local function probe(slot, target, await)
   probe_id = probe_id + 1
   local id = ID .. "-" .. probe_id
   if await then awaited[id] = true end
   local ok = timed(slot, target .. " probe", 1, luanet.SendMsg, target,
      { k = "probe", s = ID, L = seq[target], id = id }, msg_opts)
   if ok then c.probes = c.probes + 1 end
   return ok and id
end

local function messages(target)
   local slot = {}
   seq[target] = 0
   c.msent[target] = 0
   local batch = math.max(1, MSG_RATE // 20)       -- 20 batches a second
   local last_probe = luanet.now()
   local what = target .. " SendMsg"
   while not stopping do
      for _ = 1, batch do
         local p = lib.payload()
         local q = seq[target] + 1
         local ok, word = timed(slot, what, 1, luanet.SendMsg, target, { k = "n", s = ID, q = q, n = #p, p = p }, msg_opts)
         if ok then
            seq[target] = q
            c.msent[target] = c.msent[target] + 1
         else
            bump(c.mfail, word)
            luanet.sleep(0.02)
            break
         end
      end
      if luanet.now() - last_probe > 2 then
         probe(slot, target)
         last_probe = luanet.now()
      end
      luanet.sleep(0.05 * (0.5 + math.random()))
   end
end

-- Messages to the group: round robin, and a broadcast now and then.
local function group_messages()
   local slot = {}
   local rr = luanet.Group("soak.*", "round-robin")
   local all = luanet.Group("soak.*", "broadcast")
   rr:members()
   local q, batch = 0, math.max(1, MSG_RATE // 20)
   while not stopping do
      for _ = 1, batch do
         local p = lib.payload()
         q = q + 1
         local target = q % 50 == 0 and all or rr
         local ok, word = timed(slot, "soak.* SendMsg", 1, luanet.SendMsg, target, { k = "g", s = ID, q = q, n = #p, p = p }, msg_opts)
         if ok then
            c.gsent = c.gsent + (math.type(ok) == "integer" and ok or 1)
         else
            bump(c.mfail, word)
            luanet.sleep(0.02)
            break
         end
      end
      luanet.sleep(0.05 * (0.5 + math.random()))
   end
end

-- Acks of our probes come back as messages.
local function ack_reader()
   while true do
      local m = luanet.GetMsg(0.5)
      if type(m) == "table" and m.k == "ack" then
         if awaited[m.id] then acks[m.id] = m end
         c.acks = c.acks + 1
      end
   end
end

local function hist_out(h)
   local t = {}
   for k, v in pairs(h) do t[tostring(k)] = v end
   return t
end

-- The group as this process knows it (the name service pushes every change): the
-- driver checks that a restarted member comes back into every caller's view.
local members_view

local function progress(tag, extra)
   local now = luanet.now()
   local oldest = 0
   for _, rec in pairs(inflight) do
      local age = now - rec.t0
      if age > oldest then oldest = age end
      if age > rec.bound + 1 and not rec.flagged then
         rec.flagged = true
         c.hangs = c.hangs + 1
         event("hang", { what = rec.what, in_flight = age, bound = rec.bound })
      end
   end
   local t = { t = now - t0, caller = ID, lua_kb = math.floor(collectgarbage("count")),
      window_max = window_max, oldest_in_flight = oldest, conns = luanet.service_stats().connections,
      members = members_view and #(members_view:members() or {}) or nil }
   for k, v in pairs(c) do t[k] = v end
   for k, v in pairs(extra or {}) do t[k] = v end
   window_max = 0
   lib.emit(tag, t)
end

luanet.run(function()
   local workers, done = 0, luanet.cond()
   local function worker(fn, ...)
      workers = workers + 1
      luanet.spawn(function(...)
         local ok, err = pcall(fn, ...)
         if not ok then event("task error", { err = tostring(err) }) end
         workers = workers - 1
         if workers == 0 then done:broadcast() end
      end, ...)
   end
   luanet.spawn(ack_reader)
   luanet.spawn(function()
      while true do
         luanet.sleep(1)
         progress("P")
      end
   end)
   lib.emit("S", { caller = ID, pace = PACE, msg_rate = MSG_RATE })
   local view = luanet.Group("soak.*")
   view:members()
   members_view = view
   worker(named_echo, "Keeper", 2)
   worker(named_echo, "Keeper", 2)
   worker(named_echo, "Phoenix", 1)
   worker(group_echo)
   worker(group_echo)
   worker(expected_timeouts)
   for _ = 1, 3 do worker(sleepy, luanet.Group("soak.*", "round-robin"), "soak.*[round-robin]") end
   worker(sleepy, "Phoenix", "Phoenix")
   for _, target in ipairs { "Keeper", "Phoenix", "soak.1", "soak.2", "soak.3" } do worker(messages, target) end
   worker(group_messages)

   luanet.sleep(SECONDS)
   stopping = true
   while workers > 0 do done:wait(1) end

   -- A last probe to every receiver, retried until one is acked: each receiver checks
   -- that it read everything up to our last accepted send on the connection the probe
   -- came over (bench/soak_service.lua). Bounded: 20 s in all.
   local final = {}
   local slot = {}
   local deadline = luanet.now() + 20
   for target in pairs(seq) do final[target] = { accepted = seq[target], acked = false, tries = 0 } end
   local pending = true
   while pending and luanet.now() < deadline do
      pending = false
      for target, f in pairs(final) do
         if not f.acked then
            f.tries = f.tries + 1
            local id = probe(slot, target, true)
            local t_end = luanet.now() + 2
            while id and not acks[id] and luanet.now() < t_end do luanet.sleep(0.01) end
            local a = id and acks[id]
            if a then
               f.acked, f.inc, f.read = true, a.inc, a.read
            else
               pending = true
            end
         end
      end
   end
   local unacked = {}
   for target, f in pairs(final) do if not f.acked then unacked[#unacked + 1] = target end end
   progress("F", { members_final = view:members(), hist = hist_out(hist), hist_sleep = hist_out(hist_sleep), hist_base = lib.HIST_BASE, hist_ratio = lib.HIST_RATIO,
      fail_max = fail_max, longest = longest, final = final, final_unacked = unacked })
   luanet.stop()
end)
