import MySQLWire
import NIOCore

/// Session tracking on the proxy's own server connections (`Configuration.tracksSessions`): the
/// proxy turns every session tracker on, reads what each OK packet reports into the session's
/// `SessionState`, and gives the client each OK as the server would have written it for the
/// client's own trackers (or, for a client without CLIENT_SESSION_TRACK, without any).
///
/// The relay stays a relay: chunks pass whole unless they hold such an OK, which is cut out and
/// written again. An OK whose end has not arrived is held, with what follows it, until it has;
/// so is a packet header split across reads, so that no packet the proxy must read whole has
/// begun to leave. Statements of the proxy's own (turning the trackers on, later restoring a
/// session) go to the server between the client's commands, and their answers never reach the
/// client: the response tracker counts them in order, and the relay drops their packets.
extension ConnectionMachine {
    struct Tracking {
        var state: SessionState
        /// The client negotiated CLIENT_SESSION_TRACK.
        var clientTracks: Bool
        /// Bytes from the server not forwarded yet: the start of a packet the relay must read
        /// whole (`holding`), or a header split across reads.
        var held = ByteBuffer()
        var holding = false
        /// What to do with the held packet once it is whole.
        var heldDropped = false
        /// Responses that ended on this connection (the login's included): the ordinal of the
        /// response under way.
        var responsesEnded: UInt64 = 0
        /// The ordinals of responses to the proxy's own statements, oldest first.
        var proxyResponses: [UInt64] = []
        /// The trackers were turned on on the current server connection.
        var enabled = false
        /// Multiplexing: whether the session has a server connection (+Multiplex).
        var attachment = Attachment.attached
        /// Client bytes that wait for a server connection.
        var waiting = ByteBuffer()
        /// Statements restoring the session's state are under way: a refusal ends the session.
        var restoring = false
        /// A statement whose text is still arriving: what came of it, and how much is to come.
        var statement: (text: ByteBuffer, remaining: Int)?
        /// Binary prepared statements the session prepared and has not closed (at most), where
        /// ids are the server's (no multiplexing).
        var preparedStatements = 0
        /// The session's binary prepared statements, where ids are the session's (+Statements).
        var statements = Statements()
        /// The `last_statement` pin was set by the statement under way (it lasts one statement more).
        var lastStatementFresh = false
        /// The database the login named ("": none).
        var loginDatabase = ""
        /// The session's own COM_RESET_CONNECTIONs sent: the trackers go on again behind them.
        var resetsPending = 0
        /// The connection the session gave up no longer holds its state (a refused
        /// COM_CHANGE_USER reset the session meanwhile): it is not its own to take back as it is.
        var forgetsOwnConnection = false
    }

    /// The longest statement whose text the tracking reads (a longer one pins its session).
    static let longestReadStatement = 1 << 20

    /// The rest of a statement whose text began in an earlier read: the first bytes of `chunk`.
    mutating func continueStatement(_ chunk: ByteBuffer) {
        guard var pending = tracking?.statement else { return }
        let n = min(pending.remaining, chunk.readableBytes)
        if let part = chunk.getSlice(at: chunk.readerIndex, length: n) { pending.text.writeImmutableBuffer(part) }
        pending.remaining -= n
        if pending.remaining > 0 {
            tracking!.statement = pending
        } else {
            tracking!.statement = nil
            tracking!.state.apply(StatementBackstop(pending.text.readableBytesView.dropFirst()))
        }
    }

    /// What the client's commands in a chunk mean for the session's state, read as they go to
    /// the server (`carried`: bytes of a split header held from earlier reads).
    mutating func trackClientCommands(_ chunk: ByteBuffer, _ commands: [(CommandCode, FrameScanner.PacketStart, Int)], carried: Int) {
        let remaps = remapsStatements
        defer { if remaps { Self.updateStatementPins(&tracking!) } }
        for (code, packet, offset) in commands {
            switch code {
            case .query:
                let length = packet.header.payloadLength
                guard !packet.isMultiFrame, length <= Self.longestReadStatement else {
                    tracking!.state.pins.insert(.untracked)
                    continue
                }
                let visible = Self.payloadStart(of: packet, at: offset, in: chunk, carried: carried, upTo: length) ?? ByteBuffer()
                if visible.readableBytes >= length {
                    let statement = StatementBackstop(visible.readableBytesView.dropFirst())
                    if statement.pins.contains(.lastStatement) { tracking!.lastStatementFresh = true }
                    tracking!.state.apply(statement)
                } else {
                    tracking!.statement = (visible, length - visible.readableBytes)
                }
            case .stmtPrepare where !remaps:
                tracking!.preparedStatements += 1
                tracking!.state.pins.insert(.preparedStatement)
            case .stmtClose where !remaps:
                tracking!.preparedStatements = max(0, tracking!.preparedStatements - 1)
                if tracking!.preparedStatements == 0 { tracking!.state.pins.remove(.preparedStatement) }
            case .changeUser:
                tracking!.state.pins.insert(.changedUser)
                tracking!.statements.removeAll()
            case .resetConnection:
                // the session's reset clears what it set, and the proxy's trackers: they go on again behind it
                tracking!.state.reset()
                tracking!.preparedStatements = 0
                tracking!.statements.removeAll()
                tracking!.enabled = false
                tracking!.resetsPending += 1
            case .stmtFetch, .stmtSendLongData:
                break  // pinned already by the prepared statement
            default:
                break
            }
        }
    }

