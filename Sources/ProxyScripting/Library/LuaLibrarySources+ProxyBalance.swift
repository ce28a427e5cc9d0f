extension LuaLibrarySources {
    /// `proxy.balance`
    static let proxyBalance = ##"""
-- proxy.balance: picking a backend from proxy.global.backends.
local M = { _VERSION = "MoonProxy proxy.balance 1.0" }

local function idle(backend)
  local users = backend.pool.users[proxy.connection.client.username]
  return users and users.cur_idle_connections or 0
end

--- The index of the backend, among those not down that `accept`, with the least `weight`
-- (the first one on a tie), or 0.
local function lightest(accept, weight)
  local best, least = 0, nil
  for i = 1, #proxy.global.backends do
    local b = proxy.global.backends[i]
    if b.state ~= proxy.BACKEND_STATE_DOWN and accept(b) then
      local w = weight(b)
      if least == nil or w < least then best, least = i, w end
    end
  end
  return best
end

local function clients(b) return b.connected_clients end

--- The first read-write backend that is not down and has an idle pooled connection for this
-- user, or 0.
function M.idle_failsafe_rw()
  return lightest(function(b) return b.type == proxy.BACKEND_TYPE_RW and idle(b) > 0 end, function() return 0 end)
end

--- The read-only backend with the fewest clients among those not down and with an idle pooled
-- connection for this user, or 0.
function M.idle_ro()
  return lightest(function(b) return b.type == proxy.BACKEND_TYPE_RO and idle(b) > 0 end, clients)
end

--- MoonProxy: the backend (not down) with the fewest idle pooled connections, or 0: logging new
-- clients in there fills the pools evenly.
function M.fewest_idle()
  return lightest(function() return true end, function(b) return b.idling_connections end)
end

--- MoonProxy: the backend of the given type (default: any) that is not down and has the fewest
-- connected clients, or 0.
function M.least_connected(backend_type)
  return lightest(function(b) return backend_type == nil or b.type == backend_type end, clients)
end

return M
"""##
}
