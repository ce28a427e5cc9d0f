import Logging
import NIOConcurrencyHelpers
import NIOCore
import MySQLWire
import ProxyCore

/// The servers' accounts, read with a service account (`--proxy-users-user`, needing only
/// `SELECT` on `mysql.global_priv`) from the first backend that answers, when the proxy starts and
/// then every `--proxy-users-refresh-interval`. What it reads is kept in memory only, and shown
/// without hashes (the admin interface's `accounts`). It is the ground for authenticating clients
/// in the proxy (`--proxy-auth=proxy`), which also greets clients as the server it read them from
/// did (its version and capabilities), and asks for a reading after a failed login (at most one a
/// second), so that an account created or changed since shows at the client's next attempt.
final class AccountLoader: Sendable {
    struct Settings: Sendable {
        var user: String
        var password: String
        var interval: TimeAmount
        var timeout: TimeAmount
    }

    /// User, host, the authentication plugin and its string, locked, the password's last change
    /// (0: expired), the TLS requirement; roles are not accounts.
    static let query = """
        SELECT User, Host, IFNULL(JSON_VALUE(Priv, '$.plugin'), 'mysql_native_password'), \
        IFNULL(JSON_VALUE(Priv, '$.authentication_string'), ''), IFNULL(JSON_VALUE(Priv, '$.account_locked'), '0'), \
        IFNULL(JSON_VALUE(Priv, '$.password_last_changed'), '1'), IFNULL(JSON_VALUE(Priv, '$.ssl_type'), '0'), \
        @@skip_name_resolve \
        FROM mysql.global_priv WHERE IFNULL(JSON_VALUE(Priv, '$.is_role'), '0') <> '1'
        """

    private let settings: Settings
    private let backends: BackendPool
    private let group: EventLoopGroup
    private let logger: Logger
    private let tls: TLSContexts?
    private let metrics: MetricsExporter?
    private let state = NIOLockedValueBox(State())
    private struct State {
        var table: AccountTable?
        var greeting: HandshakeV10?
        var resolvesNames = false
        var task: RepeatedTask?
        var refreshing = false
        var lastRefresh: NIODeadline?
        /// When the last reading that ended had started.
        var lastCompletedStart: NIODeadline?
        /// A reading is scheduled (the last one started less than a second ago).
        var scheduled = false
        /// The service account's connection, kept between readings.
        fileprivate var session: KeptSession?
        /// Logins waiting for a reading that starts after `since`.
        var waiters: [(since: NIODeadline, done: @Sendable () -> Void)] = []
        var lastProblem: String?
        var refreshes = 0
    }

    init(settings: Settings, backends: BackendPool, group: EventLoopGroup, logger: Logger, tls: TLSContexts?, metrics: MetricsExporter?) {
        self.metrics = metrics
        self.settings = settings
        self.backends = backends
        self.group = group
        self.logger = logger
        self.tls = tls
    }

    /// The accounts as last read (nil until a backend has answered).
    var table: AccountTable? { state.withLockedValue { $0.table } }

    /// The accounts and the greeting of the server they were read from, together.
    var snapshot: (table: AccountTable, greeting: HandshakeV10)? {
        state.withLockedValue { s in s.table.flatMap { t in s.greeting.map { (t, $0) } } }
    }

    /// The server resolves client addresses to names (`skip_name_resolve` off): it then knows a
    /// client on a loopback address as `localhost`, without asking DNS.
    var resolvesNames: Bool { state.withLockedValue { $0.resolvesNames } }

