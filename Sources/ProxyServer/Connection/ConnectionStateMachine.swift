import Logging
import MySQLWire
import NIOCore
import ProxyScripting

/// The life of one client connection and its backend connection, as a value: events in, actions out.
/// It owns no sockets; `ClientChannelHandler` feeds it bytes and events and carries out its actions.
///
/// Phases: connect to a backend → relay the server's greeting (capabilities the proxy cannot carry
/// cleared) → relay the client's handshake response (likewise) → relay everything else, scanning
/// frame headers so that the response tracker always knows where a command's response ends, which
/// is what makes it possible to answer a stalled backend with an ERR packet at the right place, to
/// finish running commands on shutdown, and to hand single commands to a script.
///
/// Without a script, or with a script that has no `read_query`, commands and responses stream
/// through untouched (`+Relay`). With `read_query`, the machine takes the client's commands one at
/// a time and lets the script decide (`+Exchange`); the hooks of the handshake are in `+Handshake`.
///
/// The relay's state (tracker, scanners, session) lives in stored properties next to `phase`
/// rather than in the phase's payload: the relay runs for every chunk of every query, and moving a
/// payload out of an enum and back costs a copy of all its references each time.
struct ConnectionStateMachine {
    enum Phase: Equatable {
        case initialized
        case connectingToBackend
        /// Gathering the server's greeting in `gathered`.
        case awaitingGreeting
        /// Greeting sent; gathering the client's handshake response in `gathered`.
        case awaitingHandshakeResponse
        case relaying
        case closed
    }

    /// What is known about the session, for logs and scripts.
    struct Session {
        var greeting: HandshakeV10
        var username: String = ""
        var database: String?
        var capabilities: CapabilityFlags = []
    }

    /// Bytes for either side that the proxy made or rearranged, and what to do after them.
    struct Output {
        var toClient: ByteBuffer?
        var toBackend: ByteBuffer?
        /// Close the server connection (not the client's): the script answered in its place.
        var dropBackend = false
        /// Close both sides once the client's bytes are out; the reason is logged at `closeLevel`
        /// (debug for an ordinary end, warning for a peer's fault).
        var close: String?
        var closeLevel: Logger.Level = .info

        mutating func client(_ bytes: ByteBuffer) {
            if toClient == nil { toClient = bytes } else { var b = bytes; toClient!.writeBuffer(&b) }
        }

        mutating func backend(_ bytes: ByteBuffer) {
            if toBackend == nil { toBackend = bytes } else { var b = bytes; toBackend!.writeBuffer(&b) }
        }

        /// An SSLRequest to write to the server in plaintext before `toBackend`, after which the
        /// server link turns to TLS (everything in `toBackend` goes through it).
        var backendTLSRequest: ByteBuffer?
        /// The login that negotiated compression on either link ended with its OK (in `toClient`,
        /// which still goes uncompressed): from now on each link named here speaks the compressed
        /// protocol with its algorithm. `compressedFromServer` is what the server sent behind its
        /// OK, already compressed.
        var startCompression: CompressionStart?
        var compressedFromServer: ByteBuffer?

        var isEmpty: Bool { toClient == nil && toBackend == nil && !dropBackend && close == nil && backendTLSRequest == nil && startCompression == nil }
    }

    /// The compression each link starts once the login is through.
    struct CompressionStart: Equatable {
        var client: ProtocolCompression?
        var backend: ProtocolCompression?
    }

    /// What this connection may do with TLS, from the configuration and the listener.
    struct TLSPolicy {
        var offer: ClientTLSSettings.Offer = .never
        var requireSecureTransport = false
        var backend = BackendTLSSettings.Mode.off
        /// The client came through a unix socket, which counts as secure transport.
        var localSocket = false
        /// `--proxy-backend-server-public-key`: the key a password goes encrypted with over a
        /// plaintext server link (see +Secrets).
        var pinnedServerKey: String?
        /// `--proxy-backend-get-server-public-key`: servers that are not verified may have passwords.
        var trustUnverifiedBackends = false
    }

