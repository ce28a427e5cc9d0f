--[[ mock-server.lua: a MySQL server made of Lua, with no backend at all.

connect_server answers the client itself with a greeting (mysql.proto builds it), so the proxy
never connects anywhere; read_auth checks the password with mysql_native_password
(mysql.password), and read_query serves canned tables:

  SELECT * FROM customers;  SELECT * FROM orders;  SHOW TABLES;  SELECT @@version_comment;
  INSERT/UPDATE/DELETE ...  (answered with OK, 1 row affected)

Users: app / app-secret. Any other login gets ERR 1045, as from a real server. Point a test
suite at it to get fixed answers without a database.

Run:  moonproxy --proxy-address=127.0.0.1:4040 -s examples/mock-server.lua
Try:  mariadb -h127.0.0.1 -P4040 -uapp -papp-secret -e 'SELECT * FROM customers'
]]

local proto = require("mysql.proto")
local password = require("mysql.password")

local USERS = { app = password.hash(password.hash("app-secret")) }  -- what a server stores: SHA1(SHA1(pw))

local T = proxy.MYSQL_TYPE_LONG
local S = proxy.MYSQL_TYPE_VAR_STRING
local D = proxy.MYSQL_TYPE_DOUBLE
local tables = {
  customers = {
    fields = { { name = "id", type = T }, { name = "name", type = S }, { name = "country", type = S } },
    rows = { { 1, "Ada Lovelace", "UK" }, { 2, "Grace Hopper", "US" }, { 3, "Katherine Johnson", nil } },
  },
  orders = {
    fields = { { name = "id", type = T }, { name = "customer_id", type = T }, { name = "total", type = D } },
    rows = { { 10, 1, 99.5 }, { 11, 2, 12.25 }, { 12, 2, 7 } },
  },
}

local challenge

function connect_server()
  challenge = proto.random_challenge(20)
  proxy.response = {
    type = proxy.MYSQLD_PACKET_RAW,
    packets = { proto.to_challenge_packet({ server_version_str = "10.11.99-MoonProxy-mock", thread_id = 1,
                                            challenge = challenge }) },
  }
  return proxy.PROXY_SEND_RESULT
end

function read_auth()
  local client = proxy.connection.client
  local stored = USERS[client.username]
  if stored and password.check(challenge, client.scrambled_password, stored) then
    proxy.response = { type = proxy.MYSQLD_PACKET_OK }
  else
    proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errcode = 1045, sqlstate = "28000",
      errmsg = ("Access denied for user '%s'@'%s' (using password: %s)"):format(tostring(client.username),
        tostring(client.src.address), #(client.scrambled_password or "") > 0 and "YES" or "NO") }
  end
  return proxy.PROXY_SEND_RESULT
end

local function answer(t)
  proxy.response = t
  return proxy.PROXY_SEND_RESULT
end

function read_query(packet)
  local command = packet:byte()
  if command == proxy.COM_QUIT then return end
  if command ~= proxy.COM_QUERY then return answer({ type = proxy.MYSQLD_PACKET_OK }) end
  local query = packet:sub(2):gsub("/%*.-%*/", ""):gsub("^%s+", ""):gsub("[%s;]+$", ""):lower()
  local name = query:match("^select %* from `?([%w_]+)`?$")
  if name and tables[name] then
    return answer({ type = proxy.MYSQLD_PACKET_OK, resultset = tables[name] })
  elseif query == "show tables" then
    local rows = {}
    for table_name in pairs(tables) do rows[#rows + 1] = { table_name } end
    table.sort(rows, function(a, b) return a[1] < b[1] end)
    return answer({ type = proxy.MYSQLD_PACKET_OK, resultset = { fields = { { name = "Tables_in_mock" } }, rows = rows } })
  elseif query:match("^select @@version_comment") then
    return answer({ type = proxy.MYSQLD_PACKET_OK,
                    resultset = { fields = { { name = "@@version_comment" } }, rows = { { "MoonProxy mock server" } } } })
  elseif query:match("^insert") or query:match("^update") or query:match("^delete") then
    return answer({ type = proxy.MYSQLD_PACKET_OK, affected_rows = 1 })
  elseif query:match("^set ") or query:match("^begin") or query:match("^commit") or query:match("^rollback") then
    return answer({ type = proxy.MYSQLD_PACKET_OK })
  end
  return answer({ type = proxy.MYSQLD_PACKET_ERR, errcode = 1146, sqlstate = "42S02",
                  errmsg = ("mock server: nothing is known about: %s"):format(query) })
end
