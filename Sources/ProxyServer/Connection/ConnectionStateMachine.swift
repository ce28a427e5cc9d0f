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
struct ConnectionStateMachine {
    enum State {
        case initialized
        case connectingToBackend
        case awaitingGreeting(ByteBuffer)
        case awaitingHandshakeResponse(ByteBuffer, Session)
        case relaying(Relay)
        case closed
        case modifying
    }

    /// What is known about the session, for logs and (later) scripts.
    struct Session {
        var greeting: HandshakeV10
        var username: String = ""
        var database: String?
        var capabilities: CapabilityFlags = []
    }

    struct Relay {
        var session: Session
        var tracker: ResponseTracker
        var fromClient = FrameScanner()
        var fromServer = FrameScanner()
        /// The sequence id a packet the proxy inserts towards the client must carry.
        var nextSequenceToClient: UInt8 = 0
        /// Shutdown asked: close once no response is pending.
        var closeWhenIdle = false
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

    private(set) var state: State = .initialized
    let statistics: ProxyStatistics

    init(statistics: ProxyStatistics) {
        self.statistics = statistics
    }

    /// Whether the handler should read from the client now (before the greeting is relayed there is
    /// nothing the client may say; during a graceful shutdown no new command is taken).
    var wantsClientReads: Bool {
        switch state {
        case .awaitingHandshakeResponse: return true
        case .relaying(let relay): return !relay.closeWhenIdle
        default: return false
        }
    }

    var session: Session? {
        switch state {
        case .awaitingHandshakeResponse(_, let s): return s
        case .relaying(let r): return r.session
        default: return nil
        }
    }

    var isAwaitingResponse: Bool {
        if case .relaying(let r) = state { return r.tracker.isAwaitingResponse }
        return false
    }

    // MARK: - connection events

    mutating func clientConnected() -> Action {
        guard case .initialized = state else { return .none }
        state = .connectingToBackend
        return .connectToBackend
    }

    mutating func backendConnected() -> Action {
        guard case .connectingToBackend = state else { return .none }
        state = .awaitingGreeting(ByteBuffer())
        return .none
    }

    /// No backend could be reached (all down, refused or timed out).
    mutating func noBackendAvailable(_ detail: String) -> Action {
        state = .closed
        statistics.add(.errorsSentByProxy)
        return .sendToClientAndClose(Self.framed(.noBackend(detail), sequenceID: 0, protocol41: false), reason: "no backend available: \(detail)")
    }

    mutating func clientClosed() -> Action {
        switch state {
        case .closed: return .none
        case .relaying(let r) where r.tracker.isAwaitingResponse:
            state = .closed
            return .closeConnections(reason: "client went away while a response was pending")
        default:
            state = .closed
            return .closeConnections(reason: nil)
        }
    }

    mutating func backendClosed() -> Action {
        switch state {
        case .initialized, .closed, .modifying:
            return .none
        case .connectingToBackend, .awaitingGreeting:
            state = .closed
            statistics.add(.backendsLost)
            statistics.add(.errorsSentByProxy)
            let err = ERRPacket.lostConnection("the backend closed the connection before its greeting")
            return .sendToClientAndClose(Self.framed(err, sequenceID: 0, protocol41: false), reason: "backend closed before its greeting")
        case .awaitingHandshakeResponse:
            // The client is about to send its handshake response (sequence 1); answer it with 2.
            state = .closed
            statistics.add(.backendsLost)
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(Self.framed(.lostConnection("backend closed during the handshake"), sequenceID: 2, protocol41: true),
                                         reason: "backend closed during the handshake")
        case .relaying(let relay):
            state = .closed
            statistics.add(.backendsLost)
            guard relay.tracker.isAwaitingResponse else {
                return .closeConnections(reason: "backend closed the connection")
            }
            guard relay.fromServer.isAtPacketBoundary else {
                return .abortConnections(reason: "backend closed the connection in the middle of a packet")
            }
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(Self.framed(.lostConnection(), sequenceID: relay.nextSequenceToClient, protocol41: true),
                                         reason: "backend closed the connection while a response was pending")
        }
    }

    /// A graceful shutdown began: close now if nothing runs, else once the running command ended.
    mutating func shutdownRequested() -> Action {
        switch state {
        case .relaying(var relay):
            if !relay.tracker.isAwaitingResponse && relay.fromClient.isAtPacketBoundary {
                state = .closed
                return .closeConnections(reason: "shutting down")
            }
            relay.closeWhenIdle = true
            state = .relaying(relay)
            return .none
        case .closed:
            return .none
        default:
            state = .closed
            return .closeConnections(reason: "shutting down")
        }
    }

