import LuaVM
import NIOCore
import ProxyCore

/// `proxy.connection` and `proxy.queries`: userdata whose methods reach the connection's script
/// (and through it the proxy) via a weak box.
enum ConnectionBinding {
    static let connectionMetatable = "moonproxy.connection"
    static let queriesMetatable = "moonproxy.queries"

    static func registerMetatables(_ lua: Lua) {
        lua.registerMetatable(named: connectionMetatable, [("__index", connectionIndex), ("__newindex", connectionNewIndex)])

        lua.pushMetatable(named: queriesMetatable)
        lua.newTable()
        for (name, fn) in [("append", queriesAppend), ("prepend", queriesPrepend), ("reset", queriesReset), ("len", queriesLength)] {
            lua.setField(name, function: fn)
        }
        lua.rawSet(-2, "__index")
        lua.setField("__len", function: queriesLength)
        lua.pop()
    }

    static func pushConnection(_ box: ConnectionBox, _ lua: Lua) {
        lua.push(object: box, metatable: connectionMetatable)
    }

    static func pushQueries(_ box: ConnectionBox, _ lua: Lua) {
        lua.push(object: box, metatable: queriesMetatable)
    }

    static func pushClient(_ client: ScriptClientInfo, _ lua: Lua) {
        lua.newTable(recordCapacity: 5)
        lua.setField("username", client.username)
        lua.setField("default_db", client.defaultDB)
        lua.setField("scrambled_password", byteArray: client.scrambledPassword)
        ScriptConstants.push(client.src, lua)
        lua.rawSet(-2, "src")
        ScriptConstants.push(client.dst, lua)
        lua.rawSet(-2, "dst")
        pushTLS(client.ssl, lua)
        lua.rawSet(-2, "ssl")
        if let compression = client.compression { lua.setField("compression", compression) }
        if let src = client.src {
            // MySQL Proxy 0.6's name, still used by its own example scripts
            lua.setField("address", src.name)
        }
    }

    static func pushServer(_ server: ScriptServerInfo, _ lua: Lua) {
        lua.newTable(recordCapacity: 8)
        lua.setField("thread_id", Int(server.threadID))
        lua.setField("mysqld_version", server.mysqldVersion)
        lua.setField("scramble_buffer", byteArray: server.scrambleBuffer)
        lua.setField("default_db", server.defaultDB)
        lua.setField("username", server.username)
        ScriptConstants.push(server.src, lua)
        lua.rawSet(-2, "src")
        ScriptConstants.push(server.dst, lua)
        lua.rawSet(-2, "dst")
        pushTLS(server.ssl, lua)
        lua.rawSet(-2, "ssl")
        if let compression = server.compression { lua.setField("compression", compression) }
        if let dst = server.dst {
            lua.setField("address", dst.name)
        }
    }

    /// `proxy.connection.session_state`: what the server reported of the session (a copy).
    static func pushSessionState(_ state: SessionState, _ lua: Lua) {
        lua.newTable(recordCapacity: 8)
        if let schema = state.schema { lua.setField("schema", schema) }
        lua.setField("in_transaction", state.pins.contains(.transaction))
        if !state.transactionCharacteristics.isEmpty { lua.setField("transaction_characteristics", state.transactionCharacteristics) }
        lua.newTable(recordCapacity: Int32(clamping: state.variables.count))
        for v in state.variables { lua.setField(v.name, v.value) }
        lua.rawSet(-2, "variables")
        lua.newTable(recordCapacity: Int32(clamping: state.userVariables.count))
        for u in state.userVariables { lua.setField(u.name, u.literal) }
        lua.rawSet(-2, "user_variables")
        lua.setField("last_insert_id", state.lastInsertID)
        let pins = SessionState.Pins.names.filter { state.pins.contains($0.0) }
        lua.newTable(arrayCapacity: Int32(pins.count))
        for (i, pin) in pins.enumerated() {
            lua.push(pin.1)
            lua.rawSet(-2, i + 1)
        }
        lua.rawSet(-2, "pins")
        lua.setField("movable", state.pins.isEmpty && state.transactionCharacteristics.isEmpty)
    }

