import MySQLWire
import NIOCore

/// What the machine asks of its handler, one effect each, and what the handler tells it back
/// after a script's hook. All values: a test compares them with `==`.
extension ConnectionMachine {
    /// How loud a line for the log is (the handler maps it onto its logger's levels).
    public enum Severity: Int, Comparable, Sendable {
        case debug, info, warning, error, critical
        public static func < (a: Severity, b: Severity) -> Bool { a.rawValue < b.rawValue }
    }

    public enum Action: Equatable, Sendable {
        /// Nothing to do (more may come through `nextAction()`).
        case none
        /// The relay: what the client sent goes to the server as it is, flushed with the end of
        /// the client's read cycle.
        case forwardToBackend(ByteBuffer)
        /// The relay: what the server sent goes to the client as it is, flushed with the end of
        /// the server's read cycle.
        case forwardToClient(ByteBuffer)
        /// The plain relay's forwards when they are all an event made (the relay's usual case),
        /// with what it counted: nothing follows them, the handler need not ask `nextAction()`.
        case relayToBackend(ByteBuffer, Counts)
        case relayToClient(ByteBuffer, Counts)
        /// Bytes for the client, flushed with the end of the server's read cycle and never before:
        /// a hook runs behind them, before the client sees them.
        case queueToClient(ByteBuffer)
        /// The relay: what the server sent goes to the client as it is although the response
        /// tracker could not follow it; `warning` says why (it picks up at the next command).
        case forwardToClientUnderstoodNot(ByteBuffer, warning: String)
        /// Bytes the proxy made or rearranged, for the client, the server or both (client first),
        /// written and flushed at once.
        case write(toClient: ByteBuffer?, toBackend: ByteBuffer?)
        /// Open a server connection; `preferred` is the backend a script chose (0-based), if any.
        case connectToBackend(preferred: Int?)
        /// The client asked for TLS: the handshake runs on its link, with `leftover` (what came
        /// behind the SSLRequest) fed to it first.
        case startClientTLS(leftover: ByteBuffer)
        /// Write `sslRequest` to the server in plaintext, then turn its link to TLS: what is
        /// written after it goes through TLS.
        case startBackendTLS(sslRequest: ByteBuffer)
        /// The login ended with its OK: from now on the named links speak the compressed
        /// protocol. `early` is what the server sent behind its OK, compressed already.
        case startCompression(client: ProtocolCompression?, backend: ProtocolCompression?, early: ByteBuffer?)
        /// Close the server connection, not the client's (the script answered in its place).
        case dropBackend
        /// The server connected to answered with its greeting (or an ERR in its place): it is up.
        case backendGreeted
        /// The client's first login went through: the session is open.
        case loginSucceeded
        /// Read from the client, or stop reading (a graceful shutdown takes no new command;
        /// scripted commands pile up; a hook runs). Reads go on at first.
        case readFromClient(Bool)
        /// Verify a client's login against the servers' accounts (`--proxy-auth=proxy`); the
        /// handler answers with `loginVerified(_:)`.
        case verifyLogin(LoginAttempt)
        /// The client quit and its server connection, logged in by the proxy and idle, goes to
        /// the pool (the close follows): the handler lets go of it without closing it.
        case releaseBackend
        /// The server connection's session is reset (COM_RESET_CONNECTION, whose answer the
        /// handler reads): a COM_CHANGE_USER the proxy refused leaves the session so.
        case resetBackendSession
        /// Multiplexing: the session gives its idle server connection up (another session
        /// needs one); the handler lets go of it without closing it, and keeps the client.
        case parkBackend
        /// Multiplexing: a command waits for a server connection; the handler answers with
        /// `multiplexedServerAttached(previous:own:)` or `multiplexedServerUnavailable(_:reason:)`.
        case takeBackend
        /// Run a hook of the script; the handler answers with `hookReturned(_:)`.
        case runHook(HookCall)
        /// A line for the connection's log.
        case log(Severity, String)
        /// What the machine counted since the last report, for the loop's statistics; with
        /// `recordsFinished`, commands ended: their records wait in `finishedRecords`.
        case report(Counts, recordsFinished: Bool)
        /// The connection ends.
        case close(Close)
    }

    /// How a connection ends: one description for every way.
    public struct Close: Equatable, Sendable {
        public enum Mode: Equatable, Sendable {
            /// `toClient` (if any) goes out first; then both sides close, the client's after a
            /// short linger so that its last packet is not destroyed by a reset.
            case afterFlush
            /// Both sides close now: nothing can follow on the wire (the middle of a packet).
            case abort
        }

        public var mode: Mode
        /// The last bytes for the client: the proxy's ERR, or what the server said last.
        public var toClient: ByteBuffer?
        /// Why, for the log (nil: an ordinary end, not logged).
        public var reason: String?
        public var level: Severity

        public init(mode: Mode, toClient: ByteBuffer? = nil, reason: String?, level: Severity) {
            self.mode = mode
            self.toClient = toClient
            self.reason = reason
            self.level = level
        }
    }

