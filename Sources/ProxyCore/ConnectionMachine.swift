import MySQLWire
import NIOCore

/// The life of one client connection and its server connection, as a value: events in, actions
/// out. It owns no socket, holds no reference to anything, reads no clock, runs no script and
/// counts nothing anywhere but in itself: its handler feeds it what happens on either socket,
/// carries out the actions it returns one by one, runs the script's hooks it asks for and answers
/// with `hookReturned(_:)`, and takes its counts and command records when it likes.
///
/// States (see docs/architecture.md for the picture):
/// `initialized` → `connecting` → `awaitingGreeting` → `awaitingHandshakeResponse` → the login
/// (`relaying` directly when nothing in it needs the proxy's care, else `authenticating`) →
/// `relaying` (no hook on the path: bytes stream through) or `exchanging` (the script takes the
/// client's commands one at a time) → `closed`. A state waiting for a hook is a state of its own
/// (`connectServerHook`, `readHandshakeHook`, `readAuthHook`, `readAuthResultHook`, and the
/// exchange's steps), carrying what the hook's answer is applied to.
///
/// What every state past the connect shares, the wire view (the response tracker, the frame
/// scanners, the command records), is a stored property rather than a payload: the relay runs
/// through it for every chunk of every query, and taking a payload out of an enum and putting it
/// back costs a retain and a release of each reference in it, every time.
public struct ConnectionMachine {
    enum State {
        case initialized
        /// `connect_server` runs.
        case connectServerHook
        /// The handler opens a server connection.
        case connecting
        /// Connected; the server's greeting is being gathered.
        case awaitingGreeting(ByteBuffer)
        /// `read_handshake` runs on the greeting, which goes to the client unless the script answers.
        case readHandshakeHook(Greeting)
        /// The greeting went to the client; its handshake response is being gathered.
        case awaitingHandshakeResponse(Handshake)
        /// `read_auth` runs on the client's handshake response.
        indirect case readAuthHook(Handshake, LoginPlan)
        /// `--proxy-auth=proxy`: the handler verifies the login (+ProxyLogin).
        indirect case verifyingLogin(LoginPlan)
        /// The client was asked to answer with another plugin; its answer is being gathered.
        indirect case awaitingSwitchAnswer(LoginPlan, ByteBuffer)
        /// The login runs packet by packet: one link is TLS and the other not, the password guard
        /// is on, compression starts with the verdict, or `read_auth_result` wants the verdict.
        indirect case authenticating(Authentication)
        /// `read_auth_result` runs on the server's verdict.
        indirect case readAuthResultHook(Authentication, Verdict)
        /// No hook on the path: bytes stream through (the login too, when it needs no care).
        /// `draining`: a shutdown waits for the running command.
        case relaying(draining: Bool)
        /// The script takes the client's commands one at a time.
        case exchanging(ExchangeBox)
        /// A command too large to take: its frames are skipped to learn the sequence id the
        /// client expects for the ERR that refuses it.
        case skippingOversized(Oversized)
        case closed
        /// Only while a payload is being changed in place (never seen outside a mutating call).
        case modifying
    }

    /// What the configuration and the listener say about this connection.
    public struct Configuration: Sendable {
        public var tls = TLSPolicy()
        public var compression = CompressionSettings()
        /// The largest packet the machine assembles where it needs one whole.
        public var maximumPacketLength = 64 << 20
        /// The hooks the connection's script defines (none without a script).
        public var hooks: ScriptHooks = []
        /// What the handler wants to know about each command.
        public var recording = Recording.off
        /// The most an injection's buffered result may hold.
        public var resultsetBufferLimit = 64 << 20
        /// A server connection the proxy logged in goes back to the handler's pool when its
        /// client quits (`.releaseBackend`), instead of being closed.
        public var poolsServers = false
        /// The proxy turns the session trackers on on the server connections it logs in itself,
        /// and follows each session's state (+Tracking).
        public var tracksSessions = false
        /// Sessions give their idle server connection up when another session needs one
        /// (+Multiplex; with `tracksSessions`).
        public var multiplexes = false

        public init() {}
    }

    /// What the connection may and must do with TLS, from the configuration and the listener.
    public struct TLSPolicy: Equatable, Sendable {
        public var offer: ClientTLSOffer = .never
        public var requireSecureTransport = false
        public var backend = BackendTLSMode.off
        /// The client came through a unix socket, which counts as secure transport.
        public var localSocket = false
        /// `--proxy-backend-server-public-key`: the key a password goes encrypted with over a
        /// plaintext server link (see +Secrets).
        public var pinnedServerKey: String?
        /// `--proxy-backend-get-server-public-key`: servers that are not verified may have passwords.
        public var trustUnverifiedBackends = false

