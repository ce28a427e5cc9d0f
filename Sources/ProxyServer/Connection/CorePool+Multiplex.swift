import MySQLWire
import NIOCore
import NIOSSL
import ProxyCore

/// Multiplexing (`--proxy-multiplex`): a login's sessions share at most `cap` server connections
/// on this loop. A session keeps its connection while it works; when another session of the
/// same login needs one and none is idle, a session that is between commands with nothing
/// pinned gives its connection up (`park`), with the state it leaves on it, and takes one again
/// (`acquire`) at its next command: its own if still idle, one in the same state, or any.
extension CorePool {
    /// A session waiting for a connection of a login.
    struct Waiter {
        var session: ObjectIdentifier
        var deadline: NIODeadline
        var body: (Entry?) -> Void
    }

    /// A session of a login that may give its connection up when asked.
    struct Member {
        weak var session: ClientChannelHandler?
    }

    enum Acquisition {
        /// An idle connection, taken out of the pool.
        case ready(Entry)
        /// The login may open a connection of its own (counted already).
        case open
        /// `body` runs once a connection comes (nil: none came in time); it may have run already.
        case waiting
    }

    /// A connection of `key` for `session`: its own if idle, else one left in `state`, else any
    /// idle one; else a new one while the login has fewer than `cap` (0: a session between
    /// commands never opens one); else `body` runs when a session gives one up.
    func acquire(_ key: Key, session: ClientChannelHandler, state: SessionState?, cap: Int, deadline: NIODeadline,
                 _ body: @escaping (Entry?) -> Void) -> Acquisition {
        let id = ObjectIdentifier(session)
        if let list = entries[key] {
            let idle = list.lazy.filter { $0.ready }
            let pick = idle.first { $0.parkedBy == id }
                ?? state.flatMap { s in idle.first { $0.parkedState?.sameServerState(as: s, loginDatabase: key.database) == true } }
                ?? idle.first
            if let pick {
                remove(pick)
                shared.count(pick.parkedBy == id ? "multiplex_own" : "checkout_hit", backend: key.backend)
                return .ready(pick)
            }
            if cap > 0, let resetting = list.first(where: { !$0.ready && $0.waiter == nil }) {
                // a connection whose client quit comes back from its reset shortly
                shared.count("checkout_waited", backend: key.backend)
                resetting.waiter = body
                return .waiting
            }
        }
        if connectionCounts[key, default: 0] < cap {
            connectionCounts[key, default: 0] += 1
            shared.count("checkout_miss", backend: key.backend)
            return .open
        }
        waiters[key, default: []].append(Waiter(session: id, deadline: deadline, body: body))
        waitingCount += 1
        shared.count("multiplex_waited", backend: key.backend)
        startSweeping()
        askToPark(key, except: id)
        return .waiting
    }

    /// Whether a session waits for a connection of `key`.
    func hasWaiters(_ key: Key) -> Bool { waitingCount > 0 && waiters[key]?.isEmpty == false }

    /// Asks the login's sessions, one after another, to give their connection up, until one does
    /// (its `park` serves the first waiter). Only those whose last server read left them between
    /// commands are asked (`mayGiveUp`): under load every connection is busy, and one that is
    /// gives itself up when its response ends; `thorough` (the sweep, once a second) asks all.
    /// True: a session gave its connection up.
    @discardableResult
    func askToPark(_ key: Key, except: ObjectIdentifier?, thorough: Bool = false) -> Bool {
        var refused: Set<ObjectIdentifier> = []
        while (thorough || mayGiveUpCount > refused.count) && hasWaiters(key) {
            // (picked before it is asked: a session giving up changes `holders`, which a loop over
            // it would hold, and so copy)
            let pick = holders[key]?.first { id, member in
                id != except && !refused.contains(id) && (member.session?.mayGiveUp == true || (thorough && member.session != nil))
            }
            guard let (id, member) = pick, let session = member.session else { return false }
            if session.yieldServerConnection() { return true }
            refused.insert(id)
        }
        return false
    }

    /// A session gave its idle connection up: to the first session waiting for one, else idle in
    /// the pool with the state it was left in.
    /// `key`: the login's on the connection's backend (the session's own key where it is that one:
    /// a key made anew costs its hash, and compares its strings byte by byte).
    func park(_ handler: BackendChannelHandler, key: Key, login: ConnectionMachine.ServerLogin, challenge: [UInt8],
              state: SessionState, statements: ServerStatements, by session: ObjectIdentifier, address: ProxyAddress, backendTLS: Bool,
              localSocket: Bool) {
        let backend = key.backend
        let entry = Entry(handler: handler, key: key, reset: ServerLoginReset(login: login, challenge: challenge, sessionChangedUser: false),
                          address: address, backendTLS: backendTLS, localSocket: localSocket)
        entry.ready = true
        entry.reserved = false
        entry.parkedState = state
        entry.statements = statements
        entry.parkedBy = session
        handler.owner = nil
        handler.serverLogin = login
        shared.count("multiplex_park", backend: backend)
        if backends?.drainDeadline(backend) != nil {
            return handler.quit()  // its backend drains: nobody takes it
        }
        if let waiter = takeWaiter(key) { return waiter.body(entry) }
        entries[key, default: []].append(entry)
        byHandler[ObjectIdentifier(handler)] = entry
        shared.adjust(key, ready: 1)
        handler.corePool = self
        handler.setReadsPaused(false)  // a server that closes it is noticed
        startSweeping()
    }

