-- Codec benchmark: encode+decode round trips per second, luanet (MessagePack) next to
-- lua-cjson (JSON), same tables, same process. Prints medians of RUNS runs.
-- usage: lua5.4 bench/codec.lua [runs] [seconds-per-run]
local luanet = require "luanet"
local cjson = require "cjson"

local runs = tonumber(arg[1]) or 5
local seconds = tonumber(arg[2]) or 0.5

local record = {}
for i = 1, 30 do
   local k = "field_" .. i
   if i % 3 == 0 then record[k] = i * 1000
   elseif i % 3 == 1 then record[k] = "value number " .. i
   else record[k] = i + 0.5 end
end

local cases = {
   { name = "{a=1,b=2}", value = { a = 1, b = 2 } },
   { name = "30-field record", value = record },
}
local codecs = {
   { name = "luanet pack/unpack", enc = luanet.pack, dec = luanet.unpack },
   { name = "lua-cjson encode/decode", enc = cjson.encode, dec = cjson.decode },
}

local clock = os.clock
local function rate(enc, dec, value)
   local n, batch = 0, 1000
   local t0 = clock()
   local deadline = t0 + seconds
   repeat
      for _ = 1, batch do dec(enc(value)) end
      n = n + batch
   until clock() >= deadline
   return n / (clock() - t0)
end

local function median(xs)
   table.sort(xs)
   return xs[(#xs + 1) // 2]
end

print(("codec round trips (encode+decode) per second, median of %d runs x %.1f s, CPU time"):format(runs, seconds))
for _, case in ipairs(cases) do
   local results = {}
   for _, codec in ipairs(codecs) do
      local xs = {}
      for _ = 1, runs do xs[#xs + 1] = rate(codec.enc, codec.dec, case.value) end
      results[#results + 1] = median(xs)
      print(("  %-16s %-24s %10.0f /s  (%.2f us each)"):format(case.name, codec.name, results[#results], 1e6 / results[#results]))
   end
   print(("  %-16s luanet / cjson = %.2f"):format(case.name, results[1] / results[2]))
end
