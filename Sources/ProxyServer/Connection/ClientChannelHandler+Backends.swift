import NIOCore
import NIOPosix
import ProxyCore
import ProxyScripting

// MARK: - server connections: opening one, its greeting, the pool

extension ClientChannelHandler {
    /// Opens a server connection to the backend `BackendChoice` picks (the script's, `preferred`,
    /// when it may be used), or tells the machine there is none.
    func connectToBackend(preferred: Int?) {
        guard let context, !closed else { return }
        if multiplexKey != nil {
            // a COM_CHANGE_USER the proxy accepted: the session is a login of another user now
            leaveMultiplexing()
            multiplexKey = nil
            requestedBackend = nil
            placedByOperator = false
        }
        let index: Int, address: ProxyAddress, resolved: SocketAddress?
        switch choice.next(preferred: preferred, from: shared.backends) {
        case .refuse(let detail):
            return run(machine.noBackendAvailable(detail))
        case .connect(let i, let a, let r):
            (index, address, resolved) = (i, a, r)
        }
        if takeFromCorePool(index, address, resolved) { return }
        openConnection(index, address, resolved)
    }

    /// A connection counted against its login's cap did not open.
    func uncountPending() {
        guard let key = pendingCountedKey else { return }
        pendingCountedKey = nil
        sweeper?.corePool?.connectionEnded(key)
    }

    /// Opens a new server connection to backend `index`.
    func openConnection(_ index: Int, _ address: ProxyAddress, _ resolved: SocketAddress?) {
        guard let context, !closed else { return }
        let handler = BackendChannelHandler(owner: self)
        handler.createdAt = .now()
        let eventLoop = context.eventLoop
        connectingToBackend = true
        let started = shared.metrics == nil ? nil : NIODeadline.now()
        shared.connector.connect(to: address, resolved: resolved, on: eventLoop, timeout: shared.configuration.connectTimeout,
                                 handler: NIOLoopBound(handler, eventLoop: eventLoop))
            .hop(to: eventLoop)
            .assumeIsolated()
            .whenComplete { [self] result in
                self.connectingToBackend = false
                if case .failure = result { self.uncountPending() }
                switch result {
                case .success(let channel):
                    if let key = self.pendingCountedKey {
                        // (multiplexing) the connection counts against its login's cap until it closes
                        self.pendingCountedKey = nil
                        handler.countingPool = self.sweeper?.corePool
                        handler.countedKey = key
                    }
                    guard !self.closed else {
                        self.shared.backends.probeAbandoned(index)
                        channel.close(promise: nil)
                        return
                    }
                    if self.shared.configuration.backendProxyProtocol {
                        // before anything else on the connection, the server's greeting included
                        handler.writeAndFlush(ProxyProtocol.v2Header(source: self.described.client,
                                                                     destination: self.context.flatMap { self.proxyProtocolEndpoints?.destination ?? $0.channel.localAddress }))
                    }
                    if let started { self.shared.metrics?.connectCompleted(backend: address, duration: .nanoseconds((NIODeadline.now() - started).nanoseconds)) }
                    // up once it greets: a server that accepts and says nothing is not
                    self.timers.awaitingGreeting = true
                    self.shared.backends.clientAttached(index)
                    self.backendIndex = index
                    self.backend = handler
                    self.openedConnection = ObjectIdentifier(handler)
                    self.described.backend = address
                    self.scripted?.attached = nil  // described from its greeting at the next hook
                    self.publish()
                    self.log(.debug, "connected to backend")
                    var local = false
                    if case .unix = address { local = true }
                    self.run(self.machine.backendConnected(localSocket: local))
                case .failure(let error) where AcceptGuard.isExhaustion(connectError: error):
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
                    self.run(self.machine.backendConnectFailed())
                }
            }
    }

