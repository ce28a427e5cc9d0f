import Logging
import ProxyCore
import ProxyScripting

/// MySQL Proxy's admin interface (`--plugins=admin`): a second listener that speaks the MySQL
/// protocol and is answered by a Lua script, with no backend behind it.
///
/// The core does the login, as MySQL Proxy's admin plugin does: a prelude run in every admin
/// connection's environment defines `connect_server` (a greeting with a fresh challenge) and
/// `read_auth` (a real mysql_native_password check against SHA1(SHA1(password)); the password
/// itself never reaches Lua). The admin script then only needs `read_query`; the default one
/// answers `SELECT * FROM help`, `backends`, `stats`, `connections`, `config`, `accounts` and `pool`.
public struct AdminConfiguration: Sendable {
    /// Loopback unless the operator names another address: the admin interface shows every
    /// connection and the configuration.
    public var address: ProxyAddress = .tcp(host: "127.0.0.1", port: 4041)
    public var username: String
    public var password: String
    /// `--admin-lua-script`; the built-in script when nil (and `luaScriptSource` is nil).
    public var luaScript: String?
    public var luaScriptSource: String?

    public init(username: String, password: String, address: ProxyAddress = .tcp(host: "127.0.0.1", port: 4041)) {
        self.username = username
        self.password = password
        self.address = address
    }
}

enum AdminInterface {
    static func prelude(username: String, password: String) -> String {
        let stored = NativePassword.hash(NativePassword.hash(Array(password.utf8)))  // SHA1(SHA1(password))
        return """
        local proto = require("mysql.proto")
        local password = require("mysql.password")
        local ADMIN_USER = \(luaQuoted(Array(username.utf8)))
        local ADMIN_HASH = \(luaQuoted(stored))
        local challenge

        function connect_server()
          challenge = proto.random_challenge(20)
          proxy.response = { type = proxy.MYSQLD_PACKET_RAW, packets = { proto.to_challenge_packet({
            server_version_str = "5.7.99-MoonProxy-admin", thread_id = 1, challenge = challenge,
            capabilities = proto.DEFAULT_CAPABILITIES | 0x1000000 }) } }
          return proxy.PROXY_SEND_RESULT
        end

        function read_auth()
          local client = proxy.connection.client
          local response = client.scrambled_password or ""
          if client.username == ADMIN_USER and password.check(challenge, response, ADMIN_HASH) then
            proxy.response = { type = proxy.MYSQLD_PACKET_OK }
          else
            proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errcode = 1045, sqlstate = "28000",
              errmsg = ("Access denied for user '%s'@'%s' (using password: %s)"):format(
                tostring(client.username), tostring(client.src and client.src.address or ""),
                #response > 0 and "YES" or "NO") }
            chassis.warning(("admin: refused a login as '%s' from %s"):format(tostring(client.username),
              tostring(client.src and client.src.name or "?")))
          end
          return proxy.PROXY_SEND_RESULT
        end
        require("chassis")
        """
    }

