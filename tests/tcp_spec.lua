-- TCP connections: listen/accept/connect on 127.0.0.1 and [::1], addresses, options
-- (nodelay, keepalive, buffer sizes, local_addr, backlog, ipv6only), connect failures
-- (refused, timeout, bad address, address in use, too many open files), argument errors,
-- and 2000 concurrent echo clients. Reading/writing details are in tcp_io_spec.lua.

local luanet = require "luanet"
local H = require "helper"

local function echo_once(l)
  H.go(function()
    local c = assert(l:accept(5))
    local line = assert(c:read_line(5))
    assert(c:write(line:upper() .. "\n"))
    c:close()
  end)
end

describe("tcp", function()
  it("listen/connect/accept and echo on 127.0.0.1, with local and peer addresses", function()
    H.run(function()
      local l = assert(luanet.tcp.listen("127.0.0.1:0"))
      local a = l:local_addr()
      assert.truthy(a:match("^127%.0%.0%.1:%d+$"), a)
      assert.is_true(H.port_of(a) > 0)
      local server_peer
      H.go(function()
        local c = assert(l:accept(5))
        server_peer = c:peer_addr()
        assert.equals(a, c:local_addr())
        c:write((assert(c:read_line(5))):upper() .. "\n")
        c:close()
      end)
      local c = assert(luanet.tcp.connect(a, { timeout = 2 }))
      assert.equals(a, c:peer_addr())
      assert.is_true(c:write("hello\n"))
      assert.equals("HELLO", c:read_line(2))
      assert.same({ nil, "closed" }, H.two(c:read(nil, 2)))
      assert.equals(c:local_addr(), server_peer)
      assert.truthy(server_peer:match("^127%.0%.0%.1:%d+$"))
      c:close()
      l:close()
    end)
  end)

  it("works over [::1]", function()
    if not H.has_ipv6() then pending("no IPv6 loopback in this environment") end
    H.run(function()
      local l = assert(luanet.tcp.listen("[::1]:0"))
      local a = l:local_addr()
      assert.truthy(a:match("^%[::1%]:%d+$"), a)
      echo_once(l)
      local c = assert(luanet.tcp.connect(a, { timeout = 2 }))
      assert.truthy(c:local_addr():match("^%[::1%]:%d+$"), c:local_addr())
      c:write("six\n")
      assert.equals("SIX", c:read_line(2))
      c:close()
      l:close()
    end)
  end)

  it("honours ipv6only on [::]", function()
    if not H.has_ipv6() then pending("no IPv6 loopback in this environment") end
    H.run(function()
      local only = assert(luanet.tcp.listen("[::]:0", { ipv6only = true }))
      local port = H.port_of(only:local_addr())
      local c, word = luanet.tcp.connect("127.0.0.1:" .. port, { timeout = 2 })
      assert.is_nil(c)
      assert.equals("connection refused", word)
      only:close()
      local dual = assert(luanet.tcp.listen("[::]:0", { ipv6only = false }))
      echo_once(dual)
      c = assert(luanet.tcp.connect("127.0.0.1:" .. H.port_of(dual:local_addr()), { timeout = 2 }))
      c:write("v4\n")
      assert.equals("V4", c:read_line(2))
      c:close()
      dual:close()
    end)
  end)

  it("connect to a port nobody listens on gives 'connection refused'", function()
    H.run(function()
      local port = H.free_port()
      local el, c, word, detail = H.timed(luanet.tcp.connect, "127.0.0.1:" .. port, { timeout = 2 })
      assert.is_nil(c)
      assert.equals("connection refused", word)
      assert.equals("string", type(detail))
      assert.is_true(el < 1)
    end)
  end)

  -- Connect timeout without leaving loopback: a listener with backlog 1 that never accepts.
  -- Linux keeps backlog+1 completed connections queued and then drops further SYNs, so a
  -- later connect stays in SYN-SENT and must hit its timeout.
  it("connect times out with nil, 'timeout' against a full accept queue", function()
    H.run(function()
      local l = assert(luanet.tcp.listen("127.0.0.1:0", { backlog = 1 }))
      local a = l:local_addr()
      local conns, timed_out, el_to = {}, false, nil
      for _ = 1, 8 do
        local el, c, word = H.timed(luanet.tcp.connect, a, { timeout = 0.3 })
        if c then
          conns[#conns + 1] = c
        else
          assert.equals("timeout", word)
          timed_out, el_to = true, el
          break
        end
      end
      for _, c in ipairs(conns) do c:close() end
      l:close()
      if not timed_out and not H.exists("/proc/sys/net/ipv4") then
        pending("the OS completed every connect to a full backlog; cannot provoke a timeout")
      end
      assert.is_true(timed_out, "8 connects to a backlog-1 listener all completed (backlog ignored?)")
      assert.is_true(el_to >= 0.29 and el_to < 1.5, "connect timeout took " .. el_to)
      assert.is_true(#conns >= 1 and #conns <= 3, #conns .. " connects completed first")
    end)
  end)

  it("a second listener on the same port gives 'address in use'", function()
    H.run(function()
      local l1 = assert(luanet.tcp.listen("127.0.0.1:0"))
      for _, opts in ipairs({ {}, { reuseaddr = true }, { reuseaddr = false } }) do
        local l2, word, detail = luanet.tcp.listen(l1:local_addr(), opts)
        assert.is_nil(l2)
        assert.equals("address in use", word)
        assert.equals("string", type(detail))
      end
      echo_once(l1) -- the first listener still works
      local c = assert(luanet.tcp.connect(l1:local_addr(), { timeout = 2 }))
      c:write("still\n")
      assert.equals("STILL", c:read_line(2))
      c:close()
      l1:close()
    end)
  end)

  it("unparsable addresses give nil, 'bad address'", function()
    H.run(function()
      for _, a in ipairs({ "127.0.0.1", "127.0.0.1:99999", "[::1", "127.0.0.1:port" }) do
        local c, word = luanet.tcp.connect(a, { timeout = 1 })
        assert.is_nil(c, a)
        assert.equals("bad address", word, a)
        local l
        l, word = luanet.tcp.listen(a)
        assert.is_nil(l, a)
        assert.equals("bad address", word, a)
      end
    end)
  end)

  it("options: nodelay, keepalive, buffer sizes, local_addr", function()
    H.run(function()
      local l = assert(luanet.tcp.listen("127.0.0.1:0", { backlog = 16, reuseaddr = true }))
      local port = H.free_port()
      local me = "127.0.0.1:" .. port
      local c = assert(luanet.tcp.connect(l:local_addr(), { timeout = 2, nodelay = true, local_addr = me }))
      assert.equals(me, c:local_addr())
      local s = assert(l:accept(2))
      assert.equals(me, s:peer_addr())
      c:set_nodelay(false)
      c:set_nodelay(true)
      c:set_keepalive(true)
      c:set_keepalive(30)
      c:set_keepalive(false)
      c:set_send_buffer(262144)
      local big = c:send_buffer()
      assert.is_true(big >= 262144, "send_buffer " .. big)
      c:set_send_buffer(8192)
      local small = c:send_buffer()
      assert.is_true(small >= 8192 and small < big, ("send_buffer %d after 8192"):format(small))
      s:set_recv_buffer(16384)
      local r = s:recv_buffer()
      assert.is_true(r >= 16384 and r <= 65536, "recv_buffer " .. r)
      -- still a working connection
      c:write("ping\n")
      assert.equals("ping", s:read_line(2))
      c:close(); s:close(); l:close()
    end)
  end)

  it("misuse raises errors that name the function and argument", function()
    H.raises({ "luanet.tcp.listen", "bad argument #1", "addr" }, luanet.tcp.listen, true)
    H.raises({ "luanet.spawn", "fn" }, luanet.spawn, nil)
    H.run(function()
      H.raises({ "luanet.tcp.connect", "bad argument #1", "addr" }, luanet.tcp.connect, nil)
      H.raises({ "luanet.tcp.connect", "addr" }, luanet.tcp.connect, {})
      H.raises({ "luanet.tcp.connect", "opts" }, luanet.tcp.connect, "127.0.0.1:1", "fast")
      local c, s = H.pair()
      H.raises({ "write", "data" }, c.write, c, nil)
      H.raises({ "write" }, c.write, c, {})
      H.raises({ "read" }, c.read, c, "lots")
      H.raises({ "read" }, c.read, c, 10, "later")
      H.raises({ "read_exact" }, c.read_exact, c, nil)
      H.raises({ "timeout" }, luanet.tcp.connect, "127.0.0.1:1", { timeout = "soon" })
      H.raises({ "luanet.sleep", "seconds" }, luanet.sleep, "soon")
      c:close(); s:close()
    end)
  end)

  it("running out of descriptors gives nil, 'too many open files'", function()
    local r = H.child([[
      local luanet = require "luanet"
      local keep, word = {}, nil
      luanet.run(function()
        for _ = 1, 200 do
          local l, w = luanet.tcp.listen("127.0.0.1:0")
          if not l then word = w; break end
          keep[#keep + 1] = l
        end
        -- closing some frees descriptors again
        for i = 1, 5 do keep[i]:close() end
        local l = luanet.tcp.listen("127.0.0.1:0")
        print(("opened=%d word=%s again=%s"):format(#keep, tostring(word), tostring(l ~= nil)))
      end)
    ]], 10, "ulimit -n 64;")
    assert.is_true(r.ok, "child failed: " .. r.out .. r.err)
    local opened, word, again = r.out:match("opened=(%d+) word=(.-) again=(%a+)")
    assert.truthy(opened, r.out .. r.err)
    assert.is_true(tonumber(opened) < 64)
    assert.equals("too many open files", word)
    assert.equals("true", again)
  end)

  it("serves 2000 concurrent clients each echoing 3 messages", function()
    H.run(function()
      local N, M = 2000, 3
      local l = assert(luanet.tcp.listen("127.0.0.1:0"))
      local a = l:local_addr()
      H.go(function()
        while true do
          local c = l:accept()
          if not c then break end
          H.go(function()
            while true do
              local line = c:read_line(20)
              if not line then break end
              assert(c:write(line .. "\n"))
            end
            c:close()
          end)
        end
      end)
      local ok = 0
      local t0 = luanet.now()
      for i = 1, N do
        H.go(function()
          local c = assert(luanet.tcp.connect(a, { timeout = 15 }))
          for j = 1, M do
            local msg = ("client %d message %d"):format(i, j)
            assert(c:write(msg .. "\n"))
            assert.equals(msg, c:read_line(15))
          end
          c:close()
          ok = ok + 1
        end)
      end
      H.wait_for(function() return ok == N end, 30)
      l:close()
      assert.equals(N, ok)
      local el = luanet.now() - t0
      assert.is_true(el < 30, "2000 clients took " .. el .. " s")
    end, 45)
  end)
end)
