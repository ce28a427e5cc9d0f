import MySQLWire
import NIOCore
import ProxyScripting

/// The greeting, the client's handshake response and the server's verdict, with the hooks a script
/// may run at each: `connect_server`, `read_handshake`, `read_auth` and `read_auth_result`.
extension ConnectionStateMachine {
    /// `connect_server` returned PROXY_SEND_RESULT: an ERR refuses the client; anything else (a RAW
    /// greeting made by the script) makes the proxy the server: mock-server mode, no backend.
    mutating func scriptAnsweredConnect(_ response: ScriptResponse) -> Action {
        if case .error = response {
            phase = .closed
            return .send(Output(toClient: response.encode(command: nil, capabilities: [.protocol41], sequenceID: 0),
                                close: "connect_server refused the client"))
        }
        var greeting = Self.mockGreeting()
        var out = ByteBuffer()
        let offer = tlsPolicy.offer == .always
        if case .raw(let packets) = response, var first = packets.first,
           let parsed = try? HandshakeV10.rewriteCapabilities(of: &first, { clientGreetingCapabilities($0, mask: .scriptable, tls: offer) }) {
            clientOffered = clientGreetingCapabilities(parsed.capabilities, mask: .scriptable, tls: offer)
            clientTLSOffered = offer
            greeting = parsed
            var seq: UInt8 = 0
            out.writeMySQLPacket(first, sequenceID: &seq)
            for packet in packets.dropFirst() { out.writeMySQLPacket(packet, sequenceID: &seq) }
        } else {
            script?.log(.warning, "connect_server answered with something that is not a greeting (proxy.response.type = MYSQLD_PACKET_RAW with a handshake packet); clients will not understand it")
            out = response.encode(command: nil, capabilities: [.protocol41], sequenceID: 0)
        }
        hasServer = false
        intercepting = true
        session = Session(greeting: greeting)
        phase = .awaitingHandshakeResponse
        return .send(Output(toClient: out))
    }

    /// The capabilities client and server may negotiate through this connection: all the relay
    /// can carry, unless a script reads commands or results (or answers the login), which needs
    /// packets in the shapes MySQL Proxy's scripts know.
    var capabilityMask: CapabilityFlags {
        guard let script, hasServer else { return script == nil ? .relayable : .scriptable }
        return script.hooks.isDisjoint(with: [.readQuery, .readQueryResult, .readAuth]) ? .relayable : .scriptable
    }

    /// What the greeting to the client offers, from what the server (or a script) offered: what
    /// the relay carries, TLS by the proxy's policy, and the compression the proxy speaks itself.
    func clientGreetingCapabilities(_ offered: CapabilityFlags, mask: CapabilityFlags, tls: Bool) -> CapabilityFlags {
        var caps = offered.intersection(mask).subtracting(ProtocolCompression.capabilities).union(compressionSettings.clientAlgorithms)
        if tls { caps.insert(.ssl) }
        return caps
    }

    /// What the proxy assumes a script's greeting offered when it cannot be read.
    static func mockGreeting() -> HandshakeV10 {
        HandshakeV10(serverVersion: "5.5.5-10.11.0-MoonProxy", connectionID: 1, authPluginData: Array(repeating: 0x41, count: 20),
                     capabilities: .scriptable)
    }

