import MySQLWire
import NIOCore

/// COM_CHANGE_USER in a session the proxy logged in itself (`--proxy-auth=proxy`, session
/// pooled): the proxy verifies it against the accounts as it verifies a login
/// (`.verifyLogin` → `loginVerified(_:)`), so no wrong password reaches a server.
///
/// - Accepted: the session becomes a login of the new user. Its server connection goes back to
///   the pool (reset there for the old login's next session), and the session takes one of the
///   new login's, pooled or logged in by the proxy, exactly as at a login (`.connecting`); the
///   client gets that login's OK. Nothing of the old session survives, as on the server.
/// - Refused: the client gets the server's ERR and keeps its user, its session reset, as MariaDB
///   leaves it (a COM_RESET_CONNECTION of the proxy's; where the session is tracked, the
///   trackers behind it).
/// - An account whose plugin the proxy cannot log in with: the request goes to the server, which
///   asks the client itself, as before (the session is then pinned, `change_user`).
///
/// The client computed its answer on the greeting's challenge, which the proxy made: the same
/// one verifies it. A request split across reads is held until whole; one the proxy cannot take
/// at rest (behind a pipelined command, a header split across reads, a script with login hooks)
/// goes to the server, as before.
extension ConnectionMachine {
    enum ChangeUserStage: Equatable {
        /// Being verified; `original` is the client's packet, for the server when the proxy leaves
        /// the account to it.
        case verifying(original: ByteBuffer)
        /// Accepted: the session waits for a server connection of its new login.
        case loggingIn
    }

    /// Hooks that see a login: a session of a script that has one changes user on the server.
    static let loginHooks: ScriptHooks = [.readHandshake, .readAuth, .readAuthResult]

    /// A chunk from the client that starts with COM_CHANGE_USER (or continues one held): taken
    /// by the proxy when it may verify it; nil: relayed as any command.
    mutating func changeUserArrived(_ chunk: ByteBuffer) -> Action? {
        var bytes = chunk
        if let held = heldChangeUser.take() {
            bytes = held
            bytes.writeImmutableBuffer(chunk)
        }
        switch changeUserTakeable(bytes) {
        case .relay:
            guard bytes.readableBytes > chunk.readableBytes else { return nil }
            return relayCommands(bytes)  // (what was held goes to the server after all)
        case .incomplete:
            heldChangeUser = bytes  // the rest of the packet comes in the next reads
            return Action.none  // (taken: nothing to do yet; not nil, which would relay it)
        case .request(let request, let original, let rest):
            return changeUserTaken(request, original: original, rest: rest)
        }
    }

    enum ChangeUserArrival {
        case relay
        /// The packet has not arrived whole (held: reads go on).
        case incomplete
        case request(ChangeUserRequest, original: ByteBuffer, rest: ByteBuffer)
    }

    /// Whether the proxy takes the COM_CHANGE_USER at the start of `bytes`.
    private mutating func changeUserTakeable(_ bytes: ByteBuffer) -> ChangeUserArrival {
        guard let ownLogin = own, ownLogin.login != nil, ownLogin.changeUser == nil, configuration.poolsServers,
              configuration.hooks.isDisjoint(with: Self.loginHooks), case .relaying(draining: false) = state, !closeQueued,
              fromClient.isAtPacketBoundary, tracker.clientPhase == .command else { return .relay }
        if let t = tracking {
            guard t.statement == nil, t.statements.held.readableBytes == 0 else { return .relay }
            switch t.attachment {
            case .attached:
                // only the proxy's own statements may be unanswered (their answers are read meanwhile)
                guard !tracker.isDesynchronized, tracker.pendingCount == t.proxyResponses.count, t.held.readableBytes == 0, !t.holding,
                      fromServer.isAtPacketBoundary else { return .relay }
            case .parked:
                guard t.waiting.readableBytes == 0 else { return .relay }
            case .awaitingServer:
                return .relay
            }
        } else {
            guard !tracker.isAwaitingResponse, !tracker.isDesynchronized, fromServer.isAtPacketBoundary else { return .relay }
        }
        guard let header = PacketHeader.peek(bytes, at: bytes.readerIndex), header.sequenceID == 0,
              header.payloadLength <= Self.largestChangeUser else { return .relay }
        var input = bytes
        guard let frame = input.readMySQLFrame() else { return .incomplete }
        guard let request = try? ChangeUserRequest(parsing: frame.payload, capabilities: session.capabilities),
              let original = bytes.getSlice(at: bytes.readerIndex, length: bytes.readableBytes - input.readableBytes) else { return .relay }
        return .request(request, original: original, rest: input)
    }