    func takeWaiter(_ key: Key) -> Waiter? {
        // (an emptied queue stays while the login has sessions: the next waiter needs no new one)
        guard waitingCount > 0, let first = waiters[key]?.popFirst() else { return nil }
        waitingCount -= 1
        return first
    }

    /// A session that waited left.
    func cancelWaiting(_ session: ObjectIdentifier) {
        for (key, list) in waiters where list.contains(where: { $0.session == session }) {
            let kept = CircularBuffer(list.lazy.filter { $0.session != session })
            waitingCount -= list.count - kept.count
            waiters[key] = kept.isEmpty ? nil : kept
        }
    }

    /// Waiters past their deadline hear that no connection came.
    func sweepWaiters(now: NIODeadline) {
        guard waitingCount > 0 else { return }
        for key in Array(waiters.keys) where askToPark(key, except: nil, thorough: true) {
            // a session between commands that nobody asked: its `mayGiveUp` was wrong (0 when all is well)
            shared.count("multiplex_swept", backend: key.backend)
        }
        for (key, list) in waiters where list.contains(where: { $0.deadline <= now }) {
            let late = list.filter { $0.deadline <= now }
            let kept = CircularBuffer(list.lazy.filter { $0.deadline > now })
            waiters[key] = kept.isEmpty ? nil : kept
            waitingCount -= late.count
            for waiter in late {
                shared.count("multiplex_timeout", backend: key.backend)
                waiter.body(nil)
            }
        }
    }

    /// `session` joins its login's sessions on `key`'s backend; it keeps the key returned: the one
    /// the pool's tables hold when other sessions of the login are there, whose strings are the
    /// tables' own, so that each lookup at a hand-over compares them by identity, not byte by byte.
    func join(_ key: Key, _ session: ClientChannelHandler) -> Key {
        let shared = members.index(forKey: key).map { members.keys[$0] } ?? key
        members[shared, default: [:]][ObjectIdentifier(session)] = Member(session: session)
        startSweeping()  // (a drain looks at the members)
        return shared
    }

    /// `DRAIN BACKEND`: idle connections to a draining backend close, its sessions between
    /// commands give theirs up (their next command goes elsewhere), and those still there at the
    /// deadline are closed.
    func sweepDraining(now: NIODeadline) {
        guard let backends, backends.anyDraining else { return }
        for entry in Array(byHandler.values) where entry.ready && backends.drainDeadline(entry.key.backend) != nil {
            drop(entry, "its backend drains", event: "closed_drain")
        }
        for (key, sessions) in holders {
            guard let deadline = backends.drainDeadline(key.backend) else { continue }
            for member in sessions.values {
                guard let session = member.session, session.backendIndex == key.backend else { continue }
                if !session.yieldServerConnection() && now >= deadline { session.drainDeadlinePassed() }
            }
        }
    }

    /// A login's sessions spread over the backends that take sessions: where one has at least two
    /// more of them than another (a backend back from a drain or an outage, one added), idle ones
    /// move to the one with fewest, at most half the difference per sweep, between commands and in
    /// their state (a session holding a connection gives it up first; one busy or pinned stays).
    func sweepRebalancing() {
        if !migrating.isEmpty {
            for (id, member) in migrating where member.session?.tryRequestedMove() != false { migrating[id] = nil }
        }
        guard let backends, !members.isEmpty, backends.count > 1 else { return }
        var byLogin: [Key: [Int: Int]] = [:]  // (keys on backend 0)
        for (key, sessions) in members { byLogin[key.on(backend: 0), default: [:]][key.backend] = sessions.count }
        guard byLogin.values.contains(where: { $0.values.reduce(0, +) >= 2 }) else { return }
        let usable = backends.takingSessions()
        guard usable.count > 1 else { return }
        for (login, counts) in byLogin {
            let here = usable.map { ($0, counts[$0] ?? 0) }
            guard let most = here.max(by: { $0.1 < $1.1 }), let least = here.min(by: { $0.1 < $1.1 }), most.1 - least.1 >= 2 else { continue }
            var moving = (most.1 - least.1) / 2
            for member in (members[login.on(backend: most.0)] ?? [:]).values {
                guard moving > 0 else { break }
                if member.session?.moveForBalance(to: least.0) == true {
                    moving -= 1
                    shared.count("rebalance", backend: least.0)
                }
            }
        }
    }

