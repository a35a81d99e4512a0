-- bench/instructions: a TCP echo server for 10 connections; it ends when they all close.
local luanet = require "luanet"
luanet.run(function()
  local l = assert(luanet.tcp.listen(arg[1]))
  print("up") io.stdout:flush()
  local open = 0
  for i = 1, 10 do
    local c = assert(l:accept())
    open = open + 1
    luanet.spawn(function()
      while true do
        local d = c:read()
        if not d then break end
        c:write(d)
      end
      c:close()
      open = open - 1
      if open == 0 then l:close() end
    end)
  end
end)
