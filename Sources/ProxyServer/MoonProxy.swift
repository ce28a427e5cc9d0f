#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import ProxyScripting
import ServiceLifecycle

/// A MoonProxy instance: a listener relaying MySQL connections to backends.
///
/// Start it, read `localAddress` (handy with port 0), and shut it down: a graceful shutdown stops
/// accepting, lets commands that are running finish (up to the grace period) and then closes every
/// connection. It also runs as a swift-service-lifecycle `Service`.
public final class MoonProxy: Sendable {
    public let configuration: ProxyConfiguration
    public let backends: BackendPool
    public let statistics: ProxyStatistics
    private let logger: Logger
    private let group: EventLoopGroup
    private let ownsGroup: Bool
    private let context: ProxyContext
    private let state = NIOLockedValueBox(ServerState())

    private struct ServerState {
        /// The proxy's listeners: one, or with several event loops and a TCP address, one per loop
        /// (see `bindPerLoop`). The first one's address is the proxy's.
        var serverChannels: [Channel] = []
        var adminChannel: Channel?
        var metricsChannel: Channel?
        var started = false
        var acceptsAtOnce = true
        var accepting = false
    }
    /// The admin interface's connections, script and counters (nil without `configuration.admin`).
    private let adminContext: ProxyContext?
    /// Active health checks, when configured.
    private let healthChecker: HealthChecker?
    /// The servers' accounts, with --proxy-users-user.
    private let accountLoader: AccountLoader?
    /// The metrics endpoint's exporter, with --metrics-address.
    private let metrics: MetricsExporter?
    /// The query log's writer, with --query-log.
    private let queryLog: QueryLog?
    /// Why the query log cannot be written (`start()` refuses to run then).
    private let queryLogProblem: String?

    public convenience init(configuration: ProxyConfiguration, eventLoopGroup: EventLoopGroup? = nil,
                logger: Logger = Logger(label: "moonproxy")) {
        self.init(configuration: configuration, eventLoopGroup: eventLoopGroup, logger: logger, connector: SocketBackendConnector())
    }

