import Atomics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ProxyScripting

/// A backend's health as MySQL Proxy reports it (`proxy.BACKEND_STATE_*`).
public enum BackendState: Int, Hashable, Sendable {
    case unknown = 0
    case up = 1
    case down = 2
}

/// A snapshot of one backend, for scripts, the admin interface and logs.
public struct BackendInfo: Hashable, Sendable {
    public var index: Int
    public var address: ProxyAddress
    public var type: BackendType
    public var state: BackendState
    public var connectedClients: Int
    public var uuid: String
}

/// The backends of one proxy and their health, shared by every event loop.
///
/// A new client goes to the least-loaded read-write backend that is not down (ties go round-robin).
/// A failed connect (or a server that sends no greeting in time) marks a backend down. A down
/// backend is half-open once `retryInterval` has passed since it went down: the next client is
/// tried there, alone, while the others go elsewhere; its greeting marks the backend up, another
/// failure down again. So a restarted server takes clients again within the interval, without a
/// probe of the proxy's own (which would leave an unfinished handshake on the server).
public final class BackendPool: Sendable {
    private struct Entry {
        var configuration: BackendConfiguration
        /// The address resolved once, for IP literals and unix sockets (host names resolve per connect).
        var resolved: SocketAddress?
        var state: BackendState = .unknown
        var connectedClients = 0
        var downSince: NIODeadline? = nil
        /// A client is trying this down backend (half-open): the others are not sent there
        /// until it knows.
        var probing = false
        var uuid: String
        /// Limits of the idle connection pool (`pool.min_idle_connections`, `max_idle_connections`).
        var minIdle = 0
        var maxIdle = 20
        /// `DRAIN BACKEND`: no new session comes here; multiplexed sessions move off between
        /// commands; those still here at the deadline are closed.
        var drainDeadline: NIODeadline?
    }

    /// Idle pooled server connections, by event loop, backend and user.
    struct IdleKey: Hashable {
        var loop: ObjectIdentifier
        var backend: Int
        var user: String
    }

    private let entries: NIOLockedValueBox<(backends: [Entry], rotation: Int)>
    /// Told when a drain begins (each event loop's sweeper, which then looks every second).
    private let drainWatchers = NIOLockedValueBox<[@Sendable () -> Void]>([])

    /// Calls `body` whenever a `DRAIN BACKEND` begins.
    func watchDrains(_ body: @escaping @Sendable () -> Void) {
        drainWatchers.withLockedValue { $0.append(body) }
    }
    private let idle = NIOLockedValueBox<[IdleKey: Int]>([:])
    public let retryInterval: TimeAmount
    /// Health checks decide when a down backend is up again (not a client's connect after the
    /// retry interval).
    private let activeChecks = ManagedAtomic(false)

    func enableActiveChecks() { activeChecks.store(true, ordering: .relaxed) }

    /// A health check's verdict: up (with the type the server's read_only gives it) or down.
    func checked(_ index: Int, up: Bool, type: BackendType?, now: NIODeadline = .now()) {
        entries.withLockedValue { value in
            guard value.backends.indices.contains(index) else { return }
            if up {
                value.backends[index].state = .up
                value.backends[index].downSince = nil
                if let type { value.backends[index].configuration.type = type }
            } else if value.backends[index].state != .down {
                value.backends[index].state = .down
                value.backends[index].downSince = now
            }
        }
    }

    /// Whether a down backend may be tried by a client now: health checks are off, no client is
    /// trying it already, and the retry interval has passed.
    private func retryable(_ entry: Entry, now: NIODeadline) -> Bool {
        guard !activeChecks.load(ordering: .relaxed), !entry.probing else { return false }
        guard let since = entry.downSince else { return true }
        return now - since >= retryInterval
    }

    public init(_ backends: [BackendConfiguration], retryInterval: TimeAmount = .milliseconds(500)) {
        var list: [Entry] = []
        for (i, b) in backends.enumerated() {
            var resolved: SocketAddress? = nil
            switch b.address {
            case .tcp(let host, let port): resolved = try? SocketAddress(ipAddress: host, port: port)
            case .unix(let path): resolved = try? SocketAddress(unixDomainSocketPath: path)
            }
            list.append(Entry(configuration: b, resolved: resolved, uuid: BackendPool.makeUUID(seed: i, address: b.address.description)))
        }
        self.entries = NIOLockedValueBox((list, 0))
        self.retryInterval = retryInterval
    }

    public var count: Int { entries.withLockedValue { $0.backends.count } }

