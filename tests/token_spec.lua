-- The cluster token handshake at the byte level (docs/PROTOCOL.md, "Cluster token"):
-- this process plays a client by hand over a raw TCP socket against a service child
-- that holds the token. A proof computed as the document says is accepted; no hello, no
-- nonce, a wrong proof, a request before the proof, and a reflected nonce all close the
-- connection without an answer. Name-service level token tests are in names_spec.lua.

local luanet = require "luanet"
local core = require "luanet.core"
local H = require "helper"

local TOKEN = "correct horse battery staple"

local SERVICE = H.CHILD_PUT .. [==[
local luanet = require "luanet"
luanet.configure({ token = @@TOKEN@@, connect_timeout = 1 })
luanet.RegRPCFunction("Plus", function(t) return t.a + t.b end)
luanet.spawn(function() luanet.sleep(25) os.exit(3) end)   -- never outlive the suite
luanet.run(function()
  assert(luanet.StartLocalService("Vault", "127.0.0.1:0"))
  put("addr", luanet.service_listener:local_addr())
end)
]==]

local function start_vault()
  local p = H.bg((SERVICE:gsub("@@TOKEN@@", ("%q"):format(TOKEN))))
  assert(H.wait_for(function() return p.file("addr") ~= "" end, 5), "service did not start: " .. p.file("err"))
  p.addr = p.file("addr")
  return p
end

local function auth_text(role, verifier_nonce, prover_nonce)
  return "luanet auth v1\0" .. role .. "\0" .. verifier_nonce .. prover_nonce
end

-- Connects and reads the service's hello: returns the connection and its nonce.
local function open(addr)
  local c = assert(luanet.tcp.connect(addr, { timeout = 2 }))
  local hello = assert(c:read_message(2))
  assert.equals("luanet.hello", hello[2])
  assert.equals("Vault", hello[3][1])
  local nonce = hello[3][3]
  assert.equals("string", type(nonce))
  assert.equals(16, #nonce)
  return c, nonce
end

local proof_seen = setmetatable({}, { __mode = "k" })   -- connection -> the service's proof

-- Everything the service sends until it answers (not a notification) or closes.
local function answer_or_close(c, t)
  local deadline = luanet.now() + t
  while true do
    local v, word = c:read_message(math.max(0, deadline - luanet.now()))
    if v == nil then return nil, word end
    if v[1] ~= 2 then return v end
    if v[2] == "luanet.auth" then proof_seen[c] = v[3][1] end
  end
end

local GONE = { closed = true, ["connection reset"] = true }

describe("cluster token", function()
  it("a proof computed as PROTOCOL.md says is accepted, and the service proves itself too", function()
    H.run(function()
      local s = start_vault()
      local c, theirs = open(s.addr)
      local mine = core.random_bytes(16)
      c:write_array(2, "luanet.hello", luanet.array { "", false, mine })
      c:write_array(2, "luanet.auth", luanet.array {
        core.hmac_sha256(TOKEN, auth_text("dialer", theirs, mine)) })
      c:write_array(0, 1, "Plus", luanet.array { { a = 20, b = 22 } })
      local v = answer_or_close(c, 3)
      assert.same({ 1, 1, nil, 42, n = 4 }, v)
      -- The service's own proof, as the acceptor, checks out against our nonce.
      assert.is_true(core.hmac_verify(TOKEN, auth_text("acceptor", mine, theirs), proof_seen[c]))
      c:close()
    end, 10)
  end)

  local refused = {
    { "a request before any hello", function(c)
        c:write_array(0, 1, "Plus", luanet.array { { a = 1, b = 1 } })
      end },
    { "a hello without a nonce", function(c)
        c:write_array(2, "luanet.hello", luanet.array { "" })
        c:write_array(0, 1, "Plus", luanet.array { { a = 1, b = 1 } })
      end },
    { "a wrong proof", function(c, theirs)
        local mine = core.random_bytes(16)
        c:write_array(2, "luanet.hello", luanet.array { "", false, mine })
        c:write_array(2, "luanet.auth", luanet.array {
          core.hmac_sha256("not the token", auth_text("dialer", theirs, mine)) })
        c:write_array(0, 1, "Plus", luanet.array { { a = 1, b = 1 } })
      end },
    { "a right token with the acceptor's role", function(c, theirs)
        local mine = core.random_bytes(16)
        c:write_array(2, "luanet.hello", luanet.array { "", false, mine })
        c:write_array(2, "luanet.auth", luanet.array {
          core.hmac_sha256(TOKEN, auth_text("acceptor", theirs, mine)) })
        c:write_array(0, 1, "Plus", luanet.array { { a = 1, b = 1 } })
      end },
    { "a message before the proof", function(c)
        c:write_array(2, "luanet.hello", luanet.array { "", false, core.random_bytes(16) })
        c:write_array(2, "luanet.msg", luanet.array { "", "sneaky" })
      end },
    { "silence (no proof within connect_timeout)", function() end },
  }
  for _, case in ipairs(refused) do
    it("closes the connection without an answer on " .. case[1], function()
      H.run(function()
        local s = start_vault()
        local c, theirs = open(s.addr)
        case[2](c, theirs)
        local v, word = answer_or_close(c, 3)
        assert.is_nil(v)
        assert.is_true(GONE[word] == true, tostring(word))
        -- and the service still serves a client that proves itself
        local c2, n2 = open(s.addr)
        local mine = core.random_bytes(16)
        c2:write_array(2, "luanet.hello", luanet.array { "", false, mine })
        c2:write_array(2, "luanet.auth", luanet.array { core.hmac_sha256(TOKEN, auth_text("dialer", n2, mine)) })
        c2:write_array(0, 7, "Plus", luanet.array { { a = 1, b = 2 } })
        assert.same({ 1, 7, nil, 3, n = 4 }, answer_or_close(c2, 3))
        c:close()
        c2:close()
      end, 10)
    end)
  end

  it("refuses a hello that reflects the service's own nonce back at it", function()
    H.run(function()
      local s = start_vault()
      -- Connection 1: the service's nonce n1, which an attacker would like proved.
      local c1, n1 = open(s.addr)
      -- Connection 2: hand n1 back as our nonce, hoping the service proves over it.
      local c2 = open(s.addr)
      c2:write_array(2, "luanet.hello", luanet.array { "", false, n1 })
      local v, word = answer_or_close(c2, 3)
      assert.is_nil(v)
      assert.is_true(GONE[word] == true, tostring(word))
      assert.is_nil(proof_seen[c2])       -- no proof was given for our chosen nonce
      c1:close()
      c2:close()
    end, 10)
  end)

  it("luanet processes with the same token talk; a different or missing token gets no answer", function()
    H.run(function()
      local s = start_vault()
      local function call_with(token)
        local r = H.child(([==[
          local luanet = require "luanet"
          if %s then luanet.configure({ token = %s }) end
          luanet.configure({ connect_timeout = 2, call_timeout = 2 })
          luanet.run(function()
            print(luanet.RPCCall(%q, "Plus", { a = 2, b = 3 }))
          end)
        ]==]):format(tostring(token ~= nil), ("%q"):format(token or ""), s.addr), 10)
        return r.out
      end
      assert.matches("^5\n", call_with(TOKEN))
      assert.matches("^nil\tconnection lost", call_with("another token"))
      assert.matches("^nil\tconnection lost", call_with(nil))
    end, 20)
  end)
end)
