-- MessagePack codec (docs/codec.md): luanet.pack/unpack round trips and exact formats for
-- every type and boundary, str vs bin, tables (sequences, mixed, holes, empty, marked arrays,
-- raw access), encode errors with their paths, decode errors (truncation, forged lengths,
-- bad keys, ext types, 0xc1, trailing bytes, depth, size) that are returned and never raised,
-- a reproducible fuzz run, codec_limits, argument errors, and interop both ways with
-- Python's msgpack package.

local luanet = require "luanet"
local H = require "helper"

local spack = string.pack
local MIB = 1024 * 1024
local DEFAULT_DEPTH, DEFAULT_SIZE = 100, 16 * MIB

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x "):format(c:byte()) end))
end

local function isnegzero(x)
  return math.type(x) == "float" and x == 0 and 1 / x < 0
end

-- Strict comparison of a decoded value `a` with an expected value `b`: number subtypes,
-- NaN, the sign of zero, the array mark and every raw key must agree.
-- Returns true, or false and where they differ.
-- With `seq`, an expected plain table that is a sequence 1..n (n >= 1) stands for an array
-- (that is how it packs). A decoded array may carry an `n` field holding its length (the
-- implementation adds one to arrays with holes); that is checked on its own in the
-- "holes" tests and tolerated here.
local function is_sequence(t)
  local n = 0
  for _ in next, t do n = n + 1 end
  if n == 0 then return false end
  for i = 1, n do if rawget(t, i) == nil then return false end end
  return true
end

