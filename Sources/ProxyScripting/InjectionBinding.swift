import LuaVM
import MySQLWire
import NIOCore
import ProxyCore

/// `inj` in `read_query_result(inj)`: its id, query, times and `resultset`.
enum InjectionBinding {
    static let injectionMetatable = "moonproxy.injection"
    static let resultsetMetatable = "moonproxy.resultset"
    static let fieldsMetatable = "moonproxy.fields"

    static func registerMetatables(_ lua: Lua) {
        lua.registerMetatable(named: injectionMetatable, [("__index", injectionIndex)])
        lua.registerMetatable(named: resultsetMetatable, [("__index", resultsetIndex)])
        lua.registerMetatable(named: fieldsMetatable, [("__index", fieldsIndex), ("__len", fieldsLength)])
    }

    static func pushInjection(_ result: InjectionResult, _ lua: Lua) {
        lua.push(object: result, metatable: injectionMetatable)
    }
}

/// The injection result at `index` with `metatable`, if the connection it belongs to is the one
/// whose hook runs now; else nil, with the reason in `misplaced`.
private func injectionResult(_ lua: Lua, at index: Int32, _ metatable: String, misplaced: inout OutOfPlace?) -> InjectionResult? {
    guard let result = lua.object(at: index, metatable: metatable, as: InjectionResult.self) else { return nil }
    guard let owner = result.owner else { misplaced = .closed; return nil }
    guard owner.engine.running === owner else { misplaced = .anotherConnection; return nil }
    return result
}

private let injectionIndex: LuaFunction = { L in
    let lua = Lua(L!)
    var misplaced: OutOfPlace?
    guard let result = injectionResult(lua, at: 1, InjectionBinding.injectionMetatable, misplaced: &misplaced) else {
        return lua.raiseWithPosition(misplaced.map { "this injection cannot be used here: \($0)" } ?? "not an injection")
    }
    switch lua.toString(at: 2) ?? "" {
    case "id", "type": lua.push(result.injection.id)
    case "query": lua.push(result.injection.packet)
    case "query_time": lua.push(Int(clamping: Int64(bitPattern: result.firstPacketAt &- result.injection.queuedAt)))
    case "response_time": lua.push(Int(clamping: Int64(bitPattern: result.lastPacketAt &- result.injection.queuedAt)))
    case "resultset": lua.push(object: result, metatable: InjectionBinding.resultsetMetatable)
    default: lua.pushNil()
    }
    return 1
}

private let resultsetIndex: LuaFunction = { L in
    let lua = Lua(L!)
    var misplaced: OutOfPlace?
    guard let result = injectionResult(lua, at: 1, InjectionBinding.resultsetMetatable, misplaced: &misplaced) else {
        return lua.raiseWithPosition(misplaced.map { "this result set cannot be used here: \($0)" } ?? "not a result set")
    }
    let key = lua.toString(at: 2) ?? ""
    switch key {
    case "fields":
        guard result.buffered else { return lua.raiseWithPosition(".resultset.fields isn't available if 'resultset_is_needed ~= true'") }
        if result.parsed != nil {
            lua.push(object: result, metatable: InjectionBinding.fieldsMetatable)
        } else {
            lua.pushNil()
        }
    case "rows":
        guard result.buffered else { return lua.raiseWithPosition(".resultset.rows isn't available if 'resultset_is_needed ~= true'") }
        guard let parsed = result.parsed else { lua.pushNil(); return 1 }
        lua.pushValue(at: 1)
        lua.push(parsed.firstRow)
        lua.push(function: rowsIterator, upvalues: 2)
    case "row_count": lua.push(result.rows)
    case "error_code": lua.push(Int(result.errorCode))
    case "bytes": lua.push(result.bytes)
    case "raw":
        guard result.buffered else { return lua.raiseWithPosition(".resultset.raw isn't available if 'resultset_is_needed ~= true'") }
        if let first = result.packets.first { lua.push(first) } else { lua.pushNil() }
    case "flags":
        let status = ServerStatus(rawValue: result.serverStatus)
        lua.newTable(recordCapacity: 4)
        lua.setField("in_trans", status.contains(.inTransaction))
        lua.setField("auto_commit", status.contains(.autocommit))
        lua.setField("no_good_index_used", status.contains(.noGoodIndexUsed))
        lua.setField("no_index_used", status.contains(.noIndexUsed))
    case "warning_count": lua.push(Int(result.warnings))
    case "affected_rows":
        if result.wasResultSet { lua.pushNil() } else { lua.push(result.affectedRows) }
    case "insert_id":
        if result.wasResultSet { lua.pushNil() } else { lua.push(result.insertID) }
    case "query_status":
        if let status = result.queryStatus { lua.push(Int(status)) } else { lua.pushNil() }
    default:
        lua.pushNil()
    }
    return 1
}

/// The iterator `for row in inj.resultset.rows do`: upvalue 2 is the result set, 3 the next packet.
private let rowsIterator: LuaFunction = { L in
    let lua = Lua(L!)
    var misplaced: OutOfPlace?
    guard let result = injectionResult(lua, at: lua.upvalueIndex(2), InjectionBinding.resultsetMetatable, misplaced: &misplaced),
          let index = lua.toInteger(at: lua.upvalueIndex(3))
    else { return misplaced.map { lua.raiseWithPosition("these rows cannot be read here: \($0)") } ?? 0 }
    guard let row = result.row(at: index) else { return 0 }
    guard let values = row else { return lua.raiseWithPosition("row-data is invalid") }
    lua.push(index + 1)
    lua.replaceUpvalue(3)
    lua.newTable(arrayCapacity: Int32(values.count))
    for (i, value) in values.enumerated() {
        if let value { lua.push(value) } else { lua.pushNil() }
        lua.rawSet(-2, i + 1)
    }
    return 1
}

private let fieldsIndex: LuaFunction = { L in
    let lua = Lua(L!)
    var misplaced: OutOfPlace?
    guard let result = injectionResult(lua, at: 1, InjectionBinding.fieldsMetatable, misplaced: &misplaced),
          let columns = result.parsed?.columns
    else { return lua.raiseWithPosition(misplaced.map { "these fields cannot be used here: \($0)" } ?? "not a field list") }
    guard let i = lua.toInteger(at: 2), i >= 1, i <= columns.count else { lua.pushNil(); return 1 }
    let column = columns[i - 1]
    lua.newTable(recordCapacity: 6)
    lua.setField("name", column.name)
    lua.setField("type", Int(column.type.rawValue))
    lua.setField("org_name", column.orgName)
    lua.setField("table", column.table)
    lua.setField("org_table", column.orgTable)
    lua.setField("db", column.schema)
    return 1
}

private let fieldsLength: LuaFunction = { L in
    let lua = Lua(L!)
    var misplaced: OutOfPlace?
    guard let result = injectionResult(lua, at: 1, InjectionBinding.fieldsMetatable, misplaced: &misplaced) else {
        return lua.raiseWithPosition(misplaced.map { "these fields cannot be used here: \($0)" } ?? "not a field list")
    }
    lua.push(result.parsed?.columns.count ?? 0)
    return 1
}