    mutating func greetingBytesReceived() -> Action {
        var input = gathered
        guard let frame = input.readMySQLFrame() else {
            if gathered.readableBytes > 1 << 16 {
                phase = .closed
                backendBrokeProtocol()
                return .sendToClientAndClose(Self.framed(.malformedPacket("the server's greeting is larger than 64 KiB"), sequenceID: 0, protocol41: false),
                                             reason: "the backend's greeting is larger than 64 KiB")
            }
            return .none
        }
        if frame.payload.getInteger(at: frame.payload.readerIndex, as: UInt8.self) == 0xFF {
            // "Too many connections", "Host ... is blocked": the server's own words, relayed.
            phase = .closed
            noteClose(.backendHandshake)
            return .forwardToClientAndClose(gathered)
        }
        var payload = frame.payload
        let greeting: HandshakeV10
        do {
            let mask = capabilityMask
            let policy = tlsPolicy.offer
            var offer = false
            var rewritten: CapabilityFlags = []
            greeting = try HandshakeV10.rewriteCapabilities(of: &payload) { offered in
                offer = policy == .always || (policy == .likeBackend && offered.contains(.ssl))
                rewritten = clientGreetingCapabilities(offered, mask: mask, tls: offer)
                return rewritten
            }
            clientOffered = rewritten
            clientTLSOffered = offer
        } catch {
            phase = .closed
            backendBrokeProtocol()
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(Self.framed(.malformedPacket("the server's greeting: \(error)"), sequenceID: 0, protocol41: false),
                                         reason: "malformed greeting from the backend: \(error)")
        }
        session = Session(greeting: greeting)
        gathered.clear()
        if let script {
            script.greetingReceived(greeting)
            if script.hooks.contains(.readHandshake) {
                script.prepareHook(loggedIn: false, serverIdle: false, status: greeting.status)
                if case .returned(.sendResult(let response)) = script.readHandshake() {
                    // MySQL Proxy sends the script's packet and hangs up.
                    phase = .closed
                    return .send(Output(toClient: response.encode(command: nil, capabilities: [.protocol41], sequenceID: frame.sequenceID),
                                        close: "read_handshake answered the client"))
                }
            }
        }
        var out = ByteBuffer()
        out.reserveCapacity(payload.readableBytes + 4 + input.readableBytes)
        var seq = frame.sequenceID
        out.writeMySQLPacket(payload, sequenceID: &seq)
        out.writeBuffer(&input)  // nothing, unless the server talks out of turn
        phase = .awaitingHandshakeResponse
        return .forwardToClient(out)
    }

