#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import ProxyCore
import ProxyScripting
import ProxyServer

// The proxy's configuration from the command line: each option into its place, relative paths
// taken from --basedir. A value that does not parse ends the program with exit code 2.

extension Options {
    /// `path` relative to --basedir when one is given.
    func resolve(_ path: String?) -> String? {
        guard let path, !path.isEmpty else { return path }
        guard let base = self.basedir, !path.hasPrefix("/") else { return path }
        return base.hasSuffix("/") ? base + path : base + "/" + path
    }

    func configuration() -> ProxyConfiguration {
        var configuration = ProxyConfiguration()
        applyAddresses(&configuration)
        applyLimits(&configuration)
        applyScripting(&configuration)
        applyTLS(&configuration)
        if pluginList.contains("admin") { configuration.admin = adminConfiguration() }
        return configuration
    }

    /// Listeners, backends, health checks, metrics, the query log.
    private func applyAddresses(_ configuration: inout ProxyConfiguration) {
        let options = self
        do {
            configuration.listenAddress = try ProxyAddress(parsing: options.proxyAddress ?? ":4040", defaultHost: "0.0.0.0", defaultPort: 4040)
            if let networks = options.proxyProtocolNetworks {
                do {
                    configuration.proxyProtocolNetworks = try NetworkList(parsing: networks)
                } catch let problem as NetworkList.Problem {
                    MoonProxyMain.fail("--proxy-protocol-networks: \(problem)", code: 2)
                }
            }
            configuration.backendProxyProtocol = options.proxyBackendProxyProtocol
            if let user = options.proxyBackendCheckUser, !user.isEmpty {
                let seconds = options.proxyBackendCheckInterval ?? 2
                configuration.backendCheckInterval = seconds > 0 ? .nanoseconds(Int64(seconds * 1e9)) : nil
                configuration.backendCheckUser = user
                configuration.backendCheckPassword = try SecretFile.resolve(
                    value: options.proxyBackendCheckPassword, file: resolve(options.proxyBackendCheckPasswordFile),
                    fileOption: "--proxy-backend-check-password-file", environment: "MOONPROXY_BACKEND_CHECK_PASSWORD") ?? ""
            }
            if let user = options.proxyUsersUser, !user.isEmpty {
                configuration.accountsUser = user
                configuration.accountsPassword = try SecretFile.resolve(
                    value: nil, file: resolve(options.proxyUsersPasswordFile),
                    fileOption: "--proxy-users-password-file", environment: "MOONPROXY_USERS_PASSWORD") ?? ""
                if let seconds = options.proxyUsersRefreshInterval { configuration.accountsRefreshInterval = .nanoseconds(Int64(seconds * 1e9)) }
            }
            configuration.authentication = options.proxyAuth.flatMap(AuthenticationMode.init(rawValue:)) ?? .relay
            configuration.poolMaximum = options.proxyPoolMax ?? 0
            configuration.poolMinimumIdle = options.proxyPoolMinIdle ?? 0
            configuration.multiplex = options.proxyMultiplex
            if let seconds = options.proxyPoolIdleTimeout { configuration.poolIdleTimeout = .nanoseconds(Int64(seconds * 1e9)) }
            if let seconds = options.proxyPoolMaxLifetime { configuration.poolMaximumLifetime = .nanoseconds(Int64(seconds * 1e9)) }
            if let metrics = options.metricsAddress {
                // a bare :port is loopback: metrics show the proxy's traffic to whoever asks
                configuration.metricsAddress = try ProxyAddress(parsing: metrics, defaultHost: "127.0.0.1", defaultPort: 9104)
            }
            if let path = resolve(options.queryLog) {
                var queryLog = QueryLog.Settings(path: path)
                queryLog.normalize = options.queryLogNormalize
                if let limit = options.queryLogMaxQueryLength { queryLog.textLimit = limit }
                configuration.queryLog = queryLog
            }
            var backends: [BackendConfiguration] = []
            for list in options.proxyBackendAddresses {
                backends += try BackendConfiguration.parseList(list, type: .readWrite)
            }
            if options.proxyBackendAddresses.isEmpty {
                backends.append(BackendConfiguration(address: .tcp(host: "127.0.0.1", port: 3306)))
            }
            for list in options.proxyReadOnlyBackendAddresses {
                backends += try BackendConfiguration.parseList(list, type: .readOnly)
            }
            configuration.backends = backends
        } catch {
            MoonProxyMain.fail("\(error)", code: 2)
        }
    }

