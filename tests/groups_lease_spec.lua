-- The master lease across a name service restart (docs/groups.md, "The master lease"). A
-- restarted name service has forgotten every lease and may grant it to a standby at once,
-- so the holder must not go on believing its lease until the lease time runs out: it
-- steps down as soon as its connection to that name service closes.
--
-- A name service on a fixed port, and two members standing for master of lease.* with a
-- 3 s lease; each logs lease:held() sampled every 2 ms, on the shared CLOCK_MONOTONIC.

local H = require "helper"

local clock = H.clock

local PRELUDE = H.CHILD_PUT .. H.CHILD_CLOCK .. [==[
local luanet = require "luanet"
luanet.spawn(function() luanet.sleep(30) os.exit(3) end)   -- never outlive the suite
]==]

local NAMESERVICE = PRELUDE .. [==[
luanet.run(function()
  assert(luanet.StartNameService(@@ADDR@@))
  put("up", "1")
end)
]==]

local MEMBER = PRELUDE .. [==[
luanet.configure { connect_timeout = 0.2, call_timeout = 0.5 }
local log = assert(io.open(DIR .. "/samples", "a"))
luanet.run(function()
  assert(luanet.StartLocalService(@@NAME@@, "127.0.0.1:0"))
  assert(luanet.Register2Name(@@NS@@))
  local lease = luanet.StandForMaster("lease.*", { ttl = 3 })
  put("up", "1")
  local was = false
  while true do                       -- every change of held(), with its time
    local now = lease:held()
    if now ~= was then
      log:write(("%.4f %s\n"):format(clock(), now and "held" or "released"))
      log:flush()
      was = now
    end
    luanet.sleep(0.002)
  end
end)
]==]

-- The intervals a member held the lease: { {from, to}, ... } (an open one ends at `now`).
local function intervals(text, now)
  local out, from = {}, nil
  for t, what in text:gmatch("([%d.]+) (%a+)") do
    t = tonumber(t)
    if what == "held" then from = t elseif from then out[#out + 1] = { from, t }; from = nil end
  end
  if from then out[#out + 1] = { from, now } end
  return out
end

describe("the master lease when the name service restarts", function()
  it("the holder steps down when its name service goes; the restarted one elects one master", function()
    H.run(function()
      local port = H.free_port()
      local addr = ("127.0.0.1:%d"):format(port)
      local ns_src = NAMESERVICE:gsub("@@ADDR@@", ("%q"):format(addr))
      local ns = H.bg(ns_src)
      assert(H.wait_for(function() return ns.file("up") ~= "" end, 5), "name service did not start")
      local members = {}
      for i = 1, 2 do
        members[i] = H.bg((MEMBER:gsub("@@NAME@@", ('"lease.%d"'):format(i)):gsub("@@NS@@", ("%q"):format(addr))))
      end
      local function holder()
        for i, m in ipairs(members) do
          local iv = intervals(m.file("samples"), math.huge)
          if #iv > 0 and iv[#iv][2] == math.huge then return i end
        end
      end
      assert(H.wait_for(function() return holder() ~= nil end, 8), "no member became master")
      local master = holder()
      local standby = 3 - master

      local killed = clock()
      ns.kill("KILL")
      -- The master learns of the close from its own connection, not from the lease time.
      assert(H.wait_for(function() return holder() == nil end, 5), "the master never stepped down")
      local stepped_down = intervals(members[master].file("samples"), math.huge)
      local down_after = stepped_down[#stepped_down][2] - killed
      io.stderr:write(("\n[groups_lease_spec] the master stepped down %.0f ms after its name service was killed (lease 3 s)\n")
        :format(down_after * 1000))
      assert.is_true(down_after < 0.5, ("stepped down only after %.2f s"):format(down_after))

      -- Restarted on the same port: the members register again and one becomes master.
      local restarted = clock()
      local ns2 = H.bg(ns_src)
      assert(H.wait_for(function() return ns2.file("up") ~= "" end, 5), "name service did not restart")
      assert(H.wait_for(function() return holder() ~= nil end, 10), "no master after the restart")
      io.stderr:write(("[groups_lease_spec] %s became master %.0f ms after the name service restarted\n")
        :format(holder() == master and "the old master" or "the standby", (clock() - restarted) * 1000))
      H.luanet.sleep(0.5)

      -- Never two holders at once, over the whole run.
      local now = clock()
      local a = intervals(members[master].file("samples"), now)
      local b = intervals(members[standby].file("samples"), now)
      for _, x in ipairs(a) do
        for _, y in ipairs(b) do
          assert.is_true(x[2] <= y[1] or y[2] <= x[1],
            ("both held the lease from %.3f to %.3f"):format(math.max(x[1], y[1]), math.min(x[2], y[2])))
        end
      end
    end, 25)
  end)
end)
