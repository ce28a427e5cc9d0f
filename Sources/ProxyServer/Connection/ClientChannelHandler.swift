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
    var connectionID: UInt64 = 0
    /// What the client's PROXY protocol header announced (set before channelActive).
    var proxyProtocolEndpoints: ProxyProtocol.Endpoints?
    /// channelActive came: the connection was counted.
    private var activated = false
    /// The client address counted towards the per-address limits, and whether the connection
    /// still counts there as not logged in; whether its login let the client in.
    private var admittedAddress: String?
    private var countedUnauthenticated = false
    private var loginSeen = false
    private var loginSucceeded = false
    var clientAddress: SocketAddress? { didSet { describedClient = nil } }
    private var describedClient: String??
    /// `clientAddress` as logs and the query log show it, made when first needed.
    var clientDescription: String? {
        if let describedClient { return describedClient }
        describedClient = .some(clientAddress?.logDescription)
        return describedClient!
    }
    var backendAddress: ProxyAddress? { didSet { describedBackend = nil } }
    private var describedBackend: String??
    var backendDescription: String? {
        if let describedBackend { return describedBackend }
        describedBackend = .some(backendAddress?.description)
        return describedBackend!
    }
    var context: ChannelHandlerContext?
    var backend: BackendChannelHandler?
    var backendIndex: Int?
    var choice = BackendChoice()
    private var readingFromClient = true
    var flushPending = false
    var closed = false
    var abortBackendOnClose = false
    /// The connection's script, when the proxy runs one.
    var scripted: ScriptedConnection?
    private var disconnectHookCalled = false
    /// The TLS of the client's link and of the server's, once their handshakes are done.
    var clientTLSHandler: NIOSSLServerHandler?
    var clientCipher: String?
    var clientTLS: ScriptTLSInfo?
    var backendTLS: ScriptTLSInfo?
    /// The compression each link speaks, once the login negotiated it.
    var compression: String?
    var backendCompression: String?

    /// Timeouts, ticked by the event loop's sweeper; the hot path only marks reads.
    var sweeper: TimeoutSweeper?
    var timers = ConnectionTimers()
    /// The login let the client in (for the admin interface's list).
    var loggedIn = false

    init(shared: ProxyContext, channel: Channel) {
        self.shared = shared
        self.counters = shared.statistics.shard(for: channel.eventLoop)
        // Made once, as the connection will use it: a script's connection makes its own when its
        // script starts (the hooks it defines are known then).
        self.machine = ConnectionMachine(configuration: Self.machineConfiguration(shared, channel, hooks: []))
        self.stampsTime = machine.wantsTime
    }

    /// How each link's receive buffer is sized: from what arrives, starting small. NIO keeps a
    /// link's buffer for its next read, so this is what an idle connection holds per link (NIO's
    /// default starts at 2 KiB); a read that fills it makes the next one larger, up to 64 KiB.
    static let receiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 65536)

    /// MySQL Proxy's words when a connection's script cannot start, sent instead of a greeting.
    static let scriptLoadFailed = ERRPacket(code: 1105, sqlState: "07000", message: "MySQL Proxy Lua script failed to load. Check the error log.")
    static let scriptExecuteFailed = ERRPacket(code: 1105, sqlState: "07000", message: "MySQL Proxy Lua script failed to execute. Check the error log.")

    /// What the machine is told about the connection.
    static func machineConfiguration(_ shared: ProxyContext, _ channel: Channel, hooks: ScriptHooks) -> ConnectionMachine.Configuration {
        var c = ConnectionMachine.Configuration()
        c.compression = shared.configuration.compression
        c.maximumPacketLength = shared.configuration.maxAssembledPacketSize
        c.resultsetBufferLimit = shared.configuration.resultsetBufferLimit
        c.recording = shared.recording
        c.hooks = hooks
        guard let tls = shared.tls else { return c }
        c.tls.offer = tls.forClients == nil ? .never : (shared.offersTLSAlways ? .always : tls.client.offer)
        c.tls.requireSecureTransport = tls.client.requireSecureTransport
        c.tls.backend = tls.backendProblem == nil ? tls.backend.mode : .off
        c.tls.pinnedServerKey = tls.backend.serverPublicKeyPEM
        c.tls.trustUnverifiedBackends = tls.backend.trustUnverifiedWithPasswords
        if case .unixDomainSocket = channel.localAddress { c.tls.localSocket = true }
        return c
    }

    /// Logs with the connection's metadata, built only when the line is actually written.
    func log(_ level: Logger.Level, _ message: @autoclosure () -> Logger.Message) {
        guard shared.logger.logLevel <= level else { return }
        var logger = shared.logger
        logger[metadataKey: "conn"] = "\(connectionID)"
        if let clientDescription { logger[metadataKey: "client"] = "\(clientDescription)" }
        if let backendDescription { logger[metadataKey: "backend"] = "\(backendDescription)" }
        if let clientTLS { logger[metadataKey: "client_tls"] = "\(clientTLS.version) \(clientTLS.cipher ?? "")" }
        if let backendTLS { logger[metadataKey: "backend_tls"] = "\(backendTLS.version) \(backendTLS.cipher ?? "")" }
        if let compression { logger[metadataKey: "compression"] = "\(compression)" }
        if let backendCompression { logger[metadataKey: "backend_compression"] = "\(backendCompression)" }
        logger.log(level: level, message())
    }

    /// A warning of a kind that comes in storms: written at most once per interval, the rest counted.
    func logStorm(_ kind: RateLimitedLog.Kind, _ message: @autoclosure () -> String) {
        guard let context, shared.logger.logLevel <= .warning else { return }
        shared.stormLog.warning(kind, "[conn=\(connectionID)\(clientDescription.map { " client=\($0)" } ?? "")] \(message())",
                                logger: shared.logger, on: context.eventLoop)
    }

    /// What the admin interface lists about this connection (only kept when it has one).
    func publish() {
        guard let registry = shared.registry, connectionID != 0, !closed else { return }
        let (client, backend, loggedIn) = (clientAddress, backendAddress, loggedIn)
        let user = loggedIn ? machine.session.username : nil
        let database = loggedIn ? machine.session.database : nil
        let tls = clientTLS.map { "\($0.version) \($0.cipher ?? "")" }
        let serverTLS = backendTLS.map { "\($0.version) \($0.cipher ?? "")" }
        let (compression, backendCompression) = (self.compression, self.backendCompression)
        registry.update(connectionID) { entry in
            entry.client = client
            entry.backend = backend
            entry.user = user
            entry.database = database
            entry.clientTLS = tls
            entry.backendTLS = serverTLS
            entry.clientCompression = compression
            entry.backendCompression = backendCompression
            entry.loggedIn = loggedIn
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
        connectionID = shared.nextConnectionID()
        clientAddress = context.channel.remoteAddress
        if case .proxied(let source, _) = proxyProtocolEndpoints { clientAddress = source }
        defer { context.fireChannelActive() }
        if let refusal = admissionRefusal(active: active) {
            // As the server refuses a connection past max_connections: ERR 1040 where the
            // greeting would be, then the close.
            counters.add(.connectionsRefused)
            counters.add(.errorsSentByProxy)
            machine.noteClose(.limit)
            logStorm(.clientRefused, "refusing a client: \(refusal)")
            return sendAndClose(ConnectionMachine.framed(.tooManyConnections, sequenceID: 0, protocol41: true))
        }
        publish()
        log(.debug, "client connected")
        sweeper = shared.sweeper(for: context.eventLoop)
        sweeper?.add(self)
        if let engine = shared.scriptEngine, !startScript(engine, context: context) { return }
        if let failedLogins = shared.failedLogins, let ip = clientAddress?.ipAddress,
           case let wait = failedLogins.delay(for: ip), wait > .zero {
            // an address that keeps failing to log in waits for its greeting
            log(.info, "delaying the greeting by \(wait.nanoseconds / 1_000_000) ms after failed logins from \(ip)")
            context.eventLoop.assumeIsolated().scheduleTask(in: wait) { [self] in
                guard !self.closed else { return }
                self.run(self.machine.clientConnected())
            }
        } else {
            run(machine.clientConnected())
        }
    }

    /// Why a new client may not be served (--max-connections and the per-address limits), or nil.
    private func admissionRefusal(active: Int) -> String? {
        let limit = shared.configuration.maxConnections
        if limit > 0 && active > limit {
            return "\(active - 1) clients are connected, --max-connections is \(limit)"
        }
        if shared.countsPerAddress, let ip = clientAddress?.ipAddress {
            if let refusal = shared.admit(address: ip) { return refusal }
            admittedAddress = ip
            countedUnauthenticated = true
        }
        return nil
    }

    /// Prepares the script for this connection; false when it cannot run (the client was told).
    private func startScript(_ engine: ScriptEngine, context: ChannelHandlerContext) -> Bool {
        let connection = ScriptedConnection(connectionID: connectionID, pool: sweeper?.serverPool, backends: shared.backends,
                                            resetPooledConnections: shared.configuration.resetPooledConnections,
                                            resultsetBufferLimit: engine.configuration.resultsetBufferLimit)
        connection.client.src = clientAddress.map(ScriptAddress.init)
        connection.client.dst = clientDestination(context).map(ScriptAddress.init)
        connection.counters = counters
        connection.timesHooks = shared.recording != .off
        switch engine.startConnection(host: connection) {
        case .success(let script):
            connection.script = script
            scripted = connection
            machine = ConnectionMachine(configuration: Self.machineConfiguration(shared, context.channel, hooks: script.hooks))
            stampsTime = machine.wantsTime
            return true
        case .failure(let failure):
            // MySQL Proxy's words, with packet id 0, instead of a greeting
            let err = failure == .loadFailed ? Self.scriptLoadFailed : Self.scriptExecuteFailed
            counters.add(.errorsSentByProxy)
            machine.noteClose(.scriptError)
            log(.error, "\(err.message)")
            sendAndClose(ConnectionMachine.framed(err, sequenceID: 0, protocol41: true))
            return false
        }
    }

    /// The address the client connected to: the one its PROXY header names, else the listener's.
    func clientDestination(_ context: ChannelHandlerContext) -> SocketAddress? {
        if case .proxied(_, let destination) = proxyProtocolEndpoints { return destination }
        return context.channel.localAddress
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        timers.clientSpoke = true
        let chunk = unwrapInboundIn(data)
        counters.add(.bytesFromClients, chunk.readableBytes)
        if stampsTime { machine.now = NIODeadline.now().uptimeNanoseconds }
        run(machine.clientDataReceived(chunk))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        backend?.flushIfPending()
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A client that vanished while its query runs: the server must see it go as it would
        // directly, by the connection's end, not by a TLS close_notify it reads only later.
        abortBackendOnClose = machine.isAwaitingResponse
        // A client that leaves between commands leaves a server connection the script may pool.
        callDisconnectHook(serverIdle: machine.serverIsIdle)
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
            clientTLS = handler.tlsVersion.map { ScriptTLSInfo(version: $0.mysqlName, cipher: clientCipher) }
            scripted?.client.ssl = clientTLS
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
        machine.noteClose(.proxyShutdown)
        closeBoth()
    }

    /// Reads from the client only when the machine wants them and the backend keeps up.
    private func updateClientReading() {
        let wanted = machine.wantsClientReads && (backend?.isWritable ?? true)
        guard wanted != readingFromClient, let context, !closed else { return }
        readingFromClient = wanted
        try? context.channel.syncOptions?.setOption(.autoRead, value: wanted)
        if wanted { BackendChannelHandler.requestRead(context) }  // see BackendChannelHandler.setReadsPaused
    }

    // MARK: backend channel events (called by BackendChannelHandler)

    func backendDataReceived(_ buffer: ByteBuffer) {
        timers.serverSpoke = true
        counters.add(.bytesFromBackends, buffer.readableBytes)
        let delivering = backend
        if stampsTime { machine.now = NIODeadline.now().uptimeNanoseconds }
        run(machine.backendDataReceived(buffer))
        if timers.awaitingGreeting && !machine.isAwaitingGreeting { greetingArrived() }
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
            logStorm(.backendConnectFailed, "backend \(backendDescription ?? "?") closed the connection before its greeting; marking it down")
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
        backendTLS = version.map { ScriptTLSInfo(version: $0.mysqlName, cipher: cipher) }
        scripted?.attached?.ssl = backendTLS
        publish()
        log(.debug, "TLS with the backend established")
    }

    // MARK: actions

    /// Carries out `first` and every action the machine has queued behind it, running the hooks
    /// it asks for on the way.
    func run(_ first: ConnectionMachine.Action) {
        var action = first
        while true {
            if case .runHook(let call) = action {
                action = machine.hookReturned(runHook(call))
                continue
            }
            perform(action)
            guard machine.hasPendingActions else { break }
            action = machine.nextAction()
        }
        updateClientReading()
        if !machine.counts.isEmpty { counters.add(machine.takeCounts()) }
        if !machine.finishedRecords.isEmpty { recordCommands() }
        if !loginSeen && machine.loginEnded { loginOver() }
    }

    private func perform(_ action: ConnectionMachine.Action) {
        switch action {
        case .none, .runHook:
            break
        case .forwardToBackend(let buffer):
            counters.add(.bytesToBackends, buffer.readableBytes)
            backend?.write(buffer)
        case .forwardToClient(let buffer):
            counters.add(.bytesToClients, buffer.readableBytes)
            if let context { Self.forward(buffer, on: context, flushPending: &flushPending) }
        case .forwardToClientUnderstoodNot(let buffer, let warning):
            log(.warning, "\(warning)")
            counters.add(.bytesToClients, buffer.readableBytes)
            if let context { Self.forward(buffer, on: context, flushPending: &flushPending) }
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
        case .log(let severity, let message):
            log(Self.level(severity), "\(message)")
        case .close(let close):
            if let reason = close.reason {
                switch machine.closeSource {
                case .noBackend?, .limit?: logStorm(.clientRefused, reason)  // refusal storms: once per interval
                default: log(Self.level(close.level), "\(reason)")
                }
            }
            switch close.mode {
            case .afterFlush: sendAndClose(close.toClient ?? ByteBuffer())
            case .abort: closeBoth()
            }
        }
    }

    static func level(_ severity: ConnectionMachine.Severity) -> Logger.Level {
        switch severity {
        case .debug: return .debug
        case .info: return .info
        case .warning: return .warning
        case .error: return .error
        case .critical: return .critical
        }
    }

    /// Commands that ended: into this loop's histograms, and the query log.
    private func recordCommands() {
        for record in machine.finishedRecords {
            counters.commandCompleted(CommandKind(record.command), backend: record.answeredByScript ? nil : backendIndex,
                                      nanoseconds: record.nanoseconds)
            if let queryLog = shared.queryLog {
                let entry = QueryLog.Entry(record: record, connection: connectionID, user: machine.session.username,
                                           database: machine.session.database, client: clientDescription,
                                           backend: record.answeredByScript ? nil : backendDescription)
                if !queryLog.append(entry) { counters.add(.queryLogDropped) }
            }
        }
        // the list keeps its storage (no copy of it was kept): no allocation per command
        machine.clearFinishedRecords()
    }

    /// The login is over: the connection no longer counts towards the address's limit of
    /// connections that have not logged in.
    private func loginOver() {
        loginSeen = true
        loginSucceeded = !machine.isClosed
        loggedIn = loginSucceeded
        publish()
        if countedUnauthenticated, let ip = admittedAddress {
            countedUnauthenticated = false
            shared.loggedIn(address: ip)
        }
    }

    /// Writes a chunk that was just read from the other side. A read that did not fill its buffer
    /// is the last of its read cycle, so it is flushed at once; after a full one NIO reads again,
    /// and the flush waits for the end of the cycle so that the chunks leave in one system call.
    static func forward(_ buffer: ByteBuffer, on context: ChannelHandlerContext, flushPending: inout Bool) {
        if buffer.writableBytes > 0 && !flushPending {
            context.writeAndFlush(NIOAny(buffer), promise: nil)
        } else {
            context.write(NIOAny(buffer), promise: nil)
            flushPending = true
        }
    }

    /// Writes the client's last bytes, then closes both sides: the server's at once, the client's
    /// with a lingering close (stop writing, and let the client's own close, or a short grace
    /// period, end it). Closing at once while the client still sends (the rest of a packet that
    /// was too large, a pipelined command) would answer it with a reset, which can destroy the
    /// proxy's last packet before the client reads it.
    func sendAndClose(_ buffer: ByteBuffer) {
        counters.add(.bytesToClients, buffer.readableBytes)
        guard let context, context.channel.isActive else { return closeBoth() }
        callDisconnectHook(serverIdle: false)
        abandonGreetingWait()
        backend?.close(abrupt: abortBackendOnClose)
        context.writeAndFlush(wrapOutboundOut(buffer)).assumeIsolated().whenComplete { [self] result in
            guard case .success = result, let context = self.context else { return self.closeBoth() }
            context.close(mode: .output).assumeIsolated().whenComplete { [self] halfClosed in
                guard case .success = halfClosed, let context = self.context else { return self.closeBoth() }
                context.eventLoop.assumeIsolated().scheduleTask(in: Self.lingerTime) { [self] in self.closeBoth() }
            }
        }
    }

    /// How long a connection the proxy closes waits for the client to close its side.
    static let lingerTime = TimeAmount.seconds(2)

    func closeBoth() {
        // a client that quit between commands leaves an idle server connection the script may pool
        callDisconnectHook(serverIdle: machine.serverIsIdle)
        abandonGreetingWait()
        backend?.close(abrupt: abortBackendOnClose)
        context?.close(promise: nil)
    }

    /// `disconnect_client()`, once, before the server connection is closed: the script may give
    /// that connection to the pool (`backend_ndx = 0`) if it is idle.
    private func callDisconnectHook(serverIdle: Bool) {
        guard let scripted, !disconnectHookCalled else { return }
        disconnectHookCalled = true
        guard scripted.hooks.contains(.disconnectClient) else { return }
        prepareScript(scripted)
        scripted.disconnectClient(serverIdle: serverIdle, status: machine.serverStatus)
        _ = applyScriptRequests(scripted)
    }

    /// Releases what this connection holds, once.
    private func finish() {
        guard !closed else { return }
        guard activated else {
            // closed before it was ever counted (a PROXY protocol header that never came right)
            closed = true
            return
        }
        callDisconnectHook(serverIdle: false)
        scripted?.close()
        scripted = nil
        closed = true
        if let failedLogins = shared.failedLogins, let ip = clientAddress?.ipAddress {
            if machine.closeSource == .authFailed { failedLogins.failed(ip) } else if loginSucceeded { failedLogins.succeeded(ip) }
        }
        sweeper?.remove(self)
        sweeper = nil
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
        if let ip = admittedAddress {
            shared.release(address: ip, loggedIn: !countedUnauthenticated)
            admittedAddress = nil
        }
        shared.registry?.remove(connectionID)
        log(.debug, "client disconnected")
    }
}
