import MySQLWire
import NIOCore

/// The transparent relay: chunks pass whole in both directions while the frame scanners walk their
/// packet headers and the response tracker follows the conversation. Nothing is copied or buffered.
extension ConnectionMachine {
    /// Bytes from the server.
    public mutating func backendDataReceived(_ chunk: ByteBuffer) -> Action {
        switch phase {
        case .relaying:
            // The plain relay (no hook on the path): it only ever forwards.
            return relayFromServer(chunk)
        case .draining:
            let action = relayFromServer(chunk)
            if case .forwardToClient(let bytes) = action, !tracker.isAwaitingResponse {
                return close(toClient: bytes, reason: nil, level: .info)  // the last response before the shutdown
            }
            return action
        case .exchanging:
            feedExchangeServer(chunk)
            return nextAction()
        case .authenticating:
            authenticationServerData(chunk)
            return nextAction()
        case .awaitingGreeting:
            return greetingBytesReceived(chunk)
        case .verifyingLogin, .awaitingSwitchAnswer:
            // a COM_CHANGE_USER is verified: the answers to the proxy's statements still come
            guard own?.changeUser != nil, tracking?.attachment == .attached else { return .none }
            return relayTrackedFromServer(chunk)
        case .awaitingHandshakeResponse:
            // Nothing is expected here; a server that times out the handshake may still say why.
            guard case .awaitingHandshakeResponse(let handshake) = state, handshake.hasServer, own == nil else { return .none }
            return .forwardToClient(chunk)
        default:
            return .none
        }
    }

    /// Bytes from the client.
    public mutating func clientDataReceived(_ chunk: ByteBuffer) -> Action {
        switch phase {
        case .relaying, .draining:
            return relayFromClient(chunk)
        case .exchanging, .authenticating:
            feedClient(chunk)
            return nextAction()
        case .awaitingHandshakeResponse:
            return handshakeResponseBytesReceived(chunk)
        case .awaitingSwitchAnswer:
            return switchAnswerBytesReceived(chunk)
        case .connecting where own?.plan != nil, .awaitingGreeting where own?.plan != nil:
            // a client that sends commands behind its login without waiting for the OK: they
            // follow the proxy's login to the server
            // (reads stop meanwhile: only what was read already arrives, bounded all the same)
            var ownLogin = own!
            guard ownLogin.plan!.rest.readableBytes + chunk.readableBytes <= configuration.maximumPacketLength else {
                clientBrokeProtocol()
                return close(.abort, reason: "the client sent more than a packet's worth of commands before its login was answered")
            }
            ownLogin.plan!.rest.writeImmutableBuffer(chunk)
            own = ownLogin
            return .none
        case .skippingOversized:
            skipOversized(chunk)
            return nextAction()
        case .closed, .connectServerHook, .readHandshakeHook, .readAuthHook, .readAuthResultHook, .verifyingLogin, .modifying:
            return .none
        case .initialized, .connecting, .awaitingGreeting:
            // Reads are not asked for before the greeting went out, so a client cannot get here
            // unless it speaks first; MySQL clients never do.
            clientBrokeProtocol()
            return close(.abort, reason: "client sent data before the server's greeting")
        }
    }

    /// Bytes from the client, whatever the state, queued as actions (for bytes that came behind
    /// a packet the machine took, and were left over when the state changed).
    mutating func feedClient(_ chunk: ByteBuffer) {
        switch phase {
        case .relaying, .draining: emit(relayFromClient(chunk))
        case .exchanging: feedExchangeClient(chunk)
        case .authenticating: authenticationClientData(chunk)
        default: break
        }
    }

    /// Scans a chunk from the server for packet boundaries, tracking responses; forwards it whole.
    ///
    /// No hook is on this path, so a packet the tracker cannot place is no reason to end the
    /// connection: the server's bytes go to the client as they are, the tracker is desynchronised
    /// and picks up again at the client's next command, and the warning names what it could not follow.
    mutating func relayFromServer(_ chunk: ByteBuffer) -> Action {
        if tracking != nil { return relayTrackedFromServer(chunk) }
        var warning: String?  // (a String, not the error itself: cheaper to carry when nothing failed)
        var refusedAt: (FrameScanner.PacketStart, offset: Int)?
        let recordingOn = configuration.recording != .off
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
        guard let warning else { return isSettledRelay ? .relayToClient(chunk, takeCounts()) : .forwardToClient(chunk) }
        counts.backendProtocolErrors += 1  // counted, but the connection goes on
        return .forwardToClientUnderstoodNot(chunk, warning: warning)
    }