    /// The read timeout passed with no byte from `client` (true) or the backend (false).
    mutating func readTimedOut(client: Bool) -> Action {
        guard case .relaying(let relay) = state else {
            state = .closed
            return .closeConnections(reason: "timed out during the handshake")
        }
        if client && !relay.tracker.isAwaitingResponse {
            state = .closed
            return .closeConnections(reason: "client idle for longer than the read timeout")
        }
        if !client && relay.tracker.isAwaitingResponse {
            state = .closed
            statistics.add(.errorsSentByProxy)
            if relay.fromServer.isAtPacketBoundary {
                return .sendToClientAndClose(Self.framed(.backendReadTimeout(), sequenceID: relay.nextSequenceToClient, protocol41: true),
                                             reason: "backend sent nothing for longer than the read timeout")
            }
            return .abortConnections(reason: "backend stalled for longer than the read timeout")
        }
        return .none
    }

    // MARK: - bytes from the backend

    mutating func backendDataReceived(_ chunk: ByteBuffer) -> Action {
        statistics.add(.bytesFromBackends, chunk.readableBytes)
        switch state {
        case .awaitingGreeting(var buffer):
            state = .modifying
            buffer.writeImmutableBuffer(chunk)
            return greetingBytesReceived(buffer)
        case .awaitingHandshakeResponse:
            // Nothing is expected here; a server that times out the handshake may still say why.
            return .forwardToClient(chunk)
        case .relaying(var relay):
            state = .modifying
            let action = Self.relayFromServer(chunk, &relay, statistics)
            switch action {
            case .sendToClientAndClose, .closeConnections, .abortConnections:
                state = .closed
            case .forwardToClient(let bytes) where relay.closeWhenIdle && !relay.tracker.isAwaitingResponse:
                state = .closed
                return .forwardToClientAndClose(bytes)
            default:
                state = .relaying(relay)
            }
            return action
        default:
            return .none
        }
    }

    private mutating func greetingBytesReceived(_ buffer: ByteBuffer) -> Action {
        var input = buffer
        guard let frame = input.readMySQLFrame() else {
            state = .awaitingGreeting(buffer)
            return .none
        }
        if frame.payload.getInteger(at: frame.payload.readerIndex, as: UInt8.self) == 0xFF {
            // "Too many connections", "Host ... is blocked": the server's own words, relayed.
            state = .closed
            return .forwardToClientAndClose(buffer)
        }
        var payload = frame.payload
        do {
            let greeting = try HandshakeV10.restrictCapabilities(of: &payload, to: .relayable)
            var out = ByteBuffer()
            out.reserveCapacity(payload.readableBytes + 4 + input.readableBytes)
            var seq = frame.sequenceID
            out.writeMySQLPacket(payload, sequenceID: &seq)
            out.writeBuffer(&input)  // nothing, unless the server talks out of turn
            state = .awaitingHandshakeResponse(ByteBuffer(), Session(greeting: greeting))
            return .forwardToClient(out)
        } catch {
            state = .closed
            statistics.add(.backendProtocolErrors)
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(Self.framed(.malformedPacket("the server's greeting: \(error)"), sequenceID: 0, protocol41: false),
                                         reason: "malformed greeting from the backend: \(error)")
        }
    }

    /// Scans a chunk from the server for packet boundaries, tracking responses; forwards it whole.
    private static func relayFromServer(_ chunk: ByteBuffer, _ relay: inout Relay, _ statistics: ProxyStatistics) -> Action {
        var scan = chunk
        var packetStartIndex = scan.readerIndex
        while true {
            packetStartIndex = scan.readerIndex
            guard let event = relay.fromServer.next(&scan) else { break }
            guard case .packetStart(let packet) = event else { continue }
            do {
                _ = try relay.tracker.serverPacketStarted(packet)
            } catch {
                statistics.add(.backendProtocolErrors)
                return serverPacketMalformed(chunk, at: packetStartIndex, packet, error)
            }
        }
        relay.nextSequenceToClient = relay.fromServer.lastSequenceID &+ 1
        return .forwardToClient(chunk)
    }

    /// Forwards what came before the bad packet and puts an ERR where it stood.
    private static func serverPacketMalformed(_ chunk: ByteBuffer, at index: Int, _ packet: FrameScanner.PacketStart, _ error: WireError) -> Action {
        let reason = "malformed packet from the backend: \(error)"
        guard !packet.isSplit else { return .abortConnections(reason: reason) }
        var out = chunk.getSlice(at: chunk.readerIndex, length: index - chunk.readerIndex) ?? ByteBuffer()
        var err = Self.framed(.malformedPacket("from the server: \(error)"), sequenceID: packet.header.sequenceID, protocol41: true)
        out.writeBuffer(&err)
        return .sendToClientAndClose(out, reason: reason)
    }

