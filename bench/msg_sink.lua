-- SendMsg benchmark, receiving side: a service that counts messages until "stop".
-- usage: lua5.4 bench/msg_sink.lua HOST:PORT
local luanet = require "luanet"
local received = 0
-- A call travels behind the messages on the same connection: answering it means every
-- earlier message has been read (the source waits for it before exiting).
luanet.RegRPCFunction("Received", function() return received end)
luanet.run(function()
  assert(luanet.StartLocalService("Sink", arg[1]))
  local n, t0 = 0, nil
  while true do
    local m = luanet.GetMsg()
    if not t0 then t0 = luanet.now() end
    n = n + 1
    received = n
    if m == "stop" then
      print(("received %d messages, %.0f msg/s"):format(n, n / (luanet.now() - t0)))
      io.stdout:flush()
      luanet.sleep(0.2)     -- let the source's last call be answered
      os.exit(0)
    end
  end
end)
