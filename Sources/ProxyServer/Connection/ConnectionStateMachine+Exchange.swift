import MySQLWire
import NIOCore
import ProxyScripting

/// Commands handed to the script, with MySQL Proxy's semantics.
///
/// The client's commands are taken one at a time (later ones wait in `queuedCommands`) and given to
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
extension ConnectionStateMachine {
    struct Exchange {
        enum Collect: Equatable {
            /// Keep the packets for `read_query_result` (`resultset_is_needed`).
            case buffer
            /// Forward whole packets with their sequence ids moved by `shift`.
            case shift
        }

        /// A command is being handled.
        var active = false
        var command = CommandCode.sleep
        /// The sequence id of the command's last frame: the response starts after it.
        var clientSequence: UInt8 = 0
        /// COM_INIT_DB's database, to update the session when it succeeds.
        var database: String?
        /// COM_CHANGE_USER's user and database, likewise.
        var changeUser: ChangeUserRequest?
        /// The injection whose response is coming; nil while the client's own command runs.
        var injection: InjectionResult?
        /// How the current response is handled; nil streams it through the frame scanner.
        var collect: Collect?
        /// Responses sent to the client for this command (MySQL Proxy's `sent_resultset`).
        var sent = 0
        /// Added to the server's sequence ids on the way to the client (`.shift`).
        var shift: UInt8 = 0
        var bufferedBytes = 0
        var overflowed = false
        /// The first byte of the current response's first packet, once seen.
        var firstByte: UInt8?
        /// The client's command packet.
        var clientCommand = ByteBuffer()
        /// A server's LOCAL INFILE request went on to the client, which then sent its file.
        var uploadRelayed = false
        /// The current injection asked for no buffering, but another such one follows it: its
        /// result is kept for `read_query_result` and never goes to the client.
        var autoBuffered = false
        /// The last response of the exchange that ended (for the command's record).
        var lastEnd: ResponseTracker.ResponseEnd?

        /// Whether an ERR can still stand in for the rest of this command's response.
        var clientMayTakeError: Bool { collect != .buffer || sent == 0 }
    }

    // MARK: - from the client