    /// Timeouts and limits.
    private func applyLimits(_ configuration: inout ProxyConfiguration) {
        let options = self
        func seconds(_ value: Double?, _ fallback: TimeAmount) -> TimeAmount {
            guard let value else { return fallback }
            return .nanoseconds(Int64(value * 1_000_000_000))
        }
        configuration.connectTimeout = seconds(options.proxyConnectTimeout, configuration.connectTimeout)
        configuration.readTimeout = seconds(options.proxyReadTimeout, configuration.readTimeout)
        configuration.writeTimeout = seconds(options.proxyWriteTimeout, configuration.writeTimeout)
        configuration.backendRetryInterval = seconds(options.proxyBackendRetryInterval, configuration.backendRetryInterval)
        configuration.shutdownGracePeriod = seconds(options.proxyShutdownTimeout, configuration.shutdownGracePeriod)
        if let login = options.proxyLoginTimeout { configuration.loginTimeout = login > 0 ? seconds(login, .seconds(10)) : nil }
        if let greeting = options.proxyBackendGreetingTimeout {
            configuration.backendGreetingTimeout = greeting > 0 ? seconds(greeting, .seconds(5)) : nil
        }
        configuration.eventThreads = options.eventThreads ?? 1
        configuration.maxOpenFiles = options.maxOpenFiles ?? 0
        configuration.maxConnections = options.maxConnections ?? 0
        configuration.maxConnectionsPerAddress = options.maxConnectionsPerAddress ?? 0
        if let n = options.maxUnauthenticatedConnectionsPerAddress { configuration.maxUnauthenticatedConnectionsPerAddress = n }
        configuration.autoConfigDirectory = resolve(options.proxyAutoConfigDir)
    }

    private func applyScripting(_ configuration: inout ProxyConfiguration) {
        let options = self
        configuration.luaScript = resolve(options.proxyLuaScript)
        configuration.luaPath = options.luaPath
        configuration.luaCPath = options.luaCpath
        configuration.luaLibraryDirectory = MoonProxyMain.luaLibraryDirectory(basedir: options.basedir)
        if let limit = options.proxyResultsetBufferLimit { configuration.resultsetBufferLimit = limit }
        configuration.resetPooledConnections = !options.proxyPoolNoChangeUser
        if let timeout = options.proxyLuaTimeout { configuration.luaTimeout = timeout }
        if let limit = options.proxyLuaMemoryLimit.flatMap(Options.byteCount) { configuration.luaMemoryLimit = limit }
        if let size = options.proxyMaxPacketSize.flatMap(Options.byteCount) { configuration.maxAssembledPacketSize = size }
        configuration.scriptConfig["log-level"] = (options.logLevel ?? .warning).rawValue
        if let basedir = options.basedir { configuration.scriptConfig["basedir"] = basedir }
    }

    /// TLS and compression on both links.
    private func applyTLS(_ configuration: inout ProxyConfiguration) {
        let options = self
        configuration.clientTLS.certificatePath = resolve(options.sslCert)
        configuration.clientTLS.keyPath = resolve(options.sslKey)
        configuration.clientTLS.caPath = resolve(options.sslCa)
        configuration.clientTLS.cipher = options.sslCipher
        if let text = options.tlsVersion, let versions = try? ClientTLSSettings.parseVersions(text) { configuration.clientTLS.versions = versions }
        configuration.clientTLS.requireSecureTransport = options.requireSecureTransport
        configuration.clientTLS.requireX509 = options.requireX509
        configuration.clientTLS.disabled = options.skipSsl
        if let mode = options.proxyBackendSsl.flatMap(BackendTLSSettings.Mode.init(rawValue:)) { configuration.backendTLS.mode = mode }
        configuration.backendTLS.caPath = resolve(options.proxyBackendSslCa)
        configuration.backendTLS.certificatePath = resolve(options.proxyBackendSslCert)
        configuration.backendTLS.keyPath = resolve(options.proxyBackendSslKey)
        if let path = resolve(options.proxyBackendServerPublicKey) {
            guard let pem = readWholeFile(path, limit: 1 << 20) else {
                MoonProxyMain.fail("--proxy-backend-server-public-key: cannot read '\(path)': \(String(cString: strerror(errno)))", code: 2)
            }
            configuration.backendTLS.serverPublicKeyPEM = String(decoding: pem, as: UTF8.self)
        }
        configuration.backendTLS.trustUnverifiedWithPasswords = options.proxyBackendGetServerPublicKey
        if let text = options.protocolCompressionAlgorithms, let flags = try? CompressionSettings.parseAlgorithms(text) {
            configuration.compression.clientAlgorithms = flags
        }
        if let text = options.proxyBackendCompression, let mode = try? CompressionSettings.parseBackend(text) {
            configuration.compression.backend = mode
        }
    }

    /// `--plugins=admin`: its address, account and script.
    private func adminConfiguration() -> AdminConfiguration {
        let options = self
        let password: String?
        do {
            password = try SecretFile.resolve(value: options.adminPassword, file: resolve(options.adminPasswordFile),
                                              fileOption: "--admin-password-file", environment: "MOONPROXY_ADMIN_PASSWORD")
        } catch {
            MoonProxyMain.fail("\(error)", code: 2)
        }
        guard let username = options.adminUsername, !username.isEmpty, let password, !password.isEmpty else {
            MoonProxyMain.fail("--plugins=admin needs --admin-username and a password (--admin-password-file, MOONPROXY_ADMIN_PASSWORD or --admin-password); the admin interface does not run without one", code: 1)
        }
        var admin = AdminConfiguration(username: username, password: password)
        do {
            // a bare :port is loopback: the admin interface shows every connection
            admin.address = try ProxyAddress(parsing: options.adminAddress ?? ":4041", defaultHost: "127.0.0.1", defaultPort: 4041)
        } catch {
            MoonProxyMain.fail("--admin-address: \(error)", code: 2)
        }
        admin.luaScript = resolve(options.adminLuaScript)
        return admin
    }
}
