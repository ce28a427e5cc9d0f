import MySQLWire
import NIOCore
import ProxyCore

/// An endpoint as scripts see it (`src`, `dst`): MySQL Proxy's name, address, port and the
/// socket family as `type` (2 IPv4, 10 IPv6, 1 unix). Made from a socket's address, it keeps
/// the address and words it only when a script asks (most never do, and the wording costs a few
/// thousand instructions per address and connection).
public struct ScriptAddress: Hashable, Sendable {
    private enum Storage: Hashable, Sendable {
        case socket(SocketAddress)
        case fields(name: String, address: String, port: Int, type: Int)
    }
    private let storage: Storage

    public init(name: String, address: String, port: Int, type: Int) {
        storage = .fields(name: name, address: address, port: port, type: type)
    }

    public init(_ socket: SocketAddress) {
        storage = .socket(socket)
    }

    public var name: String {
        switch storage {
        case .socket(let socket): return socket.logDescription
        case .fields(let name, _, _, _): return name
        }
    }

    public var address: String {
        switch storage {
        case .socket(let socket):
            if case .unixDomainSocket = socket { return socket.pathname ?? "" }
            return socket.ipAddress ?? ""
        case .fields(_, let address, _, _): return address
        }
    }

    public var port: Int {
        switch storage {
        case .socket(let socket): return socket.port ?? 0
        case .fields(_, _, let port, _): return port
        }
    }

    public var type: Int {
        switch storage {
        case .socket(let socket):
            switch socket {
            case .v4: return 2
            case .v6: return 10
            case .unixDomainSocket: return 1
            }
        case .fields(_, _, _, let type): return type
        }
    }

    public static func == (lhs: ScriptAddress, rhs: ScriptAddress) -> Bool {
        lhs.name == rhs.name && lhs.address == rhs.address && lhs.port == rhs.port && lhs.type == rhs.type
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(name)
        hasher.combine(port)
        hasher.combine(type)
    }
}

extension SocketAddress {
    /// `ip:port`, `[ip6]:port` or the socket's path, as log lines and scripts show an address.
    public var logDescription: String {
        switch self {
        case .v4, .v6:
            if let ip = ipAddress, let port {
                return self.protocol == .inet6 ? "[\(ip)]:\(port)" : "\(ip):\(port)"
            }
            return "\(self)"
        case .unixDomainSocket:
            return pathname ?? "unix"
        }
    }
}

/// `proxy.connection.client`.
public struct ScriptClientInfo: Sendable {
    public var username: String = ""
    public var defaultDB: String = ""
    public var scrambledPassword: [UInt8] = []
    public var src: ScriptAddress?
    public var dst: ScriptAddress?
    /// The link's TLS, nil when it is plaintext.
    public var ssl: ScriptTLSInfo?
    /// The link's protocol compression ("zlib"), nil without.
    public var compression: String?
    public init() {}
}

/// `proxy.connection.client.ssl` and `proxy.connection.server.ssl`: the protocol version and
/// cipher as MariaDB's `Ssl_version` and `Ssl_cipher` name them.
public struct ScriptTLSInfo: Sendable, Equatable {
    public var version: String
    public var cipher: String?
    public init(version: String, cipher: String?) {
        self.version = version
        self.cipher = cipher
    }
}

/// `proxy.connection.server`.
public struct ScriptServerInfo: Sendable {
    public var threadID: UInt32 = 0
    public var mysqldVersion: Int = 0
    public var versionString: String = ""
    public var scrambleBuffer: [UInt8] = []
    public var defaultDB: String = ""
    public var username: String = ""
    public var src: ScriptAddress?
    public var dst: ScriptAddress?
    /// The link's TLS, nil when it is plaintext.
    public var ssl: ScriptTLSInfo?
    /// The link's protocol compression ("zlib"), nil without.
    public var compression: String?
    public init() {}