        public init(offer: ClientTLSOffer = .never, requireSecureTransport: Bool = false, backend: BackendTLSMode = .off,
                    localSocket: Bool = false, pinnedServerKey: String? = nil, trustUnverifiedBackends: Bool = false) {
            self.offer = offer
            self.requireSecureTransport = requireSecureTransport
            self.backend = backend
            self.localSocket = localSocket
            self.pinnedServerKey = pinnedServerKey
            self.trustUnverifiedBackends = trustUnverifiedBackends
        }
    }

    /// What is known about the session, for logs, the query log and scripts.
    public struct Session: Equatable {
        /// The greeting the session started with (the server's, or the script's in a mock);
        /// let go once a connection without a script is logged in.
        public var greeting: HandshakeV10? {
            get { storedGreeting?.value }
            set { storedGreeting = newValue.map(OutOfLine.init) }
        }
        /// The client's handshake response, likewise.
        public var response: HandshakeResponse41? {
            get { storedResponse?.value }
            set { storedResponse = newValue.map(OutOfLine.init) }
        }
        // kept out of line: most connections hold them only during the login
        private var storedGreeting: OutOfLine<HandshakeV10>?
        private var storedResponse: OutOfLine<HandshakeResponse41>?
        public var username = ""
        /// The client's default database.
        public var database: String?
        /// The server connection's, when a script moved it elsewhere (an injected USE).
        public var serverDatabase: String?
        /// What the session runs with: what the client asked for and the server offered.
        public var capabilities: CapabilityFlags = []
        /// The client's link turned to TLS (after its SSLRequest).
        public var clientTLS = false
        /// The server's link turned to TLS (after the proxy's SSLRequest).
        public var backendTLS = false
        /// The server connection is a unix socket.
        public var backendIsLocal = false
        /// The capabilities the greeting the client got offered.
        public var clientOffered: CapabilityFlags = []

        public init() {}
    }

    var state: State = .initialized
    /// A login the proxy verifies itself (+ProxyLogin).
    var ownBox: OwnLoginBox?
    /// The session's state, where the proxy tracks it (+Tracking).
    var tracking: Tracking?
    /// The start of a COM_CHANGE_USER the proxy verifies, until it is whole (+ChangeUser).
    var heldChangeUser: ByteBuffer?
    /// The client sent COM_CHANGE_USER (noted where server connections are pooled: its server
    /// session may belong to another user now).
    public internal(set) var sessionChangedUser = false

    /// Which state the machine is in, without its data: what an entry point switches on before
    /// it changes the state. A `switch state` keeps a copy of the payload alive through its
    /// cases, and the exchange, changed in place, must be held by nothing else.
    enum Phase {
        case initialized, connectServerHook, connecting, awaitingGreeting, readHandshakeHook, awaitingHandshakeResponse
        case readAuthHook, verifyingLogin, awaitingSwitchAnswer, authenticating, readAuthResultHook, relaying, draining, exchanging, skippingOversized, closed, modifying
    }

    var phase: Phase {
        switch state {
        case .initialized: return .initialized
        case .connectServerHook: return .connectServerHook
        case .connecting: return .connecting
        case .awaitingGreeting: return .awaitingGreeting
        case .readHandshakeHook: return .readHandshakeHook
        case .awaitingHandshakeResponse: return .awaitingHandshakeResponse
        case .readAuthHook: return .readAuthHook
        case .verifyingLogin: return .verifyingLogin
        case .awaitingSwitchAnswer: return .awaitingSwitchAnswer
        case .authenticating: return .authenticating
        case .readAuthResultHook: return .readAuthResultHook
        case .relaying(let draining): return draining ? .draining : .relaying
        case .exchanging: return .exchanging
        case .skippingOversized: return .skippingOversized
        case .closed: return .closed
        case .modifying: return .modifying
        }
    }
    public internal(set) var session = Session() {
        didSet { sessionVersion &+= 1 }
    }
    /// Changes each time the session does: a handler that mirrors the session (for a script)
    /// copies it again only then.
    public private(set) var sessionVersion: UInt32 = 0
    /// The configuration, shared by the connections made with it.
    private let sharedConfiguration: SharedConfiguration
    public var configuration: Configuration {
        _read { yield sharedConfiguration.storage[0] }
    }

