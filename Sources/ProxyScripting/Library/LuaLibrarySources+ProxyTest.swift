extension LuaLibrarySources {
    /// `proxy.test`
    static let proxyTest = ##"""
-- proxy.test: a small xUnit for testing scripts outside the proxy (MySQL Proxy's names).
local M = { _VERSION = "MoonProxy proxy.test 1.0" }

local function fail(message, usermessage)
  error(("%s (%s)\n%s"):format(message, usermessage or "", debug.traceback("", 3)), 0)
end

function M.assertEquals(is, expected, msg)
  if type(is) ~= type(expected) then
    fail(("got type '%s' for <%s>, expected type '%s' for <%s>"):format(type(is), tostring(is), type(expected), tostring(expected)), msg)
  end
  if is ~= expected then
    fail(("got '%s' <%s>, expected '%s' <%s>"):format(tostring(is), type(is), tostring(expected), type(expected)), msg)
  end
end

function M.assertNotEquals(is, expected, msg)
  if is == expected then
    fail(("got '%s' <%s>, expected anything else"):format(tostring(is), type(is)), msg)
  end
end

local function class(base)
  local c = base or {}
  function c:new(o)
    o = o or {}
    setmetatable(o, self)
    self.__index = self
    return o
  end
  return c
end

M.BaseTest = class({})
function M.BaseTest:setUp() end
function M.BaseTest:tearDown() end

M.ProxyBaseTest = M.BaseTest:new()
--- Replaces _G.proxy with a plain table holding the constants, so hooks can be called directly.
function M.ProxyBaseTest:setDefaultScope()
  local fake = { global = { config = {} }, connection = { server = {}, client = {} }, response = {} }
  fake.queries = { list = {} }
  function fake.queries:append(id, query, options) self.list[#self.list + 1] = { id = id, query = query, options = options } end
  function fake.queries:prepend(id, query, options) table.insert(self.list, 1, { id = id, query = query, options = options }) end
  function fake.queries:reset() self.list = {} end
  function fake.queries:len() return #self.list end
  local real = rawget(_G, "proxy")
  for k, v in pairs(real or {}) do
    if type(k) == "string" and k:match("^[A-Z][A-Z0-9_]+$") then fake[k] = v end
  end
  setmetatable(fake, { __index = function(_, key) error(("proxy.%s is not in the test scope; set it in the test"):format(key), 2) end })
  _G.proxy = fake
  return fake
end

M.Result = class({})
function M.Result:new(o)
  o = o or {}
  o.passed, o.failed, o.failed_tests = o.passed or 0, o.failed or 0, o.failed_tests or {}
  setmetatable(o, self)
  self.__index = self
  return o
end
function M.Result:print()
  if self.failed > 0 then
    print("FAILED TESTS:")
    for class_name, methods in pairs(self.failed_tests) do
      for method, e in pairs(methods) do print(("%s.%s: %s"):format(class_name, method, tostring(e))) end
    end
  end
  local total = self.passed + self.failed
  print(("%.02f%%, %d passed, %d failed"):format(total > 0 and self.passed * 100 / total or 100, self.passed, self.failed))
end

M.Suite = class({})
function M.Suite:new(o)
  o = o or {}
  assert(o.result, "Suite:new(...) needs result = Result:new()")
  setmetatable(o, self)
  self.__index = self
  return o
end
--- Runs every test* method of the given classes (default: every global table named Test*).
function M.Suite:run(classes, scope)
  scope = scope or _G
  if not classes then
    classes = {}
    for name, value in pairs(scope) do
      if type(value) == "table" and name:sub(1, 4) == "Test" then classes[#classes + 1] = name end
    end
    table.sort(classes)
  end
  for _, class_name in ipairs(classes) do
    local c = assert(scope[class_name], "class " .. class_name .. " is not known")
    local methods = {}
    for name, fn in pairs(c) do
      if type(fn) == "function" and name:sub(1, 4) == "test" then methods[#methods + 1] = name end
    end
    table.sort(methods)
    for _, name in ipairs(methods) do
      local t = c:new()
      t:setUp()
      local done, e = pcall(t[name], t)
      t:tearDown()
      if done then
        self.result.passed = self.result.passed + 1
      else
        self.result.failed = self.result.failed + 1
        self.result.failed_tests[class_name] = self.result.failed_tests[class_name] or {}
        self.result.failed_tests[class_name][name] = e
      end
    end
  end
  return self.result
end
function M.Suite:exit_code() return self.result.failed == 0 and 0 or 1 end

_G.assertEquals = M.assertEquals
_G.assertNotEquals = M.assertNotEquals

return M
"""##
}
