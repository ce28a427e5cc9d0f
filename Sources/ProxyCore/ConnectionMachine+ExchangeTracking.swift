import MySQLWire
import NIOCore

/// Session tracking in a script's exchange (`Configuration.tracksSessions`, a login the proxy made
/// with a credential it holds): the same server-fed model as the tracked relay (+Tracking), kept
/// where the exchange already holds each packet whole.
///
/// - Every command that reaches the server (the client's own, or one the script injected) goes
///   through the statement backstop as it is sent (`exchangeCommandSent`).
/// - Responses stream as in the untracked exchange (a header split across reads held back) until
///   an OK (or EOF standing for one) that reports session state: from there the response is
///   collected packet by packet (`collectFrom`), so that the OK is read into the model and given
///   on written for the client's own trackers; a script's `read_query_result` sees the result as
///   the client would.
/// - The proxy's own statements (turning the trackers on after the login or a
///   COM_RESET_CONNECTION, restoring the state on the connection a session migrates to) go to
///   the server between commands; their answers, which come first, are read and dropped, and no
///   command of the client's starts before they are in: `read_query` always sees a settled state.
///
/// A session that moves with `backend_ndx` takes a connection whose state the model does not
/// know: it is pinned `untracked` (`proxy.connection:migrate(n)` moves it with its state).
extension ConnectionMachine {
    /// The proxy's own statements are unanswered: commands wait.
    var awaitsOwnAnswers: Bool {
        guard let t = tracking else { return false }
        return !t.proxyResponses.isEmpty
    }

    /// A command of the exchange goes to the server: what it means for the session's state.
    mutating func exchangeCommandSent(_ payload: ByteBuffer) {
        guard tracking != nil, let byte = payload.getInteger(at: payload.readerIndex, as: UInt8.self) else { return }
        switch CommandCode(byte) {
        case .query:
            guard payload.readableBytes - 1 <= Self.longestReadStatement else {
                tracking!.state.pins.insert(.untracked)
                return
            }
            let statement = StatementBackstop(payload.readableBytesView.dropFirst())
            if statement.pins.contains(.lastStatement) { tracking!.lastStatementFresh = true }
            tracking!.state.apply(statement)
        case .stmtPrepare:
            // ids are the server's here: the statements stay on the connection
            tracking!.preparedStatements += 1
            tracking!.state.pins.insert(.preparedStatement)
        case .stmtClose:
            tracking!.preparedStatements = max(0, tracking!.preparedStatements - 1)
            if tracking!.preparedStatements == 0 { tracking!.state.pins.remove(.preparedStatement) }
        case .changeUser:
            // the server resets the session, the proxy's trackers with it
            tracking!.state.pins.insert(.changedUser)
        case .resetConnection:
            tracking!.state.reset()
            tracking!.preparedStatements = 0
            tracking!.enabled = false
        default:
            break
        }
    }

    /// A packet of a response in a tracked exchange, just placed by the response tracker: an OK
    /// that reports session state comes back written for the client (nil: unchanged).
    mutating func exchangeServerPacket(_ payload: ByteBuffer, _ kind: ResponseTracker.ServerPacket) -> ByteBuffer? {
        guard tracking != nil else { return nil }
        var written: ByteBuffer?
        if tracker.lastOKStatus?.contains(.sessionStateChanged) == true {
            written = Self.trackedOK(payload, &tracking!)
        }
        if case .endOfResponse(let end) = kind { exchangeResponseEnded(end) }
        return written
    }

    /// A response of the exchange's commands ended: what its end says beyond the trackers.
    mutating func exchangeResponseEnded(_ end: ResponseTracker.ResponseEnd) {
        guard end.command != nil else { return }
        Self.statementEnded(end, &tracking!)
        if let status = end.status { tracking!.state.updateTransaction(status) }
    }

    /// A streamed response reached an OK that reports session state (at `offset` in `chunk`,
    /// placed as `kind`): what came before it goes on, and the rest of the response is collected
    /// packet by packet (no shift), so that the OK is read and written whole. Responses stream
    /// otherwise: most carry no state change, and pass as they came.
    mutating func collectFrom(_ exchange: inout Exchange, _ chunk: ByteBuffer, _ offset: Int, placed kind: ResponseTracker.ServerPacket,
                              _ out: inout Output) -> Flow {
        if offset > 0, let before = chunk.getSlice(at: chunk.readerIndex, length: offset) { out.client(before) }
        guard case .running(var command) = exchange.takeStep() else { return .proceed }
        command.collect = .shift
        command.shift = 0
        exchange.step = .running(command)
        exchange.placedPacket = kind
        fromServer = FrameScanner()  // (the collector frames the rest: the scanner starts again at the next response)
        if let rest = chunk.getSlice(at: chunk.readerIndex + offset, length: chunk.readableBytes - offset) {
            exchange.serverCollector.append(rest)
        }
        return collectResponse(&exchange, nil, &out)
    }

