extension LuaLibrarySources {
    /// `proxy.balance`
    static let proxyBalance = ##"""
-- proxy.balance: picking a backend from proxy.global.backends.
local M = { _VERSION = "MoonProxy proxy.balance 1.0" }

local function idle(backend)
  local users = backend.pool.users[proxy.connection.client.username]
  return users and users.cur_idle_connections or 0
end

--- The first read-write backend that is not down and has an idle pooled connection for this
-- user, or 0.
function M.idle_failsafe_rw()
  for i = 1, #proxy.global.backends do
    local b = proxy.global.backends[i]
    if b.type == proxy.BACKEND_TYPE_RW and b.state ~= proxy.BACKEND_STATE_DOWN and idle(b) > 0 then
      return i
    end
  end
  return 0
end

--- The read-only backend with the fewest clients among those not down and with an idle pooled
-- connection for this user, or 0.
function M.idle_ro()
  local best, best_clients = 0, nil
  for i = 1, #proxy.global.backends do
    local b = proxy.global.backends[i]
    if b.type == proxy.BACKEND_TYPE_RO and b.state ~= proxy.BACKEND_STATE_DOWN and idle(b) > 0 then
      if best_clients == nil or b.connected_clients < best_clients then
        best, best_clients = i, b.connected_clients
      end
    end
  end
  return best
end

--- MoonProxy: the backend (not down) with the fewest idle pooled connections, or 0: logging new
-- clients in there fills the pools evenly.
function M.fewest_idle()
  local best, fewest = 0, nil
  for i = 1, #proxy.global.backends do
    local b = proxy.global.backends[i]
    if b.state ~= proxy.BACKEND_STATE_DOWN and (fewest == nil or b.idling_connections < fewest) then
      best, fewest = i, b.idling_connections
    end
  end
  return best
end

--- MoonProxy: the backend of the given type (default: any) that is not down and has the fewest
-- connected clients, or 0.
function M.least_connected(backend_type)
  local best, best_clients = 0, nil
  for i = 1, #proxy.global.backends do
    local b = proxy.global.backends[i]
    if b.state ~= proxy.BACKEND_STATE_DOWN and (backend_type == nil or b.type == backend_type) then
      if best_clients == nil or b.connected_clients < best_clients then
        best, best_clients = i, b.connected_clients
      end
    end
  end
  return best
end

return M
"""##
}
