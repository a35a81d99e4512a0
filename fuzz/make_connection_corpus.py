#!/usr/bin/python3
"""Writes the `connection` fuzz target's seed corpus into fuzz/corpus/connection/.

Run it from anywhere: `fuzz/make_connection_corpus.py` (needs Debian's python3-msgpack).
It rewrites the seeds it makes and leaves any other file in that folder alone (libFuzzer
adds the inputs it finds there).

Each seed is three control bytes and then what the peer sends (fuzz/connection.lua):
  flags: 1 = a cluster token is configured, 2 = half-close and read to the end,
         4 = the harness says a proper hello (and, with the token, proves it) first,
         8 = two connections at once, the second write on the second,
         16 = a few loop turns before closing, so that replies go out;
  cut1, cut2: where the bytes are split into up to three writes, as fractions of 256.
The messages are those of docs/PROTOCOL.md, well formed and not: every message kind,
the handshake, the name service's methods, then wrong arity, a wrong type in each
field, unknown kinds, huge ids, nesting past the limit, forged lengths and truncation.
"""

import os
import struct

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "connection")

TOKEN, HALF, INTRO, TWO, LINGER = 1, 2, 4, 8, 16


def pack(m):
    return msgpack.packb(m, use_bin_type=True)


def body(*msgs):
    """Messages packed one after the other; bytes are taken as they are."""
    return b"".join(m if isinstance(m, bytes) else pack(m) for m in msgs)


