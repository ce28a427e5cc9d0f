import MySQLWire
import NIOCore
import ProxyScripting

/// The server's side of a scripted exchange (see +Exchange for the commands): responses streamed
/// to the client as they arrive, or collected for `read_query_result`, and what follows a
/// response's end (the next injected query, the next queued command, a server swap).
extension ConnectionStateMachine {
    mutating func exchangeServerData(_ chunk: ByteBuffer) -> Action {
        recordResponseBytes(chunk.readableBytes)
        return exchange.collect == nil ? streamResponse(chunk) : collectResponse(chunk)
    }

    /// The response goes to the client as it arrives; the scanner finds where it ends.
    private mutating func streamResponse(_ chunk: ByteBuffer) -> Action {
        var failure: (FrameScanner.PacketStart, offset: Int, WireError)?
        var refusedAt: (FrameScanner.PacketStart, offset: Int)?
        var ended: ResponseTracker.ResponseEnd?
        fromServer.scanPacketStarts(chunk) { packet, offset in
            do throws(WireError) {
                let kind = try tracker.serverPacketStarted(packet)
                if kind == .localInfileRequestRefused {
                    refusedAt = (packet, offset)
                    return false
                }
                if exchange.firstByte == nil && kind != .progress { exchange.firstByte = packet.firstByte ?? 0 }
                if kind == .row, let result = exchange.injection { result.bytes += Self.rowBytes(packet.header.payloadLength) }
                if case .endOfResponse(let end) = kind, ended == nil {
                    ended = end
                }
                return true
            } catch {
                failure = (packet, offset, error)
                return false
            }
        }
        if let (packet, offset, error) = failure {
            backendBrokeProtocol()
            return Self.serverPacketMalformed(chunk, at: offset, packet, error)
        }
        if let (packet, offset) = refusedAt { return localInfileRefused(chunk, at: offset, packet) }
        nextSequenceToClient = fromServer.lastSequenceID &+ 1
        if let result = exchange.injection {
            if result.firstPacketAt == 0 { result.firstPacketAt = ConnectionScript.now() }
        }
        guard let end = ended else { return .forwardToClient(chunk) }
        var out = Output(toClient: chunk)
        do {
            try responseEnded(end, &out)
            try drainQueue(&out)
        } catch {
            clientBrokeProtocol()
            return .abortConnections(reason: "malformed packet from the client: \(error)")
        }
        return Self.finish(out, fromServer: true)
    }

    /// What a row adds to an injected result's `bytes`: as MySQL Proxy counts it, the row
    /// packets with their headers, and nothing else of the response.
    static func rowBytes(_ payloadLength: Int) -> Int { payloadLength + PacketHeader.size }