    enum Action {
        case none
        case connectToBackend
        case forwardToBackend(ByteBuffer)
        case forwardToClient(ByteBuffer)
        /// Forward what the server sent, then close both sides (an ERR instead of a greeting, or
        /// the end of the last response before a shutdown).
        case forwardToClientAndClose(ByteBuffer)
        /// Write to either side and flush at once (scripted connections). Boxed: an `Output` is
        /// several buffers wide, and every action is copied and destroyed on the relay's path.
        indirect case send(Output)
        /// Send packets the proxy made (usually one ERR) and close both sides; `reason` is logged.
        case sendToClientAndClose(ByteBuffer, reason: String)
        /// Close both sides without a word (once what was written to the client is out); `reason`
        /// is logged (nil: an ordinary end).
        case closeConnections(reason: String?)
        /// The server closed: close the client once what was relayed is out. Logged as a warning
        /// when a response (or the login) was under way.
        case closeAfterBackendClosed(duringResponse: Bool)
        /// Forward what the server sent although the tracker could not follow it; `warning` says
        /// why (the relay picks up again at the client's next command).
        case forwardToClientUnderstoodNot(ByteBuffer, warning: String)
        /// The client sent an SSLRequest: run the TLS handshake on its connection, the handshake's
        /// bytes that came with the request (`leftover`) first.
        case startClientTLS(leftover: ByteBuffer)
        /// Close both sides because something went wrong where no ERR can be sent (in the middle
        /// of a packet); `reason` is logged as a warning.
        case abortConnections(reason: String)
    }

    var phase: Phase = .initialized
    var session: Session?
    var gathered = ByteBuffer()
    var tracker = ResponseTracker()
    var fromClient = FrameScanner()
    var fromServer = FrameScanner()
    /// The sequence id a packet the proxy inserts towards the client must carry.
    var nextSequenceToClient: UInt8 = 0
    /// Shutdown asked: close once no response is pending.
    var closeWhenIdle = false
    let statistics: LoopStatistics

    // MARK: records (see +Records)

    /// What the handler wants to know about each command.
    var recording = Recording.off
    /// The time of the event being handled, set by the handler while `recording` is on.
    var now: UInt64 = 0
    /// Commands sent and not yet answered, oldest first.
    var openRecords: [CommandRecord] = []
    /// Commands answered since the handler last took them.
    var finishedRecords: [CommandRecord] = []
    /// Why the connection ended, once it is ending.
    var closeSource: CloseSource?

    // MARK: scripting (see +Exchange)

    /// The connection's script, nil when the proxy runs none.
    let script: ConnectionScripting?
    /// Whether a server connection is attached: false in mock-server mode (the script answered
    /// `connect_server`) and after the script gave the connection back to the pool.
    var hasServer = true
    /// Commands go through `read_query` one at a time (else they stream through).
    var intercepting = false
    /// The server's verdict on the login goes to `read_auth_result` before the client.
    var interceptingAuthResult = false
    var clientCollector = PacketCollector()
    var serverCollector = PacketCollector()
    var exchange = Exchange()
    /// The script answered a statement with a LOCAL INFILE request: the client's packets are
    /// its file, up to an empty one.
    var scriptedUpload = false
    /// A command went to the script: the login is over, whatever COM_CHANGE_USER runs now.
    var commandsStarted = false
    /// Commands the client sent while an earlier one was being handled.
    /// (One slot to begin with: most connections never queue a command, and NIO's default of 16
    /// would cost every connection a kilobyte.)
    var queuedCommands = CircularBuffer<PacketCollector.Collected>(initialCapacity: 1)
    static let maximumQueuedCommands = 64

    // MARK: TLS (see +Handshake)

