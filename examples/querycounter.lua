--[[ querycounter.lua: a fake result set (MySQL Proxy's classic "SHOW querycounter").

Every query is counted in proxy.global (shared by all connections). "SHOW querycounter" is
answered by the proxy itself with a result set; the server never sees it. Everything else goes
to the server unchanged.

Run:  moonproxy -s examples/querycounter.lua
Try:  SELECT 1;  SELECT 2;  SHOW querycounter;
]]

proxy.global.query_count = proxy.global.query_count or 0

function read_query(packet)
  if packet:byte() ~= proxy.COM_QUERY then return end
  local query = packet:sub(2):gsub("^%s+", ""):gsub("[%s;]+$", "")
  if query:lower() == "show querycounter" then
    proxy.response = {
      type = proxy.MYSQLD_PACKET_OK,
      resultset = {
        fields = { { name = "query_count", type = proxy.MYSQL_TYPE_LONGLONG } },
        rows = { { proxy.global.query_count } },
      },
    }
    return proxy.PROXY_SEND_RESULT
  end
  proxy.global.query_count = proxy.global.query_count + 1
end
