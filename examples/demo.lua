-- `make demo`: a name service, the Plus service registered with it, and a client with 100
-- tasks calling Plus by name; prints calls per second for a few seconds, then stops all three.
-- usage: lua5.4 examples/demo.lua [NAMESERVICE HOST:PORT] [seconds]
local ns = arg[1] or "127.0.0.1:8009"
local seconds = arg[2] or "3"
local here = (arg[0]:match("^(.*)/[^/]*$") or ".")

-- Starts a background lua5.4 process and returns its pid. Its output goes to our stderr,
-- so that it shows and no pipe of ours outlives the call.
local function start(script, ...)
   local p = io.popen(("exec lua5.4 %s/%s %s >&2 & echo $!"):format(here, script, table.concat({ ... }, " ")))
   local pid = p:read("l")
   p:close()
   return pid
end

print(("== name service on %s; PlusServer on a free port, registered there; 100 tasks calling Plus by name"):format(ns))
io.stdout:flush()
local ns_pid = start("nameservice.lua", ns)
os.execute("sleep 0.3")
local server_pid = start("rpc_server.lua", "127.0.0.1:0", ns)
os.execute("sleep 0.5")
local ok = os.execute(("lua5.4 %s/rpc_client.lua PlusServer 100 %s %s"):format(here, seconds, ns))
os.execute(("kill %s %s"):format(server_pid, ns_pid))
os.exit(ok and 0 or 1)