    /// A hook to run, and what the script sees while it runs.
    public struct HookCall: Equatable, Sendable {
        public enum Hook: Equatable, Sendable {
            case connectServer
            case readHandshake
            case readAuth
            /// The server's verdict on the login (an OK or ERR payload).
            case readAuthResult(packet: ByteBuffer)
            /// A client's command, whole.
            case readQuery(packet: ByteBuffer)
            /// An injected query's result (out of line: it is large, and most hooks are not this one).
            indirect case readQueryResult(InjectionOutcome)
        }

        public var hook: Hook
        /// The client is logged in (so `backend_ndx` moves server connections through the pool).
        public var loggedIn: Bool
        /// The server connection could go to the pool now: logged in, nothing on its way.
        public var serverIdle: Bool
        /// The session's status flags as of the last OK or EOF.
        public var status: ServerStatus
        /// `proxy.queries` as the hook starts (for `read_query_result`, what is still to send).
        public var queries: [Injection]
    }

    /// What a hook left behind, as the handler reports it once it has applied the script's
    /// changes to the connection.
    public struct HookResult: Equatable, Sendable {
        public var outcome: HookOutcome
        /// `proxy.queries` as the hook left it.
        public var queries: [Injection]
        /// `proxy.connection.connection_close` was set.
        public var closeRequested: Bool
        /// What the handler did to the server connection because of `backend_ndx`.
        public var serverChange: ServerChange?
        /// `connect_server`'s choice of backend (0-based), if it made one.
        public var backendChoice: Int?

        public init(outcome: HookOutcome, queries: [Injection] = [], closeRequested: Bool = false,
                    serverChange: ServerChange? = nil, backendChoice: Int? = nil) {
            self.outcome = outcome
            self.queries = queries
            self.closeRequested = closeRequested
            self.serverChange = serverChange
            self.backendChoice = backendChoice
        }

        /// The script does not define the hook (or runs none).
        public static let notDefined = HookResult(outcome: .notDefined)

        var decision: HookDecision {
            if case .returned(let decision) = outcome { return decision }
            return .noDecision
        }
    }

    /// What happened to the server connection while a hook ran.
    public enum ServerChange: Equatable, Sendable {
        /// Given back to the pool (`backend_ndx = 0`): no server connection now.
        case released
        /// Another connection of the pool, logged in already, is in use now.
        case replaced(status: ServerStatus)
        /// `proxy.connection:migrate(n)`: a connection of the session's login on another backend
        /// is in use now, to be brought to the session's state. `previous`: the state another
        /// session left it in (nil: reset, or new).
        case migrated(previous: SessionState?)
    }

    /// What the machine counted, for the handler to add to the loop's statistics (and reset).
    public struct Counts: Equatable, Sendable {
        // 32 bits each: they count one connection's events between two looks of its handler
        public var commands: UInt32 = 0
        public var queries: UInt32 = 0
        public var errorsSentByProxy: UInt32 = 0
        public var clientProtocolErrors: UInt32 = 0
        public var backendProtocolErrors: UInt32 = 0
        public var backendsLost: UInt32 = 0
        /// Binary prepared statements prepared again on another server connection (+Statements).
        public var statementsPreparedAgain: UInt32 = 0

        public init() {}

        public var isEmpty: Bool {
            commands == 0 && queries == 0 && errorsSentByProxy == 0 && clientProtocolErrors == 0
                && backendProtocolErrors == 0 && backendsLost == 0 && statementsPreparedAgain == 0
        }

        public mutating func add(_ other: Counts) {
            commands &+= other.commands
            queries &+= other.queries
            errorsSentByProxy &+= other.errorsSentByProxy
            clientProtocolErrors &+= other.clientProtocolErrors
            backendProtocolErrors &+= other.backendProtocolErrors
            backendsLost &+= other.backendsLost
            statementsPreparedAgain &+= other.statementsPreparedAgain
        }
    }
}

/// An injected query's result, as `read_query_result(inj)` sees it (`InjectionResult` in the
/// scripting module wraps it for Lua).
public struct InjectionOutcome: Equatable, Sendable {
    public var injection: Injection
    /// The response's packets were kept (`resultset_is_needed`).
    public var buffered: Bool
    /// Payloads of the response, in order (buffered results only).
    public var packets: [ByteBuffer] = []
    /// Monotonic microseconds (the handler's clock, as the events came).
    public var firstPacketAt: UInt64 = 0
    public var lastPacketAt: UInt64 = 0
    public var bytes = 0
    public var rows = 0
    public var wasResultSet = false
    public var serverStatus: UInt16 = 0
    public var warnings: UInt16 = 0
    public var affectedRows: UInt64 = 0
    public var insertID: UInt64 = 0
    /// MYSQLD_PACKET_OK or MYSQLD_PACKET_ERR; nil until known.
    public var queryStatus: UInt8?
    public var errorCode: UInt16 = 0
    public var capabilities: CapabilityFlags

    public init(injection: Injection, buffered: Bool, capabilities: CapabilityFlags) {
        self.injection = injection
        self.buffered = buffered
        self.capabilities = capabilities
    }
}
