import ArgumentParser
import ProxyCore
import ProxyServer

/// The log levels MySQL Proxy accepts, from most to least severe.
enum LogLevelOption: String, ExpressibleByArgument, CaseIterable, Sendable {
    case critical, error, warning, message, info, debug
}

struct ProxyOptions: ParsableArguments {
    @Option(name: [.customShort("P", allowingJoined: true), .customLong("proxy-address")],
            help: ArgumentHelp("listening address:port of the proxy-server (default: :4040); a path is a unix socket", valueName: "host:port"))
    var proxyAddress: String?

    @Option(name: [.customShort("r", allowingJoined: true), .customLong("proxy-read-only-backend-addresses")],
            help: ArgumentHelp("address:port of the remote slave-server (default: not set); repeatable, comma-separated", valueName: "host:port"))
    var proxyReadOnlyBackendAddresses: [String] = []

    @Option(name: [.customShort("b", allowingJoined: true), .customLong("proxy-backend-addresses")],
            help: ArgumentHelp("address:port of the remote backend-servers (default: 127.0.0.1:3306); repeatable, comma-separated", valueName: "host:port"))
    var proxyBackendAddresses: [String] = []

    @Flag(name: .customLong("proxy-skip-profiling"), help: "disables profiling of queries (accepted for compatibility)")
    var proxySkipProfiling = false

    @Flag(name: .customLong("proxy-fix-bug-25371"), help: "fix bug #25371 (mysqld > 5.1.12) for older libmysql versions (accepted for compatibility)")
    var proxyFixBug25371 = false

    @Option(name: [.customShort("s", allowingJoined: true), .customLong("proxy-lua-script")],
            help: ArgumentHelp("filename of the lua script (default: not set)", valueName: "file"))
    var proxyLuaScript: String?

    @Option(name: .customLong("proxy-resultset-buffer-limit"),
            help: ArgumentHelp("largest result a script may buffer with resultset_is_needed, in bytes (MoonProxy; default: 67108864)", valueName: "bytes"))
    var proxyResultsetBufferLimit: Int?

    @Option(name: .customLong("proxy-lua-timeout"),
            help: ArgumentHelp("seconds one Lua hook may run before it is aborted and its client gets an error; 0: no limit (MoonProxy; default: 1)", valueName: "seconds"))
    var proxyLuaTimeout: Double?

    @Option(name: .customLong("proxy-lua-memory-limit"),
            help: ArgumentHelp("bytes the Lua scripts may hold (K, M, G allowed); a hook that needs more is aborted and its client gets an error; 0: no limit (MoonProxy; default: 256M)", valueName: "bytes"))
    var proxyLuaMemoryLimit: String?

    @Option(name: .customLong("proxy-max-packet-size"),
            help: ArgumentHelp("largest packet the proxy assembles where it must see a whole one (a command for read_query, a result a script buffers); larger ones end the connection with error 1153 (K, M, G allowed; MoonProxy; default: 64M, at most 1G)", valueName: "bytes"))
    var proxyMaxPacketSize: String?

    @Flag(name: .customLong("no-proxy"), help: "don't start the proxy-module (default: enabled)")
    var noProxy = false

    @Flag(name: .customLong("proxy-pool-no-change-user"), help: "don't reset a pooled server connection before another client session uses it (default: reset, with COM_RESET_CONNECTION)")
    var proxyPoolNoChangeUser = false

    @Option(name: .customLong("proxy-connect-timeout"), help: ArgumentHelp("connect timeout in seconds (default: 2.0 seconds)", valueName: "seconds"))
    var proxyConnectTimeout: Double?

    @Option(name: .customLong("proxy-read-timeout"), help: ArgumentHelp("read timeout in seconds (default: 8 hours)", valueName: "seconds"))
    var proxyReadTimeout: Double?

    @Option(name: .customLong("proxy-write-timeout"), help: ArgumentHelp("write timeout in seconds (default: 8 hours)", valueName: "seconds"))
    var proxyWriteTimeout: Double?