local function same(a, b, path, seq)
  path = path or "value"
  if type(a) ~= type(b) then
    return false, ("%s: type %s, expected %s"):format(path, type(a), type(b))
  end
  if type(a) == "number" then
    if math.type(a) ~= math.type(b) then
      return false, ("%s: %s %s, expected %s %s"):format(path, math.type(a), a, math.type(b), b)
    end
    if b ~= b then
      if a == a then return false, path .. ": expected NaN, got " .. tostring(a) end
      return true
    end
    if a ~= b or isnegzero(a) ~= isnegzero(b) then
      return false, ("%s: %.17g, expected %.17g"):format(path, a, b)
    end
    return true
  end
  if type(a) == "table" then
    local want_array = luanet.is_array(b) or (seq and getmetatable(b) == nil and is_sequence(b)) or false
    if luanet.is_array(a) ~= want_array then
      return false, ("%s: is_array %s, expected %s"):format(path, luanet.is_array(a), want_array)
    end
    local n = 0
    for k, v in next, a do
      if k == "n" and want_array and rawget(b, "n") == nil and math.type(v) == "integer" then
        -- tolerated length field of a decoded array
      else
        n = n + 1
        local ok, why = same(v, rawget(b, k), ("%s[%s]"):format(path, tostring(k)), seq)
        if not ok then return false, why end
      end
    end
    for _ in next, b do n = n - 1 end
    if n ~= 0 then return false, path .. ": different number of keys" end
    return true
  end
  if a ~= b then
    if type(a) == "string" and (#a > 60 or #b > 60) then
      return false, ("%s: string of %d bytes, expected %d bytes"):format(path, #a, #b)
    end
    return false, ("%s: %q, expected %q"):format(path, tostring(a), tostring(b))
  end
  return true
end

local function assert_same(got, expected, label, seq)
  local ok, why = same(got, expected, nil, seq)
  assert(ok, (label and (label .. ": ") or "") .. tostring(why))
end

-- pack, unpack, and compare with the original.
local function roundtrip(v, label)
  local bytes, w, d = luanet.pack(v)
  assert(bytes, ("%s: pack failed: %s %s"):format(label or tostring(v), tostring(w), tostring(d)))
  assert.equals("string", type(bytes))
  local back, uw, ud = luanet.unpack(bytes)
  assert(uw == nil, ("%s: unpack failed: %s %s"):format(label or tostring(v), tostring(uw), tostring(ud)))
  assert_same(back, v, label, true)
  return bytes, back
end

-- Assert a returned (never raised) failure: nil, word, a non-empty detail; returns the detail.
local function fails(word, fn, ...)
  local r = table.pack(pcall(fn, ...))
  assert(r[1], "raised instead of returning an error: " .. tostring(r[2]))
  assert(r[2] == nil and r[3] == word,
    ("expected nil, %q, detail; got %s, %s, %s"):format(word, tostring(r[2]), tostring(r[3]), tostring(r[4])))
  assert.equals("string", type(r[4]))
  assert.truthy(#r[4] > 0)
  return r[4]
end

local function encode_fails(v, opts)
  return fails("encode error", luanet.pack, v, opts)
end

local function decode_fails(bytes, opts, label)
  local r = table.pack(pcall(luanet.unpack, bytes, opts))
  assert(r[1], (label or hex(bytes:sub(1, 16))) .. ": unpack raised: " .. tostring(r[2]))
  assert(r[2] == nil and r[3] == "decode error",
    ("%s: expected nil, \"decode error\"; got %s, %s"):format(label or hex(bytes:sub(1, 16)),
      tostring(r[2]), tostring(r[3])))
  assert.equals("string", type(r[4]))
  assert.truthy(#r[4] > 0)
  return r[4]
end

local function has(s, part)
  assert(s:find(part, 1, true), ("%q does not contain %q"):format(s, part))
end

-- `n` tables nested through key `key` (n = 1 is a single table).
local function nested(n, key)
  local root = {}
  local t = root
  for _ = 2, n do
    t[key] = {}
    t = t[key]
  end
  return root
end

-- n nested MessagePack arrays: 0x91 ... 0x91 0x90
local function nested_bytes(n)
  return ("\x91"):rep(n - 1) .. "\x90"
end

-- Peak resident memory (kB) since the last reset (reset works on Linux via clear_refs).
local function reset_peak()
  local f = io.open("/proc/self/clear_refs", "w")
  if not f then return false end
  local ok = f:write("5") and f:close()
  return ok and true or false
end

local function peak_kb()
  local f = io.open("/proc/self/status")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmHWM:%s*(%d+)"))
end

------------------------------------------------------------------------------------------
-- Python's msgpack (Debian python3-msgpack); the first python3 on PATH may be another
-- interpreter without it, so try the system one too.

local PY
local function python()
  if PY == nil then
    PY = false
    for _, c in ipairs({ "python3", "/usr/bin/python3" }) do
      local ok = os.execute(c .. " -c 'import msgpack' >/dev/null 2>&1")
      if ok then PY = c break end
    end
  end
  assert(PY, "no python3 with the msgpack package found")
  return PY
end

local function writefile(p, s)
  local f = assert(io.open(p, "wb"))
  f:write(s)
  f:close()
end

-- records: 4-byte big-endian length + bytes
local function records(list)
  local out = {}
  for i, s in ipairs(list) do out[i] = spack(">s4", s) end
  return table.concat(out)
end

local function read_records(s)
  local list, pos = {}, 1
  while pos <= #s do
    local r
    r, pos = string.unpack(">s4", s, pos)
    list[#list + 1] = r
  end
  return list
end

local PY_COMMON = [=[
import sys, math, struct, msgpack
inf = float("inf"); nan = float("nan")

def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(b):
            return math.isnan(a)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        tb = {(type(k), k): v for k, v in b.items()}
        for k, v in a.items():
            if (type(k), k) not in tb or not same(v, tb[(type(k), k)]):
                return False
        return True
    return a == b

def read_records(path):
    data = open(path, "rb").read()
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        out.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out

def short(v):
    r = repr(v)
    return r if len(r) < 200 else r[:200] + "..."
]=]

-- Lua -> Python: decode every packed record in Python and compare (strictly: int vs float,
-- str vs bytes, list vs dict) with the Python expression. Returns a list of failure lines.
local PY_CHECK = PY_COMMON .. [=[
recs = read_records(sys.argv[1])
exprs = open(sys.argv[2], encoding="utf-8").read().split("\n")
bad = 0
for i, (raw, expr) in enumerate(zip(recs, exprs), 1):
    expected = eval(expr)
    try:
        got = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as e:
        print("case %d (%s): python could not decode %r: %s" % (i, short(expr), raw[:20], e)); bad += 1
        continue
    if not same(got, expected):
        print("case %d: got %s, expected %s" % (i, short(got), short(expr))); bad += 1
if len(recs) != len(exprs):
    print("record count %d != expression count %d" % (len(recs), len(exprs))); bad += 1
print("checked %d" % len(recs))
]=]

-- Python -> Lua: pack every expression ("F32:" prefix: use_single_float, "RAW:" prefix:
-- old spec without bin type) and write the records.
local PY_PACK = PY_COMMON .. [=[
exprs = open(sys.argv[1], encoding="utf-8").read().split("\n")
out = open(sys.argv[2], "wb")
for expr in exprs:
    kw = {"use_bin_type": True}
    if expr.startswith("F32:"):
        expr = expr[4:]; kw["use_single_float"] = True
    elif expr.startswith("RAW:"):
        expr = expr[4:]; kw["use_bin_type"] = False
    b = msgpack.packb(eval(expr), **kw)
    out.write(struct.pack(">I", len(b)) + b)
out.close()
print("packed %d" % len(exprs))
]=]

local function run_python(script, args)
  local dir = H.tmpdir()
  writefile(dir .. "/check.py", script)
  local cmd = ("cd '%s' && %s check.py %s 2>&1"):format(dir, python(), args)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out, dir
end

------------------------------------------------------------------------------------------

describe("codec", function()
  describe("pack/unpack round trips", function()
    it("nil, true and false, with their one-byte formats", function()
      assert.equals("\xc0", luanet.pack(nil))
      assert.equals("\xc3", luanet.pack(true))
      assert.equals("\xc2", luanet.pack(false))
      -- a nil value is a success: the second result is nil
      local v, err = luanet.unpack(luanet.pack(nil))
      assert.is_nil(v)
      assert.is_nil(err)
      assert.is_true(luanet.unpack("\xc3"))
      assert.is_false(luanet.unpack("\xc2"))
    end)

    it("integers at every format boundary use the smallest format and come back as integers", function()
      local function u(fmt, n) return spack(fmt, n) end
      -- value -> accepted encodings (positive values may use the uint or the int form of
      -- the same size; the smallest size is required)
      local cases = {
        { 0, { "\x00" } },
        { 1, { "\x01" } },
        { 127, { "\x7f" } },
        { 128, { "\xcc\x80" } },
        { 255, { "\xcc\xff" } },
        { 256, { "\xcd\x01\x00", "\xd1\x01\x00" } },
        { 32767, { "\xcd\x7f\xff", "\xd1\x7f\xff" } },
        { 32768, { "\xcd\x80\x00" } },
        { 65535, { "\xcd\xff\xff" } },
        { 65536, { "\xce\x00\x01\x00\x00", "\xd2\x00\x01\x00\x00" } },
        { 2147483647, { "\xce" .. u(">I4", 2147483647), "\xd2" .. u(">i4", 2147483647) } },
        { 2147483648, { "\xce\x80\x00\x00\x00" } },
        { 4294967295, { "\xce\xff\xff\xff\xff" } },
        { 4294967296, { "\xcf" .. u(">i8", 4294967296), "\xd3" .. u(">i8", 4294967296) } },
        { math.maxinteger, { "\xcf\x7f\xff\xff\xff\xff\xff\xff\xff", "\xd3\x7f\xff\xff\xff\xff\xff\xff\xff" } },
        { -1, { "\xff" } },
        { -32, { "\xe0" } },
        { -33, { "\xd0\xdf" } },
        { -128, { "\xd0\x80" } },
        { -129, { "\xd1\xff\x7f" } },
        { -32768, { "\xd1\x80\x00" } },
        { -32769, { "\xd2\xff\xff\x7f\xff" } },
        { -2147483648, { "\xd2\x80\x00\x00\x00" } },
        { -2147483649, { "\xd3" .. u(">i8", -2147483649) } },
        { math.mininteger, { "\xd3\x80\x00\x00\x00\x00\x00\x00\x00" } },
      }
      for _, c in ipairs(cases) do
        local n, allowed = c[1], c[2]
        assert.equals("integer", math.type(n))
        local bytes = roundtrip(n, "integer " .. n)
        local ok = false
        for _, a in ipairs(allowed) do ok = ok or bytes == a end
        assert(ok, ("integer %d packed as %s, expected %s"):format(n, hex(bytes), hex(allowed[1])))
        local back = luanet.unpack(bytes)
        assert.equals("integer", math.type(back))
        assert.equals(n, back)
      end
    end)

    it("every integer format decodes (non-minimal ones too) and uint64 above maxinteger wraps", function()
      local cases = {
        { "\x05", 5 }, { "\xe0", -32 }, { "\xff", -1 },
        { "\xcc\x01", 1 }, { "\xcc\xff", 255 },
        { "\xcd\x00\x01", 1 }, { "\xcd\xff\xff", 65535 },
        { "\xce\x00\x00\x00\x01", 1 }, { "\xce\xff\xff\xff\xff", 4294967295 },
        { "\xcf\x00\x00\x00\x00\x00\x00\x00\x01", 1 },
        { "\xcf\x7f\xff\xff\xff\xff\xff\xff\xff", math.maxinteger },
        { "\xcf\x80\x00\x00\x00\x00\x00\x00\x00", math.mininteger },
        { "\xcf\xff\xff\xff\xff\xff\xff\xff\xff", -1 },
        { "\xcf\xff\xff\xff\xff\xff\xff\xff\xfe", -2 },
        { "\xd0\xff", -1 }, { "\xd0\x7f", 127 }, { "\xd0\x80", -128 },
        { "\xd1\x80\x00", -32768 }, { "\xd1\x00\x05", 5 },
        { "\xd2\x80\x00\x00\x00", -2147483648 },
        { "\xd3\x80\x00\x00\x00\x00\x00\x00\x00", math.mininteger },
        { "\xd3\x00\x00\x00\x00\x00\x00\x00\x07", 7 },
      }
      for _, c in ipairs(cases) do
        local v, w, d = luanet.unpack(c[1])
        assert(w == nil, hex(c[1]) .. ": " .. tostring(w) .. " " .. tostring(d))
        assert.equals("integer", math.type(v), hex(c[1]))
        assert.equals(c[2], v, hex(c[1]))
      end
    end)

    it("floats are always float 64 and stay floats; NaN, infinities and -0.0 survive", function()
      local negzero = -(0.0)
      local floats = { 0.0, negzero, 1.0, -1.0, 1.5, -2.25, 0.1, math.pi, 1e308, -1e308,
        2.2250738585072014e-308, 5e-324, -5e-324, 2.0 ^ 53, 2.0 ^ 63, -(2.0 ^ 63), 1e15,
        math.huge, -math.huge }
      for _, x in ipairs(floats) do
        assert.equals("float", math.type(x))
        local bytes, back = roundtrip(x, ("float %.17g"):format(x))
        assert.equals("\xcb" .. spack(">d", x), bytes)
        assert.equals("float", math.type(back))
      end
      assert.is_true(isnegzero(luanet.unpack(luanet.pack(negzero))))
      assert.is_false(isnegzero(luanet.unpack(luanet.pack(0.0))))
      -- 1.0 is not turned into the integer 1
      local one = luanet.unpack(luanet.pack(1.0))
      assert.equals("float", math.type(one))
      assert.equals("integer", math.type(luanet.unpack(luanet.pack(1))))
      -- NaN as a value
      local nan = 0 / 0
      local bytes = assert(luanet.pack(nan))
      assert.equals(9, #bytes)
      assert.equals(0xcb, bytes:byte(1))
      local back, w = luanet.unpack(bytes)
      assert.is_nil(w)
      assert.equals("float", math.type(back))
      assert.is_true(back ~= back)
      -- NaN inside tables (as values)
      local t = luanet.unpack(luanet.pack({ x = nan, luanet.array({ nan }) }))
      assert.is_true(t.x ~= t.x)
      assert.is_true(t[1][1] ~= t[1][1])
    end)

    it("float 32 and float 64 inputs decode to Lua floats", function()
      local cases = {
        { "\xca\x3f\xc0\x00\x00", 1.5 },
        { "\xca\x3f\x80\x00\x00", 1.0 },
        { "\xca\x00\x00\x00\x00", 0.0 },
        { "\xca\x7f\x80\x00\x00", math.huge },
        { "\xca\xff\x80\x00\x00", -math.huge },
        { "\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00", 1.0 },
        { "\xcb\x40\x09\x21\xfb\x54\x44\x2d\x18", math.pi },
      }
      for _, c in ipairs(cases) do
        local v = luanet.unpack(c[1])
        assert.equals("float", math.type(v), hex(c[1]))
        assert.equals(c[2], v, hex(c[1]))
      end
      assert.is_true(isnegzero(luanet.unpack("\xca\x80\x00\x00\x00")))
      local n = luanet.unpack("\xca\x7f\xc0\x00\x00")
      assert.equals("float", math.type(n))
      assert.is_true(n ~= n)
    end)

    it("integers and floats with equal values stay distinct inside tables", function()
      local t = { i = 3, f = 3.0, a = luanet.array({ 1, 1.0, 0, 0.0 }), [2.5] = 7, [10] = 10.0 }
      local _, back = roundtrip(t, "mixed numbers")
      assert.equals("integer", math.type(back.i))
      assert.equals("float", math.type(back.f))
      assert.same({ "integer", "float", "integer", "float" },
        { math.type(back.a[1]), math.type(back.a[2]), math.type(back.a[3]), math.type(back.a[4]) })
      assert.equals(7, back[2.5])
      assert.equals("float", math.type(back[10]))
    end)

    it("valid UTF-8 strings use str formats at every length boundary", function()
      local cases = {
        { 0, "\xa0" }, { 1, "\xa1" }, { 31, "\xbf" }, { 32, "\xd9\x20" }, { 255, "\xd9\xff" },
        { 256, "\xda\x01\x00" }, { 65535, "\xda\xff\xff" }, { 65536, "\xdb\x00\x01\x00\x00" },
        { 1536 * 1024, "\xdb" .. spack(">I4", 1536 * 1024) },
      }
      for _, c in ipairs(cases) do
        local n, hdr = c[1], c[2]
        -- varied ASCII content, so a wrong offset or length would be seen
        local s = ("abcdefghijklmnopqrstuvwxyz0123456789"):rep(n // 36 + 1):sub(1, n)
        assert.equals(n, #s)
        local bytes, back = roundtrip(s, "str of " .. n)
        assert.equals(hex(hdr), hex(bytes:sub(1, #hdr)), "header of str of " .. n)
        assert.equals(#hdr + n, #bytes)
        assert.equals(s, back)
      end
    end)

    it("strings that are not valid UTF-8 use bin formats and come back byte for byte", function()
      local cases = {
        { 1, "\xc4\x01" }, { 255, "\xc4\xff" }, { 256, "\xc5\x01\x00" }, { 65535, "\xc5\xff\xff" },
        { 65536, "\xc6\x00\x01\x00\x00" }, { 1536 * 1024, "\xc6" .. spack(">I4", 1536 * 1024) },
      }
      for _, c in ipairs(cases) do
        local n, hdr = c[1], c[2]
        -- every byte value, NUL included, starting with an invalid UTF-8 byte
        local block = {}
        for i = 0, 255 do block[#block + 1] = string.char(255 - i) end
        local s = table.concat(block):rep(n // 256 + 1):sub(1, n)
        assert.is_nil(utf8.len(s))
        local bytes, back = roundtrip(s, "bin of " .. n)
        assert.equals(hex(hdr), hex(bytes:sub(1, #hdr)), "header of bin of " .. n)
        assert.equals(#hdr + n, #bytes)
        assert.equals(s, back)
      end
    end)

    it("str or bin is chosen by UTF-8 validity (NUL alone is valid UTF-8)", function()
      local cases = {
        "hello", "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", "a\0b", "\0",
        "\xff", "\x80", "abc\xff", "\0\1\2\xff\xfe", "\xc0\x80", "\xc3", "\xe2\x82",
        "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xf8\x88\x80\x80\x80", "\xe0\x80\xaf",
        "\xf0\x9f\x98", "\x7f", "\xf4\x8f\xbf\xbf",
      }
      for _, s in ipairs(cases) do
        local valid = utf8.len(s) ~= nil
        local bytes, back = roundtrip(s, ("string %q"):format(s))
        local first = bytes:byte(1)
        if valid then
          assert(first >= 0xa0 and first <= 0xbf or first == 0xd9,
            ("%q is valid UTF-8 but packed as %s"):format(s, hex(bytes)))
        else
          assert(first == 0xc4, ("%q is not valid UTF-8 but packed as %s"):format(s, hex(bytes)))
        end
        assert.equals(s, back)
      end
      -- both str and bin decode to Lua strings, whatever their format width
      assert.equals("abc", luanet.unpack("\xa3abc"))
      assert.equals("abc", luanet.unpack("\xd9\x03abc"))
      assert.equals("abc", luanet.unpack("\xda\x00\x03abc"))
      assert.equals("abc", luanet.unpack("\xdb\x00\x00\x00\x03abc"))
      assert.equals("\0\xff", luanet.unpack("\xc4\x02\0\xff"))
      assert.equals("\0\xff", luanet.unpack("\xc5\x00\x02\0\xff"))
      assert.equals("\0\xff", luanet.unpack("\xc6\x00\x00\x00\x02\0\xff"))
      assert.equals("", luanet.unpack("\xc4\x00"))
      assert.equals("", luanet.unpack("\xd9\x00"))
    end)

    it("nested tables round trip with every key and value", function()
      local t = {
        user = "ada", tags = { "x", "y" }, score = 9.5, ok = true, no = false,
        deep = { a = { b = { c = { d = { 1, 2, { e = "f" } } } } } },
        [1.5] = "float key", [true] = "bool key", [false] = 0, [-7] = "negative key",
        [math.maxinteger] = "max", [math.mininteger] = "min", [""] = "empty key",
        ["\0\xff"] = "bin key", list = { { 1 }, { 2 }, { { 3 } } },
      }
      local _, back = roundtrip(t, "nested")
      assert.equals("y", back.tags[2])
      assert.equals("f", back.deep.a.b.c.d[3].e)
      assert.is_true(luanet.is_array(back.tags))
      assert.is_false(luanet.is_array(back))
      assert.is_nil(getmetatable(back))
      -- the docs' first example
      local bytes = assert(luanet.pack({ user = "ada", tags = { "x", "y" }, score = 9.5 }))
      local b2 = luanet.unpack(bytes)
      assert.same({ "ada", "y", 9.5 }, { b2.user, b2.tags[2], b2.score })
    end)

    it("a table with other keys than 1..n is a map that keeps every key", function()
      local bytes, back = roundtrip({ 1, 2, x = 5 }, "{1,2,x=5}")
      assert.equals(0x83, bytes:byte(1))
      assert.is_false(luanet.is_array(back))
      assert.same({ 1, 2, x = 5 }, back)
      for _, t in ipairs({ { [2] = "b" }, { [0] = "z", "a" }, { 1, 2, [4] = 4 }, { "a", [1.5] = 1 },
                           { n = 0 }, { [-1] = 1 } }) do
        local b, back2 = roundtrip(t, "non-sequence")
        assert(b:byte(1) >= 0x80 and b:byte(1) <= 0x8f, "expected a fixmap, got " .. hex(b))
        assert.is_false(luanet.is_array(back2))
      end
      -- a plain sequence is an array
      local b3, back3 = roundtrip(luanet.array({ 1, 2, 3 }), "sequence")
      assert.equals("\x93\x01\x02\x03", b3)
      assert.equals("\x93\x01\x02\x03", luanet.pack({ 1, 2, 3 }))
      assert.is_true(luanet.is_array(back3))
    end)

    it("holes: {1, nil, 3} is a map with the same keys; luanet.array sends holes as nil", function()
      local t = { 1, nil, 3 }
      local bytes = assert(luanet.pack(t))
      assert.equals(0x82, bytes:byte(1))
      local back = luanet.unpack(bytes)
      assert.is_false(luanet.is_array(back))
      assert.same({ [1] = 1, [3] = 3 }, back)

      local a = luanet.array({ 1, nil, 3 })
      local n = rawlen(a)
      local expected = "\x93\x01\xc0\x03"
      if n == 1 then expected = "\x91\x01" end -- allowed by the docs: # on a hole may be 1 or 3
      assert.equals(hex(expected), hex(assert(luanet.pack(a))))
      -- "set the length you mean with t.n"
      a.n = 3
      assert.equals(hex("\x93\x01\xc0\x03"), hex(assert(luanet.pack(a))))
      a.n = 4
      assert.equals(hex("\x94\x01\xc0\x03\xc0"), hex(assert(luanet.pack(a))))
      local arr = luanet.unpack("\x93\x01\xc0\x03")
      assert.is_true(luanet.is_array(arr))
      assert.equals(1, arr[1])
      assert.is_nil(arr[2])
      assert.equals(3, arr[3])
      -- a decoded array with holes (trailing ones too) packs back to the same array
      for _, s in ipairs({ "\x93\x01\xc0\x03", "\x92\x01\xc0", "\x92\xc0\xc0", "\x91\xc0",
                           "\x94\xc0\x02\xc0\xc0" }) do
        assert.equals(hex(s), hex(assert(luanet.pack(luanet.unpack(s)))))
      end
      local nils = luanet.unpack("\x92\xc0\xc0")
      assert.is_true(luanet.is_array(nils))
      assert.is_nil(nils[1])
      assert.is_nil(nils[2])
    end)

    it("a decoded array has only its elements, plus n (its length) when it holds a nil", function()
      local cases = {
        { "\x93\x01\xc0\x03", 3 }, { "\x92\xc0\xc0", 2 }, { "\x92\x01\xc0", 2 }, { "\x92\x01\x02", nil },
      }
      for _, c in ipairs(cases) do
        local s, n = c[1], c[2]
        local t = luanet.unpack(s)
        local keys = {}
        for k in next, t do
          if math.type(k) ~= "integer" and k ~= "n" then keys[#keys + 1] = tostring(k) end
        end
        assert(#keys == 0, ("%s decodes with extra keys: %s"):format(hex(s), table.concat(keys, ", ")))
        assert.equals(n, rawget(t, "n"), hex(s) .. ": n")
        assert.equals(hex(s), hex(assert(luanet.pack(t))), hex(s) .. " packs back to the same bytes")
      end
    end)

    it("array and map formats at their length boundaries", function()
      local function seq(n)
        local t = {}
        for i = 1, n do t[i] = i % 100 end
        return t
      end
      local function map(n)
        local t = {}
        for i = 1, n do t["k" .. i] = i % 100 end
        return t
      end
      for _, c in ipairs({ { 1, "\x91" }, { 15, "\x9f" }, { 16, "\xdc\x00\x10" },
                           { 65535, "\xdc\xff\xff" }, { 65536, "\xdd\x00\x01\x00\x00" } }) do
        local bytes, back = roundtrip(seq(c[1]), "array of " .. c[1])
        assert.equals(hex(c[2]), hex(bytes:sub(1, #c[2])), "array of " .. c[1])
        assert.equals(#c[2] + c[1], #bytes)
        assert.equals(c[1], #back)
      end
      for _, c in ipairs({ { 1, "\x81" }, { 15, "\x8f" }, { 16, "\xde\x00\x10" },
                           { 65535, "\xde\xff\xff" }, { 65536, "\xdf\x00\x01\x00\x00" } }) do
        local bytes = roundtrip(map(c[1]), "map of " .. c[1])
        assert.equals(hex(c[2]), hex(bytes:sub(1, #c[2])), "map of " .. c[1])
      end
      -- non-minimal container headers decode too
      assert.same({ 5 }, luanet.unpack("\xdc\x00\x01\x05"))
      assert.same({ 5 }, luanet.unpack("\xdd\x00\x00\x00\x01\x05"))
      assert.same({ a = 1 }, luanet.unpack("\xde\x00\x01\xa1a\x01"))
      assert.same({ a = 1 }, luanet.unpack("\xdf\x00\x00\x00\x01\xa1a\x01"))
    end)

    it("empty table is a map (0x80); luanet.array() is an empty array (0x90)", function()
      assert.equals("\x80", luanet.pack({}))
      assert.equals("\x90", luanet.pack(luanet.array()))
      assert.equals("\x90", luanet.pack(luanet.array({})))
      assert.same({ 1, 1 }, { #luanet.pack({}), #luanet.pack(luanet.array()) })
      local m = luanet.unpack("\x80")
      assert.same({}, m)
      assert.is_false(luanet.is_array(m))
      assert.is_nil(getmetatable(m))
      assert.equals("\x80", luanet.pack(m))
      local a = luanet.unpack("\x90")
      assert.equals("table", type(a))
      assert.is_nil(next(a))
      assert.is_true(luanet.is_array(a))
      assert.equals("\x90", luanet.pack(a))
      -- inside containers too
      local t = luanet.unpack(luanet.pack({ e = luanet.array(), m = {} }))
      assert.is_true(luanet.is_array(t.e))
      assert.is_false(luanet.is_array(t.m))
      assert.equals("\x90", luanet.pack(t.e))
      assert.equals("\x80", luanet.pack(t.m))
    end)

    it("decoded arrays are marked and pack as arrays again; decoded maps are plain", function()
      local a = luanet.unpack("\x93\x01\x02\x03")
      assert.is_true(luanet.is_array(a))
      assert.equals("\x93\x01\x02\x03", luanet.pack(a))
      local b = luanet.unpack("\x92\xa1x\xa1y")
      assert.is_true(luanet.is_array(b))
      assert.same({ "x", "y" }, b)
      local nestedv = luanet.unpack(luanet.pack({ list = { { 1 }, luanet.array() }, m = { k = "v" } }))
      assert.is_true(luanet.is_array(nestedv.list))
      assert.is_true(luanet.is_array(nestedv.list[1]))
      assert.is_true(luanet.is_array(nestedv.list[2]))
      assert.is_false(luanet.is_array(nestedv.m))
      assert.is_nil(getmetatable(nestedv.m))
      -- a map whose keys happen to be 1..n decodes as a plain table (then packs as an array,
      -- being a sequence)
      local m = luanet.unpack("\x82\x01\xa1a\x02\xa1b")
      assert.is_false(luanet.is_array(m))
      assert.same({ "a", "b" }, m)
    end)

    it("luanet.array marks and returns its table; a foreign metatable is refused", function()
      local t = { 1, 2 }
      assert.equals(t, luanet.array(t))
      assert.is_true(luanet.is_array(t))
      assert.is_true(luanet.is_array(luanet.array()))
      assert.is_false(luanet.is_array({}))
      assert.is_false(luanet.is_array({ 1, 2 }))
      assert.is_false(luanet.is_array(setmetatable({}, {})))
      local foreign = setmetatable({ 1 }, { __index = function() return 0 end })
      local ok, e = pcall(luanet.array, foreign)
      assert.is_false(ok)
      has(tostring(e), "luanet.array")
      assert.is_false(luanet.is_array(foreign))
      assert.is_not_nil(getmetatable(foreign).__index)
      H.raises({ "luanet.array" }, luanet.array, "x")
    end)

    it("raw access: __index, __pairs and __len are never called", function()
      local called = {}
      local mt = {
        __index = function(_, k) called[#called + 1] = "__index " .. tostring(k) return "meta" end,
        __pairs = function() called[#called + 1] = "__pairs" error("__pairs called") end,
        __len = function() called[#called + 1] = "__len" return 99 end,
        __newindex = function() called[#called + 1] = "__newindex" end,
      }
      local m = setmetatable({}, mt)
      rawset(m, "a", 1)
      rawset(m, "b", "two")
      local bytes = assert(luanet.pack(m))
      assert.same({ a = 1, b = "two" }, luanet.unpack(bytes))
      local s = setmetatable({}, mt)
      rawset(s, 1, "x")
      rawset(s, 2, "y")
      assert.equals("\x92\xa1x\xa1y", luanet.pack(s))
      -- only inherited contents: the raw table is empty
      local proxy = setmetatable({}, { __index = { x = 1, y = 2 }, __pairs = mt.__pairs })
      assert.equals("\x80", luanet.pack(proxy))
      -- as nested values and keys too
      local back = luanet.unpack(assert(luanet.pack({ inner = m, list = luanet.array({ s }) })))
      assert.same({ inner = { a = 1, b = "two" }, list = { { "x", "y" } } }, back)
      assert.same({}, called)
    end)

    it("a table referenced twice (no cycle) is encoded twice", function()
      local shared = { v = 1 }
      local _, back = roundtrip({ a = shared, b = shared, l = luanet.array({ shared, shared }) }, "shared")
      assert.equals(1, back.b.v)
      assert.equals(1, back.l[2].v)
    end)
  end)

  describe("encode errors", function()
    it("a function, a coroutine or a userdata fails with its path", function()
      local d = encode_fails({ args = { cb = print } })
      has(d, "cannot encode a function")
      has(d, "(at value.args.cb)")
      d = encode_fails({ 1, function() end })
      has(d, "cannot encode a function")
      has(d, "(at value[2])")
      d = encode_fails({ ["odd key"] = coroutine.create(print) })
      has(d, "cannot encode a coroutine")
      has(d, '(at value["odd key"])')
      d = encode_fails(io.stdout)
      has(d, "cannot encode a userdata")
      has(d, "(at value)")
      d = encode_fails(print)
      has(d, "cannot encode a function (at value)")
      d = encode_fails({ list = luanet.array({ 1, 2, { x = io.stderr } }) })
      has(d, "cannot encode a userdata")
      has(d, "(at value.list[3].x)")
      -- as a key
      d = encode_fails({ [print] = 1 })
      has(d, "cannot encode a function")
      d = encode_fails({ [coroutine.create(print)] = true })
      has(d, "cannot encode a coroutine")
    end)

    it("a table that contains itself fails with its path", function()
      local t = { a = {} }
      t.a.self = t
      local d = encode_fails(t)
      has(d, "a table contains itself")
      has(d, "(at value.a.self)")
      local a = luanet.array()
      a[1] = a
      d = encode_fails(a)
      has(d, "a table contains itself")
      has(d, "(at value[1])")
      local k = {}
      k[k] = 1
      d = encode_fails(k)
      has(d, "a table contains itself")
    end)

    it("nesting deeper than 100 levels (default) or max_depth fails with its path", function()
      assert.is_string(luanet.pack(nested(DEFAULT_DEPTH, "n")))
      local d = encode_fails(nested(DEFAULT_DEPTH + 1, "n"))
      has(d, "nested deeper than 100 levels")
      has(d, "(at value.n.n")
      d = encode_fails(nested(5000, "n"))
      has(d, "nested deeper than 100 levels")
      -- custom max_depth for one call
      assert.is_string(luanet.pack(nested(5, "n"), { max_depth = 5 }))
      d = encode_fails(nested(6, "n"), { max_depth = 5 })
      has(d, "nested deeper than 5 levels")
      has(d, "(at value.n.n.n.n.n)")
      assert.is_string(luanet.pack(nested(150, "n"), { max_depth = 200 }))
      -- arrays count as levels too
      local arr = luanet.array()
      local cur = arr
      for _ = 2, 4 do local nx = luanet.array() cur[1] = nx cur = nx end
      assert.is_string(luanet.pack(arr, { max_depth = 4 }))
      d = encode_fails(arr, { max_depth = 3 })
      has(d, "nested deeper than 3 levels")
      has(d, "(at value[1][1][1])")
      -- the per-call option did not change the default
      encode_fails(nested(DEFAULT_DEPTH + 1, "n"))
    end)

    it("an encoded value larger than max_size fails", function()
      local s100 = ("x"):rep(100)       -- packs to d9 64 + 100 bytes = 102 bytes
      assert.equals(102, #luanet.pack(s100))
      assert.equals(102, #luanet.pack(s100, { max_size = 102 }))
      local d = encode_fails(s100, { max_size = 101 })
      has(d, "the encoded value is larger than 101 bytes")
      -- the whole value counts, not each part
      d = encode_fails({ ("a"):rep(600), ("b"):rep(600) }, { max_size = 1000 })
      has(d, "larger than 1000 bytes")
      d = encode_fails({ k = luanet.array({ 1, 2, 3, ("z"):rep(2000) }) }, { max_size = 1024 })
      has(d, "larger than 1024 bytes")
      -- default 16 MiB
      local big = ("y"):rep(DEFAULT_SIZE)
      d = encode_fails(big)
      has(d, "the encoded value is larger than 16777216 bytes")
      assert.equals(DEFAULT_SIZE, #luanet.pack(big:sub(6)))
      d = encode_fails({ big:sub(1, 10 * MIB), big:sub(1, 7 * MIB) })
      has(d, "larger than 16777216 bytes")
    end)
  end)

  describe("decode errors", function()
    it("the docs' example: an array that claims more elements", function()
      local v, w, d = luanet.unpack("\x92\x01")
      assert.is_nil(v)
      assert.equals("decode error", w)
      has(d, "an array claims more elements")
    end)

    it("truncated input at every cut of a valid message is refused", function()
      local msg = assert(luanet.pack(luanet.array({
        nil, true, false, 0, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296,
        math.maxinteger, -1, -32, -33, -128, -129, -32768, -32769, -2147483649,
        math.mininteger, 1.5, -0.0, 1 / 0, "", "short", ("s"):rep(40), ("t"):rep(300),
        "\0\xff", ("\xfe"):rep(300), { a = 1, b = { c = luanet.array({ 1, 2 }) } },
        luanet.array(), {}, { [1.5] = true }, luanet.array({ luanet.array({ luanet.array() }) }),
      })))
      assert.is_truthy(#msg > 700)
      assert.is_not_nil(luanet.unpack(msg))
      decode_fails("", nil, "empty input")
      for i = 0, #msg - 1 do
        decode_fails(msg:sub(1, i), nil, ("cut at %d of %d"):format(i, #msg))
      end
      -- headers cut inside their length or payload
      for _, s in ipairs({ "\xcc", "\xcd\x01", "\xce\x01\x02\x03", "\xcf\x01", "\xd0", "\xd1\x01",
                           "\xd2", "\xd3\x01\x02\x03\x04\x05\x06\x07", "\xca\x3f\xc0", "\xcb\x3f",
                           "\xd9", "\xd9\x05abc", "\xda\x00", "\xdb\x00\x00\x00", "\xa5abcd",
                           "\xc4", "\xc4\x03ab", "\xc5\x00", "\xc6\x00\x00\x00\x04abc", "\xdc\x00",
                           "\xdd\x00\x00", "\xde\x00", "\xdf\x00\x00\x00", "\x81\xa1a", "\x81",
                           "\x91", "\x92\x01" }) do
        decode_fails(s)
      end
    end)

    it("forged lengths are refused quickly without allocating for them", function()
      local forged = {
        "\xdd\xff\xff\xff\xff", "\xdf\xff\xff\xff\xff", "\xdb\xff\xff\xff\xff", "\xc6\xff\xff\xff\xff",
        "\xdd\x7f\xff\xff\xff" .. ("\xc0"):rep(100), "\xdf\x7f\xff\xff\xff\x01\x02",
        "\xdb\x7f\xff\xff\xffabc", "\xc6\x7f\xff\xff\xff\0\0\0",
        "\xdc\xff\xff", "\xde\xff\xff", "\xda\xff\xff", "\xc5\xff\xff", "\xd9\xff", "\xc4\xff",
        "\x9f", "\x8f", "\xbf",
        "\x91\xdd\xff\xff\xff\xff", "\x81\xa1k\xdf\xff\xff\xff\xff",
        "\x92\xc0\xdb\xff\xff\xff\xff", ("\x91"):rep(50) .. "\xdd\xff\xff\xff\xff",
        -- each element is valid but there are too few of them
        "\xdd\x00\x10\x00\x00" .. ("\xc0"):rep(65535),
        "\xdf\x00\x10\x00\x00" .. ("\xc0\xc0"):rep(1000),
      }
      local can_peak = reset_peak() and peak_kb() ~= nil
      for _, s in ipairs(forged) do
        collectgarbage("collect")
        collectgarbage("stop")
        if can_peak then reset_peak() end
        local kb0, hwm0 = collectgarbage("count"), can_peak and peak_kb()
        local dt = H.timed(decode_fails, s)
        local kb1, hwm1 = collectgarbage("count"), can_peak and peak_kb()
        collectgarbage("restart")
        local label = hex(s:sub(1, 8))
        assert(dt < 0.1, ("%s took %.3f s"):format(label, dt))
        assert(kb1 - kb0 < 256, ("%s: Lua memory grew by %.0f kB"):format(label, kb1 - kb0))
        if can_peak then
          assert(hwm1 - hwm0 < 32 * 1024, ("%s: peak RSS grew by %d kB"):format(label, hwm1 - hwm0))
        end
      end
      collectgarbage("restart")
    end)

    it("the whole input is checked before any Lua value is built", function()
      local list = luanet.array()
      for i = 1, 20000 do list[i] = ("item %05d "):format(i) .. ("x"):rep(40) end
      local msg = assert(luanet.pack({ list = list, tail = "end" }))
      assert.is_truthy(#msg > 900 * 1024)
      local inputs = {
        { msg:sub(1, -2), "a large value cut by one byte" },
        { "\x92" .. msg .. "\xc1", "0xc1 after a large value" },
        { "\x92" .. msg .. "\x81\xc0\x01", "a nil key after a large value" },
        { "\x92" .. msg .. nested_bytes(101), "too deep after a large value" },
        { msg .. "\xc0", "a trailing byte after a large value" },
      }
      local grew = {}
      for _, c in ipairs(inputs) do
        collectgarbage("collect")
        collectgarbage("stop")
        local kb0 = collectgarbage("count")
        decode_fails(c[1], nil, c[2])
        local kb1 = collectgarbage("count")
        collectgarbage("restart")
        if kb1 - kb0 > 200 then grew[#grew + 1] = ("%s: %.0f kB"):format(c[2], kb1 - kb0) end
      end
      assert(#grew == 0, "failed decodes built Lua values: " .. table.concat(grew, "; "))
    end)

    it("map keys that are nil, NaN, arrays or maps are refused", function()
      local nan64 = "\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00"
      local cases = {
        "\x81\xc0\x01",
        "\x81" .. nan64 .. "\x01",
        "\x81\xca\x7f\xc0\x00\x00\x01",
        "\x81\x90\x01",
        "\x81\x91\x01\x01",
        "\x81\x80\x01",
        "\x81\x81\xa1a\x01\x01",
        "\x82\xa1a\x01\xc0\x02",
        "\x91\x81\xc0\x01",
        "\x81\xa1k\x81\x90\x01",
        "\xde\x00\x01\xc0\x01",
        "\xdf\x00\x00\x00\x01\xdc\x00\x00\x01",
      }
      for _, s in ipairs(cases) do decode_fails(s) end
      -- NaN as a value is fine, and so are other float keys
      local t = luanet.unpack("\x81\xa1k" .. nan64)
      assert.is_true(t.k ~= t.k)
      assert.same({ [1.5] = 1 }, luanet.unpack("\x81\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00\x01"))
    end)

    it("extension types and the reserved byte 0xc1 are refused", function()
      local cases = {
        "\xd4\x01\x00", "\xd5\x01\x00\x00", "\xd6\x01" .. ("\0"):rep(4), "\xd7\x01" .. ("\0"):rep(8),
        "\xd8\x01" .. ("\0"):rep(16), "\xc7\x01\x01\x00", "\xc7\x00\x01", "\xc8\x00\x01\x01\x00",
        "\xc9\x00\x00\x00\x01\x01\x00",
        "\xd6\xff\x00\x00\x00\x00",     -- timestamp 32
        "\xd7\xff" .. ("\0"):rep(8),    -- timestamp 64
        "\xc7\x0c\xff" .. ("\0"):rep(12), -- timestamp 96
        "\xc1", "\x91\xc1", "\x81\xa1a\xc1", "\x81\xc1\x01",
        "\x92\x01\xd4\x01\x00", "\x81\xa1e\xc7\x01\x05\x00",
      }
      for _, s in ipairs(cases) do decode_fails(s) end
    end)

    it("bytes left over after the value are refused", function()
      for _, s in ipairs({ "\x01\x02", "\xc0\xc0", "\x90\x00", "\x80\x80", "\xa1ab", "\xc3 ",
                           "\x01\0", assert(luanet.pack({ a = 1 })) .. "\x01" }) do
        decode_fails(s)
      end
    end)

    it("nesting deeper than max_depth is refused", function()
      local ok, w = luanet.unpack(nested_bytes(DEFAULT_DEPTH))
      assert.is_nil(w)
      assert.is_true(luanet.is_array(ok))
      decode_fails(nested_bytes(DEFAULT_DEPTH + 1))
      -- maps count too
      decode_fails(("\x81\xa1n"):rep(DEFAULT_DEPTH) .. "\x80")
      assert.is_table((luanet.unpack(("\x81\xa1n"):rep(DEFAULT_DEPTH - 1) .. "\x80")))
      -- a custom limit for one call
      assert.is_table((luanet.unpack(nested_bytes(3), { max_depth = 3 })))
      decode_fails(nested_bytes(4), { max_depth = 3 })
      assert.is_table((luanet.unpack(nested_bytes(150), { max_depth = 200 })))
      -- very deep input neither overflows the C stack nor takes long
      local dt = H.timed(decode_fails, ("\x91"):rep(1000000) .. "\x90")
      assert(dt < 0.5, ("deep input took %.3f s"):format(dt))
      decode_fails(("\x91"):rep(1000000))
    end)

    it("input larger than max_size is refused", function()
      local msg = assert(luanet.pack(("x"):rep(100))) -- 102 bytes
      assert.equals(("x"):rep(100), luanet.unpack(msg, { max_size = 102 }))
      decode_fails(msg, { max_size = 101 })
      decode_fails(msg, { max_size = 10 })
      -- the default: 16 MiB of input
      local at_limit = "\xdb" .. spack(">I4", DEFAULT_SIZE - 5) .. ("z"):rep(DEFAULT_SIZE - 5)
      assert.equals(DEFAULT_SIZE, #at_limit)
      local v, w = luanet.unpack(at_limit)
      assert.is_nil(w)
      assert.equals(DEFAULT_SIZE - 5, #v)
      local over = "\xdb" .. spack(">I4", DEFAULT_SIZE - 4) .. ("z"):rep(DEFAULT_SIZE - 4)
      decode_fails(over)
    end)
  end)

  it("fuzz: random bytes and mutated messages never raise and fail only with 'decode error'", function()
    math.randomseed(20240607)
    local random, char = math.random, string.char
    local headers = { 0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3,
      0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2,
      0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff }
    local stats = { ok = 0, err = 0 }
    local function check(s)
      local r = table.pack(pcall(luanet.unpack, s))
      if not r[1] then error(("unpack raised on %s: %s"):format(hex(s), tostring(r[2])), 0) end
      if r[3] ~= nil then
        if not (r[2] == nil and r[3] == "decode error" and type(r[4]) == "string") then
          error(("bad failure on %s: %s %s %s"):format(hex(s), tostring(r[2]), tostring(r[3]),
            tostring(r[4])), 0)
        end
        stats.err = stats.err + 1
      else
        stats.ok = stats.ok + 1
        -- whatever decodes can be encoded again, and that decodes
        local again, w, d = luanet.pack(r[2])
        if not again then
          error(("decoded value of %s does not pack: %s %s"):format(hex(s), tostring(w), tostring(d)), 0)
        end
        local _, uw = luanet.unpack(again)
        if uw ~= nil then error("re-packed value of " .. hex(s) .. " does not unpack", 0) end
      end
    end
    local t0 = luanet.now()
    for _ = 1, 20000 do
      local n = random(0, 24)
      local b = {}
      for i = 1, n do
        b[i] = random() < 0.4 and headers[random(#headers)] or random(0, 255)
      end
      check(char(table.unpack(b)))
    end
    local seeds = {}
    for _, v in ipairs({
      { 1, -1, 300, -300, 70000, math.maxinteger, math.mininteger },
      { a = 1, b = { c = "str", d = luanet.array({ 1.5, true, false }) }, ["\0\xff"] = "bin" },
      luanet.array({ {}, luanet.array(), { x = luanet.array({ {} }) } }),
      { [1.5] = "f", [true] = 3, k = ("long "):rep(60) },
      ("\xfe"):rep(70), 0 / 0, -0.0, "h\xc3\xa9",
    }) do
      seeds[#seeds + 1] = assert(luanet.pack(v))
    end
    seeds[#seeds + 1] = "\xca\x3f\xc0\x00\x00"
    seeds[#seeds + 1] = "\xdc\x00\x02\xcd\x01\x00\xd0\x80"
    for i = 1, 5000 do
      local s = seeds[(i % #seeds) + 1]
      for _ = 1, random(1, 4) do
        local op, pos = random(1, 5), random(1, math.max(#s, 1))
        if op == 1 then      -- replace a byte
          s = s:sub(1, pos - 1) .. char(random(0, 255)) .. s:sub(pos + 1)
        elseif op == 2 then  -- insert a byte
          s = s:sub(1, pos - 1) .. char(random() < 0.5 and headers[random(#headers)] or random(0, 255)) .. s:sub(pos)
        elseif op == 3 then  -- delete a byte
          s = s:sub(1, pos - 1) .. s:sub(pos + 1)
        elseif op == 4 then  -- truncate
          s = s:sub(1, pos)
        else                 -- duplicate a slice
          local e = math.min(#s, pos + random(0, 8))
          s = s:sub(1, e) .. s:sub(pos, e) .. s:sub(e + 1)
        end
      end
      check(s)
    end
    local dt = luanet.now() - t0
    assert.equals(25000, stats.ok + stats.err)
    assert.is_truthy(stats.ok > 100)   -- some inputs do decode, so both paths were exercised
    assert.is_truthy(stats.err > 10000)
    assert(dt < 5, ("fuzz took %.2f s"):format(dt))
  end)

  describe("codec_limits", function()
    local function restore()
      luanet.codec_limits({ max_depth = DEFAULT_DEPTH, max_size = DEFAULT_SIZE })
    end

    it("returns the defaults: 100 levels and 16 MiB", function()
      local l = luanet.codec_limits()
      assert.same({ max_depth = 100, max_size = 16777216 }, l)
      assert.same({ max_depth = 100, max_size = 16777216 }, luanet.codec_limits({}))
    end)

    it("sets the defaults for later pack and unpack calls", function()
      finally(restore)
      local l = luanet.codec_limits({ max_size = MIB })
      assert.same({ max_depth = 100, max_size = 1048576 }, l)
      assert.same({ max_depth = 100, max_size = 1048576 }, luanet.codec_limits())
      local s = ("q"):rep(MIB)
      has(encode_fails(s), "larger than 1048576 bytes")
      decode_fails("\xdb" .. spack(">I4", MIB) .. s)
      assert.is_string(luanet.pack(s:sub(6)))
      -- a per-call option still overrides the new default
      assert.is_string(luanet.pack(s, { max_size = 2 * MIB }))
      assert.equals(MIB, #luanet.unpack("\xdb" .. spack(">I4", MIB) .. s, { max_size = 2 * MIB }))

      l = luanet.codec_limits({ max_depth = 3 })
      assert.same({ max_depth = 3, max_size = 1048576 }, l)  -- max_size kept
      assert.is_string(luanet.pack(nested(3, "n")))
      has(encode_fails(nested(4, "n")), "nested deeper than 3 levels")
      assert.is_table((luanet.unpack(nested_bytes(3))))
      decode_fails(nested_bytes(4))
      assert.is_string(luanet.pack(nested(10, "n"), { max_depth = 10 }))
      assert.is_table((luanet.unpack(nested_bytes(10), { max_depth = 10 })))

      l = luanet.codec_limits({ max_depth = 500, max_size = 32 * MIB })
      assert.same({ max_depth = 500, max_size = 32 * MIB }, l)
      assert.is_string(luanet.pack(nested(400, "n")))
      assert.is_table((luanet.unpack(nested_bytes(400))))
      assert.is_string(luanet.pack(("w"):rep(20 * MIB)))

      restore()
      assert.same({ max_depth = 100, max_size = 16777216 }, luanet.codec_limits())
      encode_fails(nested(101, "n"))
    end)

    it("bad option values raise and change nothing", function()
      finally(restore)
      local bad = {
        { max_depth = -1 }, { max_depth = "x" }, { max_depth = 1.5 }, { max_depth = true },
        { max_depth = {} }, { max_depth = math.huge }, { max_depth = 0 / 0 },
        { max_size = -1 }, { max_size = "big" }, { max_size = 0.5 }, { max_size = false },
        { max_size = -math.huge },
      }
      for _, opts in ipairs(bad) do
        local k, v = next(opts)
        local ok, e = pcall(luanet.codec_limits, opts)
        assert(not ok, ("codec_limits{%s = %s} did not raise"):format(k, tostring(v)))
        has(tostring(e), "luanet.codec_limits")
        assert.same({ max_depth = 100, max_size = 16777216 }, luanet.codec_limits())
      end
      H.raises({ "luanet.codec_limits" }, luanet.codec_limits, "x")
      H.raises({ "luanet.codec_limits" }, luanet.codec_limits, 5)
      assert.same({ max_depth = 100, max_size = 16777216 }, luanet.codec_limits())
    end)
  end)

  describe("argument errors raise and name the function", function()
    it("unpack without a string", function()
      H.raises({ "luanet.unpack" }, luanet.unpack, nil)
      H.raises({ "luanet.unpack" }, luanet.unpack)
      H.raises({ "luanet.unpack" }, luanet.unpack, {})
      H.raises({ "luanet.unpack" }, luanet.unpack, "\x01", "notatable")
      H.raises({ "luanet.unpack", "max_depth" }, luanet.unpack, "\x01", { max_depth = -1 })
      H.raises({ "luanet.unpack", "max_size" }, luanet.unpack, "\x01", { max_size = "x" })
    end)

    it("pack with opts that are not a table", function()
      H.raises({ "luanet.pack" }, luanet.pack, 1, "notatable")
      H.raises({ "luanet.pack" }, luanet.pack, {}, 5)
      H.raises({ "luanet.pack", "max_depth" }, luanet.pack, 1, { max_depth = "deep" })
      H.raises({ "luanet.pack", "max_size" }, luanet.pack, 1, { max_size = -5 })
    end)
  end)

  describe("interop with Python msgpack", function()
    -- { Lua value, Python expression it must decode to }
    local lua_to_py = {
      { nil, "None" }, { true, "True" }, { false, "False" },
      { 0, "0" }, { 127, "127" }, { 128, "128" }, { 255, "255" }, { 256, "256" },
      { 65535, "65535" }, { 65536, "65536" }, { 4294967295, "2**32-1" }, { 4294967296, "2**32" },
      { math.maxinteger, "2**63-1" }, { -1, "-1" }, { -32, "-32" }, { -33, "-33" },
      { -128, "-128" }, { -129, "-129" }, { -32768, "-32768" }, { -32769, "-32769" },
      { -2147483648, "-2**31" }, { -2147483649, "-2**31-1" }, { math.mininteger, "-2**63" },
      { 0.0, "0.0" }, { -(0.0), "-0.0" }, { 1.0, "1.0" }, { 1.5, "1.5" }, { 1e308, "1e308" },
      { 5e-324, "5e-324" }, { math.huge, "inf" }, { -math.huge, "-inf" }, { 0 / 0, "nan" },
      { 0.1, "0.1" }, { 2.0 ^ 63, "2.0**63" },
      { "", "''" }, { "hello", "'hello'" }, { "h\xc3\xa9llo \xe2\x82\xac", "'h\\u00e9llo \\u20ac'" },
      { "a\0b", "'a\\x00b'" }, { "\0\xff", "b'\\x00\\xff'" }, { "\xc0\x80", "b'\\xc0\\x80'" },
      { ("s"):rep(31), "'s'*31" }, { ("s"):rep(32), "'s'*32" }, { ("s"):rep(256), "'s'*256" },
      { ("s"):rep(65536), "'s'*65536" }, { ("\xff"):rep(300), "b'\\xff'*300" },
      { ("\xfe"):rep(70000), "b'\\xfe'*70000" },
      { {}, "{}" }, { luanet.array(), "[]" }, { { 1, 2, 3 }, "[1, 2, 3]" },
      { { 1, 2, x = 5 }, "{1: 1, 2: 2, 'x': 5}" }, { { 1, nil, 3 }, "{1: 1, 3: 3}" },
      { { [1.5] = "f", [true] = "t", [-3] = "n", ["\0\xff"] = 1 },
        "{1.5: 'f', True: 't', -3: 'n', b'\\x00\\xff': 1}" },
      { { user = "ada", tags = { "x", "y" }, score = 9.5, nested = { a = { b = luanet.array({ {} }) } } },
        "{'user': 'ada', 'tags': ['x', 'y'], 'score': 9.5, 'nested': {'a': {'b': [{}]}}}" },
      { luanet.array({ 1, 1.0, "1", "\xff" }), "[1, 1.0, '1', b'\\xff']" },
    }
    do
      local a = luanet.array({ 1, nil, 3 })
      lua_to_py[#lua_to_py + 1] = { a, rawlen(a) == 3 and "[1, None, 3]" or "[1]" }
      local big = {}
      for i = 1, 70000 do big[i] = i end
      lua_to_py[#lua_to_py + 1] = { big, "list(range(1, 70001))" }
      local bigmap = {}
      for i = 1, 70000 do bigmap["k" .. i] = -i end
      lua_to_py[#lua_to_py + 1] = { bigmap, "{'k%d' % i: -i for i in range(1, 70001)}" }
    end

    it("bytes packed by luanet decode in Python to the expected values", function()
      local recs, exprs = {}, {}
      for i, c in ipairs(lua_to_py) do
        recs[i] = assert(luanet.pack(c[1]))
        exprs[i] = c[2]
      end
      local dir = H.tmpdir()
      writefile(dir .. "/in.bin", records(recs))
      writefile(dir .. "/exprs.txt", table.concat(exprs, "\n"))
      local out, pdir = run_python(PY_CHECK, ("'%s/in.bin' '%s/exprs.txt'"):format(dir, dir))
      H.rmdir(dir)
      H.rmdir(pdir)
      assert.equals(("checked %d\n"):format(#lua_to_py), out)
    end)

    -- { Python expression, Lua value it must unpack to }
    local arr = luanet.array
    local py_to_lua = {
      { "None", nil }, { "True", true }, { "False", false },
      { "0", 0 }, { "127", 127 }, { "128", 128 }, { "255", 255 }, { "256", 256 },
      { "65535", 65535 }, { "65536", 65536 }, { "2**32-1", 4294967295 }, { "2**32", 4294967296 },
      { "2**63-1", math.maxinteger }, { "2**63", math.mininteger }, { "2**64-1", -1 },
      { "-1", -1 }, { "-32", -32 }, { "-33", -33 }, { "-128", -128 }, { "-129", -129 },
      { "-32768", -32768 }, { "-32769", -32769 }, { "-2**31", -2147483648 },
      { "-2**31-1", -2147483649 }, { "-2**63", math.mininteger },
      { "0.0", 0.0 }, { "-0.0", -(0.0) }, { "1.0", 1.0 }, { "1.5", 1.5 }, { "1e308", 1e308 },
      { "5e-324", 5e-324 }, { "inf", math.huge }, { "-inf", -math.huge }, { "nan", 0 / 0 },
      { "F32:1.5", 1.5 }, { "F32:-0.25", -0.25 }, { "F32:inf", math.huge }, { "F32:nan", 0 / 0 },
      { "''", "" }, { "'hello'", "hello" }, { "'h\\u00e9llo \\u20ac'", "h\xc3\xa9llo \xe2\x82\xac" },
      { "b''", "" }, { "b'\\x00\\xff'", "\0\xff" }, { "'s'*32", ("s"):rep(32) },
      { "'s'*70000", ("s"):rep(70000) }, { "b'\\xfe'*300", ("\xfe"):rep(300) },
      { "b'\\xfe'*70000", ("\xfe"):rep(70000) }, { "RAW:b'raw\\xff'", "raw\xff" },
      { "[]", arr() }, { "{}", {} }, { "[1, [2, [3, []]], {}]", arr({ 1, arr({ 2, arr({ 3, arr() }) }), {} }) },
      { "[None, None]", arr() }, { "[1, None, 3]", arr({ 1, nil, 3 }) },
      { "{'a': {'b': [1, 2, {'c': None}]}}", { a = { b = arr({ 1, 2, { c = nil } }) } } },
      { "{1: 'one', -5: 'neg', 2.5: 'f', 'x': b'\\x01'}", { [1] = "one", [-5] = "neg", [2.5] = "f", x = "\1" } },
      { "{False: 0, 'k': [1.0, 2]}", { [false] = 0, k = arr({ 1.0, 2 }) } },
      { "{1: 'a', 2: 'b'}", { "a", "b" } },
      { "{'n': nan, 'big': 2**64-2, 'neg': -2**63}", { n = 0 / 0, big = -2, neg = math.mininteger } },
    }

    it("bytes packed by Python msgpack unpack in Lua to the expected values", function()
      local exprs = {}
      for i, c in ipairs(py_to_lua) do exprs[i] = c[1] end
      local dir = H.tmpdir()
      writefile(dir .. "/exprs.txt", table.concat(exprs, "\n"))
      local out, pdir = run_python(PY_PACK, ("'%s/exprs.txt' '%s/out.bin'"):format(dir, dir))
      local data = H.readfile(dir .. "/out.bin")
      H.rmdir(dir)
      H.rmdir(pdir)
      assert.equals(("packed %d\n"):format(#py_to_lua), out)
      local recs = read_records(data)
      assert.equals(#py_to_lua, #recs)
      for i, c in ipairs(py_to_lua) do
        local v, w, d = luanet.unpack(recs[i])
        assert(w == nil, ("%s (%s): %s %s"):format(c[1], hex(recs[i]:sub(1, 12)), tostring(w), tostring(d)))
        assert_same(v, c[2], c[1])
      end
      -- the float 32 cases really were float 32
      for i, c in ipairs(py_to_lua) do
        if c[1]:sub(1, 4) == "F32:" then assert.equals(0xca, recs[i]:byte(1), c[1]) end
      end
    end)

    it("values survive Lua -> Python -> Lua", function()
      local v = { user = "ada", n = luanet.array({ 0, -1, 255, -129, 65536, math.maxinteger, math.mininteger,
        1.0, -0.0, 1e-300 }), bin = "\0\1\xff", s = "\xe2\x82\xac", m = { [1.5] = true, [2] = false },
        e = luanet.array(), em = {} }
      local dir = H.tmpdir()
      writefile(dir .. "/in.bin", assert(luanet.pack(v)))
      local script = PY_COMMON .. [=[
v = msgpack.unpackb(open(sys.argv[1], "rb").read(), raw=False, strict_map_key=False)
open(sys.argv[2], "wb").write(msgpack.packb(v, use_bin_type=True))
print("ok")
]=]
      local out, pdir = run_python(script, ("'%s/in.bin' '%s/out.bin'"):format(dir, dir))
      local data = H.readfile(dir .. "/out.bin")
      H.rmdir(dir)
      H.rmdir(pdir)
      assert.equals("ok\n", out)
      local back, w, d = luanet.unpack(data)
      assert(w == nil, tostring(d))
      assert_same(back, v)
    end)
  end)
end)