    let tlsPolicy: TLSPolicy
    /// The greeting sent to the client offered CLIENT_SSL.
    var clientTLSOffered = false
    /// The client's link turned to TLS (after its SSLRequest).
    var clientTLS = false
    /// The server's link turned to TLS (after the proxy's SSLRequest).
    var backendTLS = false
    /// The server link is a unix socket.
    var backendIsLocal = false
    /// Whether the server link is known to end at the server: a unix socket, or TLS whose
    /// certificate was verified.
    var backendLinkIsTrusted: Bool { backendIsLocal || (backendTLS && tlsPolicy.backend.verifies) }
    /// While the login runs, the client's sequence ids are the server's plus this: the SSLRequest
    /// takes one packet on a TLS link, so when only one of the two links is TLS they are one apart.
    var loginShift: UInt8 = 0
    /// Set while a login runs with a TLS client link and a plaintext server link (see +Secrets).
    var secretGuard: SecretGuard?
    /// The login negotiated compression on either link and has no verdict yet: its packets are
    /// taken whole so that the compressed protocol starts exactly after the OK.
    var compressionPending: CompressionStart?
    let compressionSettings: CompressionSettings
    /// The capabilities the greeting the client got offered (the session's greeting is the
    /// server's, as it offered them).
    var clientOffered: CapabilityFlags = []

    init(statistics: LoopStatistics, recording: Recording = .off, script: ConnectionScripting? = nil, maxPacketSize: Int = 64 << 20, tls: TLSPolicy = TLSPolicy(),
         compression: CompressionSettings = CompressionSettings()) {
        self.statistics = statistics
        self.recording = recording
        self.script = script
        self.tlsPolicy = tls
        self.compressionSettings = compression
        clientCollector.maximumPacketLength = maxPacketSize
        serverCollector.maximumPacketLength = maxPacketSize
    }

    /// Whether the handler should read from the client now: not during a graceful shutdown, which
    /// takes no new command, nor while scripted commands pile up. (Before the greeting a client
    /// has nothing to say; one that speaks anyway is cut off by `clientDataReceived`.)
    var wantsClientReads: Bool {
        !(phase == .relaying && closeWhenIdle) && queuedCommands.count < Self.maximumQueuedCommands
    }

    var isAwaitingResponse: Bool {
        phase == .relaying && (tracker.isAwaitingResponse || exchange.active)
    }

    /// Whether the server connection could be given to the pool now: logged in, and nothing on its way.
    var serverIsIdle: Bool {
        phase == .relaying && hasServer && tracker.clientPhase == .command && !tracker.isAwaitingResponse
            && !exchange.active && fromServer.isAtPacketBoundary && serverCollector.isEmpty
    }

    /// The first login is over (or the connection is): the login timeout no longer applies.
    var loginEnded: Bool {
        phase == .closed || (phase == .relaying && (commandsStarted || tracker.clientPhase != .authentication))
    }

    /// The session's status flags as of the last OK or EOF.
    var serverStatus: ServerStatus { tracker.status }

    // MARK: - connection events

    mutating func clientConnected() -> Action {
        guard phase == .initialized else { return .none }
        if let script, script.hooks.contains(.connectServer) {
            script.prepareHook(loggedIn: false, serverIdle: false, status: .autocommit)
            if case .returned(.sendResult(let response)) = script.connectServer() {
                return scriptAnsweredConnect(response)
            }
            // nil, IGNORE_RESULT or an error: connect, to the backend the script chose if it did.
        }
        phase = .connectingToBackend
        return .connectToBackend
    }

    /// `localSocket`: the server is on this machine, behind a unix socket, where nobody can sit
    /// between (a password may go to it as to a verified TLS link).
    mutating func backendConnected(localSocket: Bool = false) -> Action {
        guard phase == .connectingToBackend else { return .none }
        backendIsLocal = localSocket
        phase = .awaitingGreeting
        return .none
    }

    /// A connect failed (the handler marked that backend down): MySQL Proxy asks `connect_server`
    /// again, so that the script can pick another backend.
    mutating func backendConnectFailed() -> Action {
        guard phase == .connectingToBackend else { return .none }
        if let script, script.hooks.contains(.connectServer) {
            script.prepareHook(loggedIn: false, serverIdle: false, status: .autocommit)
            if case .returned(.sendResult(let response)) = script.connectServer() {
                return scriptAnsweredConnect(response)
            }
        }
        return .connectToBackend
    }