    /// The largest COM_CHANGE_USER the proxy verifies (its connection attributes are at most 64 KiB).
    static let largestChangeUser = 70_000

    private mutating func changeUserTaken(_ request: ChangeUserRequest, original: ByteBuffer, rest: ByteBuffer) -> Action {
        var ownLogin = own!
        counts.commands &+= 1
        var capabilities = session.capabilities
        if !request.database.isEmpty { capabilities.insert(.connectWithDB) }  // (the client may have logged in without one)
        var response = HandshakeResponse41(capabilities: capabilities,
                                           characterSet: request.characterSet != 0 ? request.characterSet : ownLogin.login!.characterSet,
                                           username: request.username, authResponse: request.authResponse,
                                           database: request.database.isEmpty ? nil : request.database, authPluginName: request.authPluginName)
        response.attributesBlock = request.attributesBlock
        let plan = LoginPlan(response: response, payload: ByteBuffer(), reply: 1, clientSequence: 0, serverSequence: 1,
                             clientCompression: nil, backendCompression: nil, rest: rest)
        ownLogin.changeUser = .verifying(original: original)
        own = ownLogin
        askVerification(plan, switched: false)
        return .none  // (queued: the relay's callers emit what it returns, behind what came before)
    }

    /// Whether a COM_CHANGE_USER of the client's is being verified or logged in.
    public var isChangingUser: Bool { own?.changeUser != nil }

    /// The handler's verdict on a COM_CHANGE_USER (a plugin switch is asked as at a login).
    mutating func changeUserVerified(_ verdict: LoginVerdict, _ plan: LoginPlan, original: ByteBuffer) {
        var ownLogin = own!
        switch verdict {
        case .refused(let err, let reason):
            ownLogin.changeUser = nil
            own = ownLogin
            state = .relaying(draining: false)
            counts.errorsSentByProxy += 1
            emit(.log(.info, "COM_CHANGE_USER to '\(plan.response.username)': \(reason)"))
            let refusal = Self.framed(err, sequenceID: plan.reply, protocol41: true)
            if tracking == nil {
                emit(.write(toClient: refusal, toBackend: nil))
                emit(.resetBackendSession)  // (the handler reads its answer)
            } else {
                emit(.write(toClient: refusal, toBackend: trackedSessionReset()))
            }
            if plan.rest.readableBytes > 0 { emit(relayFromClient(plan.rest)) }
        case .relay:
            ownLogin.changeUser = nil
            own = ownLogin
            state = .relaying(draining: false)
            var bytes = original
            bytes.writeImmutableBuffer(plan.rest)
            emit(relayCommands(bytes))
        case .accepted(let credential, let account):
            if (tracking?.attachment ?? .attached) == .attached {
                // reset in the pool for the old login's next session; one still answering the
                // proxy's statements is closed instead
                let idle = !tracker.isAwaitingResponse && fromServer.isAtPacketBoundary && (tracking?.held.readableBytes ?? 0) == 0
                emit(idle ? .releaseBackend : .dropBackend)
            }
            ownLogin.credential = credential
            ownLogin.account = account
            ownLogin.plan = plan
            ownLogin.changeUser = .loggingIn
            own = ownLogin
            session.username = plan.response.username
            session.database = plan.response.database
            session.serverDatabase = plan.response.database
            tracking = nil  // the new login's server connection starts it again
            tracker = ResponseTracker(capabilities: session.capabilities)
            fromServer = FrameScanner()
            loginReported = false  // the handler learns of the new login when it is through
            state = .connecting
            emit(.connectToBackend(preferred: ownLogin.preferred))
        case .switchPlugin:
            break  // (asked in loginVerified)
        }
    }

    /// A refused COM_CHANGE_USER leaves a tracked session reset, as MariaDB does: the proxy resets
    /// the server connection (the bytes to write), or, with none attached, the state the next one
    /// is brought to.
    mutating func trackedSessionReset() -> ByteBuffer? {
        tracking!.state.reset()
        tracking!.preparedStatements = 0
        tracking!.statements.removeAll()
        tracking!.lastStatementFresh = false
        guard tracking!.attachment == .attached else {
            tracking!.forgetsOwnConnection = true  // the connection it left holds the state before
            return nil
        }
        guard var bytes = proxyCommand([CommandCode.resetConnection.rawValue]) else { return nil }
        tracking!.enabled = false
        if let trackers = enableTrackers() { bytes.writeImmutableBuffer(trackers) }
        return bytes
    }
}
