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
        let options = parseCommandLine(Array(CommandLine.arguments.dropFirst()))
        // Passwords given on the command line: out of what ps shows, and a word of warning.
        let secretsOnCommandLine = SecretFile.scrubCommandLine()
        var configuration = options.configuration()
        let (logOutput, logger) = startLogging(options)
        let pidFile = prepareProcess(options, configuration, logger)
        if secretsOnCommandLine {
            logger.warning("a password was given on the command line, where other users can read it (ps shows it while the proxy starts); use the -file option or the environment variable instead")
        }
        noteIgnoredOptions(options, logger)
        configuration.proxyEnabled = !options.noProxy && (options.pluginList.isEmpty || options.pluginList.contains("proxy"))
        let exitCode = serve(configuration, user: options.user, logOutput: logOutput, logger: logger)
        if let pidFile { ProcessControl.removePIDFile(pidFile.path, fd: pidFile.lock) }
        if options.verboseShutdown {
            logger.notice("shutting down normally, exit code is: \(exitCode)")
        }
        exit(exitCode)
    }

    /// The options, with --defaults-file's read in; --help and --version are answered here.
    static func parseCommandLine(_ commandLine: [String]) -> Options {
        if commandLine.contains(where: { ["--help-all", "--help-proxy", "--help-admin", "-?"].contains($0) }) {
            print(MoonProxyCommand.helpMessage(columns: nil))
            exit(0)
        }
        do {
            var options = try Options.parse(commandLine)
            if options.version {
                print(MoonProxyVersion.report)
                exit(0)
            }
            if let file = options.defaultsFile {
                let pairs = try DefaultsFile.read(path: file)
                let fromFile = try DefaultsFile.arguments(from: pairs, commandLine: commandLine)
                options = try Options.parse(fromFile + commandLine)
            }
            return options
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
    }

    static func startLogging(_ options: Options) -> (LogOutput, Logger) {
        let logOutput: LogOutput
        do {
            if options.logUseSyslog {
                logOutput = LogOutput(target: .syslog)
            } else if let file = options.resolve(options.logFile) {
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
        return (logOutput, Logger(label: "moonproxy"))
    }

    /// Daemon, keepalive, the open-files limit, and the pid file (its path and lock).
    static func prepareProcess(_ options: Options, _ configuration: ProxyConfiguration, _ logger: Logger) -> (path: String, lock: CInt)? {
        if options.daemon {
            do { try ProcessControl.daemonize() } catch { fail("\(error)", code: 1) }
        }
        if options.keepalive {
            ProcessControl.superviseChild { logger.critical("\($0)") }
        }
        if configuration.maxOpenFiles > 0 {
            do { try ProcessControl.setMaxOpenFiles(configuration.maxOpenFiles) } catch { logger.critical("\(error)"); exit(1) }
        }
        guard let pidFile = options.resolve(options.pidFile) else { return nil }
        do { return (pidFile, try ProcessControl.writePIDFile(pidFile)) } catch { logger.critical("\(error)"); exit(1) }
    }

    /// MySQL Proxy's options that mean nothing here, said once.
    static func noteIgnoredOptions(_ options: Options, _ logger: Logger) {
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
    }

    /// Runs the proxy until SIGTERM or SIGINT; the exit code.
    static func serve(_ configuration: ProxyConfiguration, user switchToUser: String?, logOutput: LogOutput, logger: Logger) -> Int32 {
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
        withExtendedLifetime((earlySignals, hangup)) {}
        return exitCode.withLockedValue { $0 }
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
