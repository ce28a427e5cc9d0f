import MySQLWire
import NIOCore

/// The server's side of a scripted exchange (see +Exchange for the commands): responses streamed
/// to the client as they arrive, or collected for `read_query_result`, and what follows a
/// response's end (the next injected query, the next queued command, a server swap); and what
/// the exchange does with each hook's answer.
extension ConnectionMachine {
    mutating func exchangeServerChunk(_ exchange: inout Exchange, _ chunk: ByteBuffer, _ out: inout Output) -> Flow {
        recordResponseBytes(chunk.readableBytes)
        guard exchange.hasServer else { return .proceed }  // a server swapped out while its bytes were on the way
        if awaitsOwnAnswers { return exchangeOwnAnswers(&exchange, chunk, &out) }
        if exchange.step.collects {
            return collectResponse(&exchange, chunk, &out)
        }
        if exchange.step.isHook {
            exchange.serverCollector.append(chunk)  // read once the hook has returned
            return .proceed
        }
        return streamResponse(&exchange, chunk, &out)
    }

    /// The response goes to the client as it arrives; the scanner finds where it ends.
    mutating func streamResponse(_ exchange: inout Exchange, _ chunk: ByteBuffer, _ out: inout Output) -> Flow {
        var failure: (FrameScanner.PacketStart, offset: Int, WireError)?
        var refusedAt: (FrameScanner.PacketStart, offset: Int)?
        var ended: ResponseTracker.ResponseEnd?
        let running = exchange.step.isRunning
        let tracks = tracking != nil && running
        // (a tracked session: an OK that reports session state is read whole, +ExchangeTracking)
        var stateAt: (offset: Int, split: Bool, kind: ResponseTracker.ServerPacket)?
        fromServer.scanPacketStarts(chunk) { packet, offset in
            do throws(WireError) {
                if tracks { tracker.lastOKStatus = nil }
                let kind = try tracker.serverPacketStarted(packet)
                if kind == .localInfileRequestRefused {
                    refusedAt = (packet, offset)
                    return false
                }
                if tracks, ended == nil, tracker.lastOKStatus?.contains(.sessionStateChanged) == true {
                    stateAt = (offset, packet.isSplit, kind)
                    return false
                }
                if running && exchange.responseFirstByte == nil && kind != .progress { exchange.responseFirstByte = packet.firstByte ?? 0 }
                if kind == .row, exchange.injected != nil { exchange.injected?.bytes += Self.rowBytes(packet.header.payloadLength) }
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
            return halt(serverPacketMalformed(chunk, at: offset, packet, error), &out)
        }
        if let (packet, offset) = refusedAt { return halt(localInfileRefused(chunk, at: offset, packet), &out) }
        // a tracked stream holds back a header (and prefix) split across reads, so that an OK it
        // turns out to start can still be taken whole
        var combined = chunk
        let held = exchange.streamHeld.readableBytes
        if held > 0 {
            combined = exchange.streamHeld
            combined.writeImmutableBuffer(chunk)
            exchange.streamHeld = ByteBuffer()
        }
        if let (offset, split, kind) = stateAt { return collectFrom(&exchange, combined, split ? 0 : held + offset, placed: kind, &out) }
        if tracks, let end = ended { exchangeResponseEnded(end) }
        nextSequenceToClient = fromServer.lastSequenceID &+ 1
        if exchange.injected?.firstPacketAt == 0 { exchange.injected?.firstPacketAt = now / 1000 }
        if tracks, case let carried = fromServer.carriedBytes, carried > 0, carried <= combined.readableBytes {
            exchange.streamHeld = combined.getSlice(at: combined.readerIndex + combined.readableBytes - carried, length: carried)!
            combined.moveWriterIndex(to: combined.writerIndex - carried)
        }
        if combined.readableBytes > 0 { out.client(combined) }
        // no command: the login's verdict (commands sent behind it start now), or a server that
        // talks out of turn
        guard running else { return drainQueue(&exchange, &out) }
        guard let end = ended else { return .proceed }
        // the response is complete: the command leaves its step while what follows is decided
        guard case .running(var command) = exchange.takeStep() else { return .proceed }
        trackersAfterReset(exchange, command, end, &out)
        guard responseEnded(&exchange, &command, end, &out) == .proceed else { return .halt }
        return drainQueue(&exchange, &out)
    }

    /// A COM_RESET_CONNECTION (the client's, or injected) went through in a tracked session: it
    /// turned the proxy's trackers off, and they go on again before anything else.
    mutating func trackersAfterReset(_ exchange: borrowing Exchange, _ command: borrowing Command, _ end: ResponseTracker.ResponseEnd,
                                     _ out: inout Output) {
        guard tracking != nil, end.kind == .ok, (exchange.injected?.injection.command ?? command.code) == .resetConnection,
              let trackers = enableTrackers() else { return }
        out.backend(trackers)
    }

    /// What a row adds to an injected result's `bytes`: as MySQL Proxy counts it, the row
    /// packets with their headers, and nothing else of the response.
    static func rowBytes(_ payloadLength: Int) -> Int { payloadLength + PacketHeader.size }

    /// The response is taken packet by packet: kept for the script, or passed on renumbered.
    /// `chunk` nil: carry on with what the collector holds already.
    mutating func collectResponse(_ exchange: inout Exchange, _ chunk: ByteBuffer?, _ out: inout Output) -> Flow {
        if let chunk { exchange.serverCollector.append(chunk) }
        if awaitsOwnAnswers { return exchangeOwnAnswers(&exchange, ByteBuffer(), &out) }
        do {
            while case .running(var command) = exchange.step, let collect = command.collect, let c = try exchange.serverCollector.next() {
                let kind: ResponseTracker.ServerPacket
                if let placed = exchange.placedPacket.take() {
                    kind = placed  // (the stream placed it, and handed the rest of the response over)
                } else {
                    tracker.lastOKStatus = nil
                    kind = try tracker.serverPacketStarted(c.start)
                }
                var packet = c.packet
                if tracking != nil, let written = exchangeServerPacket(packet.payload, kind) { packet.payload = written }
                let payload = packet.payload
                if exchange.responseFirstByte == nil && kind != .progress {
                    exchange.responseFirstByte = payload.getInteger(at: payload.readerIndex, as: UInt8.self) ?? 0
                    exchange.injected?.firstPacketAt = now / 1000
                }
                if kind == .row { exchange.injected?.bytes += Self.rowBytes(payload.readableBytes) }
                exchange.step = .running(command)
                if case .progress = kind {
                    // MariaDB's progress report: the client may see it, a buffered result does not keep it
                    if collect == .shift {
                        let seq = packet.sequenceID &+ command.shift
                        out.client(Self.framed(packet, sequenceID: seq))
                        nextSequenceToClient = seq &+ 1
                    }
                    continue
                }
                if case .localInfileRequestRefused = kind {
                    // asked for a file in answer to a statement that loads none: a rogue server
                    backendBrokeProtocol()
                    let reason = "the server asked for a LOCAL INFILE upload in answer to a statement that loads no local file; refused"
                    guard command.clientMayTakeError else { return halt(close(.abort, reason: reason), &out) }
                    return halt(refuse(.localInfileRefused("the server asked for a local file in answer to a statement that loads none (MoonProxy)"),
                                       sequenceID: nextSequenceToClient, before: out.toClient.take(), reason: reason), &out)
                }
                if kind == .localInfileRequest || kind == .authenticationStep,
                   Self.clientAnswers(kind, command, collect: collect, exchange.injected) {
                    // The statement whose result the client gets, or the client's own one whose
                    // result the script looks at: the client has the file and uploads it, or has
                    // the password and answers the server's authentication step; the result
                    // comes after.
                    if kind == .localInfileRequest { command.uploadRelayed = true }
                    let seq = packet.sequenceID &+ command.shift
                    out.client(Self.framed(packet, sequenceID: seq))
                    nextSequenceToClient = seq &+ 1
                    exchange.step = .running(command)
                    continue
                }
                if case .localInfileRequest = kind {
                    // The client knows nothing of this query and has no file for it: send none.
                    flush(&out)
                    emit(.log(.warning, "injected query \(exchange.injected?.injection.id ?? 0) asks for a LOCAL INFILE upload; it gets an empty file"))
                    var seq = packet.sequenceID &+ 1
                    let start = FrameScanner.PacketStart(header: PacketHeader(payloadLength: 0, sequenceID: seq), prefix: PacketPrefix())
                    var empty = ByteBuffer()
                    empty.writeMySQLPacket(ByteBuffer(), sequenceID: &seq)
                    out.backend(empty)
                    _ = try tracker.clientPacketStarted(start)
                    continue
                }
                switch collect {
                case .buffer:
                    if !command.overflowed, exchange.injected != nil {
                        command.bufferedBytes += payload.readableBytes
                        if command.bufferedBytes > configuration.resultsetBufferLimit {
                            command.overflowed = true
                            exchange.injected?.packets.removeAll()
                        } else {
                            exchange.injected?.packets.append(payload)
                        }
                    }
                case .shift:
                    let seq = packet.sequenceID &+ command.shift
                    out.client(Self.framed(packet, sequenceID: seq))
                    nextSequenceToClient = seq &+ UInt8(truncatingIfNeeded: payload.readableBytes / PacketHeader.maxPayloadLength + 1)
                }
                exchange.step = .running(command)
                if case .endOfResponse(let end) = kind {
                    trackersAfterReset(exchange, command, end, &out)
                    guard responseEnded(&exchange, &command, end, &out) == .proceed,
                          drainQueue(&exchange, &out) == .proceed else { return .halt }
                }
            }
        } catch .tooLarge(let limit, _) where exchange.step.command?.clientMayTakeError ?? true {
            exchange.serverCollector.reset()
            var err = ERRPacket.packetTooLarge(limit)
            err.message = "(proxy) the server sent a packet larger than the \(limit) bytes MoonProxy assembles for a script (--proxy-max-packet-size)"
            return halt(refuse(err, sequenceID: nextSequenceToClient, before: out.toClient.take(),
                               reason: "the server sent a packet larger than --proxy-max-packet-size (\(limit) bytes) in a response the script takes whole"), &out)
        } catch {
            backendBrokeProtocol()
            return halt(close(.abort, reason: "malformed packet in a scripted exchange: \(error)"), &out)
        }
        if !exchange.step.isActive && !exchange.serverCollector.isEmpty {
            // Only a server that talks out of turn leaves bytes after the end of a response.
            flush(&out)
            emit(.log(.debug, "dropping \(exchange.serverCollector.bufferedBytes) bytes the server sent after a response"))
            exchange.serverCollector.reset()
        }
        return .proceed
    }

    /// Whether a server's LOCAL INFILE request or authentication step in a collected response is
    /// the client's to answer: its own command's (a tracked exchange collects those too), or an
    /// injection standing for it.
    static func clientAnswers(_ kind: ResponseTracker.ServerPacket, _ command: Command, collect: Command.Collect,
                              _ injected: InjectionOutcome?) -> Bool {
        guard let injection = injected else {
            // (a LOCAL INFILE request the response tracker let through: the client's statement
            // loads a file, as a text query or a prepared one)
            return kind == .authenticationStep ? command.code == .changeUser : !command.uploadRelayed
        }
        guard collect == .shift || (command.sent == 0 && injection.injection.packet == command.packet) else { return false }
        return kind == .authenticationStep ? injection.injection.command == .changeUser : (command.code == .query && !command.uploadRelayed)
    }

    /// One response ended: the client's own command is done; an injection's result goes to
    /// `read_query_result`, and the next injection (if any) is sent.
    mutating func responseEnded(_ exchange: inout Exchange, _ command: inout Command, _ end: ResponseTracker.ResponseEnd,
                                _ out: inout Output) -> Flow {
        exchange.lastEnd = end
        guard var result = exchange.injected.take() else {
            if end.kind == .ok, command.code == .initDB, let name = command.database {
                session.database = name
                session.serverDatabase = name
            }
            if end.kind == .ok, command.code == .changeUser, let request = command.changeUser {
                session.username = request.username
                session.database = request.database
                session.serverDatabase = request.database
            }
            return finishCommand(&exchange, command, &out)
        }
        let collect = command.collect
        command.collect = nil
        result.lastPacketAt = now / 1000
        if result.firstPacketAt == 0 { result.firstPacketAt = result.lastPacketAt }
        result.rows = Int(clamping: end.rows)
        if let first = exchange.responseFirstByte {
            result.wasResultSet = first != 0x00 && first != 0xFF && first != 0xFE && first != 0xFB
        }
        result.serverStatus = (end.status ?? tracker.status).rawValue
        result.warnings = end.warnings
        result.affectedRows = end.affectedRows
        result.insertID = end.lastInsertID
        result.queryStatus = end.kind == .error ? 0xFF : 0x00
        result.errorCode = end.errorCode
        if !exchange.injections.isEmpty { exchange.injections.removeFirst() }
        if end.kind == .ok, result.injection.command == .changeUser,
           let request = try? ChangeUserRequest(parsing: result.injection.packet, capabilities: session.capabilities.isEmpty ? [.protocol41, .secureConnection] : session.capabilities) {
            // before read_query_result, which may give the connection to the pool: it goes
            // there as the user it belongs to now
            session.username = request.username
            session.database = request.database
            session.serverDatabase = request.database
        }
        if end.kind == .ok, result.injection.command == .initDB {
            let packet = result.injection.packet
            if let name = packet.getString(at: packet.readerIndex + 1, length: packet.readableBytes - 1) {
                // the client's own USE, sent on by the script: the client's database too
                if command.code == .initDB && packet == command.packet { session.database = name }
                session.serverDatabase = name
            }
        }
        if collect == .buffer && command.overflowed {
            flush(&out)
            emit(.log(.error, "the result of injected query \(result.injection.id) is larger than the buffer limit of \(configuration.resultsetBufferLimit) bytes for resultset_is_needed; the command fails"))
            if command.sent == 0 {
                command.sent += 1
                counts.errorsSentByProxy += 1
                let err = ERRPacket(code: 1105, sqlState: "HY000",
                                    message: "(proxy) the result of an injected query is larger than the proxy's buffer limit (\(configuration.resultsetBufferLimit) bytes)")
                out.client(Self.framed(err, sequenceID: nextSequenceToClient, protocol41: true))
            }
            exchange.injections.removeAll()
            return sendNextInjection(&exchange, command, &out)
        }
        if configuration.hooks.contains(.readQueryResult) {
            exchange.step = .readQueryResultHook(command)
            exchange.injected = result
            return halt(.runHook(hookCall(.readQueryResult(result), loggedIn: true,
                                          serverIdle: exchange.hasServer && !tracker.isAwaitingResponse, status: tracker.status,
                                          queries: exchange.injections)), &out)
        }
        return resultDecided(&exchange, command, result, .noDecision, &out)
    }

    /// `read_query_result` has spoken (or there is none): what the client gets of the result.
    mutating func resultDecided(_ exchange: inout Exchange, _ command: consuming Command, _ result: InjectionOutcome, _ decision: HookDecision,
                                _ out: inout Output) -> Flow {
        var command = consume command
        if !result.buffered {
            if decision != .noDecision {
                flush(&out)
                emit(.log(.critical, "read_query_result() tries to change the result of injected query \(result.injection.id), which was not buffered: use proxy.queries:append(..., { resultset_is_needed = true }); the change is ignored"))
            }
        } else {
            switch decision {
            case .sendResult(let response):
                if command.sent == 0 {
                    answerCommand(&exchange, &command, with: response, &out)
                    if Self.asksForFile(command.code, response) { exchange.scriptedUpload = true }
                } else {
                    flush(&out)
                    emit(.log(.critical, "read_query_result() answered injected query \(result.injection.id), but this command already had its result; ignoring it"))
                }
            case .noDecision where command.autoBuffered:
                break  // a later injection's result is the client's
            case .noDecision:
                if command.sent == 0 {
                    command.sent += 1
                    var bytes = ByteBuffer()
                    var seq = nextSequenceToClient
                    for packet in result.packets { bytes.writeMySQLPacket(packet, sequenceID: &seq) }
                    nextSequenceToClient = seq
                    out.client(bytes)
                } else {
                    flush(&out)
                    emit(.log(.critical, "the result of injected query \(result.injection.id) is ignored: this command already had its result"))
                }
            case .ignoreResult:
                break
            default:
                flush(&out)
                emit(.log(.warning, "read_query_result() returned neither PROXY_SEND_RESULT nor PROXY_IGNORE_RESULT; the result of injected query \(result.injection.id) is ignored"))
            }
        }
        return sendNextInjection(&exchange, command, &out)
    }

    // MARK: - hooks answered

    mutating func exchangeHookReturned(_ result: HookResult) {
        guard case .exchanging(var box) = state else { return }
        state = .modifying
        exchangeHookReturned(&box.buffer[0], result)
        store(box, Output())
    }

    mutating func exchangeHookReturned(_ exchange: inout Exchange, _ result: HookResult) {
        var out = Output()
        if result.closeRequested { exchange.closeRequested = true }
        if let change = result.serverChange { applyServerChange(change, to: &exchange, &out) }
        exchange.injections = result.queries
        let flow: Flow
        switch exchange.takeStep() {
        case .readQueryHook(let command):
            flow = commandDecided(&exchange, consume command, result.decision, &out)
        case .uploadHook(let command, let last):
            flow = uploadPacketDecided(&exchange, command, last: last, result.decision, &out)
        case .readQueryResultHook(let command):
            let outcome = exchange.injected.take()!
            exchange.step = .running(command)
            flow = resultDecided(&exchange, command, outcome, result.decision, &out)
        case let step:
            exchange.step = step  // no hook was waiting
            flow = .proceed
        }
        if flow == .proceed, !isClosed {
            _ = carryOn(&exchange, &out)
        }
        emit(consume out)
    }

    /// The script swapped the server connection during a hook: the server side starts afresh.
    mutating func applyServerChange(_ change: ServerChange, to exchange: inout Exchange, _ out: inout Output) {
        let capabilities = session.capabilities.isEmpty ? [.protocol41] : session.capabilities
        // (what the old connection had on its way, answers to the proxy's statements too, ends with it)
        fromServer = FrameScanner()
        exchange.serverCollector.reset()
        exchange.streamHeld = ByteBuffer()
        exchange.placedPacket = nil
        tracking?.proxyResponses = []
        switch change {
        case .released:
            exchange.hasServer = false
            tracker = .commandPhase(capabilities: capabilities)
        case .replaced(let status):
            exchange.hasServer = true
            tracker = .commandPhase(capabilities: capabilities, status: status)
            // a connection in a state the model does not know (+ExchangeTracking)
            tracking?.state.pins.insert(.untracked)
        case .migrated(let previous):
            exchange.hasServer = true
            tracker = .commandPhase(capabilities: capabilities, status: tracker.status)
            if let restore = migratedServerAttached(previous: previous) { out.backend(restore) }
        }
    }
}
