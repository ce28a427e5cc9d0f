import MySQLWire
import NIOCore

/// Commands handed to the script, with MySQL Proxy's semantics.
///
/// The client's commands are taken one at a time (later ones wait in `queue`) and given to
/// `read_query`. Its answer decides what happens:
/// - nothing (or an error in the hook): the command goes to the server and its response streams
///   back exactly as in the transparent relay;
/// - PROXY_SEND_RESULT: `proxy.response` answers the client; the server hears nothing;
/// - PROXY_SEND_QUERY: the queries in `proxy.queries` go to the server one after the other, each
///   with sequence id 0. A result marked `resultset_is_needed` is collected (up to the buffer
///   limit) and handed to `read_query_result`, which may forward it, replace it or drop it; any
///   other result streams to the client as it arrives. The client gets exactly one response per
///   command: a second one is dropped and logged, and when none was sent the proxy answers with
///   an ERR rather than leave the client waiting.
///
/// A hook is a round trip: where the script must decide, the exchange records what it is waiting
/// for in its `step`, queues `.runHook` behind what it has to send, and stops; `hookReturned`
/// applies the answer and carries on with what was left (queued commands, bytes already read).
extension ConnectionMachine {
    /// The exchange, held by the state out of line (see `ExchangeBox`).
    struct Exchange {
        /// A server connection is attached: not in a mock server, nor after the script gave it
        /// to the pool.
        var hasServer: Bool
        var step = Step.idle
        /// Commands the client sent while an earlier one was handled.
        var queue: [PacketCollector.Collected] = []
        var clientCollector: PacketCollector
        var serverCollector: PacketCollector
        /// The script answered a statement with a LOCAL INFILE request: the client's packets are
        /// its file, up to an empty one.
        var scriptedUpload = false
        /// A command went to the script: the login is over, whatever COM_CHANGE_USER runs now.
        var commandsStarted = false
        /// A shutdown waits for the running command.
        var draining = false
        /// `proxy.queries` between hooks: what is left to inject for the current command.
        var injections: [Injection] = []
        /// The injected query whose response is coming, and what is known of that response so
        /// far; nil while the client's own command runs. In `readQueryResultHook`, the result
        /// `read_query_result` decides on.
        var injected: InjectionOutcome?
        /// The last response of the command that runs (for its record).
        var lastEnd: ResponseTracker.ResponseEnd?
        /// The first byte of the running response's first packet, once seen (kept here, not in the
        /// command, so that a chunk of the response leaves the command where it is).
        var responseFirstByte: UInt8?
        /// The script set `proxy.connection.connection_close`: the connection ends after the command.
        var closeRequested = false
        /// The first packet the collector holds was placed by the response tracker already (a
        /// streamed response handed over to the collector at an OK it must read whole).
        var placedPacket: ResponseTracker.ServerPacket?
        /// A tracked stream's last bytes, held back: a header (and prefix) split across reads.
        var streamHeld = ByteBuffer()

        static let maximumQueuedCommands = 64

        /// The step, leaving `.idle` in its place: its command is moved out, not copied, to be
        /// changed and put back.
        @inline(__always)
        mutating func takeStep() -> Step {
            var taken = Step.idle
            swap(&taken, &step)
            return taken
        }

        init(hasServer: Bool, maximumPacketLength: Int) {
            self.hasServer = hasServer
            clientCollector = PacketCollector(maximumPacketLength: maximumPacketLength)
            serverCollector = PacketCollector(maximumPacketLength: maximumPacketLength)
        }

        enum Step {
            /// No command runs.
            case idle
            /// `read_query` runs for the command.
            case readQueryHook(Command)
            /// `read_query` runs for a packet of a file the script asked for (`last`: the empty
            /// packet that ends it).
            case uploadHook(Command, last: Bool)
            /// The command runs: the client's own on the server, or the injections.
            case running(Command)
            /// `read_query_result` runs for an injection's result.
            case readQueryResultHook(Command)

            var isActive: Bool {
                if case .idle = self { return false }
                return true
            }

            var isRunning: Bool {
                if case .running = self { return true }
                return false
            }

            var isHook: Bool {
                switch self {
                case .readQueryHook, .uploadHook, .readQueryResultHook: return true
                default: return false
                }
            }

            /// The running command's response is collected (kept or renumbered), not streamed.
            var collects: Bool {
                if case .running(let command) = self { return command.collect != nil }
                return false
            }

            /// The running command's sequence-id shift (0 when none runs).
            var shift: UInt8 {
                if case .running(let command) = self { return command.shift }
                return 0
            }

