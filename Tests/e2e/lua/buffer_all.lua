-- Sends every query and prepared-statement execution again as an injection whose result is
-- buffered and then forwarded: results take the proxy's collect-and-resend path, which must
-- give the client exactly what the server said.
--
-- LOAD DATA LOCAL INFILE needs the client's file, which a buffered injection cannot get (the
-- proxy answers the server's request with an empty file), so those statements go through as
-- they are. Prepared ones are recognised by their statement id, read from the buffered answer
-- to their COM_STMT_PREPARE (`resultset.raw`).

local infile_statements = {}

local function is_infile(sql)
  return sql:upper():find("LOCAL INFILE", 1, true) ~= nil
end

function read_query(packet)
  local command = packet:byte()
  if command == proxy.COM_QUERY then
    if is_infile(packet) then return end
  elseif command == proxy.COM_STMT_PREPARE then
    if not is_infile(packet) then return end
    proxy.queries:append(3, packet, { resultset_is_needed = true })
    return proxy.PROXY_SEND_QUERY
  elseif command == proxy.COM_STMT_EXECUTE then
    if infile_statements[string.unpack("<I4", packet, 2)] then return end
  else
    return
  end
  proxy.queries:append(1, packet, { resultset_is_needed = true })
  return proxy.PROXY_SEND_QUERY
end

function read_query_result(inj)
  local res = inj.resultset
  if inj.id == 3 then
    local raw = res.raw
    if raw:byte() == 0 then infile_statements[string.unpack("<I4", raw, 2)] = true end
    return
  end
  -- touch everything a script may look at, so that parsing is exercised too
  if res.fields then
    for i = 1, #res.fields do local _ = res.fields[i].name .. res.fields[i].type end
    for row in res.rows do local _ = #row end
  end
  local _ = res.row_count, res.bytes, res.flags.in_trans, res.warning_count, inj.query_time
end
