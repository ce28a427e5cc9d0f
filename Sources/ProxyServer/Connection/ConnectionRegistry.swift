import NIOConcurrencyHelpers
import NIOCore
import ProxyScripting

/// The proxy's client connections as the admin interface lists them (`SELECT * FROM connections`,
/// `chassis.get_connections()`): who, through which backend, and with what TLS and compression on
/// each link. Written when a connection's state changes (connect, backend, TLS, login, close),
/// never per packet.
final class ConnectionRegistry: Sendable {
    struct Entry: Sendable {
        var id: UInt64
        /// Kept as addresses and worded when listed (the admin interface asks rarely; connections
        /// come and go often).
        var client: SocketAddress?
        var backend: ProxyAddress?
        var user: String?
        var database: String?
        var clientTLS: String?
        var backendTLS: String?
        var clientCompression: String?
        var backendCompression: String?
        var loggedIn = false
        /// Multiplexing: whether the session holds a server connection, and what pins it there.
        var multiplexed: String?
        var pinned: String?
        /// Multiplexing: the binary prepared statements the session holds.
        var statements: Int?
        var since: NIODeadline
        /// Moves the (multiplexed) session to a backend, on its own event loop.
        var migrate: (@Sendable (Int) -> Void)?
    }

    private let entries = NIOLockedValueBox<[UInt64: Entry]>([:])

    func update(_ id: UInt64, _ change: (inout Entry) -> Void) {
        entries.withLockedValue { all in
            var entry = all[id] ?? Entry(id: id, since: .now())
            change(&entry)
            all[id] = entry
        }
    }

    /// The admin interface's MIGRATE: false when there is no such multiplexed session.
    func migrate(_ id: UInt64, to index: Int) -> Bool {
        guard let migrate = entries.withLockedValue({ $0[id]?.migrate }) else { return false }
        migrate(index)
        return true
    }

    func remove(_ id: UInt64) {
        _ = entries.withLockedValue { $0.removeValue(forKey: id) }
    }

    /// Every connection, oldest first, as name/value rows for scripts.
    func rows() -> [[(String, String)]] {
        let now = NIODeadline.now()
        return entries.withLockedValue { Array($0.values) }.sorted { $0.id < $1.id }.map { e in
            var row: [(String, String)] = [("id", "\(e.id)"), ("client", e.client?.logDescription ?? "local socket"),
                                           ("state", e.loggedIn ? "logged in" : "login"),
                                           ("seconds", "\((now - e.since).nanoseconds / 1_000_000_000)")]
            for (name, value) in [("backend", e.backend?.description), ("user", e.user), ("db", e.database), ("client_tls", e.clientTLS),
                                  ("backend_tls", e.backendTLS), ("client_compression", e.clientCompression),
                                  ("backend_compression", e.backendCompression), ("server_connection", e.multiplexed), ("pinned", e.pinned),
                                  ("statements", e.statements.map { "\($0)" })] {
                if let value { row.append((name, value)) }
            }
            return row
        }
    }
}
