--[[ rw-splitting.lua: read/write splitting with connection pooling.

Writes, and everything inside a transaction, go to the read-write backend (-b); reads outside a
transaction go to a read-only backend (-r) with an idle pooled connection, falling back to the
read-write one. Between statements a client holds no server connection: after logging in, and
after each statement outside a transaction, its server connection goes back to the backend's
pool (backend_ndx = 0) for the next statement of any client of the same user to use. So many
clients share a few server connections, as with MySQL Proxy's rw-splitting.lua.

Session state does not travel between pooled connections (MySQL Proxy has the same limit), so
this suits applications that set no session variables and use no temporary tables.

Run:  moonproxy -b 127.0.0.1:3306 -r 127.0.0.1:3307 -s examples/rw-splitting.lua
]]

local balance = require("proxy.balance")
local tokenizer = require("proxy.tokenizer")

local in_transaction = false

local function log(what)
  if os.getenv("MOON_RW_DEBUG") then print("(rw-splitting) " .. what) end
end

local function is_read(packet)
  local command = packet:byte()
  if command ~= proxy.COM_QUERY then return false end
  local first = tokenizer.first_stmt_token(tokenizer.tokenize(packet:sub(2, 200)))
  if not first then return false end
  return first.token_name == "TK_SQL_SELECT" and not packet:upper():match("FOR%s+UPDATE")
    and not packet:upper():match("LOCK%s+IN%s+SHARE")
end

-- Logins fill the pools: each new client logs in on the backend (not down) with the fewest
-- idle connections, and its connection joins that backend's pool right after the login.
function connect_server()
  proxy.connection.backend_ndx = balance.fewest_idle()
end

function read_auth_result(auth)
  if auth.packet:byte() == proxy.MYSQLD_PACKET_OK then
    proxy.connection.backend_ndx = 0
  end
end

function read_query(packet)
  local command = packet:byte()
  if command == proxy.COM_QUIT then
    -- the server connection stays in the pool; answer the client ourselves
    proxy.response = { type = proxy.MYSQLD_PACKET_OK }
    return proxy.PROXY_SEND_RESULT
  end
  if proxy.connection.backend_ndx == 0 then
    local ndx = 0
    if is_read(packet) then ndx = balance.idle_ro() end
    if ndx == 0 then ndx = balance.idle_failsafe_rw() end
    if ndx == 0 then ndx = balance.least_connected(proxy.BACKEND_TYPE_RW) end
    proxy.connection.backend_ndx = ndx
    log(("%s -> backend %d"):format(packet:sub(2, 60), ndx))
  end
  proxy.queries:append(1, packet, { resultset_is_needed = true })
  return proxy.PROXY_SEND_QUERY
end

function read_query_result(inj)
  in_transaction = inj.resultset.flags.in_trans
  if not in_transaction then proxy.connection.backend_ndx = 0 end
end

function disconnect_client()
  if not in_transaction then proxy.connection.backend_ndx = 0 end
end
