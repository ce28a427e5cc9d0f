import Atomics
import NIOConcurrencyHelpers
import Logging
import NIOCore
import ProxyCore
import ProxyScripting

/// What every connection of one proxy shares.
final class ProxyContext: Sendable {
    let configuration: ProxyConfiguration
    let backends: BackendPool
    let statistics: ProxyStatistics
    let connector: BackendConnector
    let logger: Logger
    /// The Lua script every connection runs, if one is configured.
    let scriptEngine: ScriptEngine?
    /// TLS contexts for clients and backends (nil: none, as on the admin interface).
    let tls: TLSContexts?
    /// What the admin interface lists (nil on the admin interface itself).
    let registry: ConnectionRegistry?
    /// The metrics endpoint's exporter, for the few events it records itself (nil without one).
    let metrics: MetricsExporter?
    /// `--query-log`'s writer (nil without one).
    let queryLog: QueryLog?
    /// What connections record about each command: durations for the metrics, statement text
    /// for the query log, nothing (and no clock read) without either.
    let recording: ConnectionMachine.Recording
    private let lastConnectionID = ManagedAtomic<UInt64>(0)
    private let stopping = ManagedAtomic<Bool>(false)
    private let sweepers = NIOLockedValueBox<[ObjectIdentifier: NIOLoopBound<TimeoutSweeper>]>([:])
    /// Client connections per client address (all, and those not logged in yet), kept only with
    /// --max-connections-per-address or --max-unauthenticated-connections-per-address.
    private let perAddress = NIOLockedValueBox<[String: (all: Int, unauthenticated: Int)]>([:])
    /// The machines' configurations, by kind of connection (see `machineConfiguration`).
    private let machineConfigurations = NIOLockedValueBox<[Int: ConnectionMachine.SharedConfiguration]>([:])
    /// Warnings that come in storms, written once per interval (see `RateLimitedLog`).
    let stormLog = RateLimitedLog()
    /// Failed logins by address, whose new connections wait (the admin interface's).
    let failedLogins: FailedLogins?
    /// The greeting always offers TLS when the proxy has a certificate (the admin interface, which
    /// has no backend whose greeting to follow).
    let offersTLSAlways: Bool
    /// The servers' accounts (`--proxy-auth=proxy` greets and verifies clients with them).
    let accounts: AccountLoader?
    /// What the loops' core pools share (nil: no pool).
    let corePool: CorePool.Shared?

    init(configuration: ProxyConfiguration, backends: BackendPool, statistics: ProxyStatistics,
         connector: BackendConnector, logger: Logger, scriptEngine: ScriptEngine? = nil, tls: TLSContexts? = nil,
         registry: ConnectionRegistry? = nil, metrics: MetricsExporter? = nil, queryLog: QueryLog? = nil,
         failedLogins: FailedLogins? = nil, offersTLSAlways: Bool = false, accounts: AccountLoader? = nil) {
        self.failedLogins = failedLogins
        self.accounts = configuration.authentication == .proxy ? accounts : nil
        self.corePool = configuration.authentication == .proxy && accounts != nil && configuration.poolMaximum > 0
            ? CorePool.Shared(settings: .init(maximum: configuration.poolMaximum, idleTimeout: configuration.poolIdleTimeout,
                                              maximumLifetime: configuration.poolMaximumLifetime))
            : nil
        self.offersTLSAlways = offersTLSAlways
        self.metrics = metrics
        self.queryLog = queryLog
        if let queryLog {
            recording = .text(limit: queryLog.settings.textLimit)
        } else {
            recording = metrics == nil ? .off : .durations
        }
        self.scriptEngine = scriptEngine
        self.registry = registry
        self.tls = tls
        self.configuration = configuration
        self.backends = backends
        self.statistics = statistics
        self.connector = connector
        self.logger = logger
    }

    func nextConnectionID() -> UInt64 {
        lastConnectionID.wrappingIncrementThenLoad(ordering: .relaxed)
    }

    /// Whether connections are counted per address at all.
    var countsPerAddress: Bool {
        configuration.maxConnectionsPerAddress > 0 || configuration.maxUnauthenticatedConnectionsPerAddress > 0
    }

    /// A client connection counted towards the limits: what is uncounted when it logs in and
    /// when it ends.
    struct Admission {
        /// The address it counts for (nil: not counted per address).
        var address: String?
        /// It still counts as not logged in.
        var unauthenticated = false
    }

    /// Whether a new client may be served (`active`: connections open, itself included; `address`:
    /// its IP address): its admission, or why it is refused (--max-connections and the
    /// per-address limits), nothing counted then.
    func admit(active: Int, address: String?) -> Result<Admission, Refusal> {
        let limit = configuration.maxConnections
        if limit > 0 && active > limit {
            return .failure(Refusal(reason: "\(active - 1) clients are connected, --max-connections is \(limit)"))
        }
        guard countsPerAddress, let address else { return .success(Admission()) }
        if let refusal = admit(address: address) { return .failure(Refusal(reason: refusal)) }
        return .success(Admission(address: address, unauthenticated: true))
    }

    struct Refusal: Error {
        var reason: String
    }

    /// The connection logged in: it no longer counts towards its address's limit of connections
    /// that have not.
    func loggedIn(_ admission: inout Admission) {
        guard admission.unauthenticated, let address = admission.address else { return }
        admission.unauthenticated = false
        loggedIn(address: address)
    }

