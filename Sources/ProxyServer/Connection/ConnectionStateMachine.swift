import MySQLWire
import NIOCore

/// The life of one client connection and its backend connection, as a value: events in, actions out.
/// It owns no sockets; `ClientChannelHandler` feeds it bytes and events and carries out its actions.
///
/// Phases: connect to a backend → relay the server's greeting (capabilities the proxy cannot carry
/// cleared) → relay the client's handshake response (likewise) → relay everything else, scanning
/// frame headers so that the response tracker always knows where a command's response ends, which
/// is what makes it possible to report a lost backend with an ERR packet at the right place, to
/// finish running commands on shutdown, and (with scripts) to intercept single commands.
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
        /// Greeting relayed; gathering the client's handshake response in `gathered`.
        case awaitingHandshakeResponse
        case relaying
        case closed
    }

    /// What is known about the session, for logs and (later) scripts.
    struct Session {
        var greeting: HandshakeV10
        var username: String = ""
        var database: String?
        var capabilities: CapabilityFlags = []
    }

    enum Action {
        case none
        case connectToBackend
        case forwardToBackend(ByteBuffer)
        case forwardToClient(ByteBuffer)
        /// Forward what the server sent, then close both sides (an ERR instead of a greeting, or
        /// the end of the last response before a shutdown).
        case forwardToClientAndClose(ByteBuffer)
        /// Send packets the proxy made (usually one ERR) and close both sides; `reason` is logged.
        case sendToClientAndClose(ByteBuffer, reason: String)
        /// Close both sides without a word; `reason` is logged (nil: an ordinary end).
        case closeConnections(reason: String?)
        /// Close both sides because something went wrong where no ERR can be sent (in the middle
        /// of a packet); `reason` is logged as a warning.
        case abortConnections(reason: String)
    }

    private(set) var phase: Phase = .initialized
    private(set) var session: Session?
    private var gathered = ByteBuffer()
    private var tracker = ResponseTracker()
    private var fromClient = FrameScanner()
    private var fromServer = FrameScanner()
    /// The sequence id a packet the proxy inserts towards the client must carry.
    private var nextSequenceToClient: UInt8 = 0
    /// Shutdown asked: close once no response is pending.
    private var closeWhenIdle = false
    let statistics: ProxyStatistics

    init(statistics: ProxyStatistics) {
        self.statistics = statistics
    }

    /// Whether the handler should read from the client now: not during a graceful shutdown, which
    /// takes no new command. (Before the greeting a client has nothing to say; one that speaks
    /// anyway is cut off by `clientDataReceived`.)
    var wantsClientReads: Bool {
        !(phase == .relaying && closeWhenIdle)
    }

    var isAwaitingResponse: Bool {
        phase == .relaying && tracker.isAwaitingResponse
    }

    // MARK: - connection events

    mutating func clientConnected() -> Action {
        guard phase == .initialized else { return .none }
        phase = .connectingToBackend
        return .connectToBackend
    }

    mutating func backendConnected() -> Action {
        guard phase == .connectingToBackend else { return .none }
        phase = .awaitingGreeting
        return .none
    }

    /// No backend could be reached (all down, refused or timed out).
    mutating func noBackendAvailable(_ detail: String) -> Action {
        phase = .closed
        statistics.add(.errorsSentByProxy)
        return .sendToClientAndClose(Self.framed(.noBackend(detail), sequenceID: 0, protocol41: false), reason: "no backend available: \(detail)")
    }

    mutating func clientClosed() -> Action {
        let wasAwaiting = isAwaitingResponse
        guard phase != .closed else { return .none }
        phase = .closed
        return .closeConnections(reason: wasAwaiting ? "client went away while a response was pending" : nil)
    }

    mutating func backendClosed() -> Action {
        switch phase {
        case .initialized, .closed:
            return .none
        case .connectingToBackend, .awaitingGreeting:
            phase = .closed
            statistics.add(.backendsLost)
            statistics.add(.errorsSentByProxy)
            let err = ERRPacket.lostConnection("the backend closed the connection before its greeting")
            return .sendToClientAndClose(Self.framed(err, sequenceID: 0, protocol41: false), reason: "backend closed before its greeting")
        case .awaitingHandshakeResponse:
            // The client is about to send its handshake response (sequence 1); answer it with 2.
            phase = .closed
            statistics.add(.backendsLost)
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(Self.framed(.lostConnection("backend closed during the handshake"), sequenceID: 2, protocol41: true),
                                         reason: "backend closed during the handshake")
        case .relaying:
            phase = .closed
            statistics.add(.backendsLost)
            guard tracker.isAwaitingResponse else {
                return .closeConnections(reason: "backend closed the connection")
            }
            guard fromServer.isAtPacketBoundary else {
                return .abortConnections(reason: "backend closed the connection in the middle of a packet")
            }
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(Self.framed(.lostConnection(), sequenceID: nextSequenceToClient, protocol41: true),
                                         reason: "backend closed the connection while a response was pending")
        }
    }

    /// A graceful shutdown began: close now if nothing runs, else once the running command ended.
    mutating func shutdownRequested() -> Action {
        switch phase {
        case .relaying:
            if !tracker.isAwaitingResponse && fromClient.isAtPacketBoundary {
                phase = .closed
                return .closeConnections(reason: "shutting down")
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
            phase = .closed
            return .closeConnections(reason: "timed out during the handshake")
        }
        if client && !tracker.isAwaitingResponse {
            phase = .closed
            return .closeConnections(reason: "client idle for longer than the read timeout")
        }
        if !client && tracker.isAwaitingResponse {
            phase = .closed
            statistics.add(.errorsSentByProxy)
            if fromServer.isAtPacketBoundary {
                return .sendToClientAndClose(Self.framed(.backendReadTimeout(), sequenceID: nextSequenceToClient, protocol41: true),
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
        case .relaying:
            let action = relayFromServer(chunk)
            switch action {
            case .sendToClientAndClose, .closeConnections, .abortConnections:
                phase = .closed
            case .forwardToClient(let bytes) where closeWhenIdle && !tracker.isAwaitingResponse:
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
            return .forwardToClient(chunk)
        default:
            return .none
        }
    }

    private mutating func greetingBytesReceived() -> Action {
        var input = gathered
        guard let frame = input.readMySQLFrame() else { return .none }
        if frame.payload.getInteger(at: frame.payload.readerIndex, as: UInt8.self) == 0xFF {
            // "Too many connections", "Host ... is blocked": the server's own words, relayed.
            phase = .closed
            return .forwardToClientAndClose(gathered)
        }
        var payload = frame.payload
        do {
            let greeting = try HandshakeV10.restrictCapabilities(of: &payload, to: .relayable)
            var out = ByteBuffer()
            out.reserveCapacity(payload.readableBytes + 4 + input.readableBytes)
            var seq = frame.sequenceID
            out.writeMySQLPacket(payload, sequenceID: &seq)
            out.writeBuffer(&input)  // nothing, unless the server talks out of turn
            session = Session(greeting: greeting)
            gathered.clear()
            phase = .awaitingHandshakeResponse
            return .forwardToClient(out)
        } catch {
            phase = .closed
            statistics.add(.backendProtocolErrors)
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(Self.framed(.malformedPacket("the server's greeting: \(error)"), sequenceID: 0, protocol41: false),
                                         reason: "malformed greeting from the backend: \(error)")
        }
    }

    /// Scans a chunk from the server for packet boundaries, tracking responses; forwards it whole.
    private mutating func relayFromServer(_ chunk: ByteBuffer) -> Action {
        var failure: (FrameScanner.PacketStart, offset: Int, WireError)?
        fromServer.scan(chunk) { event in
            guard case .packetStart(let packet, let offset) = event else { return true }
            do throws(WireError) {
                _ = try tracker.serverPacketStarted(packet)
                return true
            } catch {
                failure = (packet, offset, error)
                return false
            }
        }
        if let (packet, offset, error) = failure {
            statistics.add(.backendProtocolErrors)
            return Self.serverPacketMalformed(chunk, at: offset, packet, error)
        }
        nextSequenceToClient = fromServer.lastSequenceID &+ 1
        return .forwardToClient(chunk)
    }

    /// Forwards what came before the bad packet and puts an ERR where it stood.
    private static func serverPacketMalformed(_ chunk: ByteBuffer, at offset: Int, _ packet: FrameScanner.PacketStart, _ error: WireError) -> Action {
        let reason = "malformed packet from the backend: \(error)"
        guard !packet.isSplit else { return .abortConnections(reason: reason) }
        var out = chunk.getSlice(at: chunk.readerIndex, length: offset) ?? ByteBuffer()
        var err = Self.framed(.malformedPacket("from the server: \(error)"), sequenceID: packet.header.sequenceID, protocol41: true)
        out.writeBuffer(&err)
        return .sendToClientAndClose(out, reason: reason)
    }

    // MARK: - bytes from the client

    mutating func clientDataReceived(_ chunk: ByteBuffer) -> Action {
        statistics.add(.bytesFromClients, chunk.readableBytes)
        switch phase {
        case .relaying:
            let action = relayFromClient(chunk)
            switch action {
            case .sendToClientAndClose, .abortConnections: phase = .closed
            default: break
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
            statistics.add(.clientProtocolErrors)
            return .abortConnections(reason: "client sent data before the server's greeting")
        }
    }

    private mutating func handshakeResponseBytesReceived() -> Action {
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
            statistics.add(.clientProtocolErrors)
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(Self.framed(err, sequenceID: reply, protocol41: true), reason: reason)
        }
        guard var session else { return refuse(.badHandshake(""), "handshake response without a greeting") }
        if HandshakeResponse41.isSSLRequest(frame.payload) {
            return refuse(.badHandshake("this proxy does not offer TLS yet; connect without SSL"), "client asked for TLS")
        }
        var payload = frame.payload
        do {
            let asked = try HandshakeResponse41.restrictCapabilities(of: &payload, to: .relayable)
            let response = try HandshakeResponse41(parsing: payload)
            session.username = response.username
            session.database = response.database
            session.capabilities = asked.intersection(session.greeting.capabilities).intersection(.relayable)
        } catch {
            return refuse(.badHandshake(""), "malformed handshake response: \(error)")
        }
        self.session = session
        var out = ByteBuffer()
        out.reserveCapacity(payload.readableBytes + 4)
        var seq = frame.sequenceID
        out.writeMySQLPacket(payload, sequenceID: &seq)
        tracker.handshakeResponseSent(capabilities: session.capabilities)
        nextSequenceToClient = reply
        gathered = ByteBuffer()
        phase = .relaying
        if input.readableBytes > 0 {
            // A client that does not wait for the verdict: relay the rest like any other bytes.
            guard case .forwardToBackend(var rest) = relayFromClient(input) else {
                phase = .closed
                return .abortConnections(reason: "malformed data after the handshake response")
            }
            out.writeBuffer(&rest)
        }
        return .forwardToBackend(out)
    }

    /// Scans a chunk from the client, registering each command with the tracker; forwards it whole.
    private mutating func relayFromClient(_ chunk: ByteBuffer) -> Action {
        var failure: (FrameScanner.PacketStart, WireError)?
        var commands = 0
        var queries = 0
        fromClient.scan(chunk) { event in
            guard case .packetStart(let packet, _) = event else { return true }
            do throws(WireError) {
                if case .command(let code, _) = try tracker.clientPacketStarted(packet) {
                    commands += 1
                    if code == .query { queries += 1 }
                }
                return true
            } catch {
                failure = (packet, error)
                return false
            }
        }
        if commands > 0 { statistics.add(.commands, commands) }
        if queries > 0 { statistics.add(.queries, queries) }
        if let (packet, error) = failure {
            statistics.add(.clientProtocolErrors)
            let reason = "malformed packet from the client: \(error)"
            if tracker.isAwaitingResponse || packet.isSplit {
                return .abortConnections(reason: reason)
            }
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(Self.framed(.unknownCommand(), sequenceID: packet.header.sequenceID &+ 1, protocol41: true), reason: reason)
        }
        nextSequenceToClient = fromClient.lastSequenceID &+ 1
        return .forwardToBackend(chunk)
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
}