    static func pushTLS(_ tls: ScriptTLSInfo?, _ lua: Lua) {
        guard let tls else { lua.pushNil(); return }
        lua.newTable(recordCapacity: 2)
        lua.setField("version", tls.version)
        if let cipher = tls.cipher { lua.setField("cipher", cipher) }
    }
}

/// The script of the userdata at index 1 if it is a `metatable` object; `misplaced` says why it
/// cannot be used now (another connection's object, or a closed one's).
private func script(_ lua: Lua, _ metatable: String, misplaced: inout OutOfPlace?) -> ConnectionScript? {
    guard let box = lua.object(at: 1, metatable: metatable, as: ConnectionBox.self) else { return nil }
    switch box.runningScript {
    case .success(let script): return script
    case .failure(let why): misplaced = why; return nil
    }
}

private let connectionIndex: LuaFunction = { L in
    let lua = Lua(L!)
    guard let key = lua.toString(at: 2) else { lua.pushNil(); return 1 }
    var misplaced: OutOfPlace?
    guard let script = script(lua, ConnectionBinding.connectionMetatable, misplaced: &misplaced), let host = script.host else {
        return lua.raiseWithPosition("proxy.connection cannot be used here: \(misplaced ?? .closed)")
    }
    switch key {
    case "client":
        ConnectionBinding.pushClient(host.scriptClient, lua)
    case "server":
        if let server = host.scriptServer { ConnectionBinding.pushServer(server, lua) } else { lua.pushNil() }
    case "backend_ndx":
        lua.push(host.scriptBackendIndex)
    case "session_state":
        if let state = host.scriptSessionState { ConnectionBinding.pushSessionState(state, lua) } else { lua.pushNil() }
    case "migrate":
        lua.push(function: connectionMigrate)
    case "default_db", "thread_id", "mysqld_version":
        let side = key == "default_db" ? "client.default_db or proxy.connection.server" : "server"
        return lua.raiseWithPosition("proxy.connection.\(key) is deprecated, use proxy.connection.\(side).\(key) instead")
    default:
        lua.pushNil()
    }
    return 1
}

/// `proxy.connection:migrate(n)`: true, or false and why the session cannot move now.
private let connectionMigrate: LuaFunction = { L in
    let lua = Lua(L!)
    var misplaced: OutOfPlace?
    guard let script = script(lua, ConnectionBinding.connectionMetatable, misplaced: &misplaced), let host = script.host else {
        return lua.raiseWithPosition("proxy.connection:migrate() cannot be used here: \(misplaced ?? .closed)")
    }
    guard let index = lua.toInteger(at: 2) else {
        return lua.raiseWithPosition("proxy.connection:migrate() needs a backend number, got \(lua.typeName(at: 2))")
    }
    guard let refusal = host.scriptMigrate(index) else {
        lua.push(true)
        return 1
    }
    lua.push(false)
    lua.push(refusal)
    return 2
}

private let connectionNewIndex: LuaFunction = { L in
    let lua = Lua(L!)
    let key = lua.toString(at: 2) ?? "?"
    var misplaced: OutOfPlace?
    guard let script = script(lua, ConnectionBinding.connectionMetatable, misplaced: &misplaced), let host = script.host else {
        return lua.raiseWithPosition("proxy.connection cannot be used here: \(misplaced ?? .closed)")
    }
    switch key {
    case "backend_ndx":
        guard let index = lua.toInteger(at: 3) else {
            return lua.raiseWithPosition("proxy.connection.backend_ndx needs a number, got \(lua.typeName(at: 3))")
        }
        host.scriptSetBackendIndex(index)
    case "connection_close":
        guard lua.type(at: 3) == .boolean else {
            return lua.raiseWithPosition("proxy.connection.connection_close needs a boolean, got \(lua.typeName(at: 3))")
        }
        host.scriptSetConnectionClose(lua.toBool(at: 3))
    default:
        return lua.raiseWithPosition("proxy.connection.\(key) is not writable")
    }
    return 0
}

