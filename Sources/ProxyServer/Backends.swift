import NIOConcurrencyHelpers
import NIOCore

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
/// A failed connect marks a backend down; a down backend becomes a candidate again once
/// `retryInterval` has passed since it went down, and up once a connect to it succeeds.
public final class BackendPool: Sendable {
    private struct Entry {
        var configuration: BackendConfiguration
        /// The address resolved once, for IP literals and unix sockets (host names resolve per connect).
        var resolved: SocketAddress?
        var state: BackendState = .unknown
        var connectedClients = 0
        var downSince: NIODeadline? = nil
        var uuid: String
    }

    private let entries: NIOLockedValueBox<(backends: [Entry], rotation: Int)>
    public let retryInterval: TimeAmount

    public init(_ backends: [BackendConfiguration], retryInterval: TimeAmount = .seconds(5)) {
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
    public func pickForNewClient(excluding: Set<Int> = [], now: NIODeadline = .now()) -> (index: Int, address: ProxyAddress, resolved: SocketAddress?)? {
        entries.withLockedValue { value in
            var best: Int? = nil
            let n = value.backends.count
            guard n > 0 else { return nil }
            value.rotation &+= 1
            for offset in 0..<n {
                let i = (offset + value.rotation) % n
                let e = value.backends[i]
                guard e.configuration.type == .readWrite, !excluding.contains(i) else { continue }
                if e.state == .down, let since = e.downSince, now - since < retryInterval { continue }
                if let b = best, value.backends[b].connectedClients <= e.connectedClients { continue }
                best = i
            }
            guard let chosen = best else { return nil }
            return (chosen, value.backends[chosen].configuration.address, value.backends[chosen].resolved)
        }
    }

    /// The address of backend `index` if it may be used now (not down, or down long enough ago).
    public func usableAddress(_ index: Int, now: NIODeadline = .now()) -> ProxyAddress? {
        entries.withLockedValue { value in
            guard value.backends.indices.contains(index) else { return nil }
            let e = value.backends[index]
            if e.state == .down, let since = e.downSince, now - since < retryInterval { return nil }
            return e.configuration.address
        }
    }

    public func markDown(_ index: Int, now: NIODeadline = .now()) {
        entries.withLockedValue { value in
            guard value.backends.indices.contains(index) else { return }
            value.backends[index].state = .down
            value.backends[index].downSince = now
        }
    }

    public func markUp(_ index: Int) {
        entries.withLockedValue { value in
            guard value.backends.indices.contains(index) else { return }
            value.backends[index].state = .up
            value.backends[index].downSince = nil
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