    mutating func handshakeResponseBytesReceived() -> Action {
        var input = gathered
        guard let frame = input.readMySQLFrame() else {
            if gathered.readableBytes > 1 << 16 {
                phase = .closed
                return .abortConnections(reason: "handshake response larger than 64 KiB")
            }
            return .none
        }
        let reply = frame.sequenceID &+ 1
        func refuse(_ err: ERRPacket, _ reason: String) -> Action {
            phase = .closed
            clientBrokeProtocol()
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(Self.framed(err, sequenceID: reply, protocol41: true), reason: reason)
        }
        guard var session else { return refuse(.badHandshake(""), "handshake response without a greeting") }
        // Shorter than any handshake response (the server's MIN_HANDSHAKE_SIZE): bad handshake,
        // whatever its first bytes claim.
        if frame.payload.readableBytes < 6 {
            return refuse(.badHandshake(""), "a handshake response of \(frame.payload.readableBytes) bytes")
        }
        if let lower = frame.payload.getInteger(at: frame.payload.readerIndex, endianness: .little, as: UInt16.self),
           !CapabilityFlags(rawValue: UInt64(lower)).contains(.protocol41) {
            // A pre-4.1 client (HandshakeResponse320), as MySQL 4.1+ servers answer one whose
            // account needs the 4.1 authentication: in the old ERR format, without an SQLSTATE
            // (the client reports HY000).
            phase = .closed
            clientBrokeProtocol()
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(
                Self.framed(.authModeNotSupported("the proxy speaks protocol 4.1 and later; consider upgrading the client"), sequenceID: reply, protocol41: false),
                reason: "a pre-4.1 handshake response (no CLIENT_PROTOCOL_41), which the proxy does not speak")
        }
        if HandshakeResponse41.isSSLRequest(frame.payload) {
            guard clientTLSOffered && !clientTLS else {
                return refuse(.badHandshake(""), clientTLS ? "a second SSLRequest inside TLS" : "the client asked for TLS, which the greeting did not offer")
            }
            // The TLS handshake follows on this connection; the client's bytes after the request
            // are its first, and the handshake response comes inside TLS with the next sequence id.
            clientTLS = true
            gathered = ByteBuffer()
            return .startClientTLS(leftover: input)
        }
        if tlsPolicy.requireSecureTransport && !clientTLS && !tlsPolicy.localSocket {
            phase = .closed
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(Self.framed(.secureTransportRequired(), sequenceID: reply, protocol41: true),
                                         reason: "a plaintext login refused: --require-secure-transport is on")
        }
        // The server link is TLS when the policy says so; the response then follows an SSLRequest
        // of the proxy's and carries sequence id 2 on that link, whatever it carried here.
        var serverSequence: UInt8 = 1
        if hasServer {
            guard let wanted = tlsPolicy.backend.wantsTLS(clientUsesTLS: clientTLS, serverOffers: session.greeting.capabilities.contains(.ssl)) else {
                phase = .closed
                statistics.add(.errorsSentByProxy)
                let reason = tlsPolicy.backend == .preferred
                    ? "the client logged in over TLS and the backend server does not offer TLS; the proxy does not carry a TLS client over a plaintext server link (--proxy-backend-ssl=off would)"
                    : "the backend server does not offer TLS, which --proxy-backend-ssl=\(tlsPolicy.backend.rawValue) requires"
                return .sendToClientAndClose(Self.framed(.sslConnectionError("\(reason) (MoonProxy)"), sequenceID: reply, protocol41: true), reason: reason)
            }
            backendTLS = wanted
            serverSequence = wanted ? 2 : 1
        }
        var payload = frame.payload
        let response: HandshakeResponse41
        let clientCompression: ProtocolCompression?
        var backendCompression: ProtocolCompression?
        do {
            let asked = try HandshakeResponse41.restrictCapabilities(of: &payload, to: capabilityMask, adding: backendTLS ? .ssl : [])
            response = try HandshakeResponse41(parsing: frame.payload)
            session.username = response.username
            session.database = response.database
            session.capabilities = asked.intersection(session.greeting.capabilities).intersection(capabilityMask)
            // Each link's compression on its own: the client's from the proxy's offer, the
            // server's from the settings and the server's offer.
            clientCompression = ProtocolCompression.negotiated(asked: asked, offered: clientOffered,
                                                               zstdLevel: response.zstdCompressionLevel)
            session.capabilities.subtract(ProtocolCompression.capabilities)
            if hasServer {
                backendCompression = compressionSettings.backendCompression(client: clientCompression, offered: session.greeting.capabilities)
                try HandshakeResponse41.setCompression(of: &payload, parsed: response, to: backendCompression)
            }
        } catch {
            return refuse(.badHandshake(""), "malformed handshake response: \(error)")
        }
        self.session = session
        gathered = ByteBuffer()

        if let script {
            script.handshakeResponseReceived(response, capabilities: session.capabilities)
            var outcome = HookOutcome.notDefined
            if script.hooks.contains(.readAuth) {
                script.prepareHook(loggedIn: false, serverIdle: false, status: session.greeting.status)
                outcome = script.readAuth()
            }
            switch outcome {
            case .returned(.sendResult(let answer)):
                let bytes = answer.encode(command: nil, capabilities: session.capabilities, sequenceID: reply)
                if case .error = answer {
                    phase = .closed
                    noteClose(.authFailed)
                    return .send(Output(toClient: bytes, close: "read_auth refused the login"))
                }
                return loggedInWithoutServer(answer: bytes, rest: input, compression: clientCompression)
            case .returned(.sendQuery) where hasServer && !script.queries.isEmpty:
                // The first queued packet replaces the client's handshake response; the server
                // link's compression is then what that packet asks for.
                payload = script.queries.removeFirst().packet
                script.queries.removeAll()
                var own = try? HandshakeResponse41(parsing: payload)
                if var replaced = own {
                    // The session's flags (result formats, EOF packets, multi-results, ...) stay
                    // the client's, which reads what the server sends: a script that builds its
                    // packet with mysql.proto's defaults (MySQL Proxy's tutorial-scramble) cannot
                    // know them.
                    let session = session.capabilities.intersection(.sessionAffecting)
                    let merged = replaced.capabilities.subtracting(.sessionAffecting).union(session)
                    if merged != replaced.capabilities {
                        replaced.capabilities = merged
                        var rewritten = ByteBuffer()
                        replaced.write(to: &rewritten)
                        payload = rewritten
                        own = replaced
                    }
                }
                backendCompression = own.flatMap {
                    ProtocolCompression.negotiated(asked: $0.capabilities, offered: session.greeting.capabilities, zstdLevel: $0.zstdCompressionLevel)
                }
            default:
                break
            }
            if !hasServer {
                // Mock-server mode and read_auth did not answer: the client is let in, as MySQL Proxy does.
                var ok = ByteBuffer()
                var seq = reply
                ResponseEncoding.ok(OKPacket(status: .autocommit), capabilities: session.capabilities, sequenceID: &seq, into: &ok)
                return loggedInWithoutServer(answer: ok, rest: input, compression: clientCompression)
            }
            interceptingAuthResult = script.hooks.contains(.readAuthResult)
            intercepting = script.hooks.contains(.readQuery)
        }

        var out = ByteBuffer()
        out.reserveCapacity(payload.readableBytes + 4)
        var seq = serverSequence
        out.writeMySQLPacket(payload, sequenceID: &seq)
        tracker.handshakeResponseSent(capabilities: session.capabilities, sequenceID: serverSequence)
        loginShift = frame.sequenceID &- serverSequence
        let start = CompressionStart(client: clientCompression, backend: backendCompression)
        compressionPending = start.client == nil && start.backend == nil ? nil : start
        if clientTLS && hasServer && !backendLinkIsTrusted {
            // A password in clear in the handshake response itself (the greeting named a plugin
            // that sends it so): it goes on over unverified TLS only if the operator trusts such
            // servers, and never over a plaintext link.
            let plugin = response.authPluginName ?? ""
            let data = response.authResponse
            if (Self.cleartextPlugins.contains(plugin) && !data.isEmpty)
                || (plugin == Self.sha256PluginName && !data.isEmpty && data != Self.sha256PublicKeyRequest && !(data.count >= 256 && data.last != 0)),
               !(backendTLS && tlsPolicy.trustUnverifiedBackends) {
                let refused = PasswordRefused(plugin: plugin, unverifiedTLS: backendTLS, cleartextOnly: Self.cleartextPlugins.contains(plugin) || !backendTLS)
                phase = .closed
                statistics.add(.errorsSentByProxy)
                return .sendToClientAndClose(Self.framed(refused.packet, sequenceID: reply, protocol41: true), reason: "login refused: \(refused)")
            }
            secretGuard = SecretGuard(plugin: plugin, scramble: Array(session.greeting.authPluginData.prefix(20)), unverifiedTLS: backendTLS)
        }
        nextSequenceToClient = reply
        phase = .relaying
        var output = Output(toBackend: out)
        if backendTLS {
            do {
                output.backendTLSRequest = Self.framed(MySQLFrame(sequenceID: 1, payload: try HandshakeResponse41.sslRequest(for: payload)))
            } catch {
                return refuse(.badHandshake(""), "malformed handshake response: \(error)")
            }
        }
        guard input.readableBytes > 0 else { return output.backendTLSRequest == nil ? .forwardToBackend(out) : .send(output) }
        // A client that does not wait for the verdict: the rest goes like any other bytes.
        return Self.combine(output, then: clientDataDuringRelay(input))
    }

