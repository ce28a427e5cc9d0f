import Logging
import MySQLWire
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import ProxyCore
import ProxyScripting

/// The client side of a proxied connection: it hands the connection's state machine what happens
/// on either socket and carries out the actions the machine returns, one by one (`run`). A hook
/// the machine asks for runs here, between two of the machine's events: the script cannot reach
/// the machine while it changes, and what the script asked of the connection (another server
/// connection, the pool) is done after the hook has returned, before the machine hears of it.
///
/// Policies live beside it as values: which backend to try (`BackendChoice`), admission
/// (`ProxyContext`), the pool (`ServerConnectionPool`), timeouts (the loop's `TimeoutSweeper`).
final class ClientChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    var machine: ConnectionMachine
    let shared: ProxyContext
    /// This event loop's counters (written only here, summed by readers).
    let counters: LoopStatistics
    /// The machine wants the time of each event (durations, injection timings).
    private var stampsTime: Bool
    /// What the client's PROXY protocol header announced (set before channelActive).
    var proxyProtocolEndpoints: ProxyProtocol.Endpoints?
    /// channelActive came: the connection was counted.
    private var activated = false
    /// How the connection counts towards the limits; whether its login was seen, and let it in.
    private var admission = ProxyContext.Admission()
    /// Addresses, TLS and compression of both links, for logs and the admin interface.
    var described = ConnectionDescription()
    var context: ChannelHandlerContext?
    var backend: BackendChannelHandler?
    var backendIndex: Int?
    var choice = BackendChoice()
    /// Reads from the client are on; the machine wants them (`.readFromClient`).
    private var readingFromClient = true
    private var clientReadsWanted = true
    /// The channel's autoRead: a multiplexed session's pauses leave it on until bytes come
    /// while paused (`heldFromClient`).
    private var socketReads = true
    /// Client bytes that came while a multiplexed session's reads were paused: the machine
    /// gets them when reads resume, ahead of anything read after them.
    private var heldFromClient: ByteBuffer?
    var flushPending = false
    /// The machine closed the connection (its last bytes may still be on their way); the
    /// channels are gone.
    var closing = false
    var closed = false
    var abortBackendOnClose = false
    /// A refusal of `--proxy-auth=proxy` waited for the accounts to be read again (once).
    var waitedForAccounts = false
    /// The client's address as text (the PROXY protocol's source when there is one).
    var clientIP: String?
    /// The close that waits for the client to close first (see `sendAndClose`).
    var linger: Scheduled<Void>?
    /// The connection's script, when the proxy runs one, and the session's version it saw last.
    var scripted: ScriptedConnection?
    var preparedSessionVersion: UInt32 = .max
    private var disconnectHookCalled = false
    /// The TLS handler of the client's link, and the cipher it chose.
    var clientTLSHandler: NIOSSLServerHandler?
    var clientCipher: String?

    /// Timeouts, ticked by the event loop's sweeper; the hot path only marks reads.
    var sweeper: TimeoutSweeper?
    var timers = ConnectionTimers()
    /// A server connection is being opened (the login timeout then blames the server).
    var connectingToBackend = false
    /// The server connection this session opened (and the proxy logged in, under proxy auth):
    /// the one the machine's login and challenge describe.
    var openedConnection: ObjectIdentifier?
    /// Multiplexing: the login whose connections this session shares, and the login whose
    /// connection count a connection being opened joins.
    var multiplexKey: CorePool.Key?
    var pendingCountedKey: CorePool.Key?
    /// The login of the server connection the session gave up last (with the capabilities it
    /// was made with), for a connection the proxy opens for it.
    var lastServerLogin: ConnectionMachine.ServerLogin?
    /// The session's pins as last counted (metrics, admin interface).
    var publishedPins: SessionState.Pins = []
    /// The session's prepared statements as last listed (admin interface).
    var publishedStatements = 0
    /// Multiplexing: the last server read left the session between commands with nothing pinned
    /// (it may give its connection up when asked; see CorePool.askToPark, which counts them).
    var mayGiveUp = false {
        didSet {
            if mayGiveUp != oldValue, let pool = sweeper?.corePool { pool.mayGiveUpCount += mayGiveUp ? 1 : -1 }
        }
    }
    /// The admin interface's MIGRATE: the backend the session is to move to (until it could),
    /// and whether it was put where it is (the pool's rebalancing leaves it there).
    var requestedBackend: Int?
    var placedByOperator = false

    init(shared: ProxyContext, channel: Channel) {
        self.shared = shared
        self.counters = shared.statistics.shard(for: channel.eventLoop)
        // Made once, as the connection will use it: a script's connection makes its own when its
        // script starts (the hooks it defines are known then).
        self.machine = ConnectionMachine(shared: shared.machineConfiguration(for: channel, hooks: []))
        self.stampsTime = machine.wantsTime
    }

    /// Logs with the connection's metadata, built only when the line is actually written.
    func log(_ level: Logger.Level, _ message: @autoclosure () -> Logger.Message) {
        guard shared.logger.logLevel <= level else { return }
        described.logger(shared.logger).log(level: level, message())
    }

    /// A warning of a kind that comes in storms: written at most once per interval, the rest counted.
    func logStorm(_ kind: RateLimitedLog.Kind, _ message: @autoclosure () -> String) {
        guard let context, shared.logger.logLevel <= .warning else { return }
        shared.stormLog.warning(kind, "[conn=\(described.id)\(described.clientText().map { " client=\($0)" } ?? "")] \(message())",
                                logger: shared.logger, on: context.eventLoop)
    }

    /// What the admin interface lists about this connection (only kept when it has one).
    func publish() {
        guard let registry = shared.registry, described.id != 0, !closed else { return }
        described.publish(to: registry, user: machine.session.username, database: machine.session.database)
        if multiplexKey != nil {
            let parked = machine.isParked
            let pins = publishedPins.isEmpty ? "none" : publishedPins.description
            let statements = publishedStatements
            registry.update(described.id) { entry in
                entry.multiplexed = parked ? "given up" : "held"
                entry.pinned = pins
                entry.statements = statements
            }
        }
    }

    // MARK: client channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // The context holds this handler: drop it here, or neither is ever freed.
        finish()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        activated = true
        counters.add(.connectionsAccepted)
        let active = shared.statistics.connectionOpened()
        described.id = shared.nextConnectionID()
        described.client = context.channel.remoteAddress
        if case .proxied(let source, _) = proxyProtocolEndpoints { described.client = source }
        clientIP = described.client?.ipAddress  // (formatted once: inet_ntop and a String each time)
        defer { context.fireChannelActive() }
        switch shared.admit(active: active, address: clientIP) {
        case .success(let admitted):
            admission = admitted
        case .failure(let refusal):
            // As the server refuses a connection past max_connections: ERR 1040 where the
            // greeting would be, then the close.
            counters.add(.connectionsRefused)
            return run(machine.refuseConnection(.tooManyConnections, source: .limit, reason: "refusing a client: \(refusal.reason)"))
        }
        publish()
        log(.debug, "client connected")
        sweeper = shared.sweeper(for: context.eventLoop)
        sweeper?.add(self)
        if let engine = shared.scriptEngine, !startScript(engine, context: context) { return }
        if let failedLogins = shared.failedLogins, let ip = clientIP,
           case let wait = failedLogins.delay(for: ip), wait > .zero {
            // an address that keeps failing to log in waits for its greeting
            log(.info, "delaying the greeting by \(wait.nanoseconds / 1_000_000) ms after failed logins from \(ip)")
            context.eventLoop.assumeIsolated().scheduleTask(in: wait) { [self] in
                guard !self.closed else { return }
                self.startSession()
            }
        } else {
            startSession()
        }
    }

    /// Prepares the script for this connection; false when it cannot run (the client was told).
    private func startScript(_ engine: ScriptEngine, context: ChannelHandlerContext) -> Bool {
        let connection = ScriptedConnection(connectionID: described.id, pool: sweeper?.serverPool, backends: shared.backends,
                                            resetPooledConnections: shared.configuration.resetPooledConnections,
                                            resultsetBufferLimit: engine.configuration.resultsetBufferLimit)
        connection.client.src = described.client.map(ScriptAddress.init)
        connection.client.dst = (proxyProtocolEndpoints?.destination ?? context.channel.localAddress).map(ScriptAddress.init)
        connection.counters = counters
        if sweeper?.corePool != nil {
            connection.corePooled = { [weak self] in self?.corePooledForScript($0) }
        }
        connection.timesHooks = shared.recording != .off
        switch engine.startConnection(host: connection) {
        case .success(let script):
            connection.script = script
            scripted = connection
            machine = ConnectionMachine(shared: shared.machineConfiguration(for: context.channel, hooks: script.hooks))
            stampsTime = machine.wantsTime
            return true
        case .failure(let failure):
            // MySQL Proxy's words, with packet id 0, instead of a greeting
            let err = failure == .loadFailed ? ScriptedConnection.loadFailed : ScriptedConnection.executeFailed
            run(machine.refuseConnection(err, source: .scriptError, reason: err.message, level: .error))
            return false
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        timers.clientSpoke = true
        var chunk = unwrapInboundIn(data)
        counters.add(.bytesFromClients, chunk.readableBytes)
        if !readingFromClient && socketReads || heldFromClient != nil {
            // paused lazily (or held bytes wait for their turn): these wait too, and the socket
            // stops being read now
            if heldFromClient == nil { heldFromClient = chunk } else { heldFromClient!.writeBuffer(&chunk) }
            if socketReads && !readingFromClient {
                socketReads = false
                try? context.channel.syncOptions?.setOption(.autoRead, value: false)
            }
            return
        }
        if stampsTime { machine.now = NIODeadline.now().uptimeNanoseconds }
        run(machine.clientDataReceived(chunk))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        backend?.flushIfPending()
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A client that vanished while its query runs: the server must see it go as it would
        // directly, by the connection's end, not by a TLS close_notify it reads only later.
        // A client that leaves between commands leaves a server connection the script may pool.
        callDisconnectHook()
        if let held = heldFromClient.take(), !closed { run(machine.clientDataReceived(held)) }
        run(machine.clientClosed())
        finish()
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        if writable { timers.clientBlocked = 0 }
        backend?.setReadsPaused(!writable)
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event as? TLSUserEvent ?? .shutdownCompleted, let handler = clientTLSHandler {
            described.clientTLS = handler.tlsVersion.map { ScriptTLSInfo(version: $0.mysqlName, cipher: clientCipher) }
            scripted?.client.ssl = described.clientTLS
            publish()
            log(.debug, "TLS with the client established")
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if TLSFailure.isFailure(error) {
            // The TLS stack has sent its alert; nothing in MySQL's protocol can follow.
            counters.add(.clientProtocolErrors)
            machine.noteClose(.clientHandshake)
            logStorm(.clientTLSFailed, "closing: TLS with the client failed: \(error)")
        } else if error is CompressionHandler.Failure {
            counters.add(.clientProtocolErrors)
            machine.noteClose(.malformed)
            log(.warning, "closing: the client's compressed protocol: \(error)")
        } else {
            // A TLS client that closes without close_notify (MySQL clients do) ends in the
            // ordinary way; the close that follows tells whether it left mid-command.
            if case NIOSSLError.uncleanShutdown = error {} else { machine.noteClose(.clientNetwork) }
            log(.debug, "client connection error: \(error)")
        }
        context.close(promise: nil)
    }

    /// A graceful shutdown began (called by the event loop's sweeper).
    func shutdownRequested() {
        run(machine.shutdownRequested())
    }

    /// The shutdown grace period is over.
    func forceClose() {
        run(machine.abandon(.proxyShutdown, reason: "closing: the shutdown grace period is over", level: .info))
        closeBoth()
    }

    /// Reads from the client only when the machine wants them and the backend keeps up.
    ///
    /// A multiplexed session pauses at nearly every command while it waits for a server
    /// connection, and its client seldom sends anything meanwhile: the pause leaves the socket
    /// read until bytes come (channelRead holds them and stops it), since turning the channel's
    /// autoRead off and on again costs about 10,000 instructions per command. Other sessions
    /// pause the socket at once: bytes behind a TLS or compression start must stay in it.
    private func updateClientReading() {
        let wanted = clientReadsWanted && (backend?.isWritable ?? true)
        guard wanted != readingFromClient, let context, !closed else { return }
        readingFromClient = wanted
        if !wanted {
            guard multiplexKey == nil else { return }
            socketReads = false
            try? context.channel.syncOptions?.setOption(.autoRead, value: false)
            return
        }
        guard !socketReads || heldFromClient != nil else { return }  // (paused lazily, and nothing came)
        if !socketReads {
            socketReads = true
            try? context.channel.syncOptions?.setOption(.autoRead, value: true)
        }
        // Made once this call stack is done, since what it delivers comes back here: the bytes
        // held meanwhile first (what is read before that waits behind them), then a read request
        // through the pipeline (see BackendChannelHandler.setReadsPaused).
        context.eventLoop.assumeIsolated().execute { [self] in
            guard !self.closed, let context = self.context, context.channel.isActive, self.readingFromClient else { return }
            if let held = self.heldFromClient.take() {
                if self.stampsTime { self.machine.now = NIODeadline.now().uptimeNanoseconds }
                self.run(self.machine.clientDataReceived(held))
            }
            if self.readingFromClient && self.socketReads && self.heldFromClient == nil { context.read() }
        }
    }

    // MARK: backend channel events (called by BackendChannelHandler)

    func backendDataReceived(_ buffer: ByteBuffer) {
        timers.serverSpoke = true
        counters.add(.bytesFromBackends, buffer.readableBytes)
        let delivering = backend
        if stampsTime { machine.now = NIODeadline.now().uptimeNanoseconds }
        run(machine.backendDataReceived(buffer))
        if multiplexKey != nil {
            notePins()
            yieldIfWanted()
        }
        if flushPending && backend !== delivering, let context {
            // The script gave this server connection to the pool (or took another) during the hook:
            // its read cycle's end will not reach this handler, so what was written goes out now.
            flushPending = false
            context.flush()
        }
    }

    func backendReadComplete() {
        guard flushPending, let context else { return }
        flushPending = false
        context.flush()
    }

    func backendClosed() {
        if timers.awaitingGreeting, let index = backendIndex {
            // closed before it greeted: as good as a failed connect
            timers.awaitingGreeting = false
            shared.backends.markDown(index)
            counters.add(.backendConnectFailures)
            logStorm(.backendConnectFailed, "backend \(described.backendText() ?? "?") closed the connection before its greeting; marking it down")
        }
        run(machine.backendClosed())
    }

    func backendWritabilityChanged(_ writable: Bool) {
        if writable { timers.serverBlocked = 0 }
        updateClientReading()
    }

    func backendErrorCaught(_ error: Error) {
        if TLSFailure.isFailure(error) {
            log(.warning, "TLS with the backend failed: \(error)")
            run(machine.backendTLSFailed(TLSFailure.describe(error)))
        } else {
            log(.debug, "backend connection error: \(error)")
        }
    }

    func backendTLSEstablished(_ version: TLSVersion?, cipher: String?) {
        described.backendTLS = version.map { ScriptTLSInfo(version: $0.mysqlName, cipher: cipher) }
        scripted?.attached?.ssl = described.backendTLS
        publish()
        log(.debug, "TLS with the backend established")
    }

    // MARK: actions

    /// Carries out `first` and every action the machine has queued behind it, running the hooks
    /// it asks for on the way.
    func run(_ first: consuming ConnectionMachine.Action) {
        switch first {
        case .relayToBackend, .relayToClient: perform(first)  // all the event made: nothing follows
        default: runQueued(first)
        }
    }

    @inline(never) private func runQueued(_ first: consuming ConnectionMachine.Action) {
        var action = first
        while true {
            if case .runHook(let call) = action {
                guard let result = runHook(call) else { return }  // (it comes back through `run`)
                action = machine.hookReturned(result)
                continue
            }
            if case .verifyLogin(let attempt) = action, attempt.changingUser, !attempt.switched {
                // a COM_CHANGE_USER: an account made a moment ago counts, as at a login, and its
                // new login may go to any backend
                waitedForAccounts = false
                choice = BackendChoice()
            }
            if case .verifyLogin(let attempt) = action, let verdict = verifyOrWait(attempt) {
                action = machine.loginVerified(verdict)
                continue
            }
            perform(action)
            action = machine.nextAction()
            if case .none = action { break }
        }
    }

    @inline(__always)
    private func perform(_ action: ConnectionMachine.Action) {
        switch action {
        case .none, .runHook, .verifyLogin:
            break
        case .releaseBackend:
            releaseToPool()
        case .parkBackend:
            parkServerConnection()
        case .resetBackendSession:
            backend?.resetSession()
        case .takeBackend:
            takeMultiplexed()
        case .forwardToBackend(let buffer), .relayToBackend(let buffer, _):
            if case .relayToBackend(_, let counts) = action { counters.add(counts) }
            counters.add(.bytesToBackends, buffer.readableBytes)
            backend?.write(buffer)
        case .forwardToClient(let buffer), .forwardToClientUnderstoodNot(let buffer, _), .queueToClient(let buffer), .relayToClient(let buffer, _):
            if case .forwardToClientUnderstoodNot(_, let warning) = action { log(.warning, "\(warning)") }
            if case .relayToClient(_, let counts) = action { counters.add(counts) }
            if case .queueToClient = action { flushPending = true }
            counters.add(.bytesToClients, buffer.readableBytes)
            context?.forward(buffer, flushPending: &flushPending)
        case .write(let toClient, let toBackend):
            if let bytes = toBackend {
                counters.add(.bytesToBackends, bytes.readableBytes)
                backend?.writeAndFlush(bytes)
            }
            if let bytes = toClient, let context {
                counters.add(.bytesToClients, bytes.readableBytes)
                flushPending = false
                context.writeAndFlush(NIOAny(bytes), promise: nil)
            }
        case .connectToBackend(let preferred):
            connectToBackend(preferred: preferred)
        case .startClientTLS(let leftover):
            startClientTLS(leftover)
        case .startBackendTLS(let request):
            startBackendTLS(request)
        case .startCompression(let client, let backend, let early):
            if let backend { startBackendCompression(backend, early: early) }
            if let client { startClientCompression(client) }
        case .dropBackend:
            dropBackend()
        case .readFromClient(let wanted):
            clientReadsWanted = wanted
            updateClientReading()
        case .backendGreeted:
            greetingArrived()
        case .loginSucceeded:
            loginOver()
        case .log(let severity, let message):
            log(severity.loggerLevel, "\(message)")
        case .report(let counts, let recordsFinished):
            counters.add(counts)
            if recordsFinished { recordCommands() }
        case .close(let close):
            closing = true
            if let reason = close.reason {
                switch machine.closeSource {
                case .noBackend?, .limit?: logStorm(.clientRefused, reason)  // refusal storms: once per interval
                default: log(close.level.loggerLevel, "\(reason)")
                }
            }
            switch close.mode {
            case .afterFlush: sendAndClose(close.toClient ?? ByteBuffer())
            case .abort:
                // nothing can follow on the wire: the server too sees the connection end at once
                abortBackendOnClose = true
                closeBoth()
            }
        }
    }

    /// Commands that ended: into this loop's histograms, and the query log.
    private func recordCommands() {
        shared.record(machine.finishedRecords, counters: counters, backend: backendIndex, session: machine.session, described: &described)
        machine.clearFinishedRecords()  // the list keeps its storage: no allocation per command
    }

    /// The login is over: the connection no longer counts towards the address's limit of
    /// connections that have not logged in.
    private func loginOver() {
        timers.loginEnded = true
        described.loggedIn = true
        publish()
        shared.loggedIn(&admission)
        joinMultiplexing()
    }

    /// Writes the client's last bytes, then closes both sides: the server's at once, the client's
    /// with a lingering close (stop writing, and let the client's own close, or a short grace
    /// period, end it). Closing at once while the client still sends (the rest of a packet that
    /// was too large, a pipelined command) would answer it with a reset, which can destroy the
    /// proxy's last packet before the client reads it.
    func sendAndClose(_ buffer: ByteBuffer) {
        counters.add(.bytesToClients, buffer.readableBytes)
        // nothing to send (a client that quit, a server that went away without a word): no
        // packet of the proxy's can be destroyed by a reset, so no linger (whose timer, one per
        // closing connection, is what a connect storm would otherwise pay for)
        guard let context, context.channel.isActive, buffer.readableBytes > 0 else { return closeBoth() }
        callDisconnectHook(serverIdle: false)
        abandonGreetingWait()
        backend?.close(abrupt: abortBackendOnClose)
        context.writeAndFlush(wrapOutboundOut(buffer)).assumeIsolated().whenComplete { [self] result in
            guard case .success = result, let context = self.context else { return self.closeBoth() }
            context.close(mode: .output).assumeIsolated().whenComplete { [self] halfClosed in
                guard case .success = halfClosed, let context = self.context else { return self.closeBoth() }
                self.linger = context.eventLoop.assumeIsolated().scheduleTask(in: Self.lingerTime) { [self] in self.closeBoth() }
            }
        }
    }

    /// How long a connection the proxy closes waits for the client to close its side.
    static let lingerTime = TimeAmount.seconds(2)

    func closeBoth() {
        // a client that quit between commands leaves an idle server connection the script may pool
        callDisconnectHook()
        abandonGreetingWait()
        backend?.close(abrupt: abortBackendOnClose)
        context?.close(promise: nil)
    }

    /// `disconnect_client()`, once, before the server connection is closed: the script may give
    /// that connection to the pool (`backend_ndx = 0`) if it is idle.
    /// `serverIdle` nil: as the machine says now.
    private func callDisconnectHook(serverIdle: Bool? = nil) {
        guard let scripted, !disconnectHookCalled else { return }
        disconnectHookCalled = true
        guard scripted.hooks.contains(.disconnectClient) else { return }
        prepareScript(scripted)
        scripted.disconnectClient(serverIdle: serverIdle ?? machine.serverIsIdle, status: machine.serverStatus)
        _ = applyScriptRequests(scripted)
    }

    /// Releases what this connection holds, once.
    private func finish() {
        guard !closed else { return }
        leaveMultiplexing()
        guard activated else {
            // closed before it was ever counted (a PROXY protocol header that never came right)
            closed = true
            return
        }
        callDisconnectHook(serverIdle: false)
        scripted?.close()
        scripted = nil
        closed = true
        if let failedLogins = shared.failedLogins, let ip = clientIP {
            if machine.closeSource == .authFailed { failedLogins.failed(ip) } else if described.loggedIn { failedLogins.succeeded(ip) }
        }
        sweeper?.remove(self)
        sweeper = nil
        linger?.cancel()  // a client that closed first: its timer leaves the loop's heap now
        linger = nil
        abandonGreetingWait()
        backend?.close(abrupt: abortBackendOnClose)
        backend?.owner = nil
        backend = nil
        if let index = backendIndex {
            shared.backends.clientDetached(index)
            backendIndex = nil
        }
        shared.statistics.connectionClosed()
        counters.connectionClosed(machine.closeSource ?? .none)
        shared.release(&admission)
        shared.registry?.remove(described.id)
        log(.debug, "client disconnected")
    }
}