/// proxy.queries:append(id, packet [, { resultset_is_needed = bool }]) and :prepend(...)
private func addQuery(_ L: OpaquePointer?, prepend: Bool) -> Int32 {
    let lua = Lua(L!)
    let method = prepend ? "prepend" : "append"
    var misplaced: OutOfPlace?
    guard let script = script(lua, ConnectionBinding.queriesMetatable, misplaced: &misplaced) else {
        if let misplaced { return lua.raiseWithPosition("proxy.queries cannot be used here: \(misplaced)") }
        return lua.raiseWithPosition("proxy.queries:\(method)() needs proxy.queries as its first argument (use ':')")
    }
    guard let id = lua.toInteger(at: 2) else {
        return lua.raiseWithPosition("bad argument #1 to '\(method)' (number expected, got \(lua.typeName(at: 2)))")
    }
    guard lua.type(at: 3) == .string, let packet = lua.toByteBuffer(at: 3) else {
        return lua.raiseWithPosition("bad argument #2 to '\(method)' (string expected, got \(lua.typeName(at: 3)))")
    }
    var needed = false
    switch lua.type(at: 4) {
    case .none, .nil:
        break
    case .table:
        switch lua.rawGet(4, "resultset_is_needed") {
        case .nil: break
        case .boolean: needed = lua.toBool(at: -1)
        default:
            lua.pop()
            return lua.raiseWithPosition("bad argument #3 to '\(method)' ({ resultset_is_needed = boolean } expected)")
        }
        lua.pop()
    default:
        return lua.raiseWithPosition("bad argument #3 to '\(method)' (table expected, got \(lua.typeName(at: 4)))")
    }
    // What a script queues is Swift memory, outside the Lua limit: bounded here.
    let limit = script.engine.configuration.memoryLimit > 0 ? script.engine.configuration.memoryLimit : 1 << 30
    var queued = packet.readableBytes
    for q in script.queries { queued += q.packet.readableBytes }
    guard script.queries.count < 65536, queued <= limit else {
        return lua.raiseWithPosition("proxy.queries:\(method)(): too many queries queued (at most 65536, \(limit) bytes in all)")
    }
    let injection = Injection(id: id, packet: packet, resultsetIsNeeded: needed, queuedAt: ConnectionScript.now())
    if prepend { script.queries.insert(injection, at: 0) } else { script.queries.append(injection) }
    return 0
}

private let queriesAppend: LuaFunction = { L in addQuery(L, prepend: false) }
private let queriesPrepend: LuaFunction = { L in addQuery(L, prepend: true) }

private let queriesReset: LuaFunction = { L in
    let lua = Lua(L!)
    var misplaced: OutOfPlace?
    guard let script = script(lua, ConnectionBinding.queriesMetatable, misplaced: &misplaced) else {
        if let misplaced { return lua.raiseWithPosition("proxy.queries cannot be used here: \(misplaced)") }
        return lua.raiseWithPosition("proxy.queries:reset() needs proxy.queries as its first argument (use ':')")
    }
    script.queries.removeAll()
    return 0
}

private let queriesLength: LuaFunction = { L in
    let lua = Lua(L!)
    var misplaced: OutOfPlace?
    guard let script = script(lua, ConnectionBinding.queriesMetatable, misplaced: &misplaced) else {
        if let misplaced { return lua.raiseWithPosition("proxy.queries cannot be used here: \(misplaced)") }
        return lua.raiseWithPosition("proxy.queries:len() needs proxy.queries as its first argument (use ':')")
    }
    lua.push(script.queries.count)
    return 1
}
