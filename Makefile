# luanet: build, install, test, benchmark.
# Everything Lua-side runs under Debian's lua5.4; luarocks always gets --lua-version 5.4
# (installing luarocks points the plain `lua` alternative at 5.1).

LUAROCKS ?= luarocks --lua-version 5.4
ROCKSPEC := rockspec/luanet-scm-1.rockspec
TREE     ?= $(CURDIR)/.rocks
# The module as a user gets it: installed by luarocks into a tree, found through luarocks path.
LUAENV    = eval "$$($(LUAROCKS) --tree $(TREE) path)";

.PHONY: deps build install local test test-rust test-lua test-faults test-valgrind bench soak demo rock clean

deps:
	scripts/deps

build:
	cargo build --release --locked

# System-wide install, as `luarocks install luanet` would do.
install:
	$(LUAROCKS) make $(ROCKSPEC)

# Install into ./.rocks (no root needed); tests, demo and bench use this tree.
local:
	$(LUAROCKS) make --tree $(TREE) $(ROCKSPEC)

test: deps
	$(MAKE) test-rust test-lua test-faults

test-rust:
	cargo test --release --locked

test-lua: local
	$(LUAENV) scripts/test-lua

# The whole Lua suite again with the socket layer misbehaving: every 3rd recv, send and
# accept fails with EAGAIN, and the others move a random part of their bytes
# (src/faults.rs, docs/RELIABILITY.md "Fault injection").
test-faults: local
	$(LUAENV) LUANET_FAULTS=short,eagain=3 scripts/test-lua

# The Lua specs under valgrind memcheck with the most aggressive garbage collector, in
# busted and every child lua5.4 (not in CI: about 6 minutes; docs/RELIABILITY.md).
test-valgrind: local
	$(LUAENV) scripts/test-valgrind

# 30 minutes of calls and messages while services restart (not in CI; docs/RELIABILITY.md).
soak: local
	$(LUAENV) bench/soak

demo: deps
	$(MAKE) local
	$(LUAENV) lua5.4 examples/demo.lua

bench: local
	$(LUAENV) bench/run
	$(LUAENV) bench/rpc
	$(LUAENV) bench/groups
	$(LUAENV) bench/restart
	$(LUAENV) lua5.4 bench/log.lua

# A .src.rock that installs with no rocks server: `luarocks --lua-version 5.4 install luanet-scm-1.src.rock`.
rock:
	bash .ci/pack-rock

clean:
	cargo clean
	rm -rf $(TREE) core.so *.src.rock
