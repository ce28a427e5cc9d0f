--[[ audit.lua: an audit trail of who changed what, in a file.

Every statement that changes data or schema (INSERT, UPDATE, DELETE, REPLACE, CREATE, ALTER,
DROP, TRUNCATE, GRANT, REVOKE, RENAME, LOAD DATA) is written to the audit file as one
tab-separated line after the server answered: the time, the client (user@address), the default
database, whether it succeeded (OK with rows affected, or the error code), and the statement.
Logins and disconnects are recorded too. The statement itself streams to the server unchanged.

The file is MOON_AUDIT_FILE, or moonproxy-audit.log in the working directory.

Run:  MOON_AUDIT_FILE=/var/log/moonproxy-audit.log moonproxy -s examples/audit.lua
]]

local tokenizer = require("proxy.tokenizer")
local proto = require("mysql.proto")

local path = os.getenv("MOON_AUDIT_FILE") or "moonproxy-audit.log"
local file = assert(io.open(path, "a"))
file:setvbuf("line")

local audited = {
  TK_SQL_INSERT = true, TK_SQL_UPDATE = true, TK_SQL_DELETE = true, TK_SQL_REPLACE = true, TK_SQL_CREATE = true,
  TK_SQL_ALTER = true, TK_SQL_DROP = true, TK_SQL_GRANT = true, TK_SQL_REVOKE = true, TK_SQL_RENAME = true,
  TK_SQL_LOAD = true,
}

local function who()
  local c = proxy.connection.client
  return ("%s@%s"):format(tostring(c.username), tostring(c.src and c.src.address or "?"))
end

local function write(event, detail)
  file:write(table.concat({ os.date("!%Y-%m-%dT%H:%M:%SZ"), who(), proxy.connection.client.default_db or "",
                            event, (detail:gsub("[\t\r\n]+", " ")) }, "\t") .. "\n")
end

local logged_in = false

function read_auth_result(auth)
  local packet = auth.packet
  if packet:byte() == proxy.MYSQLD_PACKET_OK then
    logged_in = true
    write("LOGIN", "ok")
  elseif packet:byte() == proxy.MYSQLD_PACKET_ERR then
    local err = proto.from_err_packet(packet)
    write("LOGIN", ("refused %d %s"):format(err.errcode, err.errmsg or ""))
  end
end

function read_query(packet)
  if packet:byte() ~= proxy.COM_QUERY then return end
  local first = tokenizer.first_stmt_token(tokenizer.tokenize(packet:sub(2, 100)))
  local name = first and first.token_name
  if name == "TK_LITERAL" and first.text:upper() == "TRUNCATE" then name = "TK_SQL_DROP" end
  if not audited[name] then return end
  proxy.queries:append(1, packet, { resultset_is_needed = false })
  return proxy.PROXY_SEND_QUERY
end

function read_query_result(inj)
  local rs = inj.resultset
  local outcome
  if rs.query_status == proxy.MYSQLD_PACKET_ERR then
    -- the result streamed to the client (resultset_is_needed = false), so its packets are gone;
    -- MoonProxy still knows the error code
    outcome = ("ERR %d"):format(rs.error_code)
  else
    outcome = ("OK %d"):format(rs.affected_rows or 0)
  end
  write(outcome, inj.query:sub(2))
end

function disconnect_client()
  if logged_in then write("DISCONNECT", "") end
end
