import LuaVM
import MySQLWire
import NIOCore
import ProxyCore

/// Reads `proxy.response` (the table on top of the stack) into a value; the problems found are
/// reported as text for the log. Raw access only: a script's metatables are not run from here.
enum ScriptResponseDecoder {
    static func decode(_ lua: Lua, scriptName: String) -> Result<ScriptResponse, ResponseProblem> {
        guard lua.type(at: -1) == .table else {
            return .failure(ResponseProblem(lua.type(at: -1) == .nil ? "proxy.response isn't set in \(scriptName)"
                                                                   : "proxy.response has to be a table, is \(lua.typeName(at: -1)) in \(scriptName)"))
        }
        let table = lua.absolute(-1)
        lua.rawGet(table, "type")
        defer { lua.setTop(table) }
        guard lua.type(at: -1) != .nil else { return .failure(ResponseProblem("proxy.response.type isn't set in \(scriptName)")) }
        guard let type = Self.number(lua) else {
            return .failure(ResponseProblem("proxy.response.type has to be a number, is \(lua.typeName(at: -1)) in \(scriptName)"))
        }
        lua.pop()
        switch type {
        case 0x00:
            let status = integer(lua, table, "server_status").map { UInt16(truncatingIfNeeded: $0) }
            let warnings = UInt16(truncatingIfNeeded: integer(lua, table, "warning_count") ?? 0)
            if lua.rawGet(table, "resultset") == .table {
                let resultSet = lua.absolute(-1)
                return decodeResultSet(lua, resultSet, status: status, warnings: warnings)
            }
            lua.pop()
            let affected = UInt64(clamping: integer(lua, table, "affected_rows") ?? 0)
            let insertID = UInt64(clamping: integer(lua, table, "insert_id") ?? 0)
            var message: String? = nil
            if lua.rawGet(table, "msg") == .string || lua.type(at: -1) == .number { message = lua.toString(at: -1) }
            lua.pop()
            return .success(.ok(affectedRows: affected, insertID: insertID, serverStatus: status, warnings: warnings, message: message))
        case 0xFF:
            let code = UInt16(truncatingIfNeeded: integer(lua, table, "errcode") ?? 1105)
            var sqlState = "07000"
            if lua.rawGet(table, "sqlstate") == .string, let s = lua.toString(at: -1) { sqlState = s }
            lua.pop()
            var message = "(lua) proxy.response.errmsg is nil"
            if lua.rawGet(table, "errmsg") == .string || lua.type(at: -1) == .number, let m = lua.toString(at: -1) { message = m }
            lua.pop()
            return .success(.error(code: code, sqlState: sqlState, message: message))
        case 0xFA:
            guard lua.rawGet(table, "packets") == .table else {
                return .failure(ResponseProblem(lua.type(at: -1) == .nil ? "proxy.response.packets isn't set in \(scriptName)"
                                                                       : "proxy.response.packets has to be a table, is \(lua.typeName(at: -1)) in \(scriptName)"))
            }
            let packets = lua.absolute(-1)
            var result: [ByteBuffer] = []
            var i = 1
            while true {
                let kind = lua.rawGet(packets, i)
                defer { lua.pop() }
                if kind == .nil { break }
                guard kind == .string, let packet = lua.toByteBuffer(at: -1) else {
                    return .failure(ResponseProblem("proxy.response.packets should be an array of strings, field \(i) is a \(kind.name)"))
                }
                result.append(packet)
                i += 1
            }
            return .success(.raw(result))
        default:
            return .failure(ResponseProblem("proxy.response.type is unknown: \(type)"))
        }
    }

    private static func decodeResultSet(_ lua: Lua, _ resultSet: Int32, status: UInt16?, warnings: UInt16) -> Result<ScriptResponse, ResponseProblem> {
        var fields: [ScriptField] = []
        guard lua.rawGet(resultSet, "fields") == .table else {
            return .failure(ResponseProblem("proxy.response.resultset.fields has to be a table, is \(lua.typeName(at: -1))"))
        }
        let fieldsIndex = lua.absolute(-1)
        var i = 1
        while true {
            let kind = lua.rawGet(fieldsIndex, i)
            if kind == .nil { lua.pop(); break }
            guard kind == .table else {
                lua.pop()
                return .failure(ResponseProblem("proxy.response.resultset.fields[\(i)] should be a table, but is a \(kind.name)"))
            }
            let field = lua.absolute(-1)
            var name = "no-field-name"
            if lua.rawGet(field, "name") == .string || lua.type(at: -1) == .number { name = lua.toString(at: -1) ?? name }
            lua.pop()
            var type = ColumnType.string
            lua.rawGet(field, "type")
            if let t = Self.number(lua) { type = ColumnType(UInt8(truncatingIfNeeded: t)) }
            lua.pop()
            var f = ScriptField(name: name, type: type)
            for (key, path) in [("table", \ScriptField.table), ("org_name", \.orgName), ("org_table", \.orgTable), ("db", \.schema)] {
                if lua.rawGet(field, key) == .string { f[keyPath: path] = lua.toString(at: -1) ?? "" }
                lua.pop()
            }
            fields.append(f)
            lua.pop()
            i += 1
        }
        lua.pop()
        var rows: [[String?]] = []
        let rowsKind = lua.rawGet(resultSet, "rows")
        if rowsKind == .table {
            let rowsIndex = lua.absolute(-1)
            var r = 1
            while true {
                let kind = lua.rawGet(rowsIndex, r)
                if kind == .nil { lua.pop(); break }
                guard kind == .table else {
                    lua.pop()
                    return .failure(ResponseProblem("proxy.response.resultset.rows[\(r)] should be a table, but is a \(kind.name)"))
                }
                let row = lua.absolute(-1)
                var values: [String?] = []
                values.reserveCapacity(fields.count)
                for j in 1...max(fields.count, 1) where j <= fields.count {
                    switch lua.rawGet(row, j) {
                    case .string, .number: values.append(lua.toString(at: -1))
                    default: values.append(nil)  // booleans, tables, nil: NULL, as MySQL Proxy sends them
                    }
                    lua.pop()
                }
                rows.append(values)
                lua.pop()
                r += 1
            }
        } else if rowsKind != .nil {
            return .failure(ResponseProblem("proxy.response.resultset.rows has to be a table, is \(rowsKind.name)"))
        }
        lua.pop()
        return .success(.resultSet(fields: fields, rows: rows, serverStatus: status, warnings: warnings))
    }

    private static func integer(_ lua: Lua, _ table: Int32, _ key: String) -> Int? {
        defer { lua.pop() }
        lua.rawGet(table, key)
        return number(lua)
    }

    /// The number on top of the stack as MySQL Proxy reads numbers from a script's tables: a
    /// number, or a string Lua converts to one (`errcode = "3306"` from `string.match`); a
    /// fraction is cut towards zero. Anything else is nil (the field's default applies).
    static func number(_ lua: Lua) -> Int? {
        switch lua.type(at: -1) {
        case .number, .string:
            if let i = lua.toInteger(at: -1) { return i }
            guard let d = lua.toNumber(at: -1), d.isFinite else { return nil }
            return Int(exactly: d.rounded(.towardZero)) ?? (d < 0 ? Int.min : Int.max)
        default:
            return nil
        }
    }
}

struct ResponseProblem: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
