-- `make demo`: starts the echo server in a child process, runs the echo client against it
-- for a few seconds, prints the rate and stops the server.
-- usage: lua5.4 examples/demo_echo.lua [HOST:PORT] [connections] [seconds]
local addr = arg[1] or "127.0.0.1:8010"
local connections = arg[2] or "100"
local seconds = arg[3] or "3"
local here = (arg[0]:match("^(.*)/[^/]*$") or ".")

local server = io.popen(("exec lua5.4 %s/echoserver.lua %s & echo $!"):format(here, addr))
local pid = server:read("l")
os.execute("sleep 0.3")
local ok = os.execute(("lua5.4 %s/echoclient.lua %s %s %s"):format(here, addr, connections, seconds))
os.execute("kill " .. pid)
server:close()
os.exit(ok and 0 or 1)