    // MARK: - bytes from the client

    mutating func clientDataReceived(_ chunk: ByteBuffer) -> Action {
        statistics.add(.bytesFromClients, chunk.readableBytes)
        switch state {
        case .awaitingHandshakeResponse(var buffer, let session):
            state = .modifying
            buffer.writeImmutableBuffer(chunk)
            return handshakeResponseBytesReceived(buffer, session)
        case .relaying(var relay):
            state = .modifying
            let action = Self.relayFromClient(chunk, &relay, statistics)
            switch action {
            case .sendToClientAndClose, .abortConnections: state = .closed
            default: state = .relaying(relay)
            }
            return action
        case .closed:
            return .none
        default:
            // Reads are not asked for before the greeting went out, so a client cannot get here
            // unless it speaks first; MySQL clients never do.
            state = .closed
            statistics.add(.clientProtocolErrors)
            return .abortConnections(reason: "client sent data before the server's greeting")
        }
    }

    private mutating func handshakeResponseBytesReceived(_ buffer: ByteBuffer, _ session: Session) -> Action {
        var input = buffer
        guard let frame = input.readMySQLFrame() else {
            if buffer.readableBytes > 1 << 16 {
                state = .closed
                return .abortConnections(reason: "handshake response larger than 64 KiB")
            }
            state = .awaitingHandshakeResponse(buffer, session)
            return .none
        }
        let reply = frame.sequenceID &+ 1
        func refuse(_ err: ERRPacket, _ reason: String) -> Action {
            state = .closed
            statistics.add(.clientProtocolErrors)
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(Self.framed(err, sequenceID: reply, protocol41: true), reason: reason)
        }
        if HandshakeResponse41.isSSLRequest(frame.payload) {
            return refuse(.badHandshake("this proxy does not offer TLS yet; connect without SSL"), "client asked for TLS")
        }
        var payload = frame.payload
        var session = session
        do {
            let asked = try HandshakeResponse41.restrictCapabilities(of: &payload, to: .relayable)
            let response = try HandshakeResponse41(parsing: payload)
            session.username = response.username
            session.database = response.database
            session.capabilities = asked.intersection(session.greeting.capabilities).intersection(.relayable)
        } catch {
            return refuse(.badHandshake(""), "malformed handshake response: \(error)")
        }
        var out = ByteBuffer()
        out.reserveCapacity(payload.readableBytes + 4)
        var seq = frame.sequenceID
        out.writeMySQLPacket(payload, sequenceID: &seq)
        var relay = Relay(session: session, tracker: ResponseTracker())
        relay.tracker.handshakeResponseSent(capabilities: session.capabilities)
        relay.nextSequenceToClient = reply
        if input.readableBytes > 0 {
            // A client that does not wait for the verdict: relay the rest like any other bytes.
            if case .forwardToBackend(var rest) = Self.relayFromClient(input, &relay, statistics) {
                out.writeBuffer(&rest)
            } else {
                state = .closed
                return .abortConnections(reason: "malformed data after the handshake response")
            }
        }
        state = .relaying(relay)
        return .forwardToBackend(out)
    }

    /// Scans a chunk from the client, registering each command with the tracker; forwards it whole.
    private static func relayFromClient(_ chunk: ByteBuffer, _ relay: inout Relay, _ statistics: ProxyStatistics) -> Action {
        var scan = chunk
        while let event = relay.fromClient.next(&scan) {
            guard case .packetStart(let packet) = event else { continue }
            do {
                if case .command(let code, _) = try relay.tracker.clientPacketStarted(packet) {
                    statistics.add(.commands)
                    if code == .query { statistics.add(.queries) }
                }
            } catch {
                statistics.add(.clientProtocolErrors)
                let reason = "malformed packet from the client: \(error)"
                if relay.tracker.isAwaitingResponse || packet.isSplit {
                    return .abortConnections(reason: reason)
                }
                statistics.add(.errorsSentByProxy)
                return .sendToClientAndClose(Self.framed(.unknownCommand(), sequenceID: packet.header.sequenceID &+ 1, protocol41: true), reason: reason)
            }
        }
        relay.nextSequenceToClient = relay.fromClient.lastSequenceID &+ 1
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
