import MySQLWire
import NIOCore

/// Multiplexing (`Configuration.multiplexes`, on top of session tracking): between commands a
/// session with nothing pinned may give its server connection up when another session of the
/// same login needs one (`parkRequested()` → `.parkBackend`). Its next command asks for a
/// connection again (`.takeBackend`, the command held meanwhile); the connection it gets
/// (`multiplexedServerAttached(previous:)`) is brought to the session's state first: nothing to
/// do when it is the session's own or in the same state, else COM_RESET_CONNECTION, the
/// trackers and the statements that restore the state, all written in front of the command, their
/// answers dropped. A restore the server refuses ends the session with an ERR naming it.
extension ConnectionMachine {
    enum Attachment: Equatable {
        case attached
        /// The server connection was given up; the session's state lives in the tracking.
        case parked
        /// A command waits (in `waiting`) for a server connection.
        case awaitingServer
    }

    /// Whether the session can leave its server connection now: tracked, nothing pinned,
    /// nothing on its way in either direction, no statement of the proxy's unanswered.
    public var mayPark: Bool {
        survivesServerLoss && outbox.isEmpty && tracking!.held.readableBytes == 0 && fromServer.isAtPacketBoundary
            && !tracker.isDesynchronized
    }

    /// Whether the session would carry on if its server connection ended now: between commands,
    /// with nothing pinned, its next command goes to another connection.
    var survivesServerLoss: Bool {
        guard configuration.multiplexes, let t = tracking, t.attachment == .attached, t.enabled, t.state.pins.isEmpty,
              t.proxyResponses.isEmpty, t.state.transactionCharacteristics.isEmpty,
              case .relaying(draining: false) = state, !closeQueued else { return false }
        return tracker.clientPhase == .command && !tracker.isAwaitingResponse && fromClient.isAtPacketBoundary
    }

    /// The server connection ended between commands (killed, its server restarted or gone): the
    /// session keeps its client, and its next command takes another connection.
    mutating func serverLostBetweenCommands() -> Action {
        tracking!.attachment = .parked
        tracking!.held = ByteBuffer()
        tracking!.holding = false
        fromServer = FrameScanner()  // (what the server began of a packet ends with it)
        counts.backendsLost &+= 1
        emit(.dropBackend)
        emit(.log(.warning, "the server connection closed between commands; the session's next command goes to another one"))
        return nextAction()
    }

    /// Its backend was drained and the session could not leave it in time: between commands the
    /// client gets the ERR a killed connection gets; in the middle of one, the connection ends.
    public mutating func backendDrained() -> Action {
        guard !isClosed else { return .none }
        noteClose(.noBackend)
        let reason = "the session's backend was drained and the session could not move off it in time"
        guard inSession, !isAwaitingResponse, fromClient.isAtPacketBoundary else { return close(.abort, reason: reason) }
        return refuse(ERRPacket(code: 1927, sqlState: "70100", message: "Connection was killed: its backend was drained (MoonProxy)"),
                      sequenceID: 0, reason: reason)
    }

    /// Whether the session takes part in multiplexing: tracked, and relayed (a script's session
    /// with command hooks is tracked too, but holds its connection: +ExchangeTracking).
    public var isMultiplexable: Bool {
        tracking != nil && configuration.multiplexes && configuration.hooks.isDisjoint(with: Self.commandHooks)
    }

    /// Whether the session has given its server connection up (or waits for one).
    public var isParked: Bool { (tracking?.attachment ?? .attached) != .attached }
    /// Whether a command of the session waits for a server connection.
    public var isAwaitingServer: Bool { tracking?.attachment == .awaitingServer }

    /// Another session needs a server connection: this one gives its connection up if it may
    /// (`.parkBackend`: the handler hands the connection over), else `.none`.
    public mutating func parkRequested() -> Action {
        guard mayPark else { return .none }
        tracking!.attachment = .parked
        if let closes = Self.statementsLeaving(&tracking!.statements) { emit(.write(toClient: nil, toBackend: closes)) }
        emit(.parkBackend)
        return nextAction()
    }

    /// The prepared statements the connection keeps for the sessions after this one (see
    /// `ServerStatements`), taken by the handler when the session gives the connection up.
    public var serverStatements: ServerStatements { tracking?.statements.server ?? ServerStatements() }

    /// What the handler passes on with the connection the session gives up (`.parkBackend`): who
    /// it is logged in as, its server's challenge, the state it is left in and its statements.
    /// One call, mutating only so that the handler reaches its stored machine in place (a getter
    /// of it copies the whole machine, at every hand-over).
    public mutating func connectionGivenUp() -> (login: ServerLogin?, challenge: [UInt8], state: SessionState?, statements: ServerStatements,
                                                 backendTLS: Bool) {
        (serverLogin, serverChallenge, tracking?.state, serverStatements, session.backendTLS)
    }

    /// After every server read of a multiplexed session: what pins it, how many statements it has
    /// prepared, and whether it could give its connection up now. Mutating for the same reason.
    public mutating func multiplexStatus() -> (pins: SessionState.Pins, statements: Int, mayPark: Bool) {
        (sessionPins, preparedStatementCount, mayPark)
    }

