-- SendMsg benchmark, sending side: one task sending for N seconds, then "stop".
-- usage: lua5.4 bench/msg_source.lua HOST:PORT [seconds]
local luanet = require "luanet"
luanet.run(function()
  local target, seconds = arg[1], tonumber(arg[2] or 3)
  local sent, t0 = 0, luanet.now()
  local msg = { seq = 0, body = "hello" }
  while luanet.now() - t0 < seconds do
    for _ = 1, 1000 do msg.seq = sent; assert(luanet.SendMsg(target, msg)); sent = sent + 1 end
    luanet.yield()
  end
  assert(luanet.SendMsg(target, "stop"))
  -- SendMsg returning true means queued: wait until the sink has read everything.
  assert(luanet.RPCCall(target, "Received", luanet.call_options{ timeout = 30 }))
  print(("sent %d messages, %.0f msg/s"):format(sent, sent / (luanet.now() - t0)))
end)
