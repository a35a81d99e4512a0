-- The documentation is checked like code (the luv habit): every ```lua block in docs/
-- runs to completion under lua5.4 with the installed module, and every public function
-- and socket method is named somewhere in docs/.
local luanet = require "luanet"

local docs_dir = "../docs"

local function read(path)
   local f = assert(io.open(path, "rb"))
   local text = f:read("a")
   f:close()
   return text
end

local function doc_files()
   local files = {}
   local p = assert(io.popen("ls " .. docs_dir .. "/*.md"))
   for name in p:lines() do files[#files + 1] = name end
   p:close()
   return files
end

describe("docs", function()
   local all_docs = {}
   for _, file in ipairs(doc_files()) do all_docs[#all_docs + 1] = read(file) end
   local core_md = table.concat(all_docs, "\n")

   it("every ```lua block in docs/ runs and finishes", function()
      local ran = 0
      for _, file in ipairs(doc_files()) do
         local text = read(file)
         for block in text:gmatch("```lua\n(.-)```") do
            local script = os.tmpname()
            local f = assert(io.open(script, "w"))
            f:write(block)
            f:close()
            local out = os.tmpname()
            local ok = os.execute(("timeout 20 lua5.4 %s > %s 2>&1"):format(script, out))
            local output = read(out)
            os.remove(script)
            os.remove(out)
            assert(ok, ("%s: example failed:\n%s\n--- output:\n%s"):format(file, block, output))
            assert(not output:find("task error", 1, true),
               ("%s: example raised in a task:\n%s\n--- output:\n%s"):format(file, block, output))
            ran = ran + 1
         end
      end
      assert.is_true(ran >= 5, "expected several runnable examples, found " .. ran)
   end)

   it("names every public function of the luanet table", function()
      local missing = {}
      for name, v in pairs(luanet) do
         if type(v) == "function" and not core_md:find("luanet." .. name .. "(", 1, true) then
            missing[#missing + 1] = "luanet." .. name
         elseif type(v) == "table" and name ~= "coroutine" then
            for sub, f in pairs(v) do
               if type(f) == "function" and not core_md:find("luanet." .. name .. "." .. sub .. "(", 1, true) then
                  missing[#missing + 1] = "luanet." .. name .. "." .. sub
               end
            end
         end
      end
      table.sort(missing)
      assert.same({}, missing)
   end)

   it("names every method of every socket kind", function()
      local missing = {}
      for _, kind in ipairs { "luanet.listener", "luanet.stream", "luanet.datagram" } do
         local mt = debug.getregistry()[kind]
         assert.is_table(mt, kind .. " metatable is registered")
         for method in pairs(mt.__index) do
            if not core_md:find(":" .. method .. "(", 1, true) then
               missing[#missing + 1] = kind .. ":" .. method
            end
         end
      end
      table.sort(missing)
      assert.same({}, missing)
   end)
end)
