import MySQLWire
import NIOCore

/// From the client's connect to the handshake response on its way to the server: `connect_server`,
/// the server's greeting (with `read_handshake`), the client's SSLRequest and handshake response
/// (with `read_auth`), and a mock server's login when the script answered `connect_server`.
extension ConnectionMachine {
    /// The greeting, gathered and rewritten, on its way to the client (kept while
    /// `read_handshake` runs).
    struct Greeting {
        var payload: ByteBuffer
        var sequenceID: UInt8
        /// What the server sent behind its greeting (nothing, unless it talks out of turn).
        var rest: ByteBuffer
        var offersTLS: Bool
    }

    /// The greeting went out; what the client says next is gathered here.
    struct Handshake {
        var gathered = ByteBuffer()
        /// False in a mock server: the script greeted, no server is behind the session.
        var hasServer: Bool
        /// The greeting offered CLIENT_SSL.
        var offersTLS: Bool
    }

    /// What the handshake response leads to, worked out before `read_auth` runs (which may
    /// answer in the server's place, or replace the response).
    struct LoginPlan {
        var response: HandshakeResponse41
        /// The response as it goes to the server (capabilities restricted, compression set).
        var payload: ByteBuffer
        /// The client's sequence id for the packet answering its response.
        var reply: UInt8
        var clientSequence: UInt8
        /// The response's sequence id on the server link (2 behind the proxy's SSLRequest).
        var serverSequence: UInt8
        var clientCompression: ProtocolCompression?
        var backendCompression: ProtocolCompression?
        /// What the client sent behind its response (a command that does not wait for the verdict).
        var rest: ByteBuffer
    }

    // MARK: - connect

    /// A client connected: `connect_server` first, when the script has it.
    public mutating func clientConnected() -> Action {
        guard case .initialized = state else { return .none }
        askConnectServer()
        return nextAction()
    }

    /// The proxy does not serve this client (its connection limits, a script that cannot start):
    /// `err` where the greeting would be, then the close.
    public mutating func refuseConnection(_ err: ERRPacket, source: CloseSource, reason: String, level: Severity = .warning,
                                          protocol41: Bool = true) -> Action {
        guard case .initialized = state else { return .none }
        noteClose(source)
        return refuse(err, sequenceID: 0, protocol41: protocol41, reason: reason, level: level)
    }

    mutating func askConnectServer() {
        if configuration.hooks.contains(.connectServer) {
            state = .connectServerHook
            return emit(.runHook(hookCall(.connectServer, loggedIn: false, serverIdle: false, status: .autocommit)))
        }
        if let ownLogin = own {
            // the proxy's own login: a connect only once the login was verified
            if ownLogin.plan == nil { return greetClient(ownLogin) }
            state = .connecting
            return emit(.connectToBackend(preferred: ownLogin.preferred))
        }
        state = .connecting
        emit(.connectToBackend(preferred: nil))
    }

    mutating func connectServerReturned(_ result: HookResult) {
        if case .sendResult(let response) = result.decision {
            own = nil  // a mock server: the script is the server
            return scriptAnsweredConnect(response)
        }
        if var ownLogin = own, ownLogin.plan == nil {
            ownLogin.preferred = result.backendChoice
            own = ownLogin
            return greetClient(ownLogin)
        }
        // nil, IGNORE_RESULT or an error: connect, to the backend the script chose if it did.
        state = .connecting
        emit(.connectToBackend(preferred: result.backendChoice))
    }

    /// The server connection is open. `localSocket`: the server is on this machine, behind a unix
    /// socket, where nobody can sit between (a password may go to it as over verified TLS).
    public mutating func backendConnected(localSocket: Bool = false) -> Action {
        guard case .connecting = state else { return .none }
        session.backendIsLocal = localSocket
        state = .awaitingGreeting(ByteBuffer())
        return .none
    }

    /// A connect failed (the handler marked that backend down): MySQL Proxy asks `connect_server`
    /// again, so that the script can pick another backend.
    public mutating func backendConnectFailed() -> Action {
        guard case .connecting = state else { return .none }
        askConnectServer()
        return nextAction()
    }

    /// The server connected to sent no greeting in time (the handler dropped it and marked its
    /// backend down): as after a failed connect, the next backend (or `connect_server` again).
    public mutating func backendGreetingTimedOut() -> Action {
        guard case .awaitingGreeting = state else { return .none }
        state = .connecting
        return backendConnectFailed()
    }

