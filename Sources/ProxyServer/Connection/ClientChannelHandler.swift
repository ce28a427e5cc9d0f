import Logging
import MySQLWire
import NIOCore

/// The client side of a proxied connection, and the owner of its state: it feeds the connection's
/// state machine with what happens on either socket and carries out the actions it returns.
///
/// Reading from the client is switched off while the backend does not keep up, and when a
/// graceful shutdown waits for the running command (autoRead; changes are rare).
final class ClientChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var machine: ConnectionStateMachine
    private let shared: ProxyContext
    private var connectionID: UInt64 = 0
    private var clientAddress: SocketAddress?
    private var backendAddress: ProxyAddress?
    private var context: ChannelHandlerContext?
    private var backend: BackendChannelHandler?
    private var backendIndex: Int?
    private var triedBackends: Set<Int> = []
    private var readingFromClient = true
    private var flushPending = false
    private var closed = false

    // Timeouts are checked by the event loop's sweeper; the hot path only sets these flags.
    private var sweeper: TimeoutSweeper?
    private var clientSpoke = false
    private var backendSpoke = false
    private var clientIdleTicks = 0
    private var backendIdleTicks = 0
    private var clientBlockedTicks = 0
    private var backendBlockedTicks = 0

    init(shared: ProxyContext) {
        self.shared = shared
        self.machine = ConnectionStateMachine(statistics: shared.statistics)
    }

    /// Logs with the connection's metadata, built only when the line is actually written.
    private func log(_ level: Logger.Level, _ message: @autoclosure () -> Logger.Message) {
        guard shared.logger.logLevel <= level else { return }
        var logger = shared.logger
        logger[metadataKey: "conn"] = "\(connectionID)"
        if let clientAddress { logger[metadataKey: "client"] = "\(Self.describe(clientAddress))" }
        if let backendAddress { logger[metadataKey: "backend"] = "\(backendAddress)" }
        logger.log(level: level, message())
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
        shared.statistics.add(.connectionsAccepted)
        shared.statistics.add(.connectionsActive)
        connectionID = shared.nextConnectionID()
        clientAddress = context.channel.remoteAddress
        log(.debug, "client connected")
        sweeper = shared.sweeper(for: context.eventLoop)
        sweeper?.add(self)
        run(machine.clientConnected())
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        clientSpoke = true
        run(machine.clientDataReceived(self.unwrapInboundIn(data)))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        backend?.flushIfPending()
    }

    func channelInactive(context: ChannelHandlerContext) {
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

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        log(.debug, "client connection error: \(error)")
        context.close(promise: nil)
    }

    /// A graceful shutdown began (called by the event loop's sweeper).
    func shutdownRequested() {
        run(machine.shutdownRequested())
    }

    /// The shutdown grace period is over.
    func forceClose() {
        closeBoth()
    }

    /// Reads from the client only when the machine wants them and the backend keeps up.
    private func updateClientReading() {
        let wanted = machine.wantsClientReads && (backend?.isWritable ?? true)
        guard wanted != readingFromClient, let context, !closed else { return }
        readingFromClient = wanted
        try? context.channel.syncOptions?.setOption(.autoRead, value: wanted)
    }

    // MARK: backend channel events (called by BackendChannelHandler)

    func backendDataReceived(_ buffer: ByteBuffer) {
        backendSpoke = true
        run(machine.backendDataReceived(buffer))
    }

    func backendReadComplete() {
        guard flushPending, let context else { return }
        flushPending = false
        context.flush()
    }

    func backendClosed() {
        run(machine.backendClosed())
    }

    func backendWritabilityChanged(_ writable: Bool) {
        if writable { backendBlockedTicks = 0 }
        updateClientReading()
    }

    func backendErrorCaught(_ error: Error) {
        log(.debug, "backend connection error: \(error)")
    }

    // MARK: actions

    private func run(_ action: ConnectionStateMachine.Action) {
        switch action {
        case .none:
            break
        case .connectToBackend:
            connectToNextBackend()
        case .forwardToBackend(let buffer):
            backend?.write(buffer)
        case .forwardToClient(let buffer):
            if let context { Self.forward(buffer, on: context, flushPending: &flushPending) }
        case .forwardToClientAndClose(let buffer):
            sendAndClose(buffer)
        case .sendToClientAndClose(let buffer, let reason):
            log(.warning, "\(reason)")
            sendAndClose(buffer)
        case .closeConnections(let reason):
            if let reason { log(.info, "closing: \(reason)") }
            closeBoth()
        case .abortConnections(let reason):
            log(.warning, "closing: \(reason)")
            closeBoth()
        }
        updateClientReading()
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
        guard let context, context.channel.isActive else {
            closeBoth()
            return
        }
        backend?.close()
        context.writeAndFlush(self.wrapOutboundOut(buffer)).assumeIsolated().whenComplete { [self] _ in
            self.closeBoth()
        }
    }

    private func closeBoth() {
        backend?.close()
        context?.close(promise: nil)
    }

    /// Releases what this connection holds, once.
    private func finish() {
        guard !closed else { return }
        closed = true
        sweeper?.remove(self)
        sweeper = nil
        backend?.close()
        backend?.owner = nil
        backend = nil
        if let index = backendIndex {
            shared.backends.clientDetached(index)
            backendIndex = nil
        }
        shared.statistics.add(.connectionsActive, -1)
        log(.debug, "client disconnected")
    }

    // MARK: backends

    private func connectToNextBackend() {
        guard let context, !closed else { return }
        guard let (index, address, resolved) = shared.backends.pickForNewClient(excluding: triedBackends) else {
            let detail = triedBackends.isEmpty ? "all backends are down (MoonProxy)" : "no backend accepted the connection (MoonProxy)"
            run(machine.noBackendAvailable(detail))
            return
        }
        triedBackends.insert(index)
        let handler = BackendChannelHandler(owner: self)
        let eventLoop = context.eventLoop
        shared.connector.connect(to: address, resolved: resolved, on: eventLoop, timeout: shared.configuration.connectTimeout,
                                 handler: NIOLoopBound(handler, eventLoop: eventLoop))
            .hop(to: eventLoop)
            .assumeIsolated()
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    guard !self.closed else {
                        channel.close(promise: nil)
                        return
                    }
                    self.shared.backends.markUp(index)
                    self.shared.backends.clientAttached(index)
                    self.backendIndex = index
                    self.backend = handler
                    self.backendAddress = address
                    self.log(.debug, "connected to backend")
                    self.run(self.machine.backendConnected())
                case .failure(let error):
                    self.shared.backends.markDown(index)
                    self.shared.statistics.add(.backendConnectFailures)
                    self.log(.warning, "cannot connect to backend \(address), marking it down: \(error)")
                    self.connectToNextBackend()
                }
            }
    }

    // MARK: timeouts

    /// Called by the sweeper every tick.
    func timerFired(readTicks: Int, writeTicks: Int) {
        guard !closed else { return }
        clientIdleTicks = clientSpoke ? 0 : clientIdleTicks + 1
        backendIdleTicks = backendSpoke ? 0 : backendIdleTicks + 1
        clientSpoke = false
        backendSpoke = false
        if let context, !context.channel.isWritable { clientBlockedTicks += 1 } else { clientBlockedTicks = 0 }
        if let backend, !backend.isWritable { backendBlockedTicks += 1 } else { backendBlockedTicks = 0 }

        if clientBlockedTicks >= writeTicks || backendBlockedTicks >= writeTicks {
            run(.abortConnections(reason: "a write stayed blocked for longer than the write timeout"))
        } else if clientIdleTicks >= readTicks {
            clientIdleTicks = 0
            run(machine.readTimedOut(client: true))
        } else if backendIdleTicks >= readTicks {
            backendIdleTicks = 0
            run(machine.readTimedOut(client: false))
        }
    }

    static func describe(_ address: SocketAddress) -> String {
        switch address {
        case .v4, .v6:
            if let ip = address.ipAddress, let port = address.port {
                return address.protocol == .inet6 ? "[\(ip)]:\(port)" : "\(ip):\(port)"
            }
            return "\(address)"
        case .unixDomainSocket:
            return address.pathname ?? "unix"
        }
    }
}