    /// The server connection could not be opened for want of the proxy's own resources (the
    /// descriptor limit): the client is refused as a full server refuses it.
    mutating func refusedForWantOfResources() -> Action {
        guard phase == .connectingToBackend else { return .none }
        phase = .closed
        noteClose(.limit)
        statistics.add(.errorsSentByProxy)
        return .sendToClientAndClose(Self.framed(.tooManyConnections, sequenceID: 0, protocol41: true),
                                     reason: "refused: the proxy has no descriptor left for the server connection")
    }

    /// Connected to a server that has not greeted yet.
    var isAwaitingGreeting: Bool { phase == .awaitingGreeting }

    /// The server connected to sent no greeting in time (the handler dropped it and marked its
    /// backend down): as after a failed connect, the next backend (or `connect_server` again).
    mutating func backendGreetingTimedOut() -> Action {
        guard phase == .awaitingGreeting else { return .none }
        gathered.clear()
        phase = .connectingToBackend
        return backendConnectFailed()
    }

    /// No backend could be reached (all down, refused or timed out).
    mutating func noBackendAvailable(_ detail: String) -> Action {
        phase = .closed
        noteClose(.noBackend)
        statistics.add(.errorsSentByProxy)
        return .sendToClientAndClose(Self.framed(.noBackend(detail), sequenceID: 0, protocol41: false), reason: "no backend available: \(detail)")
    }

    mutating func clientClosed() -> Action {
        let wasAwaiting = isAwaitingResponse
        guard phase != .closed else { return .none }
        if tracker.clientPhase == .quit || (phase == .relaying && loginEnded && !wasAwaiting) {
            noteClose(.none)
        } else {
            noteClose(loginEnded ? .clientNetwork : .clientHandshake)
        }
        phase = .closed
        return .closeConnections(reason: wasAwaiting ? "client went away while a response was pending" : nil)
    }

    /// The server closed its connection. The client gets what the server sent and then the close,
    /// as it would directly (a killed connection's ERR, or nothing: client error 2013), never an
    /// ERR the server did not send: applications and pools decide whether to reconnect from it.
    mutating func backendClosed() -> Action {
        switch phase {
        case .initialized, .closed:
            return .none
        case .connectingToBackend, .awaitingGreeting, .awaitingHandshakeResponse, .relaying:
            guard hasServer else { return .none }
            let pending = phase != .relaying || tracker.isAwaitingResponse || exchange.active
            phase = .closed
            // after the client's COM_QUIT the close is the server's answer, not a loss
            if tracker.clientPhase != .quit {
                statistics.add(.backendsLost)
                noteClose(loginEnded ? .backendNetwork : .backendHandshake)
            } else {
                noteClose(.none)
            }
            return .closeAfterBackendClosed(duringResponse: pending)
        }
    }

    /// A graceful shutdown began: close now if nothing runs, else once the running command ended.
    mutating func shutdownRequested() -> Action {
        if phase != .closed { noteClose(.proxyShutdown) }
        switch phase {
        case .relaying:
            if !isAwaitingResponse && fromClient.isAtPacketBoundary && clientCollector.isEmpty {
                phase = .closed
                return .closeConnections(reason: "shutting down")
            }
            if tracker.isStreaming && !exchange.active {
                // A replication stream ends when the server ends it, which may be never.
                phase = .closed
                return .closeConnections(reason: "shutting down (a replication stream was running)")
            }
            closeWhenIdle = true
            return .none
        case .closed:
            return .none
        default:
            phase = .closed
            return .closeConnections(reason: "shutting down")
        }
    }

    /// The read timeout passed with no byte from `client` (true) or the backend (false).
    mutating func readTimedOut(client: Bool) -> Action {
        guard phase == .relaying else {
            noteClose(.timeout)
            phase = .closed
            return .closeConnections(reason: "timed out during the handshake")
        }
        if client && !isAwaitingResponse {
            noteClose(.timeout)
            phase = .closed
            return .closeConnections(reason: "client idle for longer than the read timeout")
        }
        if !client && hasServer && tracker.isAwaitingResponse {
            noteClose(.timeout)
            phase = .closed
            statistics.add(.errorsSentByProxy)
            if fromServer.isAtPacketBoundary && serverCollector.isEmpty && (!exchange.active || exchange.clientMayTakeError) {
                let sequence = intercepting ? nextSequenceToClient : tracker.replySequence(afterServerSequence: fromServer.lastSequenceID)
                return .sendToClientAndClose(Self.framed(.backendReadTimeout(), sequenceID: sequence, protocol41: true),
                                             reason: "backend sent nothing for longer than the read timeout")
            }
            return .abortConnections(reason: "backend stalled for longer than the read timeout")
        }
        return .none
    }

