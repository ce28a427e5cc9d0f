import Atomics
import MySQLWire
import NIOConcurrencyHelpers
import NIOCore
import ProxyCore

/// Counters for the whole proxy. Each event loop counts in its own `LoopStatistics`, which only
/// that loop writes, so counting on the path of a packet is a plain add to memory no other core
/// writes (no locked instruction, no shared cache line); a reader (the admin interface, a metrics
/// scrape) sums the loops. Only the number of open connections, which `--max-connections` needs
/// as one figure at once, is a shared atomic, touched once per connection.
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
        case bytesToClients
        case bytesToBackends
        /// Query log entries dropped because the writer fell behind (--query-log).
        case queryLogDropped
        /// Accepts that failed for want of descriptors (or memory): EMFILE, ENFILE, ENOBUFS, ENOMEM.
        case acceptFailures
        /// Binary prepared statements prepared again on another server connection (multiplexing).
        case statementsPreparedAgain
    }

    private let active = ManagedAtomic<Int>(0)
    private let shards = NIOLockedValueBox<[ObjectIdentifier: LoopStatistics]>([:])

    public init() {}

    /// The counters of `eventLoop`, for use on that loop only.
    public func shard(for eventLoop: EventLoop) -> LoopStatistics {
        let key = ObjectIdentifier(eventLoop as AnyObject)
        return shards.withLockedValue { all in
            if let existing = all[key] { return existing }
            let created = LoopStatistics()
            all[key] = created
            return created
        }
    }

    /// Every loop's counters (for readers that sum them).
    public var allShards: [LoopStatistics] { shards.withLockedValue { Array($0.values) } }

    /// A client connection was accepted: the number open now, this one included.
    func connectionOpened() -> Int {
        active.wrappingIncrementThenLoad(ordering: .relaxed)
    }

    func connectionClosed() {
        active.wrappingDecrement(ordering: .relaxed)
    }

    public func value(_ counter: Counter) -> Int {
        if counter == .connectionsActive { return active.load(ordering: .relaxed) }
        return allShards.reduce(0) { $0 + $1.value(counter) }
    }

    public func snapshot() -> [Counter: Int] {
        var result: [Counter: Int] = [:]
        let all = allShards
        for c in Counter.allCases {
            result[c] = c == .connectionsActive ? active.load(ordering: .relaxed) : all.reduce(0) { $0 + $1.value(c) }
        }
        return result
    }
}

/// The commands metrics tell apart.
public enum CommandKind: Int, CaseIterable, Sendable {
    case query, stmtExecute, stmtPrepare, ping, other

    public init(_ code: CommandCode) {
        switch code {
        case .query: self = .query
        case .stmtExecute: self = .stmtExecute
        case .stmtPrepare: self = .stmtPrepare
        case .ping: self = .ping
        default: self = .other
        }
    }

    public var label: String {
        switch self {
        case .query: return "query"
        case .stmtExecute: return "stmt_execute"
        case .stmtPrepare: return "stmt_prepare"
        case .ping: return "ping"
        case .other: return "other"
        }
    }
}

/// The Lua hooks metrics tell apart (MySQL Proxy's names).
public enum HookKind: Int, CaseIterable, Sendable {
    case connectServer, readHandshake, readAuth, readAuthResult, readQuery, readQueryResult, disconnectClient

    public var label: String {
        ["connect_server", "read_handshake", "read_auth", "read_auth_result", "read_query", "read_query_result", "disconnect_client"][rawValue]
    }
}

/// One event loop's counters and histograms. Written only on its loop, with a relaxed load and
/// store (an ordinary add; atomics only so that a reader on another thread sees whole values);
/// read from anywhere.
public final class LoopStatistics: @unchecked Sendable {
    /// Upper bounds of the command duration buckets, in nanoseconds (100 µs to 10 s).
    public static let commandBuckets: [Int] = [100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000,
                                               50_000_000, 100_000_000, 250_000_000, 500_000_000, 1_000_000_000, 2_500_000_000,
                                               5_000_000_000, 10_000_000_000]
    /// Upper bounds of the Lua hook duration buckets, in nanoseconds (10 µs to 1 s).
    public static let hookBuckets: [Int] = [10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 5_000_000, 10_000_000,
                                            50_000_000, 100_000_000, 500_000_000, 1_000_000_000]
    /// Backends whose commands are told apart (by index); commands on later ones, and those no
    /// server answered (a script did), count in the last slot.
    public static let backendSlots = 33
    /// The slot of commands answered without a server.
    public static let noBackendSlot = backendSlots - 1

    /// A histogram's cells: one per bucket, +Inf, the sum (ns) and the count.
    static func cells(_ buckets: [Int]) -> Int { buckets.count + 3 }

    private static let counterBase = 0
    private static let closedBase = ProxyStatistics.Counter.allCases.count
    private static let hookCallsBase = closedBase + CloseSource.allCases.count
    private static let hookErrorsBase = hookCallsBase + HookKind.allCases.count
    private static let hookHistogramBase = hookErrorsBase + HookKind.allCases.count
    private static let commandHistogramBase = hookHistogramBase + HookKind.allCases.count * cells(hookBuckets)
    private static let size = commandHistogramBase + backendSlots * CommandKind.allCases.count * cells(commandBuckets)

    private let storage: UnsafeMutablePointer<UnsafeAtomic<Int>.Storage>

