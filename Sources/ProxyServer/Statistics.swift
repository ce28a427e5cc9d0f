import Atomics

/// Counters for the whole proxy, updated with relaxed atomics from every event loop.
public final class ProxyStatistics: Sendable {
    public enum Counter: Int, CaseIterable, Sendable {
        case connectionsAccepted
        case connectionsActive
        case commands
        case queries
        case bytesFromClients
        case bytesFromBackends
        case backendConnectFailures
        case clientProtocolErrors
        case backendProtocolErrors
        case backendsLost
        case errorsSentByProxy
    }

    private let values: [ManagedAtomic<Int>]

    public init() {
        self.values = Counter.allCases.map { _ in ManagedAtomic(0) }
    }

    @inline(__always)
    public func add(_ counter: Counter, _ amount: Int = 1) {
        values[counter.rawValue].wrappingIncrement(by: amount, ordering: .relaxed)
    }

    public func value(_ counter: Counter) -> Int {
        values[counter.rawValue].load(ordering: .relaxed)
    }

    public func snapshot() -> [Counter: Int] {
        var result: [Counter: Int] = [:]
        for c in Counter.allCases { result[c] = value(c) }
        return result
    }
}
