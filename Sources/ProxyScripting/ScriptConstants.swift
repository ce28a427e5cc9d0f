import LuaVM
import MySQLWire

/// The constants MySQL Proxy puts in the `proxy` table.
enum ScriptConstants {
    /// MySQL Proxy's API level that MoonProxy implements (0.8.5), encoded as MySQL Proxy does:
    /// a script checking for at least 0.5.1 compares against 0x00501.
    static let proxyVersion = 0x00805
    static let moonProxyVersion = 0x00100

    static let statusFlags: [(String, Int)] = [
        ("SERVER_STATUS_IN_TRANS", 0x0001), ("SERVER_STATUS_AUTOCOMMIT", 0x0002),
        ("SERVER_MORE_RESULTS_EXISTS", 0x0008), ("SERVER_STATUS_MORE_RESULTS", 0x0008),
        ("SERVER_QUERY_NO_GOOD_INDEX_USED", 0x0010), ("SERVER_QUERY_NO_INDEX_USED", 0x0020),
        ("SERVER_STATUS_CURSOR_EXISTS", 0x0040), ("SERVER_STATUS_LAST_ROW_SENT", 0x0080),
        ("SERVER_STATUS_DB_DROPPED", 0x0100), ("SERVER_STATUS_NO_BACKSLASH_ESCAPES", 0x0200),
        ("SERVER_STATUS_METADATA_CHANGED", 0x0400), ("SERVER_QUERY_WAS_SLOW", 0x0800),
        ("SERVER_PS_OUT_PARAMS", 0x1000), ("SERVER_STATUS_IN_TRANS_READONLY", 0x2000),
        ("SERVER_SESSION_STATE_CHANGED", 0x4000),
    ]

    static func install(into table: Int32, _ lua: Lua) {
        func set(_ name: String, _ value: Int) {
            lua.push(value)
            lua.rawSet(table, name)
        }
        set("PROXY_VERSION", proxyVersion)
        set("MOONPROXY_VERSION", moonProxyVersion)
        set("PROXY_SEND_QUERY", ProxyReturn.sendQuery)
        set("PROXY_SEND_RESULT", ProxyReturn.sendResult)
        set("PROXY_IGNORE_RESULT", ProxyReturn.ignoreResult)
        set("MYSQLD_PACKET_OK", 0x00)
        set("MYSQLD_PACKET_RAW", 0xFA)
        set("MYSQLD_PACKET_NULL", 0xFB)
        set("MYSQLD_PACKET_EOF", 0xFE)
        set("MYSQLD_PACKET_ERR", 0xFF)
        set("BACKEND_STATE_UNKNOWN", 0)
        set("BACKEND_STATE_UP", 1)
        set("BACKEND_STATE_DOWN", 2)
        set("BACKEND_TYPE_UNKNOWN", 0)
        set("BACKEND_TYPE_RW", 1)
        set("BACKEND_TYPE_RO", 2)
        for (name, code) in CommandCode.all { set("COM_" + name, Int(code.rawValue)) }
        for (name, type) in ColumnType.all { set("MYSQL_TYPE_" + name, Int(type.rawValue)) }
        for (name, value) in statusFlags { set(name, value) }
    }

    static func push(_ value: ScriptValue, _ lua: Lua) {
        switch value {
        case .string(let s): lua.push(s)
        case .integer(let i): lua.push(i)
        case .number(let d): lua.push(d)
        case .boolean(let b): lua.push(b)
        case .array(let items):
            lua.newTable(arrayCapacity: Int32(items.count))
            for (i, item) in items.enumerated() {
                push(item, lua)
                lua.rawSet(-2, i + 1)
            }
        case .table(let fields):
            lua.newTable(recordCapacity: Int32(fields.count))
            for (key, item) in fields.sorted(by: { $0.key < $1.key }) {
                push(item, lua)
                lua.rawSet(-2, key)
            }
        }
    }

    static func push(_ address: ScriptAddress?, _ lua: Lua) {
        guard let address else { lua.pushNil(); return }
        lua.newTable(recordCapacity: 4)
        lua.setField("name", address.name)
        lua.setField("address", address.address)
        lua.setField("port", address.port)
        lua.setField("type", address.type)
    }
}
