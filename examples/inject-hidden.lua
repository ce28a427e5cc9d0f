--[[ inject-hidden.lua: inject a query before the client's, use its result, hide it.

Before every SELECT the script asks the server for its connection id and the current time (a
query the client never sees: read_query_result returns PROXY_IGNORE_RESULT for it), then lets the
client's query through. The injected result is buffered (resultset_is_needed = true) so the
script can read its rows; the client's own result streams untouched. The last values are kept in
proxy.global.last_seen and logged.

Run:  moonproxy -s examples/inject-hidden.lua
]]

local INFO, QUERY = 1, 2

function read_query(packet)
  if packet:byte() ~= proxy.COM_QUERY or not packet:sub(2, 7):upper():match("^SELECT") then return end
  proxy.queries:append(INFO, string.char(proxy.COM_QUERY) .. "SELECT CONNECTION_ID(), NOW(6)", { resultset_is_needed = true })
  proxy.queries:append(QUERY, packet)
  return proxy.PROXY_SEND_QUERY
end

function read_query_result(inj)
  if inj.id ~= INFO then return end
  if inj.resultset.query_status == proxy.MYSQLD_PACKET_OK then
    for row in inj.resultset.rows do
      proxy.global.last_seen = { connection_id = row[1], time = row[2] }
      print(("(inject) server connection %s at %s"):format(row[1], row[2]))
    end
  end
  return proxy.PROXY_IGNORE_RESULT
end
