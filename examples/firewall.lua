--[[ firewall.lua: refuse dangerous statements with a proper MySQL error.

Refused, with ERR 1142 / SQLSTATE 42000 and a log line naming the client:
  - DROP and TRUNCATE of anything;
  - DELETE and UPDATE without a WHERE clause;
  - GRANT and REVOKE.
The check runs on tokens (mysql.tokenizer), so "where" inside a string or a comment does not
count. Everything else passes untouched.

Run:  moonproxy -s examples/firewall.lua
Try:  DELETE FROM t;   DELETE FROM t WHERE id = 1;   DROP TABLE t;
]]

local tokenizer = require("proxy.tokenizer")
local chassis = require("chassis")

local always_refused = { TK_SQL_DROP = "DROP", TK_LITERAL_TRUNCATE = "TRUNCATE", TK_SQL_GRANT = "GRANT", TK_SQL_REVOKE = "REVOKE" }
local need_where = { TK_SQL_DELETE = "DELETE", TK_SQL_UPDATE = "UPDATE" }

local function refuse(why)
  local client = proxy.connection.client
  chassis.warning(("(firewall) refused for %s@%s: %s"):format(tostring(client.username), tostring(client.src.address), why))
  proxy.response = {
    type = proxy.MYSQLD_PACKET_ERR,
    errcode = 1142,
    sqlstate = "42000",
    errmsg = "statement refused by the proxy firewall: " .. why,
  }
  return proxy.PROXY_SEND_RESULT
end

function read_query(packet)
  if packet:byte() ~= proxy.COM_QUERY then return end
  local tokens = tokenizer.tokenize(packet:sub(2))
  local first = tokenizer.first_stmt_token(tokens)
  if not first then return end
  local name = first.token_name
  if name == "TK_LITERAL" then name = "TK_LITERAL_" .. first.text:upper() end
  if always_refused[name] then return refuse(always_refused[name] .. " is not allowed") end
  if need_where[name] then
    for i = 1, #tokens do
      if tokens[i].token_name == "TK_SQL_WHERE" then return end
    end
    return refuse(need_where[name] .. " without WHERE")
  end
end