    /// The server asked for a local file in answer to a statement that loads none (see
    /// `LocalInfile`): the client gets what came before the request and an ERR in its place, and
    /// the connection ends (the server waits for a file that will not come).
    mutating func localInfileRefused(_ chunk: ByteBuffer, at offset: Int, _ packet: FrameScanner.PacketStart) -> Action {
        backendBrokeProtocol()
        let command = tracker.currentCommand.map { "\($0)" } ?? "a command"
        let reason = "the server asked for a LOCAL INFILE upload in answer to \(command), which does not load a local file; refused (a rogue or intercepted server reaching for the client's files)"
        guard !packet.isSplit else { return close(.abort, reason: reason) }
        return refuse(.localInfileRefused("the server asked for a local file in answer to a statement that loads none (MoonProxy)"),
                      sequenceID: packet.header.sequenceID, before: chunk.getSlice(at: chunk.readerIndex, length: offset), reason: reason)
    }

    /// Forwards what came before the bad packet and puts an ERR where it stood.
    mutating func serverPacketMalformed(_ chunk: ByteBuffer, at offset: Int, _ packet: FrameScanner.PacketStart, _ error: WireError) -> Action {
        backendBrokeProtocol()
        let reason = "malformed packet from the backend: \(error)"
        guard !packet.isSplit else { return close(.abort, reason: reason) }
        return refuse(.malformedPacket("from the server: \(error)"), sequenceID: packet.header.sequenceID,
                      before: chunk.getSlice(at: chunk.readerIndex, length: offset), reason: reason)
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

    /// Scans a chunk from the client, registering each command with the tracker; forwards it
    /// whole (where statement ids are the session's, with them rewritten: +Statements).
    mutating func relayFromClient(_ chunk: ByteBuffer) -> Action {
        if ownBox != nil,
           heldChangeUser != nil || chunk.getInteger(at: chunk.readerIndex + PacketHeader.size, as: UInt8.self) == CommandCode.changeUser.rawValue,
           let taken = changeUserArrived(chunk) { return taken }
        return relayCommands(chunk)
    }

    /// `relayFromClient` past the proxy's own COM_CHANGE_USER (+ChangeUser): what it leaves to the server.
    mutating func relayCommands(_ chunk: ByteBuffer) -> Action {
        if tracking != nil && tracking!.attachment != .attached { return clientBytesWhileParked(chunk) }
        var failure: (isSplit: Bool, sequenceID: UInt8, error: String)?
        var commands = 0
        var queries = 0
        let recording = configuration.recording
        let recordingOn = recording != .off
        if recordingOn { recordRestOfText(chunk) }
        let carried = fromClient.carriedBytes
        var quitAt: Int?
        var changedUser = false
        let pools = configuration.poolsServers
        let tracks = tracking != nil
        var tracked: [(CommandCode, FrameScanner.PacketStart, Int)] = []
        if tracks { continueStatement(chunk) }
        // where statement ids are rewritten, a header split across reads is held until whole
        let remaps = remapsStatements
        var combined = chunk
        var heldCount = 0
        var edits: [ClientEdit] = []
        var taken: Tracking?
        let capabilities = session.capabilities
        if remaps {
            heldCount = tracking!.statements.held.readableBytes
            if heldCount > 0 {
                combined = tracking!.statements.held
                combined.writeImmutableBuffer(chunk)
                tracking!.statements.held = ByteBuffer()
            }
            swap(&taken, &tracking)  // (taken out while the scan changes it)
        }
        fromClient.scanPacketStarts(chunk) { packet, offset in
            let start = packet.isSplit ? 0 : heldCount + offset
            if remaps, tracker.clientPhase == .command, let byte = packet.firstByte {
                switch CommandCode(byte) {
                case .stmtExecute, .stmtBulkExecute, .stmtSendLongData, .stmtReset, .stmtFetch, .stmtClose:
                    Self.statementCommandArriving(CommandCode(byte), packet, at: start, in: combined, &taken!, &tracker, &edits,
                                                  preparedAgain: &counts.statementsPreparedAgain)
                default:
                    break
                }
            }
            do throws(WireError) {
                if case .command(let code, let shape) = try tracker.clientPacketStarted(packet) {
                    if tracks { tracked.append((code, packet, start)) }
                    if remaps, code == .stmtPrepare {
                        Self.clientPrepareSent(packet, at: start, in: combined, ordinal: taken!.responsesEnded + UInt64(tracker.pendingCount) - 1,
                                               capabilities: capabilities, &taken!)
                    }
                    if pools {
                        if code == .quit {
                            quitAt = start
                            return false
                        }
                        if code == .changeUser { changedUser = true }
                    }
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
        if remaps { swap(&taken, &tracking) }
        if changedUser { sessionChangedUser = true }
        if let quitAt {
            guard remaps, !edits.isEmpty else { return clientQuit(combined, at: quitAt, commands: commands, queries: queries) }
            var edited = Self.edited(combined, edits, upTo: quitAt)
            let before = edited.readableBytes
            edited.writeImmutableBuffer(combined.getSlice(at: combined.readerIndex + quitAt, length: combined.readableBytes - quitAt)!)
            return clientQuit(edited, at: before, commands: commands, queries: queries)
        }
        tracker.clientFramesSeen(upTo: fromClient.lastSequenceID)
        countCommands(commands, queries)
        if let failure {
            clientBrokeProtocol()
            let reason = "malformed packet from the client: \(failure.error)"
            if tracker.isAwaitingResponse || failure.isSplit {
                return close(.abort, reason: reason)
            }
            return refuse(.unknownCommand(), sequenceID: failure.sequenceID &+ 1, reason: reason)
        }
        var out = chunk
        if remaps {
            let holdFrom = max(0, combined.readableBytes - fromClient.carriedBytes)
            if !edits.isEmpty || heldCount > 0 || holdFrom < combined.readableBytes {
                out = Self.edited(combined, edits, upTo: holdFrom)
                tracking!.statements.held = combined.getSlice(at: combined.readerIndex + holdFrom, length: combined.readableBytes - holdFrom)!
            }
        }
        if tracks && !tracked.isEmpty {
            trackClientCommands(combined, tracked, carried: carried - heldCount)
            if tracking!.resetsPending > 0 {
                // the session's COM_RESET_CONNECTION turned the trackers off: on again, right behind it
                tracking!.resetsPending = 0
                if let trackers = enableTrackers() {
                    out.writeImmutableBuffer(trackers)
                    return .forwardToBackend(out)
                }
            }
        }
        guard out.readableBytes > 0 else { return .none }  // (what was queued follows in order)
        return isSettledRelay ? .relayToBackend(out, takeCounts()) : .forwardToBackend(out)
    }

    /// `combined` up to `end` with `edits` (in order, not overlapping) made.
    static func edited(_ combined: ByteBuffer, _ edits: [ClientEdit], upTo end: Int) -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(end + edits.reduce(0) { $0 + $1.insert.readableBytes })
        var cursor = 0
        for edit in edits where edit.at >= cursor && edit.at + edit.remove <= end {
            if edit.at > cursor { out.writeImmutableBuffer(combined.getSlice(at: combined.readerIndex + cursor, length: edit.at - cursor)!) }
            out.writeImmutableBuffer(edit.insert)
            cursor = edit.at + edit.remove
        }
        if end > cursor { out.writeImmutableBuffer(combined.getSlice(at: combined.readerIndex + cursor, length: end - cursor)!) }
        return out
    }

    @inline(__always) mutating func countCommands(_ commands: Int, _ queries: Int) {
        if commands > 0 {
            counts.commands &+= UInt32(truncatingIfNeeded: commands)
            counts.queries &+= UInt32(truncatingIfNeeded: queries)
        }
    }

    /// COM_QUIT, where server connections may be pooled: the server connection goes back to the
    /// pool when the proxy logged it in and nothing is on its way (else the quit goes to the
    /// server, which closes). Nothing can follow a quit.
    mutating func clientQuit(_ chunk: ByteBuffer, at offset: Int, commands: Int, queries: Int) -> Action {
        counts.commands &+= UInt32(truncatingIfNeeded: commands + 1)
        counts.queries &+= UInt32(truncatingIfNeeded: queries)
        noteClose(.none)
        if releasesServer(quitting: true) {
            if offset > 0, let before = chunk.getSlice(at: chunk.readerIndex, length: offset) { emit(.write(toClient: nil, toBackend: before)) }
            emit(.releaseBackend)
        } else {
            // written and flushed before the close: the server sees the client quit, not vanish
            emit(.write(toClient: nil, toBackend: chunk))
            if tracker.isAwaitingResponse {
                // what came before the quit (the login's verdict, a pipelined command) is still
                // to be answered: the client gets the answer, as directly, and the server's close
                // after it ends the session
                return .none
            }
        }
        emit(close(reason: nil, level: .info))
        return .none  // (queued: a caller that emits what this returns keeps the order)
    }

    /// The plain relay with nothing else to say: no action queued, no record finished, the login
    /// and the client's reads reported (`nextAction()` would answer `.none` after the counts).
    var isSettledRelay: Bool {
        guard case .relaying(draining: false) = state else { return false }
        return loginReported && clientReadsReported && finishedRecords.isEmpty && outbox.isEmpty
    }
}