    /// The response is taken packet by packet: kept for the script, or passed on renumbered.
    private mutating func collectResponse(_ chunk: ByteBuffer) -> Action {
        serverCollector.append(chunk)
        var out = Output()
        do {
            while exchange.active, let collect = exchange.collect, let c = try serverCollector.next() {
                let payload = c.packet.payload
                let kind = try tracker.serverPacketStarted(c.start)
                if exchange.firstByte == nil && kind != .progress {
                    exchange.firstByte = payload.getInteger(at: payload.readerIndex, as: UInt8.self) ?? 0
                    exchange.injection?.firstPacketAt = ConnectionScript.now()
                }
                if kind == .row { exchange.injection?.bytes += Self.rowBytes(payload.readableBytes) }
                if case .progress = kind {
                    // MariaDB's progress report: the client may see it, a buffered result does not keep it
                    if collect == .shift {
                        let seq = c.packet.sequenceID &+ exchange.shift
                        out.client(Self.framed(c.packet, sequenceID: seq))
                        nextSequenceToClient = seq &+ 1
                    }
                    continue
                }
                if kind == .localInfileRequest || kind == .authenticationStep, let result = exchange.injection,
                   collect == .shift || (exchange.sent == 0 && result.injection.packet == exchange.clientCommand),
                   kind == .authenticationStep ? result.injection.command == .changeUser : (exchange.command == .query && !exchange.uploadRelayed) {
                    // The statement whose result the client gets, or the client's own one whose
                    // result the script looks at: the client has the file and uploads it, or has
                    // the password and answers the server's authentication step; the result
                    // comes after.
                    if kind == .localInfileRequest { exchange.uploadRelayed = true }
                    let seq = c.packet.sequenceID &+ exchange.shift
                    out.client(Self.framed(c.packet, sequenceID: seq))
                    nextSequenceToClient = seq &+ 1
                    continue
                }
                if case .localInfileRequestRefused = kind {
                    // asked for a file in answer to a statement that loads none: a rogue server
                    phase = .closed
                    backendBrokeProtocol()
                    let reason = "the server asked for a LOCAL INFILE upload in answer to a statement that loads no local file; refused"
                    guard exchange.clientMayTakeError else { return .abortConnections(reason: reason) }
                    statistics.add(.errorsSentByProxy)
                    out.client(Self.framed(.localInfileRefused("the server asked for a local file in answer to a statement that loads none (MoonProxy)"),
                                           sequenceID: nextSequenceToClient, protocol41: true))
                    out.close = reason
                    out.closeLevel = .warning
                    return .send(out)
                }
                if case .localInfileRequest = kind {
                    // The client knows nothing of this query and has no file for it: send none.
                    script?.log(.warning, "injected query \(exchange.injection?.injection.id ?? 0) asks for a LOCAL INFILE upload; it gets an empty file")
                    var seq = c.packet.sequenceID &+ 1
                    let start = FrameScanner.PacketStart(header: PacketHeader(payloadLength: 0, sequenceID: seq), prefix: PacketPrefix())
                    var empty = ByteBuffer()
                    empty.writeMySQLPacket(ByteBuffer(), sequenceID: &seq)
                    out.backend(empty)
                    _ = try tracker.clientPacketStarted(start)
                    continue
                }
                switch collect {
                case .buffer:
                    if !exchange.overflowed, let result = exchange.injection {
                        exchange.bufferedBytes += payload.readableBytes
                        if exchange.bufferedBytes > (script?.resultsetBufferLimit ?? Int.max) {
                            exchange.overflowed = true
                            result.packets.removeAll()
                        } else {
                            result.packets.append(payload)
                        }
                    }
                case .shift:
                    let seq = c.packet.sequenceID &+ exchange.shift
                    out.client(Self.framed(c.packet, sequenceID: seq))
                    nextSequenceToClient = seq &+ UInt8(truncatingIfNeeded: payload.readableBytes / PacketHeader.maxPayloadLength + 1)
                }
                if case .endOfResponse(let end) = kind {
                    try responseEnded(end, &out)
                    try drainQueue(&out)
                }
            }
        } catch .tooLarge(let limit, _) where exchange.clientMayTakeError {
            statistics.add(.errorsSentByProxy)
            serverCollector.reset()
            var err = ERRPacket.packetTooLarge(limit)
            err.message = "(proxy) the server sent a packet larger than the \(limit) bytes MoonProxy assembles for a script (--proxy-max-packet-size)"
            out.client(Self.framed(err, sequenceID: nextSequenceToClient, protocol41: true))
            out.close = "the server sent a packet larger than --proxy-max-packet-size (\(limit) bytes) in a response the script takes whole"
            out.closeLevel = .warning
            return .send(out)
        } catch {
            backendBrokeProtocol()
            return .abortConnections(reason: "malformed packet in a scripted exchange: \(error)")
        }
        if exchange.collect == nil && !serverCollector.isEmpty {
            // Only a server that talks out of turn leaves bytes after the end of a response.
            script?.log(.debug, "dropping \(serverCollector.bufferedBytes) bytes the server sent after a response")
            serverCollector.reset()
        }
        return Self.finish(out, fromServer: true)
    }