    /// No backend could be reached (all down, refused or timed out).
    public mutating func noBackendAvailable(_ detail: String) -> Action {
        guard !isClosed else { return .none }
        noteClose(.noBackend)
        if own?.changeUser != nil, let plan = own?.plan {
            // a COM_CHANGE_USER's new login: the client waits for the command's answer
            return refuse(.noBackend(detail), sequenceID: plan.reply, reason: "no backend available for a COM_CHANGE_USER: \(detail)")
        }
        return refuse(.noBackend(detail), sequenceID: 0, protocol41: false, reason: "no backend available: \(detail)")
    }

    /// The server connection could not be opened for want of the proxy's own resources (the
    /// descriptor limit): the client is refused as a full server refuses it.
    public mutating func refusedForWantOfResources() -> Action {
        guard case .connecting = state else { return .none }
        noteClose(.limit)
        return refuse(.tooManyConnections, sequenceID: 0, reason: "refused: the proxy has no descriptor left for the server connection")
    }

    /// `connect_server` returned PROXY_SEND_RESULT: an ERR refuses the client; anything else (a RAW
    /// greeting made by the script) makes the proxy the server: mock-server mode, no backend.
    mutating func scriptAnsweredConnect(_ response: ScriptResponse) {
        if case .error = response {
            return emit(close(toClient: response.encode(command: nil, capabilities: [.protocol41], sequenceID: 0),
                              reason: "connect_server refused the client", level: .info))
        }
        var greeting = Self.mockGreeting()
        var out = ByteBuffer()
        let offer = configuration.tls.offer == .always
        if case .raw(let packets) = response, var first = packets.first,
           let parsed = try? HandshakeV10.rewriteCapabilities(of: &first, { clientGreetingCapabilities($0, mask: .scriptable, tls: offer) }) {
            session.clientOffered = clientGreetingCapabilities(parsed.capabilities, mask: .scriptable, tls: offer)
            greeting = parsed
            var seq: UInt8 = 0
            out.writeMySQLPacket(first, sequenceID: &seq)
            for packet in packets.dropFirst() { out.writeMySQLPacket(packet, sequenceID: &seq) }
        } else {
            emit(.log(.warning, "connect_server answered with something that is not a greeting (proxy.response.type = MYSQLD_PACKET_RAW with a handshake packet); clients will not understand it"))
            out = response.encode(command: nil, capabilities: [.protocol41], sequenceID: 0)
        }
        session.greeting = greeting
        state = .awaitingHandshakeResponse(Handshake(hasServer: false, offersTLS: offer))
        emit(.write(toClient: out, toBackend: nil))
    }

    /// What the proxy assumes a script's greeting offered when it cannot be read.
    static func mockGreeting() -> HandshakeV10 {
        HandshakeV10(serverVersion: "5.5.5-10.11.0-MoonProxy", connectionID: 1, authPluginData: Array(repeating: 0x41, count: 20),
                     capabilities: .scriptable)
    }

    /// The capabilities client and server may negotiate through this connection: all the relay
    /// can carry, unless a script reads commands or results (or answers the login), which needs
    /// packets in the shapes MySQL Proxy's scripts know.
    func capabilityMask(hasServer: Bool) -> CapabilityFlags {
        let hooks = configuration.hooks
        guard !hooks.isEmpty else { return .relayable }
        guard hasServer else { return .scriptable }
        return hooks.isDisjoint(with: [.readQuery, .readQueryResult, .readAuth]) ? .relayable : .scriptable
    }

    /// What the greeting to the client offers, from what the server (or a script) offered: what
    /// the relay carries, TLS by the proxy's policy, and the compression the proxy speaks itself.
    func clientGreetingCapabilities(_ offered: CapabilityFlags, mask: CapabilityFlags, tls: Bool) -> CapabilityFlags {
        var caps = offered.intersection(mask).subtracting(ProtocolCompression.capabilities).union(configuration.compression.clientAlgorithms)
        if tls { caps.insert(.ssl) }
        return caps
    }

    // MARK: - the greeting

    mutating func greetingBytesReceived(_ chunk: ByteBuffer) -> Action {
        emit(greetingReceived(chunk))
        return nextAction()
    }