    @Option(name: .customLong("proxy-login-timeout"),
            help: ArgumentHelp("seconds a client has from its connect to finish logging in, TLS handshake included, as MariaDB's connect_timeout; 0: no limit (MoonProxy; default: 10)", valueName: "seconds"))
    var proxyLoginTimeout: Double?

    @Option(name: .customLong("proxy-backend-retry-interval"),
            help: ArgumentHelp("seconds before one client is tried again on a backend marked down, while the others go elsewhere (MoonProxy; default: 0.5)", valueName: "seconds"))
    var proxyBackendRetryInterval: Double?

    @Option(name: .customLong("proxy-backend-greeting-timeout"),
            help: ArgumentHelp("seconds a server has from the connect to its greeting; one that misses it is marked down and the client tried on the next backend; 0: no limit (MoonProxy; default: 5)", valueName: "seconds"))
    var proxyBackendGreetingTimeout: Double?

    @Option(name: .customLong("proxy-shutdown-timeout"),
            help: ArgumentHelp("seconds a shutdown waits for running commands (MoonProxy; default: 10)", valueName: "seconds"))
    var proxyShutdownTimeout: Double?

    @Option(name: .customLong("proxy-backend-check-interval"), help: ArgumentHelp("seconds between health checks of each backend, with --proxy-backend-check-user; 0: off (MoonProxy; default: 2)", valueName: "seconds"))
    var proxyBackendCheckInterval: Double?

    @Option(name: .customLong("proxy-backend-check-user"), help: ArgumentHelp("account the health checks log in with (mysql_native_password; needs no privileges); without it, a backend is marked down only when a connect fails (MoonProxy)", valueName: "user"))
    var proxyBackendCheckUser: String?

    @Option(name: .customLong("proxy-backend-check-password"), help: ArgumentHelp("password of the health check account; visible to other users in ps: prefer --proxy-backend-check-password-file or MOONPROXY_BACKEND_CHECK_PASSWORD (MoonProxy)", valueName: "password"))
    var proxyBackendCheckPassword: String?

    @Option(name: .customLong("proxy-backend-check-password-file"), help: ArgumentHelp("file holding the health check account's password (its first line; not readable by others) (MoonProxy)", valueName: "file"))
    var proxyBackendCheckPasswordFile: String?

    @Option(name: .customLong("proxy-users-user"), help: ArgumentHelp("service account the servers' accounts are read with (SELECT on mysql.global_priv; mysql_native_password); the admin interface lists them (MoonProxy)", valueName: "user"))
    var proxyUsersUser: String?

    @Option(name: .customLong("proxy-users-password-file"), help: ArgumentHelp("file holding the service account's password (its first line; not readable by others); or MOONPROXY_USERS_PASSWORD (MoonProxy)", valueName: "file"))
    var proxyUsersPasswordFile: String?

    @Option(name: .customLong("proxy-users-refresh-interval"), help: ArgumentHelp("seconds between readings of the accounts (MoonProxy; default: 60)", valueName: "seconds"))
    var proxyUsersRefreshInterval: Double?

    @Option(name: .customLong("proxy-auth"), help: ArgumentHelp("who authenticates clients: relay (the server, through the proxy) or proxy (the proxy itself, against the accounts read with --proxy-users-user; it then logs clients into servers) (MoonProxy; default: relay)", valueName: "relay|proxy"))
    var proxyAuth: String?

    @Option(name: .customLong("proxy-pool-max"), help: ArgumentHelp("with --proxy-auth=proxy: server connections kept per backend when their clients quit, for the next client of the same login (MoonProxy; default: 0, none)", valueName: "n"))
    var proxyPoolMax: Int?

    @Option(name: .customLong("proxy-pool-min-idle"), help: ArgumentHelp("with a pool: idle server connections kept ready per login once a client proved it (the proxy logs new ones in itself when a client takes one) (MoonProxy; default: 0)", valueName: "n"))
    var proxyPoolMinIdle: Int?

    @Option(name: .customLong("proxy-pool-idle-timeout"), help: ArgumentHelp("seconds a pooled server connection may stay unused before it is closed (MoonProxy; default: 300)", valueName: "seconds"))
    var proxyPoolIdleTimeout: Double?

