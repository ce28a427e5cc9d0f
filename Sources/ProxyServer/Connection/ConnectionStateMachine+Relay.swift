import MySQLWire
import NIOCore

/// The transparent relay: chunks pass whole in both directions while the frame scanners walk their
/// packet headers and the response tracker follows the conversation. Nothing is copied or buffered.
extension ConnectionStateMachine {
    /// Scans a chunk from the server for packet boundaries, tracking responses; forwards it whole.
    ///
    /// No hook is on this path, so a packet the tracker cannot place is no reason to end the
    /// connection: the server's bytes go to the client as they are, the tracker is desynchronised
    /// and picks up again at the client's next command, and the warning names what it could not follow.
    mutating func relayFromServer(_ chunk: ByteBuffer) -> Action {
        var warning: String?  // (a String, not the error itself: cheaper to carry when nothing failed)
        var refusedAt: (FrameScanner.PacketStart, offset: Int)?
        let recordingOn = recording != .off
        if recordingOn { recordResponseBytes(chunk.readableBytes) }
        fromServer.scanPacketStarts(chunk) { packet, offset in
            guard !tracker.isDesynchronized else { return true }
            do throws(WireError) {
                switch try tracker.serverPacketStarted(packet) {
                case .endOfResponse(let end):
                    if end.command == nil {
                        if end.kind == .error && closeSource == nil { closeSource = .authFailed }
                    } else if recordingOn {
                        Self.recordEnd(end, now: now, open: &openRecords, finished: &finishedRecords)
                    }
                case .localInfileRequestRefused:
                    refusedAt = (packet, offset)
                    return false
                default:
                    break
                }
            } catch {
                let command = tracker.currentCommand.map { "\($0)" } ?? "the login"
                warning = "cannot follow the server's response to \(command) (\(error)) at a packet of \(packet.header.payloadLength) bytes starting \(packet.prefix.description.prefix(32)); relaying it unchanged and following again from the client's next command"
                tracker.desynchronize()
                if recordingOn { openRecords.removeAll() }
            }
            return true
        }
        if let (packet, offset) = refusedAt { return localInfileRefused(chunk, at: offset, packet) }
        guard let warning else { return .forwardToClient(chunk) }
        statistics.add(.backendProtocolErrors)  // counted, but the connection goes on
        return .forwardToClientUnderstoodNot(chunk, warning: warning)
    }

    /// The server asked for a local file in answer to a statement that loads none (see
    /// `LocalInfile`): the client gets what came before the request and an ERR in its place, and
    /// the connection ends (the server waits for a file that will not come).
    mutating func localInfileRefused(_ chunk: ByteBuffer, at offset: Int, _ packet: FrameScanner.PacketStart) -> Action {
        phase = .closed
        backendBrokeProtocol()
        let command = tracker.currentCommand.map { "\($0)" } ?? "a command"
        let reason = "the server asked for a LOCAL INFILE upload in answer to \(command), which does not load a local file; refused (a rogue or intercepted server reaching for the client's files)"
        guard !packet.isSplit else { return .abortConnections(reason: reason) }
        statistics.add(.errorsSentByProxy)
        var out = chunk.getSlice(at: chunk.readerIndex, length: offset) ?? ByteBuffer()
        var err = Self.framed(.localInfileRefused("the server asked for a local file in answer to a statement that loads none (MoonProxy)"),
                              sequenceID: packet.header.sequenceID, protocol41: true)
        out.writeBuffer(&err)
        return .sendToClientAndClose(out, reason: reason)
    }

    /// Forwards what came before the bad packet and puts an ERR where it stood.
    static func serverPacketMalformed(_ chunk: ByteBuffer, at offset: Int, _ packet: FrameScanner.PacketStart, _ error: WireError) -> Action {
        let reason = "malformed packet from the backend: \(error)"
        guard !packet.isSplit else { return .abortConnections(reason: reason) }
        var out = chunk.getSlice(at: chunk.readerIndex, length: offset) ?? ByteBuffer()
        var err = Self.framed(.malformedPacket("from the server: \(error)"), sequenceID: packet.header.sequenceID, protocol41: true)
        out.writeBuffer(&err)
        return .sendToClientAndClose(out, reason: reason)
    }

    /// The first bytes of a packet's payload, at most `limit`, as far as `chunk` holds them: the
    /// bytes after its header, or, when the header and prefix came over several reads (`isSplit`),
    /// the prefix followed by what comes after it in this chunk (`carried` bytes of header and
    /// prefix were held from earlier reads).
    static func payloadStart(of packet: FrameScanner.PacketStart, at offset: Int, in chunk: ByteBuffer, carried: Int,
                             upTo limit: Int) -> ByteBuffer? {
        let length = min(Int(packet.header.payloadLength), limit)
        guard packet.isSplit else {
            let start = offset + PacketHeader.size
            return chunk.getSlice(at: chunk.readerIndex + start, length: max(0, min(length, chunk.readableBytes - start)))
        }
        var payload = packet.prefix.buffer
        let start = PacketHeader.size + packet.prefix.count - carried
        guard start >= 0, start <= chunk.readableBytes,
              var rest = chunk.getSlice(at: chunk.readerIndex + start,
                                        length: max(0, min(length - packet.prefix.count, chunk.readableBytes - start)))
        else { return payload }
        payload.writeBuffer(&rest)
        return payload
    }

    /// Scans a chunk from the client, registering each command with the tracker; forwards it whole.
    mutating func relayFromClient(_ chunk: ByteBuffer) -> Action {
        var failure: (isSplit: Bool, sequenceID: UInt8, error: String)?
        var commands = 0
        var queries = 0
        let recordingOn = recording != .off
        if recordingOn { recordRestOfText(chunk) }
        let carried = fromClient.carriedBytes
        fromClient.scanPacketStarts(chunk) { packet, offset in
            do throws(WireError) {
                if case .command(let code, let shape) = try tracker.clientPacketStarted(packet) {
                    commands += 1
                    if code == .query { queries += 1 }
                    if recordingOn {
                        var payload: ByteBuffer?
                        if case .text(let limit) = recording, code == .query || code == .stmtPrepare {
                            payload = Self.payloadStart(of: packet, at: offset, in: chunk, carried: carried, upTo: limit < Int.max ? limit + 1 : limit)
                        }
                        Self.recordStart(code, expectsResponse: shape != .none, payload: payload,
                                         payloadLength: Int(packet.header.payloadLength), recording: recording,
                                         now: now, open: &openRecords, finished: &finishedRecords)
                    }
                }
                return true
            } catch {
                failure = (packet.isSplit, packet.header.sequenceID, "\(error)")
                return false
            }
        }
        tracker.clientFramesSeen(upTo: fromClient.lastSequenceID)
        if commands > 0 { statistics.add(.commands, commands) }
        if queries > 0 { statistics.add(.queries, queries) }
        if let failure {
            clientBrokeProtocol()
            let reason = "malformed packet from the client: \(failure.error)"
            if tracker.isAwaitingResponse || failure.isSplit {
                return .abortConnections(reason: reason)
            }
            statistics.add(.errorsSentByProxy)
            return .sendToClientAndClose(Self.framed(.unknownCommand(), sequenceID: failure.sequenceID &+ 1, protocol41: true), reason: reason)
        }
        return .forwardToBackend(chunk)
    }
}
