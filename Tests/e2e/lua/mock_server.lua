-- A MySQL server made of Lua: no backend. connect_server answers with a greeting, read_auth
-- checks the user, read_query answers every command from canned tables.

local CAPABILITIES = 0x1 | 0x4 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x10000 | 0x20000 | 0x40000 | 0x80000 | 0x200000 | 0x1000000

local function greeting()
  -- protocol 10, version, thread id, scramble part 1, filler, capabilities (low), charset,
  -- status, capabilities (high), scramble length, reserved, scramble part 2, plugin name
  return string.pack("<Bz I4 c8 B I2 B I2 I2 B c10 c13 z", 10, "5.5.5-10.11.0-moonmock", 4242, "abcdefgh", 0,
    CAPABILITIES & 0xffff, 33, 2, CAPABILITIES >> 16, 21, string.rep("\0", 10), "ijklmnopqrst\0",
    "mysql_native_password")
end

local tables = {
  users = {
    fields = { { name = "id", type = proxy.MYSQL_TYPE_LONG }, { name = "name", type = proxy.MYSQL_TYPE_STRING },
               { name = "score", type = proxy.MYSQL_TYPE_DOUBLE } },
    rows = { { 1, "ada", 9.5 }, { 2, "brian", nil }, { 3, "chen", 7.25 } },
  },
}

function connect_server()
  proxy.response = { type = proxy.MYSQLD_PACKET_RAW, packets = { greeting() } }
  return proxy.PROXY_SEND_RESULT
end

function read_auth()
  if proxy.connection.client.username == "intruder" then
    proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "Access denied for user 'intruder'", errcode = 1045, sqlstate = "28000" }
    return proxy.PROXY_SEND_RESULT
  end
  proxy.response = { type = proxy.MYSQLD_PACKET_OK }
  return proxy.PROXY_SEND_RESULT
end

function read_query(packet)
  local command = packet:byte()
  if command == proxy.COM_QUIT then return end
  if command ~= proxy.COM_QUERY then
    proxy.response = { type = proxy.MYSQLD_PACKET_OK }
    return proxy.PROXY_SEND_RESULT
  end
  -- lower case, comments (and the hints in them, which proxy.hints has) left out
  local query = packet:sub(2):lower():gsub("/%*.-%*/%s*", "")
  local name = query:match("^select %* from (%w+)")
  if name and tables[name] then
    proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = tables[name] }
  elseif query:match("^select @@version_comment") then
    proxy.response = { type = proxy.MYSQLD_PACKET_OK,
                       resultset = { fields = { { name = "@@version_comment" } }, rows = { { "MoonProxy mock server" } } } }
  elseif query:match("^set ") then
    proxy.response = { type = proxy.MYSQLD_PACKET_OK }
  elseif query:match("^insert") then
    proxy.response = { type = proxy.MYSQLD_PACKET_OK, affected_rows = 3, insert_id = 77, warning_count = 1 }
  elseif query:match("^select hint") then
    proxy.response = { type = proxy.MYSQLD_PACKET_OK,
                       resultset = { fields = { { name = "trace_id" } }, rows = { { proxy.hints.trace_id } } } }
  else
    proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "mock server: no table for '" .. query .. "'",
                       errcode = 1146, sqlstate = "42S02" }
  end
  return proxy.PROXY_SEND_RESULT
end
