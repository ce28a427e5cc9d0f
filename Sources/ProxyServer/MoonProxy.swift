import Logging
import NIOConcurrencyHelpers
import NIOCore
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
    public let statistics = ProxyStatistics()
    private let logger: Logger
    private let group: EventLoopGroup
    private let ownsGroup: Bool
    private let context: ProxyContext
    private let state = NIOLockedValueBox(ServerState())

    private struct ServerState {
        var serverChannel: Channel?
    }

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
        self.backends = BackendPool(configuration.backends, retryInterval: configuration.backendRetryInterval)
        var engine: ScriptEngine? = nil
        if configuration.hasScript {
            var script = ScriptEngine.Configuration(scriptPath: configuration.luaScript, scriptSource: configuration.luaScript == nil ? configuration.luaScriptSource : nil)
            script.luaPath = configuration.luaPath
            script.luaCPath = configuration.luaCPath
            script.libraryDirectory = configuration.luaLibraryDirectory
            script.resultsetBufferLimit = configuration.resultsetBufferLimit
            script.config = Self.scriptConfig(configuration)
            engine = ScriptEngine(configuration: script, backends: backends, logger: logger)
        }
        self.scriptEngine = engine
        self.context = ProxyContext(configuration: configuration, backends: backends, statistics: statistics,
                                    connector: connector, logger: logger, scriptEngine: engine)
    }

    /// The script every connection runs, if one is configured.
    public let scriptEngine: ScriptEngine?

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
        ]
        if let script = c.luaScript { config["proxy-lua-script"] = .string(script) }
        if let path = c.luaPath { config["lua-path"] = .string(path) }
        if let path = c.luaCPath { config["lua-cpath"] = .string(path) }
        for (key, value) in c.scriptConfig { config[key] = .string(value) }
        return config
    }

    /// The address the listener is bound to, once started.
    public var localAddress: SocketAddress? {
        state.withLockedValue { $0.serverChannel?.localAddress }
    }

    /// Number of client connections open right now.
    public var connectionCount: Int {
        statistics.value(.connectionsActive)
    }

    /// Binds the listener. Throws if the address is taken or invalid.
    public func start() async throws {
        let context = self.context
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 1024)
            .childChannelInitializer { channel in
                guard !context.isStopping else { return channel.close() }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ClientChannelHandler(shared: context))
                }
            }
        let channel: Channel
        switch configuration.listenAddress {
        case .tcp(let host, let port):
            channel = try await bootstrap.bind(host: host, port: port).get()
        case .unix(let path):
            channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        }
        state.withLockedValue { $0.serverChannel = channel }
        logger.notice("listening on \(channel.localAddress.map(ClientChannelHandler.describe) ?? "\(configuration.listenAddress)")",
                      metadata: ["backends": "\(configuration.backends.map { "\($0.address) (\($0.type.rawValue))" }.joined(separator: ", "))"])
    }

    /// Stops accepting, lets running commands finish for up to `gracePeriod` (the configuration's
    /// by default), closes every connection and, if the proxy made its own threads, stops them.
    public func shutdown(gracePeriod: TimeAmount? = nil) async {
        context.isStopping = true
        let server = state.withLockedValue { state -> Channel? in
            defer { state.serverChannel = nil }
            return state.serverChannel
        }
        try? await server?.close()
        await context.forEachSweeper { $0.shutdownRequested() }
        let deadline = NIODeadline.now() + (gracePeriod ?? configuration.shutdownGracePeriod)
        while connectionCount > 0 && NIODeadline.now() < deadline {
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        let remaining = connectionCount
        if remaining > 0 {
            logger.warning("closing \(remaining) connection(s) still busy after the shutdown grace period")
            await context.forEachSweeper { $0.closeAll() }
        }
        if ownsGroup {
            try? await group.shutdownGracefully()
        }
        logger.notice("stopped")
    }
}

extension MoonProxy: Service {
    public func run() async throws {
        if localAddress == nil { try await start() }
        try? await gracefulShutdown()
        await shutdown()
    }
}