    /// The client's answers in the login while its sequence ids differ from the server's (one
    /// link is TLS, the other not): whole packets, renumbered. A command pipelined behind the
    /// login, and whatever follows the login, take the usual path.
    mutating func loginClientData(_ chunk: ByteBuffer) -> Action {
        clientCollector.append(chunk)
        var out = Output()
        do {
            while loginShift != 0 || secretGuard != nil, tracker.clientPhase == .authentication, let c = clientCollector.peekSequence(), c != 0,
                  let packet = try clientCollector.next() {
                _ = try tracker.clientPacketStarted(packet.start)
                nextSequenceToClient = packet.packet.sequenceID &+ 1
                guard try guardClientLoginPacket(packet.packet, &out) else { continue }
                out.backend(Self.framed(packet.packet, sequenceID: packet.packet.sequenceID &- loginShift))
            }
        } catch let failure as CachingSHA2.Failure {
            phase = .closed
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(Self.framed(.sslConnectionError("\(failure) (MoonProxy)"), sequenceID: nextSequenceToClient, protocol41: true),
                                         reason: "the client's password cannot be encrypted for the server: \(failure)")
        } catch {
            clientBrokeProtocol()
            return .abortConnections(reason: "malformed packet from the client during the login: \(error)")
        }
        if (loginShift != 0 || secretGuard != nil) && tracker.clientPhase == .authentication && clientCollector.peekSequence() != 0 {
            return Self.finish(out)  // the rest of a packet is on its way
        }
        guard let rest = clientCollector.takeUnread() else {
            return .abortConnections(reason: "the client sent a packet of 16 MiB or more during the login")
        }
        guard rest.readableBytes > 0 else { return Self.finish(out) }
        return Self.combine(out, then: intercepting ? exchangeClientData(rest) : relayFromClient(rest))
    }