    @Option(name: .customLong("proxy-pool-max-lifetime"), help: ArgumentHelp("seconds after which a server connection is no longer pooled (MoonProxy; default: 3600)", valueName: "seconds"))
    var proxyPoolMaxLifetime: Double?

    @Flag(name: .customLong("proxy-multiplex"), help: ArgumentHelp("with --proxy-auth=proxy and a pool: the proxy turns the session trackers on on its server connections and follows each session's state from the server's OK packets (the ground for sessions sharing server connections) (MoonProxy)"))
    var proxyMultiplex = false

    @Option(name: .customLong("proxy-auto-config-dir"), help: ArgumentHelp("directory in which scripts' PROXY SAVE CONFIG / LOAD CONFIG (proxy.auto-config) may write and read, by file name only; without it both are refused (MoonProxy)", valueName: "dir"))
    var proxyAutoConfigDir: String?

    @Option(name: .customLong("proxy-protocol-networks"), help: ArgumentHelp("clients from these networks (CIDR ranges, addresses, localhost, *; comma-separated) start with a PROXY protocol v1 or v2 header, as MariaDB's proxy_protocol_networks (MoonProxy; default: none)", valueName: "networks"))
    var proxyProtocolNetworks: String?

    @Flag(name: .customLong("proxy-backend-proxy-protocol"), help: "send a PROXY protocol v2 header naming the client to the server before anything else (MoonProxy)")
    var proxyBackendProxyProtocol = false

    @Option(name: .customLong("max-connections"), help: ArgumentHelp("client connections at once; one more gets error 1040 'Too many connections' instead of a greeting (MoonProxy; default: 0, no limit)", valueName: "n"))
    var maxConnections: Int?

    @Option(name: .customLong("max-connections-per-address"), help: ArgumentHelp("client connections at once from one client address, refused likewise (MoonProxy; default: 0, no limit)", valueName: "n"))
    var maxConnectionsPerAddress: Int?

    @Option(name: .customLong("max-unauthenticated-connections-per-address"), help: ArgumentHelp("connections from one client address that have not finished logging in, at once; one more is refused likewise (MoonProxy; default: 256; 0: no limit)", valueName: "n"))
    var maxUnauthenticatedConnectionsPerAddress: Int?

    @Option(name: .customLong("lua-path"), help: ArgumentHelp("set the LUA_PATH", valueName: "path"))
    var luaPath: String?

    @Option(name: .customLong("lua-cpath"), help: ArgumentHelp("set the LUA_CPATH", valueName: "path"))
    var luaCpath: String?
}

struct TLSOptions: ParsableArguments {
    @Option(name: .customLong("ssl-cert"), help: ArgumentHelp("PEM certificate (chain) clients see; without it a self-signed one is made at startup (MoonProxy)", valueName: "file"))
    var sslCert: String?

    @Option(name: .customLong("ssl-key"), help: ArgumentHelp("PEM private key of --ssl-cert (MoonProxy; default: the --ssl-cert file)", valueName: "file"))
    var sslKey: String?

    @Option(name: .customLong("ssl-ca"), help: ArgumentHelp("PEM CA certificates: clients are asked for a certificate, verified against these when they send one (MoonProxy)", valueName: "file"))
    var sslCa: String?

    @Flag(name: [.customLong("require-x509"), .customLong("require-client-certificate")], help: "with --ssl-ca: every TLS client must present a certificate that verifies against it, as an account's REQUIRE X509 (MoonProxy)")
    var requireX509 = false

    @Option(name: .customLong("ssl-cipher"), help: ArgumentHelp("OpenSSL cipher list for TLS 1.2 and earlier (MoonProxy)", valueName: "list"))
    var sslCipher: String?

    @Option(name: .customLong("tls-version"), help: ArgumentHelp("TLS versions clients may use (MoonProxy; default: TLSv1.2,TLSv1.3)", valueName: "list"))
    var tlsVersion: String?

    @Flag(name: .customLong("require-secure-transport"), help: "refuse plaintext logins over TCP with error 3159 (MoonProxy)")
    var requireSecureTransport = false

