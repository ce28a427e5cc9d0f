--[[ query-log.lua: log every query with its timings.

Each query is sent as an injected query (resultset_is_needed = false, so the result still streams
to the client untouched) only to learn when it was sent and when its response began and ended.
One line per query goes to stdout (or to the file named by MOON_QUERY_LOG):

  2026-11-21T10:00:00 #7 nat@127.0.0.1 [moon] 0.412 ms OK SELECT * FROM t WHERE id = 4

Run:  moonproxy --proxy-backend-addresses=127.0.0.1:3306 -s examples/query-log.lua
]]

local commands = require("proxy.commands")
local out = os.getenv("MOON_QUERY_LOG") and assert(io.open(os.getenv("MOON_QUERY_LOG"), "a")) or io.stdout

local statuses = { [proxy.MYSQLD_PACKET_OK] = "OK", [proxy.MYSQLD_PACKET_ERR] = "ERR" }

function read_query(packet)
  local command = packet:byte()
  if command ~= proxy.COM_QUERY and command ~= proxy.COM_STMT_PREPARE then return end
  proxy.queries:append(1, packet, { resultset_is_needed = false })
  return proxy.PROXY_SEND_QUERY
end

function read_query_result(inj)
  local client = proxy.connection.client
  out:write(("%s #%s %s@%s [%s] %.3f ms %s %s\n"):format(os.date("!%Y-%m-%dT%H:%M:%S"),
    tostring(proxy.connection.server and proxy.connection.server.thread_id or "-"),
    tostring(client.username), tostring(client.src.address), tostring(client.default_db or ""),
    inj.response_time / 1000, statuses[inj.resultset.query_status] or "?",
    commands.pretty_print(commands.parse(inj.query))))
  out:flush()
end
