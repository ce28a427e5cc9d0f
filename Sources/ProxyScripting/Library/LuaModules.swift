import Logging
import LuaVM
import ProxyCore

/// The Lua modules MySQL Proxy scripts `require`: the ones written in Swift (`mysql.proto`,
/// `mysql.tokenizer`, `mysql.password`, `chassis`) and the Lua ones in `LuaLibrarySources`, all registered in
/// `package.preload` when the engine starts. As in MySQL Proxy, requiring `mysql.tokenizer`,
/// `mysql.proto` or `mysql.password` also sets the global `tokenizer`, `proto` or `password`, and
/// `proxy.tokenize` is always there.
enum LuaModules {
    /// What `chassis.get_stats()` reports: counters by group ("proxy", "chassis", ...).
    typealias StatisticsProvider = @Sendable () -> [String: [(String, Int)]]

    static let glue = #"""
    local swift_modules, lua_modules = ...
    local preload, proxy = package.preload, rawget(_G, "proxy")
    local globals = { ["mysql.tokenizer"] = "tokenizer", ["mysql.proto"] = "proto", ["mysql.password"] = "password", ["chassis"] = "chassis" }
    local function publish(name, module)
      if globals[name] then rawset(_G, globals[name], module) end
      local short = name:match("^proxy%.(.+)$")
      if short and proxy and rawget(proxy, short) == nil then rawset(proxy, short, module) end
      return module
    end
    -- Modules on package.path written for Lua 5.1 (MySQL Proxy's lib/*.lua): loaded as the
    -- script is, with 5.1's unknown escapes made literal when 5.4 refuses the file as it is.
    local lua51 = swift_modules["moonproxy.lua51"]
    swift_modules["moonproxy.lua51"] = nil
    -- proxy.auto-config's files, confined to --proxy-auto-config-dir; for that module only
    local config_files = swift_modules["moonproxy.config_files"]
    swift_modules["moonproxy.config_files"] = nil
    local searchers = package.searchers
    local lua_searcher = searchers[2]
    searchers[2] = function(name)
      local path = package.searchpath(name, package.path)
      if not path then return lua_searcher(name) end
      local file = io.open(path, "rb")
      if not file then return lua_searcher(name) end
      local source = file:read("a")
      file:close()
      local chunk, problem = load(source, "@" .. path, "t")
      if not chunk then
        local rewritten = lua51(source)
        if rewritten then chunk = load(rewritten, "@" .. path, "t") end
      end
      if not chunk then error(("error loading module '%s' from file '%s':\n\t%s"):format(name, path, problem), 2) end
      return chunk, path
    end
    for name, module in pairs(swift_modules) do
      preload[name] = function() return publish(name, module) end
    end
    for name, chunk in pairs(lua_modules) do
      if name == "proxy.auto-config" then
        preload[name] = function() return publish(name, chunk(config_files)) end
      else
        preload[name] = function(...) return publish(name, chunk(...)) end
      end
    end
    rawset(proxy, "tokenize", swift_modules["mysql.tokenizer"].tokenize)
    """#

    /// Registers every module; `engine` must outlive the Lua state.
    static func install(_ lua: Lua, engine: ScriptEngine) throws(LuaError) {
        try lua.load(glue, name: "=(moonproxy modules)")
        lua.registerMetatable(named: engineMetatable, [])
        let reference = EngineReference(engine)

        lua.newTable()                                  // Swift modules by name
        lua.newTable()
        lua.setField("tokenize", function: tokenize)
        lua.setField("_VERSION", "MoonProxy mysql.tokenizer 1.0")
        lua.rawSet(-2, "mysql.tokenizer")

        MySQLProtoModule.push(lua)
        lua.rawSet(-2, "mysql.proto")

        lua.push(function: lua51Rewrite)
        lua.rawSet(-2, "moonproxy.lua51")

        lua.newTable()
        for (name, fn) in [("save", configFileSave), ("load", configFileLoad)] {
            lua.push(object: reference, metatable: engineMetatable)
            lua.push(function: fn, upvalues: 1)
            lua.rawSet(-2, name)
        }
        lua.rawSet(-2, "moonproxy.config_files")

        lua.newTable()
        for (name, fn) in [("hash", passwordHash), ("scramble", passwordScramble), ("unscramble", passwordUnscramble), ("check", passwordCheck)] {
            lua.push(function: fn)
            lua.rawSet(-2, name)
        }
        lua.rawSet(-2, "mysql.password")

        lua.newTable()
        for (name, level) in [("log", nil), ("critical", "critical"), ("error", "error"), ("warning", "warning"),
                              ("message", "message"), ("info", "info"), ("debug", "debug")] as [(String, String?)] {
            lua.push(object: reference, metatable: engineMetatable)
            if let level { lua.push(level) } else { lua.pushNil() }
            lua.push(function: chassisLog, upvalues: 2)
            lua.rawSet(-2, name)
        }
        lua.push(object: reference, metatable: engineMetatable)
        lua.push(function: chassisStats, upvalues: 1)
        lua.rawSet(-2, "get_stats")
        lua.push(object: reference, metatable: engineMetatable)
        lua.push(function: chassisConnections, upvalues: 1)
        lua.rawSet(-2, "get_connections")
        lua.push(object: reference, metatable: engineMetatable)
        lua.push(function: chassisAccounts, upvalues: 1)
        lua.rawSet(-2, "get_accounts")
        lua.push(object: reference, metatable: engineMetatable)
        lua.push(function: chassisPool, upvalues: 1)
        lua.rawSet(-2, "get_pool")
        lua.push(object: reference, metatable: engineMetatable)
        lua.push(function: chassisSetShutdown, upvalues: 1)
        lua.rawSet(-2, "set_shutdown")
        lua.push(object: reference, metatable: engineMetatable)
        lua.push(function: chassisDrainBackend, upvalues: 1)
        lua.rawSet(-2, "drain_backend")
        lua.push(object: reference, metatable: engineMetatable)
        lua.push(function: chassisUndrainBackend, upvalues: 1)
        lua.rawSet(-2, "undrain_backend")
        lua.push(object: reference, metatable: engineMetatable)
        lua.push(function: chassisMigrateConnection, upvalues: 1)
        lua.rawSet(-2, "migrate_connection")
        lua.rawSet(-2, "chassis")

        lua.newTable()                                  // Lua modules, compiled
        for (name, source) in LuaLibrarySources.modules {
            try lua.load(source, name: "=[moonproxy] " + name)
            lua.rawSet(-2, name)
        }
        try lua.pcall(arguments: 2, results: 0)
    }

    static let engineMetatable = "moonproxy.engine"

    /// The engine, from a function's upvalue 2 (checked: a script cannot put anything else there).
    static func engine(_ lua: Lua) -> ScriptEngine? {
        lua.object(at: lua.upvalueIndex(2), metatable: engineMetatable, as: EngineReference.self)?.engine
    }
}

/// The engine as chassis functions reach it. Weak: the Lua state holding this belongs to the
/// engine (a strong reference would keep both alive for good), and these functions are not on any
/// packet's path.
final class EngineReference {
    weak var engine: ScriptEngine?
    init(_ engine: ScriptEngine) { self.engine = engine }
}

// MARK: proxy.auto-config's files

private let configFileSave: LuaFunction = { L in
    let lua = Lua(L!)
    guard let name = bytesArgument(lua, 1), let text = bytesArgument(lua, 2) else {
        return lua.raiseWithPosition("save(name, text) takes two strings")
    }
    let directory = LuaModules.engine(lua)?.configuration.autoConfigDirectory
    if let problem = ConfigFiles.save(name, text, in: directory) {
        lua.pushNil()
        lua.push(problem.description)
        return 2
    }
    lua.push(true)
    return 1
}

private let configFileLoad: LuaFunction = { L in
    let lua = Lua(L!)
    guard let name = bytesArgument(lua, 1) else { return lua.raiseWithPosition("load(name) takes a string") }
    switch ConfigFiles.load(name, in: LuaModules.engine(lua)?.configuration.autoConfigDirectory) {
    case .success(let bytes):
        bytes.withUnsafeBytes { lua.push(bytes: $0) }
        return 1
    case .failure(let problem):
        lua.pushNil()
        lua.push(problem.description)
        return 2
    }
}

// MARK: mysql.tokenizer

private let tokenize: LuaFunction = { L in
    let lua = Lua(L!)
    // Each token costs the script well over 64 bytes of Lua memory (a table, its fields, the text):
    // more than the memory limit leaves room for is refused before it is built.
    let limit = lua.memoryHeadroom.map { max(1024, $0 / 64) } ?? .max
    guard let result = lua.withBytes(at: 1, { SQLTokenizer.tokenize($0, limit: limit) }) else {
        return lua.raiseWithPosition("bad argument #1 to 'tokenize' (string expected, got \(lua.typeName(at: 1)))")
    }
    guard let tokens = result else {
        return lua.raiseWithPosition("not enough memory: the query has more tokens than the Lua memory limit leaves room for")
    }
    lua.newTable(arrayCapacity: Int32(clamping: tokens.count))
    for (i, token) in tokens.enumerated() {
        lua.newTable(recordCapacity: 3)
        lua.setField("token_id", token.id)
        lua.setField("token_name", SQLTokenizer.names[token.id])
        token.text.withUnsafeBytes { lua.push(bytes: $0) }
        lua.rawSet(-2, "text")
        lua.rawSet(-2, i + 1)
    }
    return 1
}

// MARK: mysql.password (mysql_native_password)

private func bytesArgument(_ lua: Lua, _ index: Int32) -> [UInt8]? {
    lua.withBytes(at: index) { Array($0) }
}

private let passwordHash: LuaFunction = { L in
    let lua = Lua(L!)
    guard let password = bytesArgument(lua, 1) else {
        return lua.raiseWithPosition("bad argument #1 to 'hash' (string expected, got \(lua.typeName(at: 1)))")
    }
    NativePassword.hash(password).withUnsafeBytes { lua.push(bytes: $0) }
    return 1
}

private let passwordScramble: LuaFunction = { L in
    let lua = Lua(L!)
    guard let challenge = bytesArgument(lua, 1), let hashed = bytesArgument(lua, 2) else {
        return lua.raiseWithPosition("scramble(challenge, hashed_password) takes two strings")
    }
    NativePassword.scramble(challenge: challenge, hashedPassword: hashed).withUnsafeBytes { lua.push(bytes: $0) }
    return 1
}

private let passwordUnscramble: LuaFunction = { L in
    let lua = Lua(L!)
    guard let challenge = bytesArgument(lua, 1), let response = bytesArgument(lua, 2), let double = bytesArgument(lua, 3) else {
        return lua.raiseWithPosition("unscramble(challenge, response, double_hashed_password) takes three strings")
    }
    NativePassword.unscramble(challenge: challenge, response: response, doubleHashed: double).withUnsafeBytes { lua.push(bytes: $0) }
    return 1
}

private let passwordCheck: LuaFunction = { L in
    let lua = Lua(L!)
    guard let challenge = bytesArgument(lua, 1), let response = bytesArgument(lua, 2), let double = bytesArgument(lua, 3) else {
        return lua.raiseWithPosition("check(challenge, response, double_hashed_password) takes three strings")
    }
    lua.push(NativePassword.check(challenge: challenge, response: response, doubleHashed: double))
    return 1
}

// MARK: chassis

/// `chassis.log(level, message)` and `chassis.<level>(message)`: to MoonProxy's log, with the
/// script's file and line.
private let chassisLog: LuaFunction = { L in
    let lua = Lua(L!)
    guard let engine = LuaModules.engine(lua) else { return 0 }
    var first: Int32 = 1
    var levelName = lua.toString(at: lua.upvalueIndex(3))
    if levelName == nil {
        levelName = lua.toString(at: 1) ?? "message"
        first = 2
    }
    let level: Logger.Level
    switch levelName! {
    case "critical": level = .critical
    case "error": level = .error
    case "warning": level = .warning
    case "message": level = .notice
    case "info": level = .info
    case "debug": level = .debug
    default:
        return lua.raiseWithPosition("chassis.log: unknown level '\(levelName!)' (critical, error, warning, message, info, debug)")
    }
    let message = lua.toString(at: first) ?? (lua.type(at: first) == .none ? "nil" : lua.typeName(at: first))
    let place = lua.callerPosition(level: 1)
    engine.logger.log(level: level, "(lua) \(place.map { "(\($0)) " } ?? "")\(message)")
    return 0
}

private let chassisStats: LuaFunction = { L in
    let lua = Lua(L!)
    guard let engine = LuaModules.engine(lua), let provider = engine.configuration.statistics else {
        lua.pushNil()
        return 1
    }
    let groups = provider()
    func pushGroup(_ counters: [(String, Int)]) {
        lua.newTable(recordCapacity: Int32(clamping: counters.count))
        for (name, value) in counters {
            lua.push(value)
            lua.rawSet(-2, name)
        }
    }
    if let name = lua.toString(at: 1) {
        guard let counters = groups[name] else { lua.pushNil(); return 1 }
        pushGroup(counters)
    } else {
        lua.newTable()
        for (name, counters) in groups {
            pushGroup(counters)
            lua.rawSet(-2, name)
        }
    }
    return 1
}

/// The Lua 5.1 source rewrite (`Lua51Source`) for the module searcher: the rewritten source, or
/// nil when there is nothing to rewrite.
private let lua51Rewrite: LuaFunction = { L in
    let lua = Lua(L!)
    guard let rewritten = lua.withBytes(at: 1, { Lua51Source.rewrite(Array($0)) }) ?? nil else {
        lua.pushNil()
        return 1
    }
    lua.push(byteArray: rewritten)
    return 1
}

/// `chassis.get_connections()`: an array of tables (id, client, state, seconds, backend, user, db,
/// client_tls, backend_tls, client_compression, backend_compression), nil where nobody keeps one.
private let chassisConnections: LuaFunction = { L in
    let lua = Lua(L!)
    return pushRows(lua, LuaModules.engine(lua)?.configuration.connections?())
}

/// `chassis.get_accounts()`: an array of tables (user, host, plugin, locked, password_expired,
/// require) in the order the servers search them; nil until the proxy has read them.
private let chassisAccounts: LuaFunction = { L in
    let lua = Lua(L!)
    return pushRows(lua, LuaModules.engine(lua)?.configuration.accounts?())
}

/// `chassis.get_pool()`: the core pool's connections (backend_ndx, user, db, idle, resetting) by
/// login; nil without a pool.
private let chassisPool: LuaFunction = { L in
    let lua = Lua(L!)
    return pushRows(lua, LuaModules.engine(lua)?.configuration.pool?())
}

/// Rows of name/value pairs as an array of tables; nil for none kept.
private func pushRows(_ lua: Lua, _ rows: [[(String, String)]]?) -> Int32 {
    guard let rows else {
        lua.pushNil()
        return 1
    }
    lua.newTable(arrayCapacity: Int32(clamping: rows.count))
    for (i, row) in rows.enumerated() {
        lua.newTable(recordCapacity: Int32(clamping: row.count))
        for (name, value) in row {
            lua.push(value)
            lua.rawSet(-2, name)
        }
        lua.rawSet(-2, i + 1)
    }
    return 1
}

/// `chassis.drain_backend(ndx, seconds)`: new sessions avoid backend `ndx` (from 1), multiplexed
/// ones move off it between commands, and those still there after `seconds` are closed; true
/// when there is such a backend.
private let chassisDrainBackend: LuaFunction = { L in
    let lua = Lua(L!)
    let index = lua.toInteger(at: 1) ?? 0
    let seconds = lua.toNumber(at: 2) ?? 60
    let done = seconds.isFinite && seconds >= 0 && seconds <= 86_400
        && (LuaModules.engine(lua)?.configuration.drainBackend?(index - 1, seconds, true) ?? false)
    lua.push(done)
    return 1
}

/// `chassis.undrain_backend(ndx)`: backend `ndx` takes sessions again.
private let chassisUndrainBackend: LuaFunction = { L in
    let lua = Lua(L!)
    let index = lua.toInteger(at: 1) ?? 0
    lua.push(LuaModules.engine(lua)?.configuration.drainBackend?(index - 1, 0, false) ?? false)
    return 1
}

/// `chassis.migrate_connection(id, ndx)`: the multiplexed session `id` (the admin interface's
/// connection id) moves to backend `ndx` (from 1) between commands and stays there; true, or
/// false and why not.
private let chassisMigrateConnection: LuaFunction = { L in
    let lua = Lua(L!)
    let id = lua.toInteger(at: 1) ?? 0
    let index = lua.toInteger(at: 2) ?? 0
    guard id > 0, let migrate = LuaModules.engine(lua)?.configuration.migrateConnection else {
        lua.push(false)
        lua.push("no such connection")
        return 2
    }
    if let refusal = migrate(UInt64(id), index - 1) {
        lua.push(false)
        lua.push(refusal)
        return 2
    }
    lua.push(true)
    return 1
}

private let chassisSetShutdown: LuaFunction = { L in
    let lua = Lua(L!)
    if let engine = LuaModules.engine(lua) {
        if let shutdown = engine.configuration.shutdownRequest {
            engine.logger.notice("the Lua script asked the proxy to shut down")
            shutdown()
        } else {
            engine.logger.warning("the Lua script called chassis.set_shutdown(); this proxy cannot be stopped from a script")
        }
    }
    return 0
}
