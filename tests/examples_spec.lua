-- The examples users run first must keep working: each runs as a child lua5.4 on free
-- ports, and its output is checked for what it claims to show.

local H = require "helper"

local HERE = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".")

local function run(cmd, seconds)
  local p = assert(io.popen(("cd '%s/..' && timeout -s KILL %d %s 2>/dev/null; echo \"exit=$?\"")
    :format(HERE, seconds, cmd)))
  local out = p:read("a")
  p:close()
  return out
end

local function free_port()
  local port
  H.run(function() port = H.free_port() end)
  return port
end

describe("examples", function()
  it("make demo (examples/demo.lua) calls PlusServer by name and exits by itself", function()
    local out = run(("lua5.4 examples/demo.lua 127.0.0.1:%d 1"):format(free_port()), 30)
    assert.matches("exit=0", out, 1, true)
    local rate = tonumber(out:match("average (%d+) calls/s"))
    assert.is_true(rate ~= nil and rate > 1000, "no sensible rate in:\n" .. out)
  end)

  it("examples/groups_demo.lua shows each policy and a master taking over", function()
    local out = run(("lua5.4 examples/groups_demo.lua 127.0.0.1:%d"):format(free_port()), 30)
    assert.matches("exit=0", out, 1, true)
    assert.matches("members:%s+mail%.1 mail%.2 mail%.3", out)
    assert.matches("round%-robin:%s+mail%.1 mail%.2 mail%.3 mail%.1 mail%.2 mail%.3", out)
    -- PROTOCOL.md's check values: "alice" goes to mail.2, and again the second time.
    local alice = {}
    for who in out:gmatch("hash alice%s+%-> (%S+)") do alice[#alice + 1] = who end
    assert.are.same({ "mail.2", "mail.2" }, alice)
    local _, answered = out:gsub("\tmail%.%d\ttrue\tmail%.%d", "")
    assert.are.equal(3, answered)
    local took = tonumber(out:match("took over: the first call answered ([%d.]+) ms after the kill"))
    assert.is_true(took ~= nil and took < 1000, "no takeover within the 1 s lease:\n" .. out)
  end)
end)
