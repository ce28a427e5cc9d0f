#if canImport(Glibc)
import Glibc
#endif
import MySQLWire
import NIOCore
import ProxyCore

// MARK: - `--proxy-auth=proxy`: the proxy's greeting, the verdict, the core pool

extension ClientChannelHandler {
    /// Starts the session: with `--proxy-auth=proxy` and the accounts read, the proxy greets the
    /// client itself (as the server the accounts came from, with a challenge of its own); a
    /// client from a host no account names gets 1130 in place of the greeting, as from the
    /// server. Before the first reading the server authenticates the client, as in `relay`.
    func startSession() {
        guard let accounts = shared.accounts else { return run(machine.clientConnected()) }
        guard let (table, serverGreeting) = accounts.snapshot else {
            log(.debug, "the accounts have not been read yet: the server authenticates this client")
            return run(machine.clientConnected())
        }
        let (hostname, ip) = clientHost
        let known = ProxyAuthenticator.hostKnown(table, hostname: hostname, ip: ip)
        if !known && !waitedForAccounts {
            // an account made for this host a moment ago counts: the accounts are read again first
            return afterAccountsRead { $0.startSession() }
        }
        guard known else {
            shared.metrics?.loginDecided(plugin: "", result: "host_not_allowed")
            return run(machine.refuseConnection(.hostNotAllowed(hostname ?? ip ?? "unknown"), source: .authFailed,
                                                reason: "refusing a client: no account's host matches \(hostname ?? ip ?? "its address")",
                                                level: .info, protocol41: false))
        }
        var greeting = serverGreeting
        greeting.connectionID = UInt32(truncatingIfNeeded: described.id)
        greeting.authPluginData = ProxyAuthenticator.challenge(from: Self.randomWords())
        greeting.authPluginName = ProxyAuthenticator.nativePlugin
        greeting.status = .autocommit
        greeting.capabilities.formUnion([.protocol41, .secureConnection, .pluginAuth])
        run(machine.clientConnected(ownGreeting: greeting))
    }

    /// Three random words for a challenge, in one system call (the generator's `next()` makes
    /// one per word).
    static func randomWords() -> (UInt64, UInt64, UInt64) {
        var words: (UInt64, UInt64, UInt64) = (0, 0, 0)
        #if canImport(Glibc)
        // glibc's arc4random_buf: the kernel's generator (getrandom), once for all 24 bytes
        withUnsafeMutableBytes(of: &words) { arc4random_buf($0.baseAddress!, $0.count) }
        #else
        var random = SystemRandomNumberGenerator()
        words = (random.next(), random.next(), random.next())
        #endif
        return words
    }

    /// How the server would know the client: as `localhost` through a unix socket, or on a
    /// loopback address when the server resolves names (as MariaDB does without DNS); else by
    /// its address (other names would need DNS, which the proxy does not ask).
    var clientHost: (hostname: String?, ip: String?) {
        guard let client = described.client else { return ("localhost", nil) }
        if case .unixDomainSocket = client { return ("localhost", nil) }
        let ip = clientIP
        if let ip, shared.accounts?.resolvesNames == true, ip.hasPrefix("127.") || ip == "::1" || ip == "::ffff:127.0.0.1" {
            return ("localhost", ip)
        }
        return (nil, ip)
    }

    /// Runs `body` once the accounts were read again after now (see `AccountLoader.refreshed`),
    /// on this connection's loop, unless the connection closed meanwhile.
    private func afterAccountsRead(_ body: @escaping (ClientChannelHandler) -> Void) {
        guard let accounts = shared.accounts, let loop = context?.eventLoop else {
            waitedForAccounts = true
            return body(self)  // nothing to wait for: decide on the accounts as they are
        }
        waitedForAccounts = true
        let bound = NIOLoopBound(self, eventLoop: loop)
        let work = NIOLoopBound(body, eventLoop: loop)
        accounts.refreshed(since: .now()) {
            loop.execute {
                guard !bound.value.closed else { return }
                work.value(bound.value)
            }
        }
    }

    /// The verdict on a login (`.verifyLogin`), or nil when a refusal waits for the accounts to
    /// be read again first (the verdict then comes with `loginVerified` later): an account
    /// created, unlocked or given a new password just before counts, as on the server.
    func verifyOrWait(_ attempt: LoginAttempt) -> LoginVerdict? {
        let verdict = verify(attempt, counting: false)
        guard case .refused = verdict, !waitedForAccounts, shared.accounts != nil else {
            count(verdict, attempt)
            return verdict
        }
        afterAccountsRead { handler in
            // (the machine takes a verdict only while it waits for one)
            handler.run(handler.machine.loginVerified(handler.verify(attempt, counting: true)))
        }
        return nil
    }

    /// The proxy's verdict on a login, from the accounts as last read.
    func verify(_ attempt: LoginAttempt, counting: Bool) -> LoginVerdict {
        guard let table = shared.accounts?.table else { return .relay(plugin: "unknown") }
        let (hostname, ip) = clientHost
        let verdict = ProxyAuthenticator.verify(attempt, table: table, hostname: hostname, ip: ip)
        if counting { count(verdict, attempt) }
        return verdict
    }

