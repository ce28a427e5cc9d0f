import MySQLWire
import NIOCore

/// What the script does with a command (see +Exchange): answers it itself (`proxy.response`),
/// takes a file it asked the client for, or injects queries (`proxy.queries`) that go to the
/// server one after the other; and the end of the command, when the client must have had exactly
/// one response.
extension ConnectionMachine {
    /// `proxy.response` answers the command.
    mutating func answerCommand(_ exchange: inout Exchange, _ command: inout Command, with response: ScriptResponse, _ out: inout Output) {
        command.sent += 1
        if configuration.recording != .off && !openRecords.isEmpty {
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
        guard ResponseShape(command: command.code) != .none else {
            if command.code != .quit {
                flush(&out)
                emit(.log(.warning, "the script answered \(command.code), which takes no answer; nothing is sent"))
            }
            return
        }
        let (bytes, problem) = response.encodeChecked(command: command.code, capabilities: session.capabilities.isEmpty ? [.protocol41] : session.capabilities,
                                                      sequenceID: nextSequenceToClient)
        if let problem {
            flush(&out)
            emit(.log(.error, problem))
            counts.errorsSentByProxy += 1
        }
        out.client(bytes)
    }

    /// Whether a script's answer to a COM_QUERY is a LOCAL INFILE request, as a mock server asks
    /// for a file: the client's next packets are then the file, up to an empty one.
    static func asksForFile(_ code: CommandCode, _ response: ScriptResponse) -> Bool {
        guard code == .query, case .raw(let packets) = response, packets.count == 1 else { return false }
        return packets[0].getInteger(at: packets[0].readerIndex, as: UInt8.self) == 0xFB
    }

    /// A packet of a file the client uploads because the script asked for it: each goes to
    /// `read_query` as MySQL Proxy passed them (a mock may keep what it is sent); the answer to
    /// the last, empty one is the statement's result, and answers to the others are dropped, as
    /// the client reads nothing before it has sent the whole file.
    mutating func scriptedUploadPacket(_ exchange: inout Exchange, _ c: PacketCollector.Collected, _ out: inout Output) -> Flow {
        let payload = c.packet.payload
        let last = payload.readableBytes == 0
        if last { exchange.scriptedUpload = false }
        let command = Command(code: .query, clientSequence: c.packet.sequenceID, packet: payload)
        nextSequenceToClient = Self.sequence(after: c.packet.sequenceID, length: payload.readableBytes)
        if configuration.hooks.contains(.readQuery) {
            exchange.injections = []
            exchange.step = .uploadHook(command, last: last)
            return halt(.runHook(hookCall(.readQuery(packet: payload), loggedIn: true,
                                          serverIdle: exchange.hasServer && !tracker.isAwaitingResponse, status: tracker.status)), &out)
        }
        return uploadPacketDecided(&exchange, command, last: last, .noDecision, &out)
    }

    mutating func uploadPacketDecided(_ exchange: inout Exchange, _ command: consuming Command, last: Bool, _ decision: HookDecision, _ out: inout Output) -> Flow {
        var command = consume command
        if !exchange.injections.isEmpty {
            flush(&out)
            emit(.log(.error, "proxy.queries:append() while the client uploads a file the script asked for; \(exchange.injections.count) queued queries dropped"))
            exchange.injections.removeAll()
        }
        guard last else {
            exchange.step = .idle
            return .proceed
        }
        if case .sendResult(let response) = decision {
            answerCommand(&exchange, &command, with: response, &out)
        } else {
            flush(&out)
            emit(.log(.error, "the script asked for a LOCAL INFILE upload and did not answer its end (the empty packet) with proxy.response"))
            counts.errorsSentByProxy += 1
            command.sent = 1
            let err = ERRPacket(code: 1105, sqlState: "HY000", message: "(proxy) the script asked for a file and sent no result for it")
            out.client(Self.framed(err, sequenceID: nextSequenceToClient, protocol41: true))
        }
        return finishCommand(&exchange, command, &out)
    }

    /// Sends the first query of `proxy.queries` to the server, or ends the command when none is left.
    mutating func sendNextInjection(_ exchange: inout Exchange, _ command: consuming Command, _ out: inout Output) -> Flow {
        var command = consume command
        while let injection = exchange.injections.first {
            guard exchange.hasServer else {
                flush(&out)
                emit(.log(.error, "no server connection to send injected query \(injection.id) to; \(exchange.injections.count) queries dropped"))
                exchange.injections.removeAll()
                if command.sent == 0 { return noServer(&exchange, command, &out) }
                break
            }
            if !injection.resultsetIsNeeded && command.sent > 0 {
                flush(&out)
                emit(.log(.critical, "proxy.queries:append() can have only one injected query without { resultset_is_needed = true } per command, as its result goes straight to the client; closing the client connection"))
                return halt(close(reason: "the script injected a second query whose result would go to the client"), &out)
            }
            let payload = injection.packet
            guard payload.readableBytes > 0 else {
                flush(&out)
                emit(.log(.error, "injected query \(injection.id) is empty; skipped"))
                exchange.injections.removeFirst()
                continue
            }
            let start = PacketCollector.start(of: MySQLFrame(sequenceID: 0, payload: payload),
                                              firstFrameLength: min(payload.readableBytes, PacketHeader.maxPayloadLength))
            let kind: ResponseTracker.ClientPacket
            do {
                kind = try tracker.clientPacketStarted(start)
            } catch {
                flush(&out)
                emit(.log(.error, "injected query \(injection.id) cannot be sent now (\(error)); skipped"))
                exchange.injections.removeFirst()
                continue
            }
            var bytes = ByteBuffer()
            bytes.reserveCapacity(payload.readableBytes + 8)
            var seq: UInt8 = 0
            bytes.writeMySQLPacket(payload, sequenceID: &seq)
            out.backend(bytes)
            if tracking != nil { exchangeCommandSent(payload) }
            if case .command(_, .none) = kind {
                // COM_STMT_CLOSE and the like: no response, nothing to report
                exchange.injections.removeFirst()
                continue
            }
            // Only one result reaches the client: an unbuffered injection with another after it
            // (MySQL Proxy's ro-balance injects SHOW SLAVE STATUS so, and reads its rows) is
            // buffered for the script instead.
            let buffer = injection.resultsetIsNeeded || exchange.injections.dropFirst().contains { !$0.resultsetIsNeeded }
            command.autoBuffered = buffer && !injection.resultsetIsNeeded
            exchange.injected = InjectionOutcome(injection: injection, buffered: buffer,
                                                 capabilities: session.capabilities.isEmpty ? [.protocol41] : session.capabilities)
            exchange.responseFirstByte = nil
            command.bufferedBytes = 0
            command.overflowed = false
            // `seq` is now the sequence id the server's response starts with
            command.shift = nextSequenceToClient &- seq
            if buffer {
                command.collect = .buffer
            } else {
                command.collect = command.shift == 0 ? nil : .shift
                command.sent += 1
            }
            exchange.step = .running(command)
            return .proceed
        }
        return finishCommand(&exchange, command, &out)
    }

    /// The command is over; the client must have had its one response. `closing`: the command
    /// ends the connection (a COM_QUIT with no server to answer it).
    mutating func finishCommand(_ exchange: inout Exchange, _ command: Command, _ out: inout Output,
                                closing: (reason: String, level: Severity)? = nil) -> Flow {
        if configuration.recording != .off && !openRecords.isEmpty {
            if !exchange.hasServer { openRecords[0].answeredByScript = true }
            recordResponseEnded(exchange.lastEnd)
        }
        if command.sent == 0 && closing == nil && ResponseShape(command: command.code) != .none {
            flush(&out)
            emit(.log(.warning, "no result went to the client for \(command.code): every injected result was ignored; sending an error instead"))
            let err = ERRPacket(code: 1105, sqlState: "07000", message: "(proxy) the script sent no result for this command")
            out.client(Self.framed(err, sequenceID: nextSequenceToClient, protocol41: true))
        }
        exchange.step = .idle
        if let closing {
            exchange.queue.removeAll()
            return halt(close(toClient: out.toClient.take(), reason: closing.reason, level: closing.level), &out)
        }
        if exchange.closeRequested {
            noteClose(.scriptClosed)
            exchange.queue.removeAll()
            return halt(close(toClient: out.toClient.take(), reason: "the script set proxy.connection.connection_close", level: .info), &out)
        }
        if exchange.draining {
            exchange.queue.removeAll()
            return halt(close(toClient: out.toClient.take(), reason: "shutting down", level: .info), &out)
        }
        return .proceed
    }
}

extension Optional where Wrapped == ByteBuffer {
    /// The value, leaving nil in its place.
    mutating func take() -> ByteBuffer? {
        defer { self = nil }
        return self
    }
}
