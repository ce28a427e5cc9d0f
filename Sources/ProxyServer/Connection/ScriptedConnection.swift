import Logging
import MySQLWire
import NIOCore
import ProxyCore
import ProxyScripting

/// A connection's script, and the handle its Lua side holds (`proxy.connection`). Owned by the
/// connection's handler, with no way back to it: a hook runs between two of the machine's events
/// (`run(_:)`), sees what the handler put here before it (`prepare`), and what the script asks of
/// the connection is noted here (`swap`, `requestedBackend`, `connectionCloseRequested`,
/// `notes`) for the handler to carry out once the hook has returned. After `close()` the handle
/// is dead: Lua objects that outlive the connection find no script behind it.
///
/// `backend_ndx` is the one request a script reads back at once (MySQL Proxy's scripts read
/// `proxy.connection.server` right after setting it): the pooled connection it names is taken
/// from this loop's pool while the hook runs, kept here, and attached by the handler afterwards.
final class ScriptedConnection: ScriptConnectionHost {
    var script: ConnectionScript?
    let connectionID: UInt64
    /// This event loop's pool of idle server connections, and the backends.
    let pool: ServerConnectionPool?
    let backends: BackendPool
    let resetPooledConnections: Bool
    let resultsetBufferLimit: Int

    var client = ScriptClientInfo()
    /// The server connection the handler holds, nil when there is none. It goes with the
    /// connection into the pool.
    var attached: ScriptServerInfo?
    /// The server connection as the script sees it: the one attached, or what the swap asked
    /// so far puts in its place.
    var server: ScriptServerInfo? {
        switch swap {
        case .release?: return nil
        case .take(let parked)?: return parked.server
        case nil: return attached
        }
    }
    /// The backend in use (0-based), as the handler says before each hook.
    var currentBackend: Int?
    /// The backend `connect_server` asked for (0-based).
    var requestedBackend: Int?
    private(set) var connectionCloseRequested = false

    /// As of the hook that runs.
    private(set) var loggedIn = false
    private(set) var serverIdle = false
    private(set) var serverStatus: ServerStatus = .autocommit
    /// The capabilities of the session that matter to pooled connections (part of their key).
    var capabilities: CapabilityFlags = []

    /// What the script did to the server connection during the hook that ran.
    enum Swap {
        /// Give it to the pool.
        case release
        /// Use this one, taken from the pool.
        case take(ServerConnectionPool.Parked)
    }
    private(set) var swap: Swap?
    /// `proxy.connection:migrate(n)` during the hook that ran: the backend (0-based) the
    /// session moves to with its state.
    private(set) var migration: Int?
    /// The session's state as the proxy follows it, as of the hook's start (the handler's copy).
    var sessionState: SessionState?
    /// The hook that runs is `read_query` (the one place a session may migrate: between commands).
    private var inReadQuery = false
    /// Lines for the connection's log, made while the hook ran.
    private(set) var notes: [(Logger.Level, String)] = []
    /// Under proxy auth: a ready connection of this session's login to a backend from the core
    /// pool, for a `backend_ndx` the script's pool cannot serve.
    var corePooled: ((Int) -> ServerConnectionPool.Parked?)?

    init(connectionID: UInt64, pool: ServerConnectionPool?, backends: BackendPool, resetPooledConnections: Bool, resultsetBufferLimit: Int) {
        self.connectionID = connectionID
        self.pool = pool
        self.backends = backends
        self.resetPooledConnections = resetPooledConnections
        self.resultsetBufferLimit = resultsetBufferLimit
    }

    var hooks: ScriptHooks { script?.hooks ?? [] }

    /// MySQL Proxy's words when a connection's script cannot start, sent instead of a greeting.
    static let loadFailed = ERRPacket(code: 1105, sqlState: "07000", message: "MySQL Proxy Lua script failed to load. Check the error log.")
    static let executeFailed = ERRPacket(code: 1105, sqlState: "07000", message: "MySQL Proxy Lua script failed to execute. Check the error log.")

    // MARK: running hooks

    /// Runs the hook the machine asked for; the handler carries out what it left here.
    func run(_ call: ConnectionMachine.HookCall) -> HookOutcome {
        loggedIn = call.loggedIn
        serverIdle = call.serverIdle
        serverStatus = call.status
        script?.queries = call.queries
        inReadQuery = false
        switch call.hook {
        case .connectServer: return counted(.connectServer) { $0.connectServer() }
        case .readHandshake: return counted(.readHandshake) { $0.readHandshake() }
        case .readAuth: return counted(.readAuth) { $0.readAuth() }
        case .readAuthResult(let packet): return counted(.readAuthResult) { $0.readAuthResult(packet: packet) }
        case .readQuery(let packet):
            let hints = packet.getInteger(at: packet.readerIndex, as: UInt8.self) == CommandCode.query.rawValue ? ProxyHints.parse(packet) : []
            inReadQuery = true
            defer { inReadQuery = false }
            return counted(.readQuery) { $0.readQuery(packet: packet, hints: hints) }
        case .readQueryResult(let outcome):
            return counted(.readQueryResult) { $0.readQueryResult(InjectionResult(outcome)) }
        }
    }

    /// `disconnect_client()`, when the script has it: the script may give an idle server
    /// connection to the pool.
    func disconnectClient(serverIdle: Bool, status: ServerStatus) {
        guard hooks.contains(.disconnectClient) else { return }
        loggedIn = serverIdle
        self.serverIdle = serverIdle
        serverStatus = status
        _ = counted(.disconnectClient) { $0.disconnectClient() }
    }

    var queries: [Injection] { script?.queries ?? [] }

    /// Times and counts a hook (metrics), when the handler says it keeps durations.
    var counters: LoopStatistics?
    var timesHooks = false

