-- A script that moves its session between backends on request, and shows the session's state:
--   /*state*/ ...        answered by the script: one row of proxy.connection.session_state
--   /*migrate N*/ ...    proxy.connection:migrate(N), then the statement runs on the server
--                        (or an ERR naming the reason the session cannot move)
local function join(t, sep)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = k .. "=" .. tostring(t[k]) end
  return table.concat(out, sep)
end

function read_query(packet)
  if packet:byte() ~= proxy.COM_QUERY then return end
  local sql = packet:sub(2)
  if sql:find("^/%*state%*/") then
    local s = proxy.connection.session_state
    if not s then
      proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "no session_state" }
      return proxy.PROXY_SEND_RESULT
    end
    proxy.response = {
      type = proxy.MYSQLD_PACKET_OK,
      resultset = {
        fields = { { name = "schema" }, { name = "in_transaction" }, { name = "variables" },
                   { name = "user_variables" }, { name = "pins" }, { name = "movable" }, { name = "backend" } },
        rows = { { s.schema or "", tostring(s.in_transaction), join(s.variables, ";"), join(s.user_variables, ";"),
                   table.concat(s.pins, ","), tostring(s.movable), tostring(proxy.connection.backend_ndx) } },
      },
    }
    return proxy.PROXY_SEND_RESULT
  end
  local n = sql:match("^/%*migrate (%d+)%*/")
  if n then
    local ok, why = proxy.connection:migrate(tonumber(n))
    if not ok then
      proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "migrate: " .. why }
      return proxy.PROXY_SEND_RESULT
    end
  end
end
