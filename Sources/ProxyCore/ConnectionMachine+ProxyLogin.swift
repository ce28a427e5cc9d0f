import MySQLWire
import NIOCore

/// `--proxy-auth=proxy`: the proxy greets the client with its own greeting (the servers'
/// version and capabilities, a challenge of its own), has the handler verify the handshake
/// response against the servers' accounts (`.verifyLogin` → `loginVerified(_:)`), and only then
/// opens a server connection, or takes a pooled one already logged in as that client. The server
/// login is the proxy's: the client's handshake response with the password answer recomputed for
/// the server's challenge from SHA1(password), which the client's right answer revealed. An
/// account whose plugin the proxy cannot log in with is relayed: the proxy's response names
/// mysql_native_password with no answer, and the server asks the client for its own plugin.
///
/// What scripts see: `read_handshake` the proxy's greeting, `read_auth` the client's response (it
/// may answer or refuse the login as before), `read_auth_result` the server's verdict on the
/// proxy's login (a pooled connection skips it: the handler does not pool for such scripts).
extension ConnectionMachine {
    /// What a login the proxy verifies carries from the greeting to the server's OK.
    struct OwnLogin {
        /// The proxy's greeting (its challenge is what the client answered).
        var greeting: HandshakeV10
        /// `connect_server`'s choice of backend.
        var preferred: Int?
        /// The verified login, once the verdict came.
        var plan: LoginPlan?
        /// SHA1(password) (empty: no password); nil for a relayed login.
        var credential: [UInt8]?
        /// The host pattern of the account the proxy matched.
        var account = ""
        /// The server's challenge and the capabilities of the proxy's login on that server.
        var serverChallenge: [UInt8] = []
        /// Who the server connection is logged in as, once it is (not for a relayed login).
        var login: ServerLogin?
        /// A COM_CHANGE_USER of the client's is under way (+ChangeUser).
        var changeUser: ChangeUserStage?
    }

    /// Kept out of line: most connections never have one, and it is read only during the login.
    indirect enum OwnLoginBox {
        case some(OwnLogin)
        var value: OwnLogin {
            switch self { case .some(let v): return v }
        }
    }

    var own: OwnLogin? {
        get { ownBox?.value }
        set { ownBox = newValue.map(OwnLoginBox.some) }
    }

    /// A client connected and the proxy authenticates it with `greeting` (nil: the server does,
    /// as before). The handler makes the greeting: the servers' version and capabilities, a
    /// fresh challenge, a connection id.
    public mutating func clientConnected(ownGreeting: HandshakeV10?) -> Action {
        guard case .initialized = state else { return .none }
        if let ownGreeting { own = OwnLogin(greeting: ownGreeting) }
        askConnectServer()
        return nextAction()
    }

    /// The greeting goes to the client (through `read_handshake`).
    mutating func greetClient(_ ownLogin: OwnLogin) {
        var greeting = ownLogin.greeting
        let policy = configuration.tls.offer
        let offer = policy == .always || (policy == .likeBackend && greeting.capabilities.contains(.ssl))
        greeting.capabilities = clientGreetingCapabilities(greeting.capabilities, mask: capabilityMask(hasServer: true), tls: offer)
        session.clientOffered = greeting.capabilities
        session.greeting = greeting
        var payload = ByteBuffer()
        payload.reserveCapacity(64 + greeting.serverVersion.utf8.count)  // one allocation, not a growth per field
        greeting.write(to: &payload)
        let forward = Greeting(payload: payload, sequenceID: 0, rest: ByteBuffer(), offersTLS: offer)
        if configuration.hooks.contains(.readHandshake) {
            state = .readHandshakeHook(forward)
            return emit(.runHook(hookCall(.readHandshake, loggedIn: false, serverIdle: false, status: greeting.status)))
        }
        emit(sendGreeting(forward))
    }