    /// Chooses a backend for a new client, skipping those in `excluding`; nil when none is usable.
    func pickForNewClient(excluding: BackendSet = BackendSet(), now: NIODeadline = .now()) -> (index: Int, address: ProxyAddress, resolved: SocketAddress?)? {
        entries.withLockedValue { value in
            var best: Int? = nil
            let n = value.backends.count
            guard n > 0 else { return nil }
            value.rotation &+= 1
            for offset in 0..<n {
                let i = (offset + value.rotation) % n
                let e = value.backends[i]
                guard e.configuration.type == .readWrite, !excluding.contains(i), e.drainDeadline == nil else { continue }
                if e.state == .down, !retryable(e, now: now) { continue }
                if let b = best, value.backends[b].connectedClients <= e.connectedClients { continue }
                best = i
            }
            guard let chosen = best else { return nil }
            if value.backends[chosen].state == .down { value.backends[chosen].probing = true }
            return (chosen, value.backends[chosen].configuration.address, value.backends[chosen].resolved)
        }
    }

    /// Backend `index` if it may be used now (not down, or down long enough ago), of either type:
    /// a script's choice.
    public func candidate(_ index: Int, now: NIODeadline = .now()) -> (index: Int, address: ProxyAddress, resolved: SocketAddress?)? {
        entries.withLockedValue { value in
            guard value.backends.indices.contains(index) else { return nil }
            let e = value.backends[index]
            if e.state == .down {
                guard retryable(e, now: now) else { return nil }
                value.backends[index].probing = true
            }
            return (index, e.configuration.address, e.resolved)
        }
    }

    /// The backends a session may move to: read-write, not down, not draining.
    func takingSessions() -> [Int] {
        entries.withLockedValue { value in
            value.backends.indices.filter {
                let e = value.backends[$0]
                return e.configuration.type == .readWrite && e.state != .down && e.drainDeadline == nil
            }
        }
    }

    /// Whether backend `index` is marked down or draining (or does not exist): sessions move off it.
    func isUnavailable(_ index: Int) -> Bool {
        entries.withLockedValue { value in
            !value.backends.indices.contains(index) || value.backends[index].state == .down || value.backends[index].drainDeadline != nil
        }
    }

    /// `DRAIN BACKEND n`: sessions leave backend `index` within `within`; false for no such backend.
    public func drain(_ index: Int, within: TimeAmount, now: NIODeadline = .now()) -> Bool {
        let known = entries.withLockedValue { value in
            guard value.backends.indices.contains(index) else { return false }
            value.backends[index].drainDeadline = now + within
            return true
        }
        if known { for watcher in drainWatchers.withLockedValue({ $0 }) { watcher() } }
        return known
    }

    /// `UNDRAIN BACKEND n`: it takes sessions again.
    public func undrain(_ index: Int) -> Bool {
        entries.withLockedValue { value in
            guard value.backends.indices.contains(index) else { return false }
            value.backends[index].drainDeadline = nil
            return true
        }
    }

    /// When backend `index` must be empty, while it drains.
    func drainDeadline(_ index: Int) -> NIODeadline? {
        entries.withLockedValue { value in value.backends.indices.contains(index) ? value.backends[index].drainDeadline : nil }
    }

    /// Whether any backend drains (a cheap look before the sweep's walk).
    var anyDraining: Bool { entries.withLockedValue { value in value.backends.contains { $0.drainDeadline != nil } } }

    public func markDown(_ index: Int, now: NIODeadline = .now()) {
        entries.withLockedValue { value in
            guard value.backends.indices.contains(index) else { return }
            value.backends[index].state = .down
            value.backends[index].downSince = now
            value.backends[index].probing = false
        }
    }

    public func markUp(_ index: Int) {
        entries.withLockedValue { value in
            guard value.backends.indices.contains(index) else { return }
            value.backends[index].state = .up
            value.backends[index].downSince = nil
            value.backends[index].probing = false
        }
    }

    /// The client trying a down backend went away before it knew: another may try.
    func probeAbandoned(_ index: Int) {
        entries.withLockedValue { value in
            guard value.backends.indices.contains(index) else { return }
            value.backends[index].probing = false
        }
    }

    /// Sets a backend's state by hand (scripts, admin). Down counts from now.
    public func setState(_ index: Int, _ state: BackendState) {
        entries.withLockedValue { value in
            guard value.backends.indices.contains(index) else { return }
            value.backends[index].state = state
            value.backends[index].downSince = state == .down ? .now() : nil
        }
    }

    public func clientAttached(_ index: Int) {
        entries.withLockedValue { value in
            guard value.backends.indices.contains(index) else { return }
            value.backends[index].connectedClients += 1
        }
    }

