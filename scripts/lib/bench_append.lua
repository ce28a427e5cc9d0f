-- Benchmark target "moon+append": every command is queued again as an injection whose result
-- is not buffered (resultset_is_needed = false), so it streams to the client as it arrives.
function read_query(packet)
  proxy.queries:append(1, packet, { resultset_is_needed = false })
  return proxy.PROXY_SEND_QUERY
end
