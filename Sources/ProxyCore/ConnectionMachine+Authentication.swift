import MySQLWire
import NIOCore

/// The login between the handshake response and the server's verdict. Most logins need nothing
/// of the proxy but the relay's tracking; the `authenticating` state takes the packets one by one
/// when one of these holds:
/// - only one link is TLS: the SSLRequest takes a sequence id on that link, so the client's and
///   the server's sequence ids differ and each packet is renumbered (`shift`);
/// - the password guard watches for a password the client sends in clear (see +Secrets);
/// - compression starts with the verdict: the OK goes out uncompressed, what follows compressed;
/// - `read_auth_result` wants the verdict before the client.
extension ConnectionMachine {
    struct Authentication {
        /// The client's sequence ids are the server's plus this.
        var shift: UInt8
        var secretGuard: SecretGuard?
        /// The compression each link starts with the OK.
        var compression: CompressionStart?
        /// `read_auth_result` is defined.
        var interceptsVerdict: Bool
        /// What the session becomes once the login is through.
        var afterLogin: AfterLogin
        var clientCollector: PacketCollector
        var serverCollector: PacketCollector
    }

    enum AfterLogin {
        /// No hook on the commands' path.
        case relay
        /// Commands go through the script (those the client sends behind its login wait here).
        case exchange(Exchange)
    }

    /// The compression each link starts once the login is through.
    struct CompressionStart: Equatable {
        var client: ProtocolCompression?
        var backend: ProtocolCompression?
    }

    /// The server's verdict, held while `read_auth_result` runs.
    struct Verdict {
        /// The verdict as the client gets it unless the script answers.
        var bytes: ByteBuffer
        var packet: MySQLFrame
        var ok: Bool
        /// The client's sequence id for it.
        var sequenceID: UInt8
    }

    // MARK: - sending the login

    /// The handshake response (possibly replaced by `read_auth`) goes to the server.
    mutating func sendLogin(_ plan: LoginPlan) {
        var out = ByteBuffer()
        out.reserveCapacity(plan.payload.readableBytes + 4)
        var seq = plan.serverSequence
        out.writeMySQLPacket(plan.payload, sequenceID: &seq)
        tracker.handshakeResponseSent(capabilities: session.capabilities, sequenceID: plan.serverSequence)
        let shift = plan.clientSequence &- plan.serverSequence
        let start = CompressionStart(client: plan.clientCompression, backend: plan.backendCompression)
        var secretGuard: SecretGuard?
        if session.clientTLS && !backendLinkIsTrusted {
            // A password in clear in the handshake response itself (the greeting named a plugin
            // that sends it so): it goes on over unverified TLS only if the operator trusts such
            // servers, and never over a plaintext link.
            let plugin = plan.response.authPluginName ?? ""
            let data = plan.response.authResponse
            if (Self.cleartextPlugins.contains(plugin) && !data.isEmpty)
                || (plugin == Self.sha256PluginName && !data.isEmpty && data != Self.sha256PublicKeyRequest && !(data.count >= 256 && data.last != 0)),
               !(session.backendTLS && configuration.tls.trustUnverifiedBackends) {
                let refused = PasswordRefused(plugin: plugin, unverifiedTLS: session.backendTLS,
                                              cleartextOnly: Self.cleartextPlugins.contains(plugin) || !session.backendTLS)
                return emit(refuse(refused.packet, sequenceID: plan.reply, reason: "login refused: \(refused)"))
            }
            secretGuard = SecretGuard(plugin: plugin, scramble: Array((session.greeting?.authPluginData ?? []).prefix(20)),
                                      unverifiedTLS: session.backendTLS)
        }
        nextSequenceToClient = plan.reply
        if session.backendTLS {
            do {
                emit(.startBackendTLS(sslRequest: Self.framed(MySQLFrame(sequenceID: 1, payload: try HandshakeResponse41.sslRequest(for: plan.payload)))))
            } catch {
                return emit(refuseHandshake("malformed handshake response: \(error)", reply: plan.reply))
            }
        }
        let hooks = configuration.hooks
        let scripted = !hooks.isDisjoint(with: Self.commandHooks)
        let compressionPending = start.client == nil && start.backend == nil ? nil : start
        // (a tracked script's session takes the verdict whole too: written for the client's
        // trackers, and the proxy's trackers on behind it, +ExchangeTracking)
        if shift != 0 || secretGuard != nil || compressionPending != nil || hooks.contains(.readAuthResult) || (scripted && tracking != nil) {
            let max = configuration.maximumPacketLength
            state = .authenticating(Authentication(
                shift: shift, secretGuard: secretGuard, compression: compressionPending, interceptsVerdict: hooks.contains(.readAuthResult),
                afterLogin: scripted ? .exchange(Exchange(hasServer: true, maximumPacketLength: max)) : .relay,
                clientCollector: PacketCollector(maximumPacketLength: max), serverCollector: PacketCollector(maximumPacketLength: max)))
        } else if scripted {
            state = .exchanging(ExchangeBox(Exchange(hasServer: true, maximumPacketLength: configuration.maximumPacketLength)))
        } else {
            if hooks.isEmpty {
                // nobody reads them again: a connection without a script keeps little
                session.greeting = nil
                session.response = nil
            }
            state = .relaying(draining: false)
        }
        emit(.write(toClient: nil, toBackend: out))
        // A client that does not wait for the verdict: the rest goes like any other bytes.
        if plan.rest.readableBytes > 0 { feedClient(plan.rest) }
    }

