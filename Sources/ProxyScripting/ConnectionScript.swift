#if canImport(Glibc)
import Glibc
#endif
import LuaVM
import Logging
import MySQLWire
import NIOCore
import ProxyCore

/// What happened when the proxy called a hook.

/// The script as one connection runs it: its environment, its `proxy.connection`, `proxy.queries`
/// and `proxy.response`, and the hooks it defines. Every method is called on the connection's
/// event loop and runs the hook to completion.
public final class ConnectionScript {
    public typealias Hooks = ScriptHooks


    let engine: ScriptEngine
    /// The connection, which owns this script: a strong reference, the cycle broken by `close()`,
    /// which the host calls before it goes (not `weak`: a weak reference gives its target a side
    /// table, and every retain and release of it then takes the slow path, on every hook).
    var host: ScriptConnectionHost?
    /// The hooks the script defined when the connection started.
    public private(set) var hooks: Hooks = []
    /// `proxy.queries`.
    public var queries: [Injection] = []
    private var environmentRef = Lua.noReference
    private var fieldsRef = Lua.noReference
    private var closed = false
    /// What the Lua userdata hold: a weak way back here, so that Lua never keeps this alive.
    let box: ConnectionBox

    init(engine: ScriptEngine, host: ScriptConnectionHost) {
        self.engine = engine
        self.host = host
        self.box = ConnectionBox()
        box.script = self
    }

    deinit {
        close()
    }

    var logger: Logger { engine.logger }

    /// Monotonic microseconds, for query and response times: the clock the handler stamps the
    /// machine's events with (NIO's), in the unit MySQL Proxy's scripts read.
    public static func now() -> UInt64 {
        NIODeadline.now().uptimeNanoseconds / 1000
    }

    // MARK: setting up

    func setUp(_ lua: Lua, bytecode: [UInt8], scriptName: String) throws(LuaError) {
        // environment: { } falling back to _G
        lua.newTable()
        lua.push(reference: engine.environmentMetatableRef)
        lua.setMetatable(-2)
        environmentRef = lua.ref()

        // this connection's proxy fields: connection, queries, and lazily response and hints
        lua.newTable()
        ConnectionBinding.pushConnection(box, lua)
        lua.rawSet(-2, "connection")
        ConnectionBinding.pushQueries(box, lua)
        lua.rawSet(-2, "queries")
        lua.push(reference: engine.fieldsMetatableRef)
        lua.setMetatable(-2)
        fieldsRef = lua.ref()

        // the prelude (if any), then the script, with this environment as their _ENV
        if let prelude = engine.preludeBytecode {
            try Self.load(prelude, name: "=(prelude)", lua)
            lua.push(reference: environmentRef)
            if lua.setUpvalue(of: -2, 1) == nil { lua.pop() }
            engine.makeCurrent(fieldsRef: fieldsRef, lua)
            try engine.running(self) { () throws(LuaError) in try lua.pcall(arguments: 0, results: 0) }
        }
        try Self.load(bytecode, name: scriptName, lua)
        lua.push(reference: environmentRef)
        if lua.setUpvalue(of: -2, 1) == nil { lua.pop() }
        engine.makeCurrent(fieldsRef: fieldsRef, lua)
        try engine.running(self) { () throws(LuaError) in try lua.pcall(arguments: 0, results: 0) }

        let keys = engine.keys.hooks
        for (position, (hook, _)) in Hooks.names.enumerated() where pushHook(keyRef: keys[position], lua) {
            lua.pop()
            hooks.insert(hook)
        }
    }