    init(configuration: ProxyConfiguration, eventLoopGroup: EventLoopGroup?, logger: Logger, connector: BackendConnector) {
        self.configuration = configuration
        self.logger = logger
        if let eventLoopGroup {
            self.group = eventLoopGroup
            self.ownsGroup = false
        } else {
            self.group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.eventThreads))
            self.ownsGroup = true
        }
        let statistics = ProxyStatistics()
        self.statistics = statistics
        let backends = BackendPool(configuration.backends, retryInterval: configuration.backendRetryInterval)
        self.backends = backends
        var engine: ScriptEngine? = nil
        if configuration.hasScript {
            var script = ScriptEngine.Configuration(scriptPath: configuration.luaScript, scriptSource: configuration.luaScript == nil ? configuration.luaScriptSource : nil)
            script.luaPath = configuration.luaPath
            script.luaCPath = configuration.luaCPath
            script.libraryDirectory = configuration.luaLibraryDirectory
            script.autoConfigDirectory = configuration.autoConfigDirectory
            script.resultsetBufferLimit = configuration.resultsetBufferLimit
            script.memoryLimit = configuration.luaMemoryLimit
            script.timeout = configuration.luaTimeout
            script.config = Self.scriptConfig(configuration)
            script.statistics = { Self.statisticsGroups(statistics, backends) }
            engine = ScriptEngine(configuration: script, backends: backends, logger: logger)
        }
        self.scriptEngine = engine
        var tls: TLSContexts? = nil
        var tlsProblem: String? = nil
        do {
            tls = try TLSContexts(client: configuration.clientTLS, backend: configuration.backendTLS, logger: logger)
            if let problem = tls?.backendProblem { tlsProblem = problem }
        } catch {
            tlsProblem = "\(error)"
        }
        self.tlsProblem = tlsProblem
        self.tls = tls
        let metrics = configuration.metricsAddress == nil ? nil : MetricsExporter(statistics: statistics, backends: backends, scriptEngine: engine)
        self.metrics = metrics
        if let interval = configuration.backendCheckInterval, let user = configuration.backendCheckUser {
            backends.enableActiveChecks()
            self.healthChecker = HealthChecker(
                settings: .init(interval: interval, user: user, password: configuration.backendCheckPassword,
                                timeout: max(configuration.connectTimeout, .seconds(1))),
                backends: backends, group: self.group, logger: logger, metrics: metrics, tls: tls)
        } else {
            self.healthChecker = nil
        }
        let group = self.group
        let accounts = configuration.accountsUser.map { user in
            AccountLoader(settings: .init(user: user, password: configuration.accountsPassword, interval: configuration.accountsRefreshInterval,
                                          timeout: max(configuration.connectTimeout, .seconds(1))),
                          backends: backends, group: group, logger: logger, tls: tls, metrics: metrics)
        }
        self.accountLoader = accounts
        var queryLog: QueryLog? = nil
        var queryLogProblem: String? = nil
        if let settings = configuration.queryLog {
            do {
                queryLog = try QueryLog(settings: settings, logger: logger)
            } catch {
                queryLogProblem = "\(error)"
            }
        }
        self.queryLog = queryLog
        self.queryLogProblem = queryLogProblem
        // what the admin interface lists; without it nobody reads it, and a connection costs less
        let registry = configuration.admin == nil ? nil : ConnectionRegistry()
        self.context = ProxyContext(configuration: configuration, backends: backends, statistics: statistics,
                                    connector: connector, logger: logger, scriptEngine: engine, tls: tls, registry: registry,
                                    metrics: metrics, queryLog: queryLog, accounts: accounts)
        let corePool = self.context.corePool
        metrics?.corePool.withLockedValue { $0 = corePool }
        if let admin = configuration.admin {
            var script = ScriptEngine.Configuration(scriptPath: admin.luaScript,
                                                    scriptSource: admin.luaScript == nil ? (admin.luaScriptSource ?? AdminInterface.defaultScript) : nil)
            script.luaPath = configuration.luaPath
            script.luaCPath = configuration.luaCPath
            script.libraryDirectory = configuration.luaLibraryDirectory
            script.config = Self.scriptConfig(configuration)
            script.memoryLimit = configuration.luaMemoryLimit
            script.timeout = configuration.luaTimeout
            script.prelude = AdminInterface.prelude(username: admin.username, password: admin.password)
            script.statistics = { Self.statisticsGroups(statistics, backends) }
            script.connections = { registry?.rows() ?? [] }
            script.accounts = { accounts?.rows() ?? [] }
            script.pool = { corePool?.rows() ?? [] }
            script.migrateConnection = { id, index in
                guard backends.takingSessions().contains(index) else {
                    return "backend \(index + 1) takes no sessions (no such backend, down, draining or read-only)"
                }
                return registry?.migrate(id, to: index) == true ? nil : "no multiplexed session has id \(id)"
            }
            script.drainBackend = { index, seconds, drain in
                drain ? backends.drain(index, within: .nanoseconds(Int64(seconds * 1e9))) : backends.undrain(index)
            }
            var adminLogger = logger
            adminLogger[metadataKey: "module"] = "admin"
            let adminEngine = ScriptEngine(configuration: script, backends: backends, logger: adminLogger)
            var adminProxy = configuration
            adminProxy.listenAddress = admin.address
            adminProxy.backends = []
            // TLS with the proxy's certificate, --require-secure-transport, and a growing wait for
            // addresses that keep failing to log in
            self.adminContext = ProxyContext(configuration: adminProxy, backends: BackendPool([], retryInterval: .seconds(5)),
                                             statistics: ProxyStatistics(), connector: connector, logger: adminLogger,
                                             scriptEngine: adminEngine, tls: tls, failedLogins: FailedLogins(), offersTLSAlways: true)
        } else {
            self.adminContext = nil
        }
    }

    /// The counters `chassis.get_stats()` and the admin's `stats` table show.
    static func statisticsGroups(_ statistics: ProxyStatistics, _ backends: BackendPool) -> [String: [(String, Int)]] {
        func name(_ c: ProxyStatistics.Counter) -> String {
            var out = ""
            for ch in "\(c)" {
                if ch.isUppercase { out += "_" + ch.lowercased() } else { out.append(ch) }
            }
            return out
        }
        let proxy = ProxyStatistics.Counter.allCases.map { (name($0), statistics.value($0)) }
        return ["proxy": proxy]
    }

    /// The script every connection runs, if one is configured.
    public let scriptEngine: ScriptEngine?
    private let tls: TLSContexts?
    /// Why TLS cannot be set up as configured (`start()` refuses to run then).
    private let tlsProblem: String?

    /// Reads the TLS certificate and key files again (SIGHUP): new connections use them, existing
    /// ones keep theirs. When the new files do not work, the old ones stay and the error says why.
    /// Opens the query log file again (SIGHUP, after log rotation moved it).
    public func reopenQueryLog() {
        queryLog?.reopen()
    }

    public func reloadCertificates() throws {
        guard let tls else { return }
        if try tls.reload() {
            if let path = configuration.clientTLS.certificatePath {
                logger.notice("TLS certificate and key reloaded from \(path)")
            } else {
                logger.notice("TLS for clients: a new self-signed certificate made, valid for a year")
            }
        }
    }

    /// `proxy.global.config`: the effective options, under MySQL Proxy's names.
    static func scriptConfig(_ c: ProxyConfiguration) -> [String: ScriptValue] {
        func seconds(_ t: TimeAmount) -> ScriptValue { .number(Double(t.nanoseconds) / 1e9) }
        var config: [String: ScriptValue] = [
            "proxy-address": .string(c.listenAddress.description),
            "proxy-backend-addresses": .array(c.backends.filter { $0.type == .readWrite }.map { .string($0.address.description) }),
            "proxy-read-only-backend-addresses": .array(c.backends.filter { $0.type == .readOnly }.map { .string($0.address.description) }),
            "proxy-connect-timeout": seconds(c.connectTimeout),
            "proxy-read-timeout": seconds(c.readTimeout),
            "proxy-write-timeout": seconds(c.writeTimeout),
            "event-threads": .integer(c.eventThreads),
            "resultset-buffer-limit": .integer(c.resultsetBufferLimit),
            "proxy-lua-timeout": .number(c.luaTimeout),
            "proxy-lua-memory-limit": .integer(c.luaMemoryLimit),
            "proxy-max-packet-size": .integer(c.maxAssembledPacketSize),
        ]
        if let script = c.luaScript { config["proxy-lua-script"] = .string(script) }
        if let path = c.luaPath { config["lua-path"] = .string(path) }
        if let path = c.luaCPath { config["lua-cpath"] = .string(path) }
        for (key, value) in c.scriptConfig { config[key] = .string(value) }
        return config
    }

    /// The address the listener is bound to, once started.
    public var localAddress: SocketAddress? {
        state.withLockedValue { $0.serverChannels.first?.localAddress }
    }

    /// Number of client connections open right now.
    public var connectionCount: Int {
        statistics.value(.connectionsActive)
    }

    /// The TCP port the proxy listens on, once started (the one the system picked for port 0).
    public var port: Int? { localAddress?.port }

    /// The admin interface's address, once started.
    public var adminAddress: SocketAddress? {
        state.withLockedValue { $0.adminChannel?.localAddress }
    }

    /// Binds the listeners (the proxy's, unless disabled, and the admin interface's, if
    /// configured). Throws if an address is taken or invalid, or the admin has no password.
    ///
    /// With `accepting` false the listeners are bound but accept nothing (clients wait in the
    /// backlog) until `startAccepting()`: a proxy started as root binds its ports and drops its
    /// privileges before the first connection runs any of its code.
    public func start(accepting: Bool = true) async throws {
        let first = state.withLockedValue { state -> Bool in
            defer { state.started = true }
            return !state.started
        }
        guard first else { return }
        acceptsAtOnce = accepting
        if let tlsProblem { throw TLSSetupError(tlsProblem) }
        if let queryLogProblem { throw QueryLog.QueryLogError(message: queryLogProblem) }
        if let admin = configuration.admin, let adminContext {
            guard !admin.password.isEmpty, !admin.username.isEmpty else {
                throw ConfigurationError.adminNeedsCredentials
            }
            let channel = try await Self.listening("the admin interface", admin.address) { try await bind(admin.address, context: adminContext) }
            state.withLockedValue { $0.adminChannel = channel }
            logger.notice("admin interface listening on \(channel.localAddress.map(\.logDescription) ?? "\(admin.address)")")
        }
        if let address = configuration.metricsAddress, let exporter = metrics {
            let channel = try await Self.listening("the metrics", address) { try await bindMetrics(address, exporter: exporter) }
            state.withLockedValue { $0.metricsChannel = channel }
            logger.notice("metrics at http://\(channel.localAddress.map(\.logDescription) ?? "\(address)")/metrics")
        }
        if configuration.proxyEnabled {
            let channels = try await Self.listening("the proxy", configuration.listenAddress) { try await bindPerLoop(configuration.listenAddress, context: context) }
            state.withLockedValue { $0.serverChannels = channels }
            let channel = channels[0]
            logger.notice("listening on \(channel.localAddress.map(\.logDescription) ?? "\(configuration.listenAddress)")",
                          metadata: ["backends": "\(configuration.backends.map { "\($0.address) (\($0.type.rawValue))" }.joined(separator: ", "))",
                                     "listeners": "\(channels.count)"])
            warnIfBackendsAreUnverified()
        }
        if accepting { await startAccepting() }
    }

    /// Runs `bind`, naming the listener and its address in what it throws: NIO's errors name only
    /// the system call, and a proxy with three listeners left its operator guessing which port was taken.
    private static func listening<T>(_ listener: String, _ address: ProxyAddress, _ bind: () async throws -> T) async throws -> T {
        do {
            return try await bind()
        } catch {
            throw ListenError(listener: listener, address: address, underlying: error)
        }
    }

    /// Whether `start` lets the listeners accept as soon as they are bound.
    private var acceptsAtOnce: Bool {
        get { state.withLockedValue { $0.acceptsAtOnce } }
        set { state.withLockedValue { $0.acceptsAtOnce = newValue } }
    }

    /// Lets the listeners `start(accepting: false)` bound accept connections, and starts the
    /// health checks.
    public func startAccepting() async {
        let channels = state.withLockedValue { state -> [Channel] in
            defer { state.accepting = true }
            guard !state.accepting else { return [] }
            return state.serverChannels + [state.adminChannel, state.metricsChannel].compactMap { $0 }
        }
        for channel in channels {
            try? await channel.setOption(.autoRead, value: true).get()
            channel.read()
        }
        healthChecker?.start()
        accountLoader?.start()
    }

    /// Said once at startup: a server link that is not verified TLS may end at whoever sits
    /// between, so clients' passwords sent in clear are not passed on (see +Secrets).
    private func warnIfBackendsAreUnverified() {
        let remote = configuration.backends.filter { if case .tcp = $0.address { return true } else { return false } }
        guard !remote.isEmpty, !configuration.backendTLS.mode.verifies else { return }
        let pinned = configuration.backendTLS.serverPublicKeyPEM != nil ? " except RSA-encrypted with --proxy-backend-server-public-key" : ""
        let trusted = configuration.backendTLS.trustUnverifiedWithPasswords ? ", but --proxy-backend-get-server-public-key trusts them anyway" : ""
        let message = "backends are reached without verifying who answers (--proxy-backend-ssl=\(configuration.backendTLS.mode.rawValue)): "
            + "a password a client sends in clear (caching_sha2_password's full authentication, sha256_password, cleartext plugins) "
            + "is not passed on to them\(pinned)\(trusted); set --proxy-backend-ssl=verify-ca with --proxy-backend-ssl-ca to verify them"
        logger.warning("\(message)")
    }

    private func bindMetrics(_ address: ProxyAddress, exporter: MetricsExporter) async throws -> Channel {
        let limits = MetricsHTTPHandler.Limits()
        let bootstrap = guarded(ServerBootstrap(group: group), statistics: statistics)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                guard limits.admit() else { return channel.close() }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(exporter: exporter, limits: limits))
                }
            }
        switch address {
        case .tcp(let host, let port):
            return try await bootstrap.bind(host: host, port: port).get()
        case .unix(let path):
            return try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        }
    }

    /// The metrics endpoint's address, once started.
    public var metricsAddress: SocketAddress? {
        state.withLockedValue { $0.metricsChannel?.localAddress }
    }

    /// The proxy's listeners. With one event loop, or a Unix socket, one listener whose accepted
    /// connections NIO hands round-robin to the loops. With several loops and TCP, one listener per
    /// loop on the same address (SO_REUSEPORT), each accepting for its own loop: the kernel
    /// spreads the connections, and none of them is accepted on one thread to be registered and
    /// served on another (a cross-thread hop and wake-up per connection). Port 0 is resolved by the
    /// first listener and the others take the port it got.
    private func bindPerLoop(_ address: ProxyAddress, context: ProxyContext) async throws -> [Channel] {
        let loops = Array(group.makeIterator())
        guard loops.count > 1, case .tcp(let host, let port) = address else {
            return [try await bind(address, context: context)]
        }
        // Resolved once, so that the check below and every listener use the same address.
        let resolved = try SocketAddress.makeAddressResolvingHost(host, port: port)
        if port != 0, let problem = Self.portIsTaken(resolved) {
            // SO_REUSEPORT would let this proxy join a listener that is already there (another
            // proxy left running by the same user) and split the connections with it; a plain
            // bind first fails as a single listener would.
            throw IOError(errnoCode: problem, reason: "bind")
        }
        var channels: [Channel] = []
        do {
            let first = try await bind(.resolved(resolved), context: context, loop: loops[0])
            channels.append(first)
            guard let bound = first.localAddress else {
                throw ConfigurationError.invalidAddress("\(address)", "the listener has no local address")
            }
            for loop in loops.dropFirst() {
                channels.append(try await bind(.resolved(bound), context: context, loop: loop))
            }
        } catch {
            for channel in channels { try? await channel.close() }
            throw error
        }
        return channels
    }

    private func bind(_ address: ProxyAddress, context: ProxyContext) async throws -> Channel {
        try await bind(.address(address), context: context, loop: nil)
    }

    /// Binds (without listening) a plain socket to `address` and closes it: the errno when that
    /// fails (EADDRINUSE when something listens there), nil when the address is free.
    private static func portIsTaken(_ address: SocketAddress) -> Int32? {
        let family = address.protocol == .inet6 ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let result = address.withSockAddr { Glibc.bind(fd, $0, socklen_t($1)) }
        return result == 0 ? nil : errno
    }

    private enum BindTarget {
        case address(ProxyAddress)
        /// The address another listener got (the port the system picked for port 0).
        case resolved(SocketAddress)
    }

    /// A listener; on `loop` alone (accepting and serving there, sharing its port with the other
    /// loops' listeners), or on the whole group.
    private func bind(_ target: BindTarget, context: ProxyContext, loop: EventLoop?) async throws -> Channel {
        var bootstrap = guarded(loop.map { ServerBootstrap(group: $0) } ?? ServerBootstrap(group: group), statistics: context.statistics)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 1024)
        if loop != nil {
            bootstrap = bootstrap.serverChannelOption(.socketOption(NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
        }
        bootstrap = bootstrap
            .childChannelInitializer { channel in
                guard !context.isStopping else { return channel.close() }
                return channel.eventLoop.makeCompletedFuture {
                    // set here, not as a child channel option: the bootstrap applies those through a
                    // chain of futures, a few thousand instructions per connection each
                    try channel.syncOptions?.setOption(.recvAllocator, value: ReceiveBuffers.allocator)
                    let handler = ClientChannelHandler(shared: context, channel: channel)
                    if let networks = context.configuration.proxyProtocolNetworks, networks.contains(channel.remoteAddress) {
                        let decoder = ProxyProtocolDecoder(timeout: context.configuration.loginTimeout ?? .seconds(10), logger: context.logger) {
                            handler.proxyProtocolEndpoints = $0
                        }
                        try channel.pipeline.syncOperations.addHandler(decoder)
                    }
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        switch target {
        case .address(.tcp(let host, let port)):
            return try await bootstrap.bind(host: host, port: port).get()
        case .address(.unix(let path)):
            return try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        case .resolved(let address):
            return try await bootstrap.bind(to: address).get()
        }
    }

    /// A listener's bootstrap with what every listener has: the accept guard (descriptor
    /// exhaustion), and no accepting before `startAccepting()` when `start` was asked so.
    private func guarded(_ bootstrap: ServerBootstrap, statistics: ProxyStatistics) -> ServerBootstrap {
        let logger = self.logger
        let stormLog = context.stormLog
        return bootstrap
            .serverChannelOption(.autoRead, value: acceptsAtOnce)
            .serverChannelInitializer { channel in
                let counters = statistics.shard(for: channel.eventLoop)
                let loop = channel.eventLoop
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptGuard { error in
                        counters.add(.acceptFailures)
                        stormLog.warning(.descriptorsExhausted, "cannot accept a connection: \(error); waiting clients get ERR 1040 as descriptors come free (raise the open-files limit, --max-open-files)",
                                         logger: logger, on: loop)
                    })
                }
            }
    }

    /// Stops accepting, lets running commands finish for up to `gracePeriod` (the configuration's
    /// by default), closes every connection and, if the proxy made its own threads, stops them.
    public func shutdown(gracePeriod: TimeAmount? = nil) async {
        context.isStopping = true
        adminContext?.isStopping = true
        healthChecker?.stop()
        accountLoader?.stop()
        let (servers, admin, metrics) = state.withLockedValue { state -> ([Channel], Channel?, Channel?) in
            defer { state.serverChannels = []; state.adminChannel = nil; state.metricsChannel = nil }
            return (state.serverChannels, state.adminChannel, state.metricsChannel)
        }
        for server in servers { try? await server.close() }
        try? await admin?.close()
        try? await metrics?.close()
        await context.forEachSweeper { $0.shutdownRequested() }
        if let adminContext { await adminContext.forEachSweeper { $0.closeAll() } }
        let deadline = NIODeadline.now() + (gracePeriod ?? configuration.shutdownGracePeriod)
        while connectionCount > 0 && NIODeadline.now() < deadline {
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        let remaining = connectionCount
        if remaining > 0 {
            logger.warning("closing \(remaining) connection(s) still busy after the shutdown grace period")
            await context.forEachSweeper { $0.closeAll() }
        }
        if let adminContext {
            while adminContext.statistics.value(.connectionsActive) > 0 && NIODeadline.now() < deadline + .seconds(1) {
                try? await Task.sleep(nanoseconds: 10_000_000)
            }
        }
        if ownsGroup {
            try? await group.shutdownGracefully()
        }
        queryLog?.stop()
        logger.notice("stopped")
    }
}

extension MoonProxy: Service {
    public func run() async throws {
        try await start()  // does nothing when already started
        try? await gracefulShutdown()
        await shutdown()
    }
}
