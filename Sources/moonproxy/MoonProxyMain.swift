#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Dispatch
import Logging
import NIOCore
import ProxyScripting
import ProxyCore
import ProxyServer
import ServiceLifecycle

// moonproxy: parse MySQL Proxy's command line (and --defaults-file), set up logging and the
// process (daemon, keepalive, pid file, limits, user), then run the proxy until SIGTERM or SIGINT.

import NIOConcurrencyHelpers

@main
enum MoonProxyMain {
    static func fail(_ message: String, code: Int32) -> Never {
        var line = "moonproxy: \(message)\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        exit(code)
    }

    static func main() {
        // Scripts' print() writes to stdout: a line at a time, so that it reaches a log file or
        // the journal as it happens rather than when a 4 KiB buffer fills or the proxy stops.
        setvbuf(fdopen(1, "w"), nil, _IOLBF, 0)
        let commandLine = Array(CommandLine.arguments.dropFirst())

        if commandLine.contains(where: { ["--help-all", "--help-proxy", "--help-admin", "-?"].contains($0) }) {
            print(MoonProxyCommand.helpMessage(columns: nil))
            exit(0)
        }

        var options: Options
        do {
            options = try Options.parse(commandLine)
            if options.version {
                print(MoonProxyVersion.report)
                exit(0)
            }
            if let file = options.defaultsFile {
                let pairs = try DefaultsFile.read(path: file)
                let fromFile = try DefaultsFile.arguments(from: pairs, commandLine: commandLine)
                options = try Options.parse(fromFile + commandLine)
            }
        } catch let problem as DefaultsFile.Problem {
            fail(problem.description, code: 2)
        } catch let problem as SecretFile.Problem {
            fail(problem.description, code: 2)
        } catch {
            if Options.exitCode(for: error) == .success {
                print(MoonProxyCommand.helpMessage(columns: nil))
                exit(0)
            }
            fail("\(Options.message(for: error))\nTry 'moonproxy --help' for the list of options.", code: 2)
        }

        // Passwords given on the command line: out of what ps shows, and a word of warning.
        let secretsOnCommandLine = SecretFile.scrubCommandLine()

        /// Relative paths in the configuration are taken relative to --basedir when it is given.
        let basedir = options.basedir
        func resolve(_ path: String?) -> String? {
            guard let path, !path.isEmpty else { return path }
            guard let base = basedir, !path.hasPrefix("/") else { return path }
            return base.hasSuffix("/") ? base + path : base + "/" + path
        }

        // MARK: configuration

        var configuration = ProxyConfiguration()
        do {
            configuration.listenAddress = try ProxyAddress(parsing: options.proxyAddress ?? ":4040", defaultHost: "0.0.0.0", defaultPort: 4040)
            if let networks = options.proxyProtocolNetworks {
                do {
                    configuration.proxyProtocolNetworks = try NetworkList(parsing: networks)
                } catch let problem as NetworkList.Problem {
                    fail("--proxy-protocol-networks: \(problem)", code: 2)
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
            fail("\(error)", code: 2)
        }
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

        // MARK: scripting

        configuration.luaScript = resolve(options.proxyLuaScript)
        configuration.luaPath = options.luaPath
        configuration.luaCPath = options.luaCpath
        configuration.luaLibraryDirectory = Self.luaLibraryDirectory(basedir: basedir)
        if let limit = options.proxyResultsetBufferLimit { configuration.resultsetBufferLimit = limit }
        configuration.resetPooledConnections = !options.proxyPoolNoChangeUser
        if let timeout = options.proxyLuaTimeout { configuration.luaTimeout = timeout }
        if let limit = options.proxyLuaMemoryLimit.flatMap(Options.byteCount) { configuration.luaMemoryLimit = limit }
        if let size = options.proxyMaxPacketSize.flatMap(Options.byteCount) { configuration.maxAssembledPacketSize = size }
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
                fail("--proxy-backend-server-public-key: cannot read '\(path)': \(String(cString: strerror(errno)))", code: 2)
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
        configuration.scriptConfig["log-level"] = (options.logLevel ?? .warning).rawValue
        if let basedir { configuration.scriptConfig["basedir"] = basedir }

        // MARK: admin

        if options.pluginList.contains("admin") {
            let password: String?
            do {
                password = try SecretFile.resolve(value: options.adminPassword, file: resolve(options.adminPasswordFile),
                                                  fileOption: "--admin-password-file", environment: "MOONPROXY_ADMIN_PASSWORD")
            } catch {
                fail("\(error)", code: 2)
            }
            guard let username = options.adminUsername, !username.isEmpty, let password, !password.isEmpty else {
                fail("--plugins=admin needs --admin-username and a password (--admin-password-file, MOONPROXY_ADMIN_PASSWORD or --admin-password); the admin interface does not run without one", code: 1)
            }
            var admin = AdminConfiguration(username: username, password: password)
            do {
                // a bare :port is loopback: the admin interface shows every connection
                admin.address = try ProxyAddress(parsing: options.adminAddress ?? ":4041", defaultHost: "127.0.0.1", defaultPort: 4041)
            } catch {
                fail("--admin-address: \(error)", code: 2)
            }
            admin.luaScript = resolve(options.adminLuaScript)
            configuration.admin = admin
        }

        // MARK: logging

        let logOutput: LogOutput
        do {
            if options.logUseSyslog {
                logOutput = LogOutput(target: .syslog)
            } else if let file = resolve(options.logFile) {
                logOutput = try LogOutput.file(file)
            } else {
                logOutput = LogOutput(target: .stderr)
            }
        } catch {
            fail("\(error)", code: 1)
        }
        let logLevel = MoonLogHandler.level(options.logLevel ?? .warning)
        LoggingSystem.bootstrap { label in
            MoonLogHandler(label: label, output: logOutput, logLevel: logLevel)
        }
        let logger = Logger(label: "moonproxy")

        // MARK: process

        if options.daemon {
            do { try ProcessControl.daemonize() } catch { fail("\(error)", code: 1) }
        }
        if options.keepalive {
            ProcessControl.superviseChild { logger.critical("\($0)") }
        }
        if configuration.maxOpenFiles > 0 {
            do { try ProcessControl.setMaxOpenFiles(configuration.maxOpenFiles) } catch { logger.critical("\(error)"); exit(1) }
        }
        let pidFile = resolve(options.pidFile)
        var pidFileLock: CInt = -1
        if let pidFile {
            do { pidFileLock = try ProcessControl.writePIDFile(pidFile) } catch { logger.critical("\(error)"); exit(1) }
        }
        if secretsOnCommandLine {
            logger.warning("a password was given on the command line, where other users can read it (ps shows it while the proxy starts); use the -file option or the environment variable instead")
        }

        for (given, note) in [
            (options.proxySkipProfiling, "--proxy-skip-profiling: MoonProxy does not profile queries, nothing to skip"),
            (options.proxyFixBug25371, "--proxy-fix-bug-25371: not needed, MoonProxy relays the server's packets as sent"),
            (options.logBacktraceOnCrash, "--log-backtrace-on-crash: the Swift runtime prints a backtrace on a crash by itself"),
            (options.pluginDir != nil, "--plugin-dir: MoonProxy's plugins are built in"),
            (!options.pluginList.contains("admin") && (options.adminAddress != nil || options.adminUsername != nil || options.adminLuaScript != nil),
             "--admin-*: ignored without --plugins=admin"),
        ] where given {
            logger.info("\(note)")
        }

        // MARK: run

        configuration.proxyEnabled = !options.noProxy && (options.pluginList.isEmpty || options.pluginList.contains("proxy"))
        let proxyEnabled = configuration.proxyEnabled
        let runProxy = proxyEnabled || configuration.admin != nil
        let proxy = MoonProxy(configuration: configuration, logger: logger)

        let hangup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        signal(SIGHUP, SIG_IGN)
        hangup.setEventHandler { @Sendable in
            logOutput.reopen()
            proxy.reopenQueryLog()
            do {
                try proxy.reloadCertificates()
            } catch {
                logger.error("SIGHUP: keeping the TLS certificate in use: \(error)")
            }
        }
        hangup.resume()

        let finished = DispatchSemaphore(value: 0)
        let exitCode = NIOLockedValueBox<Int32>(0)
        let switchToUser = options.user
        // The group exists before the listener is bound, and SIGTERM/SIGINT ask it to shut down
        // from then on: a signal that comes while the proxy starts (its port already open) must
        // not kill it with the default action, leaving its pid file behind.
        let group = ServiceGroup(configuration: .init(
            services: runProxy ? [.init(service: proxy)] : [.init(service: IdleService())],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        let earlySignals = [SIGTERM, SIGINT].map { number -> DispatchSourceSignal in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { @Sendable in Task { await group.triggerGracefulShutdown() } }
            source.resume()
            return source
        }
        Task.detached {
            defer { finished.signal() }
            do {
                if runProxy {
                    // Bound now (a port below 1024 needs root), accepting only once the
                    // privileges are dropped: no connection ever runs as root.
                    try await proxy.start(accepting: false)
                    if !proxyEnabled { logger.notice("the proxy module is not started (--no-proxy or --plugins without proxy)") }
                } else {
                    // Nothing to serve: wait for a signal all the same, as MySQL Proxy does.
                    logger.notice("--no-proxy: the proxy module is not started")
                }
                if let user = switchToUser {
                    try ProcessControl.switchUser(user)
                }
                if runProxy { await proxy.startAccepting() }
                try await group.run()
            } catch {
                logger.critical("\(error)")
                exitCode.withLockedValue { $0 = 1 }
            }
        }
        finished.wait()
        withExtendedLifetime(earlySignals) {}
        if let pidFile, pidFileLock >= 0 { ProcessControl.removePIDFile(pidFile, fd: pidFileLock) }
        if options.verboseShutdown {
            logger.notice("shutting down normally, exit code is: \(exitCode.withLockedValue { $0 })")
        }
        exit(exitCode.withLockedValue { $0 })
    }
}

extension MoonProxyMain {
    /// MoonProxy's own directory of Lua modules, as MySQL Proxy's `lib/mysql-proxy/lua`:
    /// `<basedir>/lib/moonproxy/lua` with --basedir, else next to the executable's `bin`.
    static func luaLibraryDirectory(basedir: String?) -> String {
        if let basedir { return (basedir.hasSuffix("/") ? basedir : basedir + "/") + "lib/moonproxy/lua" }
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return "/usr/local/lib/moonproxy/lua" }
        let exe = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var parts = exe.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(min(2, parts.count))  // bin/moonproxy
        return parts.joined(separator: "/") + "/lib/moonproxy/lua"
    }
}

struct IdleService: Service {
    func run() async throws {
        try? await gracefulShutdown()
    }
}