    /// The TLS handshake with the server failed while the login waited for it: the client hears
    /// what a client library reports when its own handshake fails.
    mutating func backendTLSFailed(_ reason: String) -> Action {
        guard phase == .relaying, backendTLS, tracker.clientPhase == .authentication else { return .none }
        phase = .closed
        statistics.add(.errorsSentByProxy)
        return .sendToClientAndClose(Self.framed(.sslConnectionError("TLS with the backend server failed: \(reason) (MoonProxy)"),
                                                 sequenceID: nextSequenceToClient, protocol41: true),
                                     reason: "TLS with the backend failed: \(reason)")
    }

    /// The script let the client in without the server's word: the session goes on without a
    /// server connection (one the script may pick later from the pool).
    private mutating func loggedInWithoutServer(answer: ByteBuffer, rest: ByteBuffer, compression: ProtocolCompression?) -> Action {
        let drop = hasServer
        hasServer = false
        intercepting = true
        tracker = .commandPhase(capabilities: session?.capabilities ?? [.protocol41])
        phase = .relaying
        var out = Output(toClient: answer, dropBackend: drop)
        out.startCompression = compression.map { CompressionStart(client: $0, backend: nil) }
        compressionPending = nil
        guard rest.readableBytes > 0 else { return .send(out) }
        return Self.combine(out, then: exchangeClientData(rest))
    }

