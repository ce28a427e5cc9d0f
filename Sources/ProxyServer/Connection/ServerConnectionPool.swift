import MySQLWire
import NIOCore
import ProxyScripting

/// Logged-in server connections that scripts gave back (`proxy.connection.backend_ndx = 0`), kept
/// for the next command of a client of the same user that picks their backend: MySQL Proxy's
/// connection pool, which its read/write splitting script is built on. One per event loop, as a
/// connection is served by the loop of its client.
///
/// A connection is only reused by a session that negotiated the same capabilities (a client that
/// expects EOF packets must not get a server that leaves them out), and never while a transaction
/// is open on it. A parked connection that closes or speaks is dropped.
final class ServerConnectionPool {
    struct Key: Hashable {
        var backend: Int
        var user: String
        var capabilities: CapabilityFlags
    }

    struct Parked {
        var handler: BackendChannelHandler
        var key: Key
        var status: ServerStatus
        var server: ScriptServerInfo
        var address: ProxyAddress
        /// The client connection whose session last used it.
        var session: UInt64
    }

    /// Whether the server knows COM_RESET_CONNECTION (MariaDB 10.2.4, MySQL 5.7.3), which clears
    /// a session's variables, temporary tables, prepared statements and transaction while
    /// keeping its user: what a connection needs before it serves another client session.
    static func serverResetsSessions(_ version: String) -> Bool {
        // MariaDB's version string starts with "5.5.5-" for old clients' sake
        let text = version.hasPrefix("5.5.5-") ? String(version.dropFirst(6)) : version
        let numbers = text.prefix { $0.isNumber || $0 == "." }.split(separator: ".").compactMap { Int($0) }
        guard numbers.count >= 3 else { return false }
        let v = (numbers[0], numbers[1], numbers[2])
        return version.contains("MariaDB") ? v >= (10, 2, 4) : v >= (5, 7, 3)
    }

    let backends: BackendPool
    private let loopID: ObjectIdentifier
    private var idle: [Key: [Parked]] = [:]

    init(eventLoop: EventLoop, backends: BackendPool) {
        self.backends = backends
        self.loopID = ObjectIdentifier(eventLoop as AnyObject)
    }

    /// Keeps `connection` if there is room; false means the caller closes it.
    func park(_ connection: Parked) -> Bool {
        guard !connection.status.contains(.inTransaction),
              backends.idleCount(backend: connection.key.backend) < backends.maximumIdle(backend: connection.key.backend)
        else { return false }
        connection.handler.owner = nil
        connection.handler.parkedIn = self
        connection.handler.setReadsPaused(false)
        idle[connection.key, default: []].append(connection)
        backends.idleChanged(loop: loopID, backend: connection.key.backend, user: connection.key.user, by: 1)
        return true
    }

    /// The connection parked longest ago for `key`, if any (as MySQL Proxy's pool hands them
    /// out: connections take turns, so none idles into the server's wait_timeout).
    func take(_ key: Key) -> Parked? {
        take(key, where: { _ in true })
    }

    /// The connection parked longest ago for `key` that `matches`, if any.
    func take(_ key: Key, where matches: (Parked) -> Bool) -> Parked? {
        guard var list = idle[key], let index = list.firstIndex(where: matches) else { return nil }
        let connection = list.remove(at: index)
        idle[key] = list.isEmpty ? nil : list
        connection.handler.parkedIn = nil
        backends.idleChanged(loop: loopID, backend: key.backend, user: key.user, by: -1)
        return connection
    }

    /// A parked connection closed, or sent something while nobody asked (a server's last words).
    func parkedConnectionEnded(_ handler: BackendChannelHandler) {
        for (key, list) in idle {
            guard let i = list.firstIndex(where: { $0.handler === handler }) else { continue }
            var rest = list
            rest.remove(at: i)
            idle[key] = rest.isEmpty ? nil : rest
            backends.idleChanged(loop: loopID, backend: key.backend, user: key.user, by: -1)
            break
        }
        handler.parkedIn = nil
        handler.close()
    }

    var count: Int { idle.values.reduce(0) { $0 + $1.count } }

    func closeAll() {
        let all = idle
        idle = [:]
        for (key, list) in all {
            backends.idleChanged(loop: loopID, backend: key.backend, user: key.user, by: -list.count)
            for connection in list {
                connection.handler.parkedIn = nil
                connection.handler.close()
            }
        }
    }
}