    private func count(_ verdict: LoginVerdict, _ attempt: LoginAttempt) {
        switch verdict {
        case .accepted: shared.metrics?.loginDecided(plugin: ProxyAuthenticator.nativePlugin, result: "verified")
        case .relay(let plugin): shared.metrics?.loginDecided(plugin: plugin, result: "relayed")
        case .refused: shared.metrics?.loginDecided(plugin: attempt.plugin ?? ProxyAuthenticator.nativePlugin, result: "refused")
        case .switchPlugin: break
        }
    }

    /// Takes a server connection for the waiting login from the core pool: at once when one is
    /// ready, or once the reset of one that came back runs out. False: none; open one.
    func takeFromCorePool(_ index: Int, _ address: ProxyAddress, _ resolved: SocketAddress?) -> Bool {
        guard let pool = sweeper?.corePool, let (login, tracked) = machine.pendingPoolRequest() else { return false }
        if tracked && shared.configuration.multiplex {
            return acquireForLogin(pool, CorePool.Key(backend: index, login: login), index)
        }
        switch pool.take(CorePool.Key(backend: index, login: login)) {
        case .ready(let entry):
            attachCorePooled(entry, index)
            return true
        case .resetting(let entry):
            connectingToBackend = true
            let started = NIODeadline.now()
            entry.waiter = { [self] ready in
                self.connectingToBackend = false
                self.shared.metrics?.poolWaited(backend: address, duration: .nanoseconds((NIODeadline.now() - started).nanoseconds))
                guard !self.closed, self.machine.isConnecting else {
                    ready?.handler.quit()  // logged in and reset: it ends as a client would
                    return
                }
                if let ready {
                    self.attachCorePooled(ready, index)
                } else {
                    self.openConnection(index, address, resolved)
                }
            }
            return true
        case .none:
            return takeFromScriptPool(index, login)
        }
    }

    func attachCorePooled(_ entry: CorePool.Entry, _ index: Int) {
        let handler = entry.handler
        handler.serverChallenge = entry.reset.challenge
        // (a connection a multiplexed session gave up keeps the schema that session chose)
        let schema = entry.parkedState?.schema
        let login = handler.serverLogin
        let database = schema != nil && schema != login?.database && login?.database.isEmpty == false ? login?.database : nil
        if let login { replenishPool(entry.key, login) }
        attachLoggedIn(handler, index, address: entry.address, backendTLS: entry.backendTLS, localSocket: entry.localSocket,
                       database: database, note: "took a pooled server connection to backend \(index + 1)")
    }

    /// Attaches a connection logged in as this session's login, which another session used: the
    /// session was reset when its last client quit; COM_RESET_CONNECTION (+ COM_INIT_DB of
    /// `database`), in front of this client's first command on the wire, gives it the server's
    /// global settings as they are now, as a fresh login would (a SET GLOBAL since counts). The
    /// machine answers the client's login.
    func attachLoggedIn(_ handler: BackendChannelHandler, _ index: Int, address: ProxyAddress, backendTLS: Bool, localSocket: Bool,
                        database: String? = nil, note: @autoclosure () -> String) {
        shared.backends.probeAbandoned(index)
        handler.owner = self
        backend = handler
        backendIndex = index
        described.backend = address
        shared.backends.clientAttached(index)
        if let context { handler.setReadsPaused(!context.channel.isWritable) }
        handler.resetSession(flushNow: false, database: database)
        publish()
        log(.debug, "\(note())")
        run(machine.pooledServerAttached(backendTLS: backendTLS, localSocket: localSocket))
    }

    /// The client quit: its server connection, which the proxy logged in, goes to the core pool
    /// (closed when the pool is full).
    func releaseToPool() {
        guard let handler = backend else { return }
        stampLogin(handler)
        // (a connection of another session a script took from its pool, which no login of the
        // proxy's made, cannot be reset to a login: it ends with this session)
        guard let index = backendIndex, let address = described.backend, let pool = sweeper?.corePool,
              let login = handler.serverLogin else { return }
        let challenge = handler.serverChallenge
        let backendTLS = described.backendTLS != nil || machine.session.backendTLS
        detachBackend(closing: false)
        handler.serverLogin = login
        var local = false
        if case .unix = address { local = true }
        if !pool.keep(handler, backend: index, login: login, challenge: challenge, address: address, backendTLS: backendTLS,
                      localSocket: local, sessionChangedUser: machine.sessionChangedUser) {
            handler.quit()  // the pool is full: as the client would have, had it talked to the server
        }
    }

    /// Records on the server connection this session opened the login the proxy made on it and
    /// its greeting's challenge, as it leaves the session (to a pool): whoever takes it next
    /// resets it to that login, with that challenge (a COM_CHANGE_USER answers the greeting's).
    func stampLogin(_ handler: BackendChannelHandler) {
        guard handler.serverLogin == nil, ObjectIdentifier(handler) == openedConnection, let login = machine.serverLogin else { return }
        handler.serverLogin = login
        handler.serverChallenge = machine.serverChallenge
    }
}
