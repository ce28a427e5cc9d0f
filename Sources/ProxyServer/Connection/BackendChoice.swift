import NIOCore

/// Which backend a client's server connection is opened to, as a value the handler consults:
/// the script's choice when that backend may be used now, else the least-loaded read-write
/// backend that is not down (see `BackendPool`) and was not tried yet for this client. When none
/// is left the client is refused, with the reason.
struct BackendChoice {
    /// Backends tried for this client (each once).
    private(set) var tried: Set<Int> = []

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
