import Glibc
import NIOCore
import ProxyCore

/// Where to listen or connect: a TCP host and port, or a unix socket path.
public enum ProxyAddress: Hashable, Sendable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    /// Parses MySQL Proxy's address syntax: `host:port`, `:port` (all interfaces), `host` (default
    /// port), `[v6addr]:port`, or a path containing a `/` for a unix socket.
    public init(parsing text: String, defaultHost: String, defaultPort: Int) throws(ConfigurationError) {
        let text = text.trimmingCharacters(in: " \t")
        guard !text.isEmpty else { throw .invalidAddress(text, "empty address") }
        if text.contains("/") {
            self = .unix(path: text)
            return
        }
        var host = text
        var portText: Substring? = nil
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw .invalidAddress(text, "missing ']'") }
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if rest.hasPrefix(":") { portText = rest.dropFirst() } else if !rest.isEmpty {
                throw .invalidAddress(text, "unexpected text after ']'")
            }
        } else if let colon = text.lastIndex(of: ":") {
            if text.firstIndex(of: ":") != colon {
                // a bare IPv6 address without brackets: no port
                host = text
            } else {
                host = String(text[..<colon])
                portText = text[text.index(after: colon)...]
            }
        }
        var port = defaultPort
        if let portText {
            guard let p = Int(portText), (0...65535).contains(p) else {
                throw .invalidAddress(text, "port must be a number from 0 to 65535")
            }
            port = p
        }
        self = .tcp(host: host.isEmpty ? defaultHost : host, port: port)
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): return path
        }
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let c = s.first, set.contains(c) { s = s.dropFirst() }
        while let c = s.last, set.contains(c) { s = s.dropLast() }
        return String(s)
    }
}

public enum ConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidAddress(String, String)
    case invalidValue(option: String, value: String, reason: String)
    case adminNeedsCredentials

    public var description: String {
        switch self {
        case .invalidAddress(let text, let reason): return "invalid address '\(text)': \(reason)"
        case .invalidValue(let option, let value, let reason): return "invalid value '\(value)' for \(option): \(reason)"
        case .adminNeedsCredentials: return "the admin interface needs --admin-username and --admin-password; refusing to start it without them"
        }
    }
}

/// A listener that could not be bound (an address taken, a host that does not resolve).
public struct ListenError: Error, CustomStringConvertible {
    public var listener: String
    public var address: ProxyAddress
    public var underlying: any Error

    public var description: String {
        let reason = (underlying as? IOError).map { String(cString: strerror($0.errnoCode)) } ?? "\(underlying)"
        return "cannot listen on \(address) for \(listener): \(reason)"
    }
}

public enum BackendType: String, Hashable, Sendable {
    case readWrite = "rw"
    case readOnly = "ro"
}

public struct BackendConfiguration: Hashable, Sendable {
    public var address: ProxyAddress
    public var type: BackendType

    public init(address: ProxyAddress, type: BackendType = .readWrite) {
        self.address = address
        self.type = type
    }

    /// Parses a comma-separated list of backend addresses (each `host:port` or a unix socket path).
    public static func parseList(_ text: String, type: BackendType) throws(ConfigurationError) -> [BackendConfiguration] {
        var result: [BackendConfiguration] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: true) {
            let item = String(part).trimmingCharacters(in: " \t")
            if item.isEmpty { continue }
            result.append(BackendConfiguration(address: try ProxyAddress(parsing: item, defaultHost: "127.0.0.1", defaultPort: 3306), type: type))
        }
        return result
    }
}

