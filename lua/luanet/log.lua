-- luanet.log (docs/log.md): levels, printf-style messages and named loggers in front of
-- the native writer thread (src/log/). The level check comes first, so a call below the
-- level costs one comparison and formats nothing.

local core = require "luanet.core"

return function(luanet)

local LEVELS = { trace = 1, debug = 2, info = 3, warn = 4, error = 5 }
local NAMES = { "trace", "debug", "info", "warn", "error" }

local threshold = LEVELS.info          -- for loggers without a level of their own
core.log_configure({ events_level = threshold })
local own = {}                         -- logger name -> its level, when set
local write, format, pcall, select = core.log_write, string.format, pcall, select

local function format_failed(why, fmt)
   return ("(log format error: %s) %s"):format(why, tostring(fmt))
end

-- One logger: log.info(fmt, ...) and friends, no self.
local function make(name)
   local logger = { name = name }
   for level, word in ipairs(NAMES) do
      logger[word] = function(fmt, ...)
         if level < (own[name] or threshold) then return end
         if select("#", ...) == 0 then return write(level, name, tostring(fmt)) end
         local ok, text = pcall(format, fmt, ...)
         write(level, name, ok and text or format_failed(text, fmt))
      end
   end
   function logger.enabled(word)
      local level = LEVELS[word]
      if not level then
         error(("enabled: unknown level %s (trace, debug, info, warn or error)"):format(tostring(word)), 2)
      end
      return level >= (own[name] or threshold)
   end
   return logger
end

local log = make("")
local loggers = { [""] = log }

--- luanet.log.logger(name) -> a logger whose lines carry `name`.
function log.logger(name)
   if type(name) ~= "string" then
      error("luanet.log.logger: bad argument #1 'name' (string expected, got " .. type(name) .. ")", 2)
   end
   local l = loggers[name]
   if not l then
      l = make(name)
      loggers[name] = l
   end
   return l
end

local function level_of(func, v)
   local n = LEVELS[v]
   if not n then
      error(("%s: unknown level %s (trace, debug, info, warn or error)"):format(func, tostring(v)), 3)
   end
   return n
end

--- luanet.log.configure{ level, levels, file | dir, format, max_bytes, daily, keep } -> true | nil, word, detail
function log.configure(t)
   local F = "luanet.log.configure"
   if type(t) ~= "table" then error(F .. ": bad argument #1 (table expected, got " .. type(t) .. ")", 2) end
   for k in pairs(t) do
      if not ({ level = 1, levels = 1, file = 1, dir = 1, name = 1, format = 1, max_bytes = 1,
                daily = 1, keep = 1 })[k] then
         error(F .. ": unknown setting '" .. tostring(k) .. "'", 2)
      end
   end
   local new_threshold = threshold
   if t.level ~= nil then new_threshold = level_of(F, t.level) end
   local new_own = {}
   if t.levels ~= nil then
      if type(t.levels) ~= "table" then error(F .. ": 'levels' must be a table of logger name = level", 2) end
      for name, v in pairs(t.levels) do new_own[name] = level_of(F, v) end
   end
   local file = t.file
   if file ~= nil and type(file) ~= "string" then error(F .. ": 'file' must be a string", 2) end
   if t.dir ~= nil then
      if file ~= nil then error(F .. ": give 'file' or 'dir', not both", 2) end
      if type(t.dir) ~= "string" then error(F .. ": 'dir' must be a string", 2) end
      if t.name ~= nil and type(t.name) ~= "string" then error(F .. ": 'name' must be a string", 2) end
      file = t.dir .. "/" .. (t.name or "luanet") .. ".log"
   elseif t.name ~= nil then
      error(F .. ": 'name' goes with 'dir'", 2)
   end
   if file == nil and (t.max_bytes ~= nil or t.daily ~= nil or t.keep ~= nil) then
      error(F .. ": 'max_bytes', 'daily' and 'keep' go with 'file' or 'dir'", 2)
   end
   -- luanet's own events are the logger "luanet": its level is checked natively.
   local events = (t.levels ~= nil and new_own or own).luanet or new_threshold
   local ok, word, detail = core.log_configure({
      file = file, format = t.format, max_bytes = t.max_bytes, daily = t.daily, keep = t.keep,
      events_level = events,
   })
   if not ok then return nil, word, detail end
   threshold = new_threshold
   if t.levels ~= nil then own = new_own end
   return true
end

--- luanet.log.flush([timeout]) -> true | nil, "timeout"
log.flush = core.log_flush

--- luanet.log.stats() -> { written, dropped, failed, queued }
log.stats = core.log_stats

luanet.log = log

end