    @Flag(name: .customLong("skip-ssl"), help: "never offer TLS to clients (MoonProxy; by default TLS is offered when the backend offers it, or always with --ssl-cert)")
    var skipSsl = false

    @Option(name: .customLong("proxy-backend-ssl"), help: ArgumentHelp("TLS to backends: off, preferred (when the client uses TLS and the server offers it), required, verify-ca, verify-identity (MoonProxy; default: preferred)", valueName: "mode"))
    var proxyBackendSsl: String?

    @Option(name: .customLong("proxy-backend-ssl-ca"), help: ArgumentHelp("PEM CA certificates backends' certificates are verified against (MoonProxy; default: the system's)", valueName: "file"))
    var proxyBackendSslCa: String?

    @Option(name: .customLong("proxy-backend-ssl-cert"), help: ArgumentHelp("PEM client certificate the proxy presents to backends (MoonProxy)", valueName: "file"))
    var proxyBackendSslCert: String?

    @Option(name: .customLong("proxy-backend-ssl-key"), help: ArgumentHelp("PEM private key of --proxy-backend-ssl-cert (MoonProxy)", valueName: "file"))
    var proxyBackendSslKey: String?

    @Option(name: .customLong("proxy-backend-server-public-key"), help: ArgumentHelp("PEM RSA public key of the backends (as MySQL's --server-public-key-path): a password a client sent in clear over TLS goes to a backend without verified TLS only encrypted with this key (MoonProxy)", valueName: "file"))
    var proxyBackendServerPublicKey: String?

    @Flag(name: .customLong("proxy-backend-get-server-public-key"), help: "trust backends that are not verified with clients' passwords: take the RSA key a backend sends on a plaintext link, and pass passwords sent in clear over an unverified TLS link (as MySQL's --get-server-public-key; MoonProxy)")
    var proxyBackendGetServerPublicKey = false

    @Option(name: .customLong("protocol-compression-algorithms"), help: ArgumentHelp("compression offered to clients: zlib, zstd, uncompressed, comma-separated (as MySQL's server option; default: zlib,zstd,uncompressed)", valueName: "list"))
    var protocolCompressionAlgorithms: String?

    @Option(name: .customLong("proxy-backend-compression"), help: ArgumentHelp("compression asked of backends: mirror (the client's choice, or the other algorithm the server offers), off, zlib, zstd, zstd:LEVEL (MoonProxy; default: mirror)", valueName: "mode"))
    var proxyBackendCompression: String?
}

struct AdminOptions: ParsableArguments {
    @Option(name: .customLong("admin-address"), help: ArgumentHelp("listening address:port of the admin-server; a bare :port is loopback, 0.0.0.0:port all interfaces (default: 127.0.0.1:4041)", valueName: "host:port"))
    var adminAddress: String?

    @Option(name: .customLong("admin-username"), help: ArgumentHelp("username to allow to log in", valueName: "user"))
    var adminUsername: String?

    @Option(name: .customLong("admin-password"), help: ArgumentHelp("password to allow to log in; visible to other users in ps: prefer --admin-password-file or MOONPROXY_ADMIN_PASSWORD", valueName: "password"))
    var adminPassword: String?

    @Option(name: .customLong("admin-password-file"), help: ArgumentHelp("file holding the admin password (its first line; not readable by others) (MoonProxy)", valueName: "file"))
    var adminPasswordFile: String?

    @Option(name: .customLong("admin-lua-script"), help: ArgumentHelp("script to execute by the admin plugin", valueName: "file"))
    var adminLuaScript: String?
}

struct MetricsOptions: ParsableArguments {
    @Option(name: .customLong("metrics-address"), help: ArgumentHelp("listening address:port of the Prometheus metrics endpoint, GET /metrics; a bare :port is loopback, 0.0.0.0:port all interfaces (MoonProxy; default: off)", valueName: "host:port"))
    var metricsAddress: String?