    // MARK: - bytes from the backend

    mutating func backendDataReceived(_ chunk: ByteBuffer) -> Action {
        statistics.add(.bytesFromBackends, chunk.readableBytes)
        switch phase {
        case .relaying where !intercepting && !closeWhenIdle && !interceptingAuthResult && loginShift == 0
                                && compressionPending == nil && !exchange.active && secretGuard == nil:
            // The plain relay (no hook on the path): it only ever forwards.
            return relayFromServer(chunk)
        case .relaying:
            var action: Action
            if interceptingAuthResult || loginShift != 0 || compressionPending != nil || secretGuard != nil {
                action = authResultDataReceived(chunk)
            } else if exchange.active {
                action = exchangeServerData(chunk)
            } else {
                action = relayFromServer(chunk)
                if intercepting && !queuedCommands.isEmpty && tracker.clientPhase == .command, case .forwardToClient(let bytes) = action {
                    // The login's verdict came: the commands sent behind it go to read_query now.
                    var out = Output(toClient: bytes)
                    do {
                        try drainQueue(&out)
                        action = Self.finish(out, fromServer: true)
                    } catch {
                        clientBrokeProtocol()
                        action = .abortConnections(reason: "malformed packet from the client: \(error)")
                    }
                }
            }
            switch action {
            case .sendToClientAndClose, .closeConnections, .abortConnections, .forwardToClientAndClose, .closeAfterBackendClosed:
                phase = .closed
            case .send(let output) where output.close != nil:
                phase = .closed
            case .forwardToClient(let bytes) where closeWhenIdle && !isAwaitingResponse:
                phase = .closed
                return .forwardToClientAndClose(bytes)
            default:
                break
            }
            return action
        case .awaitingGreeting:
            gathered.writeImmutableBuffer(chunk)
            return greetingBytesReceived()
        case .awaitingHandshakeResponse:
            // Nothing is expected here; a server that times out the handshake may still say why.
            return hasServer ? .forwardToClient(chunk) : .none
        default:
            return .none
        }
    }

    // MARK: - bytes from the client

    mutating func clientDataReceived(_ chunk: ByteBuffer) -> Action {
        statistics.add(.bytesFromClients, chunk.readableBytes)
        switch phase {
        case .relaying:
            let action = clientDataDuringRelay(chunk)
            switch action {
            case .sendToClientAndClose, .abortConnections, .closeConnections:
                phase = .closed
            case .send(let output) where output.close != nil:
                phase = .closed
            default:
                break
            }
            return action
        case .awaitingHandshakeResponse:
            gathered.writeImmutableBuffer(chunk)
            return handshakeResponseBytesReceived()
        case .closed:
            return .none
        default:
            // Reads are not asked for before the greeting went out, so a client cannot get here
            // unless it speaks first; MySQL clients never do.
            phase = .closed
            clientBrokeProtocol()
            return .abortConnections(reason: "client sent data before the server's greeting")
        }
    }

    /// Bytes from the client once its handshake response went on.
    mutating func clientDataDuringRelay(_ chunk: ByteBuffer) -> Action {
        if (loginShift != 0 || secretGuard != nil) && tracker.clientPhase == .authentication { return loginClientData(chunk) }
        return intercepting ? exchangeClientData(chunk) : relayFromClient(chunk)
    }

    // MARK: - helpers

    /// An ERR packet, framed. Before the handshake the client has not agreed on PROTOCOL_41, so the
    /// SQLSTATE is left out, as a server does.
    static func framed(_ err: ERRPacket, sequenceID: UInt8, protocol41: Bool) -> ByteBuffer {
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
}