    /// MySQL Proxy's integer version (5.1.37 is 50137), or 0 when the string does not start with
    /// three numbers of at most four digits. MariaDB's "5.5.5-" prefix is skipped unless
    /// `keepingReplicationPrefix` (mysql.proto reports the string as the server sent it).
    /// The version comes from the server: anything is possible, and nothing here may overflow.
    public static func versionNumber(_ version: String, keepingReplicationPrefix: Bool = false) -> Int {
        var version = version
        return version.withUTF8 { bytes in
            var i = 0
            if !keepingReplicationPrefix && bytes.starts(with: "5.5.5-".utf8) { i = 6 }
            // three runs of digits, whatever separates them, each of at most four digits
            var result = 0
            for _ in 0..<3 {
                while i < bytes.count && !(UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[i]) { i += 1 }
                var value = 0
                var digits = 0
                while i < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[i]) {
                    digits += 1
                    if digits > 4 { return 0 }
                    value = value * 10 + Int(bytes[i] - UInt8(ascii: "0"))
                    i += 1
                }
                if digits == 0 { return 0 }
                result = result * 100 + value
            }
            return result
        }
    }
}

/// What the proxy offers a connection's script through `proxy.connection`. Called on the
/// connection's event loop while the script runs.
public protocol ScriptConnectionHost: AnyObject {
    var scriptClient: ScriptClientInfo { get }
    var scriptServer: ScriptServerInfo? { get }
    /// 1-based index of the backend in use, 0 when there is none.
    var scriptBackendIndex: Int { get }
    /// `proxy.connection.backend_ndx = n`: 0 puts the server connection back into the pool, n
    /// moves to backend n (through its pool of idle connections).
    func scriptSetBackendIndex(_ index: Int)
    func scriptSetConnectionClose(_ close: Bool)
    /// The session's state as the proxy follows it from the server (`--proxy-auth=proxy` with
    /// `--proxy-multiplex`), as of the hook's start; nil where it is not followed.
    var scriptSessionState: SessionState? { get }
    /// `proxy.connection:migrate(n)`: the session moves to backend n (1-based) with its state
    /// once the hook has returned. Nil when accepted, else why not.
    func scriptMigrate(_ index: Int) -> String?
}

/// A backend as `proxy.global.backends[i]` shows it.
public struct ScriptBackendInfo: Sendable {
    public var dst: ScriptAddress
    public var connectedClients: Int
    public var state: Int
    public var type: Int
    public var uuid: String?
    public var idlingConnections: Int
    public var minIdleConnections: Int
    public var maxIdleConnections: Int

    public init(dst: ScriptAddress, connectedClients: Int, state: Int, type: Int, uuid: String?,
                idlingConnections: Int, minIdleConnections: Int, maxIdleConnections: Int) {
        self.dst = dst
        self.connectedClients = connectedClients
        self.state = state
        self.type = type
        self.uuid = uuid
        self.idlingConnections = idlingConnections
        self.minIdleConnections = minIdleConnections
        self.maxIdleConnections = maxIdleConnections
    }
}

/// What the proxy offers every script through `proxy.global.backends`; thread-safe.
public protocol ScriptBackendsHost: AnyObject, Sendable {
    var backendCount: Int { get }
    /// 0-based.
    func backendInfo(_ index: Int) -> ScriptBackendInfo?
    func setBackendState(_ index: Int, _ state: Int)
    func setBackendUUID(_ index: Int, _ uuid: String?)
    /// Idle pooled connections of `user` to backend `index`.
    func idleConnections(_ index: Int, user: String) -> Int
    func setPoolLimits(_ index: Int, min: Int?, max: Int?)
}

/// A value for `proxy.global.config`.
public indirect enum ScriptValue: Sendable, Equatable {
    case string(String)
    case integer(Int)
    case number(Double)
    case boolean(Bool)
    case array([ScriptValue])
    case table([String: ScriptValue])
}

/// Hook return codes, as MySQL Proxy numbers them.
public enum ProxyReturn {
    public static let noDecision = 0
    public static let sendQuery = 1
    public static let sendResult = 2
    public static let ignoreResult = 4
}