    /// The server's greeting, gathered; once a whole packet is there the server has answered
    /// (`.backendGreeted`), whatever it said.
    private mutating func greetingReceived(_ chunk: ByteBuffer) -> Action {
        guard case .awaitingGreeting(var gathered) = state else { return .none }
        gathered.writeImmutableBuffer(chunk)
        var input = gathered
        guard let frame = input.readMySQLFrame() else {
            if gathered.readableBytes > 1 << 16 {
                backendBrokeProtocol()
                return refuse(.malformedPacket("the server's greeting is larger than 64 KiB"), sequenceID: 0, protocol41: false,
                              reason: "the backend's greeting is larger than 64 KiB")
            }
            state = .awaitingGreeting(gathered)
            return .none
        }
        emit(.backendGreeted)
        if frame.payload.getInteger(at: frame.payload.readerIndex, as: UInt8.self) == 0xFF {
            // "Too many connections", "Host ... is blocked": the server's own words, relayed
            // (where the client waits for the verdict on its login, with that sequence id).
            noteClose(.backendHandshake)
            if let plan = own?.plan { return close(toClient: Self.framed(MySQLFrame(sequenceID: plan.reply, payload: frame.payload)), reason: nil, level: .info) }
            return close(toClient: gathered, reason: nil, level: .info)
        }
        if let ownLogin = own, ownLogin.plan != nil {
            state = .modifying
            return logIntoServer(greetingFrame: frame, ownLogin)
        }
        var payload = frame.payload
        let greeting: HandshakeV10
        var offer = false
        do {
            let mask = capabilityMask(hasServer: true)
            let policy = configuration.tls.offer
            var rewritten: CapabilityFlags = []
            greeting = try HandshakeV10.rewriteCapabilities(of: &payload) { offered in
                offer = policy == .always || (policy == .likeBackend && offered.contains(.ssl))
                rewritten = clientGreetingCapabilities(offered, mask: mask, tls: offer)
                return rewritten
            }
            session.clientOffered = rewritten
        } catch {
            backendBrokeProtocol()
            return refuse(.malformedPacket("the server's greeting: \(error)"), sequenceID: 0, protocol41: false,
                          reason: "malformed greeting from the backend: \(error)")
        }
        session.greeting = greeting
        let forward = Greeting(payload: payload, sequenceID: frame.sequenceID, rest: input, offersTLS: offer)
        if configuration.hooks.contains(.readHandshake) {
            state = .readHandshakeHook(forward)
            return .runHook(hookCall(.readHandshake, loggedIn: false, serverIdle: false, status: greeting.status))
        }
        return sendGreeting(forward)
    }

    mutating func readHandshakeReturned(_ greeting: Greeting, _ result: HookResult) {
        if case .sendResult(let response) = result.decision {
            // MySQL Proxy sends the script's packet and hangs up.
            return emit(close(toClient: response.encode(command: nil, capabilities: [.protocol41], sequenceID: greeting.sequenceID),
                              reason: "read_handshake answered the client", level: .info))
        }
        emit(sendGreeting(greeting))
    }

    mutating func sendGreeting(_ greeting: Greeting) -> Action {
        var out = ByteBuffer()
        out.reserveCapacity(greeting.payload.readableBytes + 4 + greeting.rest.readableBytes)
        var seq = greeting.sequenceID
        out.writeMySQLPacket(greeting.payload, sequenceID: &seq)
        var rest = greeting.rest
        out.writeBuffer(&rest)  // nothing, unless the server talks out of turn
        state = .awaitingHandshakeResponse(Handshake(hasServer: true, offersTLS: greeting.offersTLS))
        // the proxy's own greeting comes with no server read cycle to flush it
        return own != nil ? .write(toClient: out, toBackend: nil) : .forwardToClient(out)
    }

    // MARK: - the handshake response

