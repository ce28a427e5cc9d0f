#if canImport(Glibc)
import Glibc
#endif
import LuaVM
import Logging
import MySQLWire
import NIOConcurrencyHelpers
import NIOCore

/// One Lua state for the whole proxy, as in MySQL Proxy: every connection runs the script in its
/// own environment (its globals are its own; names it does not set fall through to the shared
/// globals), and `proxy.global` is one table shared by all of them. Lua runs under a lock, so
/// hooks on different event loops take turns; a hook runs to completion without waiting on I/O.
///
/// The script file is checked (mtime and size) whenever a connection starts: an edited script is
/// compiled once and new connections get it, while existing ones keep the version they started
/// with. A broken edit is logged with its file and line and the last good version keeps serving.
public final class ScriptEngine: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// The script file (`--proxy-lua-script`), or
        public var scriptPath: String?
        /// the script's text, for programs embedding the proxy.
        public var scriptSource: String?
        /// `package.path` and `package.cpath` (`--lua-path`, `--lua-cpath`, LUA_PATH, LUA_CPATH).
        public var luaPath: String?
        public var luaCPath: String?
        /// A directory of Lua modules searched first (`dir/?.lua`, `dir/?/init.lua`, `dir/?.so`).
        public var libraryDirectory: String?
        /// `--proxy-auto-config-dir`: where proxy.auto-config's SAVE and LOAD may write and read,
        /// by file name only (nil: they are refused).
        public var autoConfigDirectory: String?
        /// `proxy.global.config`.
        public var config: [String: ScriptValue] = [:]
        /// Largest result an injected query with `resultset_is_needed = true` may buffer.
        public var resultsetBufferLimit: Int = 64 << 20
        /// The most the Lua state may hold, in bytes (0: no limit), and how long one hook (or a
        /// connection's run of the script's top level) may take, in seconds (0: no limit).
        public var memoryLimit: Int = 256 << 20
        public var timeout: Double = 1
        /// What `chassis.get_stats()` reports: counters by group ("proxy", ...).
        public var statistics: (@Sendable () -> [String: [(String, Int)]])?
        /// What `chassis.get_connections()` lists: one row of name/value pairs per client connection.
        public var connections: (@Sendable () -> [[(String, String)]])?
        /// What `chassis.get_accounts()` lists: the servers' accounts as the proxy read them.
        public var accounts: (@Sendable () -> [[(String, String)]])?
        /// What `chassis.get_pool()` lists: the core pool's connections by login.
        public var pool: (@Sendable () -> [[(String, String)]])?
        /// What `chassis.drain_backend(ndx, seconds)` and `chassis.undrain_backend(ndx)` do
        /// (backend index from 0, seconds, true to drain); false for no such backend.
        public var drainBackend: (@Sendable (Int, Double, Bool) -> Bool)?
        /// What `chassis.migrate_connection(id, ndx)` does (backend index from 0): nil when the
        /// session moves, else why not.
        public var migrateConnection: (@Sendable (UInt64, Int) -> String?)?
        /// What `chassis.set_shutdown()` does; without it the call is logged and ignored.
        public var shutdownRequest: (@Sendable () -> Void)?
        /// Lua code run in each connection's environment before the script (the admin interface
        /// defines its login hooks this way).
        public var prelude: String?

        public init(scriptPath: String? = nil, scriptSource: String? = nil) {
            self.scriptPath = scriptPath
            self.scriptSource = scriptSource
        }

        var scriptName: String { scriptPath ?? "(inline script)" }
    }

    struct Compiled {
        var bytecode: [UInt8]
        var mtime: timespec
        var size: Int
        var version: Int
    }

    public let configuration: Configuration
    let logger: Logger
    let backends: ScriptBackendsHost?
    private let lock = NIOLock()
    private let state: LuaState
    private var compiled: Compiled?
    private var versions = 0
    private var lastLoadError: String?
    private var reloadsLoaded = 0
    private var reloadsFailed = 0
    /// `configuration.prelude`, compiled.
    private(set) var preludeBytecode: [UInt8]?

    // registry references made at start-up
    private(set) var proxyMetatableRef: Int32 = Lua.noReference
    private(set) var environmentMetatableRef: Int32 = Lua.noReference
    private(set) var fieldsMetatableRef: Int32 = Lua.noReference

    /// Strings the hot path uses as table keys, kept in the registry so that pushing one is an
    /// array read rather than hashing and interning the text again on every hook.
    struct Keys {
        var index = Lua.noReference
        var newindex = Lua.noReference
        var response = Lua.noReference
        var hints = Lua.noReference
        /// `response` and `hints`, and `response` alone: what `read_query` clears.
        var responseAndHints: [Int32] = []
        var responseOnly: [Int32] = []
        /// The hook names, in `ConnectionScript.Hooks.names` order.
        var hooks: [Int32] = []
    }
    private(set) var keys = Keys()
    /// The connection `_G.proxy` currently points at (see `makeCurrent`).
    private var currentFieldsRef: Int32 = Lua.noReference
    /// The connection whose hook (or top-level code) runs now, under the lock; nil between hooks.
    /// A connection's Lua objects work only while it is the running one: stored in
    /// `proxy.global` and used from another connection's hook, they raise an error instead of
    /// reaching a connection on another event loop.
    private(set) var running: ConnectionScript?
    /// Where the traceback handler sits, at the bottom of the stack for good.
    static let tracebackHandlerIndex: Int32 = 1

    public init(configuration: Configuration, backends: ScriptBackendsHost?, logger: Logger) {
        self.configuration = configuration
        self.backends = backends
        self.logger = logger
        self.state = LuaState(memoryLimit: configuration.memoryLimit, timeout: configuration.timeout)
        lock.withLock {
            bootstrap()
            _ = refreshLocked()
        }
    }

    /// Whether a usable version of the script is loaded (after checking the file again).
    public var isLoaded: Bool { lock.withLock { refreshLocked() != nil } }

    /// Why the script could not be loaded, if it never could.
    public var loadError: String? { lock.withLock { compiled == nil ? lastLoadError : nil } }

    /// Edits of the script picked up, and edits that did not load (the previous version stayed).
    public var reloads: (loaded: Int, failed: Int) { lock.withLock { (reloadsLoaded, reloadsFailed) } }

    /// Bytes the Lua state holds.
    public var memoryInUse: Int { lock.withLock { state.memoryInUse } }

    /// Changes the state's limits (tests drive the bindings under limits set after start-up).
    func setLimits(memory: Int? = nil, timeout: Double? = nil) {
        lock.withLock {
            if let memory { state.memoryLimit = memory }
            if let timeout { state.timeout = timeout }
        }
    }

    /// Runs `body` with the Lua state, under the engine's lock.
    func withLua<R>(_ body: (Lua) throws -> R) rethrows -> R {
        try lock.withLock {
            let lua = state.lua
            let top = lua.top
            defer {
                if lua.top != top {
                    logger.error("Lua stack out of balance (\(lua.top) instead of \(top)); resetting it")
                    lua.setTop(top)
                }
            }
            return try body(lua)
        }
    }

    // MARK: start-up

    private func bootstrap() {
        let lua = state.lua
        lua.pushTracebackHandler()  // stays at index 1: every hook's pcall uses it
        func keyRef(_ text: String) -> Int32 {
            lua.push(text)
            return lua.ref()
        }
        keys.index = keyRef("__index")
        keys.newindex = keyRef("__newindex")
        keys.response = keyRef("response")
        keys.hints = keyRef("hints")
        keys.responseAndHints = [keys.response, keys.hints]
        keys.responseOnly = [keys.response]
        keys.hooks = ConnectionScript.Hooks.names.map { keyRef($0.1) }
        do throws(LuaError) {
            try run(LuaBootstrap.compatibility, name: "=(moonproxy compatibility)", lua)
            if configuration.luaCPath != nil { state.allowCModules() }
            setPackagePaths(lua)

            // _G.proxy: constants, proxy.global, and a metatable pointed at the calling connection.
            lua.newTable()
            let proxy = lua.absolute(-1)
            ScriptConstants.install(into: proxy, lua)
            lua.newTable()                                        // proxy.global
            ScriptConstants.push(.table(configuration.config), lua)
            lua.rawSet(-2, "config")
            if let backends {
                BackendsBinding.push(backends, lua)
                lua.rawSet(-2, "backends")
            }
            lua.rawSet(proxy, "global")
            lua.newTable()                                        // its metatable
            lua.pushValue(at: -1)
            proxyMetatableRef = lua.ref()
            lua.setMetatable(proxy)
            lua.pushGlobalTable()
            lua.insert(at: -2)
            lua.rawSet(-2, "proxy")
            lua.pop()

            // Each connection's environment falls back to the shared globals.
            lua.newTable()
            lua.pushGlobalTable()
            lua.rawSet(-2, "__index")
            environmentMetatableRef = lua.ref()

            try lua.load(LuaBootstrap.connectionFieldsMetatable, name: "=(moonproxy fields)")
            try lua.pcall(arguments: 0, results: 1)
            fieldsMetatableRef = lua.ref()

            ConnectionBinding.registerMetatables(lua)
            InjectionBinding.registerMetatables(lua)
            try LuaModules.install(lua, engine: self)
            if let prelude = configuration.prelude {
                try lua.load(prelude, name: "=(moonproxy prelude)")
                preludeBytecode = try lua.dumpFunction()
                lua.pop()
            }
        } catch {
            logger.critical("cannot set up the Lua environment: \(error)")
        }
    }

    private func run(_ code: String, name: String, _ lua: Lua) throws(LuaError) {
        try lua.load(code, name: name)
        try lua.pcall(arguments: 0, results: 0)
    }

    private func setPackagePaths(_ lua: Lua) {
        lua.pushGlobalTable()
        guard lua.rawGet(-1, "package") == .table else { lua.pop(2); return }
        for (key, value) in [("path", configuration.luaPath), ("cpath", configuration.luaCPath)] {
            guard let value else { continue }
            // ";;" stands for the default path, as in LUA_PATH.
            lua.rawGet(-1, key)
            let defaultPath = lua.toString(at: -1) ?? ""
            lua.pop()
            lua.push(value.replacingDoubleSemicolon(with: ";" + defaultPath + ";"))
            lua.rawSet(-2, key)
        }
        if let dir = configuration.libraryDirectory, !dir.isEmpty {
            let base = dir.hasSuffix("/") ? String(dir.dropLast()) : dir
            for (key, patterns) in [("path", "\(base)/?.lua;\(base)/?/init.lua;"), ("cpath", "\(base)/?.so;")] {
                lua.rawGet(-1, key)
                let current = lua.toString(at: -1) ?? ""
                lua.pop()
                lua.push(patterns + current)
                lua.rawSet(-2, key)
            }
        }
        lua.pop(2)
    }

    // MARK: the script file

    /// Loads the script if it is new or changed; returns the version to use.
    private func refreshLocked() -> Compiled? {
        if let source = configuration.scriptSource {
            if compiled == nil { compile(Array(source.utf8), name: "=(inline script)", mtime: timespec(), size: source.utf8.count) }
            return compiled
        }
        guard let path = configuration.scriptPath else { return nil }
        var info = stat()
        guard stat(path, &info) == 0 else {
            let message = "cannot stat the Lua script \(path): \(String(cString: strerror(errno)))"
            if message != lastLoadError { logger.critical("\(message)") }
            lastLoadError = message
            return compiled
        }
        if let c = compiled, c.mtime.tv_sec == info.st_mtim.tv_sec, c.mtime.tv_nsec == info.st_mtim.tv_nsec, c.size == Int(info.st_size) {
            return c
        }
        guard let bytes = readWholeFile(path) else {
            lastLoadError = "cannot read the Lua script \(path): \(String(cString: strerror(errno)))"
            logger.critical("\(lastLoadError!)")
            return compiled
        }
        compile(bytes, name: "@" + path, mtime: info.st_mtim, size: Int(info.st_size))
        return compiled
    }

    private func compile(_ original: [UInt8], name: String, mtime: timespec, size: Int) {
        let lua = state.lua
        // Lua 5.1 source (MySQL Proxy's) with escapes 5.4 refuses: made literal, as 5.1 read them
        let bytes = Lua51Source.rewrite(original) ?? original
        do throws(LuaError) {
            let loaded: Result<Void, LuaError> = bytes.withUnsafeBytes { raw in
                do throws(LuaError) {
                    try lua.load(raw, name: name, mode: "t")
                    return .success(())
                } catch {
                    return .failure(error)
                }
            }
            try loaded.get()
            let bytecode = try lua.dumpFunction()
            versions += 1
            let reloaded = compiled != nil
            compiled = Compiled(bytecode: bytecode, mtime: mtime, size: size, version: versions)
            lastLoadError = nil
            if reloaded {
                reloadsLoaded += 1
                logger.notice("reloaded the Lua script \(configuration.scriptName); new connections use it")
            } else {
                logger.info("loaded the Lua script \(configuration.scriptName)")
            }
        } catch {
            // keep the last good version; remember the size and time so the same broken file is
            // reported once, not on every connection
            if var c = compiled {
                reloadsFailed += 1
                c.mtime = mtime
                c.size = size
                compiled = c
                logger.error("the edited Lua script does not load, still serving the previous version: \(error.message)")
            } else {
                logger.critical("the Lua script does not load: \(error.message)")
            }
            lastLoadError = error.message
        }
    }

    // MARK: connections

    public enum StartFailure: Error, Equatable, Sendable {
        /// No version of the script ever loaded.
        case loadFailed
        /// The script's top-level code failed for this connection.
        case executeFailed(String)
    }

    /// Prepares the script for a new connection: its own environment, the script's top-level code
    /// run in it, and the hooks it defines.
    public func startConnection(host: ScriptConnectionHost) -> Result<ConnectionScript, StartFailure> {
        withLua { lua in
            guard let script = refreshLocked() else { return .failure(.loadFailed) }
            let connection = ConnectionScript(engine: self, host: host)
            do throws(LuaError) {
                try connection.setUp(lua, bytecode: script.bytecode, scriptName: configuration.scriptName)
                return .success(connection)
            } catch {
                logger.critical("(lua-error) [\(configuration.scriptName)] \(error.message)")
                connection.releaseLocked(lua)
                return .failure(.executeFailed(error.message))
            }
        }
    }

    /// Runs `body` with `script` as the running connection.
    func running<R, E: Error>(_ script: ConnectionScript, _ body: () throws(E) -> R) throws(E) -> R {
        let outer = running
        running = script
        defer { running = outer }
        return try body()
    }

    /// What to tell a client whose hook was aborted by the state's limits; nil for other errors.
    func limitMessage(_ error: LuaError) -> String? {
        switch error.kind {
        case .timeLimit:
            return "it ran for longer than the Lua time limit (\(configuration.timeout) s, --proxy-lua-timeout)"
        case .memoryLimit:
            return "it needed more memory than the Lua memory limit allows (\(configuration.memoryLimit) bytes, --proxy-lua-memory-limit)"
        default:
            return nil
        }
    }

    /// Points `_G.proxy`'s per-connection fields at the connection whose hook is about to run.
    func makeCurrent(fieldsRef: Int32, _ lua: Lua) {
        guard fieldsRef != currentFieldsRef else { return }
        currentFieldsRef = fieldsRef
        lua.push(reference: proxyMetatableRef)
        let metatable = lua.top
        lua.push(reference: keys.index)
        lua.push(reference: fieldsRef)
        lua.rawSetPair(metatable)
        lua.push(reference: keys.newindex)
        lua.push(reference: fieldsRef)
        lua.rawSetPair(metatable)
        lua.pop()
    }

    /// A connection's fields table is going away (its reference may be handed out again).
    func forget(fieldsRef: Int32) {
        if fieldsRef == currentFieldsRef { currentFieldsRef = Lua.noReference }
    }
}

extension String {
    fileprivate func replacingDoubleSemicolon(with replacement: String) -> String {
        let chars = Array(self)
        for i in 0..<max(0, chars.count - 1) where chars[i] == ";" && chars[i + 1] == ";" {
            return String(chars[..<i]) + replacement + String(chars[(i + 2)...])
        }
        return self
    }
}
