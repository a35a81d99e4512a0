-- Unix domain sockets: stream listen/connect/echo on a filesystem path and on an abstract
-- "@name", stale socket files (left by a lua5.4 child killed with SIGKILL) replaced while a
-- live listener is never stolen, listener close removing its file, connect errors
-- ("no such file", "connection refused"), datagram sockets, and luanet.listen/connect
-- choosing Unix or TCP from the address form.

local luanet = require "luanet"
local H = require "helper"

local function echo_server(l, n)
  H.go(function()
    for _ = 1, n or 1 do
      local c = assert(l:accept(5))
      H.go(function()
        while true do
          local line = c:read_line(5)
          if not line then break end
          c:write(line:upper() .. "\n")
        end
        c:close()
      end)
    end
  end)
end

local function check_echo(c, msg)
  assert.is_true(c:write(msg .. "\n"))
  assert.equals(msg:upper(), c:read_line(2))
end

local function abstract_name(tag)
  return ("@luanet-test-%s-%d-%d"):format(tag, math.random(1, 1e9), math.floor(os.time()))
end

describe("unix", function()
  local dir
  before_each(function() dir = H.tmpdir() end)
  after_each(function() H.rmdir(dir) end)

  it("stream listen/connect/echo on a filesystem path", function()
    H.run(function()
      local path = dir .. "/echo.sock"
      local l = assert(luanet.unix.listen(path))
      assert.is_true(H.exists(path))
      assert.equals(path, l:local_addr())
      echo_server(l, 20)
      local c = assert(luanet.unix.connect(path, { timeout = 2 }))
      assert.equals(path, c:peer_addr())
      check_echo(c, "over unix")
      assert.same({ nil, "timeout" }, H.two(c:read(nil, 0.05)))
      c:close()
      -- a few concurrent clients
      local done = 0
      for i = 1, 19 do
        H.go(function()
          local k = assert(luanet.unix.connect(path, { timeout = 2 }))
          for j = 1, 3 do check_echo(k, ("c%d m%d"):format(i, j)) end
          k:close()
          done = done + 1
        end)
      end
      assert.is_true(H.wait_for(function() return done == 19 end, 5))
      l:close()
    end)
  end)

  it("abstract '@name' sockets work and create no file", function()
    H.run(function()
      local name = abstract_name("abs")
      local l = assert(luanet.unix.listen(name))
      assert.equals(name, l:local_addr())
      echo_server(l)
      local c = assert(luanet.unix.connect(name, { timeout = 2 }))
      check_echo(c, "abstract")
      assert.is_false(H.exists(name))
      c:close()
      l:close()
      local c2, word = luanet.unix.connect(name, { timeout = 2 })
      assert.is_nil(c2)
      assert.equals("connection refused", word)
    end)
  end)

  it("close removes the socket file; connecting then gives 'no such file'", function()
    H.run(function()
      local path = dir .. "/gone.sock"
      local l = assert(luanet.unix.listen(path))
      assert.is_true(H.exists(path))
      l:close()
      assert.is_false(H.exists(path))
      local c, word, detail = luanet.unix.connect(path, { timeout = 2 })
      assert.is_nil(c)
      assert.equals("no such file", word)
      assert.equals("string", type(detail))
    end)
  end)

  it("a live listener in this process is not stolen", function()
    H.run(function()
      local path = dir .. "/live.sock"
      local l = assert(luanet.unix.listen(path))
      local l2, word = luanet.unix.listen(path)
      assert.is_nil(l2)
      assert.equals("address in use", word)
      assert.is_true(H.exists(path))
      echo_server(l)
      local c = assert(luanet.unix.connect(path, { timeout = 2 }))
      check_echo(c, "still mine")
      c:close()
      l:close()
    end)
  end)

  it("a live listener in another process is kept; its stale file is replaced once killed", function()
    H.run(function()
      local path = dir .. "/stale.sock"
      local child = H.bg(([[
local luanet = require "luanet"
luanet.run(function()
  local l = assert(luanet.unix.listen(%q))
  local f = io.open("ready", "w") f:write("yes") f:close()
  luanet.sleep(30)
end)
]]):format(path))
      local ready = H.wait_for(function() return child.file("ready") == "yes" end, 5)
      if not ready then
        child.cleanup()
        error("child never listened: " .. child.file("err"))
      end
      local l, word = luanet.unix.listen(path)
      assert.is_nil(l)
      assert.equals("address in use", word)

      child.kill("KILL")
      assert.is_true(H.wait_for(function() return not child.alive() end, 3), "child survived")
      child.cleanup()
      assert.is_true(H.exists(path), "killed child left no socket file")
      local c
      c, word = luanet.unix.connect(path, { timeout = 2 })
      assert.is_nil(c)
      assert.equals("connection refused", word)

      l = assert(luanet.unix.listen(path))
      echo_server(l)
      c = assert(luanet.unix.connect(path, { timeout = 2 }))
      check_echo(c, "replaced")
      c:close()
      l:close()
    end)
  end)

  it("datagram sockets: bound and unbound senders, timeouts, missing target", function()
    H.run(function()
      local p1, p2 = dir .. "/d1.sock", dir .. "/d2.sock"
      local b = assert(luanet.unix.bind(p1))
      local a = assert(luanet.unix.bind(p2))
      assert.equals(p1, b:local_addr())
      assert.is_true(a:sendto("from a", p1))
      local data, from = b:recvfrom(2)
      assert.equals("from a", data)
      assert.equals(p2, from)
      assert.is_true(b:sendto("back", from))
      assert.same({ "back", p1 }, { a:recvfrom(2) })

      local u = assert(luanet.unix.datagram())
      assert.is_true(u:sendto("anon", p1))
      assert.same({ "anon", "" }, { b:recvfrom(2) })

      local el, v, word = H.timed(b.recvfrom, b, 0.05)
      assert.same({ nil, "timeout" }, { v, word })
      assert.is_true(el >= 0.045 and el < 0.5)

      local ok
      ok, word = u:sendto("lost", dir .. "/missing.sock")
      assert.is_nil(ok)
      assert.equals("no such file", word)
      a:close(); b:close(); u:close()
    end)
  end)

  it("abstract datagram sockets", function()
    H.run(function()
      local name = abstract_name("dg")
      local b = assert(luanet.unix.bind(name))
      local u = assert(luanet.unix.datagram())
      assert.is_true(u:sendto("abs", name))
      assert.equals("abs", (b:recvfrom(2)))
      b:close(); u:close()
    end)
  end)

  it("connect to a missing path gives 'no such file'", function()
    H.run(function()
      local el, c, word = H.timed(luanet.unix.connect, dir .. "/nobody.sock", { timeout = 2 })
      assert.is_nil(c)
      assert.equals("no such file", word)
      assert.is_true(el < 1)
    end)
  end)

  it("luanet.listen/connect pick Unix for 'unix:', '/' and '@' forms and TCP otherwise", function()
    H.run(function()
      local forms = {
        { "unix:" .. dir .. "/prefixed.sock", dir .. "/prefixed.sock" },
        { dir .. "/slash.sock", dir .. "/slash.sock" },
        { abstract_name("disp"), nil },
      }
      for _, f in ipairs(forms) do
        local addr, file = f[1], f[2]
        local l = assert(luanet.listen(addr))
        if file then assert.is_true(H.exists(file), addr) end
        assert.truthy(l:local_addr():find(file or addr, 1, true), l:local_addr())
        echo_server(l)
        local c = assert(luanet.connect(addr, { timeout = 2 }))
        check_echo(c, "via " .. addr)
        c:close()
        l:close()
        if file then assert.is_false(H.exists(file), "close left " .. file) end
      end
      local l = assert(luanet.listen("127.0.0.1:0"))
      assert.truthy(l:local_addr():match("^127%.0%.0%.1:%d+$"), l:local_addr())
      echo_server(l)
      local c = assert(luanet.connect(l:local_addr(), { timeout = 2 }))
      check_echo(c, "via tcp")
      c:set_nodelay(true) -- a TCP connection
      c:close()
      l:close()
    end)
  end)
end)
