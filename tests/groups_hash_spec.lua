-- The "hash" policy against its specification: a Python client written from
-- docs/PROTOCOL.md ("Hashing a key to a member") alone must send every key to the member
-- luanet sends it to. Five member processes and a caller run as lua5.4 children; the
-- caller calls each key's member and records who answered.

local H = require "helper"

local HERE = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".")
local PYTHON = "/usr/bin/python3"

local MEMBER = H.CHILD_PUT .. [==[
local luanet = require "luanet"
luanet.spawn(function() luanet.sleep(20) os.exit(3) end)
luanet.RegRPCFunction("Who", function() return luanet.service_name() end)
luanet.run(function()
  assert(luanet.StartLocalService(@@NAME@@, "127.0.0.1:0"))
  assert(luanet.Register2Name(@@NS@@))
  put("up", "1")
end)
]==]

local CALLER = H.CHILD_PUT .. [==[
local luanet = require "luanet"
luanet.spawn(function() luanet.sleep(20) os.exit(3) end)
luanet.UseNameService(@@NS@@)
luanet.run(function()
  local g = luanet.Group("shard.*", "hash")
  local out = {}
  for i = 1, 400 do
    local key = i % 2 == 0 and ("user-" .. i) or i * 7919     -- strings and integers
    local who, word, detail = luanet.RPCCall(g, "Who", luanet.call_options { key = key })
    assert(who, tostring(word) .. ": " .. tostring(detail))
    out[#out + 1] = ("%s\t%s"):format(key, who)
  end
  put("map", table.concat(out, "\n") .. "\n")
  os.exit(0)
end)
]==]

describe("hash policy", function()
  it("sends every key where a client written from PROTOCOL.md sends it", function()
    local map
    local names = {}
    H.run(function()
      local ns = H.bg(H.NAMESERVICE_CHILD)
      assert(H.wait_for(function() return ns.file("addr") ~= "" end, 5), "name service did not start")
      local ns_addr = ("%q"):format(ns.file("addr"))
      local members = {}
      for i = 1, 5 do
        names[i] = ("shard.%d"):format(i * 13)      -- not in hash order by accident
        members[i] = H.bg((MEMBER:gsub("@@NAME@@", ("%q"):format(names[i])):gsub("@@NS@@", ns_addr)))
      end
      assert(H.wait_for(function()
        for _, m in ipairs(members) do if m.file("up") == "" then return false end end
        return true
      end, 8), "members did not register")
      local caller = H.bg((CALLER:gsub("@@NS@@", ns_addr)))
      assert(H.wait_for(function() return caller.file("map") ~= "" end, 10), "caller did not finish: " .. caller.file("err"))
      map = caller.file("map")
    end, 25)

    local keys = {}
    for key in map:gmatch("([^\t\n]+)\t") do keys[#keys + 1] = key end
    assert.are.equal(400, #keys)
    local tmp = os.tmpname()
    local f = assert(io.open(tmp, "w"))
    f:write(table.concat(keys, "\n"), "\n")
    f:close()
    local p = assert(io.popen(("%s %s/fixtures/rendezvous.py %s < %s"):format(
      PYTHON, HERE, table.concat(names, ","), tmp)))
    local expected = p:read("a")
    p:close()
    os.remove(tmp)
    assert.are.equal(expected, map)
    -- And the keys are spread: every member got some.
    for _, name in ipairs(names) do
      local _, n = map:gsub("\t" .. name:gsub("%.", "%%.") .. "\n", "")
      assert.is_true(n >= 40, name .. " got only " .. n .. " of 400 keys")
    end
  end)
end)