    /// The admin script used without `--admin-lua-script`.
    static let defaultScript = #"""
    -- MoonProxy's built-in admin script: read-only views of the proxy.
    local function resultset(fields, rows)
      local f = {}
      for i, name in ipairs(fields) do f[i] = { name = name, type = proxy.MYSQL_TYPE_STRING } end
      proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = { fields = f, rows = rows } }
      return proxy.PROXY_SEND_RESULT
    end

    local states = { [proxy.BACKEND_STATE_UNKNOWN] = "unknown", [proxy.BACKEND_STATE_UP] = "up", [proxy.BACKEND_STATE_DOWN] = "down" }
    local types = { [proxy.BACKEND_TYPE_RW] = "rw", [proxy.BACKEND_TYPE_RO] = "ro" }

    local tables = {}
    tables.help = function()
      return resultset({ "command", "description" }, {
        { "SELECT * FROM help", "shows this help" },
        { "SELECT * FROM backends", "lists the backends: address, state, type, connected clients" },
        { "SELECT * FROM stats", "the proxy's counters: connections, queries, bytes, errors by source" },
        { "SELECT * FROM connections", "the client connections: client, backend, user, TLS and compression on each link" },
        { "SELECT * FROM config", "the effective options" },
        { "SELECT * FROM accounts", "the servers' accounts as read with --proxy-users-user, in the order the servers search them (no hashes)" },
        { "SELECT * FROM pool", "the core pool (--proxy-pool-max): server connections by backend and login, idle or being reset" },
        { "DRAIN BACKEND n [WITHIN seconds]", "new sessions avoid backend n; multiplexed sessions move off it between commands; those left after the deadline (60 s) are closed" },
        { "UNDRAIN BACKEND n", "backend n takes sessions again" },
        { "MIGRATE CONNECTION id TO BACKEND n", "a multiplexed session moves to backend n between commands, in its state, and stays there" },
      })
    end
    tables.backends = function()
      local rows = {}
      for i = 1, #proxy.global.backends do
        local b = proxy.global.backends[i]
        rows[#rows + 1] = { i, b.dst.name, states[b.state] or tostring(b.state), types[b.type] or tostring(b.type),
                            b.uuid, b.connected_clients }
      end
      return resultset({ "backend_ndx", "address", "state", "type", "uuid", "connected_clients" }, rows)
    end
    tables.stats = function()
      local rows = {}
      for group, counters in pairs(chassis.get_stats() or {}) do
        for name, value in pairs(counters) do rows[#rows + 1] = { group .. "." .. name, value } end
      end
      table.sort(rows, function(a, b) return a[1] < b[1] end)
      return resultset({ "name", "value" }, rows)
    end
    tables.connections = function()
      local columns = { "id", "client", "backend", "user", "db", "state", "seconds", "client_tls", "backend_tls",
                        "client_compression", "backend_compression", "server_connection", "pinned", "statements" }
      local rows = {}
      for _, c in ipairs(chassis.get_connections() or {}) do
        local row = {}
        for i, name in ipairs(columns) do row[i] = c[name] end
        rows[#rows + 1] = row
      end
      return resultset(columns, rows)
    end
    tables.accounts = function()
      local columns = { "user", "host", "plugin", "locked", "password_expired", "require" }
      local rows = {}
      for _, a in ipairs(chassis.get_accounts() or {}) do
        local row = {}
        for i, name in ipairs(columns) do row[i] = a[name] end
        rows[#rows + 1] = row
      end
      return resultset(columns, rows)
    end
    tables.pool = function()
      local columns = { "backend_ndx", "user", "db", "idle", "resetting" }
      local rows = {}
      for _, p in ipairs(chassis.get_pool() or {}) do
        local row = {}
        for i, name in ipairs(columns) do row[i] = p[name] end
        rows[#rows + 1] = row
      end
      return resultset(columns, rows)
    end
    tables.config = function()
      local rows = {}
      for name, value in pairs(proxy.global.config) do
        if type(value) == "table" then
          local parts = {}
          for _, v in ipairs(value) do parts[#parts + 1] = tostring(v) end
          value = table.concat(parts, ",")
        end
        rows[#rows + 1] = { name, tostring(value) }
      end
      table.sort(rows, function(a, b) return a[1] < b[1] end)
      return resultset({ "option", "value" }, rows)
    end

    function read_query(packet)
      local command = packet:byte()
      if command == proxy.COM_QUIT then return end
      if command ~= proxy.COM_QUERY then
        proxy.response = { type = proxy.MYSQLD_PACKET_OK }
        return proxy.PROXY_SEND_RESULT
      end
      local query = packet:sub(2):gsub("^%s+", ""):gsub("[%s;]+$", ""):lower():gsub("%s+", " ")
      local name = query:match("^select %* from ([%w_]+)$")
      if name and tables[name] then return tables[name]() end
      local ndx, within = query:match("^drain backend (%d+) within (%d+)$")
      if not ndx then ndx = query:match("^drain backend (%d+)$") end
      if ndx then
        local seconds = tonumber(within) or 60
        if not chassis.drain_backend(tonumber(ndx), seconds) then
          proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errcode = 1105, sqlstate = "HY000", errmsg = "no backend " .. ndx }
        else
          proxy.response = { type = proxy.MYSQLD_PACKET_OK, message = ("backend %s drains within %d s"):format(ndx, seconds) }
        end
        return proxy.PROXY_SEND_RESULT
      end
      ndx = query:match("^undrain backend (%d+)$")
      if ndx then
        if chassis.undrain_backend(tonumber(ndx)) then
          proxy.response = { type = proxy.MYSQLD_PACKET_OK }
        else
          proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errcode = 1105, sqlstate = "HY000", errmsg = "no backend " .. ndx }
        end
        return proxy.PROXY_SEND_RESULT
      end
      local id
      id, ndx = query:match("^migrate connection (%d+) to backend (%d+)$")
      if id then
        local done, why = chassis.migrate_connection(tonumber(id), tonumber(ndx))
        if done then
          proxy.response = { type = proxy.MYSQLD_PACKET_OK, message = ("connection %s moves to backend %s"):format(id, ndx) }
        else
          proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errcode = 1105, sqlstate = "HY000", errmsg = why }
        end
        return proxy.PROXY_SEND_RESULT
      end
      if query:match("^select @@version_comment") then
        return resultset({ "@@version_comment" }, { { "MoonProxy admin" } })
      end
      if query:match("^set ") then
        proxy.response = { type = proxy.MYSQLD_PACKET_OK }
        return proxy.PROXY_SEND_RESULT
      end
      proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errcode = 1105, sqlstate = "07000",
        errmsg = "use 'SELECT * FROM help' to see the supported commands" }
      return proxy.PROXY_SEND_RESULT
    end
    """#

    /// A Lua string literal holding `bytes` exactly.
    static func luaQuoted(_ bytes: [UInt8]) -> String {
        var out = "\""
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"): out += "\\" + String(UnicodeScalar(byte))
            case 32...126: out += String(UnicodeScalar(byte))
            default:
                let digits = String(byte)
                out += "\\" + String(repeating: "0", count: 3 - digits.count) + digits
            }
        }
        return out + "\""
    }
}
