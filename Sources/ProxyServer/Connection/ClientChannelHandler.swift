import Logging
import MySQLWire
import NIOCore

/// The client side of a proxied connection, and the owner of its state: it feeds the connection's
/// state machine with what happens on either socket and carries out the actions it returns.
final class ClientChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var machine: ConnectionStateMachine
    private let shared: ProxyContext
    private var logger: Logger
    private var context: ChannelHandlerContext?
    private var backend: BackendChannelHandler?
    private var backendIndex: Int?
    private var triedBackends: Set<Int> = []
    private var clientReadPending = false
    private var closed = false

    // Timeouts are checked by a coarse timer; the hot path only sets these flags.
    private var timer: RepeatedTask?
    private var clientSpoke = false
    private var backendSpoke = false
    private var clientIdleTicks = 0
    private var backendIdleTicks = 0
    private var clientBlockedTicks = 0
    private var backendBlockedTicks = 0
    private static let ticksPerTimeout = 4

    init(shared: ProxyContext) {
        self.shared = shared
        self.machine = ConnectionStateMachine(statistics: shared.statistics)
        self.logger = shared.logger
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
        logger[metadataKey: "conn"] = "\(shared.nextConnectionID())"
        if let remote = context.channel.remoteAddress {
            logger[metadataKey: "client"] = "\(Self.describe(remote))"
        }
        logger.debug("client connected")
        startTimer(context)
        run(machine.clientConnected())
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        clientSpoke = true
        run(machine.clientDataReceived(self.unwrapInboundIn(data)))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        backend?.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        run(machine.clientClosed())
        finish()
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            clientBlockedTicks = 0
            backend?.resumeReads()
        } else {
            backend?.pauseReads()
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.debug("client connection error: \(error)")
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ProxyShutdownEvent {
            run(machine.shutdownRequested())
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    /// Reads from the client only when the machine wants them and the backend keeps up.
    func read(context: ChannelHandlerContext) {
        if machine.wantsClientReads && (backend?.isWritable ?? true) {
            context.read()
        } else {
            clientReadPending = true
        }
    }

    private func resumeClientReadsIfPossible() {
        guard clientReadPending, let context, machine.wantsClientReads, backend?.isWritable ?? true else { return }
        clientReadPending = false
        context.read()
    }

    // MARK: backend channel events (called by BackendChannelHandler)

    func backendDataReceived(_ buffer: ByteBuffer) {
        backendSpoke = true
        run(machine.backendDataReceived(buffer))
    }

    func backendReadComplete() {
        context?.flush()
    }

    func backendClosed() {
        run(machine.backendClosed())
    }

    func backendWritabilityChanged(_ writable: Bool) {
        if writable {
            backendBlockedTicks = 0
            resumeClientReadsIfPossible()
        }
    }

    func backendErrorCaught(_ error: Error) {
        logger.debug("backend connection error: \(error)")
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
            context?.write(self.wrapOutboundOut(buffer), promise: nil)
        case .forwardToClientAndClose(let buffer):
            sendAndClose(buffer)
        case .sendToClientAndClose(let buffer, let reason):
            logger.warning("\(reason)")
            sendAndClose(buffer)
        case .closeConnections(let reason):
            if let reason { logger.info("closing: \(reason)") }
            closeBoth()
        case .abortConnections(let reason):
            logger.warning("closing: \(reason)")
            closeBoth()
        }
        resumeClientReadsIfPossible()
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
        timer?.cancel()
        timer = nil
        backend?.close()
        backend?.owner = nil
        backend = nil
        if let index = backendIndex {
            shared.backends.clientDetached(index)
            backendIndex = nil
        }
        shared.statistics.add(.connectionsActive, -1)
        logger.debug("client disconnected")
    }

    // MARK: backends

    private func connectToNextBackend() {
        guard let context, !closed else { return }
        guard let (index, address) = shared.backends.pickForNewClient(excluding: triedBackends) else {
            let detail = triedBackends.isEmpty ? "all backends are down (MoonProxy)" : "no backend accepted the connection (MoonProxy)"
            run(machine.noBackendAvailable(detail))
            return
        }
        triedBackends.insert(index)
        let handler = BackendChannelHandler(owner: self)
        let eventLoop = context.eventLoop
        shared.connector.connect(to: address, on: eventLoop, timeout: shared.configuration.connectTimeout,
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
                    self.logger[metadataKey: "backend"] = "\(address)"
                    self.logger.debug("connected to backend")
                    self.run(self.machine.backendConnected())
                case .failure(let error):
                    self.shared.backends.markDown(index)
                    self.shared.statistics.add(.backendConnectFailures)
                    self.logger.warning("cannot connect to backend \(address), marking it down: \(error)")
                    self.connectToNextBackend()
                }
            }
    }

    // MARK: timeouts

    private func startTimer(_ context: ChannelHandlerContext) {
        let config = shared.configuration
        let shortest = min(config.readTimeout, config.writeTimeout)
        let tick = TimeAmount.nanoseconds(max(shortest.nanoseconds / Int64(Self.ticksPerTimeout), 1_000_000))
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let readTicks = max(1, Int(config.readTimeout.nanoseconds / tick.nanoseconds))
        let writeTicks = max(1, Int(config.writeTimeout.nanoseconds / tick.nanoseconds))
        timer = context.eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { _ in
            bound.value.timerFired(readTicks: readTicks, writeTicks: writeTicks)
        }
    }

    private func timerFired(readTicks: Int, writeTicks: Int) {
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