    @Option(name: .customLong("query-log"), help: ArgumentHelp("write one JSON object per client command to this file (time, connection, user, database, addresses, command, statement, duration, rows, bytes, error, proxy hints); reopened on SIGHUP (MoonProxy; default: off)", valueName: "file"))
    var queryLog: String?

    @Flag(name: .customLong("query-log-normalize"), help: "log statements normalised (constants as ?, comments dropped) rather than as sent (MoonProxy)")
    var queryLogNormalize = false

    @Option(name: .customLong("query-log-max-query-length"), help: ArgumentHelp("bytes of each statement the query log keeps (MoonProxy; default: 1024)", valueName: "bytes"))
    var queryLogMaxQueryLength: Int?
}

struct LoggingOptions: ParsableArguments {
    @Option(name: .customLong("log-level"), help: ArgumentHelp("log all messages of level ... or higher (default: warning)", valueName: "critical|error|warning|info|message|debug"))
    var logLevel: LogLevelOption?

    @Option(name: .customLong("log-file"), help: ArgumentHelp("log all messages in a file", valueName: "file"))
    var logFile: String?

    @Flag(name: .customLong("log-use-syslog"), help: "log all messages to syslog")
    var logUseSyslog = false

    @Flag(name: .customLong("log-backtrace-on-crash"), help: "try to invoke debugger on crash (Swift prints a backtrace itself)")
    var logBacktraceOnCrash = false

    @Flag(name: .customLong("verbose-shutdown"), help: "Always log the exit code when shutting down")
    var verboseShutdown = false
}

struct ProcessOptions: ParsableArguments {
    @Flag(name: [.customShort("V"), .customLong("version")], help: "Show version")
    var version = false

    @Option(name: .customLong("defaults-file"), help: ArgumentHelp("configuration file ([mysql-proxy] section, same keys)", valueName: "file"))
    var defaultsFile: String?

    @Flag(name: .customLong("daemon"), help: "Start in daemon-mode")
    var daemon = false

    @Option(name: .customLong("user"), help: ArgumentHelp("Run moonproxy as user", valueName: "user"))
    var user: String?

    @Option(name: .customLong("basedir"), help: ArgumentHelp("Base directory to prepend to relative paths in the config", valueName: "absolute path"))
    var basedir: String?

    @Option(name: .customLong("pid-file"), help: ArgumentHelp("PID file in case we are started as daemon", valueName: "file"))
    var pidFile: String?

    @Option(name: .customLong("plugin-dir"), help: ArgumentHelp("path to the plugins (accepted for compatibility)", valueName: "path"))
    var pluginDir: String?

    @Option(name: .customLong("plugins"), help: ArgumentHelp("plugins to load: proxy, admin (repeatable, comma-separated)", valueName: "name"))
    var plugins: [String] = []

    @Flag(name: .customLong("keepalive"), help: "try to restart the proxy if it crashed")
    var keepalive = false

    @Option(name: .customLong("max-open-files"), help: ArgumentHelp("maximum number of open files (ulimit -n)", valueName: "n"))
    var maxOpenFiles: Int?

    @Option(name: .customLong("event-threads"), help: ArgumentHelp("number of event-handling threads (default: 1)", valueName: "n"))
    var eventThreads: Int?
}

/// MySQL Proxy 0.8.5's command line, option for option (names, short forms, defaults), plus a few
/// of MoonProxy's own, in groups for `--help`; every option reads as `options.name`. Options that
/// mean nothing for MoonProxy are accepted and noted in the log.
@dynamicMemberLookup
struct Options: ParsableArguments {
    @OptionGroup(title: "Proxy") var proxy: ProxyOptions
    @OptionGroup(title: "TLS and compression") var tls: TLSOptions
    @OptionGroup(title: "Admin interface") var admin: AdminOptions
    @OptionGroup(title: "Metrics and query log") var metrics: MetricsOptions
    @OptionGroup(title: "Logging") var logging: LoggingOptions
    @OptionGroup(title: "Process") var process: ProcessOptions