    /// A login the proxy would refuse (`since`: when it saw the attempt): the accounts are read
    /// again, and `done` runs once a reading that started after `since` has ended (at once when
    /// one has), so that an account created or changed just before counts, as on the server.
    /// Readings start at most once a second: a storm of wrong passwords waits for the next one
    /// and costs the server one query a second.
    func refreshed(since: NIODeadline, _ done: @escaping @Sendable () -> Void) {
        let now = NIODeadline.now()
        enum Next { case now, wait, later(TimeAmount) }
        let next = state.withLockedValue { s -> Next? in
            guard s.task != nil else { return nil }
            if let completed = s.lastCompletedStart, completed >= since { return nil }
            s.waiters.append((since, done))
            if s.refreshing || s.scheduled { return .wait }
            if let last = s.lastRefresh, now - last < .seconds(1) {
                s.scheduled = true
                return .later(.seconds(1) - (now - last))
            }
            return .now
        }
        guard let next else { return done() }
        let loop = group.next()
        switch next {
        case .now: loop.execute { _ = self.refresh(on: loop) }
        case .later(let delay):
            loop.scheduleTask(in: delay) {
                self.state.withLockedValue { $0.scheduled = false }
                _ = self.refresh(on: loop)
            }
        case .wait: break
        }
    }

    func start() {
        let loop = group.next()
        let task = loop.scheduleRepeatedAsyncTask(initialDelay: .zero, delay: settings.interval) { [self] _ in
            refresh(on: loop)
        }
        state.withLockedValue { $0.task = task }
    }

    func stop() {
        let kept = state.withLockedValue { s -> KeptSession? in
            s.task?.cancel()
            s.task = nil
            defer { s.session = nil }
            return s.session
        }
        kept.map(Self.close)
    }

    /// Reads the accounts from the first backend that is not down and answers; the table stays
    /// as it was when none does.
    private func refresh(on loop: EventLoop) -> EventLoopFuture<Void> {
        let startedAt = NIODeadline.now()
        let started = state.withLockedValue { s -> Bool in
            guard !s.refreshing else { return false }
            s.refreshing = true
            s.lastRefresh = startedAt
            return true
        }
        guard started else { return loop.makeSucceededVoidFuture() }
        return readAccounts(on: loop).always { _ in
            // the logins waiting for a reading that started after they failed are answered; those
            // that failed since wait for the next one
            let (answered, more) = self.state.withLockedValue { s -> ([@Sendable () -> Void], Bool) in
                s.refreshing = false
                s.lastCompletedStart = startedAt
                let due = s.waiters.filter { $0.since <= startedAt }.map(\.done)
                s.waiters.removeAll { $0.since <= startedAt }
                return (due, !s.waiters.isEmpty)
            }
            answered.forEach { $0() }
            if more, let first = self.state.withLockedValue({ $0.waiters.isEmpty ? nil : $0.waiters.removeFirst() }) {
                self.refreshed(since: first.since, first.done)
            }
        }
    }

    private func readAccounts(on loop: EventLoop) -> EventLoopFuture<Void> {
        let candidates = backends.snapshot().filter { $0.state != .down } + backends.snapshot().filter { $0.state == .down }
        func attempt(_ index: Int, _ problems: [String]) -> EventLoopFuture<Void> {
            guard index < candidates.count else {
                note(problem: problems.joined(separator: "; "))
                return loop.makeSucceededVoidFuture()
            }
            let backend = candidates[index]
            return query(on: backend.address)
                .hop(to: loop)
                .flatMap { outcome in
                    switch outcome {
                    case .rows(let rows, let greeting):
                        let resolves = rows.first.map { $0.count == 8 && $0[7] == "0" } ?? false
                        self.loaded(AccountTable(rows.compactMap(Self.account)), greeting: greeting, resolvesNames: resolves, from: backend)
                        return loop.makeSucceededVoidFuture()
                    case .failed(let reason):
                        return attempt(index + 1, problems + ["\(backend.address): \(reason)"])
                    }
                }
        }
        return attempt(0, [])
    }