    /// A configuration made once for many connections: each machine holds 8 bytes for it (the
    /// buffer of a one-element array, never written) instead of the configuration's 96.
    public struct SharedConfiguration: Sendable {
        fileprivate let storage: [Configuration]
        public init(_ configuration: Configuration) { storage = [configuration] }
        public var configuration: Configuration { storage[0] }
    }
    /// The wire view: the conversation's responses, and where each side's packets start.
    var tracker = ResponseTracker()
    var fromClient = FrameScanner()
    var fromServer = FrameScanner()
    /// The sequence id a packet the proxy puts in front of the client must carry.
    var nextSequenceToClient: UInt8 = 0
    /// Actions made while handling an event, after the one returned (`nextAction()`): the next
    /// one, and those behind it (most events make one or two: no array is touched for them).
    var outbox = Outbox()
    /// A close is in the outbox: nothing more goes in.
    var closeQueued = false
    /// What the handler was last told about reading from the client (it reads at first), and
    /// whether it was told the login went through.
    var clientReadsReported = true
    var loginReported = false
    /// What was counted since the handler last took it.
    public internal(set) var counts = Counts()
    /// Why the connection ended, once it is ending (the first reason is the cause).
    public internal(set) var closeSource: CloseSource?

    // MARK: records (see +Records)

    /// The time of the event being handled (monotonic nanoseconds), set by the handler when it
    /// wants durations or a script times injections (`wantsTime`).
    public var now: UInt64 = 0
    /// Commands sent and not yet answered, oldest first.
    var openRecords: [CommandRecord] = []
    /// Commands answered since the handler last took them.
    public internal(set) var finishedRecords: [CommandRecord] = []

    public init(configuration: Configuration) {
        self.init(shared: SharedConfiguration(configuration))
    }

    public init(shared: SharedConfiguration) {
        self.sharedConfiguration = shared
        outbox.keepsCapacity = !shared.configuration.hooks.isEmpty
    }

    /// Whether the handler should put the time into `now` before each event.
    public var wantsTime: Bool { configuration.recording != .off || configuration.hooks.contains(.readQueryResult) }

    /// The hooks that take commands one at a time: with one of them, commands go through the
    /// exchange; without, they stream through.
    static let commandHooks: ScriptHooks = [.readQuery, .readQueryResult]

    // MARK: - what the handler asks

    /// More actions are waiting (`nextAction()`).
    public var hasPendingActions: Bool { !outbox.isEmpty }

    /// The next action made while handling the last event; when none is left, what was counted
    /// (`.report`), then whether the handler should now read from the client or stop
    /// (`.readFromClient`) if that changed; then `.none`. The handler calls it until `.none`
    /// after every event.
    public mutating func nextAction() -> Action {
        if !outbox.isEmpty, let next = outbox.take() { return next }
        if !counts.isEmpty || !finishedRecords.isEmpty {
            return .report(takeCounts(), recordsFinished: !finishedRecords.isEmpty)
        }
        if case .relaying(draining: false) = state, loginReported, clientReadsReported {
            return .none  // the relay's usual case: nothing changed
        }
        guard !isClosed else { return .none }
        if !loginReported && loginEnded {
            loginReported = true
            return .loginSucceeded
        }
        let wanted = wantsClientReads
        guard wanted != clientReadsReported else { return .none }
        clientReadsReported = wanted
        return .readFromClient(wanted)
    }

    /// Whether the handler should read from the client now: not during a graceful shutdown,
    /// which takes no new command, nor while scripted commands pile up, nor while a hook runs.
    public var wantsClientReads: Bool {
        switch state {
        case .relaying(let draining): return !draining && tracking?.attachment != .awaitingServer
        case .exchanging(let box):
            return box.read { !$0.draining && $0.queue.count < Exchange.maximumQueuedCommands && !$0.step.isHook }
        case .connectServerHook, .readHandshakeHook, .readAuthHook, .readAuthResultHook, .verifyingLogin: return false
        case .connecting, .awaitingGreeting:
            // a login the proxy verified waits for its server: what the client sends meanwhile
            // waits in the socket, not in the machine
            return ownBox == nil
        default: return true
        }
    }

    /// A command (or the login) waits for the server.
    public var isAwaitingResponse: Bool {
        switch state {
        case .relaying: return tracker.isAwaitingResponse
        case .exchanging(let box): return tracker.isAwaitingResponse || box.read { $0.step.isActive }
        case .authenticating, .readAuthResultHook: return true
        default: return false
        }
    }

