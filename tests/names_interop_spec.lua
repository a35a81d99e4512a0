-- The name service from outside Lua (docs/PROTOCOL.md, "Name service"): a Python script
-- with only the msgpack package looks a luanet service up and calls it
-- (tests/fixtures/ns_client.py).

local H = require "helper"

local HERE = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".")
local PYTHON = "/usr/bin/python3" -- has msgpack; the python3 first on PATH may not

local NAMESERVICE = H.NAMESERVICE_CHILD

local SERVICE = H.CHILD_PUT .. [==[
local luanet = require "luanet"
luanet.RegRPCFunction("Plus", function(t) return t.a + t.b end)
luanet.spawn(function() luanet.sleep(25) os.exit(3) end)
luanet.run(function()
  assert(luanet.StartLocalService("PyTarget", "127.0.0.1:0"))
  assert(luanet.Register2Name(@@NS@@))
  put("ready", "yes")
end)
]==]

describe("names: interop", function()
  it("a Python MessagePack-RPC client resolves a name at the name service and calls the service", function()
    H.run(function()
      local ns = H.bg(NAMESERVICE)
      assert(H.wait_for(function() return ns.file("addr") ~= "" end, 5), ns.file("err"))
      local svc = H.bg((SERVICE:gsub("@@NS@@", ("%q"):format(ns.file("addr")))))
      assert(H.wait_for(function() return svc.file("ready") ~= "" end, 5), svc.file("err"))
      local host, port = ns.file("addr"):match("^(.*):(%d+)$")
      local p = assert(io.popen(("timeout -s KILL 10 %s %s/fixtures/ns_client.py %s %s PyTarget 2>&1; echo \"rc=$?\"")
        :format(PYTHON, HERE, host, port)))
      local out = p:read("a")
      p:close()
      assert.matches("^OK 42\nrc=0\n$", out)
    end, 15)
  end)
end)
