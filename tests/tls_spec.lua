-- TLS (docs/tls.md): streams with rustls, verification, SNI, handshake timeouts, and TLS
-- between services and to the name service. Certificates: fixtures/tls (make-certs.py).
local H = require "helper"
local luanet = require "luanet"

local p = io.popen("cd fixtures/tls && pwd")
local DIR = p:read("l") .. "/"
p:close()
local function F(name) return DIR .. name end

local CA = F("ca.pem")
local function server_config(name)
  name = name or "server"
  return assert(luanet.tls.server_config { cert = F(name .. ".pem"), key = F(name .. "-key.pem") })
end

-- Echo servers' listeners, closed by done() at the end of each test, so that their
-- accept loops (tracked tasks) end and H.run returns.
local listeners = {}
local function done()
  for _, l in ipairs(listeners) do l:close() end
  listeners = {}
end

-- A TLS echo server on a free port: each connection echoes what it reads until EOF.
-- Returns its address and a table with what it saw ({ sni = ..., failures = {...} }).
local function echo_server(config, opts)
  local l = assert(luanet.tcp.listen("127.0.0.1:0"))
  listeners[#listeners + 1] = l
  local seen = { failures = {}, sni = {} }
  H.go(function()
    while true do
      local c = l:accept()
      if not c then return end
      H.go(function()
        local ok, word, detail = luanet.tls.accept(c, config, opts)
        if not ok then
          seen.failures[#seen.failures + 1] = { word, detail }
          return
        end
        seen.sni[#seen.sni + 1] = c:tls_info().server_name or false
        while true do
          local data = c:read()
          if not data then break end
          c:write(data)
        end
        c:close()
      end)
    end
  end)
  return l:local_addr(), seen, l
end

describe("tls streams", function()
  it("a client and a server talk through TLS: 1 MB each way arrives intact", function()
    H.run(function()
      local addr = echo_server(server_config())
      local c = assert(luanet.tls.connect(addr, { ca = CA }))
      local info = c:tls_info()
      assert.equals("TLSv1_3", info.version)
      assert.truthy(info.cipher)
      local chunk = {}
      for i = 1, 1024 do chunk[i] = string.char(i % 251) end
      local big = string.rep(table.concat(chunk), 1024)   -- 1 MiB
      H.go(function() assert(c:write(big)) end)
      local back = assert(c:read_exact(#big, 10))
      assert.equals(big, back)
      -- whole messages too (the services layer's framing over TLS)
      assert(c:write_message({ 1, "two", { three = 3 } }))
      assert.same({ 1, "two", { three = 3 } }, c:read_message(2))
      c:close()
      -- a plain TCP connection is not a TLS one
      local plain = assert(luanet.tcp.connect(addr))
      assert.is_nil(plain:tls_info())
      plain:close()
      done()
    end, 20)
  end)

  it("close sends close_notify: the peer reads the end of the stream, not an error", function()
    H.run(function()
      local l = assert(luanet.tcp.listen("127.0.0.1:0"))
      local got
      H.go(function()
        local c = assert(l:accept())
        assert(luanet.tls.accept(c, server_config()))
        got = { c:read_exact(5, 2) }
        got[#got + 1] = select(2, c:read(10, 2))
      end)
      local c = assert(luanet.tls.connect(l:local_addr(), { ca = CA }))
      c:write("hello")
      c:close()
      assert.is_true(H.wait_for(function() return got ~= nil and #got >= 2 end, 3))
      assert.same({ "hello", "closed" }, got)
    end, 10)
  end)

  it("SNI: the server answers with the certificate for the name the client asked for", function()
    H.run(function()
      local cfg = assert(luanet.tls.server_config {
        cert = F("server.pem"), key = F("server-key.pem"),
        sni = { ["b.example"] = { cert = F("b.pem"), key = F("b-key.pem") } },
      })
      local addr, seen = echo_server(cfg)
      -- b.example is only in b.pem: verification passes only if the server chose it
      local c = assert(luanet.tls.connect(addr, { ca = CA, server_name = "b.example" }))
      c:write("x")
      assert.equals("x", c:read(1, 2))
      c:close()
      -- a.example is only in the default certificate
      -- (each client waits for an echo before closing: closing at once races the
      -- server's session tickets, and its accept may then see a broken pipe)
      c = assert(luanet.tls.connect(addr, { ca = CA, server_name = "a.example" }))
      c:write("y")
      assert.equals("y", c:read(1, 2))
      c:close()
      assert.is_true(H.wait_for(function() return #seen.sni == 2 end, 2))
      assert.same({ "b.example", "a.example" }, seen.sni)
      -- by IP address, no SNI is sent (RFC 6066) and the default certificate answers
      c = assert(luanet.tls.connect(addr, { ca = CA }))
      c:write("z")
      assert.equals("z", c:read(1, 2))
      c:close()
      assert.is_true(H.wait_for(function() return #seen.sni == 3 end, 2))
      assert.is_false(seen.sni[3])
      done()
    end, 10)
  end)

  it("hostname verification is on by default: a certificate for another name is refused", function()
    H.run(function()
      local addr, seen = echo_server(server_config())
      local c, word, detail = luanet.tls.connect(addr, { ca = CA, server_name = "nothere.example" })
      assert.same({ nil, "tls error" }, { c, word })
      assert.matches("not valid for name", detail, 1, true)
      -- the server's certificate is for other.example only; we connect to 127.0.0.1
      local addr2 = echo_server(server_config("other"))
      c, word, detail = luanet.tls.connect(addr2, { ca = CA })
      assert.same({ nil, "tls error" }, { c, word })
      assert.matches("not valid for name", detail, 1, true)
      -- the server learns why: the client's alert
      assert.is_true(H.wait_for(function() return #seen.failures == 1 end, 2))
      assert.equals("tls error", seen.failures[1][1])
      done()
    end, 10)
  end)

  it("an expired certificate is refused", function()
    H.run(function()
      local addr = echo_server(server_config("expired"))
      local c, word, detail = luanet.tls.connect(addr, { ca = CA })
      assert.same({ nil, "tls error" }, { c, word })
      assert.matches("xpired", detail)
      done()
    end, 10)
  end)

  it("a certificate from a CA we do not trust is refused; verify = false accepts it", function()
    H.run(function()
      local addr = echo_server(server_config("rogue"))
      local c, word, detail = luanet.tls.connect(addr, { ca = CA })
      assert.same({ nil, "tls error" }, { c, word })
      assert.matches("UnknownIssuer", detail, 1, true)
      -- the system's roots do not know our test CA either
      c, word = luanet.tls.connect(addr, {})
      assert.same({ nil, "tls error" }, { c, word })
      c = assert(luanet.tls.connect(addr, { verify = false }))
      c:write("ok")
      assert.equals("ok", c:read(2, 2))
      c:close()
      done()
    end, 10)
  end)

  it("handshake timeouts: a server that never answers, a client that never speaks", function()
    H.run(function()
      -- a TCP server that accepts and says nothing
      local mute = assert(luanet.tcp.listen("127.0.0.1:0"))
      local held = {}
      H.go(function()
        while true do
          local c = mute:accept()
          if not c then return end
          held[#held + 1] = c
        end
      end)
      local el, c, word, detail = H.timed(luanet.tls.connect, mute:local_addr(),
        { ca = CA, handshake_timeout = 0.3 })
      assert.same({ nil, "timeout" }, { c, word })
      assert.matches("handshake", detail, 1, true)
      assert.is_true(el >= 0.25 and el < 1.5, "gave up after " .. el)
      -- a client that connects and sends nothing: the server's accept gives up
      local addr, seen = echo_server(server_config(), { handshake_timeout = 0.3 })
      local silent = assert(luanet.tcp.connect(addr))
      assert.is_true(H.wait_for(function() return #seen.failures == 1 end, 2))
      assert.equals("timeout", seen.failures[1][1])
      -- and its connection is closed (after the alert that says why)
      local data, word
      repeat data, word = silent:read(10, 2) until data == nil
      assert.equals("closed", word)
      -- a plain-text client gets an error, not a hang
      local plain = assert(luanet.tcp.connect(addr))
      plain:write("GET / HTTP/1.0\r\n\r\n")
      assert.is_true(H.wait_for(function() return #seen.failures == 2 end, 2))
      assert.equals("tls error", seen.failures[2][1])
      mute:close()
      for _, c in ipairs(held) do c:close() end
      done()
    end, 10)
  end)

  it("bad configurations and arguments give clear errors", function()
    H.run(function()
      local cfg, word, detail = luanet.tls.server_config { cert = F("nope.pem"), key = F("server-key.pem") }
      assert.same({ nil, "tls error" }, { cfg, word })
      assert.matches("nope.pem", detail, 1, true)
      cfg, word, detail = luanet.tls.server_config { cert = F("server.pem"), key = F("b-key.pem") }
      assert.same({ nil, "tls error" }, { cfg, word })
      assert.matches("do not belong together", detail, 1, true)
      cfg, word, detail = luanet.tls.client_config { ca = F("server-key.pem") }
      assert.same({ nil, "tls error" }, { cfg, word })
      H.raises({ "server_config", "cert" }, luanet.tls.server_config, {})
      H.raises({ "cert", "key" }, luanet.tls.server_config, { cert = F("server.pem") })
      H.raises({ "sni" }, luanet.tls.server_config, { sni = { "x" } })
      H.raises({ "client_config", "table" }, luanet.tls.client_config, "ca.pem")
      H.raises({ "tls.connect", "addr" }, luanet.tls.connect, 42)
      H.raises({ "handshake_timeout" }, luanet.tls.connect, "127.0.0.1:1", { handshake_timeout = "soon" })
      -- wrapping: a client needs the name to check; a connection is wrapped once
      local a, b = H.pair()
      H.raises({ "server_name" }, luanet.tls.wrap, a, assert(luanet.tls.client_config { ca = CA }))
      H.raises({ "config" }, luanet.tls.wrap, a, "not a config", "x")
      assert(luanet.tls.wrap(b, server_config()))
      H.raises({ "already speaks TLS" }, luanet.tls.wrap, b, server_config())
      local wrapped, w, d = luanet.tls.wrap(a, assert(luanet.tls.client_config { ca = CA }), "bad name!")
      assert.same({ nil, "bad address" }, { wrapped, w })
      assert.truthy(d)
      a:close()
      b:close()
    end, 10)
  end)
end)

-- Services and the name service over TLS (luanet.configure{ tls = ... }).
local SERVICE = H.CHILD_PUT .. [==[
local luanet = require "luanet"
luanet.spawn(function() luanet.sleep(20) os.exit(3) end)
luanet.configure { tls = TLS }
luanet.RegRPCFunction("Plus", function(t) return t.a + t.b end)
luanet.run(function()
  assert(luanet.StartLocalService(NAME, "127.0.0.1:0"))
  put("addr", luanet.service_listener:local_addr())
  if NS then
    local ok, word, detail = luanet.Register2Name(NS)
    put("reg", tostring(ok) .. " " .. tostring(word) .. " " .. tostring(detail))
  end
end)
]==]

local NAMESERVICE = H.CHILD_PUT .. [==[
local luanet = require "luanet"
luanet.spawn(function() luanet.sleep(20) os.exit(3) end)
luanet.configure { tls = TLS }
luanet.run(function()
  assert(luanet.StartNameService("127.0.0.1:0"))
  put("addr", luanet.service_listener:local_addr())
end)
]==]

local function start(src, vars)
  for k, v in pairs(vars) do src = src:gsub(k, function() return v end) end
  local child = H.bg(src)
  assert(H.wait_for(function() return child.file("addr") ~= "" end, 5), "child did not start: " .. child.file("err"))
  child.addr = child.file("addr")
  return child
end

local function tls_lit(t)
  local parts = {}
  for k, v in pairs(t) do parts[#parts + 1] = ("%s = %q"):format(k, v) end
  return "{ " .. table.concat(parts, ", ") .. " }"
end

describe("tls between services", function()
  it("a service and its name service speak only TLS; a caller with the CA calls by name", function()
    local server_tls = tls_lit { cert = F("server.pem"), key = F("server-key.pem"), ca = CA }
    H.run(function()
      local ns = start(NAMESERVICE, { TLS = server_tls })
      local svc = start(SERVICE, { TLS = server_tls, NAME = '"TlsPlus"', NS = ("%q"):format(ns.addr) })
      assert.is_true(H.wait_for(function() return svc.file("reg") ~= "" end, 10), svc.file("err"))
      assert.equals("true nil nil", svc.file("reg"))

      luanet.configure { tls = { ca = CA } }
      finally(function() luanet.configure { tls = false } end)
      luanet.UseNameService(ns.addr)
      assert.equals(5, luanet.RPCCall("TlsPlus", "Plus", { a = 2, b = 3 }))
      assert.same({ "TlsPlus" }, luanet.GetRemoteFuncProvider("Plus"))
      assert.equals(7, luanet.RPCCall(svc.addr, "Plus", { a = 3, b = 4 }))

      -- a plain-text client is refused by both, and each logs why once
      local plain = assert(luanet.tcp.connect(svc.addr))
      plain:write(luanet.pack(luanet.array { 0, 1, "Plus", luanet.array { { a = 1, b = 1 } } }))
      local got = plain:read(100, 2)
      assert.is_nil(got and got:find("\2", 1, true) and got:find("Plus", 1, true))
      assert.is_true(H.wait_for(function() return svc.file("err"):find("tls error", 1, true) ~= nil end, 2),
        svc.file("err"))
      local _, n = svc.file("err"):gsub("tls error", "")
      assert.equals(1, n)
    end, 20)
  end)

  it("a caller that does not trust the service's certificate gets a clear error", function()
    H.run(function()
      local svc = start(SERVICE, {
        TLS = tls_lit { cert = F("rogue.pem"), key = F("rogue-key.pem"), ca = CA },
        NAME = '"RoguePlus"', NS = "false" })
      luanet.configure { tls = { ca = CA } }
      finally(function() luanet.configure { tls = false } end)
      local v, word, detail = luanet.RPCCall(svc.addr, "Plus", { a = 1, b = 1 })
      assert.same({ nil, "no such service" }, { v, word })
      assert.matches("tls error", detail, 1, true)
      assert.matches("UnknownIssuer", detail, 1, true)
      -- without TLS switched on here, the call fails too: the service speaks only TLS
      luanet.configure { tls = false }
      v, word = luanet.RPCCall(svc.addr, "Plus", { a = 1, b = 1 }, luanet.call_options { timeout = 2 })
      assert.is_nil(v)
      assert.truthy(word)
    end, 20)
  end)

  it("mutual TLS: the service takes only callers with a certificate from its CA", function()
    H.run(function()
      local svc = start(SERVICE, {
        TLS = tls_lit { cert = F("server.pem"), key = F("server-key.pem"), ca = CA, mutual = "1" },
        NAME = '"MutualPlus"', NS = "false" })
      -- without a client certificate: refused
      luanet.configure { tls = { ca = CA } }
      finally(function() luanet.configure { tls = false } end)
      local v, word = luanet.RPCCall(svc.addr, "Plus", { a = 1, b = 1 }, luanet.call_options { timeout = 2 })
      assert.is_nil(v)
      assert.truthy(word)
      -- with one: served (the backoff after the failure is per address; a new caller
      -- state would not have it, so wait it out)
      luanet.configure { tls = { ca = CA, cert = F("client.pem"), key = F("client-key.pem"), mutual = true } }
      local ok
      assert.is_true(H.wait_for(function()
        ok = luanet.RPCCall(svc.addr, "Plus", { a = 20, b = 22 }, luanet.call_options { timeout = 2 })
        return ok ~= nil
      end, 8))
      assert.equals(42, ok)
    end, 20)
  end)

  it("bad tls settings are refused by configure", function()
    H.raises({ "tls", "table" }, luanet.configure, { tls = "yes" })
    H.raises({ "unknown setting 'certificate'" }, luanet.configure, { tls = { certificate = "x" } })
    H.raises({ "'cert' and 'key' go together" }, luanet.configure, { tls = { cert = F("server.pem") } })
    H.raises({ "mutual" }, luanet.configure, { tls = { mutual = true } })
    H.raises({ "nope.pem" }, luanet.configure, { tls = { ca = F("nope.pem") } })
  end)
end)
