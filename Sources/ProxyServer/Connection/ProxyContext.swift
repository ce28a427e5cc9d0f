import Atomics
import NIOConcurrencyHelpers
import Logging
import NIOCore

/// What every connection of one proxy shares.
final class ProxyContext: Sendable {
    let configuration: ProxyConfiguration
    let backends: BackendPool
    let statistics: ProxyStatistics
    let connector: BackendConnector
    let logger: Logger
    private let lastConnectionID = ManagedAtomic<UInt64>(0)
    private let sweepers = NIOLockedValueBox<[ObjectIdentifier: NIOLoopBound<TimeoutSweeper>]>([:])

    init(configuration: ProxyConfiguration, backends: BackendPool, statistics: ProxyStatistics,
         connector: BackendConnector, logger: Logger) {
        self.configuration = configuration
        self.backends = backends
        self.statistics = statistics
        self.connector = connector
        self.logger = logger
    }

    func nextConnectionID() -> UInt64 {
        lastConnectionID.wrappingIncrementThenLoad(ordering: .relaxed)
    }

    /// The timeout sweeper of the calling event loop.
    func sweeper(for eventLoop: EventLoop) -> TimeoutSweeper {
        let key = ObjectIdentifier(eventLoop as AnyObject)
        return sweepers.withLockedValue { all in
            if let existing = all[key] { return existing }
            let created = NIOLoopBound(TimeoutSweeper(eventLoop: eventLoop, readTimeout: configuration.readTimeout,
                                                      writeTimeout: configuration.writeTimeout), eventLoop: eventLoop)
            all[key] = created
            return created
        }.value
    }
}

/// Sent down every client pipeline when a graceful shutdown begins.
struct ProxyShutdownEvent: Sendable {}
