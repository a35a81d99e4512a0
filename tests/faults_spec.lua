-- Fault injection (src/faults.rs, docs/RELIABILITY.md "Fault injection"): that it injects
-- what it says, and what a service does when its connections are reset in the middle of
-- a message. The whole suite also runs with LUANET_FAULTS=short,eagain=3 in CI.
local H = require "helper"
local luanet = require "luanet"

-- A child under LUANET_FAULTS: a TCP echo of 1 MiB over luanet's own sockets, plus the
-- count of injected faults, written to its stdout.
local ECHO = [==[
local luanet = require "luanet"
local core = require "luanet.core"
luanet.run(function()
  local l = assert(luanet.tcp.listen("127.0.0.1:0"))
  luanet.spawn(function()
    local c = assert(l:accept())
    local got = assert(c:read_exact(1 << 20, 10))
    assert(c:write(got))
    c:close()
  end)
  local c = assert(luanet.tcp.connect(l:local_addr()))
  local data = {}
  for i = 1, 4096 do data[i] = string.char(i % 256):rep(256) end
  data = table.concat(data)
  luanet.spawn(function() assert(c:write(data)) end)
  local back = assert(c:read_exact(#data, 10))
  print(back == data and "intact" or "CORRUPT", core.faults_injected())
  l:close()
end)
]==]

describe("fault injection", function()
  it("short reads and writes and EAGAIN every 3rd call: 1 MiB echoes intact, and faults were injected", function()
    local r = H.child(ECHO, 20, "LUANET_FAULTS=short,eagain=3")
    assert.is_true(r.ok, r.err)
    local verdict, n = r.out:match("^(%a+)%s+(%d+)")
    assert.equals("intact", verdict, r.out .. r.err)
    assert.is_true(tonumber(n) > 100, "only " .. tostring(n) .. " faults injected")
    assert.equals("", r.err)
    -- and without the variable, none (make test-faults runs this spec under it too)
    r = H.child(ECHO, 20, "env -u LUANET_FAULTS")
    assert.same({ "intact", "0" }, { r.out:match("^(%a+)%s+(%d+)") })
  end)

  it("a bad LUANET_FAULTS is reported once and ignored", function()
    local r = H.child(ECHO, 20, "LUANET_FAULTS=slow")
    assert.is_true(r.ok, r.err)
    assert.same({ "intact", "0" }, { r.out:match("^(%a+)%s+(%d+)") })
    local _, n = r.err:gsub("unknown fault \"slow\"", "")
    assert.equals(1, n, r.err)
  end)

  it("connections reset in the middle of a message: every call is answered right or fails with a word, the service stays up", function()
    -- The service resets each connection once it has sent 300 kB: replies of 100 kB, so
    -- the third or fourth is cut in half.
    -- (started by hand: H.bg passes no environment, and LUANET_FAULTS must be there
    -- before luanet loads)
    local dir = H.tmpdir()
    local f = assert(io.open(dir .. "/main.lua", "w"))
    f:write(H.CHILD_PUT, [==[
local luanet = require "luanet"
luanet.spawn(function() luanet.sleep(25) os.exit(3) end)
luanet.RegRPCFunction("Echo", function(s) return s end)
luanet.run(function()
  assert(luanet.StartLocalService("Resetting", "127.0.0.1:0"))
  put("addr", luanet.service_listener:local_addr())
end)
]==])
    f:close()
    local p = assert(io.popen(("cd '%s' && { LUANET_FAULTS=reset=300000 lua5.4 \"$PWD/main.lua\" >out 2>err </dev/null & echo $!; }"):format(dir)))
    local pid = tonumber(p:read("l"))
    p:close()
    finally(function()
      os.execute("kill -9 " .. pid .. " 2>/dev/null")
      H.rmdir(dir)
    end)
    local payload = ("0123456789"):rep(10000)   -- 100 kB
    local outcomes = {}
    H.run(function()
      assert(H.wait_for(function() return H.readfile(dir .. "/addr") ~= "" end, 5), H.readfile(dir .. "/err"))
      local addr = H.readfile(dir .. "/addr")
      for i = 1, 40 do
        local v, word = luanet.RPCCall(addr, "Echo", payload .. i, luanet.call_options { timeout = 3 })
        local key
        if v == payload .. i then key = "ok"
        elseif v == nil then key = word
        else key = "WRONG" end
        outcomes[key] = (outcomes[key] or 0) + 1
      end
    end, 60)
    local seen = {}
    for k, n in pairs(outcomes) do seen[#seen + 1] = k .. "=" .. n end
    seen = table.concat(seen, " ")
    print("\n[faults_spec] 40 calls of 100 kB, connections reset after 300 kB: " .. seen)
    assert.is_nil(outcomes.WRONG, seen)
    assert.is_nil(outcomes.timeout, seen)              -- a cut reply is noticed, not waited out
    assert.is_true((outcomes.ok or 0) >= 20, seen)
    assert.is_true((outcomes["connection lost"] or 0) >= 5, seen)
    for k in pairs(outcomes) do
      assert.is_true(k == "ok" or k == "connection lost" or k == "no such service", seen)
    end
    -- the service is still up, and logged the resets it made
    assert.is_true(os.execute("kill -0 " .. pid .. " 2>/dev/null") == true, "the service died")
    local err = H.readfile(dir .. "/err")
    assert.truthy(err:find("connection reset after", 1, true), err)
  end)
end)