    static func load(_ bytes: [UInt8], name: String, _ lua: Lua) throws(LuaError) {
        let result: Result<Void, LuaError> = bytes.withUnsafeBytes { raw in
            do throws(LuaError) {
                try lua.load(raw, name: name, mode: "b")
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try result.get()
    }

    /// Pushes the hook function (from the environment, else the shared globals) and returns true,
    /// or pushes nothing and returns false; the name comes from the registry, already interned.
    private func pushHook(keyRef: Int32, _ lua: Lua) -> Bool {
        lua.pushFunction(key: keyRef, inTableOrGlobals: environmentRef)
    }

    /// Releases this connection's Lua objects (after `disconnect_client`).
    public func close() {
        guard !closed else { return }
        engine.withLua { releaseLocked($0) }
    }

    func releaseLocked(_ lua: Lua) {
        guard !closed else { return }
        closed = true
        engine.forget(fieldsRef: fieldsRef)
        lua.unref(environmentRef)
        lua.unref(fieldsRef)
        box.script = nil
        host = nil
    }

    // MARK: hooks

    private static func position(of hook: Hooks) -> Int {
        hook.rawValue.trailingZeroBitCount
    }

    // `before` is not optional: an optional closure parameter escapes, so its captures would be
    // boxed on the heap for every hook call.
    private func call(_ hook: Hooks, arguments: (Lua) -> Int32 = { _ in 0 }, before: (Lua) -> Void = { _ in }) -> HookOutcome {
        guard hooks.contains(hook), !closed else { return .notDefined }
        let position = Self.position(of: hook)
        return engine.withLua { lua in
            engine.makeCurrent(fieldsRef: fieldsRef, lua)
            before(lua)
            guard pushHook(keyRef: engine.keys.hooks[position], lua) else { return .notDefined }
            let count = arguments(lua)
            do throws(LuaError) {
                try engine.running(self) { () throws(LuaError) in
                    try lua.pcall(arguments: count, results: 1, handler: ScriptEngine.tracebackHandlerIndex)
                }
            } catch {
                let name = Hooks.names[position].1
                if let limit = engine.limitMessage(error) {
                    // The proxy answers in the hook's place: that client gets an ERR, the others carry on.
                    logger.error("(\(name)) aborted: \(limit)")
                    queries.removeAll()
                    return .returned(.sendResult(.error(code: 1105, sqlState: "HY000", message: "(proxy) the script's \(name) was aborted: \(limit)")))
                }
                logger.critical("(\(name)) \(error.message)")
                return .failed(error.message)
            }
            defer { lua.pop() }
            guard let code = lua.toInteger(at: -1) else {
                if lua.type(at: -1) != .nil {
                    let name = Hooks.names[position].1
                    logger.warning("(\(name)) returned a \(lua.typeName(at: -1)), expected a proxy.PROXY_* number or nothing")
                }
                return .returned(.noDecision)
            }
            switch code {
            case ProxyReturn.noDecision: return .returned(.noDecision)
            case ProxyReturn.sendQuery: return .returned(.sendQuery)
            case ProxyReturn.ignoreResult: return .returned(.ignoreResult)
            case ProxyReturn.sendResult: return .returned(.sendResult(readResponse(lua)))
            default: return .returned(.other(code))
            }
        }
    }

    /// `proxy.response` as it is now; ERR "(lua) handling proxy.response failed" if unusable.
    private func readResponse(_ lua: Lua) -> ScriptResponse {
        lua.push(reference: fieldsRef)
        defer { lua.pop(2) }
        lua.rawGet(-1, "response")
        switch ScriptResponseDecoder.decode(lua, scriptName: engine.configuration.scriptName) {
        case .success(let response):
            return response
        case .failure(let problem):
            logger.error("\(problem)")
            return .handlingFailed
        }
    }

    public func connectServer() -> HookOutcome { call(.connectServer) }
    public func readHandshake() -> HookOutcome { call(.readHandshake) }
    public func readAuth() -> HookOutcome { call(.readAuth) }

    /// `read_auth_result(auth)`, with `auth.packet` the server's verdict (OK or ERR payload).
    public func readAuthResult(packet: ByteBuffer) -> HookOutcome {
        call(.readAuthResult, arguments: { lua in
            lua.newTable()
            lua.setField("packet", packet)
            return 1
        })
    }

    /// `read_query(packet)`: `proxy.queries` and `proxy.response` start empty, `proxy.hints`
    /// holds the query's hints.
    public func readQuery(packet: ByteBuffer, hints: [(key: String, value: String)]) -> HookOutcome {
        if !queries.isEmpty { queries.removeAll(keepingCapacity: true) }
        return call(.readQuery, arguments: { lua in
            lua.push(packet)
            return 1
        }, before: { lua in
            // Clear what the last command left.
            let keys = self.engine.keys
            if hints.isEmpty {
                lua.clearFields(keys.responseAndHints, ofTable: self.fieldsRef)
                return
            }
            lua.clearFields(keys.responseOnly, ofTable: self.fieldsRef)
            lua.push(reference: self.fieldsRef)
            let fields = lua.top
            lua.push(reference: keys.hints)
            lua.newTable(recordCapacity: Int32(hints.count))
            for (key, value) in hints {
                lua.push(value)
                lua.rawSet(-2, key)
            }
            lua.rawSetPair(fields)
            lua.pop()
        })
    }

    /// `read_query_result(inj)` for a finished injected query.
    public func readQueryResult(_ result: InjectionResult) -> HookOutcome {
        result.owner = self
        return call(.readQueryResult, arguments: { lua in
            InjectionBinding.pushInjection(result, lua)
            return 1
        })
    }

    public func disconnectClient() -> HookOutcome { call(.disconnectClient) }
}

/// The way from a connection's Lua userdata back to its script, which Lua may outlive (a script
/// may keep them in `proxy.global`): the script clears it when it closes, after which every use
/// is refused as "closed". Strong, not `weak`, for the same reason as `ConnectionScript.host`.
final class ConnectionBox {
    var script: ConnectionScript?

    /// The script, if it is the connection whose hook runs now; else the error to raise.
    var runningScript: Result<ConnectionScript, OutOfPlace> {
        guard let script else { return .failure(.closed) }
        guard script.engine.running === script else { return .failure(.anotherConnection) }
        return .success(script)
    }
}

/// Why a connection's Lua object cannot be used now.
enum OutOfPlace: Error, CustomStringConvertible {
    case closed, anotherConnection

    var description: String {
        switch self {
        case .closed: return "its connection is closed"
        case .anotherConnection: return "it belongs to another connection (objects of one connection kept in proxy.global work only in that connection's own hooks)"
        }
    }
}