    /// The client's handshake response (or its answer to a plugin switch) is verified.
    mutating func askVerification(_ plan: LoginPlan, switched: Bool) {
        guard let ownLogin = own else { return }
        state = .verifyingLogin(plan)
        emit(.verifyLogin(LoginAttempt(user: plan.response.username, plugin: plan.response.authPluginName,
                                       response: plan.response.authResponse, challenge: Array(ownLogin.greeting.authPluginData.prefix(20)),
                                       clientTLS: session.clientTLS, switched: switched, changingUser: ownLogin.changeUser != nil)))
    }

    /// The handler's verdict on the login the machine asked it to verify.
    public mutating func loginVerified(_ verdict: LoginVerdict) -> Action {
        guard case .verifyingLogin(var plan) = state, var ownLogin = own else { return nextAction() }
        if case .verifying(let original)? = ownLogin.changeUser {
            if case .switchPlugin = verdict {} else {
                changeUserVerified(verdict, plan, original: original)
                return nextAction()
            }
        }
        switch verdict {
        case .refused(let err, let reason):
            noteClose(.authFailed)
            guard configuration.hooks.contains(.readAuthResult) else {
                emit(refuse(err, sequenceID: plan.reply, reason: reason, level: .info))
                break
            }
            // `read_auth_result` sees the proxy's verdict as it would the server's (it may word
            // the refusal otherwise; it cannot turn it into a login: see readAuthResultReturned)
            counts.errorsSentByProxy += 1
            emit(.log(.info, reason))
            var payload = ByteBuffer()
            err.write(to: &payload)
            let max = configuration.maximumPacketLength
            let auth = Authentication(shift: 0, secretGuard: nil, compression: nil, interceptsVerdict: true, afterLogin: .relay,
                                      clientCollector: PacketCollector(maximumPacketLength: max),
                                      serverCollector: PacketCollector(maximumPacketLength: max))
            state = .readAuthResultHook(auth, Verdict(bytes: Self.framed(err, sequenceID: plan.reply, protocol41: true),
                                                      packet: MySQLFrame(sequenceID: plan.reply, payload: payload), ok: false,
                                                      sequenceID: plan.reply))
            emit(.runHook(hookCall(.readAuthResult(packet: payload), loggedIn: false, serverIdle: false, status: .autocommit)))
        case .switchPlugin(let plugin):
            var payload = ByteBuffer()
            AuthSwitchRequest(pluginName: plugin, pluginData: Array(ownLogin.greeting.authPluginData.prefix(20)) + [0]).write(to: &payload)
            var out = ByteBuffer()
            var seq = plan.reply
            out.writeMySQLPacket(payload, sequenceID: &seq)
            plan.response.authPluginName = plugin
            state = .awaitingSwitchAnswer(plan, ByteBuffer())
            emit(.write(toClient: out, toBackend: nil))
        case .relay, .accepted:
            if case .accepted(let credential, let account) = verdict {
                ownLogin.credential = credential
                ownLogin.account = account
            }
            ownLogin.plan = plan
            let preferred = ownLogin.preferred
            own = ownLogin
            state = .connecting
            emit(.connectToBackend(preferred: preferred))
        }
        return nextAction()
    }

    /// The client's answer to the plugin switch.
    mutating func switchAnswerBytesReceived(_ chunk: ByteBuffer) -> Action {
        guard case .awaitingSwitchAnswer(var plan, var gathered) = state else { return .none }
        gathered.writeImmutableBuffer(chunk)
        var input = gathered
        guard let frame = input.readMySQLFrame() else {
            if gathered.readableBytes > 1 << 16 {
                clientBrokeProtocol()
                return close(.abort, reason: "an authentication answer larger than 64 KiB")
            }
            state = .awaitingSwitchAnswer(plan, gathered)
            return .none
        }
        plan.response.authResponse = Array(frame.payload.readableBytesView)
        plan.clientSequence = frame.sequenceID
        plan.reply = frame.sequenceID &+ 1
        plan.rest = input
        askVerification(plan, switched: true)
        return nextAction()
    }