    public func clientDetached(_ index: Int) {
        entries.withLockedValue { value in
            guard value.backends.indices.contains(index) else { return }
            value.backends[index].connectedClients = max(0, value.backends[index].connectedClients - 1)
        }
    }

    public func snapshot() -> [BackendInfo] {
        entries.withLockedValue { value in
            value.backends.enumerated().map { i, e in
                BackendInfo(index: i, address: e.configuration.address, type: e.configuration.type,
                            state: e.state, connectedClients: e.connectedClients, uuid: e.uuid)
            }
        }
    }

    // MARK: idle pooled connections

    func idleChanged(loop: ObjectIdentifier, backend: Int, user: String, by delta: Int) {
        idle.withLockedValue { counts in
            let key = IdleKey(loop: loop, backend: backend, user: user)
            let value = (counts[key] ?? 0) + delta
            counts[key] = value > 0 ? value : nil
        }
    }

    /// Idle connections to `backend` on every event loop.
    func idleCount(backend: Int) -> Int {
        idle.withLockedValue { counts in counts.reduce(0) { $0 + ($1.key.backend == backend ? $1.value : 0) } }
    }

    func maximumIdle(backend: Int) -> Int {
        entries.withLockedValue { value in value.backends.indices.contains(backend) ? value.backends[backend].maxIdle : 0 }
    }

    private static func makeUUID(seed: Int, address: String) -> String {
        var hasher = Hasher()
        hasher.combine(seed)
        hasher.combine(address)
        var generator = SystemRandomNumberGenerator()
        let a = UInt64(bitPattern: Int64(hasher.finalize())) ^ generator.next()
        let b = generator.next()
        func hex(_ v: UInt64, _ digits: Int) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: max(0, digits - s.count)) + s.suffix(digits)
        }
        return "\(hex(a >> 32, 8))-\(hex((a >> 16) & 0xFFFF, 4))-\(hex(a & 0xFFFF, 4))-\(hex(b >> 48, 4))-\(hex(b & 0xFFFF_FFFF_FFFF, 12))"
    }
}

/// `proxy.global.backends` for scripts.
extension BackendPool: ScriptBackendsHost {
    public var backendCount: Int { count }

    public func backendInfo(_ index: Int) -> ScriptBackendInfo? {
        let idleTotal = idleCount(backend: index)
        return entries.withLockedValue { value -> ScriptBackendInfo? in
            guard value.backends.indices.contains(index) else { return nil }
            let e = value.backends[index]
            let dst: ScriptAddress
            switch e.configuration.address {
            case .tcp(let host, let port):
                dst = ScriptAddress(name: e.configuration.address.description, address: host, port: port, type: host.contains(":") ? 10 : 2)
            case .unix(let path):
                dst = ScriptAddress(name: path, address: path, port: 0, type: 1)
            }
            return ScriptBackendInfo(dst: dst, connectedClients: e.connectedClients, state: e.state.rawValue,
                                     type: e.configuration.type == .readWrite ? 1 : 2, uuid: e.uuid,
                                     idlingConnections: idleTotal, minIdleConnections: e.minIdle, maxIdleConnections: e.maxIdle)
        }
    }

    public func setBackendState(_ index: Int, _ state: Int) {
        guard let s = BackendState(rawValue: state) else { return }
        setState(index, s)
    }

    public func setBackendUUID(_ index: Int, _ uuid: String?) {
        entries.withLockedValue { value in
            guard value.backends.indices.contains(index) else { return }
            value.backends[index].uuid = uuid ?? ""
        }
    }

    /// Idle connections of `user` to backend `index`. Called from a hook, it counts those on the
    /// hook's own event loop: the only ones its connection can take.
    public func idleConnections(_ index: Int, user: String) -> Int {
        let loop = MultiThreadedEventLoopGroup.currentEventLoop.map { ObjectIdentifier($0 as AnyObject) }
        return idle.withLockedValue { counts in
            if let loop { return counts[IdleKey(loop: loop, backend: index, user: user)] ?? 0 }
            return counts.reduce(0) { $0 + ($1.key.backend == index && $1.key.user == user ? $1.value : 0) }
        }
    }

    public func setPoolLimits(_ index: Int, min: Int?, max: Int?) {
        entries.withLockedValue { value in
            guard value.backends.indices.contains(index) else { return }
            if let min { value.backends[index].minIdle = Swift.max(0, min) }
            if let max { value.backends[index].maxIdle = Swift.max(0, max) }
        }
    }
}