    subscript<T>(dynamicMember path: KeyPath<ProxyOptions, T>) -> T { proxy[keyPath: path] }
    subscript<T>(dynamicMember path: KeyPath<TLSOptions, T>) -> T { tls[keyPath: path] }
    subscript<T>(dynamicMember path: KeyPath<AdminOptions, T>) -> T { admin[keyPath: path] }
    subscript<T>(dynamicMember path: KeyPath<MetricsOptions, T>) -> T { metrics[keyPath: path] }
    subscript<T>(dynamicMember path: KeyPath<LoggingOptions, T>) -> T { logging[keyPath: path] }
    subscript<T>(dynamicMember path: KeyPath<ProcessOptions, T>) -> T { process[keyPath: path] }

    mutating func validate() throws {
        if let n = self.eventThreads, n < 1 || n > 1024 { throw ValidationError("--event-threads must be between 1 and 1024") }
        if let n = self.maxOpenFiles, n < 0 { throw ValidationError("--max-open-files must not be negative") }
        if let n = self.maxConnections, n < 0 { throw ValidationError("--max-connections must not be negative") }
        if let t = self.proxyBackendCheckInterval, !(t >= 0 && t <= 3600) { throw ValidationError("--proxy-backend-check-interval must be a number of seconds from 0 to 3600") }
        if let t = self.proxyUsersRefreshInterval, !(t >= 1 && t <= 86400) { throw ValidationError("--proxy-users-refresh-interval must be a number of seconds from 1 to 86400") }
        if let mode = self.proxyAuth, AuthenticationMode(rawValue: mode) == nil { throw ValidationError("--proxy-auth must be relay or proxy") }
        if self.proxyAuth == "proxy" && (self.proxyUsersUser ?? "").isEmpty { throw ValidationError("--proxy-auth=proxy needs --proxy-users-user (the service account the servers' accounts are read with)") }
        if let n = self.proxyPoolMax, n < 0 || n > 100_000 { throw ValidationError("--proxy-pool-max must be a number from 0 to 100000") }
        if self.proxyPoolMax ?? 0 > 0 && self.proxyAuth != "proxy" { throw ValidationError("--proxy-pool-max needs --proxy-auth=proxy (the pool logs connections in with the credentials the proxy verified)") }
        if let t = self.proxyPoolIdleTimeout, !(t >= 0.01 && t <= 86400) { throw ValidationError("--proxy-pool-idle-timeout must be a number of seconds from 0.01 to 86400") }
        if self.proxyMultiplex && (self.proxyAuth != "proxy" || (self.proxyPoolMax ?? 0) == 0) { throw ValidationError("--proxy-multiplex needs --proxy-auth=proxy and --proxy-pool-max") }
        if let n = self.proxyPoolMinIdle, n < 0 || n > (self.proxyPoolMax ?? 0) { throw ValidationError("--proxy-pool-min-idle must be a number from 0 to --proxy-pool-max") }
        if let t = self.proxyPoolMaxLifetime, !(t >= 1 && t <= 31_536_000) { throw ValidationError("--proxy-pool-max-lifetime must be a number of seconds from 1 to 31536000") }
        if let n = self.maxConnectionsPerAddress, n < 0 { throw ValidationError("--max-connections-per-address must not be negative") }
        if let n = self.maxUnauthenticatedConnectionsPerAddress, n < 0 { throw ValidationError("--max-unauthenticated-connections-per-address must not be negative") }
        if self.requireX509 && self.sslCa == nil { throw ValidationError("--require-x509 needs --ssl-ca (the CA client certificates are verified against)") }
        if self.proxyBackendCheckPassword != nil && self.proxyBackendCheckPasswordFile != nil { throw ValidationError("give --proxy-backend-check-password or --proxy-backend-check-password-file, not both") }
        if self.adminPassword != nil && self.adminPasswordFile != nil { throw ValidationError("give --admin-password or --admin-password-file, not both") }
        if let n = self.queryLogMaxQueryLength, n < 0 || n > 1 << 20 { throw ValidationError("--query-log-max-query-length must be a number of bytes from 0 to 1048576") }
        if let n = self.proxyResultsetBufferLimit, n < 0 { throw ValidationError("--proxy-resultset-buffer-limit must not be negative") }
        if let t = self.proxyLuaTimeout, !(t >= 0 && t <= 3600) { throw ValidationError("--proxy-lua-timeout must be a number of seconds from 0 to 3600") }
        if let text = self.proxyLuaMemoryLimit {
            guard let n = Self.byteCount(text), n >= 0 else { throw ValidationError("--proxy-lua-memory-limit takes a number of bytes (K, M and G allowed), not '\(text)'") }
            if n != 0 && n < 1 << 20 { throw ValidationError("--proxy-lua-memory-limit must be 0 (no limit) or at least 1M") }
        }
        if let text = self.proxyMaxPacketSize {
            guard let n = Self.byteCount(text), n >= 1024, n <= 1 << 30 else {
                throw ValidationError("--proxy-max-packet-size takes a number of bytes from 1K to 1G (K, M and G allowed), not '\(text)'")
            }
        }
        for (name, value) in [("--proxy-connect-timeout", self.proxyConnectTimeout), ("--proxy-read-timeout", self.proxyReadTimeout),
                              ("--proxy-write-timeout", self.proxyWriteTimeout), ("--proxy-backend-retry-interval", self.proxyBackendRetryInterval),
                              ("--proxy-shutdown-timeout", self.proxyShutdownTimeout), ("--proxy-login-timeout", self.proxyLoginTimeout),
                              ("--proxy-backend-greeting-timeout", self.proxyBackendGreetingTimeout)] {
            if let v = value, !(v >= 0 && v <= 31_536_000) { throw ValidationError("\(name) must be a number of seconds from 0 to 31536000") }
        }
        if let mode = self.proxyBackendSsl, BackendTLSSettings.Mode(rawValue: mode) == nil {
            throw ValidationError("--proxy-backend-ssl takes off, preferred, required, verify-ca or verify-identity, not '\(mode)'")
        }
        if let text = self.protocolCompressionAlgorithms {
            do { _ = try CompressionSettings.parseAlgorithms(text) } catch { throw ValidationError("\(error)") }
        }
        if let text = self.proxyBackendCompression {
            do { _ = try CompressionSettings.parseBackend(text) } catch { throw ValidationError("\(error)") }
        }
        if let text = self.tlsVersion {
            do { _ = try ClientTLSSettings.parseVersions(text) } catch { throw ValidationError("\(error)") }
        }
        if self.sslKey != nil && self.sslCert == nil { throw ValidationError("--ssl-key needs --ssl-cert") }
        if self.skipSsl && self.requireSecureTransport { throw ValidationError("--require-secure-transport cannot work with --skip-ssl") }
        for plugin in pluginList where plugin != "proxy" && plugin != "admin" {
            throw ValidationError("unknown plugin '\(plugin)' (MoonProxy has: proxy, admin)")
        }
    }