    /// The most of an OK packet the relay holds to read it whole.
    static let largestTrackedOK = 1 << 20

    /// What the proxy turns on (and turns on again after every COM_RESET_CONNECTION).
    static let enableTrackersStatement =
        "SET SESSION session_track_system_variables = '*', session_track_schema = ON, session_track_state_change = ON, session_track_transaction_info = 'CHARACTERISTICS'"

    /// The session's state as the server reported it, where the proxy tracks it.
    public var sessionState: SessionState? { tracking?.state }
    /// What pins the session (read after every server read: no copy of the state).
    public var sessionPins: SessionState.Pins { tracking?.state.pins ?? [] }

    /// Starts tracking for a login the proxy makes itself (with the credential it holds).
    mutating func beginTracking(loginDatabase: String) {
        guard configuration.tracksSessions else { return }
        tracking = Tracking(state: SessionState(), clientTracks: session.capabilities.contains(.sessionTrack))
        tracking!.loginDatabase = loginDatabase
    }

    /// The login (or the hand-over of a pooled connection) is through: the trackers go on, in
    /// front of whatever the client sends next.
    mutating func enableTrackers() -> ByteBuffer? {
        guard tracking != nil, !tracking!.enabled else { return nil }
        guard let bytes = proxyStatement(Self.enableTrackersStatement) else {
            tracking!.state.pins.insert(.untracked)
            return nil
        }
        tracking!.enabled = true
        return bytes
    }

    /// A statement of the proxy's, framed as a command, registered with the response tracker so
    /// that its answer is recognised and dropped. Nil when the client is in the middle of a packet
    /// (nothing can go in between).
    mutating func proxyStatement(_ sql: String) -> ByteBuffer? {
        var payload = ByteBuffer()
        payload.reserveCapacity(sql.utf8.count + 1)
        payload.writeInteger(CommandCode.query.rawValue)
        payload.writeString(sql)
        return proxyCommand(payload)
    }

    /// A command of the proxy's (see `proxyStatement`).
    mutating func proxyCommand(_ bytes: [UInt8]) -> ByteBuffer? { proxyCommand(ByteBuffer(bytes: bytes)) }

    mutating func proxyCommand(_ payload: ByteBuffer) -> ByteBuffer? {
        guard tracking != nil, fromClient.isAtPacketBoundary, tracker.clientPhase == .command else { return nil }
        let ended = tracking!.responsesEnded
        return Self.registerProxyCommand(payload, &tracker, &tracking!.proxyResponses, responsesEnded: ended)
    }

    /// One packet start from the server, through the response tracker (the part both relays
    /// share). Nil when the tracker cannot place it (`warning` says why; the tracker is
    /// desynchronised) or is desynchronised already.
    mutating func serverPacketSeen(_ packet: FrameScanner.PacketStart, recordingOn: Bool, proxys: Bool,
                                   warning: inout String?) -> ResponseTracker.ServerPacket? {
        guard !tracker.isDesynchronized else { return nil }
        do throws(WireError) {
            let kind = try tracker.serverPacketStarted(packet)
            if case .endOfResponse(let end) = kind {
                if end.command == nil {
                    if end.kind == .error && closeSource == nil { closeSource = .authFailed }
                } else if recordingOn && !proxys {
                    Self.recordEnd(end, now: now, open: &openRecords, finished: &finishedRecords)
                }
            }
            return kind
        } catch {
            let command = tracker.currentCommand.map { "\($0)" } ?? "the login"
            warning = "cannot follow the server's response to \(command) (\(error)) at a packet of \(packet.header.payloadLength) bytes starting \(packet.prefix.description.prefix(32)); relaying it unchanged and following again from the client's next command"
            tracker.desynchronize()
            if recordingOn { openRecords.removeAll() }
            return nil
        }
    }

