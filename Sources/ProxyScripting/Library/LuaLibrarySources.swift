// MySQL Proxy's Lua modules, written anew for MoonProxy and compiled into the binary: they are
// registered in package.preload, so `require("mysql.proto")` works with no files installed, and a
// module of the same name on package.path does not replace them.
// (mysql.tokenizer, mysql.password and chassis are Swift: see LuaModules.swift.)

enum LuaLibrarySources {
    static let modules: [(name: String, source: String)] = [
        ("mysql.proto", ##"""
-- mysql.proto: MySQL protocol packets to and from Lua tables (MySQL Proxy's names and fields).
-- Every from_* function raises an error naming the packet when its input is short or malformed.
local M = { _VERSION = "MoonProxy mysql.proto 1.0" }

local spack, sunpack, schar = string.pack, string.unpack, string.char

local CLIENT = {
  LONG_PASSWORD = 0x1, FOUND_ROWS = 0x2, LONG_FLAG = 0x4, CONNECT_WITH_DB = 0x8, PROTOCOL_41 = 0x200,
  TRANSACTIONS = 0x2000, SECURE_CONNECTION = 0x8000, MULTI_STATEMENTS = 0x10000, MULTI_RESULTS = 0x20000,
  PS_MULTI_RESULTS = 0x40000, PLUGIN_AUTH = 0x80000, CONNECT_ATTRS = 0x100000,
  PLUGIN_AUTH_LENENC_CLIENT_DATA = 0x200000,
}
M.CLIENT = CLIENT
local DEFAULT_CAPABILITIES = CLIENT.LONG_PASSWORD | CLIENT.FOUND_ROWS | CLIENT.LONG_FLAG | CLIENT.CONNECT_WITH_DB
  | CLIENT.PROTOCOL_41 | CLIENT.TRANSACTIONS | CLIENT.SECURE_CONNECTION | CLIENT.MULTI_STATEMENTS
  | CLIENT.MULTI_RESULTS | CLIENT.PS_MULTI_RESULTS | CLIENT.PLUGIN_AUTH
M.DEFAULT_CAPABILITIES = DEFAULT_CAPABILITIES

-- a reader over one packet payload; every read checks the length first
local Reader = {}
Reader.__index = Reader
local function reader(s, what)
  if type(s) ~= "string" then error(("%s: expected a string, got %s"):format(what, type(s)), 3) end
  return setmetatable({ s = s, pos = 1, what = what }, Reader)
end
function Reader:fail(why) error(("%s failed: %s"):format(self.what, why), 0) end
function Reader:left() return #self.s - self.pos + 1 end
function Reader:need(n) if self:left() < n then self:fail(("packet too short (need %d more bytes at offset %d)"):format(n, self.pos - 1)) end end
function Reader:int(n) self:need(n); local v; v, self.pos = sunpack("<I" .. n, self.s, self.pos); return v end
function Reader:bytes(n) self:need(n); local v = self.s:sub(self.pos, self.pos + n - 1); self.pos = self.pos + n; return v end
function Reader:rest() local v = self.s:sub(self.pos); self.pos = #self.s + 1; return v end
function Reader:cstring()
  local z = self.s:find("\0", self.pos, true)
  if not z then self:fail("missing NUL terminator") end
  local v = self.s:sub(self.pos, z - 1); self.pos = z + 1; return v
end
function Reader:cstring_or_rest()
  local z = self.s:find("\0", self.pos, true)
  if not z then return self:rest() end
  local v = self.s:sub(self.pos, z - 1); self.pos = z + 1; return v
end
function Reader:lenenc()
  local first = self:int(1)
  if first < 0xfb then return first end
  if first == 0xfb then return nil end
  if first == 0xfc then return self:int(2) end
  if first == 0xfd then return self:int(3) end
  if first == 0xfe then return self:int(8) end
  self:fail("bad length-encoded integer")
end
function Reader:lenenc_string()
  local n = self:lenenc()
  if n == nil then return nil end
  return self:bytes(n)
end

local function lenenc(n)
  if n < 0xfb then return schar(n) end
  if n < 0x10000 then return "\252" .. spack("<I2", n) end
  if n < 0x1000000 then return "\253" .. spack("<I3", n) end
  return "\254" .. spack("<I8", n)
end
M.lenenc = lenenc
local function lenenc_string(s) return lenenc(#s) .. s end

local function int_field(t, name, default)
  local v = t[name]
  if v == nil then return default end
  v = math.tointeger(v)
  if v == nil then error(("field '%s' must be an integer"):format(name), 3) end
  return v
end
local function str_field(t, name, default)
  local v = t[name]
  if v == nil then return default end
  return tostring(v)
end
local function check_table(t, fn)
  if type(t) ~= "table" then error(("bad argument #1 to '%s' (table expected, got %s)"):format(fn, type(t)), 3) end
end

-- ERR
function M.to_err_packet(t)
  check_table(t, "to_err_packet")
  local state = str_field(t, "sqlstate", "07000")
  state = (state .. "00000"):sub(1, 5)
  return "\255" .. spack("<I2", int_field(t, "errcode", 1105)) .. "#" .. state .. str_field(t, "errmsg", "")
end
function M.from_err_packet(s)
  local r = reader(s, "from_err_packet()")
  if r:int(1) ~= 0xff then r:fail("not an ERR packet") end
  local t = { errcode = r:int(2) }
  if r:left() > 0 and s:sub(r.pos, r.pos) == "#" then
    r:bytes(1)
    t.sqlstate = r:bytes(5)
  end
  t.errmsg = r:rest()
  return t
end

-- OK
function M.to_ok_packet(t)
  check_table(t, "to_ok_packet")
  local packet = "\0" .. lenenc(int_field(t, "affected_rows", 0)) .. lenenc(int_field(t, "insert_id", 0))
    .. spack("<I2I2", int_field(t, "server_status", 2), int_field(t, "warnings", 0))
  if t.message ~= nil then packet = packet .. tostring(t.message) end
  return packet
end
function M.from_ok_packet(s)
  local r = reader(s, "from_ok_packet()")
  local header = r:int(1)
  if header ~= 0x00 and header ~= 0xfe then r:fail("not an OK packet") end
  local t = { affected_rows = r:lenenc() or 0, insert_id = r:lenenc() or 0 }
  t.server_status = r:int(2)
  t.warnings = r:int(2)
  if r:left() > 0 then t.message = r:rest() end
  return t
end

-- EOF
function M.to_eof_packet(t)
  check_table(t or {}, "to_eof_packet")
  t = t or {}
  return "\254" .. spack("<I2I2", int_field(t, "warnings", 0), int_field(t, "server_status", 2))
end
function M.from_eof_packet(s)
  local r = reader(s, "from_eof_packet()")
  if r:int(1) ~= 0xfe or #s > 9 then r:fail("not an EOF packet") end
  local t = { warnings = r:int(2) }
  t.server_status = r:int(2)
  return t
end

-- the server's greeting (HandshakeV10)
local function version_number(v)
  local a, b, c = v:match("^(%d+)%.(%d+)%.(%d+)")
  if not a then return 0 end
  return tonumber(a) * 10000 + tonumber(b) * 100 + tonumber(c)
end
local function random_challenge(n)
  local bytes = {}
  for i = 1, n do bytes[i] = schar(math.random(33, 126)) end
  return table.concat(bytes)
end
M.random_challenge = random_challenge

function M.to_challenge_packet(t)
  check_table(t, "to_challenge_packet")
  local capabilities = int_field(t, "capabilities", DEFAULT_CAPABILITIES)
  local version = t.server_version_str
  if version == nil then
    local v = int_field(t, "server_version", 50099)
    version = ("%d.%d.%d"):format(v // 10000, v // 100 % 100, v % 100)
  end
  local challenge = str_field(t, "challenge", nil) or random_challenge(20)
  if #challenge < 8 then challenge = challenge .. ("\0"):rep(8 - #challenge) end
  local plugin = str_field(t, "auth_plugin_name", "mysql_native_password")
  local part2 = challenge:sub(9)
  local parts = {
    schar(int_field(t, "protocol_version", 10)), version, "\0",
    spack("<I4", int_field(t, "thread_id", 1)), challenge:sub(1, 8), "\0",
    spack("<I2BI2I2", capabilities & 0xffff, int_field(t, "charset", 33), int_field(t, "server_status", 2),
      (capabilities >> 16) & 0xffff),
    schar((capabilities & CLIENT.PLUGIN_AUTH ~= 0) and (#challenge + 1) or 0), ("\0"):rep(10),
  }
  if capabilities & CLIENT.SECURE_CONNECTION ~= 0 then
    parts[#parts + 1] = part2 .. ("\0"):rep(math.max(13 - #part2, 1))
  end
  if capabilities & CLIENT.PLUGIN_AUTH ~= 0 then parts[#parts + 1] = plugin .. "\0" end
  return table.concat(parts)
end
function M.from_challenge_packet(s)
  local r = reader(s, "from_challenge_packet()")
  local t = { protocol_version = r:int(1) }
  if t.protocol_version ~= 10 then r:fail("protocol version " .. t.protocol_version .. " is not supported") end
  t.server_version_str = r:cstring()
  t.server_version = version_number(t.server_version_str)
  t.thread_id = r:int(4)
  local part1 = r:bytes(8)
  r:bytes(1)
  local low = r:int(2)
  t.capabilities = low
  t.challenge = part1
  if r:left() == 0 then return t end
  t.charset = r:int(1)
  t.server_status = r:int(2)
  t.capabilities = low | (r:int(2) << 16)
  local data_len = r:int(1)
  r:bytes(10)
  if t.capabilities & CLIENT.SECURE_CONNECTION ~= 0 then
    local n = math.max(13, data_len - 8)
    local part2 = r:bytes(math.min(n, r:left()))
    t.challenge = part1 .. part2:gsub("%z$", "")
  end
  if t.capabilities & CLIENT.PLUGIN_AUTH ~= 0 and r:left() > 0 then
    t.auth_plugin_name = r:cstring_or_rest()
  end
  return t
end

-- the client's handshake response (HandshakeResponse41)
function M.to_response_packet(t)
  check_table(t, "to_response_packet")
  local server = t.server_capabilities
  if server == nil then error(".server_capabilities has to be set", 2) end
  server = math.tointeger(server) or error(".server_capabilities has to be a number", 2)
  if server & CLIENT.PROTOCOL_41 == 0 then error("to_response_packet(): pre-4.1 handshakes are not supported", 2) end
  local capabilities = t.capabilities
  local database = str_field(t, "database", "")
  local plugin = t.auth_plugin_name
  if capabilities == nil then
    capabilities = server & (DEFAULT_CAPABILITIES | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA)
    if #database == 0 then capabilities = capabilities & ~CLIENT.CONNECT_WITH_DB end
    if plugin == nil then capabilities = capabilities & ~CLIENT.PLUGIN_AUTH end
  else
    capabilities = math.tointeger(capabilities) or error(".capabilities has to be a number", 2)
  end
  local response = str_field(t, "response", "")
  local parts = {
    spack("<I4I4B", capabilities, int_field(t, "max_packet_size", 16777216), int_field(t, "charset", 33)),
    ("\0"):rep(23), str_field(t, "username", ""), "\0",
  }
  if capabilities & CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA ~= 0 then
    parts[#parts + 1] = lenenc_string(response)
  elseif capabilities & CLIENT.SECURE_CONNECTION ~= 0 then
    if #response > 255 then error("to_response_packet(): .response is longer than 255 bytes", 2) end
    parts[#parts + 1] = schar(#response) .. response
  else
    parts[#parts + 1] = response .. "\0"
  end
  if capabilities & CLIENT.CONNECT_WITH_DB ~= 0 then parts[#parts + 1] = database .. "\0" end
  if capabilities & CLIENT.PLUGIN_AUTH ~= 0 then parts[#parts + 1] = tostring(plugin or "mysql_native_password") .. "\0" end
  return table.concat(parts)
end
function M.from_response_packet(s, server_capabilities)
  local r = reader(s, "from_response_packet()")
  local t = {}
  t.capabilities = r:int(4)
  if t.capabilities & CLIENT.PROTOCOL_41 == 0 then r:fail("pre-4.1 handshake responses are not supported") end
  t.server_capabilities = math.tointeger(server_capabilities) or t.capabilities
  local effective = t.capabilities & t.server_capabilities
  t.max_packet_size = r:int(4)
  t.charset = r:int(1)
  r:bytes(23)
  t.username = r:cstring_or_rest()
  if r:left() == 0 then t.response = ""; return t end
  if effective & CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA ~= 0 then
    t.response = r:lenenc_string() or ""
  elseif effective & CLIENT.SECURE_CONNECTION ~= 0 then
    t.response = r:bytes(r:int(1))
  else
    t.response = r:cstring_or_rest()
  end
  if effective & CLIENT.CONNECT_WITH_DB ~= 0 and r:left() > 0 then t.database = r:cstring_or_rest() end
  if effective & CLIENT.PLUGIN_AUTH ~= 0 and r:left() > 0 then t.auth_plugin_name = r:cstring_or_rest() end
  return t
end

-- master.info, as the server writes it: one value per line, the line count first
local MASTERINFO = {
  { "master_lines", "int" }, { "master_log_file", "str" }, { "master_log_pos", "int" }, { "master_host", "str" },
  { "master_user", "str" }, { "master_password", "str" }, { "master_port", "int" },
  { "master_connect_retry", "int" }, { "master_ssl", "int" }, { "master_ssl_ca", "str" },
  { "master_ssl_capath", "str" }, { "master_ssl_cert", "str" }, { "master_ssl_cipher", "str" },
  { "master_ssl_key", "str" }, { "master_ssl_verify_server_cert", "int" },
}
function M.to_masterinfo_string(t)
  check_table(t, "to_masterinfo_string")
  local lines = int_field(t, "master_lines", 15)
  local out = {}
  for i = 1, math.min(lines, #MASTERINFO) do
    local name, kind = MASTERINFO[i][1], MASTERINFO[i][2]
    if name == "master_lines" then out[i] = tostring(lines)
    elseif kind == "int" then out[i] = tostring(int_field(t, name, 0))
    else out[i] = str_field(t, name, "") end
  end
  return table.concat(out, "\n") .. "\n"
end
function M.from_masterinfo_string(s)
  if type(s) ~= "string" then error("from_masterinfo_string(): expected a string", 2) end
  local values = {}
  for line in (s:sub(-1) == "\n" and s or s .. "\n"):gmatch("([^\n]*)\n") do values[#values + 1] = line end
  local lines = tonumber(values[1])
  if not lines or lines < 14 then error("from_masterinfo_string() failed: not a master.info file", 2) end
  local t = {}
  for i = 1, math.min(lines, #MASTERINFO) do
    local name, kind = MASTERINFO[i][1], MASTERINFO[i][2]
    local v = values[i] or ""
    if kind == "int" then t[name] = math.tointeger(tonumber(v)) or 0 elseif v ~= "" then t[name] = v end
  end
  return t
end

-- COM_STMT_PREPARE and its OK
function M.to_stmt_prepare_packet(t)
  check_table(t, "to_stmt_prepare_packet")
  return "\22" .. str_field(t, "stmt_text", "")
end
function M.from_stmt_prepare_packet(s)
  local r = reader(s, "from_stmt_prepare_packet()")
  if r:int(1) ~= 0x16 then r:fail("not a COM_STMT_PREPARE packet") end
  return { stmt_text = r:rest() }
end
function M.to_stmt_prepare_ok_packet(t)
  check_table(t, "to_stmt_prepare_ok_packet")
  return "\0" .. spack("<I4I2I2BI2", int_field(t, "stmt_id", 0), int_field(t, "num_columns", 0),
    int_field(t, "num_params", 0), 0, int_field(t, "warnings", 0))
end
function M.from_stmt_prepare_ok_packet(s)
  local r = reader(s, "from_stmt_prepare_ok_packet()")
  if r:int(1) ~= 0 then r:fail("not a COM_STMT_PREPARE OK packet") end
  local t = { stmt_id = r:int(4) }
  t.num_columns = r:int(2)
  t.num_params = r:int(2)
  r:bytes(1)
  t.warnings = r:left() >= 2 and r:int(2) or 0
  return t
end

-- COM_STMT_EXECUTE: parameters in the binary protocol
local T = { DECIMAL = 0, TINY = 1, SHORT = 2, LONG = 3, FLOAT = 4, DOUBLE = 5, NULL = 6, TIMESTAMP = 7,
  LONGLONG = 8, INT24 = 9, DATE = 10, TIME = 11, DATETIME = 12, YEAR = 13, VARCHAR = 15, BIT = 16,
  NEWDECIMAL = 246, ENUM = 247, SET = 248, TINY_BLOB = 249, MEDIUM_BLOB = 250, LONG_BLOB = 251, BLOB = 252,
  VAR_STRING = 253, STRING = 254, GEOMETRY = 255 }

local function read_datetime(r, with_time)
  local n = r:int(1)
  if n == 0 then return with_time and "0000-00-00 00:00:00" or "0000-00-00" end
  local y, mo, d = r:int(2), r:int(1), r:int(1)
  local h, mi, sec, us = 0, 0, 0, 0
  if n >= 7 then h, mi, sec = r:int(1), r:int(1), r:int(1) end
  if n >= 11 then us = r:int(4) end
  if n ~= 4 and n ~= 7 and n ~= 11 then r:fail("bad date length " .. n) end
  if not with_time then return ("%04d-%02d-%02d"):format(y, mo, d) end
  local v = ("%04d-%02d-%02d %02d:%02d:%02d"):format(y, mo, d, h, mi, sec)
  if us > 0 then v = v .. (".%06d"):format(us) end
  return v
end
local function read_time(r)
  local n = r:int(1)
  if n == 0 then return "00:00:00" end
  if n ~= 8 and n ~= 12 then r:fail("bad time length " .. n) end
  local negative, days, h, mi, sec = r:int(1), r:int(4), r:int(1), r:int(1), r:int(1)
  local us = n == 12 and r:int(4) or 0
  local v = ("%s%02d:%02d:%02d"):format(negative == 1 and "-" or "", days * 24 + h, mi, sec)
  if us > 0 then v = v .. (".%06d"):format(us) end
  return v
end
local function read_value(r, type, unsigned)
  if type == T.TINY then local v = r:int(1); return (unsigned or v < 0x80) and v or v - 0x100
  elseif type == T.SHORT or type == T.YEAR then local v = r:int(2); return (unsigned or v < 0x8000) and v or v - 0x10000
  elseif type == T.LONG or type == T.INT24 then local v = r:int(4); return (unsigned or v < 0x80000000) and v or v - 0x100000000
  elseif type == T.LONGLONG then
    r:need(8); local v; v, r.pos = sunpack(unsigned and "<J" or "<j", r.s, r.pos); return v
  elseif type == T.FLOAT then r:need(4); local v; v, r.pos = sunpack("<f", r.s, r.pos); return v
  elseif type == T.DOUBLE then r:need(8); local v; v, r.pos = sunpack("<d", r.s, r.pos); return v
  elseif type == T.DATE then return read_datetime(r, false)
  elseif type == T.DATETIME or type == T.TIMESTAMP then return read_datetime(r, true)
  elseif type == T.TIME then return read_time(r)
  elseif type == T.NULL then return nil
  else return r:lenenc_string() end
end

function M.stmt_id_from_stmt_execute_packet(s)
  local r = reader(s, "stmt_id_from_stmt_execute_packet()")
  if r:int(1) ~= 0x17 then r:fail("not a COM_STMT_EXECUTE packet") end
  return r:int(4)
end
function M.from_stmt_execute_packet(s, param_count)
  local r = reader(s, "from_stmt_execute_packet()")
  param_count = math.tointeger(param_count)
  if param_count == nil or param_count < 0 then error("bad argument #2 to 'from_stmt_execute_packet' (the statement's parameter count expected)", 2) end
  if r:int(1) ~= 0x17 then r:fail("not a COM_STMT_EXECUTE packet") end
  local t = { stmt_id = r:int(4) }
  t.flags = r:int(1)
  t.iteration_count = r:int(4)
  t.new_params_bound = false
  if param_count == 0 then return t end
  local bitmap = r:bytes((param_count + 7) // 8)
  t.new_params_bound = r:int(1) == 1
  if not t.new_params_bound then return t end
  local types = {}
  for i = 1, param_count do types[i] = { r:int(1), r:int(1) } end
  t.params = {}
  for i = 1, param_count do
    local is_null = (bitmap:byte((i - 1) // 8 + 1) >> ((i - 1) % 8)) & 1 == 1
    local p = { type = types[i][1], unsigned = types[i][2] & 0x80 ~= 0 }
    if not is_null then p.value = read_value(r, types[i][1], p.unsigned) end
    t.params[i] = p
  end
  return t
end
function M.to_stmt_execute_packet(t)
  check_table(t, "to_stmt_execute_packet")
  local params = t.params or {}
  local n = int_field(t, "num_params", #params)
  local parts = { "\23", spack("<I4BI4", int_field(t, "stmt_id", 0), int_field(t, "flags", 0), int_field(t, "iteration_count", 1)) }
  if n == 0 then return table.concat(parts) end
  local bitmap, types, values = {}, {}, {}
  for i = 1, (n + 7) // 8 do bitmap[i] = 0 end
  for i = 1, n do
    local p = params[i] or {}
    local v, ty = p.value, p.type
    if ty == nil then
      if v == nil then ty = T.NULL
      elseif math.type(v) == "integer" then ty = T.LONGLONG
      elseif type(v) == "number" then ty = T.DOUBLE
      else ty = T.STRING end
    end
    if v == nil then
      bitmap[(i - 1) // 8 + 1] = bitmap[(i - 1) // 8 + 1] | (1 << ((i - 1) % 8))
    elseif ty == T.TINY then values[#values + 1] = spack("<i1", v)
    elseif ty == T.SHORT or ty == T.YEAR then values[#values + 1] = spack("<i2", v)
    elseif ty == T.LONG or ty == T.INT24 then values[#values + 1] = spack("<i4", v)
    elseif ty == T.LONGLONG then values[#values + 1] = spack(p.unsigned and "<J" or "<j", math.tointeger(v) or error("params[" .. i .. "].value must be an integer", 2))
    elseif ty == T.FLOAT then values[#values + 1] = spack("<f", v)
    elseif ty == T.DOUBLE then values[#values + 1] = spack("<d", v)
    else values[#values + 1] = lenenc_string(tostring(v)) end
    types[#types + 1] = spack("BB", ty, p.unsigned and 0x80 or 0)
  end
  for i = 1, #bitmap do bitmap[i] = schar(bitmap[i]) end
  local bound = t.new_params_bound
  if bound == nil then bound = true end
  parts[#parts + 1] = table.concat(bitmap)
  parts[#parts + 1] = bound and "\1" or "\0"
  if bound then
    parts[#parts + 1] = table.concat(types)
    parts[#parts + 1] = table.concat(values)
  end
  return table.concat(parts)
end

-- COM_STMT_CLOSE
function M.to_stmt_close_packet(t)
  check_table(t, "to_stmt_close_packet")
  return "\25" .. spack("<I4", int_field(t, "stmt_id", 0))
end
function M.from_stmt_close_packet(s)
  local r = reader(s, "from_stmt_close_packet()")
  if r:int(1) ~= 0x19 then r:fail("not a COM_STMT_CLOSE packet") end
  return { stmt_id = r:int(4) }
end

return M
"""##),
        ("proxy.tokenizer", ##"""
-- proxy.tokenizer: helpers over mysql.tokenizer's token lists ({token_id, token_name, text} each).
local tokenizer = require("mysql.tokenizer")
local M = { _VERSION = "MoonProxy proxy.tokenizer 1.0" }

function M.tokenize(sql) return tokenizer.tokenize(sql) end

-- words that start a statement although the tokenizer sees them as literals
local statement_literals = { COMMIT = {}, ROLLBACK = {}, BEGIN = {}, START = { "TRANSACTION" } }

--- The query with comments removed, names quoted, constants turned into ? and keywords in
-- upper case: one text for every query of the same shape.
function M.normalize(tokens)
  local out = {}
  for i = 1, #tokens do
    local token = tokens[i]
    local name, text = token.token_name, token.text
    if name == "TK_COMMENT" then
      -- dropped
    elseif name == "TK_COMMENT_MYSQL" then
      out[#out + 1] = "/*!" .. text .. "*/ "
    elseif name == "TK_LITERAL" then
      local upper = text:upper()
      if text:sub(1, 1) == "@" then
        out[#out + 1] = text .. " "
      elseif #out == 0 and statement_literals[upper] then
        out[#out + 1] = upper .. " "
      elseif #out == 1 and statement_literals[out[1]:sub(1, -2)] and statement_literals[out[1]:sub(1, -2)][1] == upper then
        out[#out + 1] = upper .. " "
      else
        out[#out + 1] = "`" .. text .. "` "
      end
    elseif name == "TK_STRING" or name == "TK_INTEGER" or name == "TK_FLOAT" then
      out[#out + 1] = "? "
    elseif name == "TK_FUNCTION" then
      out[#out + 1] = text:upper()
    else
      out[#out + 1] = text:upper() .. " "
    end
  end
  return table.concat(out)
end

--- The first token that is not a comment (the statement's verb), or nil.
function M.first_stmt_token(tokens)
  for i = 1, #tokens do
    if tokens[i].token_name ~= "TK_COMMENT" then return tokens[i] end
  end
  return nil
end

--- The texts of the tokens, comments left out; strings re-quoted when quote_strings is set.
function M.bare_tokens(tokens, quote_strings)
  local out = {}
  for i = 1, #tokens do
    local token = tokens[i]
    if token.token_name == "TK_STRING" and quote_strings then
      out[#out + 1] = ("%q"):format(token.text)
    elseif token.token_name ~= "TK_COMMENT" then
      out[#out + 1] = token.text
    end
  end
  return out
end

--- A query text rebuilt from tokens first..last (all by default), comments left out.
function M.tokens_to_query(tokens, first, last)
  first, last = first or 1, last or #tokens
  local out = {}
  for i = math.max(first, 1), math.min(last, #tokens) do
    local token = tokens[i]
    local name = token.token_name
    if name == "TK_STRING" then
      out[#out + 1] = ("%q"):format(token.text)
    elseif name ~= "TK_COMMENT" then
      out[#out + 1] = token.text
    end
    if name ~= "TK_FUNCTION" and name ~= "TK_COMMENT" then out[#out + 1] = " " end
  end
  return table.concat(out)
end

--- The texts of the tokens that are not comments.
function M.tokens_without_comments(tokens)
  local out = {}
  for i = 1, #tokens do
    if tokens[i].token_name ~= "TK_COMMENT" then out[#out + 1] = tokens[i].text end
  end
  return out
end

return M
"""##),
        ("proxy.commands", ##"""
-- proxy.commands: a command packet as a table, and back to a line for logs.
local M = { _VERSION = "MoonProxy proxy.commands 1.0" }

local names = {
  [0] = "COM_SLEEP", "COM_QUIT", "COM_INIT_DB", "COM_QUERY", "COM_FIELD_LIST", "COM_CREATE_DB", "COM_DROP_DB",
  "COM_REFRESH", "COM_SHUTDOWN", "COM_STATISTICS", "COM_PROCESS_INFO", "COM_CONNECT", "COM_PROCESS_KILL",
  "COM_DEBUG", "COM_PING", "COM_TIME", "COM_DELAYED_INSERT", "COM_CHANGE_USER", "COM_BINLOG_DUMP",
  "COM_TABLE_DUMP", "COM_CONNECT_OUT", "COM_REGISTER_SLAVE", "COM_STMT_PREPARE", "COM_STMT_EXECUTE",
  "COM_STMT_SEND_LONG_DATA", "COM_STMT_CLOSE", "COM_STMT_RESET", "COM_SET_OPTION", "COM_STMT_FETCH",
  "COM_DAEMON", "COM_BINLOG_DUMP_GTID", "COM_RESET_CONNECTION",
}
M.names = names

local function u32(packet, at)
  if #packet < at + 3 then return nil end
  return (string.unpack("<I4", packet, at))
end

--- Splits a command packet into .type, .type_name and the command's own fields.
function M.parse(packet)
  if type(packet) ~= "string" or #packet == 0 then return nil, "empty packet" end
  local cmd = { type = packet:byte() }
  cmd.type_name = names[cmd.type] or ("COM_UNKNOWN_" .. cmd.type)
  local body = packet:sub(2)
  local t = cmd.type
  if t == 0x03 or t == 0x16 then            -- COM_QUERY, COM_STMT_PREPARE
    cmd.query = body
  elseif t == 0x02 or t == 0x05 or t == 0x06 then  -- COM_INIT_DB, COM_CREATE_DB, COM_DROP_DB
    cmd.schema = body
  elseif t == 0x04 then                     -- COM_FIELD_LIST: table\0wildcard
    local z = body:find("\0", 1, true)
    cmd.table = z and body:sub(1, z - 1) or body
    if z then cmd.wildcard = body:sub(z + 1) end
  elseif t == 0x17 then                     -- COM_STMT_EXECUTE
    cmd.stmt_handler_id = u32(packet, 2)
    if #packet >= 10 then
      cmd.flags = packet:byte(6)
      cmd.iteration_count = u32(packet, 7)
    end
  elseif t == 0x18 then                     -- COM_STMT_SEND_LONG_DATA
    cmd.stmt_handler_id = u32(packet, 2)
    if #packet >= 7 then cmd.param_id = (string.unpack("<I2", packet, 6)); cmd.data = packet:sub(8) end
  elseif t == 0x19 or t == 0x1a then        -- COM_STMT_CLOSE, COM_STMT_RESET
    cmd.stmt_handler_id = u32(packet, 2)
  elseif t == 0x1c then                     -- COM_STMT_FETCH
    cmd.stmt_handler_id = u32(packet, 2)
    cmd.num_rows = u32(packet, 6)
  elseif t == 0x0c then                     -- COM_PROCESS_KILL
    cmd.thread_id = u32(packet, 2)
  elseif t == 0x1b then                     -- COM_SET_OPTION
    cmd.option = #packet >= 3 and (string.unpack("<I2", packet, 2)) or nil
  elseif t == 0x07 then                     -- COM_REFRESH
    cmd.options = packet:byte(2)
  elseif t == 0x11 then                     -- COM_CHANGE_USER
    local z = body:find("\0", 1, true)
    cmd.username = z and body:sub(1, z - 1) or body
  end
  return cmd
end

--- One line describing a parsed command, for logs.
function M.pretty_print(cmd)
  if type(cmd) ~= "table" then return tostring(cmd) end
  local name = cmd.type_name or names[cmd.type] or tostring(cmd.type)
  if cmd.query then return ("[%s] %s"):format(name, cmd.query) end
  if cmd.schema then return ("[%s] %s"):format(name, cmd.schema) end
  if cmd.table then return ("[%s] %s"):format(name, cmd.table) end
  if cmd.stmt_handler_id then return ("[%s] %d"):format(name, cmd.stmt_handler_id) end
  if cmd.thread_id then return ("[%s] %d"):format(name, cmd.thread_id) end
  if cmd.option then return ("[%s] %s"):format(name, tostring(cmd.option)) end
  if cmd.username then return ("[%s] %s"):format(name, cmd.username) end
  return ("[%s]"):format(name)
end

return M
"""##),
        ("proxy.balance", ##"""
-- proxy.balance: picking a backend from proxy.global.backends.
local M = { _VERSION = "MoonProxy proxy.balance 1.0" }

local function idle(backend)
  local users = backend.pool.users[proxy.connection.client.username]
  return users and users.cur_idle_connections or 0
end

--- The first read-write backend that is not down and has an idle pooled connection for this
-- user, or 0.
function M.idle_failsafe_rw()
  for i = 1, #proxy.global.backends do
    local b = proxy.global.backends[i]
    if b.type == proxy.BACKEND_TYPE_RW and b.state ~= proxy.BACKEND_STATE_DOWN and idle(b) > 0 then
      return i
    end
  end
  return 0
end

--- The read-only backend with the fewest clients among those not down and with an idle pooled
-- connection for this user, or 0.
function M.idle_ro()
  local best, best_clients = 0, nil
  for i = 1, #proxy.global.backends do
    local b = proxy.global.backends[i]
    if b.type == proxy.BACKEND_TYPE_RO and b.state ~= proxy.BACKEND_STATE_DOWN and idle(b) > 0 then
      if best_clients == nil or b.connected_clients < best_clients then
        best, best_clients = i, b.connected_clients
      end
    end
  end
  return best
end

--- MoonProxy: the backend (not down) with the fewest idle pooled connections, or 0: logging new
-- clients in there fills the pools evenly.
function M.fewest_idle()
  local best, fewest = 0, nil
  for i = 1, #proxy.global.backends do
    local b = proxy.global.backends[i]
    if b.state ~= proxy.BACKEND_STATE_DOWN and (fewest == nil or b.idling_connections < fewest) then
      best, fewest = i, b.idling_connections
    end
  end
  return best
end

--- MoonProxy: the backend of the given type (default: any) that is not down and has the fewest
-- connected clients, or 0.
function M.least_connected(backend_type)
  local best, best_clients = 0, nil
  for i = 1, #proxy.global.backends do
    local b = proxy.global.backends[i]
    if b.state ~= proxy.BACKEND_STATE_DOWN and (backend_type == nil or b.type == backend_type) then
      if best_clients == nil or b.connected_clients < best_clients then
        best, best_clients = i, b.connected_clients
      end
    end
  end
  return best
end

return M
"""##),
        ("proxy.auto-config", ##"""
-- proxy.auto-config: script options changed at run time with SQL-like commands, kept in
-- proxy.global.config[module][option]:
--   PROXY SHOW CONFIG
--   PROXY SET GLOBAL module.option = value       (a number, true/false or a "string")
--   PROXY SAVE CONFIG INTO "file"
--   PROXY LOAD CONFIG FROM "file"
-- config:handle(cmd) (cmd from proxy.commands.parse) answers them and returns
-- proxy.PROXY_SEND_RESULT, or nil for any other query.
local M = { _VERSION = "MoonProxy proxy.auto-config 1.0" }

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
  local file, msg = io.open(filename, "w")
  if not file then return false, msg end
  file:write("return {\n" .. serialize(tbl, "  ") .. "}\n")
  file:close()
  return true
end

function M.load(tbl, filename)
  local chunk, msg = loadfile(filename, "t", {})
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
        for option, value in pairs(options) do rows[#rows + 1] = { mod, option, tostring(value), type(value) } end
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
"""##),
        ("proxy.test", ##"""
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
"""##),
    ]
}
