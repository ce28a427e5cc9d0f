extension LuaLibrarySources {
    /// `proxy.auto-config`
    static let proxyAutoConfig = ##"""
-- proxy.auto-config: script options changed at run time with SQL-like commands, kept in
-- proxy.global.config[module][option]:
--   PROXY SHOW CONFIG
--   PROXY SET GLOBAL module.option = value       (a number, true/false or a "string")
--   PROXY SAVE CONFIG INTO "file"
--   PROXY LOAD CONFIG FROM "file"
-- config:handle(cmd) (cmd from proxy.commands.parse) answers them and returns
-- proxy.PROXY_SEND_RESULT, or nil for any other query.
local M = { _VERSION = "MoonProxy proxy.auto-config 1.0" }
-- SAVE and LOAD go through the proxy: plain file names in --proxy-auto-config-dir only (a client
-- chooses the name), and nothing without that option
local files = ...

local function parse_value(current, text)
  local kind = type(current)
  local value
  if text == "true" or text == "false" then value = (text == "true")
  elseif text:match("^%-?%d+%.?%d*$") then value = tonumber(text)
  elseif text:match('^".*"$') then value = text:sub(2, -2)
  else return nil, "(auto-config) cannot read the value " .. text end
  if type(value) ~= kind then
    return nil, ("(auto-config) expected a %s, got a %s"):format(kind, type(value))
  end
  return value
end

local function serialize(t, indent)
  local out = {}
  for k, v in pairs(t) do
    local key = ("[%q]"):format(k)
    if type(v) == "table" then
      out[#out + 1] = indent .. key .. " = {\n" .. serialize(v, indent .. "  ") .. indent .. "},\n"
    elseif type(v) == "string" then
      out[#out + 1] = indent .. key .. " = " .. ("%q"):format(v) .. ",\n"
    elseif type(v) == "number" or type(v) == "boolean" then
      out[#out + 1] = indent .. key .. " = " .. tostring(v) .. ",\n"
    end
  end
  return table.concat(out)
end

local function ok(rows) proxy.response = { type = proxy.MYSQLD_PACKET_OK, affected_rows = rows or 0 } end
local function err(msg) proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = msg, errcode = 1105, sqlstate = "HY000" } end

function M.save(tbl, filename)
  local done, msg = files.save(tostring(filename), "return {\n" .. serialize(tbl, "  ") .. "}\n")
  if not done then return false, msg end
  return true
end

function M.load(tbl, filename)
  local text, msg = files.load(tostring(filename))
  if not text then return false, msg end
  local chunk
  chunk, msg = load(text, "=" .. tostring(filename), "t", {})
  if not chunk then return false, msg end
  local done, values = pcall(chunk)
  if not done then return false, values end
  if type(values) ~= "table" then return false, filename .. " does not return a table" end
  for mod, options in pairs(values) do
    if type(tbl[mod]) == "table" and type(options) == "table" then
      for option, value in pairs(options) do tbl[mod][option] = value end
    else
      tbl[mod] = options
    end
  end
  return true
end

function M.handle(tbl, cmd)
  if cmd == nil and type(tbl) == "table" and type(tbl.type) == "number" then  -- the old handle(cmd)
    cmd, tbl = tbl, proxy.global.config
  end
  if type(cmd) ~= "table" or cmd.type ~= proxy.COM_QUERY or type(cmd.query) ~= "string" then return nil end
  if #cmd.query > 1024 then return nil end
  local q = cmd.query:gsub("^%s+", ""):gsub("[%s;]+$", "")
  local upper = q:upper()
  if not upper:match("^PROXY%s") then return nil end

  if upper:match("^PROXY%s+SHOW%s+CONFIG$") then
    local rows = {}
    for mod, options in pairs(tbl) do
      if type(options) == "table" then
        for option, value in pairs(options) do
          -- a module's options have names; the proxy's list-valued options (backend addresses) are not modules
          if type(option) == "string" then rows[#rows + 1] = { mod, option, tostring(value), type(value) } end
        end
      end
    end
    table.sort(rows, function(a, b) return a[1] .. "." .. a[2] < b[1] .. "." .. b[2] end)
    proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
      fields = { { name = "module" }, { name = "option" }, { name = "value" }, { name = "type" } }, rows = rows } }
    return proxy.PROXY_SEND_RESULT
  end

  local mod, option, text = q:match("^[Pp][Rr][Oo][Xx][Yy]%s+[Ss][Ee][Tt]%s+[Gg][Ll][Oo][Bb][Aa][Ll]%s+([%w_%-]+)%.([%w_%-]+)%s*=%s*(.-)$")
  if mod then
    if type(tbl[mod]) ~= "table" then err("module not known")
    elseif tbl[mod][option] == nil then err("option not known")
    else
      local value, msg = parse_value(tbl[mod][option], text)
      if value == nil then err(msg) else tbl[mod][option] = value; ok(1) end
    end
    return proxy.PROXY_SEND_RESULT
  end

  local verb, file = q:match('^[Pp][Rr][Oo][Xx][Yy]%s+(%a+)%s+[Cc][Oo][Nn][Ff][Ii][Gg]%s+%a+%s+"(.-)"$')
  if verb and verb:upper() == "SAVE" and upper:match("%sINTO%s") then
    local done, msg = M.save(tbl, file)
    if done then ok(0) else err(msg) end
    return proxy.PROXY_SEND_RESULT
  elseif verb and verb:upper() == "LOAD" and upper:match("%sFROM%s") then
    local done, msg = M.load(tbl, file)
    if done then ok(0) else err(msg) end
    return proxy.PROXY_SEND_RESULT
  end
  return nil
end

-- config:handle(cmd), config:save(file), config:load(file)
local config = proxy.global.config
local mt = getmetatable(config) or {}
mt.__index = { handle = M.handle, save = M.save, load = M.load }
setmetatable(config, mt)

return M
"""##
}
