import Atomics
import NIOConcurrencyHelpers
import Logging
import NIOCore
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
    let recording: ConnectionStateMachine.Recording
    private let lastConnectionID = ManagedAtomic<UInt64>(0)
    private let stopping = ManagedAtomic<Bool>(false)
    private let sweepers = NIOLockedValueBox<[ObjectIdentifier: NIOLoopBound<TimeoutSweeper>]>([:])
    /// Client connections per client address, kept only with --max-connections-per-address.
    private let perAddress = NIOLockedValueBox<[String: Int]>([:])

    init(configuration: ProxyConfiguration, backends: BackendPool, statistics: ProxyStatistics,
         connector: BackendConnector, logger: Logger, scriptEngine: ScriptEngine? = nil, tls: TLSContexts? = nil,
         registry: ConnectionRegistry? = nil, metrics: MetricsExporter? = nil, queryLog: QueryLog? = nil) {
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

    /// Counts a new client connection from `address`: false (and nothing counted) when that
    /// address already has `--max-connections-per-address` of them.
    func admit(address: String) -> Bool {
        let limit = configuration.maxConnectionsPerAddress
        guard limit > 0 else { return true }
        return perAddress.withLockedValue { counts in
            let n = counts[address, default: 0]
            guard n < limit else { return false }
            counts[address] = n + 1
            return true
        }
    }

    /// A connection `admit` counted has ended.
    func release(address: String) {
        guard configuration.maxConnectionsPerAddress > 0 else { return }
        perAddress.withLockedValue { counts in
            let n = counts[address, default: 0] - 1
            counts[address] = n > 0 ? n : nil
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
                                                      loginTimeout: configuration.loginTimeout, backends: backends),
                                       eventLoop: eventLoop)
            all[key] = created
            return created
        }.value
    }
}
