-- TLS for TCP streams (docs/tls.md): the Lua face of src/tls.rs. The core wraps a
-- connection and moves its handshake; this file builds configurations, picks the name
-- to verify, and runs the handshake with its timeout before handing a connection out.
return function(luanet, core)

local DEFAULT_HANDSHAKE_TIMEOUT = 10   -- seconds: a peer that stalls the handshake is dropped

local tls = {}
luanet.tls = tls

tls.client_config = core.tls_client_config
tls.server_config = core.tls_server_config

--- The host part of "host:port" or "[v6]:port": the name a client checks by default.
local function host_of(addr)
   local v6 = addr:match("^%[(.-)%]:%d+$")
   if v6 then return v6 end
   return addr:match("^(.-):%d+$") or addr
end

local function handshake_timeout(opts, func)
   local t = opts and opts.handshake_timeout
   if t == nil then return DEFAULT_HANDSHAKE_TIMEOUT end
   if type(t) ~= "number" or t ~= t or t < 0 then
      error(func .. ": 'handshake_timeout' must be a number of seconds, 0 or more", 3)
   end
   return t
end

--- Wraps `conn` and runs the handshake; on failure the connection is closed and the
--- failure returned.
local function wrap_and_shake(conn, config, server_name, timeout)
   local wrapped, word, detail = core.tls_wrap(conn, config, server_name)
   if not wrapped then
      conn:close()
      return nil, word, detail
   end
   local ok
   ok, word, detail = conn:tls_handshake(timeout)
   if ok then return conn end
   conn:close()
   if word == "timeout" then detail = "the TLS handshake did not finish in " .. timeout .. " s" end
   return nil, word, detail
end

--- Makes `conn` (a connected stream) speak TLS: the client side with a client config and
--- the name to verify, the server side with a server config. No handshake yet.
function tls.wrap(conn, config, server_name)
   return core.tls_wrap(conn, config, server_name)
end

local CLIENT_KEYS = { ca = true, verify = true, cert = true, key = true, alpn = true }

--- luanet.tls.connect(addr, opts): a TCP connection with the TLS handshake done.
--- opts: what luanet.tcp.connect takes (timeout, nodelay, local_addr), and config (a
--- client config) or the fields to make one (ca, verify, cert, key, alpn); server_name
--- (default: the host in addr); handshake_timeout (default 10 s).
function tls.connect(addr, opts)
   if type(addr) ~= "string" then
      error("luanet.tls.connect: bad argument #1 'addr' (string expected, got " .. type(addr) .. ")", 2)
   end
   if opts ~= nil and type(opts) ~= "table" then
      error("luanet.tls.connect: bad argument #2 'opts' (table expected, got " .. type(opts) .. ")", 2)
   end
   opts = opts or {}
   local timeout = handshake_timeout(opts, "luanet.tls.connect")
   local config, word, detail = opts.config, nil, nil
   if config == nil then
      local fields = {}
      for k in pairs(CLIENT_KEYS) do fields[k] = opts[k] end
      config, word, detail = core.tls_client_config(fields)
      if not config then return nil, word, detail end
   end
   local name = opts.server_name or host_of(addr)
   local tcp_opts = { timeout = opts.timeout, nodelay = opts.nodelay, local_addr = opts.local_addr }
   local conn
   conn, word, detail = luanet.tcp.connect(addr, tcp_opts)
   if not conn then return nil, word, detail end
   return wrap_and_shake(conn, config, name, timeout)
end

--- luanet.tls.accept(conn, config, [opts]): the server side of an accepted connection,
--- handshake done. Run it in the connection's own task, not in the accept loop: a client
--- that stalls its handshake then holds up only itself, until handshake_timeout.
function tls.accept(conn, config, opts)
   return wrap_and_shake(conn, config, nil, handshake_timeout(opts, "luanet.tls.accept"))
end


end