/// Everything a proxy instance needs to run. The defaults are MySQL Proxy 0.8's.
public struct ProxyConfiguration: Sendable {
    /// `--proxy-address`, default `:4040` (all interfaces).
    public var listenAddress: ProxyAddress = .tcp(host: "0.0.0.0", port: 4040)
    /// `--proxy-backend-addresses` and `--proxy-read-only-backend-addresses`.
    public var backends: [BackendConfiguration] = [BackendConfiguration(address: .tcp(host: "127.0.0.1", port: 3306))]
    /// `--proxy-connect-timeout`, default 2 s.
    public var connectTimeout: TimeAmount = .seconds(2)
    /// `--proxy-read-timeout`: how long a client may stay silent between commands, and how long the
    /// server may stay silent while a command waits for its response. Default 8 hours.
    public var readTimeout: TimeAmount = .hours(8)
    /// `--proxy-write-timeout`: how long a write may stay blocked (a peer that does not read).
    /// Default 8 hours.
    public var writeTimeout: TimeAmount = .hours(8)
    /// `--proxy-login-timeout`: how long a client has, from its connect, to finish logging in (the
    /// TLS handshake included), as MariaDB's `connect_timeout`; nil: no limit. Default 10 s.
    public var loginTimeout: TimeAmount? = .seconds(10)
    /// How long a backend marked down is left alone before one new client may try it again
    /// (half-open: the others go elsewhere until that one knows). Default 0.5 s.
    public var backendRetryInterval: TimeAmount = .milliseconds(500)
    /// `--proxy-backend-greeting-timeout`: how long a server may take from the TCP connect to its
    /// greeting. One that misses it (stopped, hung, its accept queue full) is marked down and the
    /// client goes to the next backend. nil: no limit (the login timeout still applies).
    public var backendGreetingTimeout: TimeAmount? = .seconds(5)
    /// How long a graceful shutdown lets running commands finish before closing everything.
    public var shutdownGracePeriod: TimeAmount = .seconds(10)
    /// `--event-threads`, default 1 as in MySQL Proxy.
    public var eventThreads: Int = 1
    /// `--proxy-max-packet-size`: the largest packet the proxy assembles in memory where it must see
    /// a whole packet (a command on its way to `read_query`, a server packet a script buffers); a
    /// larger one ends that connection with ER_NET_PACKET_TOO_LARGE before it is buffered. Relayed
    /// packets are never assembled, whatever their size. Default 64 MiB, at most 1 GiB.
    public var maxAssembledPacketSize: Int = 64 << 20
    /// `--proxy-lua-timeout`: how long one hook may run, in seconds (0: no limit). A hook that runs
    /// longer is aborted and its client gets an ERR; every other client waits at most this long.
    public var luaTimeout: Double = 1
    /// `--proxy-lua-memory-limit`: the most the Lua state (all connections' scripts) may hold, in
    /// bytes (0: no limit). A hook that would go past it is aborted and its client gets an ERR.
    public var luaMemoryLimit: Int = 256 << 20
    /// TLS towards clients (`--ssl-cert`, `--ssl-key`, `--ssl-ca`, `--ssl-cipher`, `--tls-version`,
    /// `--require-secure-transport`, `--skip-ssl`).
    public var clientTLS = ClientTLSSettings()
    /// TLS towards backends (`--proxy-backend-ssl`, `--proxy-backend-ssl-ca`, `-cert`, `-key`).
    public var backendTLS = BackendTLSSettings()
    /// Protocol compression offered to clients (`--protocol-compression-algorithms`) and asked of
    /// backends (`--proxy-backend-compression`).
    public var compression = CompressionSettings()
    /// Active health checks: `--proxy-backend-check-interval` (nil or zero: off, as without an
    /// account), `--proxy-backend-check-user`, `--proxy-backend-check-password`.
    public var backendCheckInterval: TimeAmount?
    public var backendCheckUser: String?
    public var backendCheckPassword: String = ""
    /// The servers' accounts, read with `--proxy-users-user` / `--proxy-users-password` every
    /// `--proxy-users-refresh-interval` (nil user: not read).
    public var accountsUser: String?
    public var accountsPassword: String = ""
    public var accountsRefreshInterval: TimeAmount = .seconds(60)
    /// `--proxy-protocol-networks`: clients from these networks must start with a PROXY protocol
    /// header (v1 or v2), whose client address then stands for the connection's (nil: none do).
    public var proxyProtocolNetworks: NetworkList?
    /// `--proxy-backend-proxy-protocol`: each server connection starts with a PROXY v2 header
    /// naming the client, so the server sees it rather than the proxy.
    public var backendProxyProtocol = false
    /// `--metrics-address`: where `GET /metrics` serves Prometheus metrics (nil: nowhere).
    public var metricsAddress: ProxyAddress?
    /// `--query-log` and its settings: a JSON line per command (nil: no query log).
    public var queryLog: QueryLog.Settings?
    /// `--max-connections`: client connections at once, over all listeners of the proxy (0: no
    /// limit); one more is refused as the server refuses it (1040, "Too many connections").
    public var maxConnections: Int = 0
    /// `--max-unauthenticated-connections-per-address`: connections from one client address that
    /// have not finished logging in (0: no limit). A login takes milliseconds; many at once from
    /// one address hold the proxy's descriptors for nothing (a slow-login flood).
    public var maxUnauthenticatedConnectionsPerAddress: Int = 256
    /// `--proxy-auto-config-dir`: where scripts' `PROXY SAVE CONFIG` / `LOAD CONFIG` may write and
    /// read, by file name only (nil: they are refused).
    public var autoConfigDirectory: String?
    /// `--max-connections-per-address`: client connections at once from one client address (0: no limit).
    public var maxConnectionsPerAddress: Int = 0
    /// `--max-open-files`; 0 leaves the limit alone.
    public var maxOpenFiles: Int = 0

