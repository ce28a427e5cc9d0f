import MySQLWire
import NIOCore
import NIOSSL
import ProxyCore

// MARK: - `--proxy-multiplex`: sessions of a login share its server connections (see CorePool+Multiplex)

extension ClientChannelHandler {
    /// The server connections a login may have on this loop.
    var multiplexCap: Int { max(1, shared.configuration.poolMaximum / max(1, shared.configuration.eventThreads)) }

    /// How long a command waits for a server connection of its login before it gets an error.
    var multiplexWait: TimeAmount { .seconds(10) }

    /// A login under multiplexing takes an idle connection of its login, opens one while the
    /// login has fewer than its cap, or waits for a session to give one up. False: open one.
    func acquireForLogin(_ pool: CorePool, _ key: CorePool.Key, _ index: Int) -> Bool {
        let acquisition = pool.acquire(key, session: self, state: nil, cap: multiplexCap, deadline: .now() + multiplexWait) { [weak self] entry in
            guard let self, !self.closed, self.machine.isConnecting else {
                entry?.handler.quit()  // logged in and idle: it ends as a client would
                return
            }
            self.connectingToBackend = false
            guard let entry else {
                return self.run(self.machine.noBackendAvailable("no server connection of this login came free within \(self.multiplexWait.nanoseconds / 1_000_000_000) s (--proxy-pool-max \(self.shared.configuration.poolMaximum))"))
            }
            self.attachCorePooled(entry, index)
        }
        switch acquisition {
        case .ready(let entry):
            attachCorePooled(entry, index)
            return true
        case .open:
            pendingCountedKey = key
            return false
        case .waiting:
            if machine.isConnecting { connectingToBackend = true }
            return true
        }
    }

    /// The session logged in: it may give its connection up to other sessions of its login.
    func joinMultiplexing() {
        // (the context's setting first: a getter of the stored machine copies the machine)
        guard shared.configuration.multiplex, multiplexKey == nil, machine.configuration.multiplexes, let pool = sweeper?.corePool,
              let index = backendIndex, let login = machine.serverLogin, machine.isMultiplexable else { return }
        let key = pool.join(CorePool.Key(backend: index, login: login), self)
        multiplexKey = key
        if backend != nil { pool.holding(key, self) }
        notePins()
        publish()
        if let registry = shared.registry, described.id != 0, let loop = context?.eventLoop {
            let bound = NIOLoopBound(WeakSession(self), eventLoop: loop)
            registry.update(described.id) { entry in
                entry.migrate = { index in loop.execute { bound.value.session?.migrationRequested(to: index) } }
            }
        }
    }

    /// The admin interface's MIGRATE CONNECTION: the session moves to backend `index` between
    /// commands (now, or at a pool sweep once it can) and stays there.
    func migrationRequested(to index: Int) {
        guard !closed, !closing, multiplexKey != nil else { return }
        requestedBackend = index
        placedByOperator = true
        if !tryRequestedMove() { sweeper?.corePool?.migrationPending(self) }
    }

    /// Moves the session where MIGRATE asked, if it can now; true once it is there.
    func tryRequestedMove() -> Bool {
        guard let index = requestedBackend else { return true }
        guard !closed, !closing, let old = multiplexKey?.backend else { return true }
        if old == index || moveForBalance(to: index, why: "the admin interface migrates it") {
            requestedBackend = nil
            return true
        }
        return false
    }

    func leaveMultiplexing() {
        mayGiveUp = false
        guard let key = multiplexKey, let pool = sweeper?.corePool else { return }
        pool.leave(key, self)
        pool.shared.pinsChanged(from: publishedPins, to: [])
        publishedPins = []
    }

    /// Counts the session's pins when they changed (`moonproxy_sessions_pinned`, the admin
    /// interface's `pinned`).
    func notePins() {
        let (pins, statements, mayPark) = machine.multiplexStatus()
        mayGiveUp = mayPark
        guard pins != publishedPins || statements != publishedStatements, let pool = sweeper?.corePool else { return }
        pool.shared.pinsChanged(from: publishedPins, to: pins)
        publishedPins = pins
        publishedStatements = statements
        publish()
    }

    /// After the server's bytes: a session of the login waits for a connection, and this one
    /// may be between commands.
    func yieldIfWanted() {
        guard let key = multiplexKey, let pool = sweeper?.corePool, pool.waitingCount > 0, pool.hasWaiters(key) else { return }
        _ = yieldServerConnection()
    }

    /// Gives the server connection up if the session may (between commands, nothing pinned).
    func yieldServerConnection() -> Bool {
        guard !closed, !closing else { return false }
        let action = machine.parkRequested()
        guard machine.isParked else { return false }
        run(action)  // (statements closed in front of the hand-over, then .parkBackend)
        return true
    }

