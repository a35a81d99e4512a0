rockspec_format = "3.0"
package = "luanet"
version = "scm-1"
source = {
   url = "git+file:///dev/null",
}
description = {
   summary = "Distributed services in plain Lua 5.4: coroutine sockets, RPC and services by name",
   detailed = [[
luanet is a native module (Rust, mio) for stock Lua 5.4. One thread runs an event loop;
Lua code runs in coroutine tasks that block only themselves on TCP, UDP and Unix sockets,
timers and channels.
]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.4, < 5.5",
}
build = {
   type = "command",
   build_command = [[cargo build --release --locked && cp target/release/libluanet_core.so core.so]],
   install = {
      lib = {
         ["luanet.core"] = "core.so",
      },
      lua = {
         ["luanet"] = "lua/luanet.lua",
         ["luanet.service"] = "lua/luanet/service.lua",
         ["luanet.connections"] = "lua/luanet/connections.lua",
         ["luanet.names"] = "lua/luanet/names.lua",
         ["luanet.nameservice"] = "lua/luanet/nameservice.lua",
         ["luanet.ns_groups"] = "lua/luanet/ns_groups.lua",
         ["luanet.groups"] = "lua/luanet/groups.lua",
         ["luanet.master"] = "lua/luanet/master.lua",
         ["luanet.log"] = "lua/luanet/log.lua",
         ["luanet.tls"] = "lua/luanet/tls.lua",
      },
   },
}