    /// `--proxy-lua-script`: the Lua script every connection runs. It is checked for changes as
    /// clients connect; new connections get an edited version.
    public var luaScript: String?
    /// The script's text, for programs that embed the proxy (used when `luaScript` is nil).
    public var luaScriptSource: String?
    /// `--lua-path` and `--lua-cpath`: `package.path` and `package.cpath` (";;" stands for the
    /// default, which LUA_PATH and LUA_CPATH set).
    public var luaPath: String?
    public var luaCPath: String?
    /// A directory of Lua modules put in front of `package.path` and `package.cpath`
    /// (`<prefix>/lib/moonproxy/lua` for the installed executable).
    public var luaLibraryDirectory: String?
    /// Largest result a script may have buffered with `resultset_is_needed = true`; a bigger one
    /// fails its query with an error instead of filling memory.
    public var resultsetBufferLimit: Int = 64 << 20
    /// Whether a pooled server connection is reset before a session other than the one that
    /// parked it uses it (`--proxy-pool-no-change-user` turns it off).
    public var resetPooledConnections = true
    /// `--proxy-auth`: who authenticates clients: the server (`relay`, the default) or the proxy
    /// itself against the accounts read with `accountsUser` (`proxy`).
    public var authentication = AuthenticationMode.relay
    /// `--proxy-pool-max`: server connections the proxy logged in kept per backend for the next
    /// client of the same login (`proxy` authentication only; 0: none).
    public var poolMaximum = 0
    /// `--proxy-pool-min-idle`: idle connections kept ready per login once a client proved it.
    public var poolMinimumIdle = 0
    /// `--proxy-multiplex`: sessions' state is tracked on the proxy's server connections.
    public var multiplex = false
    /// `--proxy-pool-idle-timeout`, `--proxy-pool-max-lifetime`.
    public var poolIdleTimeout = TimeAmount.seconds(300)
    public var poolMaximumLifetime = TimeAmount.seconds(3600)
    /// More entries for scripts' `proxy.global.config` (the command line's other options).
    public var scriptConfig: [String: String] = [:]

    /// Whether connections run a script.
    public var hasScript: Bool { luaScript != nil || luaScriptSource != nil }

    /// Whether the proxy listener runs (`--plugins` without `proxy`, or `--no-proxy`, turn it off).
    public var proxyEnabled: Bool = true
    /// The admin interface (`--plugins=admin`), if wanted.
    public var admin: AdminConfiguration?

    public init() {}

    /// A proxy for a program or a test to run in-process: on 127.0.0.1 with a port the system
    /// picks (read it back from `MoonProxy.port`), with the given backends (none by default:
    /// a script that answers in `connect_server` makes a mock server) and a script given as its
    /// text or as a file.
    public static func embedded(script source: String? = nil, scriptFile: String? = nil,
                                backends: [BackendConfiguration] = []) -> ProxyConfiguration {
        var c = ProxyConfiguration()
        c.listenAddress = .tcp(host: "127.0.0.1", port: 0)
        c.backends = backends
        c.luaScriptSource = source
        c.luaScript = scriptFile
        c.shutdownGracePeriod = .seconds(2)
        return c
    }
}

/// Who authenticates clients (`--proxy-auth`).
public enum AuthenticationMode: String, Sendable, CaseIterable {
    /// The server, through the relay (MySQL Proxy's way).
    case relay
    /// The proxy, against the servers' accounts; it then logs clients into servers itself.
    case proxy
}