            var command: Command? {
                switch self {
                case .idle: return nil
                case .readQueryHook(let c), .uploadHook(let c, _), .running(let c), .readQueryResultHook(let c): return c
                }
            }
        }
    }

    /// The exchange as the state holds it: in the buffer of a one-element array (copied on
    /// write, as any array), so that a connection that never runs a script (most) carries 8
    /// bytes for it rather than the 500 of its collectors and the command in flight. An entry
    /// point takes the box out of the state (which is `.modifying` meanwhile, so the box's
    /// buffer has one owner), works on `exchange` in place, and puts it back: no event allocates.
    struct ExchangeBox {
        var buffer: [Exchange]

        init(_ exchange: Exchange) { buffer = [exchange] }

        /// Reads the exchange where it is, without a copy of it.
        @inline(__always)
        func read<R>(_ body: (borrowing Exchange) -> R) -> R {
            buffer.withUnsafeBufferPointer { body($0[0]) }
        }
    }

    /// The command being handled.
    struct Command {
        enum Collect: Equatable {
            /// Keep the packets for `read_query_result` (`resultset_is_needed`).
            case buffer
            /// Forward whole packets with their sequence ids moved by `shift`.
            case shift
        }

        var code: CommandCode
        /// The sequence id of the command's last frame: the response starts after it.
        var clientSequence: UInt8
        /// The client's command packet.
        var packet: ByteBuffer
        /// The packet as it came, framed (a single-frame packet read whole): sent on as it is.
        var raw: ByteBuffer?
        /// COM_INIT_DB's database, to update the session when it succeeds.
        var database: String?
        /// COM_CHANGE_USER's user and database, likewise.
        var changeUser: ChangeUserRequest?
        /// How the current response is handled; nil streams it through the frame scanner.
        var collect: Collect?
        /// Responses sent to the client for this command (MySQL Proxy's `sent_resultset`).
        var sent = 0
        /// Added to the server's sequence ids on the way to the client (`.shift`).
        var shift: UInt8 = 0
        var bufferedBytes = 0
        var overflowed = false
        /// A server's LOCAL INFILE request went on to the client, which then sent its file.
        var uploadRelayed = false
        /// The current injection asked for no buffering, but another such one follows it: its
        /// result is kept for `read_query_result` and never goes to the client.
        var autoBuffered = false

        /// Whether an ERR can still stand in for the rest of this command's response.
        var clientMayTakeError: Bool { collect != .buffer || sent == 0 }
    }

    /// Processing goes on, or stops: a hook runs, or the connection ends.
    enum Flow {
        case proceed
        case halt
    }

    // MARK: - entry points

    /// Bytes from the client while the exchange runs.
    mutating func feedExchangeClient(_ chunk: ByteBuffer) {
        guard case .exchanging(var box) = state else { return }
        state = .modifying
        var out = Output()
        if box.read({ $0.step.isHook }) {
            box.buffer[0].clientCollector.append(chunk)  // taken once the hook has returned
        } else {
            _ = exchangeClientChunk(&box.buffer[0], chunk, &out)
        }
        store(consume box, consume out)
    }

    /// Bytes from the server while the exchange runs.
    mutating func feedExchangeServer(_ chunk: ByteBuffer) {
        guard case .exchanging(var box) = state else { return }
        state = .modifying
        var out = Output(duringServerRead: true)
        _ = exchangeServerChunk(&box.buffer[0], chunk, &out)
        store(consume box, consume out)
    }

    /// Carries on where the exchange stopped: after the login's verdict, after a hook.
    mutating func resumeExchange(_ exchange: Exchange) {
        var box = ExchangeBox(exchange)
        state = .modifying
        var out = Output()
        _ = carryOn(&box.buffer[0], &out)
        store(consume box, consume out)
    }

    /// Puts the exchange back (unless the connection ended meanwhile) and queues what it made.
    mutating func store(_ box: consuming ExchangeBox, _ out: consuming Output) {
        emit(consume out)
        if case .modifying = state { state = .exchanging(consume box) }
    }

    /// What waited: the server's bytes of a response being collected, the queued commands, the
    /// client's packets read but not taken yet.
    mutating func carryOn(_ exchange: inout Exchange, _ out: inout Output) -> Flow {
        if exchange.step.collects, !exchange.serverCollector.isEmpty {
            guard collectResponse(&exchange, nil, &out) == .proceed else { return .halt }
        }
        guard drainQueue(&exchange, &out) == .proceed else { return .halt }
        do {
            while !exchange.step.isHook, !isClosed, let c = try exchange.clientCollector.next() {
                guard clientPacketReceived(&exchange, c, &out) == .proceed else { return .halt }
            }
        } catch {
            return clientPacketFailed(&exchange, error, &out)
        }
        return .proceed
    }

