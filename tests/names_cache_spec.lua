-- The name cache (docs/names.md, "Calls and messages by name"), watched from the name
-- service's own counters (luanet.ns.stats): concurrent first calls share one lookup, later
-- calls make none, a push ends a remembered "not registered" at once, and a failed
-- connection sends the next call back to the name service. The name service and the
-- services run in child processes; this process only calls (UseNameService).

local luanet = require "luanet"
local H = require "helper"

local NAMESERVICE = H.NAMESERVICE_CHILD

local SERVICE = H.CHILD_PUT .. [==[
local luanet = require "luanet"
luanet.RegRPCFunction("Plus", function(t) return t.a + t.b end)
luanet.RegRPCFunction("Where", function() return luanet.service_listener:local_addr() end)
luanet.spawn(function() luanet.sleep(25) os.exit(3) end)
luanet.run(function()
  assert(luanet.StartLocalService(@@NAME@@, "127.0.0.1:0"))
  assert(luanet.Register2Name(@@NS@@))
  put("ready", "yes")
end)
]==]

local function started(p, file)
  assert(H.wait_for(function() return p.file(file) ~= "" or H.exists(p.dir .. "/" .. file) end, 5),
    "child did not start: " .. p.file("err"))
  return p
end

local function start_ns()
  local p = started(H.bg(NAMESERVICE), "addr")
  p.addr = p.file("addr")
  luanet.UseNameService(p.addr)
  return p
end

local function start_service(name, ns)
  local src = SERVICE:gsub("@@(%u+)@@", { NAME = ("%q"):format(name), NS = ("%q"):format(ns) })
  return started(H.bg(src), "ready")
end

local function stats(ns) return assert(luanet.RPCCall(ns.addr, "luanet.ns.stats")) end

describe("names: the lookup cache", function()
  it("50 concurrent first calls share one lookup; 1000 later calls make none", function()
    H.run(function()
      local ns = start_ns()
      start_service("Shared", ns.addr)
      local before = stats(ns).resolves
      local done, ok = 0, 0
      for i = 1, 50 do
        H.go(function()
          if luanet.RPCCall("Shared", "Plus", { a = i, b = 1 }) == i + 1 then ok = ok + 1 end
          done = done + 1
        end)
      end
      assert(H.wait_for(function() return done == 50 end, 5))
      assert.equals(50, ok)
      assert.equals(before + 1, stats(ns).resolves)
      for i = 1, 1000 do assert.equals(i + 2, luanet.RPCCall("Shared", "Plus", { a = i, b = 2 })) end
      assert.equals(before + 1, stats(ns).resolves)
    end, 15)
  end)

  it("a name that is not registered is remembered, and the push of its registration ends that at once", function()
    H.run(function()
      local ns = start_ns()
      local v, word = luanet.RPCCall("Later", "Plus", { a = 1, b = 1 })
      assert.is_nil(v)
      assert.equals("no such service", word)
      local before = stats(ns).resolves
      -- remembered: a second call does not ask again
      assert.equals("no such service", select(2, luanet.RPCCall("Later", "Plus", { a = 1, b = 1 })))
      assert.equals(before, stats(ns).resolves)
      -- it registers; the name service pushes the change; calls work well within the
      -- one second the answer would otherwise be believed
      local t0 = luanet.now()
      start_service("Later", ns.addr)
      assert(H.wait_for(function() return luanet.RPCCall("Later", "Plus", { a = 1, b = 1 }) == 2 end, 3))
      assert.is_true(luanet.now() - t0 < 0.9, ("took %.2f s"):format(luanet.now() - t0))
    end, 15)
  end)

  it("a caller with a short deadline does not decide a shared lookup for a patient one", function()
    H.run(function()
      local ns = start_ns()
      start_service("Patient", ns.addr)
      -- A name service that answers late: frozen for 0.4 s while both callers ask.
      ns.kill("STOP")
      local results = {}
      H.go(function()
        results.hasty = { luanet.RPCCall("Patient", "Plus", { a = 1, b = 1 }, luanet.call_options { timeout = 0.1 }) }
      end)
      H.go(function()
        results.patient = { luanet.RPCCall("Patient", "Plus", { a = 2, b = 2 }, luanet.call_options { timeout = 3 }) }
      end)
      luanet.sleep(0.4)
      ns.kill("CONT")
      assert(H.wait_for(function() return results.hasty and results.patient end, 4))
      assert.equals("timeout", results.hasty[2])
      assert.same({ 4 }, { results.patient[1] }, tostring(results.patient[3]))
    end, 15)
  end)

  it("when the service goes, the next call asks the name service again and finds the new one", function()
    H.run(function()
      local ns = start_ns()
      local first = start_service("Moving", ns.addr)
      local where1 = assert(luanet.RPCCall("Moving", "Where"))
      local before = stats(ns).resolves
      first.kill("KILL")
      -- the connection ends: the call on it (or the next) fails, the cache is dropped
      assert(H.wait_for(function() return luanet.RPCCall("Moving", "Where") == nil end, 3))
      start_service("Moving", ns.addr)
      local where2
      assert(H.wait_for(function()
        where2 = luanet.RPCCall("Moving", "Where")
        return where2 ~= nil
      end, 3))
      assert.are_not.equal(where1, where2)
      assert.is_true(stats(ns).resolves > before)
    end, 15)
  end)
end)
