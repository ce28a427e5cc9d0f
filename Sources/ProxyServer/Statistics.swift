import Atomics

/// Counters for the whole proxy, updated with relaxed atomics from every event loop.
public final class ProxyStatistics: @unchecked Sendable {
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
        /// Clients refused by --max-connections or --max-connections-per-address.
        case connectionsRefused
    }

    // One cache line per counter, so that event loops bumping different counters do not share one.
    private static let stride = 8
    private let storage: UnsafeMutablePointer<Int>

    public init() {
        let count = Counter.allCases.count * Self.stride
        storage = UnsafeMutablePointer<Int>.allocate(capacity: count)
        storage.initialize(repeating: 0, count: count)
    }

    deinit {
        storage.deallocate()
    }

    @inline(__always)
    private func atomic(_ counter: Counter) -> UnsafeAtomic<Int> {
        UnsafeAtomic(at: UnsafeMutableRawPointer(storage + counter.rawValue * Self.stride).assumingMemoryBound(to: UnsafeAtomic<Int>.Storage.self))
    }

    @inline(__always)
    public func add(_ counter: Counter, _ amount: Int = 1) {
        atomic(counter).wrappingIncrement(by: amount, ordering: .relaxed)
    }

    /// Adds one and returns the new value (for the few counters a decision reads).
    @inline(__always)
    public func increment(_ counter: Counter) -> Int {
        atomic(counter).wrappingIncrementThenLoad(by: 1, ordering: .relaxed)
    }

    public func value(_ counter: Counter) -> Int {
        atomic(counter).load(ordering: .relaxed)
    }

    public func snapshot() -> [Counter: Int] {
        var result: [Counter: Int] = [:]
        for c in Counter.allCases { result[c] = value(c) }
        return result
    }
}
