import MySQLWire
import NIOCore

/// Hooks answered, and the events that end a connection: either side closing, a shutdown, the
/// timeouts the handler's sweeper notices, and a command too large to take.
extension ConnectionMachine {
    func hookCall(_ hook: HookCall.Hook, loggedIn: Bool, serverIdle: Bool, status: ServerStatus, queries: [Injection] = []) -> HookCall {
        HookCall(hook: hook, loggedIn: loggedIn, serverIdle: serverIdle, status: status, queries: queries)
    }

    /// The hook the machine asked for has run; `result` says what the script decided and what
    /// the handler changed because of it.
    public mutating func hookReturned(_ result: HookResult) -> Action {
        if phase == .exchanging {
            // not inside `switch state`, which would hold a second reference to the exchange
            exchangeHookReturned(result)
            return nextAction()
        }
        switch state {
        case .connectServerHook:
            connectServerReturned(result)
        case .readHandshakeHook(let greeting):
            readHandshakeReturned(greeting, result)
        case .readAuthHook(let handshake, let plan):
            proceedWithLogin(handshake, plan, decision: result.decision, queries: result.queries)
        case .readAuthResultHook(let auth, let verdict):
            readAuthResultReturned(auth, verdict, result)
        default:
            break
        }
        return nextAction()
    }

    /// Whether the client is past the handshake: in the relay or the exchange.
    var inSession: Bool {
        switch state {
        case .relaying, .exchanging: return true
        default: return false
        }
    }

    public mutating func clientClosed() -> Action {
        let wasAwaiting = isAwaitingResponse
        guard !isClosed else { return .none }
        if tracker.clientPhase == .quit || (inSession && loginEnded && !wasAwaiting) {
            noteClose(.none)
            // a client that left between commands without COM_QUIT leaves an idle server
            // connection the pool may keep
            if releasesServer(quitting: false) { emit(.releaseBackend) }
        } else {
            noteClose(loginEnded && inSession ? .clientNetwork : .clientHandshake)
        }
        // mid-response, the server must see the client go as it would directly: by the
        // connection's end (.abort), not by a TLS close_notify it reads only later
        emit(close(wasAwaiting ? .abort : .afterFlush, reason: wasAwaiting ? "client went away while a response was pending" : nil, level: .info))
        return nextAction()
    }

    /// The server closed its connection. The client gets what the server sent and then the close,
    /// as it would directly (a killed connection's ERR, or nothing: client error 2013), never an
    /// ERR the server did not send: applications and pools decide whether to reconnect from it.
    public mutating func backendClosed() -> Action {
        switch state {
        case .initialized, .closed, .connectServerHook, .connecting:
            return .none
        case .exchanging(let box) where !box.buffer[0].hasServer:
            return .none  // not this session's server any more
        default:
            break
        }
        if survivesServerLoss { return serverLostBetweenCommands() }
        let pending = !inSession || isAwaitingResponse
        // after the client's COM_QUIT the close is the server's answer, not a loss
        if tracker.clientPhase != .quit {
            counts.backendsLost += 1
            noteClose(loginEnded && inSession ? .backendNetwork : .backendHandshake)
        } else {
            noteClose(.none)
        }
        return close(reason: pending ? "the backend closed the connection while a response was pending; closing the client's"
                                     : "the backend closed the connection", level: pending ? .warning : .info)
    }

    /// A graceful shutdown began: close now if nothing runs, else once the running command ended.
    public mutating func shutdownRequested() -> Action {
        if !isClosed { noteClose(.proxyShutdown) }
        switch state {
        case .relaying:
            if !tracker.isAwaitingResponse && fromClient.isAtPacketBoundary {
                return close(reason: "shutting down", level: .info)
            }
            if tracker.isStreaming {
                // A replication stream ends when the server ends it, which may be never.
                return close(reason: "shutting down (a replication stream was running)", level: .info)
            }
            state = .relaying(draining: true)
            return .none
        case .exchanging(var box):
            if !isAwaitingResponse && fromClient.isAtPacketBoundary && box.buffer[0].clientCollector.isEmpty {
                return close(reason: "shutting down", level: .info)
            }
            if tracker.isStreaming && !box.buffer[0].step.isActive {
                return close(reason: "shutting down (a replication stream was running)", level: .info)
            }
            state = .modifying
            box.buffer[0].draining = true
            state = .exchanging(box)
            return .none
        case .closed:
            return .none
        default:
            return close(reason: "shutting down", level: .info)
        }
    }

    /// The read timeout passed with no byte from the client (`client`) or the server.
    public mutating func readTimedOut(client: Bool) -> Action {
        guard inSession else {
            noteClose(.timeout)
            return close(reason: "timed out during the handshake", level: .info)
        }
        if client && !isAwaitingResponse {
            noteClose(.timeout)
            return close(reason: "client idle for longer than the read timeout", level: .info)
        }
        var exchanging = false
        var mayTakeError = true
        var collectorEmpty = true
        if case .exchanging(let box) = state {
            let exchange = box.buffer[0]
            guard exchange.hasServer else { return .none }
            exchanging = true
            mayTakeError = exchange.step.command?.clientMayTakeError ?? true
            collectorEmpty = exchange.serverCollector.isEmpty
        }
        guard !client, tracker.isAwaitingResponse else { return .none }
        noteClose(.timeout)
        if fromServer.isAtPacketBoundary && collectorEmpty && mayTakeError {
            let sequence = exchanging ? nextSequenceToClient : tracker.replySequence(afterServerSequence: fromServer.lastSequenceID)
            return refuse(.backendReadTimeout(), sequenceID: sequence, reason: "backend sent nothing for longer than the read timeout")
        }
        return close(.abort, reason: "backend stalled for longer than the read timeout")
    }

    /// The handler gives up on the connection itself (the login or write timeout, a TLS failure on
    /// the client's link, the grace period of a shutdown): nothing more is to be sent.
    public mutating func abandon(_ source: CloseSource, reason: String, level: Severity = .warning) -> Action {
        noteClose(source)
        guard !isClosed else { return .none }
        return close(.abort, reason: reason, level: level)
    }
}