    /// The relay from the server where the session is tracked (see the type's notes).
    mutating func relayTrackedFromServer(_ chunk: ByteBuffer) -> Action {
        // (bytes of a server connection the session no longer has: nobody's)
        guard tracking!.attachment == .attached else { return .none }
        var t = tracking.take()!  // (moved out while changed: nothing retained or copied)
        defer { tracking = t }
        var warning: String?
        var refusedAt: (FrameScanner.PacketStart, offset: Int)?
        let recordingOn = configuration.recording != .off
        if recordingOn { recordResponseBytes(chunk.readableBytes) }
        let heldCount = t.held.readableBytes
        var combined = chunk
        if heldCount > 0 {
            combined = t.held
            combined.writeImmutableBuffer(chunk)
        }
        t.held = ByteBuffer()
        var edits: [(start: Int, end: Int, replacement: ByteBuffer?)] = []
        // a packet whose end is to come: where it starts in `combined`, and whether it is dropped
        var pending: (start: Int, dropped: Bool)? = t.holding ? (0, t.heldDropped) : nil
        var pendingFromBefore = t.holding
        t.holding = false
        var enableAfter = false
        var restoreRefused = false

        // the scanner is taken out while it walks the chunk, so that the walk may call into the machine
        var scanner = FrameScanner()
        swap(&scanner, &fromServer)
        defer { swap(&scanner, &fromServer) }
        scanner.scan(chunk) { event in
            switch event {
            case .packetEnd(let offset):
                if pendingFromBefore, let p = pending {
                    edits.append(Self.trackedPacket(combined, from: p.start, to: heldCount + offset, dropped: p.dropped, &t))
                    pending = nil
                    pendingFromBefore = false
                }
                return true
            case .packetStart(let packet, let offset):
                let start = packet.isSplit ? 0 : heldCount + offset
                let ordinal = t.responsesEnded
                let proxys = t.proxyResponses.first == ordinal
                tracker.lastOKStatus = nil
                guard let kind = serverPacketSeen(packet, recordingOn: recordingOn, proxys: proxys, warning: &warning) else {
                    if proxys {
                        // a statement of the proxy's whose answer cannot be followed: the state is unknown
                        t.state.pins.insert(.untracked)
                    }
                    return true
                }
                if kind == .localInfileRequestRefused {
                    refusedAt = (packet, offset)
                    return false
                }
                if let head = t.statements.answers.first, head.ordinal == ordinal {
                    // the first packet of a prepare's answer
                    t.statements.answers.removeFirst()
                    if let edit = Self.prepareAnswered(head.answer, packet, at: start, ordinal: ordinal, in: combined, &t) { edits.append(edit) }
                }
                if case .endOfResponse(let end) = kind {
                    t.responsesEnded &+= 1
                    if proxys {
                        t.proxyResponses.removeFirst()
                        if end.command == .stmtPrepare {
                            // a statement prepared again: where the server refuses, so does the command behind it
                        } else if end.kind != .ok {
                            t.state.pins.insert(.untracked)
                            if t.restoring { restoreRefused = true }
                        }
                        if t.proxyResponses.isEmpty { t.restoring = false }
                    } else if end.command == nil, end.kind == .ok {
                        enableAfter = true  // the login went through
                    } else if end.command != nil {
                        Self.statementEnded(end, &t)
                        if !t.statements.cursorAnswers.isEmpty { Self.responseEnded(ordinal, end, &t.statements) }
                    }
                    if let status = end.status { t.state.updateTransaction(status) }
                }
                if let refusal = t.statements.refusals.first, refusal.ordinal <= ordinal {
                    t.statements.refusals.removeFirst()
                    if refusal.ordinal == ordinal, packet.firstByte == 0xFF, !packet.isMultiFrame {
                        // the prepare's reason in place of the command's "unknown statement"
                        var framed = ByteBuffer()
                        var seq = packet.header.sequenceID
                        framed.writeMySQLPacket(refusal.err, sequenceID: &seq)
                        edits.append((start, start, framed))
                        let length = PacketHeader.size + packet.header.payloadLength
                        if start + length <= combined.readableBytes {
                            edits.append((start, start + length, nil))
                        } else {
                            pending = (start, true)
                        }
                        return true
                    }
                }
                // a server's last words between commands (KILL's ERR) are not for a session that
                // carries on on another connection when this one ends
                let lastWords = kind == .unsolicited && configuration.multiplexes && t.state.pins.isEmpty
                let status = tracker.lastOKStatus
                guard proxys || lastWords || status?.contains(.sessionStateChanged) == true else { return true }
                let length = PacketHeader.size + packet.header.payloadLength
                guard !packet.isMultiFrame, length <= Self.largestTrackedOK else {
                    t.state.pins.insert(.untracked)
                    return true
                }
                if start + length <= combined.readableBytes {
                    edits.append(Self.trackedPacket(combined, from: start, to: start + length, dropped: proxys || lastWords, &t))
                } else {
                    pending = (start, proxys || lastWords)
                }
                return true
            }
        }
        if let (packet, offset) = refusedAt { return localInfileRefused(chunk, at: offset, packet) }
        if configuration.multiplexes { Self.updateStatementPins(&t) }
        var holdFrom: Int?
        if let pending {
            holdFrom = pending.start
            t.holding = true
            t.heldDropped = pending.dropped
        } else if scanner.carriedBytes > 0 {
            holdFrom = max(0, combined.readableBytes - scanner.carriedBytes)
        }
        var out: ByteBuffer
        if edits.isEmpty && holdFrom == nil && heldCount == 0 {
            out = chunk
        } else {
            let end = holdFrom ?? combined.readableBytes
            out = ByteBuffer()
            out.reserveCapacity(end)
            var cursor = 0
            for edit in edits where edit.start >= cursor && edit.end <= end {
                if edit.start > cursor { out.writeImmutableBuffer(combined.getSlice(at: combined.readerIndex + cursor, length: edit.start - cursor)!) }
                if let replacement = edit.replacement { out.writeImmutableBuffer(replacement) }
                cursor = edit.end
            }
            if end > cursor { out.writeImmutableBuffer(combined.getSlice(at: combined.readerIndex + cursor, length: end - cursor)!) }
            if let holdFrom { t.held = combined.getSlice(at: combined.readerIndex + holdFrom, length: combined.readableBytes - holdFrom)! }
        }
        if restoreRefused {
            tracking = t
            let action = restoreFailed(before: out)
            t = tracking!
            return action
        }
        if enableAfter {
            tracking = t
            if let bytes = enableTrackers() { emit(.write(toClient: nil, toBackend: bytes)) }
            t = tracking!
        }
        if let warning {
            counts.backendProtocolErrors += 1
            return .forwardToClientUnderstoodNot(out, warning: warning)
        }
        guard out.readableBytes > 0 else { return .none }
        return isSettledRelay ? .relayToClient(out, takeCounts()) : .forwardToClient(out)
    }

