import MySQLWire
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import ProxyCore

/// Server connections the proxy logged in itself (`--proxy-auth=proxy`), kept when their client
/// quits and handed to the next client session of the same login: no TCP connect, greeting,
/// login or server thread per client. One per event loop (a connection serves clients of its
/// loop); `--proxy-pool-max` bounds the connections all loops keep per backend.
///
/// A connection comes back through a reset (`ServerLoginReset`: COM_CHANGE_USER to the login it
/// was made for), which ends everything of the session before; only then may another session
/// take it. A session that arrives while the reset runs waits for it instead of opening a
/// connection of its own. A connection is only given to a session whose login is the same user,
/// password, database, character set, client-side TLS and session-affecting capabilities.
final class CorePool {
    struct Key: Hashable {
        var backend: Int
        /// The login (one reference: a key is copied at every hand-over); of it the key compares
        /// the user, password, database, character set, session capabilities, client-side TLS,
        /// compression and account, not the server's capabilities or the connection attributes.
        private let login: ConnectionMachine.ServerLogin

        var user: String { login.user }
        var database: String { login.database }

        /// The key's hash, computed once: the pool looks a key up several times per connection.
        private var hash = 0

        static func == (a: Key, b: Key) -> Bool {
            guard a.hash == b.hash && a.backend == b.backend else { return false }
            let (x, y) = (a.login, b.login)
            return x.isCopy(of: y) || x.user == y.user && x.database == y.database && x.characterSet == y.characterSet
                && x.sessionCapabilities == y.sessionCapabilities && x.credential == y.credential && x.clientTLS == y.clientTLS
                && x.compression == y.compression && x.account == y.account
        }

        func hash(into hasher: inout Hasher) { hasher.combine(hash) }

        /// The server login's account (host pattern) is part of it: with
        /// --proxy-backend-proxy-protocol the server knows the session by the address of the
        /// client it was opened for, so only a client of the same account may take it over.
        init(backend: Int, login: ConnectionMachine.ServerLogin) {
            self.backend = backend
            self.login = login
            rehash()
        }

        /// The same login's key on backend `index`.
        func on(backend index: Int) -> Key {
            var key = self
            key.backend = index
            key.rehash()
            return key
        }

        private mutating func rehash() {
            var hasher = Hasher()
            hasher.combine(backend)
            hasher.combine(login.user)
            hasher.combine(login.database)
            hasher.combine(login.characterSet)
            hasher.combine(login.sessionCapabilities)
            hasher.combine(login.credential)
            hasher.combine(login.clientTLS)
            hasher.combine(login.compression)
            hasher.combine(login.account)
            hash = hasher.finalize()
        }
    }

    /// A pooled connection.
    final class Entry {
        let handler: BackendChannelHandler
        let key: Key
        var reset: ServerLoginReset
        let address: ProxyAddress
        let backendTLS: Bool
        let localSocket: Bool
        var idleSince = NIODeadline.now()
        /// The reset is done: a session may take it.
        var ready = false
        var collector = PacketCollector(maximumPacketLength: 1 << 16)
        /// The OK of a COM_RESET_CONNECTION sent when the connection was last taken comes first
        /// (its client quit before it came).
        var resetOKsToSkip = 0
        /// A session waiting for the reset (nil: the reset failed).
        var waiter: ((Entry?) -> Void)?
        let resetStarted = NIODeadline.now()
        /// Multiplexing: the state the session that gave the connection up left it in (nil: it
        /// was reset, its trackers are off), and that session.
        var parkedState: SessionState?
        /// The binary prepared statements it holds for the sessions of its login (multiplexing).
        var statements = ServerStatements()
        var parkedBy: ObjectIdentifier?
        /// It holds one of the backend's places in the pool (`Shared.reserve`); a connection a
        /// session gave up between commands counts against its login's cap instead.
        var reserved = true
        /// Multiplexing: the proxy logs this new connection in itself (+Multiplex), over TLS
        /// with this context when the login had TLS.
        var loggingIn: ServerLoginDriver?
        var tlsContext: NIOSSLContext?
        var serverHostname: String?