    /// The accounts query on `address`: on the service account's connection kept from the last
    /// reading when it is to that server and still open (a reading then costs the server one
    /// query, not a login: its `Connections` stays put), else on a new one, kept in its place.
    private func query(on address: ProxyAddress) -> EventLoopFuture<BackendQuery.Outcome> {
        let kept = state.withLockedValue { s -> KeptSession? in
            defer { s.session = nil }
            return s.session
        }
        func fresh() -> EventLoopFuture<BackendQuery.Outcome> {
            let opened = BackendQuery.open(Self.query, on: address, user: settings.user, password: settings.password,
                                           tls: BackendQuery.tlsPlan(for: address, tls: tls), timeout: settings.timeout, group: group,
                                           keepOpen: true)
            return opened.outcome.map { outcome in
                if case .rows = outcome { self.keep(KeptSession(handler: opened.handler, address: address, loop: opened.outcome.eventLoop)) }
                return outcome
            }
        }
        guard let kept, kept.address == address else {
            kept.map(Self.close)
            return fresh()
        }
        return kept.loop.flatSubmit { () -> EventLoopFuture<BackendQuery.Outcome> in
            guard kept.handler.isIdle else { return kept.loop.makeSucceededFuture(.failed("closed")) }
            return kept.handler.query(Self.query)
        }.flatMap { outcome in
            if case .rows = outcome {
                self.keep(kept)
                return kept.loop.makeSucceededFuture(outcome)
            }
            Self.close(kept)
            return fresh()  // the kept connection went away (the server's wait_timeout, a restart)
        }
    }

    private struct KeptSession: @unchecked Sendable {  // the handler is only touched on `loop`
        var handler: BackendQueryHandler
        var address: ProxyAddress
        var loop: EventLoop
    }

    private func keep(_ session: KeptSession) {
        let replaced = state.withLockedValue { s -> KeptSession? in
            defer { s.session = s.task == nil ? nil : session }
            return s.task == nil ? session : s.session
        }
        replaced.map(Self.close)
    }

    private static func close(_ session: KeptSession) {
        session.loop.execute { session.handler.close() }
    }

    static func account(_ row: [String?]) -> Account? {
        guard row.count == 8, let user = row[0], let host = row[1] else { return nil }
        let tls: Account.TLSRequirement
        switch row[6] {
        case "1": tls = .any
        case "2": tls = .x509
        case "3": tls = .specified
        default: tls = .none
        }
        return Account(user: user, host: host, methods: [(row[2] ?? "mysql_native_password", row[3] ?? "")],
                       locked: row[4] == "1", passwordExpired: row[5] == "0", tls: tls)
    }

    private func loaded(_ table: AccountTable, greeting: HandshakeV10?, resolvesNames: Bool, from backend: BackendInfo) {
        metrics?.accountsRefreshed(count: table.accounts.count)
        let (first, recovered) = state.withLockedValue { state -> (Bool, Bool) in
            defer {
                state.table = table
                state.greeting = greeting ?? state.greeting
                state.resolvesNames = resolvesNames
                state.lastProblem = nil
                state.refreshes += 1
            }
            return (state.table == nil, state.lastProblem != nil)
        }
        if first || recovered {
            logger.notice("read \(table.accounts.count) accounts from backend \(backend.address) with --proxy-users-user")
        } else {
            logger.debug("read \(table.accounts.count) accounts from backend \(backend.address)")
        }
    }

    private func note(problem: String) {
        metrics?.accountsRefreshed(count: nil)
        let repeated = state.withLockedValue { state -> Bool in
            defer { state.lastProblem = problem }
            return state.lastProblem == problem
        }
        if !repeated { logger.warning("cannot read the accounts with --proxy-users-user from any backend: \(problem)") }
    }

    /// What the admin interface lists: the accounts in the order MariaDB searches them, without
    /// their authentication strings.
    func rows() -> [[(String, String)]] { Self.rows(table) }

    static func rows(_ table: AccountTable?) -> [[(String, String)]] {
        guard let table else { return [] }
        return table.accounts.map { account in
            [("user", account.user), ("host", account.host.text), ("plugin", account.methods.map(\.plugin).joined(separator: ",")),
             ("locked", account.locked ? "yes" : "no"), ("password_expired", account.passwordExpired ? "yes" : "no"),
             ("require", "\(account.tls)")]
        }
    }
}