    mutating func handshakeResponseBytesReceived(_ chunk: ByteBuffer) -> Action {
        guard case .awaitingHandshakeResponse(var handshake) = state else { return .none }
        handshake.gathered.writeImmutableBuffer(chunk)
        var input = handshake.gathered
        guard let frame = input.readMySQLFrame() else {
            if handshake.gathered.readableBytes > 1 << 16 {
                clientBrokeProtocol()
                return close(.abort, reason: "handshake response larger than 64 KiB")
            }
            state = .awaitingHandshakeResponse(handshake)
            return .none
        }
        let reply = frame.sequenceID &+ 1
        // Shorter than any handshake response (the server's MIN_HANDSHAKE_SIZE): bad handshake,
        // whatever its first bytes claim.
        if frame.payload.readableBytes < 6 {
            return refuseHandshake("a handshake response of \(frame.payload.readableBytes) bytes", reply: reply)
        }
        if let lower = frame.payload.getInteger(at: frame.payload.readerIndex, endianness: .little, as: UInt16.self),
           !CapabilityFlags(rawValue: UInt64(lower)).contains(.protocol41) {
            // A pre-4.1 client (HandshakeResponse320), as MySQL 4.1+ servers answer one whose
            // account needs the 4.1 authentication: in the old ERR format, without an SQLSTATE
            // (the client reports HY000).
            clientBrokeProtocol()
            return refuse(.authModeNotSupported("the proxy speaks protocol 4.1 and later; consider upgrading the client"),
                          sequenceID: reply, protocol41: false,
                          reason: "a pre-4.1 handshake response (no CLIENT_PROTOCOL_41), which the proxy does not speak")
        }
        if HandshakeResponse41.isSSLRequest(frame.payload) {
            guard handshake.offersTLS && !session.clientTLS else {
                return refuseHandshake(session.clientTLS ? "a second SSLRequest inside TLS" : "the client asked for TLS, which the greeting did not offer",
                                       reply: reply)
            }
            // The TLS handshake follows on this connection; the client's bytes after the request
            // are its first, and the handshake response comes inside TLS with the next sequence id.
            session.clientTLS = true
            handshake.gathered = ByteBuffer()
            state = .awaitingHandshakeResponse(handshake)
            return .startClientTLS(leftover: input)
        }
        let tls = configuration.tls
        if tls.requireSecureTransport && !session.clientTLS && !tls.localSocket {
            return refuse(.secureTransportRequired(), sequenceID: reply, reason: "a plaintext login refused: --require-secure-transport is on")
        }
        // The server link is TLS when the policy says so; the response then follows an SSLRequest
        // of the proxy's and carries sequence id 2 on that link, whatever it carried here.
        var serverSequence: UInt8 = 1
        if handshake.hasServer && own == nil {
            let offered = session.greeting?.capabilities.contains(.ssl) ?? false
            guard let wanted = tls.backend.wantsTLS(clientUsesTLS: session.clientTLS, serverOffers: offered) else {
                let reason = tls.backend == .preferred
                    ? "the client logged in over TLS and the backend server does not offer TLS; the proxy does not carry a TLS client over a plaintext server link (--proxy-backend-ssl=off would)"
                    : "the backend server does not offer TLS, which --proxy-backend-ssl=\(tls.backend.rawValue) requires"
                return refuse(.sslConnectionError("\(reason) (MoonProxy)"), sequenceID: reply, reason: reason)
            }
            session.backendTLS = wanted
            serverSequence = wanted ? 2 : 1
        }
        let plan: LoginPlan
        do {
            plan = try planLogin(frame, rest: input, serverSequence: serverSequence, hasServer: handshake.hasServer)
        } catch {
            return refuseHandshake("malformed handshake response: \(error)", reply: reply)
        }
        if configuration.hooks.contains(.readAuth) {
            state = .readAuthHook(handshake, plan)
            return .runHook(hookCall(.readAuth, loggedIn: false, serverIdle: false, status: session.greeting?.status ?? .autocommit))
        }
        proceedWithLogin(handshake, plan, decision: .noDecision, queries: [])
        return nextAction()
    }

    /// A handshake response the proxy cannot read: 1043, as the server says.
    mutating func refuseHandshake(_ reason: String, reply: UInt8) -> Action {
        clientBrokeProtocol()
        return refuse(.badHandshake(""), sequenceID: reply, reason: reason)
    }