    /// A MIGRATE the session could not carry out at once (busy, pinned): tried again at each sweep.
    func migrationPending(_ session: ClientChannelHandler) {
        migrating[ObjectIdentifier(session)] = Member(session: session)
        startSweeping()
    }

    func leave(_ key: Key, _ session: ClientChannelHandler) {
        let id = ObjectIdentifier(session)
        members[key]?[id] = nil
        migrating[id] = nil
        released(key, session)
        cancelWaiting(id)
        if members[key]?.isEmpty == true {
            members[key] = nil
            if holders[key]?.isEmpty == true { holders[key] = nil }
            if waiters[key]?.isEmpty == true { waiters[key] = nil }
        }
    }

    /// A member took a connection of `key` (it may be asked to give it up).
    func holding(_ key: Key, _ session: ClientChannelHandler) {
        holders[key, default: [:]][ObjectIdentifier(session)] = Member(session: session)
    }

    /// A member let its connection go (gave it up, lost it, or ended).
    func released(_ key: Key, _ session: ClientChannelHandler) {
        // (changed in place, and kept when emptied while the login has sessions (see `leave`):
        // this runs at every hand-over)
        holders[key]?.removeValue(forKey: ObjectIdentifier(session))
    }

    /// A connection the login opened ended (closed by either side).
    func connectionEnded(_ key: Key) {
        let n = connectionCounts[key, default: 0] - 1
        connectionCounts[key] = n > 0 ? n : nil
    }

    // MARK: the proxy's own logins

    /// A connection being opened for `key` (counted already), which the proxy logs in itself;
    /// `body` gets it once logged in (nil: it failed).
    func loggingIn(_ handler: BackendChannelHandler, _ key: Key, _ driver: ServerLoginDriver, address: ProxyAddress, localSocket: Bool,
                   tlsContext: NIOSSLContext?, serverHostname: String?, reserved: Bool = false, _ body: ((Entry?) -> Void)?) {
        let entry = Entry(handler: handler, key: key, reset: ServerLoginReset(login: driver.login, challenge: []),
                          address: address, backendTLS: driver.tls, localSocket: localSocket)
        entry.reserved = reserved
        entry.loggingIn = driver
        entry.tlsContext = tlsContext
        entry.serverHostname = serverHostname
        entry.waiter = body
        entries[key, default: []].append(entry)
        byHandler[ObjectIdentifier(handler)] = entry
        shared.adjust(key, resetting: 1)
        handler.owner = nil
        handler.corePool = self
        startSweeping()
    }

    /// The connect for a login failed.
    func loginConnectFailed(_ handler: BackendChannelHandler, _ error: Error) {
        guard let entry = byHandler[ObjectIdentifier(handler)] else { return }
        if let key = handler.countedKey {
            handler.countedKey = nil
            connectionEnded(key)
        }
        drop(entry, "cannot connect: \(error)", event: "login_failed")
    }

    /// Bytes from a server the proxy logs into.
    func loginProgressed(_ entry: Entry, _ data: ByteBuffer) {
        guard var driver = entry.loggingIn else { return }
        let step = driver.received(data)
        entry.loggingIn = driver
        let handler = entry.handler
        switch step {
        case .wait:
            return
        case .send(let bytes):
            handler.writeAndFlush(bytes)
        case .startTLS(let request, let then):
            guard let context = entry.tlsContext else { return drop(entry, "no TLS context for the backend", event: "login_failed") }
            do {
                try handler.startTLS(request: request, context: context, serverHostname: entry.serverHostname)
            } catch {
                return drop(entry, "cannot start TLS: \(error)", event: "login_failed")
            }
            handler.writeAndFlush(then)
        case .done(let challenge, let compression):
            if let compression {
                do { try handler.startCompression(compression, early: nil) } catch {
                    return drop(entry, "cannot start compression: \(error)", event: "login_failed")
                }
            }
            var login = driver.login
            login.capabilities = driver.capabilities
            entry.loggingIn = nil
            entry.tlsContext = nil
            entry.reset = ServerLoginReset(login: login, challenge: challenge)
            handler.serverLogin = login
            handler.serverChallenge = challenge
            handler.serverThreadID = driver.connectionID
            entry.ready = true
            entry.idleSince = .now()
            shared.adjust(entry.key, ready: 1, resetting: -1)
            shared.count("login_ok", backend: entry.key.backend)
            if let waiter = entry.waiter {
                entry.waiter = nil
                remove(entry)
                waiter(entry)
            } else if let waiter = takeWaiter(entry.key) {
                remove(entry)
                waiter.body(entry)
            }
        case .failed(let reason):
            drop(entry, reason, event: "login_failed")
        }
    }

    /// Idle connections of `key` that are ready or being made (`--proxy-pool-min-idle`).
    func idleOrComing(_ key: Key) -> Int {
        entries[key]?.count { $0.ready || $0.loggingIn != nil } ?? 0
    }
}