    /// Whether the server link is known to end at the server: a unix socket, or TLS whose
    /// certificate was verified.
    var backendLinkIsTrusted: Bool { session.backendIsLocal || (session.backendTLS && configuration.tls.backend.verifies) }

    /// The TLS handshake with the server failed while the login waited for it: the client hears
    /// what a client library reports when its own handshake fails.
    public mutating func backendTLSFailed(_ reason: String) -> Action {
        guard session.backendTLS, tracker.clientPhase == .authentication, !isClosed else { return .none }
        noteClose(.backendHandshake)
        return refuse(.sslConnectionError("TLS with the backend server failed: \(reason) (MoonProxy)"), sequenceID: nextSequenceToClient,
                      reason: "TLS with the backend failed: \(reason)")
    }

    // MARK: - the client's packets

    /// The client's answers in the login, whole and renumbered, past the guard. A command
    /// pipelined behind the login, and whatever follows it, take the session's usual path.
    mutating func authenticationClientData(_ chunk: ByteBuffer) {
        guard case .authenticating(var auth) = state else { return }
        state = .modifying
        auth.clientCollector.append(chunk)
        var out = Output()
        do {
            while tracker.clientPhase == .authentication, let c = auth.clientCollector.peekSequence(), c != 0,
                  let packet = try auth.clientCollector.next() {
                _ = try tracker.clientPacketStarted(packet.start)
                nextSequenceToClient = packet.packet.sequenceID &+ 1
                guard try guardClientLoginPacket(&auth, packet.packet, &out) else { continue }
                out.backend(Self.framed(packet.packet, sequenceID: packet.packet.sequenceID &- auth.shift))
            }
        } catch let failure as RSAFailure {
            emit(out)
            return emit(refuse(.sslConnectionError("\(failure) (MoonProxy)"), sequenceID: nextSequenceToClient,
                               reason: "the client's password cannot be encrypted for the server: \(failure)"))
        } catch {
            clientBrokeProtocol()
            return emit(close(.abort, reason: "malformed packet from the client during the login: \(error)"))
        }
        emit(out)
        if tracker.clientPhase == .authentication && auth.clientCollector.peekSequence() != 0 {
            state = .authenticating(auth)
            return  // the rest of a packet is on its way
        }
        guard let rest = auth.clientCollector.takeUnread() else {
            return emit(close(.abort, reason: "the client sent a packet of 16 MiB or more during the login"))
        }
        guard rest.readableBytes > 0 else {
            state = .authenticating(auth)
            return
        }
        // Commands behind the login: relayed (the server queues them behind its verdict), or
        // held for the script until the verdict is known.
        switch auth.afterLogin {
        case .relay:
            state = .authenticating(auth)
            emit(relayFromClient(rest))
        case .exchange(var exchange):
            queueBehindLogin(&exchange, rest)
            auth.afterLogin = .exchange(exchange)
            if case .modifying = state { state = .authenticating(auth) }
        }
    }

    // MARK: - the server's packets

    /// The server's packets of the login, whole, until its verdict.
    mutating func authenticationServerData(_ chunk: ByteBuffer) {
        guard case .authenticating(var auth) = state else { return }
        state = .modifying
        auth.serverCollector.append(chunk)
        var out = Output()
        do {
            while let c = try auth.serverCollector.next() {
                let kind = try tracker.serverPacketStarted(c.start)
                if auth.secretGuard != nil {
                    do {
                        guard try guardServerLoginPacket(&auth, c.packet, &out) else { continue }
                    } catch let refused as PasswordRefused {
                        emit(out)
                        return emit(refuse(refused.packet, sequenceID: c.packet.sequenceID &+ auth.shift, reason: "login refused: \(refused)"))
                    } catch {
                        emit(out)
                        return emit(refuse(.sslConnectionError("\(error) (MoonProxy)"), sequenceID: nextSequenceToClient,
                                           reason: "the RSA exchange with the server for the client's password failed: \(error)"))
                    }
                }
                let toClient = auth.shift == 0 ? (c.raw ?? Self.framed(c.packet)) : Self.framed(c.packet, sequenceID: c.packet.sequenceID &+ auth.shift)
                guard case .endOfResponse(let end) = kind, end.command == nil else {
                    out.client(toClient)
                    continue
                }
                let verdict = Verdict(bytes: toClient, packet: c.packet, ok: end.kind == .ok, sequenceID: c.packet.sequenceID &+ auth.shift)
                if !verdict.ok { noteClose(.authFailed) }
                if auth.interceptsVerdict {
                    if verdict.ok { session.serverDatabase = session.database }
                    emit(out)
                    state = .readAuthResultHook(auth, verdict)
                    return emit(.runHook(hookCall(.readAuthResult(packet: c.packet.payload), loggedIn: verdict.ok, serverIdle: verdict.ok,
                                                  status: tracker.status)))
                }
                return loginDone(auth, verdict: verdict.bytes, sequenceID: verdict.sequenceID, ok: verdict.ok, before: out, closing: nil)
            }
        } catch {
            backendBrokeProtocol()
            return emit(close(.abort, reason: "malformed packet from the backend during the login: \(error)"))
        }
        state = .authenticating(auth)
        emit(out)
    }