    /// The server greeted a connection opened for a login the proxy verified: the proxy logs in.
    mutating func logIntoServer(greetingFrame frame: MySQLFrame, _ ownLogin: OwnLogin) -> Action {
        guard var plan = ownLogin.plan else { return .none }
        let greeting: HandshakeV10
        do {
            greeting = try HandshakeV10(parsing: frame.payload)
        } catch {
            backendBrokeProtocol()
            return refuse(.malformedPacket("the server's greeting: \(error)"), sequenceID: plan.reply, reason: "malformed greeting from the backend: \(error)")
        }
        let tls = configuration.tls
        guard let wantsTLS = tls.backend.wantsTLS(clientUsesTLS: session.clientTLS, serverOffers: greeting.capabilities.contains(.ssl)) else {
            return refuse(.sslConnectionError("the backend server does not offer TLS, which --proxy-backend-ssl=\(tls.backend.rawValue) requires here (MoonProxy)"),
                          sequenceID: plan.reply, reason: "the backend does not offer TLS")
        }
        let needed = session.capabilities.intersection(.sessionAffecting)
        guard greeting.capabilities.isSuperset(of: needed) else {
            return refuse(.noBackend("the backend does not offer the capabilities the session negotiated (\(needed.subtracting(greeting.capabilities)))"),
                          sequenceID: plan.reply, reason: "the backend lacks capabilities the proxy's greeting offered")
        }
        var response = plan.response
        var capabilities = response.capabilities.intersection(capabilityMask(hasServer: true)).intersection(greeting.capabilities)
            .subtracting(ProtocolCompression.capabilities).subtracting(.ssl)
        capabilities.formUnion(greeting.capabilities.intersection([.protocol41, .secureConnection, .pluginAuth]))
        if wantsTLS { capabilities.insert(.ssl) }
        // the server link's compression as in the relay (--proxy-backend-compression: mirror the
        // client's by default)
        let compression = configuration.compression.backendCompression(client: plan.clientCompression, offered: greeting.capabilities)
        if configuration.tracksSessions, ownLogin.credential != nil, greeting.capabilities.contains(.sessionTrack), compression == nil {
            // the proxy reads the session's state from the server's OK packets (+Tracking, and
            // +ExchangeTracking in a script's session); not over a compressed server link
            capabilities.insert(.sessionTrack)
            beginTracking(loginDatabase: plan.response.database ?? "")
        }
        response.zstdCompressionLevel = nil
        if let compression {
            capabilities.formUnion(compression.capability)
            if case .zstd(let level) = compression { response.zstdCompressionLevel = UInt8(clamping: level) }
        }
        response.capabilities = capabilities
        response.authPluginName = ProxyAuthenticator.nativePlugin
        let challenge = Array(greeting.authPluginData.prefix(20))
        if let credential = ownLogin.credential, !credential.isEmpty {
            response.authResponse = NativePassword.scramble(challenge: challenge, hashedPassword: credential)
        } else {
            response.authResponse = []  // no password, or relayed: the server asks the client
        }
        var payload = ByteBuffer()
        payload.reserveCapacity(128 + response.username.utf8.count + (response.database?.utf8.count ?? 0) + response.attributesBlock.readableBytes)
        response.write(to: &payload)
        plan.payload = payload
        plan.response = response  // what the server gets (the password guard reads its plugin)
        plan.serverSequence = wantsTLS ? 2 : 1
        plan.backendCompression = compression
        session.backendTLS = wantsTLS
        var updated = ownLogin
        updated.serverChallenge = challenge
        updated.login = ownLogin.credential.map { serverLogin(plan.response, credential: $0, serverCapabilities: capabilities, compression: compression) }
        updated.plan = nil
        updated.changeUser = nil
        own = updated
        sendLogin(plan)
        return .none
    }