    /// Whether the server connection could be given to the pool now: logged in, and nothing on
    /// its way in either direction.
    public var serverIsIdle: Bool {
        switch state {
        case .relaying:
            return tracker.clientPhase == .command && !tracker.isAwaitingResponse && fromServer.isAtPacketBoundary
        case .exchanging(let box):
            return tracker.clientPhase == .command && !tracker.isAwaitingResponse && fromServer.isAtPacketBoundary
                && box.read { $0.hasServer && !$0.step.isActive && $0.serverCollector.isEmpty }
        default:
            return false
        }
    }

    /// The first login is over (or the connection is): the login timeout no longer applies.
    public var loginEnded: Bool {
        switch state {
        case .closed: return true
        case .relaying: return tracker.clientPhase != .authentication
        case .exchanging(let box): return box.read { $0.commandsStarted } || tracker.clientPhase != .authentication
        default: return false
        }
    }

    /// Connected to a server that has not greeted yet.
    public var isAwaitingGreeting: Bool {
        if case .awaitingGreeting = state { return true }
        return false
    }

    /// The handler is opening a server connection.
    public var isConnecting: Bool {
        if case .connecting = state { return true }
        return false
    }

    public var isClosed: Bool {
        if case .closed = state { return true }
        return false
    }

    /// The session's status flags as of the last OK or EOF.
    public var serverStatus: ServerStatus { tracker.status }

    /// The handler took the counts.
    public mutating func takeCounts() -> Counts {
        defer { counts = Counts() }
        return counts
    }

    // MARK: - helpers

    /// Queues `action` behind the one being returned; nothing is queued behind a close.
    mutating func emit(_ action: consuming Action) {
        if case .none = action { return }
        guard !closeQueued else { return }
        if case .close = action { closeQueued = true }
        outbox.append(action)
    }

    /// Queues what `out` holds, in the order the wire needs: the server's TLS request, then the
    /// bytes for each side.
    mutating func emit(_ out: consuming Output) {
        if let request = out.backendTLSRequest { emit(.startBackendTLS(sslRequest: request)) }
        if out.duringServerRead && out.toBackend == nil && out.backendTLSRequest == nil, let bytes = out.toClient {
            // flushed with the end of the server's read cycle, as in the relay: a large result
            // leaves in few system calls
            return emit(out.heldForHook ? .queueToClient(bytes) : .forwardToClient(bytes))
        }
        if out.toClient != nil || out.toBackend != nil { emit(.write(toClient: out.toClient, toBackend: out.toBackend)) }
    }

    /// Ends the connection: `toClient` first (an ERR the proxy made, or the server's last words),
    /// the reason logged at `level`.
    /// What was queued before goes out first: the close is returned for the caller to queue or
    /// return, behind it.
    mutating func close(_ mode: Close.Mode = .afterFlush, toClient: ByteBuffer? = nil, reason: String?, level: Severity = .warning) -> Action {
        state = .closed
        return .close(Close(mode: mode, toClient: toClient, reason: reason, level: level))
    }

    /// Sends the proxy's own ERR and ends the connection: counted, and logged at `level`.
    mutating func refuse(_ err: ERRPacket, sequenceID: UInt8, protocol41: Bool = true, before: ByteBuffer? = nil,
                         reason: String, level: Severity = .warning) -> Action {
        counts.errorsSentByProxy += 1
        var bytes = before ?? ByteBuffer()
        var framed = Self.framed(err, sequenceID: sequenceID, protocol41: protocol41)
        bytes.writeBuffer(&framed)
        return close(toClient: bytes, reason: reason, level: level)
    }

    /// Bytes the proxy made or rearranged, gathered while handling one event.
    struct Output {
        var toClient: ByteBuffer?
        var toBackend: ByteBuffer?
        /// An SSLRequest to write to the server in plaintext before `toBackend`.
        var backendTLSRequest: ByteBuffer?
        /// Made while handling bytes from the server: the handler flushes at the end of that read cycle.
        var duringServerRead = false
        /// A hook follows: what the client gets waits for it (`.queueToClient`).
        var heldForHook = false

        mutating func client(_ bytes: ByteBuffer) {
            if toClient == nil { toClient = bytes } else { var b = bytes; toClient!.writeBuffer(&b) }
        }

        mutating func backend(_ bytes: ByteBuffer) {
            if toBackend == nil { toBackend = bytes } else { var b = bytes; toBackend!.writeBuffer(&b) }
        }

        var isEmpty: Bool { toClient == nil && toBackend == nil && backendTLSRequest == nil }
    }

