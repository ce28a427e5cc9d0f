import Logging
import MySQLWire
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import ProxyScripting

/// The client side of a proxied connection, and the owner of its state: it feeds the connection's
/// state machine with what happens on either socket and carries out the actions it returns.
///
/// Reading from the client is switched off while the backend does not keep up, and when a
/// graceful shutdown waits for the running command (autoRead; changes are rare).
final class ClientChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    var machine: ConnectionStateMachine
    let shared: ProxyContext
    /// This event loop's counters (written only here, summed by readers).
    let counters: LoopStatistics
    /// Commands are timed (metrics, query log): the clock is read for each event that may start
    /// or end one.
    private let recording: ConnectionStateMachine.Recording
    var connectionID: UInt64 = 0
    /// What the client's PROXY protocol header announced (set before channelActive).
    var proxyProtocolEndpoints: ProxyProtocol.Endpoints?
    /// channelActive came: the connection was counted.
    private var activated = false
    /// The client address counted towards the per-address limits, and whether the connection
    /// still counts as not logged in there.
    private var admittedAddress: String?
    private var countedUnauthenticated = false
    /// The login ended (successfully or not), and whether it let the client in.
    private var loginSeen = false
    private var loginSucceeded = false
    private var clientAddress: SocketAddress? { didSet { describedClient = nil } }
    /// `clientAddress` as logs and the query log show it, made when first needed (most
    /// connections never log a line).
    private var clientDescription: String? {
        if let describedClient { return describedClient }
        describedClient = .some(clientAddress?.logDescription)
        return describedClient!
    }
    private var describedClient: String??
    var backendAddress: ProxyAddress? {
        didSet {
            describedBackend = nil
            publish()
        }
    }
    private var backendDescription: String? {
        if let describedBackend { return describedBackend }
        describedBackend = .some(backendAddress?.description)
        return describedBackend!
    }
    private var describedBackend: String??
    var context: ChannelHandlerContext?
    var backend: BackendChannelHandler?
    var backendIndex: Int?
    private var triedBackends: Set<Int> = []
    private var readingFromClient = true
    private var flushPending = false
    var closed = false
    var abortBackendOnClose = false
    /// The connection's script, when the proxy runs one.
    var scripted: ScriptedConnection?
    private var disconnectHookCalled = false
    /// The TLS of the client's link and of the server's, once their handshakes are done.
    var clientTLSHandler: NIOSSLServerHandler?
    var clientCipher: String?
    private(set) var clientTLS: ScriptTLSInfo? { didSet { publish() } }
    private(set) var backendTLS: ScriptTLSInfo? { didSet { publish() } }
    /// The compression each link speaks, once the login negotiated it.
    var compression: String? { didSet { publish() } }
    var backendCompression: String? { didSet { publish() } }

    // Timeouts are checked by the event loop's sweeper; the hot path only sets these flags.
    var sweeper: TimeoutSweeper?
    /// Connected to a server whose greeting has not come yet (see --proxy-backend-greeting-timeout).
    var awaitingGreeting = false
    var ticksAwaitingGreeting = 0
    var loggedIn = false { didSet { publish() } }
    var ticksBeforeLogin = 0
    var clientSpoke = false
    var backendSpoke = false
    var clientIdleTicks = 0
    var backendIdleTicks = 0
    var clientBlockedTicks = 0
    var backendBlockedTicks = 0

    init(shared: ProxyContext, channel: Channel) {
        self.shared = shared
        let counters = shared.statistics.shard(for: channel.eventLoop)
        self.counters = counters
        self.recording = shared.recording
        // Made once, as the connection will use it (a script's connection makes its own when the
        // script starts): a second one would cost its allocations again on every connection.
        self.machine = ConnectionStateMachine(statistics: counters, recording: shared.recording, tls: Self.tlsPolicy(shared, channel),
                                              compression: shared.configuration.compression)
    }

    /// How each link's receive buffer is sized: from what arrives, starting small. NIO keeps a
    /// link's buffer for its next read, so this is what an idle connection holds per link (NIO's
    /// default starts at 2 KiB); a read that fills it makes the next one larger, up to 64 KiB.
    static let receiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 65536)

    /// Lua hooks are timed (metrics on).
    var timesHooks: Bool { recording != .off }

    /// The time of the event about to be handed to the machine, when it records commands.
    @inline(__always)
    private func stamp() {
        if recording != .off { machine.now = NIODeadline.now().uptimeNanoseconds }
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

    /// What the admin interface lists about this connection, written when it changes.
    private func publish() {
        guard let registry = shared.registry, connectionID != 0, !closed else { return }
        let (client, backend) = (clientAddress, backendAddress)
        let user = loggedIn ? machine.session?.username : nil
        let database = loggedIn ? machine.session?.database : nil
        let tls = clientTLS.map { "\($0.version) \($0.cipher ?? "")" }
        let serverTLS = backendTLS.map { "\($0.version) \($0.cipher ?? "")" }
        let (compression, backendCompression, loggedIn) = (self.compression, self.backendCompression, self.loggedIn)
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
        if let refusal = admissionRefusal(active: active) {
            // As the server refuses a connection past max_connections: ERR 1040 where the
            // greeting would be, then the close.
            counters.add(.connectionsRefused)
            counters.add(.errorsSentByProxy)
            machine.noteClose(.limit)
            logStorm(.clientRefused, "refusing a client: \(refusal)")
            sendAndClose(ConnectionStateMachine.framed(.tooManyConnections, sequenceID: 0, protocol41: true))
            context.fireChannelActive()
            return
        }
        publish()
        log(.debug, "client connected")
        sweeper = shared.sweeper(for: context.eventLoop)
        sweeper?.add(self)
        if let engine = shared.scriptEngine, !startScript(engine, context: context) {
            context.fireChannelActive()
            return
        }
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
        context.fireChannelActive()
    }

    /// Why a new client may not be served (--max-connections, --max-connections-per-address), or nil.
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
        let connection = ScriptedConnection(handler: self, resultsetBufferLimit: engine.configuration.resultsetBufferLimit)
        connection.client.src = clientAddress.map(ScriptAddress.init)
        connection.client.dst = clientDestination(context).map(ScriptAddress.init)
        switch engine.startConnection(host: connection) {
        case .success(let script):
            connection.script = script
            scripted = connection
            machine = ConnectionStateMachine(statistics: counters, recording: recording, script: connection,
                                             maxPacketSize: shared.configuration.maxAssembledPacketSize, tls: Self.tlsPolicy(shared, context.channel),
                                             compression: shared.configuration.compression)
            return true
        case .failure(let failure):
            // MySQL Proxy's words, with packet id 0, instead of a greeting
            let err = failure == .loadFailed ? ScriptFailureMessages.loadFailed : ScriptFailureMessages.executeFailed
            counters.add(.errorsSentByProxy)
            machine.noteClose(.scriptError)
            log(.error, "\(err.message)")
            sendAndClose(ConnectionStateMachine.framed(err, sequenceID: 0, protocol41: true))
            return false
        }
    }

    /// The address the client connected to: the one its PROXY header names, else the listener's.
    private func clientDestination(_ context: ChannelHandlerContext) -> SocketAddress? {
        if case .proxied(_, let destination) = proxyProtocolEndpoints { return destination }
        return context.channel.localAddress
    }

    /// What this connection may do with TLS.
    private static func tlsPolicy(_ shared: ProxyContext, _ channel: Channel) -> ConnectionStateMachine.TLSPolicy {
        var policy = ConnectionStateMachine.TLSPolicy()
        guard let tls = shared.tls else { return policy }
        policy.offer = tls.forClients == nil ? .never : (shared.offersTLSAlways ? .always : tls.client.offer)
        policy.requireSecureTransport = tls.client.requireSecureTransport
        policy.backend = tls.backendProblem == nil ? tls.backend.mode : .off
        policy.pinnedServerKey = tls.backend.serverPublicKeyPEM
        policy.trustUnverifiedBackends = tls.backend.trustUnverifiedWithPasswords
        if case .unixDomainSocket = channel.localAddress { policy.localSocket = true }
        return policy
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        clientSpoke = true
        stamp()
        run(machine.clientDataReceived(self.unwrapInboundIn(data)))
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
        if writable { clientBlockedTicks = 0 }
        backend?.setReadsPaused(!writable)
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event as? TLSUserEvent ?? .shutdownCompleted, let handler = clientTLSHandler {
            clientTLS = handler.tlsVersion.map { ScriptTLSInfo(version: $0.mysqlName, cipher: clientCipher) }
            scripted?.client.ssl = clientTLS
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
        backendSpoke = true
        let delivering = backend
        stamp()
        run(machine.backendDataReceived(buffer))
        if awaitingGreeting && !machine.isAwaitingGreeting { greetingArrived() }
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
        if awaitingGreeting, let index = backendIndex {
            // closed before it greeted: as good as a failed connect
            awaitingGreeting = false
            shared.backends.markDown(index)
            counters.add(.backendConnectFailures)
            logStorm(.backendConnectFailed, "backend \(backendAddress.map { "\($0)" } ?? "?") closed the connection before its greeting; marking it down")
        }
        run(machine.backendClosed())
    }

    /// The proxy closes the server connection before the server greeted (the client left): that
    /// says nothing about the server, and another client may try it if it was down.
    private func abandonGreetingWait() {
        guard awaitingGreeting else { return }
        awaitingGreeting = false
        if let index = backendIndex { shared.backends.probeAbandoned(index) }
    }

    /// The server greeted (or refused with an ERR greeting): it is up.
    private func greetingArrived() {
        awaitingGreeting = false
        if let index = backendIndex { shared.backends.markUp(index) }
    }

    /// The server accepted the connection and said nothing for --proxy-backend-greeting-timeout
    /// (stopped, hung, its accept queue full): marked down, and the client goes to the next backend.
    func backendMissedGreeting() {
        awaitingGreeting = false
        guard let index = backendIndex, let handler = backend else { return }
        let address = backendAddress.map { "\($0)" } ?? "?"
        shared.backends.markDown(index)
        counters.add(.backendConnectFailures)
        logStorm(.backendDown, "backend \(address) sent no greeting within --proxy-backend-greeting-timeout; marking it down and trying the next one")
        handler.owner = nil
        handler.close(abrupt: true)
        backend = nil
        backendIndex = nil
        backendAddress = nil
        shared.backends.clientDetached(index)
        run(machine.backendGreetingTimedOut())
    }

    func backendWritabilityChanged(_ writable: Bool) {
        if writable { backendBlockedTicks = 0 }
        updateClientReading()
    }

    func backendErrorCaught(_ error: Error) {
        if TLSFailure.isFailure(error) {
            log(.warning, "TLS with the backend failed: \(error)")
            machine.noteClose(.backendHandshake)
            run(machine.backendTLSFailed(TLSFailure.describe(error)))
        } else {
            log(.debug, "backend connection error: \(error)")
        }
    }

    func backendTLSEstablished(_ version: TLSVersion?, cipher: String?) {
        backendTLS = version.map { ScriptTLSInfo(version: $0.mysqlName, cipher: cipher) }
        scripted?.server?.ssl = backendTLS
        log(.debug, "TLS with the backend established")
    }

    // MARK: actions

    func run(_ action: ConnectionStateMachine.Action) {
        switch action {
        case .none:
            break
        case .connectToBackend:
            connectToNextBackend()
        case .forwardToBackend(let buffer):
            counters.add(.bytesToBackends, buffer.readableBytes)
            backend?.write(buffer)
        case .forwardToClient(let buffer):
            counters.add(.bytesToClients, buffer.readableBytes)
            if let context { Self.forward(buffer, on: context, flushPending: &flushPending) }
        case .forwardToClientAndClose(let buffer):
            sendAndClose(buffer)
        case .forwardToClientUnderstoodNot(let buffer, let warning):
            log(.warning, "\(warning)")
            counters.add(.bytesToClients, buffer.readableBytes)
            if let context { Self.forward(buffer, on: context, flushPending: &flushPending) }
        case .startClientTLS(let leftover):
            startClientTLS(leftover)
        case .send(let output):
            if output.dropBackend { dropBackend() }
            if let request = output.backendTLSRequest { startBackendTLS(request) }
            if let algorithm = output.startCompression?.backend { startBackendCompression(algorithm, early: output.compressedFromServer) }
            if let bytes = output.toBackend {
                counters.add(.bytesToBackends, bytes.readableBytes)
                backend?.writeAndFlush(bytes)
            }
            if let reason = output.close {
                log(output.closeLevel, "closing: \(reason)")
                if let bytes = output.toClient { sendAndClose(bytes) } else { closeBoth() }
            } else if let bytes = output.toClient, let context {
                counters.add(.bytesToClients, bytes.readableBytes)
                flushPending = false
                context.writeAndFlush(NIOAny(bytes), promise: nil)
            }
            if let algorithm = output.startCompression?.client, output.close == nil { startClientCompression(algorithm) }
        case .sendToClientAndClose(let buffer, let reason):
            switch machine.closeSource {
            case .noBackend?, .limit?: logStorm(.clientRefused, reason)  // refusal storms: once per interval
            default: log(.warning, "\(reason)")
            }
            sendAndClose(buffer)
        case .closeConnections(let reason):
            if let reason { log(.info, "closing: \(reason)") }
            closeAfterFlush()
        case .closeAfterBackendClosed(let duringResponse):
            if duringResponse {
                log(.warning, "the backend closed the connection while a response was pending; closing the client's")
            } else {
                log(.info, "closing: the backend closed the connection")
            }
            closeAfterFlush()
        case .abortConnections(let reason):
            log(.warning, "closing: \(reason)")
            closeBoth()
        }
        updateClientReading()
        if !machine.finishedRecords.isEmpty { recordCommands() }
        if !loginSeen && machine.loginEnded { loginOver() }
    }

    /// The login is over: the connection no longer counts towards the address's limit of
    /// connections that have not logged in.
    private func loginOver() {
        loginSeen = true
        loginSucceeded = machine.phase != .closed
        if countedUnauthenticated, let ip = admittedAddress {
            countedUnauthenticated = false
            shared.loggedIn(address: ip)
        }
    }

    /// A warning of a kind that comes in storms: written at most once per interval, the rest counted.
    func logStorm(_ kind: RateLimitedLog.Kind, _ message: @autoclosure () -> String) {
        guard let context, shared.logger.logLevel <= .warning else { return }
        shared.stormLog.warning(kind, "[conn=\(connectionID)\(clientDescription.map { " client=\($0)" } ?? "")] \(message())",
                                logger: shared.logger, on: context.eventLoop)
    }

    /// Commands that ended: into this loop's histograms, and the query log.
    private func recordCommands() {
        for i in machine.finishedRecords.indices {
            let record = machine.finishedRecords[i]
            counters.commandCompleted(CommandKind(record.command), backend: record.answeredByScript ? nil : backendIndex,
                                      nanoseconds: record.nanoseconds)
            if let queryLog = shared.queryLog {
                let session = machine.session
                let entry = QueryLog.Entry(record: record, connection: connectionID, user: session?.username, database: session?.database,
                                           client: clientDescription, backend: record.answeredByScript ? nil : backendDescription)
                if !queryLog.append(entry) { counters.add(.queryLogDropped) }
            }
        }
        // the list keeps its storage (no copy of it was kept): no allocation per command
        machine.clearFinishedRecords()
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

    private func sendAndClose(_ buffer: ByteBuffer) {
        counters.add(.bytesToClients, buffer.readableBytes)
        guard let context, context.channel.isActive else {
            closeBoth()
            return
        }
        callDisconnectHook(serverIdle: false)
        abandonGreetingWait()
        backend?.close(abrupt: abortBackendOnClose)
        context.writeAndFlush(self.wrapOutboundOut(buffer)).assumeIsolated().whenComplete { [self] result in
            guard case .success = result, let context = self.context else {
                self.closeBoth()
                return
            }
            // A lingering close: stop writing, and let the client's own close (or a short grace
            // period) end the connection. Closing at once while the client still sends (the rest
            // of a packet that was too large, a pipelined command) would answer it with a reset,
            // which can destroy the proxy's last packet before the client reads it.
            context.close(mode: .output).assumeIsolated().whenComplete { [self] halfClosed in
                guard case .success = halfClosed, let context = self.context else {
                    self.closeBoth()
                    return
                }
                context.eventLoop.assumeIsolated().scheduleTask(in: Self.lingerTime) { [self] in
                    self.closeBoth()
                }
            }
        }
    }

    /// How long a connection the proxy closes waits for the client to close its side.
    static let lingerTime = TimeAmount.seconds(2)

    /// Closes both sides once what was written to the client has gone out (the server's last words
    /// included); a client that does not read is cut off by the write timeout.
    private func closeAfterFlush() {
        sendAndClose(ByteBuffer())
    }

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
        if scripted.hooks.contains(.disconnectClient) {
            scripted.prepareHook(loggedIn: serverIdle, serverIdle: serverIdle, status: machine.serverStatus)
            scripted.disconnectClient()
        }
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

    // MARK: backends

    /// A connect that failed for want of the proxy's own resources (NIO reports the errors of
    /// each address it tried inside one error).
    static func isLocalExhaustion(_ error: Error) -> Bool {
        guard let connection = error as? NIOConnectionError else { return false }
        return connection.connectionErrors.contains { AcceptGuard.isExhaustion($0.error) }
            || connection.dnsAAAAError.map(AcceptGuard.isExhaustion) == true || connection.dnsAError.map(AcceptGuard.isExhaustion) == true
    }

    private func connectToNextBackend() {
        guard let context, !closed else { return }
        var choice: (index: Int, address: ProxyAddress, resolved: SocketAddress?)?
        if let wanted = scripted?.requestedBackend, !triedBackends.contains(wanted) {
            choice = shared.backends.candidate(wanted)
        }
        guard let (index, address, resolved) = choice ?? shared.backends.pickForNewClient(excluding: triedBackends) else {
            let detail = triedBackends.isEmpty ? "all backends are down (MoonProxy)" : "no backend accepted the connection (MoonProxy)"
            run(machine.noBackendAvailable(detail))
            return
        }
        triedBackends.insert(index)
        let handler = BackendChannelHandler(owner: self)
        let eventLoop = context.eventLoop
        let started = shared.metrics == nil ? nil : ContinuousClock.now
        shared.connector.connect(to: address, resolved: resolved, on: eventLoop, timeout: shared.configuration.connectTimeout,
                                 handler: NIOLoopBound(handler, eventLoop: eventLoop))
            .hop(to: eventLoop)
            .assumeIsolated()
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    guard !self.closed else {
                        self.shared.backends.probeAbandoned(index)
                        channel.close(promise: nil)
                        return
                    }
                    if self.shared.configuration.backendProxyProtocol {
                        // before anything else on the connection, the server's greeting included
                        handler.writeAndFlush(ProxyProtocol.v2Header(source: self.clientAddress,
                                                                     destination: self.context.flatMap { self.clientDestination($0) }))
                    }
                    if let started { self.shared.metrics?.connectCompleted(backend: address, duration: ContinuousClock.now - started) }
                    // up once it greets: a server that accepts and says nothing is not
                    self.awaitingGreeting = true
                    self.ticksAwaitingGreeting = 0
                    self.shared.backends.clientAttached(index)
                    self.backendIndex = index
                    self.backend = handler
                    self.backendAddress = address
                    self.log(.debug, "connected to backend")
                    var local = false
                    if case .unix = address { local = true }
                    self.run(self.machine.backendConnected(localSocket: local))
                case .failure(let error) where AcceptGuard.isExhaustion(error) || Self.isLocalExhaustion(error):
                    // The proxy's own descriptor (or memory) limit, not the server's fault: the
                    // backend stays up and the client hears what a full server says.
                    self.counters.add(.connectionsRefused)
                    self.shared.backends.probeAbandoned(index)
                    self.logStorm(.descriptorsExhausted, "refusing a client: no descriptor for its server connection (\(error)); raise the open-files limit (--max-open-files)")
                    self.run(self.machine.refusedForWantOfResources())
                case .failure(let error):
                    self.shared.backends.markDown(index)
                    self.counters.add(.backendConnectFailures)
                    self.logStorm(.backendConnectFailed, "cannot connect to backend \(address), marking it down: \(error)")
                    self.scripted?.requestedBackend = nil
                    self.run(self.machine.backendConnectFailed())
                }
            }
    }
}