    /// Reads and drops the answers to the proxy's own statements at the head of what the
    /// collector holds. False: a statement restoring the session's state was refused.
    mutating func dropOwnAnswers(_ collector: inout PacketCollector) throws(WireError) -> Bool {
        var refused = false
        while awaitsOwnAnswers, let c = try collector.next() {
            tracker.lastOKStatus = nil
            // (what the proxy's own statements change is the proxy's business: not the session's state)
            guard case .endOfResponse(let end) = try tracker.serverPacketStarted(c.start) else { continue }
            tracking!.proxyResponses.removeFirst()
            if let status = end.status { tracking!.state.updateTransaction(status) }
            if end.kind != .ok {
                tracking!.state.pins.insert(.untracked)
                if tracking!.restoring { refused = true }
            }
            if tracking!.proxyResponses.isEmpty { tracking!.restoring = false }
        }
        return !refused
    }

    /// Server bytes while the proxy's own statements are unanswered: their answers are dropped,
    /// and what follows them is the running command's (or waits for the hook that runs).
    mutating func exchangeOwnAnswers(_ exchange: inout Exchange, _ chunk: ByteBuffer, _ out: inout Output) -> Flow {
        exchange.serverCollector.append(chunk)
        do {
            guard try dropOwnAnswers(&exchange.serverCollector) else {
                flush(&out)
                return halt(restoreFailed(before: ByteBuffer()), &out)
            }
        } catch {
            backendBrokeProtocol()
            return halt(close(.abort, reason: "malformed answer to a statement of the proxy's in a scripted exchange: \(error)"), &out)
        }
        guard !awaitsOwnAnswers, !exchange.step.isHook else { return .proceed }
        if exchange.step.collects { return collectResponse(&exchange, nil, &out) }
        if !exchange.serverCollector.isEmpty {
            if exchange.step.isRunning, let rest = exchange.serverCollector.takeUnread() { return streamResponse(&exchange, rest, &out) }
            // a server that talks out of turn
            flush(&out)
            emit(.log(.debug, "dropping \(exchange.serverCollector.bufferedBytes) bytes the server sent after the proxy's statements"))
            exchange.serverCollector.reset()
        }
        // the commands that waited for the answers
        return carryOn(&exchange, &out)
    }

    /// `proxy.connection:migrate(n)`: the session's new server connection is brought to its
    /// state: reset when another session left its own there, the trackers on, the statements
    /// that restore the state; all in front of the command the script let through, their answers
    /// dropped (a refusal ends the session with an ERR naming it).
    mutating func migratedServerAttached(previous: SessionState?) -> ByteBuffer? {
        guard tracking != nil else { return nil }
        let prefix = restoringStatements(resetFirst: previous != nil)
        return prefix.readableBytes > 0 ? prefix : nil
    }

    /// Whether a script's followed session could move to another server connection now (its
    /// backend drains): between commands, nothing pinned, nothing on its way either way.
    public var mayMoveScriptSession: Bool {
        guard let t = tracking, t.enabled, t.state.pins.isEmpty, t.state.transactionCharacteristics.isEmpty, t.proxyResponses.isEmpty,
              !closeQueued, case .exchanging(let box) = state, tracker.clientPhase == .command, !tracker.isAwaitingResponse else { return false }
        return box.read {
            $0.hasServer && !$0.step.isActive && $0.queue.isEmpty && $0.clientCollector.isEmpty && $0.serverCollector.isEmpty
                && $0.injections.isEmpty && !$0.scriptedUpload && !$0.closeRequested && !$0.draining
        }
    }

    /// The handler moved a script's session (`mayMoveScriptSession`) to a connection of its login
    /// on another backend, in the state `previous` (nil: reset, or new): the state is restored on
    /// it ahead of the session's next command, as after `proxy.connection:migrate(n)`.
    public mutating func scriptSessionMoved(previous: SessionState?) -> Action {
        guard mayMoveScriptSession, case .exchanging(var box) = state else { return .none }
        state = .modifying
        var out = Output()
        applyServerChange(.migrated(previous: previous), to: &box.buffer[0], &out)
        store(consume box, consume out)
        return nextAction()
    }
}