    /// The proxy closes the server connection before the server greeted (the client left): that
    /// says nothing about the server, and another client may try it if it was down.
    func abandonGreetingWait() {
        guard timers.awaitingGreeting else { return }
        timers.awaitingGreeting = false
        if let index = backendIndex { shared.backends.probeAbandoned(index) }
    }

    /// The server greeted (or refused with an ERR greeting): it is up.
    func greetingArrived() {
        timers.awaitingGreeting = false
        if let index = backendIndex { shared.backends.markUp(index) }
    }

    /// The server accepted the connection and said nothing for --proxy-backend-greeting-timeout
    /// (stopped, hung, its accept queue full): marked down, and the client goes to the next backend.
    func backendMissedGreeting() {
        guard let index = backendIndex, backend != nil else { return }
        shared.backends.markDown(index)
        counters.add(.backendConnectFailures)
        logStorm(.backendDown, "backend \(described.backendText() ?? "?") sent no greeting within --proxy-backend-greeting-timeout; marking it down and trying the next one")
        detachBackend(closing: true)
        run(machine.backendGreetingTimedOut())
    }

    /// Lets go of the server connection: closed, or handed to the pool by the caller.
    func detachBackend(closing: Bool, publishing: Bool = true) {
        guard let handler = backend else { return }
        mayGiveUp = false
        handler.owner = nil
        if closing { handler.close(abrupt: true) }
        backend = nil
        if let index = backendIndex { shared.backends.clientDetached(index) }
        backendIndex = nil
        described.backend = nil
        scripted?.attached = nil
        if let key = multiplexKey { sweeper?.corePool?.released(key, self) }
        if publishing { publish() }
    }

    /// Closes the server connection: the script answered the login itself.
    func dropBackend() {
        guard let handler = backend else { return }
        detachBackend(closing: false)
        handler.close()
    }

    // MARK: the pool (scripts' backend_ndx)

    /// Gives the server connection to this loop's pool, or closes it when it cannot be kept.
    func parkServer(_ connection: ScriptedConnection) {
        guard let handler = backend, let index = backendIndex, let address = described.backend else { return }
        stampLogin(handler)
        let parked = ServerConnectionPool.Parked(
            handler: handler,
            key: ServerConnectionPool.Key(backend: index, user: connection.client.username, capabilities: connection.capabilities),
            status: machine.serverStatus, server: connection.attached ?? ScriptServerInfo(), address: address, session: described.id)
        detachBackend(closing: false)
        if sweeper?.serverPool.park(parked) != true {
            log(.debug, "closing a server connection the pool cannot keep (full, or in a transaction)")
            handler.close()
        }
    }

    /// Takes a connection the script chose from the pool: reset first when another client
    /// session used it (nothing of that session may reach this one).
    func attachPooled(_ parked: ServerConnectionPool.Parked, _ connection: ScriptedConnection) -> ConnectionMachine.ServerChange {
        if parked.session != described.id && shared.configuration.resetPooledConnections {
            parked.handler.resetSession()
        }
        if backend != nil { parkServer(connection) }
        parked.handler.owner = self
        backend = parked.handler
        backendIndex = parked.key.backend
        described.backend = parked.address
        shared.backends.clientAttached(parked.key.backend)
        connection.attached = parked.server
        if let context { parked.handler.setReadsPaused(!context.channel.isWritable) }
        publish()
        log(.debug, "took a pooled connection to backend \(parked.key.backend + 1)")
        return .replaced(status: parked.status)
    }

    /// A pooled connection's session could not be reset before this client used it: what was
    /// sent behind the reset ran in a session that may not be clean, so nothing more of it may.
    func backendResetFailed(_ detail: String) {
        log(.error, "closing: the server refused to reset the pooled connection's session (COM_RESET_CONNECTION: \(detail))")
        counters.add(.backendProtocolErrors)
        abortBackendOnClose = true
        run(machine.abandon(.backendProtocol, reason: "the server refused to reset the pooled connection's session", level: .error))
    }
}