    mutating func exchangeClientData(_ chunk: ByteBuffer) -> Action {
        var out = Output()
        do {
            if clientCollector.isEmpty, let single = Self.singlePacket(chunk),
               single.packet.payload.readableBytes <= clientCollector.maximumPacketLength {
                // the usual case: one whole command in one read, taken as it is
                try clientPacketReceived(single, &out)
            } else {
                clientCollector.append(chunk)
                while out.close == nil, let c = try clientCollector.next() {
                    try clientPacketReceived(c, &out)
                }
            }
        } catch .tooLarge(let limit, let sequenceID) {
            // As the server does past max_allowed_packet: ER_NET_PACKET_TOO_LARGE, then the close,
            // before more of the packet is held.
            clientBrokeProtocol()
            statistics.add(.errorsSentByProxy)
            queuedCommands.removeAll()
            clientCollector.reset()
            out.client(Self.framed(.packetTooLarge(limit), sequenceID: sequenceID &+ 1, protocol41: true))
            out.close = "the client sent a packet larger than --proxy-max-packet-size (\(limit) bytes), which read_query would need whole"
            out.closeLevel = .warning
            return .send(out)
        } catch {
            clientBrokeProtocol()
            return .abortConnections(reason: "malformed packet from the client: \(error)")
        }
        return Self.finish(out)
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

    private mutating func clientPacketReceived(_ c: PacketCollector.Collected, _ out: inout Output) throws(WireError) {
        let pipelinedBehindLogin = tracker.clientPhase == .authentication && c.packet.sequenceID == 0
        if hasServer && tracker.clientPhase != .command && !pipelinedBehindLogin {
            // Data of the exchange under way: a LOCAL INFILE upload, authentication answers.
            _ = try tracker.clientPacketStarted(c.start)
            if exchange.active && exchange.shift != 0 {
                // an injection's upload: the server counts from the injection's sequence ids
                out.backend(Self.framed(c.packet, sequenceID: c.packet.sequenceID &- exchange.shift))
            } else {
                out.backend(c.raw ?? Self.framed(c.packet))
            }
            if exchange.active {
                nextSequenceToClient = c.packet.sequenceID &+ UInt8(truncatingIfNeeded: c.packet.payload.readableBytes / PacketHeader.maxPayloadLength + 1)
            }
            return
        }
        if scriptedUpload {
            try scriptedUploadPacket(c, &out)
            return
        }
        statistics.add(.commands)
        if c.packet.payload.getInteger(at: c.packet.payload.readerIndex, as: UInt8.self) == CommandCode.query.rawValue {
            statistics.add(.queries)
        }
        if exchange.active || !queuedCommands.isEmpty || pipelinedBehindLogin {
            // One command at a time, and none before the login (or COM_CHANGE_USER) has its verdict:
            // each goes through read_query in order, as the session it runs in.
            queuedCommands.append(c)
            return
        }
        try startCommand(c, &out)
        try drainQueue(&out)
    }

    /// Starts the commands that waited, as long as each is done at once (answered by the script),
    /// once no authentication awaits its verdict.
    mutating func drainQueue(_ out: inout Output) throws(WireError) {
        while !exchange.active, out.close == nil, !(hasServer && tracker.clientPhase == .authentication),
              let next = queuedCommands.popFirst() {
            try startCommand(next, &out)
        }
    }

    private mutating func startCommand(_ c: PacketCollector.Collected, _ out: inout Output) throws(WireError) {
        let payload = c.packet.payload
        // The sequence id of the command's last frame (a command of 16 MiB or more has several).
        let lastSequence = c.packet.sequenceID &+ UInt8(truncatingIfNeeded: payload.readableBytes / PacketHeader.maxPayloadLength)
        guard let byte = payload.getInteger(at: payload.readerIndex, as: UInt8.self) else {
            throw .invalid("empty command packet")
        }
        exchange = Exchange(active: true, command: CommandCode(byte), clientSequence: lastSequence)
        exchange.clientCommand = payload
        commandsStarted = true
        recordCommandStarted(exchange.command, expectsResponse: true, payload: payload)
        nextSequenceToClient = lastSequence &+ 1
        if exchange.command == .initDB {
            exchange.database = payload.getString(at: payload.readerIndex + 1, length: payload.readableBytes - 1)
        } else if exchange.command == .changeUser {
            exchange.changeUser = try? ChangeUserRequest(parsing: payload, capabilities: session?.capabilities ?? [.protocol41, .secureConnection])
        }
        guard let script else {
            try forwardOriginal(c, &out)
            return
        }
        var decision = HookDecision.noDecision
        if script.hooks.contains(.readQuery) {
            script.prepareHook(loggedIn: true, serverIdle: hasServer && !tracker.isAwaitingResponse, status: tracker.status)
            let hints = exchange.command == .query ? ProxyHints.parse(payload) : []
            if case .returned(let returned) = script.readQuery(packet: payload, hints: hints) { decision = returned }
            applyServerChange()
        }
        switch decision {
        case .sendResult(let response):
            answerCommand(with: response, &out)
            finishCommand(&out)
        case .sendQuery where script.hasQueries:
            try sendNextInjection(&out)
        default:
            if case .sendQuery = decision {
                script.log(.critical, "'return proxy.PROXY_SEND_QUERY' used without proxy.queries:append() or :prepend(); assuming nil was returned")
            } else if script.hasQueries {
                script.log(.critical, "proxy.queries:append() or :prepend() used without 'return proxy.PROXY_SEND_QUERY'; discarding \(script.queries.count) queued queries")
                script.queries.removeAll()
            }
            try forwardOriginal(c, &out)
        }
    }

    /// The client's command goes to the server unchanged, and its response streams back.
    private mutating func forwardOriginal(_ c: PacketCollector.Collected, _ out: inout Output) throws(WireError) {
        guard hasServer else {
            noServer(&out)
            return
        }
        let kind = try tracker.clientPacketStarted(c.start)
        out.backend(c.raw ?? Self.framed(c.packet))
        exchange.injection = nil
        exchange.collect = nil
        exchange.sent = 1
        if case .command(_, .none) = kind {
            finishCommand(&out)
        }
    }

    /// Neither the script nor a server can answer.
    private mutating func noServer(_ out: inout Output) {
        exchange.sent = 1
        if exchange.command == .quit {
            out.close = "the client quit"
            out.closeLevel = .debug
        } else if ResponseShape(command: exchange.command) != .none {
            script?.log(.error, "no server connection for \(exchange.command): the script neither answered it nor picked a backend")
            statistics.add(.errorsSentByProxy)
            let err = ERRPacket(code: 1105, sqlState: "HY000", message: "(proxy) no backend connection: the script neither answered this command nor picked a backend")
            out.client(Self.framed(err, sequenceID: nextSequenceToClient, protocol41: true))
        }
        finishCommand(&out)
    }

    /// `proxy.response` answers the command.
    mutating func answerCommand(with response: ScriptResponse, _ out: inout Output) {
        exchange.sent += 1
        if recording != .off && !openRecords.isEmpty {
            // what the client got is the script's answer, not what a server said before it
            openRecords[0].answeredByScript = true
            exchange.lastEnd = nil
            switch response {
            case .ok(let affectedRows, _, _, _, _): openRecords[0].affectedRows = affectedRows
            case .error(let code, _, _): openRecords[0].errorCode = code
            case .resultSet(_, let rows, _, _): openRecords[0].rows = UInt64(rows.count)
            case .raw: break
            }
        }
        guard ResponseShape(command: exchange.command) != .none else {
            if exchange.command == .quit {
                // The client quits all the same and waits for the close, as a server gives it
                // (mysqltest's disconnect reads until then). The server connection stays: a
                // pooling script answers COM_QUIT to keep it.
                out.close = "the client quit (the script kept its COM_QUIT from the server)"
                out.closeLevel = .debug
            } else {
                script?.log(.warning, "the script answered \(exchange.command), which takes no answer; nothing is sent")
            }
            return
        }
        let capabilities = session?.capabilities ?? [.protocol41]
        let (bytes, problem) = response.encodeChecked(command: exchange.command, capabilities: capabilities, sequenceID: nextSequenceToClient)
        if let problem {
            script?.log(.error, problem)
            statistics.add(.errorsSentByProxy)
        }
        out.client(bytes)
        if exchange.command == .query, case .raw(let packets) = response, packets.count == 1,
           packets[0].getInteger(at: packets[0].readerIndex, as: UInt8.self) == 0xFB {
            // A LOCAL INFILE request, as a mock server asks for a file: the client's next
            // packets are the file, up to an empty one (see scriptedUploadPacket).
            scriptedUpload = true
        }
    }

    /// A packet of a file the client uploads because the script asked for it: each goes to
    /// `read_query` as MySQL Proxy passed them (a mock may keep what it is sent); the answer to
    /// the last, empty one is the statement's result, and answers to the others are dropped, as
    /// the client reads nothing before it has sent the whole file.
    private mutating func scriptedUploadPacket(_ c: PacketCollector.Collected, _ out: inout Output) throws(WireError) {
        let payload = c.packet.payload
        let last = payload.readableBytes == 0
        if last { scriptedUpload = false }
        exchange = Exchange(active: true, command: .query, clientSequence: c.packet.sequenceID)
        nextSequenceToClient = c.packet.sequenceID &+ UInt8(truncatingIfNeeded: payload.readableBytes / PacketHeader.maxPayloadLength + 1)
        var decision = HookDecision.noDecision
        if let script, script.hooks.contains(.readQuery) {
            script.prepareHook(loggedIn: true, serverIdle: hasServer && !tracker.isAwaitingResponse, status: tracker.status)
            if case .returned(let returned) = script.readQuery(packet: payload, hints: []) { decision = returned }
            applyServerChange()
            if script.hasQueries {
                script.log(.error, "proxy.queries:append() while the client uploads a file the script asked for; \(script.queries.count) queued queries dropped")
                script.queries.removeAll()
            }
        }
        if last {
            if case .sendResult(let response) = decision {
                answerCommand(with: response, &out)
            } else {
                script?.log(.error, "the script asked for a LOCAL INFILE upload and did not answer its end (the empty packet) with proxy.response")
                statistics.add(.errorsSentByProxy)
                exchange.sent = 1
                let err = ERRPacket(code: 1105, sqlState: "HY000", message: "(proxy) the script asked for a file and sent no result for it")
                out.client(Self.framed(err, sequenceID: nextSequenceToClient, protocol41: true))
            }
            finishCommand(&out)
            try drainQueue(&out)
        } else {
            exchange.active = false
        }
    }

    /// Sends the first query of `proxy.queries` to the server, or ends the command when none is left.
    mutating func sendNextInjection(_ out: inout Output) throws(WireError) {
        guard let script else { return finishCommand(&out) }
        while let injection = script.queries.first {
            guard hasServer else {
                script.log(.error, "no server connection to send injected query \(injection.id) to; \(script.queries.count) queries dropped")
                script.queries.removeAll()
                if exchange.sent == 0 { noServer(&out); return }
                break
            }
            if !injection.resultsetIsNeeded && exchange.sent > 0 {
                script.log(.critical, "proxy.queries:append() can have only one injected query without { resultset_is_needed = true } per command, as its result goes straight to the client; closing the client connection")
                out.close = "the script injected a second query whose result would go to the client"
                return
            }
            let payload = injection.packet
            guard payload.readableBytes > 0 else {
                script.log(.error, "injected query \(injection.id) is empty; skipped")
                script.queries.removeFirst()
                continue
            }
            let start = PacketCollector.start(of: MySQLFrame(sequenceID: 0, payload: payload),
                                              firstFrameLength: min(payload.readableBytes, PacketHeader.maxPayloadLength))
            let kind: ResponseTracker.ClientPacket
            do {
                kind = try tracker.clientPacketStarted(start)
            } catch {
                script.log(.error, "injected query \(injection.id) cannot be sent now (\(error)); skipped")
                script.queries.removeFirst()
                continue
            }
            var bytes = ByteBuffer()
            bytes.reserveCapacity(payload.readableBytes + 8)
            var seq: UInt8 = 0
            bytes.writeMySQLPacket(payload, sequenceID: &seq)
            out.backend(bytes)
            if case .command(_, .none) = kind {
                // COM_STMT_CLOSE and the like: no response, nothing to report
                script.queries.removeFirst()
                continue
            }
            // Only one result reaches the client: an unbuffered injection with another after it
            // (MySQL Proxy's ro-balance injects SHOW SLAVE STATUS so, and reads its rows) is
            // buffered for the script instead.
            let buffer = injection.resultsetIsNeeded || script.queries.dropFirst().contains { !$0.resultsetIsNeeded }
            exchange.autoBuffered = buffer && !injection.resultsetIsNeeded
            let result = InjectionResult(injection: injection, buffered: buffer,
                                         capabilities: session?.capabilities ?? [.protocol41])
            exchange.injection = result
            exchange.firstByte = nil
            exchange.bufferedBytes = 0
            exchange.overflowed = false
            // `seq` is now the sequence id the server's response starts with
            exchange.shift = nextSequenceToClient &- seq
            if buffer {
                exchange.collect = .buffer
            } else {
                exchange.collect = exchange.shift == 0 ? nil : .shift
                exchange.sent += 1
            }
            return
        }
        finishCommand(&out)
    }

    /// The command is over; the client must have had its one response.
    mutating func finishCommand(_ out: inout Output) {
        if recording != .off && !openRecords.isEmpty {
            if !hasServer { openRecords[0].answeredByScript = true }
            recordResponseEnded(exchange.lastEnd)
        }
        if exchange.sent == 0 && out.close == nil && ResponseShape(command: exchange.command) != .none {
            script?.log(.warning, "no result went to the client for \(exchange.command): every injected result was ignored; sending an error instead")
            let err = ERRPacket(code: 1105, sqlState: "07000", message: "(proxy) the script sent no result for this command")
            out.client(Self.framed(err, sequenceID: nextSequenceToClient, protocol41: true))
        }
        exchange.active = false
        exchange.injection = nil
        exchange.collect = nil
        if let script, script.connectionCloseRequested {
            noteClose(.scriptClosed)
            out.close = out.close ?? "the script set proxy.connection.connection_close"
        } else if closeWhenIdle {
            out.close = out.close ?? "shutting down"
        }
        if out.close != nil { queuedCommands.removeAll() }
    }
}