    /// Queues what was made so far (before a log line, a hook, the close).
    mutating func flush(_ out: inout Output) {
        guard !out.isEmpty else { return }
        var made = Output(duringServerRead: out.duringServerRead)
        swap(&made, &out)
        emit(made)
    }

    /// Halts with what was made so far, then `action`.
    mutating func halt(_ action: consuming Action, _ out: inout Output) -> Flow {
        if case .runHook = action { out.heldForHook = true }
        flush(&out)
        out.heldForHook = false
        emit(action)
        return .halt
    }

    // MARK: - from the client

    mutating func exchangeClientChunk(_ exchange: inout Exchange, _ chunk: ByteBuffer, _ out: inout Output) -> Flow {
        do {
            if exchange.clientCollector.isEmpty, let single = Self.singlePacket(chunk),
               single.packet.payload.readableBytes <= exchange.clientCollector.maximumPacketLength {
                // the usual case: one whole command in one read, taken as it is
                return clientPacketReceived(&exchange, single, &out)
            }
            exchange.clientCollector.append(chunk)
            while !exchange.step.isHook, !isClosed, let c = try exchange.clientCollector.next() {
                guard clientPacketReceived(&exchange, c, &out) == .proceed else { return .halt }
            }
            return .proceed
        } catch {
            return clientPacketFailed(&exchange, error, &out)
        }
    }

    mutating func clientPacketFailed(_ exchange: inout Exchange, _ error: WireError, _ out: inout Output) -> Flow {
        clientBrokeProtocol()
        if case .tooLarge(let limit, _) = error {
            // As the server does past max_allowed_packet: ER_NET_PACKET_TOO_LARGE, then the close,
            // without holding more of the packet. The ERR carries the sequence id the client
            // expects after the packet's last frame, which is known once that frame's header came.
            exchange.queue.removeAll()
            let rest = exchange.clientCollector.abandonPacket()
            if let header = PacketHeader.peek(rest, at: rest.readerIndex), header.payloadLength < PacketHeader.maxPayloadLength {
                // the frame that overflowed is the packet's last: the ERR can go at once
                return halt(refuseOversized(limit: limit, reply: header.sequenceID &+ 1), &out)
            }
            flush(&out)
            state = .skippingOversized(Oversized(limit: limit))
            skipOversized(rest)
            return .halt
        }
        return halt(close(.abort, reason: "malformed packet from the client: \(error)"), &out)
    }

    /// A command larger than the proxy assembles, whose frames are skipped.
    struct Oversized {
        var limit: Int
        var scanner = FrameScanner()
    }

    /// Skips the oversized command's frames; once its last frame's header is here, the client gets
    /// the ERR with the sequence id after it, and the connection ends.
    mutating func skipOversized(_ chunk: ByteBuffer) {
        guard case .skippingOversized(var oversized) = state else { return }
        var reply: UInt8?
        var ended = false
        oversized.scanner.scan(chunk) { event in
            switch event {
            case .packetStart(let start, _) where !start.isMultiFrame:
                reply = start.header.sequenceID &+ 1
            case .packetEnd:
                ended = true
            default:
                return true
            }
            return false
        }
        if ended { reply = oversized.scanner.lastSequenceID &+ 1 }
        guard let reply else {
            state = .skippingOversized(oversized)
            return
        }
        emit(refuseOversized(limit: oversized.limit, reply: reply))
    }

    mutating func refuseOversized(limit: Int, reply: UInt8) -> Action {
        refuse(.packetTooLarge(limit), sequenceID: reply,
               reason: "the client sent a packet larger than --proxy-max-packet-size (\(limit) bytes), which read_query would need whole")
    }

    /// Commands the client sent behind its handshake response, held until the server's verdict.
    mutating func queueBehindLogin(_ exchange: inout Exchange, _ bytes: ByteBuffer) {
        exchange.clientCollector.append(bytes)
        do {
            while let c = try exchange.clientCollector.next() {
                counts.commands += 1
                if c.packet.payload.getInteger(at: c.packet.payload.readerIndex, as: UInt8.self) == CommandCode.query.rawValue { counts.queries += 1 }
                exchange.queue.append(c)
            }
        } catch {
            var out = Output()
            _ = clientPacketFailed(&exchange, error, &out)
        }
    }