    /// One response ended: the client's own command is done; an injection's result goes to
    /// `read_query_result`, and the next injection (if any) is sent.
    private mutating func responseEnded(_ end: ResponseTracker.ResponseEnd, _ out: inout Output) throws(WireError) {
        exchange.lastEnd = end
        guard let script, let result = exchange.injection else {
            if end.kind == .ok, exchange.command == .initDB, let name = exchange.database {
                session?.database = name
                script?.databaseChanged(to: name, forClient: true)
            }
            if end.kind == .ok, exchange.command == .changeUser, let request = exchange.changeUser {
                session?.username = request.username
                session?.database = request.database
                script?.userChanged(to: request.username, database: request.database)
            }
            finishCommand(&out)
            return
        }
        let collect = exchange.collect
        exchange.injection = nil
        exchange.collect = nil
        result.lastPacketAt = ConnectionScript.now()
        if result.firstPacketAt == 0 { result.firstPacketAt = result.lastPacketAt }
        result.rows = Int(clamping: end.rows)
        if let first = exchange.firstByte {
            result.wasResultSet = first != 0x00 && first != 0xFF && first != 0xFE && first != 0xFB
        }
        result.serverStatus = (end.status ?? tracker.status).rawValue
        result.warnings = end.warnings
        result.affectedRows = end.affectedRows
        result.insertID = end.lastInsertID
        result.queryStatus = end.kind == .error ? 0xFF : 0x00
        result.errorCode = end.errorCode
        if !script.queries.isEmpty { script.queries.removeFirst() }
        if end.kind == .ok, result.injection.command == .changeUser,
           let request = try? ChangeUserRequest(parsing: result.injection.packet, capabilities: session?.capabilities ?? [.protocol41, .secureConnection]) {
            // before read_query_result, which may give the connection to the pool: it goes
            // there as the user it belongs to now
            session?.username = request.username
            session?.database = request.database
            script.userChanged(to: request.username, database: request.database)
        }
        if end.kind == .ok, result.injection.command == .initDB {
            let packet = result.injection.packet
            if let name = packet.getString(at: packet.readerIndex + 1, length: packet.readableBytes - 1) {
                // the client's own USE, sent on by the script: the client's database too
                let clientsOwn = exchange.command == .initDB && packet == exchange.clientCommand
                if clientsOwn { session?.database = name }
                script.databaseChanged(to: name, forClient: clientsOwn)
            }
        }

        if collect == .buffer && exchange.overflowed {
            script.log(.error, "the result of injected query \(result.injection.id) is larger than the buffer limit of \(script.resultsetBufferLimit) bytes for resultset_is_needed; the command fails")
            if exchange.sent == 0 {
                exchange.sent += 1
                statistics.add(.errorsSentByProxy)
                let err = ERRPacket(code: 1105, sqlState: "HY000",
                                    message: "(proxy) the result of an injected query is larger than the proxy's buffer limit (\(script.resultsetBufferLimit) bytes)")
                out.client(Self.framed(err, sequenceID: nextSequenceToClient, protocol41: true))
            }
            script.queries.removeAll()
        } else {
            var decision = HookDecision.noDecision
            if script.hooks.contains(.readQueryResult) {
                script.prepareHook(loggedIn: true, serverIdle: hasServer && !tracker.isAwaitingResponse, status: tracker.status)
                if case .returned(let returned) = script.readQueryResult(result) { decision = returned }
                applyServerChange()
            }
            if !result.buffered {
                if decision != .noDecision {
                    script.log(.critical, "read_query_result() tries to change the result of injected query \(result.injection.id), which was not buffered: use proxy.queries:append(..., { resultset_is_needed = true }); the change is ignored")
                }
            } else {
                switch decision {
                case .sendResult(let response):
                    if exchange.sent == 0 {
                        answerCommand(with: response, &out)
                    } else {
                        script.log(.critical, "read_query_result() answered injected query \(result.injection.id), but this command already had its result; ignoring it")
                    }
                case .noDecision where exchange.autoBuffered:
                    break  // a later injection's result is the client's
                case .noDecision:
                    if exchange.sent == 0 {
                        exchange.sent += 1
                        var bytes = ByteBuffer()
                        var seq = nextSequenceToClient
                        for packet in result.packets { bytes.writeMySQLPacket(packet, sequenceID: &seq) }
                        nextSequenceToClient = seq
                        out.client(bytes)
                    } else {
                        script.log(.critical, "the result of injected query \(result.injection.id) is ignored: this command already had its result")
                    }
                case .ignoreResult:
                    break
                default:
                    script.log(.warning, "read_query_result() returned neither PROXY_SEND_RESULT nor PROXY_IGNORE_RESULT; the result of injected query \(result.injection.id) is ignored")
                }
            }
        }
        try sendNextInjection(&out)
    }

    /// Takes note of a server connection the script swapped during a hook.
    mutating func applyServerChange() {
        guard let change = script?.takeServerChange() else { return }
        let capabilities = session?.capabilities ?? [.protocol41]
        switch change {
        case .released:
            hasServer = false
            intercepting = true
            tracker = .commandPhase(capabilities: capabilities)
        case .replaced(let status):
            hasServer = true
            tracker = .commandPhase(capabilities: capabilities, status: status)
        }
        fromServer = FrameScanner()
        serverCollector.reset()
    }
}