    /// Client bytes while the session has no server connection: held (at most a packet's
    /// worth) until one is attached; the first asks for one, and reads stop meanwhile.
    mutating func clientBytesWhileParked(_ chunk: ByteBuffer) -> Action {
        tracking!.waiting.writeImmutableBuffer(chunk)
        let waiting = tracking!.waiting
        guard waiting.readableBytes <= configuration.maximumPacketLength + PacketHeader.size else {
            clientBrokeProtocol()
            return close(.abort, reason: "the client sent more than a packet's worth of commands while its session waited for a server connection")
        }
        // COM_QUIT alone: the session ends without a server
        if waiting.readableBytes == 5, waiting.getBytes(at: waiting.readerIndex, length: 5) == [1, 0, 0, 0, CommandCode.quit.rawValue] {
            counts.commands &+= 1
            noteClose(.none)
            return close(reason: nil, level: .info)
        }
        if tracking!.attachment == .parked {
            tracking!.attachment = .awaitingServer
            // reads stop first: the handler may attach a connection (or refuse) within `.takeBackend`
            clientReadsReported = false
            emit(.readFromClient(false))
            emit(.takeBackend)
        }
        return .none  // (queued: a caller that emits what this returns keeps the order)
    }

    /// The handler gave the waiting session a server connection logged in as its login.
    /// `previous`: the state the connection's last session left it in (nil: it was reset, or
    /// is new, and its trackers are off); `own`: it is the connection this session gave up.
    public mutating func multiplexedServerAttached(previous: SessionState?, own: Bool = false,
                                                   statements: ServerStatements = ServerStatements()) -> Action {
        guard tracking?.attachment == .awaitingServer, case .relaying = state else { return .none }
        let own = own && !tracking!.forgetsOwnConnection
        tracking!.forgetsOwnConnection = false
        tracker = .commandPhase(capabilities: session.capabilities)
        fromServer = FrameScanner()
        tracking!.responsesEnded = 0
        tracking!.proxyResponses = []
        tracking!.held = ByteBuffer()
        tracking!.holding = false
        tracking!.attachment = .attached
        var prefix = ByteBuffer()
        if previous == nil || !own {
            // the session's binary prepared statements are not on this connection (unless shared)
            tracking!.statements.connectionChanged(statements)
        }
        if let previous, own || previous.sameServerState(as: tracking!.state, loginDatabase: tracking!.loginDatabase) {
            tracking!.enabled = true  // as the session left it, or as good
        } else {
            tracking!.statements.server = ServerStatements()  // (reset, or new)
            prefix = restoringStatements(resetFirst: previous != nil)
        }
        let waiting = tracking!.waiting
        tracking!.waiting = ByteBuffer()
        clientReadsReported = true
        emit(.readFromClient(true))
        if prefix.readableBytes > 0 { emit(.write(toClient: nil, toBackend: prefix)) }
        if waiting.readableBytes > 0 { emit(relayFromClient(waiting)) }
        return nextAction()
    }

    /// The proxy's statements that bring a connection to the session's state, registered in order:
    /// COM_RESET_CONNECTION first where another session's state is on it (`resetFirst`: cleared as
    /// at a fresh login, trackers off), the trackers, then what restores the state.
    mutating func restoringStatements(resetFirst: Bool) -> ByteBuffer {
        var prefix = ByteBuffer()
        if resetFirst, let reset = proxyCommand([CommandCode.resetConnection.rawValue]) { prefix.writeImmutableBuffer(reset) }
        tracking!.enabled = false
        if let trackers = enableTrackers() { prefix.writeImmutableBuffer(trackers) }
        for sql in tracking!.state.restoreStatements(loginDatabase: tracking!.loginDatabase) {
            guard let statement = proxyStatement(sql) else { break }
            prefix.writeImmutableBuffer(statement)
        }
        tracking!.restoring = true
        return prefix
    }

    /// No server connection could be had for the waiting session (none came in time, or its
    /// backend is gone): its command gets `err`, and the session ends.
    public mutating func multiplexedServerUnavailable(_ err: ERRPacket, reason: String) -> Action {
        guard tracking?.attachment == .awaitingServer, !isClosed else { return .none }
        noteClose(.noBackend)
        return refuse(err, sequenceID: 1, reason: reason)
    }

    /// A statement of the proxy's that restores the session's state failed: the session cannot
    /// go on as the client knows it.
    mutating func restoreFailed(before: ByteBuffer) -> Action {
        backendBrokeProtocol()
        return refuse(ERRPacket(code: 1105, sqlState: "HY000", message: "MoonProxy could not bring another server connection to this session's state; the session ends"),
                      sequenceID: 1, before: before.readableBytes > 0 ? before : nil,
                      reason: "the server refused a statement restoring the session's state on another connection")
    }
}

extension SessionState {
    /// Whether a server connection left in this state serves a session in `other` as it is: the
    /// same schema, variables and transaction characteristics (nothing pinned on either). The
    /// prepared statements left on it are shared (`ServerStatements`). A schema nobody chose
    /// (nil) is the login's `loginDatabase`: a session that took a pooled connection knows none,
    /// one whose connection was brought to its state learned it from the server (the same one).
    public func sameServerState(as other: SessionState, loginDatabase: String) -> Bool {
        guard (schema ?? loginDatabase) == (other.schema ?? loginDatabase), transactionCharacteristics == other.transactionCharacteristics,
              variables.count == other.variables.count, userVariables.count == other.userVariables.count, lastInsertID == other.lastInsertID,
              pins.isEmpty, other.pins.isEmpty else { return false }
        for v in variables where other.value(of: v.name) != v.value { return false }
        for u in userVariables where !other.userVariables.contains(where: { $0 == u }) { return false }
        return true
    }
}