    /// `chunk` as a packet when it holds exactly one whole single-frame packet.
    static func singlePacket(_ chunk: ByteBuffer) -> PacketCollector.Collected? {
        guard let header = PacketHeader.peek(chunk, at: chunk.readerIndex),
              header.payloadLength < PacketHeader.maxPayloadLength,
              chunk.readableBytes == PacketHeader.size + header.payloadLength,
              let payload = chunk.getSlice(at: chunk.readerIndex + PacketHeader.size, length: header.payloadLength)
        else { return nil }
        return PacketCollector.Collected(packet: MySQLFrame(sequenceID: header.sequenceID, payload: payload),
                                         firstFrameLength: header.payloadLength, raw: chunk)
    }

    mutating func clientPacketReceived(_ exchange: inout Exchange, _ c: PacketCollector.Collected, _ out: inout Output) -> Flow {
        let pipelinedBehindLogin = tracker.clientPhase == .authentication && c.packet.sequenceID == 0
        if exchange.hasServer && tracker.clientPhase != .command && !pipelinedBehindLogin {
            // Data of the exchange under way: a LOCAL INFILE upload, authentication answers.
            do {
                _ = try tracker.clientPacketStarted(c.start)
            } catch {
                return clientPacketFailed(&exchange, error, &out)
            }
            if case let shift = exchange.step.shift, shift != 0 {
                // an injection's upload: the server counts from the injection's sequence ids
                out.backend(Self.framed(c.packet, sequenceID: c.packet.sequenceID &- shift))
            } else {
                out.backend(c.raw ?? Self.framed(c.packet))
            }
            if exchange.step.isActive {
                nextSequenceToClient = Self.sequence(after: c.packet.sequenceID, length: c.packet.payload.readableBytes)
            }
            return .proceed
        }
        if exchange.scriptedUpload {
            return scriptedUploadPacket(&exchange, c, &out)
        }
        counts.commands += 1
        if c.packet.payload.getInteger(at: c.packet.payload.readerIndex, as: UInt8.self) == CommandCode.query.rawValue {
            counts.queries += 1
        }
        if exchange.step.isActive || !exchange.queue.isEmpty || pipelinedBehindLogin || awaitsOwnAnswers {
            // One command at a time, and none before the login (or COM_CHANGE_USER) has its
            // verdict: each goes through read_query in order, as the session it runs in.
            exchange.queue.append(c)
            return .proceed
        }
        guard startCommand(&exchange, c, &out) == .proceed else { return .halt }
        return drainQueue(&exchange, &out)
    }

    /// Starts the commands that waited, as long as each is done at once (answered by the script),
    /// once no authentication awaits its verdict.
    mutating func drainQueue(_ exchange: inout Exchange, _ out: inout Output) -> Flow {
        while !exchange.step.isActive, !isClosed, !(exchange.hasServer && tracker.clientPhase == .authentication), !exchange.queue.isEmpty,
              !awaitsOwnAnswers {
            let next = exchange.queue.removeFirst()
            guard startCommand(&exchange, next, &out) == .proceed else { return .halt }
        }
        return .proceed
    }

    mutating func startCommand(_ exchange: inout Exchange, _ c: PacketCollector.Collected, _ out: inout Output) -> Flow {
        let payload = c.packet.payload
        // The sequence id of the command's last frame (a command of 16 MiB or more has several).
        let lastSequence = c.packet.sequenceID &+ UInt8(truncatingIfNeeded: payload.readableBytes / PacketHeader.maxPayloadLength)
        guard let byte = payload.getInteger(at: payload.readerIndex, as: UInt8.self) else {
            return clientPacketFailed(&exchange, .invalid("empty command packet"), &out)
        }
        let code = CommandCode(byte)
        exchange.commandsStarted = true
        recordCommandStarted(code, expectsResponse: true, payload: payload)
        nextSequenceToClient = lastSequence &+ 1
        var database: String?
        var changeUser: ChangeUserRequest?
        if code == .initDB {
            database = payload.getString(at: payload.readerIndex + 1, length: payload.readableBytes - 1)
        } else if code == .changeUser {
            changeUser = try? ChangeUserRequest(parsing: payload, capabilities: session.capabilities.isEmpty ? [.protocol41, .secureConnection] : session.capabilities)
        }
        let command = Command(code: code, clientSequence: lastSequence, packet: payload, raw: c.raw, database: database, changeUser: changeUser)
        if !exchange.injections.isEmpty { exchange.injections = [] }
        if exchange.injected != nil { exchange.injected = nil }
        exchange.lastEnd = nil
        if configuration.hooks.contains(.readQuery) {
            exchange.step = .readQueryHook(consume command)
            return halt(.runHook(hookCall(.readQuery(packet: payload), loggedIn: true,
                                          serverIdle: exchange.hasServer && !tracker.isAwaitingResponse, status: tracker.status)), &out)
        }
        return commandDecided(&exchange, command, .noDecision, &out)
    }