        init(handler: BackendChannelHandler, key: Key, reset: ServerLoginReset, address: ProxyAddress, backendTLS: Bool, localSocket: Bool) {
            self.handler = handler
            self.key = key
            self.reset = reset
            self.address = address
            self.backendTLS = backendTLS
            self.localSocket = localSocket
        }
    }

    /// How long a reset may take before the connection is given up.
    static let resetTimeout = TimeAmount.seconds(5)

    struct Settings: Sendable {
        /// Connections kept per backend, over all event loops (0: no pool).
        var maximum: Int
        var idleTimeout: TimeAmount
        var maximumLifetime: TimeAmount
    }

    /// What every loop's pool shares: how many connections each backend has pooled, and the
    /// counts the metrics and the admin interface show.
    final class Shared: Sendable {
        let settings: Settings
        private let counts = NIOLockedValueBox<Counts>(Counts())
        struct Counts {
            var pooled: [Int: Int] = [:]
            var events: [EventKey: Int] = [:]
            /// Per backend, user and database: connections ready and being reset.
            var logins: [Login: (ready: Int, resetting: Int)] = [:]
            /// Multiplexing: sessions pinned to their server connection now, per reason.
            var pins: [String: Int] = [:]
        }

        /// A session's pins changed (multiplexing).
        func pinsChanged(from old: SessionState.Pins, to new: SessionState.Pins) {
            guard old != new else { return }
            counts.withLockedValue { c in
                for (pin, name) in SessionState.Pins.names {
                    if old.contains(pin) && !new.contains(pin) { c.pins[name, default: 0] -= 1 }
                    if new.contains(pin) && !old.contains(pin) { c.pins[name, default: 0] += 1 }
                }
            }
        }
        struct EventKey: Hashable {
            var backend: Int
            /// A literal (`checkout_hit`, ...), built by nobody per event.
            var event: String

            /// Hashed by its length, not its text (counted at every hand-over): the few names
            /// that share a length are told apart by ==, which compares literals by identity.
            func hash(into hasher: inout Hasher) {
                hasher.combine(backend)
                hasher.combine(event.utf8.count)
            }
        }
        struct Login: Hashable {
            var backend: Int
            var user: String
            var database: String
        }

        init(settings: Settings) { self.settings = settings }

        func reserve(_ backend: Int) -> Bool {
            counts.withLockedValue { c in
                let n = c.pooled[backend, default: 0]
                guard n < settings.maximum else { return false }
                c.pooled[backend] = n + 1
                return true
            }
        }

        func unreserve(_ backend: Int) {
            counts.withLockedValue { c in c.pooled[backend] = max(0, c.pooled[backend, default: 0] - 1) }
        }

        /// Counts an event (`checkout_hit`, `checkout_waited`, `checkout_miss`, `reset_ok`, ...).
        func count(_ event: String, backend: Int) {
            counts.withLockedValue { c in c.events[EventKey(backend: backend, event: event), default: 0] += 1 }
        }

        var snapshot: Counts { counts.withLockedValue { $0 } }

        func adjust(_ key: Key, ready: Int = 0, resetting: Int = 0) {
            let login = Login(backend: key.backend, user: key.user, database: key.database)
            counts.withLockedValue { c in
                var n = c.logins[login, default: (0, 0)]
                n.ready += ready
                n.resetting += resetting
                c.logins[login] = n.ready <= 0 && n.resetting <= 0 ? nil : n
            }
        }

        /// What the admin interface lists (`SELECT * FROM pool`).
        func rows() -> [[(String, String)]] {
            snapshot.logins.sorted { ($0.key.backend, $0.key.user, $0.key.database) < ($1.key.backend, $1.key.user, $1.key.database) }
                .map { login, n in
                    [("backend_ndx", "\(login.backend + 1)"), ("user", login.user), ("db", login.database),
                     ("idle", "\(n.ready)"), ("resetting", "\(n.resetting)")]
                }
        }
    }

    let shared: Shared
    var entries: [Key: [Entry]] = [:]
    var byHandler: [ObjectIdentifier: Entry] = [:]

