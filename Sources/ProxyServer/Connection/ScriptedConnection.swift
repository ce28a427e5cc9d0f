import Logging
import MySQLWire
import NIOCore
import ProxyScripting

/// A connection's script, seen from both sides: the state machine calls its hooks through
/// `ConnectionScripting`, and the script reaches the connection through `ScriptConnectionHost`
/// (`proxy.connection`). It keeps what scripts read about the client and the server, and leaves
/// moving server connections to and from the pool to the client's handler. Lives on the
/// connection's event loop.
final class ScriptedConnection: ConnectionScripting, ScriptConnectionHost {
    /// The connection's handler, which owns this object; cleared by `close()`. Not `weak`: that
    /// would put every retain of the handler on the runtime's slow path.
    unowned(unsafe) var handler: ClientChannelHandler?
    var script: ConnectionScript?
    let resultsetBufferLimit: Int
    private(set) var connectionCloseRequested = false

    /// As of the last `prepareHook`.
    private(set) var loggedIn = false
    private(set) var serverIdle = false
    private(set) var serverStatus: ServerStatus = .autocommit
    /// The capabilities of the session that matter to pooled connections (part of their key).
    private(set) var capabilities: CapabilityFlags = []
    private var change: ServerChange?

    var client = ScriptClientInfo()
    /// The server connection in use, nil when there is none.
    var server: ScriptServerInfo?
    /// The backend `connect_server` asked for (0-based).
    var requestedBackend: Int?

    init(handler: ClientChannelHandler, resultsetBufferLimit: Int) {
        self.handler = handler
        self.resultsetBufferLimit = resultsetBufferLimit
    }

    // MARK: ConnectionScripting

    var hooks: ConnectionScript.Hooks { script?.hooks ?? [] }

    var queries: [Injection] {
        get { script?.queries ?? [] }
        set { script?.queries = newValue }
    }

    var hasQueries: Bool { !(script?.queries.isEmpty ?? true) }

    func prepareHook(loggedIn: Bool, serverIdle: Bool, status: ServerStatus) {
        self.loggedIn = loggedIn
        self.serverIdle = serverIdle
        self.serverStatus = status
    }

    func greetingReceived(_ greeting: HandshakeV10) {
        var info = ScriptServerInfo()
        info.threadID = greeting.connectionID
        info.versionString = greeting.serverVersion
        info.mysqldVersion = ScriptServerInfo.versionNumber(greeting.serverVersion)
        info.scrambleBuffer = greeting.authPluginData
        info.src = handler?.backendLocalAddress.map(ScriptAddress.init)
        info.dst = handler?.backendRemoteAddress.map(ScriptAddress.init)
        server = info
    }

    func handshakeResponseReceived(_ response: HandshakeResponse41, capabilities: CapabilityFlags) {
        client.username = response.username
        client.defaultDB = response.database ?? ""
        client.scrambledPassword = response.authResponse
        server?.username = response.username
        self.capabilities = capabilities.intersection(.sessionAffecting)
    }

    func databaseChanged(to name: String, forClient: Bool) {
        server?.defaultDB = name
        if forClient { client.defaultDB = name }
    }

    func userChanged(to username: String, database: String) {
        client.username = username
        client.defaultDB = database
        server?.defaultDB = database
    }

    func connectServer() -> HookOutcome { counted(.connectServer) { $0.connectServer() } }
    func readHandshake() -> HookOutcome { counted(.readHandshake) { $0.readHandshake() } }
    func readAuth() -> HookOutcome { counted(.readAuth) { $0.readAuth() } }
    func readAuthResult(packet: ByteBuffer) -> HookOutcome { counted(.readAuthResult) { $0.readAuthResult(packet: packet) } }

    func readQuery(packet: ByteBuffer, hints: [(key: String, value: String)]) -> HookOutcome {
        counted(.readQuery) { $0.readQuery(packet: packet, hints: hints) }
    }

    func readQueryResult(_ result: InjectionResult) -> HookOutcome { counted(.readQueryResult) { $0.readQueryResult(result) } }

    func disconnectClient() {
        _ = counted(.disconnectClient) { $0.disconnectClient() }
    }

    /// Runs a hook, counting the call (and its error) in the loop's counters, and timing it when
    /// the proxy keeps durations (metrics on).
    @inline(__always)
    private func counted(_ hook: HookKind, _ call: (ConnectionScript) -> HookOutcome) -> HookOutcome {
        guard let script else { return .notDefined }
        guard let handler else { return call(script) }
        let start = handler.timesHooks ? NIODeadline.now().uptimeNanoseconds : 0
        let outcome = call(script)
        if case .notDefined = outcome { return outcome }
        var failed = false
        if case .failed = outcome { failed = true }
        let elapsed = start == 0 ? nil : Int(clamping: NIODeadline.now().uptimeNanoseconds &- start)
        handler.counters.hookCalled(hook, nanoseconds: elapsed, failed: failed)
        return outcome
    }

    func takeServerChange() -> ServerChange? {
        defer { change = nil }
        return change
    }

    func serverChanged(_ new: ServerChange) {
        change = new
    }

    func log(_ level: Logger.Level, _ message: String) {
        handler?.log(level, "\(message)")
    }

    /// Releases the Lua side of the connection.
    func close() {
        script?.close()
        script = nil
        handler = nil
    }

    // MARK: ScriptConnectionHost

    var scriptClient: ScriptClientInfo { client }
    var scriptServer: ScriptServerInfo? { server }

    var scriptBackendIndex: Int {
        if let index = handler?.currentBackendIndex { return index + 1 }
        if !loggedIn, let requestedBackend { return requestedBackend + 1 }
        return 0
    }

    func scriptSetBackendIndex(_ index: Int) {
        handler?.scriptSelectBackend(index - 1, connection: self)
    }

    func scriptSetConnectionClose(_ close: Bool) {
        connectionCloseRequested = close
    }
}