    @inline(__always)
    private func counted(_ hook: HookKind, _ call: (ConnectionScript) -> HookOutcome) -> HookOutcome {
        guard let script else { return .notDefined }
        let start = timesHooks ? NIODeadline.now().uptimeNanoseconds : 0
        let outcome = call(script)
        if case .notDefined = outcome { return outcome }
        var failed = false
        if case .failed = outcome { failed = true }
        let elapsed = start == 0 ? nil : Int(clamping: NIODeadline.now().uptimeNanoseconds &- start)
        counters?.hookCalled(hook, nanoseconds: elapsed, failed: failed)
        return outcome
    }

    /// The last hook asked for a server swap or left notes.
    var hasRequests: Bool { swap != nil || migration != nil || !notes.isEmpty }

    /// What the hook asked of the session's state (`migrate`), once.
    func takeMigration() -> Int? {
        defer { migration = nil }
        return migration
    }

    /// What the hook asked of the server connection, once.
    func takeSwap() -> Swap? {
        defer { swap = nil }
        return swap
    }

    func takeNotes() -> [(Logger.Level, String)] {
        defer { notes.removeAll() }
        return notes
    }

    /// Releases the Lua side of the connection, and a pooled connection taken for a hook whose
    /// swap was never carried out.
    func close() {
        migration = nil
        if case .take(let parked) = swap, pool?.park(parked) != true { parked.handler.close() }
        swap = nil
        script?.close()
        script = nil
    }

    // MARK: ScriptConnectionHost

    var scriptClient: ScriptClientInfo { client }
    var scriptServer: ScriptServerInfo? { server }
    var scriptSessionState: SessionState? { sessionState }

    /// The backend in use once the swap asked so far is done.
    private var effectiveBackend: Int? {
        if let migration { return migration }
        switch swap {
        case .release?: return nil
        case .take(let parked)?: return parked.key.backend
        case nil: return currentBackend
        }
    }

    var scriptBackendIndex: Int {
        if let index = effectiveBackend { return index + 1 }
        if !loggedIn, let requestedBackend { return requestedBackend + 1 }
        return 0
    }

    /// `proxy.connection.backend_ndx = index`: before the login it picks the backend to connect
    /// to; after it, 0 gives the server connection to the pool and a backend takes an idle
    /// connection of this user from its pool (staying put when there is none, as MySQL Proxy does).
    func scriptSetBackendIndex(_ index: Int) {
        let target = index &- 1  // (a script may pass math.mininteger)
        let count = backends.count
        guard target == -1 || (0..<count).contains(target) else {
            notes.append((.warning, "proxy.connection.backend_ndx = \(index): there are only \(count) backends; ignored"))
            return
        }
        guard loggedIn else {
            requestedBackend = target >= 0 ? target : nil
            return
        }
        migration = nil  // (the last request of the hook counts)
        let current = effectiveBackend
        if current != nil && target == current { return }
        if currentBackend != nil && current == currentBackend && !serverIdle {
            notes.append((.warning, "proxy.connection.backend_ndx = \(index): a response is still on its way from the server; the connection stays where it is"))
            return
        }
        guard target >= 0 else {
            if current != nil { replaceSwap(with: currentBackend == nil ? nil : .release) }
            return
        }
        let key = ServerConnectionPool.Key(backend: target, user: client.username, capabilities: capabilities)
        guard let parked = pool?.take(key) ?? corePooled?(target) else {
            notes.append((.info, "proxy.connection.backend_ndx = \(index): no idle connection of user '\(client.username)' to that backend in the pool; staying \(current.map { "on backend \($0 + 1)" } ?? "without a server")"))
            return
        }
        if parked.session != connectionID && resetPooledConnections && !ServerConnectionPool.serverResetsSessions(parked.server.versionString) {
            notes.append((.warning, "proxy.connection.backend_ndx = \(index): the pooled connection's server (\(parked.server.versionString)) cannot reset a session (COM_RESET_CONNECTION), so it does not go to another client session; closing it (--proxy-pool-no-change-user allows it)"))
            parked.handler.close()
            return
        }
        replaceSwap(with: .take(parked))
    }

    /// `proxy.connection:migrate(index)` (see the protocol). The session must be followed, idle
    /// on the server, and hold nothing that cannot move (`session_state.pins`).
    func scriptMigrate(_ index: Int) -> String? {
        let target = index &- 1  // (a script may pass math.mininteger)
        let count = backends.count
        guard (0..<count).contains(target) else { return "there are \(count) backends; \(index) is none of them" }
        guard inReadQuery else { return "a session migrates between commands: call it in read_query()" }
        guard let state = sessionState else {
            return "the proxy does not follow this session's state (it needs --proxy-auth=proxy, --proxy-multiplex and an uncompressed server link)"
        }
        guard let current = effectiveBackend, currentBackend != nil else { return "the session has no server connection" }
        guard serverIdle else { return "a response is still on its way from the server" }
        guard state.pins.isEmpty, state.transactionCharacteristics.isEmpty else {
            let why = state.pins.isEmpty ? "transaction_characteristics" : state.pins.description
            return "the session holds state that cannot move (\(why))"
        }
        guard !backends.isUnavailable(target) else { return "backend \(index) is down" }
        if current == target && swap == nil && migration == nil { return nil }  // there already
        replaceSwap(with: nil)
        migration = target == currentBackend ? nil : target
        return nil
    }

    /// A later `backend_ndx` in the same hook replaces an earlier one; a connection taken for
    /// the earlier one goes back to the pool.
    private func replaceSwap(with new: Swap?) {
        if case .take(let earlier) = swap, pool?.park(earlier) != true { earlier.handler.close() }
        swap = new
    }

    func scriptSetConnectionClose(_ close: Bool) {
        connectionCloseRequested = close
    }
}