    mutating func readAuthResultReturned(_ auth: Authentication, _ verdict: Verdict, _ result: HookResult) {
        var auth = auth
        var bytes = verdict.bytes
        var closing: String?
        if case .sendResult(let answer) = result.decision {
            bytes = answer.encode(command: nil, capabilities: session.capabilities, sequenceID: verdict.sequenceID)
            if case .error = answer, verdict.ok {
                closing = "read_auth_result refused the login"
                noteClose(.authFailed)
            }
        }
        var unused = Output()  // (a migration, which sends, is read_query's only)
        if let change = result.serverChange, case .exchange(var exchange) = auth.afterLogin {
            // The script gave the server connection to the pool (or took another) after the OK.
            applyServerChange(change, to: &exchange, &unused)
            auth.afterLogin = .exchange(exchange)
            auth.serverCollector.reset()
        } else if let change = result.serverChange {
            var exchange = Exchange(hasServer: true, maximumPacketLength: configuration.maximumPacketLength)
            applyServerChange(change, to: &exchange, &unused)
            auth.afterLogin = .exchange(exchange)
            auth.serverCollector.reset()
        }
        if result.closeRequested {
            noteClose(.scriptClosed)
            closing = closing ?? "the script set proxy.connection.connection_close"
        }
        if !verdict.ok && own != nil {
            // a refused login the proxy verified (the proxy's verdict, or the server's on the
            // proxy's login): whatever the script answered, the connection ends
            closing = closing ?? "login refused"
        }
        loginDone(auth, verdict: bytes, sequenceID: verdict.sequenceID, ok: verdict.ok, before: Output(), closing: closing)
    }

    /// The verdict goes to the client (after what came before it), compression starts where the
    /// login negotiated it, and the session takes its course.
    mutating func loginDone(_ auth: Authentication, verdict: ByteBuffer, sequenceID: UInt8, ok: Bool, before: Output, closing: String?) {
        var auth = auth
        var out = before
        if ok, tracking != nil {
            // the proxy's login asked for session tracking: the client gets the OK written for its trackers
            let edit = Self.trackedPacket(verdict, from: 0, to: verdict.readableBytes, dropped: false, &tracking!)
            out.client(edit.replacement ?? verdict)
            tracking!.responsesEnded &+= 1
        } else {
            out.client(verdict)
        }
        nextSequenceToClient = sequenceID &+ 1
        let compression = ok ? auth.compression : nil
        // What followed the verdict in the same read (a partial packet too) is read as usual.
        guard let rest = auth.serverCollector.takeUnread() else {
            emit(out)
            return emit(close(.abort, reason: "the server sent a packet of 16 MiB or more right after its verdict on the login"))
        }
        if let closing {
            if let toBackend = out.toBackend { emit(.write(toClient: nil, toBackend: toBackend)) }
            return emit(close(toClient: out.toClient, reason: closing, level: .info))
        }
        if let backend = compression?.backend {
            // compressed already: it comes back through the link's decompressor
            emit(.startCompression(client: nil, backend: backend, early: rest.readableBytes > 0 ? rest : nil))
        }
        emit(out)
        if let client = compression?.client { emit(.startCompression(client: client, backend: nil, early: nil)) }
        let serverRest = compression?.backend == nil ? rest : ByteBuffer()
        switch auth.afterLogin {
        case .relay:
            state = .relaying(draining: false)
            if ok, let trackers = enableTrackers() { emit(.write(toClient: nil, toBackend: trackers)) }
            if serverRest.readableBytes > 0 { emit(relayFromServer(serverRest)) }
        case .exchange(var exchange):
            // the commands that waited for the verdict go to the script now (once the trackers
            // are on, where the session is tracked)
            if ok, exchange.hasServer, let trackers = enableTrackers() { emit(.write(toClient: nil, toBackend: trackers)) }
            if serverRest.readableBytes > 0, exchange.hasServer { exchange.serverCollector.append(serverRest) }
            resumeExchange(exchange)
        }
        // client bytes still held in the login's collector (a command's start behind the login)
        if let held = auth.clientCollector.takeUnread(), held.readableBytes > 0, !isClosed {
            feedClient(held)
        }
    }
}