    /// The handler gave the session a pooled server connection logged in as this client: the
    /// client gets the OK the server would have sent, and the session starts.
    public mutating func pooledServerAttached(backendTLS: Bool, localSocket: Bool) -> Action {
        guard case .connecting = state, var ownLogin = own, let plan = ownLogin.plan.take(), let credential = ownLogin.credential else { return .none }
        ownLogin.changeUser = nil
        let compression = expectedCompression(plan)
        ownLogin.login = serverLogin(plan.response, credential: credential, serverCapabilities: [], compression: compression, account: ownLogin.account)
        own = ownLogin
        session.backendTLS = backendTLS
        session.backendIsLocal = localSocket
        tracker = .commandPhase(capabilities: session.capabilities)
        fromServer = FrameScanner()
        if compression == nil { beginTracking(loginDatabase: plan.response.database ?? "") }
        var ok = ByteBuffer()
        ok.reserveCapacity(16)
        var seq = plan.reply
        var verdict = OKPacket(status: .autocommit)
        if session.capabilities.contains(.sessionTrack), let database = plan.response.database, !database.isEmpty,
           tracking?.state.clientTrackers.schema ?? SessionTrackSettings.mariaDBDefaults.schema {
            // as the server's OK after a login with a database: the schema tracker names it
            var block = ByteBuffer()
            block.reserveCapacity(database.utf8.count + 20)
            SessionTrackItem.write([.string(.schema, database)], to: &block)
            verdict.status.insert(.sessionStateChanged)
            verdict.sessionStateChanges = block
        }
        ResponseEncoding.ok(verdict, capabilities: session.capabilities, sequenceID: &seq, into: &ok)
        if configuration.hooks.contains(.readAuthResult) && !configuration.hooks.isDisjoint(with: Self.commandHooks) {
            return pooledLoginResult(ok, plan)
        }
        if !configuration.hooks.isDisjoint(with: Self.commandHooks) {
            var exchange = Exchange(hasServer: true, maximumPacketLength: configuration.maximumPacketLength)
            exchange.commandsStarted = true
            state = .exchanging(ExchangeBox(exchange))
        } else {
            if configuration.hooks.isEmpty {
                session.greeting = nil
                session.response = nil
            }
            state = .relaying(draining: false)
        }
        // the pool's reset turned the trackers off: they go on again ahead of the first command
        emit(.write(toClient: ok, toBackend: enableTrackers()))
        if let compression = plan.clientCompression { emit(.startCompression(client: compression, backend: nil, early: nil)) }
        if plan.rest.readableBytes > 0 { feedClient(plan.rest) }
        return nextAction()
    }

    /// A script's session with `read_auth_result` got a pooled connection: the hook sees the OK
    /// the client is to get, as it sees the server's after a login (it may give the connection
    /// to its pool, answer otherwise, or close), and the login ends as a server's would.
    mutating func pooledLoginResult(_ ok: ByteBuffer, _ plan: LoginPlan) -> Action {
        let max = configuration.maximumPacketLength
        var exchange = Exchange(hasServer: true, maximumPacketLength: max)
        exchange.commandsStarted = true
        var auth = Authentication(shift: 0, secretGuard: nil, compression: CompressionStart(client: plan.clientCompression, backend: nil),
                                  interceptsVerdict: true, afterLogin: .exchange(exchange),
                                  clientCollector: PacketCollector(maximumPacketLength: max), serverCollector: PacketCollector(maximumPacketLength: max))
        // what the client sent behind its handshake response waits for the verdict
        if plan.rest.readableBytes > 0 { auth.clientCollector.append(plan.rest) }
        let payload = ok.getSlice(at: ok.readerIndex + PacketHeader.size, length: ok.readableBytes - PacketHeader.size) ?? ByteBuffer()
        session.serverDatabase = session.database
        state = .readAuthResultHook(auth, Verdict(bytes: ok, packet: MySQLFrame(sequenceID: plan.reply, payload: payload), ok: true, sequenceID: plan.reply))
        emit(.runHook(hookCall(.readAuthResult(packet: payload), loggedIn: true, serverIdle: true, status: tracker.status)))
        return nextAction()
    }

    func serverLogin(_ response: HandshakeResponse41, credential: [UInt8], serverCapabilities: CapabilityFlags,
                     compression: ProtocolCompression?, account: String? = nil) -> ServerLogin {
        ServerLogin(user: response.username, database: response.database ?? "", characterSet: response.characterSet,
                    capabilities: serverCapabilities, sessionCapabilities: session.capabilities.intersection(.sessionAffecting),
                    credential: credential, attributes: response.attributesBlock, clientTLS: session.clientTLS,
                    compression: compression, account: account ?? own?.account ?? "")
    }

