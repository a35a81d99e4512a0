-- Shared by bench/soak_caller.lua and bench/soak_service.lua (driven by bench/soak):
-- one-line JSON for the driver, latency histograms, payloads of varying sizes.
local M = {}

---------------------------------------------------------------------------------------
-- JSON, one line per report (numbers, strings, booleans, nested tables with string keys
-- or array parts)
---------------------------------------------------------------------------------------

local function esc(s)
   return (s:gsub('[%c"\\]', function(c)
      if c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
      return ("\\u%04x"):format(c:byte())
   end))
end

local function enc(v, out)
   local t = type(v)
   if t == "number" then
      if v ~= v or v == math.huge or v == -math.huge then out[#out + 1] = "null"
      elseif math.type(v) == "integer" then out[#out + 1] = tostring(v)
      else out[#out + 1] = ("%.6g"):format(v) end
   elseif t == "string" then out[#out + 1] = '"' .. esc(v) .. '"'
   elseif t == "boolean" then out[#out + 1] = tostring(v)
   elseif t == "table" then
      local n, count = #v, 0
      for _ in pairs(v) do count = count + 1 end
      if (n > 0 and count == n) or (count == 0 and getmetatable(v) == M.ARRAY) then
         out[#out + 1] = "["
         for i = 1, #v do
            if i > 1 then out[#out + 1] = "," end
            enc(v[i], out)
         end
         out[#out + 1] = "]"
      else
         out[#out + 1] = "{"
         local first = true
         for k, x in pairs(v) do
            if not first then out[#out + 1] = "," end
            first = false
            out[#out + 1] = '"' .. esc(tostring(k)) .. '":'
            enc(x, out)
         end
         out[#out + 1] = "}"
      end
   else
      out[#out + 1] = "null"
   end
end

M.ARRAY = {}

function M.json(v)
   local out = {}
   enc(v, out)
   return table.concat(out)
end

-- Prints "TAG {json}" and flushes: the driver reads our stdout through a pipe.
function M.emit(tag, v)
   io.stdout:write(tag, " ", M.json(v), "\n")
   io.stdout:flush()
end

---------------------------------------------------------------------------------------
-- Latency histogram: bucket i holds latencies in [BASE * R^i, BASE * R^(i+1)) seconds.
---------------------------------------------------------------------------------------

local BASE, R = 1e-5, 1.05
local LOG_R = math.log(R)
M.HIST_BASE, M.HIST_RATIO = BASE, R

function M.hist_add(h, seconds)
   local i = 0
   if seconds > BASE then i = math.floor(math.log(seconds / BASE) / LOG_R) end
   h[i] = (h[i] or 0) + 1
end

---------------------------------------------------------------------------------------
-- Payloads: strings of varying sizes, made once (a pool), picked at random.
---------------------------------------------------------------------------------------

local function make(n, seed)
   local unit = ("%08x"):format(seed % 0xffffffff) .. "abcdefghijklmnopqrstuvwxyz0123456789"
   local s = unit:rep(n // #unit + 1)
   return s:sub(1, n)
end

local pool = {}
function M.payloads(seed)
   local rnd = math.random
   for i = 1, 64 do pool[#pool + 1] = make(rnd(8, 200), seed + i) end          -- small
   for i = 1, 16 do pool[#pool + 1] = make(rnd(1000, 10000), seed + 100 + i) end  -- 1-10 KB
   for i = 1, 4 do pool[#pool + 1] = make(rnd(10000, 50000), seed + 200 + i) end -- 10-50 KB
   M.big = make(100 * 1024, seed + 300)                                      -- 100 KB
end

-- 70% small, 25% 1-10 KB, 4.5% 10-50 KB, 0.5% 100 KB.
function M.payload()
   local x = math.random()
   if x < 0.005 then return M.big end
   if x < 0.05 then return pool[80 + math.random(4)] end
   if x < 0.30 then return pool[64 + math.random(16)] end
   return pool[math.random(64)]
end

return M
