-- Minimal Lua 5.4 + luv (libuv) echo server for luanet's benchmark.
-- Usage: lua5.4 echo_luv.lua HOST:PORT
local uv = require "luv"

local addr = arg[1] or "127.0.0.1:9000"
local host, port = addr:match("^%[?(.-)%]?:(%d+)$")
assert(host, "usage: lua5.4 echo_luv.lua HOST:PORT")

local server = uv.new_tcp()
assert(server:bind(host, tonumber(port)))
assert(server:listen(1024, function(err)
  assert(not err, err)
  local client = uv.new_tcp()
  server:accept(client)
  client:nodelay(true)
  client:read_start(function(err, data)
    if data then
      client:write(data)
    else -- EOF or error
      client:close()
    end
  end)
end))
io.stderr:write("echo_luv listening on ", addr, "\n")

for _, name in ipairs { "sigterm", "sigint" } do
  local sig = uv.new_signal()
  sig:start(name, function() os.exit(0) end)
  uv.unref(sig)
end
uv.run()