    /// A number of bytes, with an optional K, M or G suffix (powers of 1024).
    static func byteCount(_ text: String) -> Int? {
        var digits = text.trimmed
        var scale = 1
        if let last = digits.last?.uppercased(), let shift = ["K": 10, "M": 20, "G": 30][last] {
            scale = 1 << shift
            digits.removeLast()
        }
        guard let n = Int(digits), n >= 0, n <= Int.max / scale else { return nil }
        return n * scale
    }

    var pluginList: [String] {
        self.plugins.flatMap { $0.split(separator: ",").map { String($0).trimmed } }.filter { !$0.isEmpty }
    }
}

extension String {
    var trimmed: String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\t" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" || c == "\r" { s = s.dropLast() }
        return String(s)
    }

}

/// The program as `--help` presents it: its name and what it is, with the options above.
struct MoonProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moonproxy",
        abstract: "MySQL/MariaDB protocol proxy with Lua 5.4 hook scripts, in the tradition of MySQL Proxy 0.8.",
        discussion: """
        Takes MySQL Proxy's options (and a --defaults-file with a [mysql-proxy] section); those marked \
        MoonProxy are its own. Example: moonproxy -P :4040 -b 127.0.0.1:3306 -s script.lua
        """)

    @OptionGroup var options: Options
}