    /// A client's command was answered: what its answer says beyond the trackers.
    static func statementEnded(_ end: ResponseTracker.ResponseEnd, _ t: inout Tracking) {
        if end.lastInsertID != 0 { t.state.lastInsertID = end.lastInsertID }
        // SHOW WARNINGS, FOUND_ROWS() after SQL_CALC_FOUND_ROWS: the next statement reads this one's
        if end.warnings > 0 {
            t.state.pins.insert(.lastStatement)
            t.lastStatementFresh = true
        }
        if t.lastStatementFresh {
            t.lastStatementFresh = false
        } else {
            t.state.pins.remove(.lastStatement)
        }
    }

    /// A whole packet the tracked relay reads: the proxy's answer is dropped; an OK's session
    /// state goes into the model, and the client gets the OK written for its own trackers.
    static func trackedPacket(_ combined: ByteBuffer, from start: Int, to end: Int, dropped: Bool,
                              _ t: inout Tracking) -> (start: Int, end: Int, replacement: ByteBuffer?) {
        guard !dropped else { return (start, end, nil) }
        let unchanged = (start, end, Optional(combined.getSlice(at: combined.readerIndex + start, length: end - start)!))
        guard end - start > PacketHeader.size,
              let sequenceID = combined.getInteger(at: combined.readerIndex + start + 3, as: UInt8.self),
              let payload = combined.getSlice(at: combined.readerIndex + start + PacketHeader.size, length: end - start - PacketHeader.size),
              let written = trackedOK(payload, &t)
        else { return unchanged }
        var framed = ByteBuffer()
        var seq = sequenceID
        framed.writeMySQLPacket(written, sequenceID: &seq)
        return (start, end, framed)
    }

    /// An OK packet's payload (or an EOF standing for one) that reports session state: the state
    /// goes into the model, and the payload comes back written for the client's own trackers
    /// (nil: the client gets it unchanged).
    static func trackedOK(_ payload: ByteBuffer, _ t: inout Tracking) -> ByteBuffer? {
        let tail: OKPacketTail
        do {
            tail = try OKPacketTail(parsing: payload)
        } catch {
            t.state.pins.insert(.untracked)
            return nil
        }
        t.state.apply(tail.items, status: tail.status)
        if t.loginDatabase.isEmpty, t.state.schema?.isEmpty == false { t.state.pins.insert(.schemaWithoutLoginDatabase) }
        let kept = t.clientTracks ? tail.items.filter { t.state.clientTrackers.wants($0) } : []
        if t.clientTracks && kept.count == tail.items.count { return nil }
        return tail.payload(keeping: kept, clientTracks: t.clientTracks)
    }
}
