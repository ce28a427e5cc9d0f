--[[ route-by-hint.lua: route queries by a proxy hint in a comment.

  SELECT /* @route replica */ * FROM t     -- runs on a read-only backend (-r)
  SELECT /* @route primary */ * FROM t     -- runs on a read-write backend (-b)
  SELECT /* @trace_id abc-123 */ 1          -- any hint is visible to the script in proxy.hints

The core parses /* @key value */ comments into proxy.hints before read_query runs. Queries
without a @route hint go to the read-write backend. Routing works on pooled server connections,
as MySQL Proxy's does: logins fill the backends' pools, and each statement outside a transaction
borrows a connection of the client's user from the pool of the backend it is routed to (a
transaction stays where it started). A trace id, when given, is logged with the query.

Run:  moonproxy -b 127.0.0.1:3306 -r 127.0.0.1:3307 -s examples/route-by-hint.lua
]]

local balance = require("proxy.balance")

local routes = { replica = proxy.BACKEND_TYPE_RO, primary = proxy.BACKEND_TYPE_RW }
local in_transaction = false

local function idle(i)
  local users = proxy.global.backends[i].pool.users[proxy.connection.client.username]
  return users and users.cur_idle_connections or 0
end

-- the first backend of that type, not down, with an idle connection for this user
local function pooled(wanted)
  for i = 1, #proxy.global.backends do
    local b = proxy.global.backends[i]
    if b.type == wanted and b.state ~= proxy.BACKEND_STATE_DOWN and idle(i) > 0 then return i end
  end
  return nil
end

function connect_server()
  proxy.connection.backend_ndx = balance.fewest_idle()
end

function read_auth_result(auth)
  if auth.packet:byte() == proxy.MYSQLD_PACKET_OK then proxy.connection.backend_ndx = 0 end
end

function read_query(packet)
  if packet:byte() == proxy.COM_QUIT then
    proxy.response = { type = proxy.MYSQLD_PACKET_OK }
    return proxy.PROXY_SEND_RESULT
  end
  local hints = proxy.hints
  if hints.trace_id then print(("(trace %s) %s"):format(hints.trace_id, packet:sub(2))) end
  local wanted = proxy.BACKEND_TYPE_RW
  if hints.route then
    wanted = routes[hints.route:lower()]
    if not wanted then
      proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errcode = 1105, sqlstate = "HY000",
                         errmsg = ("unknown route '%s' (use primary or replica)"):format(hints.route) }
      return proxy.PROXY_SEND_RESULT
    end
  end
  if proxy.connection.backend_ndx == 0 then
    proxy.connection.backend_ndx = pooled(wanted) or pooled(proxy.BACKEND_TYPE_RW) or pooled(proxy.BACKEND_TYPE_RO) or 0
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