    /// The server's packets while the login runs, whole, so that its verdict (the OK or ERR that
    /// ends the exchange) can go to `read_auth_result` before the client sees it.
    mutating func authResultDataReceived(_ chunk: ByteBuffer) -> Action {
        serverCollector.append(chunk)
        var out = Output()
        do {
            while interceptingAuthResult || loginShift != 0 || compressionPending != nil || secretGuard != nil, let c = try serverCollector.next() {
                let kind = try tracker.serverPacketStarted(c.start)
                if secretGuard != nil {
                    do {
                        guard try guardServerLoginPacket(c.packet, &out) else { continue }
                    } catch let refused as PasswordRefused {
                        statistics.add(.errorsSentByProxy)
                        out.client(Self.framed(refused.packet, sequenceID: c.packet.sequenceID &+ loginShift, protocol41: true))
                        out.close = "login refused: \(refused)"
                        out.closeLevel = .warning
                        return .send(out)
                    } catch {
                        statistics.add(.errorsSentByProxy)
                        out.client(Self.framed(.sslConnectionError("\(error) (MoonProxy)"), sequenceID: nextSequenceToClient, protocol41: true))
                        out.close = "the RSA exchange with the server for the client's password failed: \(error)"
                        out.closeLevel = .warning
                        return .send(out)
                    }
                }
                let toClient = loginShift == 0 ? (c.raw ?? Self.framed(c.packet)) : Self.framed(c.packet, sequenceID: c.packet.sequenceID &+ loginShift)
                guard case .endOfResponse(let end) = kind, end.command == nil else {
                    out.client(toClient)
                    continue
                }
                let verdictSequence = c.packet.sequenceID &+ loginShift
                if end.kind == .error { noteClose(.authFailed) }
                interceptingAuthResult = false
                loginShift = 0
                secretGuard = nil
                if let pending = compressionPending {
                    compressionPending = nil
                    if end.kind == .ok { out.startCompression = pending }
                }
                var verdict = toClient
                if let script, script.hooks.contains(.readAuthResult) {
                    if end.kind == .ok { script.databaseChanged(to: session?.database ?? "", forClient: false) }
                    script.prepareHook(loggedIn: end.kind == .ok, serverIdle: end.kind == .ok, status: tracker.status)
                    if case .returned(.sendResult(let answer)) = script.readAuthResult(packet: c.packet.payload) {
                        verdict = answer.encode(command: nil, capabilities: session?.capabilities ?? [.protocol41], sequenceID: verdictSequence)
                        if case .error = answer, end.kind == .ok {
                            out.close = "read_auth_result refused the login"
                            noteClose(.authFailed)
                        }
                    }
                    applyServerChange()
                    if script.connectionCloseRequested {
                        noteClose(.scriptClosed)
                        out.close = out.close ?? "the script set proxy.connection.connection_close"
                    }
                }
                out.client(verdict)
                nextSequenceToClient = verdictSequence &+ 1
            }
        } catch {
            backendBrokeProtocol()
            return .abortConnections(reason: "malformed packet from the backend during the login: \(error)")
        }
        if !interceptingAuthResult && loginShift == 0 && compressionPending == nil && secretGuard == nil {
            // What followed the verdict in the same read (a partial packet too) is read as usual.
            guard let rest = serverCollector.takeUnread() else {
                return .abortConnections(reason: "the server sent a packet of 16 MiB or more right after its verdict on the login")
            }
            if out.startCompression?.backend != nil {
                // compressed already: it comes back through the link's decompressor
                if rest.readableBytes > 0 { out.compressedFromServer = rest }
            } else if rest.readableBytes > 0, case .forwardToClient(let bytes) = relayFromServer(rest) {
                out.client(bytes)
            }
            if out.close == nil {
                do {
                    try drainQueue(&out)
                } catch {
                    clientBrokeProtocol()
                    return .abortConnections(reason: "malformed packet from the client: \(error)")
                }
            }
        }
        return Self.finish(out, fromServer: true)
    }

    /// What the handler is to do with `output`, as the plainest action that does it. Bytes the
    /// proxy writes to the side it is not reading from (`fromServer` tells which side that is)
    /// must go out at once: the flush at the end of a read cycle only covers the other side.
    static func finish(_ output: Output, fromServer: Bool = false) -> Action {
        if output.close == nil && !output.dropBackend && output.backendTLSRequest == nil && output.startCompression == nil {
            if output.toClient == nil, let bytes = output.toBackend, !fromServer { return .forwardToBackend(bytes) }
            if output.toBackend == nil, let bytes = output.toClient, fromServer { return .forwardToClient(bytes) }
            if output.toClient == nil && output.toBackend == nil { return .none }
        }
        return .send(output)
    }

    /// `output` followed by what `action` does.
    static func combine(_ output: Output, then action: Action) -> Action {
        var out = output
        switch action {
        case .none:
            break
        case .forwardToBackend(let bytes):
            out.backend(bytes)
        case .forwardToClient(let bytes):
            out.client(bytes)
        case .forwardToClientAndClose(let bytes):
            out.client(bytes)
            out.close = out.close ?? "closing"
        case .send(let more):
            if let bytes = more.toClient { out.client(bytes) }
            if let bytes = more.toBackend { out.backend(bytes) }
            out.dropBackend = out.dropBackend || more.dropBackend
            out.close = out.close ?? more.close
            out.backendTLSRequest = out.backendTLSRequest ?? more.backendTLSRequest
            out.startCompression = out.startCompression ?? more.startCompression
            out.compressedFromServer = out.compressedFromServer ?? more.compressedFromServer
        case .connectToBackend, .startClientTLS, .sendToClientAndClose, .closeConnections, .abortConnections, .closeAfterBackendClosed,
             .forwardToClientUnderstoodNot:
            return action
        }
        return finish(out)
    }
}