    // Multiplexing (+Multiplex): this loop's connections per login, the sessions waiting for
    // one, and the sessions that may give theirs up.
    var connectionCounts: [Key: Int] = [:]
    /// (a queue changed in place: taking its first waiter costs the same with one waiting or a thousand)
    var waiters: [Key: CircularBuffer<Waiter>] = [:]
    var waitingCount = 0
    var members: [Key: [ObjectIdentifier: Member]] = [:]
    /// The members that hold a connection now (at most the cap): the ones asked to give it up.
    var holders: [Key: [ObjectIdentifier: Member]] = [:]
    /// How many sessions (of any login) hold a connection they may give up now: while none
    /// does, a waiting session asks nobody.
    var mayGiveUpCount = 0
    /// Sessions MIGRATE asked to move that could not yet.
    var migrating: [ObjectIdentifier: Member] = [:]

    let eventLoop: EventLoop
    /// Runs the idle sweep while the pool holds connections.
    private var sweepTask: RepeatedTask?

    /// The backends (multiplexing: which drain).
    let backends: BackendPool?

    init(shared: Shared, eventLoop: EventLoop, backends: BackendPool? = nil) {
        self.shared = shared
        self.eventLoop = eventLoop
        self.backends = backends
    }

    enum Taken {
        case ready(Entry)
        /// Its reset is running: set `waiter`.
        case resetting(Entry)
        case none
    }

    /// A connection for `key`: one that is ready, else one whose reset runs and nobody waits
    /// for, else none.
    func take(_ key: Key) -> Taken {
        if let entry = takeReady(key) { return .ready(entry) }
        if let entry = entries[key]?.first(where: { $0.waiter == nil }) {
            shared.count("checkout_waited", backend: key.backend)
            return .resetting(entry)
        }
        shared.count("checkout_miss", backend: key.backend)
        return .none
    }

    /// A connection for `key` whose reset is done, if any (a script's `backend_ndx` takes only
    /// these: it does not wait).
    func takeReady(_ key: Key) -> Entry? {
        guard let entry = entries[key]?.first(where: { $0.ready }) else { return nil }
        remove(entry)
        shared.count("checkout_hit", backend: key.backend)
        return entry
    }

    /// Keeps a server connection whose client quit, and starts its reset; false when the pool is
    /// full (the caller closes it).
    func keep(_ handler: BackendChannelHandler, backend: Int, login: ConnectionMachine.ServerLogin, challenge: [UInt8],
              address: ProxyAddress, backendTLS: Bool, localSocket: Bool, sessionChangedUser: Bool) -> Bool {
        guard let created = handler.createdAt, NIODeadline.now() - created < shared.settings.maximumLifetime,
              shared.reserve(backend) else { return false }
        let reset = ServerLoginReset(login: login, challenge: challenge, sessionChangedUser: sessionChangedUser)
        let entry = Entry(handler: handler, key: Key(backend: backend, login: login), reset: reset, address: address,
                          backendTLS: backendTLS, localSocket: localSocket)
        if let (partial, oks) = handler.takeOverResetAnswer() {
            entry.resetOKsToSkip = oks
            entry.collector.append(partial)
        }
        entries[entry.key, default: []].append(entry)
        byHandler[ObjectIdentifier(handler)] = entry
        shared.adjust(entry.key, resetting: 1)
        handler.owner = nil
        handler.corePool = self
        handler.setReadsPaused(false)
        handler.writeAndFlush(reset.request())
        startSweeping()
        return true
    }

    func startSweeping() {
        guard sweepTask == nil else { return }
        let every = TimeAmount.nanoseconds(max(min(shared.settings.idleTimeout.nanoseconds / 4, 1_000_000_000), 10_000_000))
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        sweepTask = eventLoop.scheduleRepeatedTask(initialDelay: every, delay: every) { _ in bound.value.sweep() }
    }

