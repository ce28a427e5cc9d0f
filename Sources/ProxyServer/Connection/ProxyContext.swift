import Atomics
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
}

/// Sent down every client pipeline when a graceful shutdown begins.
struct ProxyShutdownEvent: Sendable {}
