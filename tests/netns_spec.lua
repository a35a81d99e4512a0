-- Names across hosts (docs/services.md, lua/luanet/names.lua, lua/luanet/nameservice.lua):
-- the name service, two services and a client each run in a network namespace of their
-- own, joined through veth pairs to a bridge in a fourth namespace (tests/fixtures/netns.sh),
-- so they reach each other only over 10.231.0.0/24 and no loopback address can work.
--
--   ln-ns-TAG   10.231.0.1   the name service on 10.231.0.1:7001
--   ln-svc-TAG  10.231.0.2   "NetPlus" on 0.0.0.0:7002 (the name service must substitute
--                            the address the registration came from) and "NetPlusIP" on
--                            10.231.0.2:7003 (registered as it is)
--   ln-cli-TAG  10.231.0.3   the client: UseNameService, resolve, RPCCall by name
--
-- Needs root (and a kernel that allows network namespaces, bridges and veth pairs): without
-- them the test is pending. Every process runs under `timeout`, and the namespaces (with the
-- processes still in them) are removed whatever happens.

local H = require "helper"

local HERE = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".")
local NETNS_SH = HERE .. "/fixtures/netns.sh"

local NS_ADDR = "10.231.0.1:7001"

local NAMESERVICE = [==[
local luanet = require "luanet"
luanet.run(function()
  local ok, word, detail = luanet.StartNameService(arg[1])
  if not ok then
    io.stderr:write(("name service: %s (%s)\n"):format(tostring(word), tostring(detail)))
    os.exit(1)
  end
  print("ready " .. luanet.service_listener:local_addr())
  io.stdout:flush()
end)
]==]

-- arg: name, listen address, name service address
local SERVICE = [==[
local luanet = require "luanet"
local NAME, LISTEN, NS = arg[1], arg[2], arg[3]
luanet.RegRPCFunction("Plus", function(t) return t.a + t.b end)
luanet.run(function()
  assert(luanet.StartLocalService(NAME, LISTEN))
  local ok, word, detail = luanet.Register2Name(NS)
  if not ok then
    io.stderr:write(("%s: Register2Name: %s (%s)\n"):format(NAME, tostring(word), tostring(detail)))
    os.exit(1)
  end
  print("registered " .. NAME .. " " .. luanet.service_listener:local_addr())
  io.stdout:flush()
end)
]==]

-- arg: name service address, then the service names to look up and call
local CLIENT = [==[
local luanet = require "luanet"
local NS = arg[1]
luanet.UseNameService(NS)
luanet.run(function()
  for i = 2, #arg do
    local name = arg[i]
    local where, word, detail = luanet.RPCCall(NS, "luanet.ns.resolve", name)
    print(("resolve %s %s %s %s"):format(name, tostring(where), tostring(word), tostring(detail)))
    local r
    r, word, detail = luanet.RPCCall(name, "Plus", { a = 2, b = 3 })
    print(("call %s %s %s %s"):format(name, tostring(r), tostring(word), tostring(detail)))
  end
end)
]==]

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function shell_ok(cmd)
  local ok = os.execute(cmd)
  return ok == true
end

local function shell_out(cmd)
  local p = io.popen(cmd)
  local s = p:read("a")
  p:close()
  return s
end

local function sleep(s) os.execute("sleep " .. s) end

local function writefile(p, s)
  local f = assert(io.open(p, "wb"))
  f:write(s)
  f:close()
end

local function my_pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("l"):match("^(%d+)")
  f:close()
  return pid
end

describe("network namespaces", function()
  it("a name service, services and a client in separate namespaces find each other without loopback", function()
    if shell_out("id -u 2>/dev/null"):match("^%s*(%d+)") ~= "0" then
      pending("needs root and network namespaces (not root)")
    end
    if not shell_ok("command -v ip >/dev/null 2>&1 && command -v timeout >/dev/null 2>&1") then
      pending("needs root and network namespaces (no `ip` or `timeout` tool)")
    end

    local tag = "p" .. my_pid()
    local nsn = { ns = "ln-ns-" .. tag, svc = "ln-svc-" .. tag, cli = "ln-cli-" .. tag }
    local dir = H.tmpdir()
    local up = false
    finally(function()
      if up then os.execute(("timeout -s KILL 10 sh %s down %s"):format(sh_quote(NETNS_SH), tag)) end
      H.rmdir(dir)
    end)

    -- Make the namespaces (a stale set with this tag would be from a dead run with our pid).
    os.execute(("timeout -s KILL 10 sh %s down %s"):format(sh_quote(NETNS_SH), tag))
    local _, _, code = os.execute(("timeout -s KILL 10 sh %s up %s 2>%s"):format(
      sh_quote(NETNS_SH), tag, sh_quote(dir .. "/netns.err")))
    up = true
    if code == 77 then
      pending("needs root and network namespaces (" .. H.readfile(dir .. "/netns.err"):gsub("%s+$", "") .. ")")
    end
    assert(code == 0, "netns.sh up failed: " .. H.readfile(dir .. "/netns.err"))

    writefile(dir .. "/nameservice.lua", NAMESERVICE)
    writefile(dir .. "/service.lua", SERVICE)
    writefile(dir .. "/client.lua", CLIENT)

    -- Runs `script args` in namespace `ns` (LUA_PATH/LUA_CPATH pass through `ip netns
    -- exec`), killed after `t` s; output to dir/<label>.out and .err.
    local function cmd(ns, t, label, script, ...)
      local args = {}
      for i, a in ipairs({ ... }) do args[i] = sh_quote(a) end
      return ("cd %s && timeout -s KILL %d ip netns exec %s lua5.4 %s %s >%s.out 2>%s.err </dev/null")
        :format(sh_quote(dir), t, nsn[ns], script, table.concat(args, " "), label, label)
    end
    local function bg(...) assert(shell_ok(cmd(...) .. " &")) end
    local function out(label) return H.readfile(dir .. "/" .. label .. ".out") end
    local function err(label) return H.readfile(dir .. "/" .. label .. ".err") end
    -- Polls for `pattern` in label's stdout for up to t s.
    local function await(label, pattern, t)
      for _ = 1, t * 20 do
        if out(label):find(pattern) then return true end
        sleep(0.05)
      end
      error(("%s did not print %q within %g s; out: %q err: %q"):format(
        label, pattern, t, out(label), err(label)), 2)
    end

    bg("ns", 20, "nameservice", "nameservice.lua", NS_ADDR)
    await("nameservice", "^ready ", 5)
    assert.equal("ready " .. NS_ADDR .. "\n", out("nameservice"))

    bg("svc", 20, "netplus", "service.lua", "NetPlus", "0.0.0.0:7002", NS_ADDR)
    bg("svc", 20, "netplusip", "service.lua", "NetPlusIP", "10.231.0.2:7003", NS_ADDR)
    await("netplus", "^registered ", 5)
    await("netplusip", "^registered ", 5)

    assert(shell_ok(cmd("cli", 10, "client", "client.lua", NS_ADDR, "NetPlus", "NetPlusIP")),
      ("the client failed; out: %q err: %q"):format(out("client"), err("client")))
    assert.equal(table.concat({
      "resolve NetPlus tcp://10.231.0.2:7002 nil nil",
      "call NetPlus 5 nil nil",
      "resolve NetPlusIP tcp://10.231.0.2:7003 nil nil",
      "call NetPlusIP 5 nil nil",
      "",
    }, "\n"), out("client"))
    assert.equal("", err("client"))
  end)
end)