    /// The server link's compression a login would get from a server that offers both algorithms
    /// (what a pooled connection for it must have).
    func expectedCompression(_ plan: LoginPlan) -> ProtocolCompression? {
        configuration.compression.backendCompression(client: plan.clientCompression, offered: ProtocolCompression.capabilities)
    }

    /// Who the session's server connection is logged in as, when the proxy logged it in with a
    /// credential it holds (nil for a relayed login, or without `--proxy-auth=proxy`).
    /// (read from the box in place: `own` copies the whole login, greeting and plan included)
    public var serverLogin: ServerLogin? {
        guard case .some(.some(let ownLogin)) = ownBox else { return nil }
        return ownLogin.login
    }
    /// The challenge of the server the proxy logged into (a reset answers it, or the next).
    public var serverChallenge: [UInt8] {
        guard case .some(.some(let ownLogin)) = ownBox else { return [] }
        return ownLogin.serverChallenge
    }

    /// The login a pooled connection could serve (what the handler looks one up by), while the
    /// machine waits for a server connection; nil when a pooled one will not do.
    public var pendingServerLogin: ServerLogin? {
        // (read_auth_result sees a pooled login's OK only in a script's session: see pooledLoginResult)
        guard case .connecting = state, configuration.hooks.isDisjoint(with: [.readAuthResult]) || !configuration.hooks.isDisjoint(with: Self.commandHooks),
              let ownLogin = own, let plan = ownLogin.plan, let credential = ownLogin.credential else { return nil }
        return serverLogin(plan.response, credential: credential, serverCapabilities: [], compression: expectedCompression(plan))
    }

    /// `pendingServerLogin` and `pendingLoginIsTracked` at once, for the handler: mutating only so
    /// that the handler reaches them in place (a getter of its stored machine copies the machine).
    public mutating func pendingPoolRequest() -> (login: ServerLogin, tracked: Bool)? {
        guard let login = pendingServerLogin else { return nil }
        return (login, pendingLoginIsTracked)
    }

    /// Whether the login waiting for a server connection will be tracked, and so multiplexed
    /// (no read_query script, no compression towards the server).
    public var pendingLoginIsTracked: Bool {
        guard configuration.tracksSessions, configuration.hooks.isDisjoint(with: Self.commandHooks),
              case .connecting = state, let plan = own?.plan, own?.credential != nil else { return false }
        return expectedCompression(plan) == nil
    }

    /// Whether the session's server connection may go back to the pool when the client quits:
    /// the proxy logged it in and nothing is on its way.
    /// (`quitting`: the client's COM_QUIT was taken, and nothing of it went to the server.)
    func releasesServer(quitting: Bool) -> Bool {
        switch state {
        case .relaying:
            return mayRelease(quitting: quitting)
        case .exchanging(let box):
            // a script's session: between commands, with a server connection the script kept
            return mayRelease(quitting: quitting)
                && box.read { $0.hasServer && !$0.step.isActive && $0.queue.isEmpty && $0.serverCollector.isEmpty }
        default:
            return false
        }
    }

    /// A script's session whose COM_QUIT the script let through: its server connection may go
    /// back to the pool instead of ending (`exchange` is out of the state while it runs).
    func exchangeReleasesServer(_ exchange: borrowing Exchange) -> Bool {
        mayRelease(quitting: true) && exchange.hasServer && exchange.injections.isEmpty && exchange.serverCollector.isEmpty
    }

    /// Pooling is on, the proxy logged the connection in, and no response is on its way.
    private func mayRelease(quitting: Bool) -> Bool {
        configuration.poolsServers && own?.login != nil
            && (tracker.clientPhase == .command || tracker.clientPhase == .quit) && !tracker.isAwaitingResponse
            && fromServer.isAtPacketBoundary && (quitting || fromClient.isAtPacketBoundary)
    }
}