    public init() {
        storage = UnsafeMutablePointer.allocate(capacity: Self.size)
        storage.initialize(repeating: UnsafeAtomic<Int>.Storage(0), count: Self.size)
    }

    deinit {
        storage.deinitialize(count: Self.size)
        storage.deallocate()
    }

    @inline(__always)
    private func cell(_ index: Int) -> UnsafeAtomic<Int> {
        UnsafeAtomic(at: storage + index)
    }

    @inline(__always)
    private func bump(_ index: Int, by amount: Int) {
        let c = cell(index)
        c.store(c.load(ordering: .relaxed) &+ amount, ordering: .relaxed)
    }

    @inline(__always)
    public func add(_ counter: ProxyStatistics.Counter, _ amount: Int = 1) {
        bump(Self.counterBase + counter.rawValue, by: amount)
    }

    /// What a connection's machine counted since its handler last looked.
    public func add(_ counts: ConnectionMachine.Counts) {
        if counts.commands != 0 { add(.commands, Int(counts.commands)) }
        if counts.queries != 0 { add(.queries, Int(counts.queries)) }
        if counts.errorsSentByProxy != 0 { add(.errorsSentByProxy, Int(counts.errorsSentByProxy)) }
        if counts.clientProtocolErrors != 0 { add(.clientProtocolErrors, Int(counts.clientProtocolErrors)) }
        if counts.backendProtocolErrors != 0 { add(.backendProtocolErrors, Int(counts.backendProtocolErrors)) }
        if counts.backendsLost != 0 { add(.backendsLost, Int(counts.backendsLost)) }
        if counts.statementsPreparedAgain != 0 { add(.statementsPreparedAgain, Int(counts.statementsPreparedAgain)) }
    }

    public func value(_ counter: ProxyStatistics.Counter) -> Int {
        cell(Self.counterBase + counter.rawValue).load(ordering: .relaxed)
    }

    public func connectionClosed(_ source: CloseSource) {
        bump(Self.closedBase + source.rawValue, by: 1)
    }

    public func closed(_ source: CloseSource) -> Int {
        cell(Self.closedBase + source.rawValue).load(ordering: .relaxed)
    }

    /// A hook ran for `nanoseconds` (nil: not timed), and whether it raised an error.
    public func hookCalled(_ hook: HookKind, nanoseconds: Int?, failed: Bool) {
        bump(Self.hookCallsBase + hook.rawValue, by: 1)
        if failed { bump(Self.hookErrorsBase + hook.rawValue, by: 1) }
        if let nanoseconds {
            observe(nanoseconds, base: Self.hookHistogramBase + hook.rawValue * Self.cells(Self.hookBuckets), buckets: Self.hookBuckets)
        }
    }

    public func hookCalls(_ hook: HookKind) -> (calls: Int, errors: Int) {
        (cell(Self.hookCallsBase + hook.rawValue).load(ordering: .relaxed), cell(Self.hookErrorsBase + hook.rawValue).load(ordering: .relaxed))
    }

    /// A command on backend `backend` (nil: answered without a server) took `nanoseconds`.
    public func commandCompleted(_ kind: CommandKind, backend: Int?, nanoseconds: Int) {
        let slot = backend.map { $0 >= 0 && $0 < Self.noBackendSlot ? $0 : Self.noBackendSlot } ?? Self.noBackendSlot
        observe(nanoseconds, base: commandBase(slot: slot, kind: kind), buckets: Self.commandBuckets)
    }

    private func commandBase(slot: Int, kind: CommandKind) -> Int {
        Self.commandHistogramBase + (slot * CommandKind.allCases.count + kind.rawValue) * Self.cells(Self.commandBuckets)
    }

    @inline(__always)
    private func observe(_ nanoseconds: Int, base: Int, buckets: [Int]) {
        let value = max(0, nanoseconds)
        var bucket = buckets.count  // +Inf
        for (i, bound) in buckets.enumerated() where value <= bound {
            bucket = i
            break
        }
        bump(base + bucket, by: 1)
        bump(base + buckets.count + 1, by: value)
        bump(base + buckets.count + 2, by: 1)
    }

    /// A histogram as read now: the count in each bucket (not cumulative, +Inf last), the sum in
    /// nanoseconds and the count.
    public struct Histogram {
        public var buckets: [Int]
        public var sum: Int
        public var count: Int

        init(cells: Int) {
            buckets = Array(repeating: 0, count: cells - 2)
            sum = 0
            count = 0
        }

        mutating func add(_ stats: LoopStatistics, base: Int) {
            for i in buckets.indices { buckets[i] += stats.cell(base + i).load(ordering: .relaxed) }
            sum += stats.cell(base + buckets.count).load(ordering: .relaxed)
            count += stats.cell(base + buckets.count + 1).load(ordering: .relaxed)
        }
    }

    /// The command histogram of `slot` and `kind`, summed over `shards`.
    public static func commandHistogram(_ shards: [LoopStatistics], slot: Int, kind: CommandKind) -> Histogram {
        var h = Histogram(cells: cells(commandBuckets))
        for s in shards { h.add(s, base: s.commandBase(slot: slot, kind: kind)) }
        return h
    }

    /// The duration histogram of `hook`, summed over `shards`.
    public static func hookHistogram(_ shards: [LoopStatistics], hook: HookKind) -> Histogram {
        var h = Histogram(cells: cells(hookBuckets))
        for s in shards { h.add(s, base: hookHistogramBase + hook.rawValue * cells(hookBuckets)) }
        return h
    }
}
