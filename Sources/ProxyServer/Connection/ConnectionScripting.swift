import Logging
import MySQLWire
import NIOCore
import ProxyScripting

/// The script side of a connection as the state machine sees it. The handler implements it around
/// the connection's `ConnectionScript` (the machine's tests use fakes), and does what the script
/// asks of the connection itself: `proxy.connection.backend_ndx` swaps server connections through
/// the pool right away (a script reads `proxy.connection.server` right after setting it), and the
/// machine learns of it through `takeServerChange()` once the hook has returned.
protocol ConnectionScripting: AnyObject {
    var hooks: ConnectionScript.Hooks { get }
    /// `proxy.queries`: what is left to inject for the current command.
    var queries: [Injection] { get set }
    /// Whether `queries` holds anything (without copying it out).
    var hasQueries: Bool { get }
    /// `proxy.connection.connection_close` was set.
    var connectionCloseRequested: Bool { get }
    /// Largest result an injection with `resultset_is_needed` may buffer.
    var resultsetBufferLimit: Int { get }

    /// Told before every hook: whether the client is logged in (so that `backend_ndx` may swap
    /// server connections through the pool), whether the server connection could be handed to the
    /// pool now (logged in, nothing on its way), and the session's status flags.
    func prepareHook(loggedIn: Bool, serverIdle: Bool, status: ServerStatus)
    /// The server's greeting (for `proxy.connection.server`).
    func greetingReceived(_ greeting: HandshakeV10)
    /// The client's handshake response (for `proxy.connection.client`) and the capabilities the
    /// session runs with.
    func handshakeResponseReceived(_ response: HandshakeResponse41, capabilities: CapabilityFlags)
    /// A COM_INIT_DB succeeded: on the server, and for the client too when it was the client's own.
    func databaseChanged(to name: String, forClient: Bool)
    /// A COM_CHANGE_USER succeeded: the session belongs to `username` now (pooled server
    /// connections are keyed by it).
    func userChanged(to username: String, database: String)

    func connectServer() -> HookOutcome
    func readHandshake() -> HookOutcome
    func readAuth() -> HookOutcome
    func readAuthResult(packet: ByteBuffer) -> HookOutcome
    func readQuery(packet: ByteBuffer, hints: [(key: String, value: String)]) -> HookOutcome
    func readQueryResult(_ result: InjectionResult) -> HookOutcome
    /// What happened to the server connection during the last hook, reported once.
    func takeServerChange() -> ServerChange?
    func log(_ level: Logger.Level, _ message: String)
}

enum ServerChange: Equatable {
    /// Given back to the pool (`backend_ndx = 0`): no server connection now.
    case released
    /// Another, already authenticated, connection from the pool is in use now.
    case replaced(status: ServerStatus)
}

/// The text MySQL Proxy sends when the script cannot be used.
enum ScriptFailureMessages {
    static let loadFailed = ERRPacket(code: 1105, sqlState: "07000", message: "MySQL Proxy Lua script failed to load. Check the error log.")
    static let executeFailed = ERRPacket(code: 1105, sqlState: "07000", message: "MySQL Proxy Lua script failed to execute. Check the error log.")
}