    /// `.parkBackend`: the idle connection goes to the session waiting for it, or to the pool.
    func parkServerConnection() {
        // (the handler's login, when the connection came from the pool, knows the capabilities it was made with)
        guard let handler = backend, let index = backendIndex, let address = described.backend, let pool = sweeper?.corePool else { return }
        let given = machine.connectionGivenUp()
        guard let login = handler.serverLogin ?? given.login, let state = given.state else { return }
        lastServerLogin = login
        let challenge = handler.serverLogin != nil ? handler.serverChallenge : given.challenge
        let backendTLS = described.backendTLS != nil || given.backendTLS
        detachBackend(closing: false, publishing: false)
        publishAttachment(held: false)
        var local = false
        if case .unix = address { local = true }
        let key = multiplexKey.flatMap { $0.backend == index ? $0 : nil } ?? CorePool.Key(backend: index, login: login)
        pool.park(handler, key: key, login: login, challenge: challenge, state: state, statements: given.statements,
                  by: ObjectIdentifier(self), address: address, backendTLS: backendTLS, localSocket: local)
    }

    /// `.takeBackend`: the session's next command needs a server connection of its login.
    func takeMultiplexed(tried: BackendSet = BackendSet()) {
        guard var key = multiplexKey, let pool = sweeper?.corePool else {
            return run(machine.multiplexedServerUnavailable(.noBackend("the session's server connection is gone (MoonProxy)"), reason: "no pool for a parked session"))
        }
        if shared.backends.isUnavailable(key.backend) {
            // its backend is down: the session moves to another one, its state restored there
            var excluded = tried
            excluded.insert(key.backend)
            guard let (index, _, _) = shared.backends.pickForNewClient(excluding: excluded), let moved = moveSession(to: index) else {
                return run(machine.multiplexedServerUnavailable(.noBackend("the session's backend is down and no other can take it (MoonProxy)"),
                                                                reason: "no backend for a session whose backend is down"))
            }
            key = moved
        }
        let body: (CorePool.Entry?) -> Void = { [weak self] entry in
            guard let self, !self.closed else {
                entry?.handler.quit()
                return
            }
            guard let entry else {
                if self.shared.backends.isUnavailable(key.backend), !tried.contains(key.backend) {
                    var next = tried
                    next.insert(key.backend)
                    return self.takeMultiplexed(tried: next)  // the backend failed meanwhile: another one
                }
                return self.run(self.machine.multiplexedServerUnavailable(
                    .noBackend("no server connection of this login came free within \(self.multiplexWait.nanoseconds / 1_000_000_000) s (MoonProxy)"),
                    reason: "no server connection of the login came free in time"))
            }
            self.attachMultiplexed(entry)
        }
        switch pool.acquire(key, session: self, state: machine.sessionState, cap: multiplexCap, deadline: .now() + multiplexWait, body) {
        case .ready(let entry): attachMultiplexed(entry)
        case .open: openForMultiplexing(pool, key, body)
        case .waiting: break
        }
    }

    /// A new server connection for the session's login (counted already), which the proxy logs
    /// in itself with the credential the session's login proved.
    func openForMultiplexing(_ pool: CorePool, _ key: CorePool.Key, login given: ConnectionMachine.ServerLogin? = nil, reserved: Bool = false,
                             _ body: ((CorePool.Entry?) -> Void)?) {
        guard let context, let login = given ?? backend?.serverLogin ?? lastServerLogin ?? machine.serverLogin,
              let (index, address, resolved) = shared.backends.candidate(key.backend) else {
            if reserved { pool.shared.unreserve(key.backend) } else { pool.connectionEnded(key) }
            body?(nil)
            return
        }
        let tls = machine.session.backendTLS
        var tlsContext: NIOSSLContext?
        var hostname: String?
        if tls {
            tlsContext = try? shared.tls?.forBackend(clientVersion: clientTLSHandler?.tlsVersion)
            if case .tcp(let host, _) = address, (try? SocketAddress(ipAddress: host, port: 0)) == nil { hostname = host }
        }
        let handler = BackendChannelHandler(owner: self)
        handler.createdAt = .now()
        if !reserved {
            handler.countingPool = pool
            handler.countedKey = key
        }
        var local = false
        if case .unix = address { local = true }
        let driver = ServerLoginDriver(login: login, tls: tls, tracks: machine.sessionState != nil || machine.pendingLoginIsTracked)
        pool.loggingIn(handler, key, driver, address: address, localSocket: local, tlsContext: tlsContext, serverHostname: hostname,
                       reserved: reserved, body)
        log(.debug, "opening a server connection to backend \(index + 1) for the session's login")
        let eventLoop = context.eventLoop
        let header = shared.configuration.backendProxyProtocol
            ? ProxyProtocol.v2Header(source: described.client, destination: proxyProtocolEndpoints?.destination ?? context.channel.localAddress) : nil
        shared.connector.connect(to: address, resolved: resolved, on: eventLoop, timeout: shared.configuration.connectTimeout,
                                 handler: NIOLoopBound(handler, eventLoop: eventLoop))
            .hop(to: eventLoop)
            .assumeIsolated()
            .whenComplete { [weak self] result in
                switch result {
                case .success:
                    if let header { handler.writeAndFlush(header) }  // before the greeting, as for any connection
                case .failure(let error):
                    self?.shared.backends.markDown(index)
                    self?.counters.add(.backendConnectFailures)
                    self?.logStorm(.backendConnectFailed, "cannot connect to backend \(address), marking it down: \(error)")
                    pool.loginConnectFailed(handler, error)
                }
            }
    }