    /// `read_query` has spoken (or there is none).
    mutating func commandDecided(_ exchange: inout Exchange, _ command: consuming Command, _ decision: HookDecision, _ out: inout Output) -> Flow {
        var command = consume command
        switch decision {
        case .sendResult(let response):
            answerCommand(&exchange, &command, with: response, &out)
            if command.code == .quit {
                // The client quits all the same and waits for the close, as a server gives it
                // (mysqltest's disconnect reads until then). The server connection stays: a
                // pooling script answers COM_QUIT to keep it.
                return finishCommand(&exchange, command, &out, closing: ("the client quit (the script kept its COM_QUIT from the server)", .debug))
            }
            if Self.asksForFile(command.code, response) { exchange.scriptedUpload = true }
            return finishCommand(&exchange, command, &out)
        case .sendQuery where !exchange.injections.isEmpty:
            return sendNextInjection(&exchange, command, &out)
        default:
            if case .sendQuery = decision {
                flush(&out)
                emit(.log(.critical, "'return proxy.PROXY_SEND_QUERY' used without proxy.queries:append() or :prepend(); assuming nil was returned"))
            } else if !exchange.injections.isEmpty {
                flush(&out)
                emit(.log(.critical, "proxy.queries:append() or :prepend() used without 'return proxy.PROXY_SEND_QUERY'; discarding \(exchange.injections.count) queued queries"))
                exchange.injections.removeAll()
            }
            return forwardOriginal(&exchange, consume command, &out)
        }
    }

    /// The client's command goes to the server unchanged, and its response streams back.
    mutating func forwardOriginal(_ exchange: inout Exchange, _ command: consuming Command, _ out: inout Output) -> Flow {
        var command = consume command
        guard exchange.hasServer else { return noServer(&exchange, command, &out) }
        if command.code == .quit && exchangeReleasesServer(exchange) {
            // as in the relay: the connection the proxy logged in serves the next client
            command.sent = 1
            noteClose(.none)
            flush(&out)
            emit(.releaseBackend)
            return finishCommand(&exchange, command, &out, closing: ("the client quit", .debug))
        }
        let start = PacketCollector.start(of: MySQLFrame(sequenceID: command.clientSequence &- UInt8(truncatingIfNeeded: command.packet.readableBytes / PacketHeader.maxPayloadLength),
                                                         payload: command.packet),
                                          firstFrameLength: min(command.packet.readableBytes, PacketHeader.maxPayloadLength))
        let kind: ResponseTracker.ClientPacket
        do {
            kind = try tracker.clientPacketStarted(start)
        } catch {
            return clientPacketFailed(&exchange, error, &out)
        }
        if let raw = command.raw {
            out.backend(raw)
        } else {
            var framed = ByteBuffer()
            framed.reserveCapacity(command.packet.readableBytes + PacketHeader.size * (1 + command.packet.readableBytes / PacketHeader.maxPayloadLength))
            var seq = start.header.sequenceID
            framed.writeMySQLPacket(command.packet, sequenceID: &seq)
            out.backend(framed)
        }
        if exchange.injected != nil { exchange.injected = nil }
        exchange.responseFirstByte = nil
        command.collect = nil
        command.sent = 1
        if tracking != nil { exchangeCommandSent(command.packet) }
        if case .command(_, .none) = kind {
            return finishCommand(&exchange, command, &out)
        }
        exchange.step = .running(consume command)
        return .proceed
    }

    /// Neither the script nor a server can answer.
    mutating func noServer(_ exchange: inout Exchange, _ command: consuming Command, _ out: inout Output) -> Flow {
        var command = consume command
        command.sent = 1
        if command.code == .quit {
            return finishCommand(&exchange, command, &out, closing: ("the client quit", .debug))
        }
        if ResponseShape(command: command.code) != .none {
            flush(&out)
            emit(.log(.error, "no server connection for \(command.code): the script neither answered it nor picked a backend"))
            counts.errorsSentByProxy += 1
            let err = ERRPacket(code: 1105, sqlState: "HY000", message: "(proxy) no backend connection: the script neither answered this command nor picked a backend")
            out.client(Self.framed(err, sequenceID: nextSequenceToClient, protocol41: true))
        }
        return finishCommand(&exchange, command, &out)
    }
}