    /// Reads the handshake response and works out what goes to the server.
    mutating func planLogin(_ frame: MySQLFrame, rest: ByteBuffer, serverSequence: UInt8, hasServer: Bool) throws -> LoginPlan {
        var payload = frame.payload
        let mask = capabilityMask(hasServer: hasServer)
        let asked = try HandshakeResponse41.restrictCapabilities(of: &payload, to: mask, adding: session.backendTLS ? .ssl : [])
        let response = try HandshakeResponse41(parsing: frame.payload)
        let greetingCapabilities = session.greeting?.capabilities ?? []
        session.username = response.username
        session.database = response.database
        session.serverDatabase = response.database
        session.response = response
        session.capabilities = asked.intersection(greetingCapabilities).intersection(mask).subtracting(ProtocolCompression.capabilities)
        // Each link's compression on its own: the client's from the proxy's offer, the server's
        // from the settings and the server's offer.
        let clientCompression = ProtocolCompression.negotiated(asked: asked, offered: session.clientOffered,
                                                               zstdLevel: response.zstdCompressionLevel)
        var backendCompression: ProtocolCompression?
        if hasServer && own == nil {
            backendCompression = configuration.compression.backendCompression(client: clientCompression, offered: greetingCapabilities)
            try HandshakeResponse41.setCompression(of: &payload, parsed: response, to: backendCompression)
        }
        return LoginPlan(response: response, payload: payload, reply: frame.sequenceID &+ 1, clientSequence: frame.sequenceID,
                         serverSequence: serverSequence, clientCompression: clientCompression, backendCompression: backendCompression,
                         rest: rest)
    }

    /// The handshake response goes to the server (or the script answered it, or there is no server).
    mutating func proceedWithLogin(_ handshake: Handshake, _ plan: LoginPlan, decision: HookDecision, queries: [Injection]) {
        var plan = plan
        switch decision {
        case .sendResult(let answer):
            let bytes = answer.encode(command: nil, capabilities: session.capabilities, sequenceID: plan.reply)
            if case .error = answer {
                noteClose(.authFailed)
                return emit(close(toClient: bytes, reason: "read_auth refused the login", level: .info))
            }
            return loggedInWithoutServer(answer: bytes, rest: plan.rest, compression: plan.clientCompression, dropBackend: handshake.hasServer)
        case .sendQuery where handshake.hasServer && !queries.isEmpty:
            // The first queued packet replaces the client's handshake response; the server link's
            // compression is then what that packet asks for.
            plan.payload = queries[0].packet
            var own = try? HandshakeResponse41(parsing: plan.payload)
            if var replaced = own {
                // The session's flags (result formats, EOF packets, multi-results, ...) stay the
                // client's, which reads what the server sends: a script that builds its packet
                // with mysql.proto's defaults (MySQL Proxy's tutorial-scramble) cannot know them.
                let sessionFlags = session.capabilities.intersection(.sessionAffecting)
                let merged = replaced.capabilities.subtracting(.sessionAffecting).union(sessionFlags)
                if merged != replaced.capabilities {
                    replaced.capabilities = merged
                    var rewritten = ByteBuffer()
                    replaced.write(to: &rewritten)
                    plan.payload = rewritten
                    own = replaced
                }
            }
            let offered = session.greeting?.capabilities ?? []
            plan.backendCompression = own.flatMap {
                ProtocolCompression.negotiated(asked: $0.capabilities, offered: offered, zstdLevel: $0.zstdCompressionLevel)
            }
        default:
            break
        }
        if own != nil && handshake.hasServer {
            if !queries.isEmpty {
                emit(.log(.warning, "read_auth replaced the handshake response, which --proxy-auth=proxy does not send: the proxy verifies the client's own and logs into the server itself"))
            }
            return askVerification(plan, switched: false)
        }
        guard handshake.hasServer else {
            // Mock-server mode and read_auth did not answer: the client is let in, as MySQL Proxy does.
            var ok = ByteBuffer()
            var seq = plan.reply
            ResponseEncoding.ok(OKPacket(status: .autocommit), capabilities: session.capabilities, sequenceID: &seq, into: &ok)
            return loggedInWithoutServer(answer: ok, rest: plan.rest, compression: plan.clientCompression, dropBackend: false)
        }
        sendLogin(plan)
    }

    /// The script let the client in without the server's word: the session goes on without a
    /// server connection (one the script may pick later from the pool).
    mutating func loggedInWithoutServer(answer: ByteBuffer, rest: ByteBuffer, compression: ProtocolCompression?, dropBackend: Bool) {
        tracker = .commandPhase(capabilities: session.capabilities)
        fromServer = FrameScanner()
        var exchange = Exchange(hasServer: false, maximumPacketLength: configuration.maximumPacketLength)
        exchange.commandsStarted = true
        state = .exchanging(ExchangeBox(exchange))
        if dropBackend { emit(.dropBackend) }
        emit(.write(toClient: answer, toBackend: nil))
        if let compression { emit(.startCompression(client: compression, backend: nil, early: nil)) }
        if rest.readableBytes > 0 { feedExchangeClient(rest) }
    }
}