    /// Bytes from a pooled connection: the reset's answers, or a server that speaks out of turn.
    func received(_ handler: BackendChannelHandler, _ data: ByteBuffer) {
        guard let entry = byHandler[ObjectIdentifier(handler)] else { return handler.close() }
        guard !entry.ready else { return drop(entry, "the server spoke while the connection was idle", event: "closed_by_server") }
        if entry.loggingIn != nil { return loginProgressed(entry, data) }
        entry.collector.append(data)
        do {
            while let packet = try entry.collector.next() {
                if entry.resetOKsToSkip > 0 {
                    entry.resetOKsToSkip -= 1
                    let first = packet.packet.payload.getInteger(at: packet.packet.payload.readerIndex, as: UInt8.self)
                    guard first == 0x00 else { return drop(entry, "the server refused COM_RESET_CONNECTION", event: "reset_failed") }
                    continue
                }
                switch entry.reset.received(packet.packet) {
                case .send(let bytes):
                    if bytes.readableBytes > 0 { handler.writeAndFlush(bytes) }
                case .done:
                    entry.ready = true
                    entry.idleSince = .now()
                    shared.adjust(entry.key, ready: 1, resetting: -1)
                    shared.count("reset_ok", backend: entry.key.backend)
                    if let waiter = entry.waiter {
                        remove(entry)
                        waiter(entry)
                    } else if let waiter = takeWaiter(entry.key) {
                        remove(entry)  // a session of the login waits for a connection
                        waiter.body(entry)
                    }
                    return
                case .failed(let reason):
                    return drop(entry, reason, event: "reset_failed")
                }
            }
        } catch {
            drop(entry, "\(error)", event: "reset_failed")
        }
    }

    /// A pooled connection closed.
    func ended(_ handler: BackendChannelHandler) {
        guard let entry = byHandler[ObjectIdentifier(handler)] else { return }
        drop(entry, "closed", event: "closed_by_server")
    }

    /// Closes connections idle past the idle timeout or older than the maximum lifetime.
    func sweep(now: NIODeadline = .now()) {
        // a reset the server does not answer (hung, or half gone) gives its place up, and whoever
        // waits for it opens a connection of its own
        for entry in byHandler.values where !entry.ready && now - entry.resetStarted >= Self.resetTimeout {
            drop(entry, "no answer to the reset", event: "reset_failed")
        }
        sweepWaiters(now: now)
        sweepDraining(now: now)
        sweepRebalancing()
        for entry in byHandler.values where entry.ready {
            // a connection a living session gave up stays while its login has no more than sessions
            if entry.parkedState != nil, connectionCounts[entry.key, default: 0] <= members[entry.key]?.count ?? 0 { continue }
            let old = entry.handler.createdAt.map { now - $0 >= shared.settings.maximumLifetime } ?? true
            if old || now - entry.idleSince >= shared.settings.idleTimeout {
                drop(entry, "idle", event: old ? "closed_lifetime" : "closed_idle")
            }
        }
        if byHandler.isEmpty && waitingCount == 0 && members.isEmpty {
            sweepTask?.cancel()
            sweepTask = nil
        }
    }

    func closeAll() {
        for entry in Array(byHandler.values) { drop(entry, "shutdown", event: "closed_shutdown") }
    }

    func remove(_ entry: Entry) {
        byHandler[ObjectIdentifier(entry.handler)] = nil
        if var list = entries[entry.key] {
            list.removeAll { $0 === entry }
            entries[entry.key] = list.isEmpty ? nil : list
        }
        entry.handler.corePool = nil
        if entry.reserved { shared.unreserve(entry.key.backend) }
        shared.adjust(entry.key, ready: entry.ready ? -1 : 0, resetting: entry.ready ? 0 : -1)
    }

    func drop(_ entry: Entry, _ reason: String, event: String) {
        guard byHandler[ObjectIdentifier(entry.handler)] === entry else { return }
        remove(entry)
        shared.count(event, backend: entry.key.backend)
        if entry.ready && event != "closed_by_server" { entry.handler.quit() } else { entry.handler.close() }
        if let waiter = entry.waiter {
            entry.waiter = nil
            waiter(nil)
        }
    }
}