def cut_after(data, n):
    """The control byte that makes a write end right after the first `n` bytes."""
    return min(255, (n * 256 + len(data) - 1) // len(data)) if data else 0


seeds = {}


def seed(name, data, flags=0, cut1=0, cut2=0):
    assert name not in seeds, name
    seeds[name] = bytes([flags, cut1, cut2]) + data


def split(name, first, rest, flags=0):
    """`first` in one write, `rest` in the next: the service handles the first before the
    rest arrives (a call back is then waiting for its response, say)."""
    data = first + rest
    c = cut_after(data, len(first))
    seed(name, data, flags, c, c)


def three(name, a, b, c, flags=0):
    """Three writes; with TWO, `b` goes on the second connection."""
    data = a + b + c
    seed(name, data, flags, cut_after(data, len(a)), cut_after(data, len(a) + len(b)))


def hello(name="fz", address=None, *extra):
    params = [name] if address is None else [name, address]
    return [2, "luanet.hello", params + list(extra)]


def req(msgid, method, params):
    return [0, msgid, method, params]


def deep(n, leaf=1):
    v = leaf
    for _ in range(n):
        v = [v]
    return v


# --- well formed -----------------------------------------------------------------------

seed("empty", b"")
seed("echo", body(req(1, "Echo", ["hi"])))
seed("echo_half_close", body(req(1, "Echo", ["hi"])), HALF)
seed("plus_example", bytes.fromhex("94 00 01 a4 50 6c 75 73 91 82 a1 61 01 a1 62 02".replace(" ", "")))
seed("echo_values", body(req(7, "Echo", [None, True, False, 0, -1, 2**63 - 1, -2**63, 1.5, "s",
                                          b"\x00\xff", [1, [2]], {"k": {"n": None}}, {1: 2, 1.5: "x"}])), HALF)
seed("echo_many_args", body(req(1, "Echo", list(range(300)))), HALF)
seed("echo_pipelined", body(*[req(i, "Echo", [i]) for i in range(40)]), HALF, 90, 170)
seed("no_such_function", body(req(2, "Nope", [])), HALF)
seed("raise_word", body(req(3, "Raise", ["oops", "a detail"]), req(4, "Raise", [{"x": 1}]),
                        req(5, "Raise", []), req(6, "Raise", ["", 5])), HALF)
seed("hello_example", bytes.fromhex(
    "93 02 ac 6c 75 61 6e 65 74 2e 68 65 6c 6c 6f 92 aa 50 6c 75 73 53 65 72 76 65 72"
    "b4 74 63 70 3a 2f 2f 31 32 37 2e 30 2e 30 2e 31 3a 38 30 31 30".replace(" ", "")))
seed("msg_example", bytes.fromhex(
    "93 02 aa 6c 75 61 6e 65 74 2e 6d 73 67 92 a0 81 a5 68 65 6c 6c 6f a5 77 6f 72 6c 64".replace(" ", "")))
seed("hello_then_calls", body(hello("fz", "unix:/tmp/nowhere.sock"), req(1, "Echo", [1]),
                              [2, "luanet.msg", ["fz", [1, 2, 3]]], [2, "luanet.ping", []]), HALF)
seed("hello_tcp_addresses", body(hello("fz", "tcp://0.0.0.0:8010"), hello("fz2", "tcp://127.0.0.1:1"),
                                 req(1, "Echo", [1])), HALF)
seed("hello_name_only", body(hello("fz"), req(1, "Echo", [1])), HALF)
seed("hello_empty_name", body(hello(""), req(1, "Echo", [1])))
seed("hello_twice", body(hello("a", "unix:/a"), hello("b", "unix:/b"), req(1, "Echo", [1])), HALF)
seed("hello_service_name", body(hello("svc", "unix:/tmp/x.sock"), req(1, "Echo", [1])), HALF)
seed("pings", body(*[[2, "luanet.ping", []] for _ in range(5)]))
seed("unknown_notification", body([2, "x.y", [1]], [2, "", []], req(1, "Echo", [1])), HALF)
seed("msgs", body(*[[2, "luanet.msg", ["", {"n": i}]] for i in range(30)]))
seed("client_side_pushes", body([2, "luanet.ns.changed", ["svc"]],
                                [2, "luanet.ns.group_changed", ["prefix", "m", {"members": [], "version": 1}]],
                                [2, "luanet.ns.group_changed", ["provides", "Echo", None]],
                                req(1, "Echo", [1])), HALF)
seed("late_responses", body([1, 1, None, "late"], [1, 2, ["remote error", "x"], None], req(3, "Echo", [3])), HALF)

# A call back to the peer: it says hello as "fz", asks for CallBack, and (in a later
# write, once the call is waiting) answers the service's call, msgid 1, various ways.
for tag, resp in [("result", [1, 1, None, "back"]),
                  ("word_error", [1, 1, ["no such function", "x"], None]),
                  ("string_error", [1, 1, "bad", None]),
                  ("map_error", [1, 1, {"a": 1}, None]),
                  ("empty_word", [1, 1, ["", 5], None]),
                  ("empty_error_array", [1, 1, [], None]),
                  ("wrong_msgid", [1, 2, None, "x"]),
                  ("twice", body([1, 1, None, "a"], [1, 1, None, "b"]))]:
    rest = resp if isinstance(resp, bytes) else pack(resp)
    split("callback_" + tag, body(hello("fz"), req(5, "CallBack", ["v"])), rest + pack(req(6, "Echo", [6])), HALF)
split("callback_then_close", body(hello("fz"), req(5, "CallBack", ["v"])), pack([2, "luanet.ping", []]))
split("callback_introduced", body(req(5, "CallBack", ["v"])), pack([1, 1, None, "back"]), INTRO | HALF)

# The name service (docs/PROTOCOL.md, "Name service", "Groups and leases").
seed("ns_register_close", body(req(1, "luanet.ns.register", ["a", "unix:/x", ["f"]])))
seed("ns_register_half", body(req(1, "luanet.ns.register", ["a", "unix:/x", ["f"]])), HALF)
split("ns_register_then_ping", body(req(1, "luanet.ns.register", ["a", "unix:/x", ["f"]])),
      pack([2, "luanet.ping", []]))
seed("ns_register_twice", body(req(1, "luanet.ns.register", ["a", "tcp://0.0.0.0:80", ["f", "g"]]),
                               req(2, "luanet.ns.register", ["a", "tcp://1.2.3.4:80", []]),
                               req(3, "luanet.ns.register", ["b", "unix:/b", ["f"]])), HALF, 100, 200)
seed("ns_unregister", body(req(1, "luanet.ns.register", ["a", "unix:/x", []]),
                           req(2, "luanet.ns.unregister", ["a"]), req(3, "luanet.ns.unregister", ["zz"])), HALF, 128, 128)
seed("ns_resolve", bytes.fromhex(
    "94 00 07 b1 6c 75 61 6e 65 74 2e 6e 73 2e 72 65 73 6f 6c 76 65 91 aa 50"
    "6c 75 73 53 65 72 76 65 72".replace(" ", "")), HALF)
seed("ns_queries", body(req(1, "luanet.ns.providers", ["f", None]), req(2, "luanet.ns.providers", ["f", "a"]),
                        req(3, "luanet.ns.list", []), req(4, "luanet.ns.stats", [])), HALF)
seed("ns_register_resolve_list", body(req(1, "luanet.ns.register", ["mail.1", "unix:/m1", ["Deliver"]]),
                                      req(2, "luanet.ns.resolve", ["mail.1"]), req(3, "luanet.ns.list", []),
                                      req(4, "luanet.ns.providers", ["Deliver", None])), HALF, 64, 192)
seed("ns_group_example", bytes.fromhex(
    "94 00 09 af 6c 75 61 6e 65 74 2e 6e 73 2e 67 72 6f 75 70 92 a6 70 72"
    "65 66 69 78 a5 6d 61 69 6c 2e".replace(" ", "")), HALF)
seed("ns_groups", body(req(1, "luanet.ns.group", ["prefix", "mail."]), req(2, "luanet.ns.group", ["provides", "Echo"]),
                       req(3, "luanet.ns.register", ["mail.1", "unix:/m1", ["Echo"]])), HALF, 80, 160)
for tag, ttl in [("lease", 5), ("lease_short", 0.1), ("lease_long", 60)]:
    seed("ns_" + tag, body(req(1, "luanet.ns.register", ["mail.1", "unix:/m1", ["Deliver"]]),
                           req(2, "luanet.ns.lease", ["prefix", "mail.", "mail.1", ttl]),
                           req(3, "luanet.ns.lease", ["prefix", "mail.", "mail.1", ttl]),
                           req(4, "luanet.ns.group", ["prefix", "mail."])), HALF, 85, 170)
split("ns_lease_release", body(req(1, "luanet.ns.register", ["m", "unix:/m", ["D"]]),
                               req(2, "luanet.ns.lease", ["provides", "D", "m", 1.5])),
      body(req(3, "luanet.ns.release", ["provides", "D", "m"]), req(4, "luanet.ns.release", ["provides", "D", "x"])), HALF)
split("ns_lease_then_junk", body(req(1, "luanet.ns.register", ["m", "unix:/m", ["D"]]),
                                 req(2, "luanet.ns.lease", ["prefix", "", "m", 30])), b"\xc1")
seed("ns_bad_requests", body(req(1, "luanet.ns.register", []), req(2, "luanet.ns.register", ["", "unix:/x", []]),
                             req(3, "luanet.ns.register", ["a" * 300, "unix:/x", []]),
                             req(4, "luanet.ns.register", ["a", "http://x", []]),
                             req(5, "luanet.ns.register", ["a", "unix:/x", {"f": 1}]),
                             req(6, "luanet.ns.register", ["a", "unix:/x", [1, 2]]),
                             req(7, "luanet.ns.register", ["a", "unix:/x", ["f"] * 1001]),
                             req(8, "luanet.ns.resolve", [5]), req(9, "luanet.ns.providers", []),
                             req(10, "luanet.ns.group", ["nope", "x"]), req(11, "luanet.ns.group", ["prefix", "x" * 257]),
                             req(12, "luanet.ns.group", ["provides", ""]),
                             req(13, "luanet.ns.lease", ["prefix", "a", "a", 0]),
                             req(14, "luanet.ns.lease", ["prefix", "a", "a", float("nan")]),
                             req(15, "luanet.ns.lease", ["prefix", "a", "nobody", 1]),
                             req(16, "luanet.ns.release", [None, None, None]),
                             req(17, "luanet.ns.unregister", [None])), HALF)
seed("ns_many_names", body(*[req(i, "luanet.ns.register", ["n%d" % i, "unix:/n", []]) for i in range(70)]), HALF)

# The cluster token (docs/PROTOCOL.md, "Cluster token"): nothing gets past it unproved.
nonce = bytes(range(16))
seed("token_hello_bad_proof", body(hello("fz", False, nonce), [2, "luanet.auth", [b"\x00" * 32]]), TOKEN | HALF)
seed("token_hello_no_nonce", body(hello("fz", "unix:/x")), TOKEN | HALF)
seed("token_hello_short_nonce", body(hello("fz", False, b"abc")), TOKEN)
seed("token_request_before_auth", body(hello("fz", False, nonce), req(1, "Echo", [1])), TOKEN | HALF)
seed("token_auth_before_hello", body([2, "luanet.auth", [b"x" * 32]]), TOKEN)
seed("token_pings_only", body([2, "luanet.ping", []], [2, "luanet.ping", []]), TOKEN | HALF)
seed("token_big_message", body(hello("fz", False, nonce), [2, "luanet.ping", ["x" * 2000]]), TOKEN | HALF)
seed("token_msg_before_auth", body([2, "luanet.msg", ["", 1]]), TOKEN)
seed("token_authed_calls", body(req(1, "Echo", [1]), req(2, "luanet.ns.register", ["a", "unix:/a", ["f"]]),
                                req(3, "luanet.ns.resolve", ["a"]), [2, "luanet.msg", ["fz", "m"]]), TOKEN | INTRO | HALF)
seed("token_authed_tcp_claim", body(hello("again", "tcp://10.0.0.1:80"), [2, "luanet.auth", [b"y" * 32]],
                                    req(1, "Echo", [1])), TOKEN | INTRO | HALF)
seed("token_authed_big", body(req(1, "Echo", ["x" * 5000])), TOKEN | INTRO | HALF)
seed("introduced_plain", body(req(1, "Echo", [1]), hello("other", "unix:/o")), INTRO | HALF)

# Two connections at once: the same service twice (duplicates, a twin taking over what
# the other registered, watched or leased), and two processes claiming one name.
dup = hello("dup", "unix:/tmp/dup.sock")
three("two_duplicates", body(dup), body(dup, req(1, "Echo", [1])), body(req(2, "Echo", [2])), TWO | HALF)
three("two_twin_registration", body(dup, req(1, "luanet.ns.register", ["dup", "unix:/tmp/dup.sock", ["f"]])),
      body(dup), body(req(2, "luanet.ns.resolve", ["dup"])), TWO)
three("two_twin_lease", body(dup, req(1, "luanet.ns.register", ["dup", "unix:/tmp/dup.sock", ["f"]]),
                             req(2, "luanet.ns.lease", ["provides", "f", "dup", 10]),
                             req(3, "luanet.ns.group", ["provides", "f"])),
      body(dup, req(4, "luanet.ns.lease", ["provides", "f", "dup", 10])),
      body(req(5, "luanet.ns.release", ["provides", "f", "dup"])), TWO | HALF)
three("two_twin_then_junk", body(dup, req(1, "luanet.ns.register", ["dup", "unix:/tmp/dup.sock", ["f"]]),
                                 req(2, "luanet.ns.lease", ["prefix", "d", "dup", 20])),
      body(dup), b"\xc1", TWO)
three("two_name_taken", body(hello("a", "unix:/a"), req(1, "luanet.ns.register", ["a", "unix:/a", []])),
      body(hello("a", "unix:/b"), req(1, "luanet.ns.register", ["a", "unix:/b", []])),
      body(req(2, "luanet.ns.unregister", ["a"])), TWO | HALF)
three("two_callback_other", body(hello("x")), body(hello("y"), req(1, "CallBack", [1])),
      body([1, 1, None, "from x"]), TWO | HALF)
three("two_introduced_msgs", body([2, "luanet.msg", ["fz", 1]]), body([2, "luanet.msg", ["fz", 2]]),
      body(req(1, "Echo", [3])), TWO | INTRO | HALF)
three("two_token", body(hello("fz", False, nonce)), body(req(1, "Echo", [1])), body([2, "luanet.ping", []]),
      TWO | TOKEN)

# --- malformed ---------------------------------------------------------------------------

seed("not_array_string", body("notarray"))
seed("not_array_int", body(5))
seed("not_array_nil", body(None))
seed("not_array_map", body({"kind": 0, "msgid": 1}))
seed("array_empty", body([]), HALF)
seed("array_one", body([0]))
seed("request_short", body([0, 1, "Echo"]), HALF)
seed("request_long", body([0, 1, "Echo", [], 5]), HALF)
seed("response_short", body([1, 1]))
seed("notification_short", body([2, "luanet.ping"]))
seed("notification_long", body([2, "luanet.ping", [], 1]))
seed("array_65", body([0] * 65), HALF)
seed("array_64", body([0] * 64))
for tag, m in [("kind_3", [3, 1, "Echo", []]), ("kind_neg", [-1, 1, "Echo", []]), ("kind_str", ["0", 1, "Echo", []]),
               ("kind_nil", [None, 1, "Echo", []]), ("kind_true", [True, "luanet.ping", []]),
               ("kind_float", [0.0, 1, "Echo", []]), ("kind_big", [2**64 - 1, 1, "Echo", []]),
               ("msgid_str", [0, "1", "Echo", []]), ("msgid_float", [0, 1.5, "Echo", []]),
               ("msgid_neg", [0, -1, "Echo", []]), ("msgid_2_32", [0, 2**32, "Echo", []]),
               ("msgid_max", [0, 2**32 - 1, "Echo", ["max"]]), ("msgid_u64", [0, 2**64 - 1, "Echo", []]),
               ("msgid_i64_min", [0, -2**63, "Echo", []]), ("msgid_nil", [0, None, "Echo", []]),
               ("method_int", [0, 1, 5, []]), ("method_nil", [0, 1, None, []]), ("method_bin", [0, 1, b"Echo", []]),
               ("method_empty", [0, 1, "", []]), ("method_array", [0, 1, ["Echo"], []]),
               ("params_map", [0, 1, "Echo", {"a": 1}]), ("params_str", [0, 1, "Echo", "x"]),
               ("params_nil", [0, 1, "Echo", None]), ("params_int", [0, 1, "Echo", 5]),
               ("response_msgid_str", [1, "1", None, None]), ("response_msgid_neg", [1, -5, None, None]),
               ("response_msgid_huge", [1, 2**40, None, None]),
               ("notify_method_int", [2, 5, []]), ("notify_params_map", [2, "luanet.msg", {"1": "", "2": 1}]),
               ("notify_params_nil", [2, "luanet.hello", None]), ("hello_params_wrong", [2, "luanet.hello", [5, 6]]),
               ("hello_params_empty", [2, "luanet.hello", []]), ("msg_no_message", [2, "luanet.msg", [""]]),
               ("msg_from_int", [2, "luanet.msg", [5, "m"]]), ("auth_no_token", [2, "luanet.auth", ["x"]]),
               ("changed_bad", [2, "luanet.ns.changed", [5]]), ("group_changed_bad", [2, "luanet.ns.group_changed", [1, 2, 3]])]:
    seed("bad_" + tag, body(m, req(99, "Echo", [99])), HALF)
seed("nested_99", body(req(1, "Echo", [deep(97)])), HALF)
seed("nested_101", body(req(1, "Echo", [deep(101)])), HALF)
seed("nested_junk", body(req(1, "Echo", [{"a": [{"b": [{"c": deep(30, {"d": None})}]}]}])), HALF)
seed("map_nil_key", bytes.fromhex("940001a44563686f9181c001"), HALF)       # [0,1,"Echo",[{nil: 1}]]
seed("map_nan_key", bytes.fromhex("940001a44563686f9181cb7ff8000000000000") + b"\x01", HALF)
seed("ext_type", bytes.fromhex("940001a44563686f91d40102"), HALF)          # fixext1
seed("reserved_c1", b"\xc1", HALF)
seed("junk_after_good", body(req(1, "Echo", [1])) + b"\xc1\xc1\xc1", HALF)
seed("random_bytes", bytes((i * 197 + 13) & 0xFF for i in range(300)))
full = body(req(1, "Echo", ["a fairly long argument, to be cut"]))
seed("truncated", full[:-5])
seed("truncated_half", full[:-5], HALF)
seed("truncated_header", b"\x94\x00", HALF)
seed("truncated_split", full[:-5], 0, 30, 200)
seed("byte_by_byte_start", full, HALF, 1, 2)
seed("forged_array32", b"\xdd\xff\xff\xff\xff\x00", HALF)
seed("forged_map32", b"\x94\x00\x01\xa4Echo\x91\xdf\xff\xff\xff\xff", HALF)
seed("forged_str32", b"\x94\x00\x01\xdb\xff\xff\xff\xff", HALF)
seed("forged_bin32", b"\x94\x00\x01\xa4Echo\x91\xc6\x7f\xff\xff\xff")
seed("forged_ext32", b"\x94\x00\x01\xa4Echo\x91\xc9\xff\xff\xff\xff\x01")
seed("array16_of_nothing", b"\xdc\x00\x04\x00\x01\xa4Echo\x90", HALF)   # array16 header for a request
seed("str8_method", b"\x94\x00\x01\xd9\x04Echo\x91\x01", HALF)
seed("int_widths", body(*[req(m, "Echo", [m]) for m in (0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1)])
     + b"\x94\x00\xcc\x05\xa4Echo\x90\x94\x00\xd0\x05\xa4Echo\x90", HALF)
seed("float32_msgid", b"\x94\x00\xca" + struct.pack(">f", 1.0) + b"\xa4Echo\x90", HALF)
seed("float64_int_msgid", b"\x94\x00\xcb" + struct.pack(">d", 3.0) + b"\xa4Echo\x90", HALF)

# The same again, with the service given time to reply before the peer closes.
for name in ["echo_values", "echo_pipelined", "raise_word", "no_such_function", "ns_register_resolve_list",
             "ns_lease", "ns_groups", "callback_result", "callback_map_error", "two_twin_lease",
             "token_authed_calls", "late_responses", "int_widths"]:
    flags, cut1, cut2 = seeds[name][:3]
    seed("linger_" + name, seeds[name][3:], flags | LINGER | HALF, cut1, cut2)

os.makedirs(OUT, exist_ok=True)
for name, data in sorted(seeds.items()):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {OUT}")