    /// The connection ended.
    func release(_ admission: inout Admission) {
        guard let address = admission.address else { return }
        release(address: address, loggedIn: !admission.unauthenticated)
        admission = Admission()
    }

    /// A connection's commands that ended: into its loop's histograms (`backend`: the one that
    /// answered, unless the script did), and the query log.
    func record(_ records: [ConnectionMachine.CommandRecord], counters: LoopStatistics, backend: Int?,
                session: ConnectionMachine.Session, described: inout ConnectionDescription) {
        for record in records {
            counters.commandCompleted(CommandKind(record.command), backend: record.answeredByScript ? nil : backend,
                                      nanoseconds: record.nanoseconds)
            guard let queryLog else { continue }
            let entry = QueryLog.Entry(record: record, connection: described.id, user: session.username, database: session.database,
                                       client: described.clientText(), backend: record.answeredByScript ? nil : described.backendText())
            if !queryLog.append(entry) { counters.add(.queryLogDropped) }
        }
    }

    /// What a connection's machine is told about it (`hooks`: what its script defines): made
    /// once per kind of connection and shared by all of that kind.
    func machineConfiguration(for channel: Channel, hooks: ScriptHooks) -> ConnectionMachine.SharedConfiguration {
        var local = false
        if case .unixDomainSocket = channel.localAddress { local = true }
        let key = hooks.rawValue << 1 | (local ? 1 : 0)
        return machineConfigurations.withLockedValue { made in
            if let shared = made[key] { return shared }
            let shared = ConnectionMachine.SharedConfiguration(makeMachineConfiguration(localSocket: local, hooks: hooks))
            made[key] = shared
            return shared
        }
    }

    private func makeMachineConfiguration(localSocket: Bool, hooks: ScriptHooks) -> ConnectionMachine.Configuration {
        var c = ConnectionMachine.Configuration()
        c.compression = configuration.compression
        c.maximumPacketLength = configuration.maxAssembledPacketSize
        c.resultsetBufferLimit = configuration.resultsetBufferLimit
        c.recording = recording
        c.hooks = hooks
        c.poolsServers = corePool != nil
        c.tracksSessions = corePool != nil && configuration.multiplex
        c.multiplexes = c.tracksSessions
        guard let tls else { return c }
        c.tls.offer = tls.forClients == nil ? .never : (offersTLSAlways ? .always : tls.client.offer)
        c.tls.requireSecureTransport = tls.client.requireSecureTransport
        c.tls.backend = tls.backendProblem == nil ? tls.backend.mode : .off
        c.tls.pinnedServerKey = tls.backend.serverPublicKeyPEM
        c.tls.trustUnverifiedBackends = tls.backend.trustUnverifiedWithPasswords
        c.tls.localSocket = localSocket
        return c
    }

    /// Counts a new client connection from `address`, not logged in yet: why it is refused
    /// instead (and nothing counted) when that address is at one of its limits.
    private func admit(address: String) -> String? {
        let all = configuration.maxConnectionsPerAddress
        let unauthenticated = configuration.maxUnauthenticatedConnectionsPerAddress
        return perAddress.withLockedValue { counts in
            var n = counts[address, default: (0, 0)]
            if all > 0 && n.all >= all {
                return "\(address) has \(all) connections already (--max-connections-per-address)"
            }
            if unauthenticated > 0 && n.unauthenticated >= unauthenticated {
                return "\(address) has \(unauthenticated) connections that have not logged in yet (--max-unauthenticated-connections-per-address)"
            }
            n.all += 1
            n.unauthenticated += 1
            counts[address] = n
            return nil
        }
    }

    private func loggedIn(address: String) {
        perAddress.withLockedValue { counts in
            guard var n = counts[address] else { return }
            n.unauthenticated = max(0, n.unauthenticated - 1)
            counts[address] = n
        }
    }

    private func release(address: String, loggedIn: Bool) {
        perAddress.withLockedValue { counts in
            guard var n = counts[address] else { return }
            n.all -= 1
            if !loggedIn { n.unauthenticated = max(0, n.unauthenticated - 1) }
            counts[address] = n.all > 0 ? n : nil
        }
    }

    /// Set when a shutdown begins: new connections are closed at once.
    var isStopping: Bool {
        get { stopping.load(ordering: .relaxed) }
        set { stopping.store(newValue, ordering: .relaxed) }
    }

    /// Runs `body` on every event loop's sweeper, on that loop, and waits for all of them.
    func forEachSweeper(_ body: @escaping @Sendable (TimeoutSweeper) -> Void) async {
        let all = sweepers.withLockedValue { Array($0.values) }
        for bound in all {
            try? await bound.eventLoop.submit { body(bound.value) }.get()
        }
    }

    /// The timeout sweeper of the calling event loop, which also knows every connection on it.
    func sweeper(for eventLoop: EventLoop) -> TimeoutSweeper {
        let key = ObjectIdentifier(eventLoop as AnyObject)
        return sweepers.withLockedValue { all in
            if let existing = all[key] { return existing }
            let created = NIOLoopBound(TimeoutSweeper(eventLoop: eventLoop, readTimeout: configuration.readTimeout,
                                                      writeTimeout: configuration.writeTimeout,
                                                      loginTimeout: configuration.loginTimeout,
                                                      greetingTimeout: configuration.backends.isEmpty ? nil : configuration.backendGreetingTimeout,
                                                      backends: backends, corePool: corePool),
                                       eventLoop: eventLoop)
            all[key] = created
            return created
        }.value
    }
}