    /// An ERR packet, framed. Before the handshake the client has not agreed on PROTOCOL_41, so the
    /// SQLSTATE is left out, as a server does.
    public static func framed(_ err: ERRPacket, sequenceID: UInt8, protocol41: Bool) -> ByteBuffer {
        var payload = ByteBuffer()
        var e = err
        if !protocol41 { e.sqlState = nil }
        e.write(to: &payload)
        var out = ByteBuffer()
        var seq = sequenceID
        out.writeMySQLPacket(payload, sequenceID: &seq)
        return out
    }

    /// A whole packet framed again (for packets that arrived in several frames).
    static func framed(_ packet: MySQLFrame, sequenceID: UInt8? = nil) -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(packet.payload.readableBytes + 4)
        var seq = sequenceID ?? packet.sequenceID
        out.writeMySQLPacket(packet.payload, sequenceID: &seq)
        return out
    }

    /// The sequence id after a packet of `length` bytes that started with `sequenceID` (a packet
    /// of 16 MiB or more takes one more frame per 16 MiB).
    static func sequence(after sequenceID: UInt8, length: Int) -> UInt8 {
        sequenceID &+ UInt8(truncatingIfNeeded: length / PacketHeader.maxPayloadLength + 1)
    }
}

/// When the greeting offers CLIENT_SSL.
public enum ClientTLSOffer: Sendable, Equatable {
    /// Exactly when the backend's greeting offers it, so a client sees what it would see
    /// directly (the default: a certificate is made at startup for it).
    case likeBackend
    /// Always (a certificate was configured, or the proxy has no backend to follow).
    case always
    /// Never (`--skip-ssl`).
    case never
}

/// TLS towards backends (`--proxy-backend-ssl`).
public enum BackendTLSMode: String, Sendable, CaseIterable {
    /// Never.
    case off
    /// When the client's own link is TLS, so the server sees what it would see directly (the
    /// default); a TLS client is refused when the server does not offer TLS (a downgrade).
    case preferred
    /// Always; a server that does not offer TLS is refused. The certificate is not checked.
    case required
    /// Always, and the server's certificate must chain to the CA.
    case verifyCA = "verify-ca"
    /// As verify-ca, and the certificate must name the backend's host.
    case verifyIdentity = "verify-identity"

    /// Whether the link to a server goes through TLS: nil when it must not be made at all (the
    /// server does not offer TLS and the mode requires it).
    public func wantsTLS(clientUsesTLS: Bool, serverOffers: Bool) -> Bool? {
        switch self {
        case .off: return false
        case .preferred: return clientUsesTLS ? (serverOffers ? true : nil) : false
        case .required, .verifyCA, .verifyIdentity: return serverOffers ? true : nil
        }
    }

    /// Whether the server's certificate is checked: only then is a TLS link known to end at the
    /// server rather than at whoever sits between.
    public var verifies: Bool { self == .verifyCA || self == .verifyIdentity }
}

/// A value kept on the heap, for a large field most connections leave empty: the field holds 8
/// bytes instead of the value's size. Set once, read a few times (no in-place change).
enum OutOfLine<Value: Equatable>: Equatable {
    indirect case some(Value)

    init(_ value: Value) { self = .some(value) }

    var value: Value {
        switch self {
        case .some(let value): return value
        }
    }
}

/// The machine's queue of actions: the next one in a slot of its own, moved out when taken; the
/// rest in an array read from the front, emptied (keeping its storage) once read.
struct Outbox {
    private var next: ConnectionMachine.Action = .none
    private var behind: [ConnectionMachine.Action] = []
    private var read = 0

    @inline(__always)
    var isEmpty: Bool {
        if case .none = next { return read == behind.count }
        return false
    }

    mutating func append(_ action: consuming ConnectionMachine.Action) {
        if case .none = next, read == behind.count {
            next = action
        } else {
            behind.append(action)
        }
    }

    /// Keep the array's storage once emptied (connections whose events often make several
    /// actions: a script's); else it is given back (an idle connection holds none).
    var keepsCapacity = false

    mutating func take() -> ConnectionMachine.Action? {
        if case .none = next {} else {
            var taken = ConnectionMachine.Action.none
            swap(&taken, &next)
            return taken
        }
        guard read < behind.count else { return nil }
        var taken = ConnectionMachine.Action.none
        swap(&taken, &behind[read])
        read += 1
        if read == behind.count {
            behind.removeAll(keepingCapacity: keepsCapacity)
            read = 0
        }
        return taken
    }
}