    /// The session's login on another backend: its connections are counted and shared there.
    func moveSession(to index: Int) -> CorePool.Key? {
        guard let pool = sweeper?.corePool, let old = multiplexKey, let login = lastServerLogin ?? machine.serverLogin else { return nil }
        pool.leave(old, self)
        let key = pool.join(CorePool.Key(backend: index, login: login), self)
        multiplexKey = key
        log(.info, "the session moves from backend \(old.backend + 1) to backend \(index + 1)")
        return key
    }

    /// The pool's rebalancing: the session moves to backend `index` if it is between commands
    /// (giving its connection up first); its next command runs there, in its state.
    func moveForBalance(to index: Int, why: String = "the pool rebalances the login's sessions over the backends") -> Bool {
        guard !closed, !closing, let old = multiplexKey?.backend, old != index, !machine.isAwaitingServer else { return false }
        if requestedBackend == nil && placedByOperator { return false }  // (put there by MIGRATE: it stays)
        if backend != nil, !yieldServerConnection() { return false }
        guard machine.isParked, moveSession(to: index) != nil else { return false }
        log(.info, "\(why): this session moves from backend \(old + 1) to backend \(index + 1)")
        return true
    }

    /// Makes a connection the core pool gave out the session's server connection.
    func holdPooled(_ entry: CorePool.Entry) {
        let handler = entry.handler
        handler.owner = self
        handler.serverChallenge = entry.reset.challenge
        backend = handler
        backendIndex = entry.key.backend
        described.backend = entry.address
        shared.backends.clientAttached(entry.key.backend)
        if let context { handler.setReadsPaused(!context.channel.isWritable) }
    }

    private func attachMultiplexed(_ entry: CorePool.Entry) {
        holdPooled(entry)
        if let key = multiplexKey { sweeper?.corePool?.holding(key, self) }
        run(machine.multiplexedServerAttached(previous: entry.parkedState, own: entry.parkedBy == ObjectIdentifier(self),
                                              statements: entry.statements))
        publishAttachment(held: true)
    }

    /// Its backend drains past the deadline and the session is still there (pinned, or busy).
    func drainDeadlinePassed() {
        guard !closed, !closing else { return }
        run(machine.backendDrained())
    }

    /// The admin interface's `server_connection` for this session (cheaper than `publish()`:
    /// it changes at every hand-over).
    func publishAttachment(held: Bool) {
        guard let registry = shared.registry, described.id != 0, !closed else { return }
        registry.update(described.id) { $0.multiplexed = held ? "held" : "given up" }
    }

    /// `--proxy-pool-min-idle`: the session took an idle connection of its login; the pool makes
    /// another one ready in the background, logged in by the proxy (not through the PROXY
    /// protocol: such connections carry one client's address).
    func replenishPool(_ key: CorePool.Key, _ login: ConnectionMachine.ServerLogin) {
        let minimum = shared.configuration.poolMinimumIdle
        guard minimum > 0, !shared.configuration.backendProxyProtocol, let pool = sweeper?.corePool else { return }
        for _ in 0..<minimum where pool.idleOrComing(key) < minimum && pool.shared.reserve(key.backend) {
            pool.shared.count("replenish", backend: key.backend)
            openForMultiplexing(pool, key, login: login, reserved: true, nil)
        }
    }
}

/// A session, not kept alive by what refers to it (the registry's MIGRATE closure).
final class WeakSession {
    weak var session: ClientChannelHandler?
    init(_ session: ClientChannelHandler) { self.session = session }
}
