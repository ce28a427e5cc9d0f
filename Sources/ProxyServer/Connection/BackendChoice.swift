import NIOCore

/// Which backend a client's server connection is opened to, as a value the handler consults:
/// the script's choice when that backend may be used now, else the least-loaded read-write
/// backend that is not down (see `BackendPool`) and was not tried yet for this client. When none
/// is left the client is refused, with the reason.
struct BackendChoice {
    /// Backends tried for this client (each once).
    private(set) var tried = BackendSet()

    enum Decision: Equatable {
        case connect(index: Int, address: ProxyAddress, resolved: SocketAddress?)
        case refuse(String)
    }

    mutating func next(preferred: Int?, from backends: BackendPool, now: NIODeadline = .now()) -> Decision {
        var choice: (index: Int, address: ProxyAddress, resolved: SocketAddress?)?
        if let preferred, !tried.contains(preferred) { choice = backends.candidate(preferred, now: now) }
        guard let (index, address, resolved) = choice ?? backends.pickForNewClient(excluding: tried, now: now) else {
            return .refuse(tried.isEmpty ? "all backends are down (MoonProxy)" : "no backend accepted the connection (MoonProxy)")
        }
        tried.insert(index)
        return .connect(index: index, address: address, resolved: resolved)
    }
}

/// A set of backend indices that allocates nothing for the first 64 (every deployment): a bit
/// each, with a `Set` behind for the rest.
struct BackendSet: Equatable {
    private var low: UInt64 = 0
    private var high: Set<Int>?

    var isEmpty: Bool { low == 0 && (high?.isEmpty ?? true) }

    func contains(_ index: Int) -> Bool {
        (0..<64).contains(index) ? low & (1 << UInt64(index)) != 0 : high?.contains(index) ?? false
    }

    mutating func insert(_ index: Int) {
        if (0..<64).contains(index) { low |= 1 << UInt64(index) } else { high = (high ?? []).union([index]) }
    }
}
