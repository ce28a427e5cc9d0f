-- Records what every hook sees and answers "SELECT moon_seen" with it, as (name, value) rows.
-- Used by test_scripting.py; `seen` is per connection (each connection runs the script in its
-- own environment), `proxy.global.log` is shared by all of them.

local seen = {}
local function note(k, v)
  if v == nil then seen[k] = "nil" else seen[k] = tostring(v) end
end
local function address(prefix, a)
  if a == nil then note(prefix, nil) return end
  note(prefix .. ".name", a.name)
  note(prefix .. ".address", a.address)
  note(prefix .. ".port", a.port)
  note(prefix .. ".type", a.type)
end

proxy.global.log = proxy.global.log or {}

function connect_server()
  note("connect_server.backend_ndx", proxy.connection.backend_ndx)
  note("backends.count", #proxy.global.backends)
  for i = 1, #proxy.global.backends do
    local b = proxy.global.backends[i]
    note("backends." .. i .. ".dst.name", b.dst.name)
    note("backends." .. i .. ".dst.port", b.dst.port)
    note("backends." .. i .. ".type", b.type)
    note("backends." .. i .. ".state", b.state)
    note("backends." .. i .. ".uuid_len", #b.uuid)
    note("backends." .. i .. ".max_idle", b.pool.max_idle_connections)
  end
  note("config.proxy-address", proxy.global.config["proxy-address"])
end

function read_handshake()
  local s = proxy.connection.server
  note("server.thread_id", s.thread_id)
  note("server.mysqld_version", s.mysqld_version)
  note("server.scramble_len", #s.scramble_buffer)
  address("server.dst", s.dst)
  address("server.src", s.src)
  address("client.src", proxy.connection.client.src)
  address("client.dst", proxy.connection.client.dst)
end

function read_auth()
  local c = proxy.connection.client
  note("client.username", c.username)
  note("client.default_db", c.default_db)
  note("client.scrambled_password_len", #c.scrambled_password)
end

function read_auth_result(auth)
  note("auth.first_byte", auth.packet:byte())
  note("server.default_db", proxy.connection.server.default_db)
end

function read_query(packet)
  note("read_query.backend_ndx", proxy.connection.backend_ndx)
  note("read_query.command", packet:byte())
  if packet:byte() ~= proxy.COM_QUERY then return end
  local q = packet:sub(2)
  if q == "SELECT moon_seen" then
    local rows = {}
    for k, v in pairs(seen) do rows[#rows + 1] = { k, v } end
    table.sort(rows, function(a, b) return a[1] < b[1] end)
    proxy.response = {
      type = proxy.MYSQLD_PACKET_OK,
      resultset = {
        fields = { { name = "name", type = proxy.MYSQL_TYPE_STRING }, { name = "value", type = proxy.MYSQL_TYPE_STRING } },
        rows = rows,
      },
    }
    return proxy.PROXY_SEND_RESULT
  end
  note("last_query", q)
  local hints = {}
  for k, v in pairs(proxy.hints) do hints[#hints + 1] = k .. "=" .. v end
  table.sort(hints)
  note("hints", table.concat(hints, ","))
  note("client.default_db.now", proxy.connection.client.default_db)
end

function disconnect_client()
  table.insert(proxy.global.log, "disconnect " .. proxy.connection.client.username)
end
