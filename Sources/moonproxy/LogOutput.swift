#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers

/// Where log lines go: stderr, a file (`--log-file`) or syslog (`--log-use-syslog`).
final class LogOutput: @unchecked Sendable {
    enum Target {
        case stderr
        case file(path: String, fd: Int32)
        case syslog
    }

    private let lock = NIOLock()
    private var target: Target

    init(target: Target) {
        self.target = target
        if case .syslog = target {
            openlog("moonproxy", LOG_PID | LOG_NDELAY, LOG_DAEMON)
        }
    }

    static func file(_ path: String) throws -> LogOutput {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            throw DefaultsFile.Problem(description: "cannot open the log file '\(path)': \(String(cString: strerror(errno)))")
        }
        return LogOutput(target: .file(path: path, fd: fd))
    }

    /// Reopens a log file (after rotation, on SIGHUP).
    func reopen() {
        lock.withLock {
            if case .file(let path, let fd) = target {
                let newFD = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
                if newFD >= 0 {
                    close(fd)
                    target = .file(path: path, fd: newFD)
                }
            }
        }
    }

    func write(level: Logger.Level, line: String) {
        lock.withLock {
            switch target {
            case .stderr:
                Self.writeAll(2, line + "\n")
            case .file(_, let fd):
                Self.writeAll(fd, line + "\n")
            case .syslog:
                let priority: Int32
                switch level {
                case .critical: priority = LOG_CRIT
                case .error: priority = LOG_ERR
                case .warning: priority = LOG_WARNING
                case .notice: priority = LOG_NOTICE
                case .info: priority = LOG_INFO
                case .debug, .trace: priority = LOG_DEBUG
                }
                line.withCString { text in withVaList([text]) { vsyslog(priority, "%s", $0) } }
            }
        }
    }

    private static func writeAll(_ fd: Int32, _ text: String) {
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            offset += n
        }
    }
}

/// A swift-log handler writing one line per message: time, level, connection metadata, message.
struct MoonLogHandler: LogHandler {
    let label: String
    let output: LogOutput
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        var line = Self.timestamp() + " " + Self.name(event.level)
        if !all.isEmpty {
            // connection keys first, in a fixed order, then the rest sorted
            let order = ["conn", "client", "backend"]
            var parts: [String] = order.compactMap { key in all[key].map { "\(key)=\($0)" } }
            parts += all.keys.filter { !order.contains($0) }.sorted().map { "\($0)=\(all[$0]!)" }
            line += " [" + parts.joined(separator: " ") + "]"
        }
        line += " " + event.message.description
        output.write(level: event.level, line: line)
    }

    /// MySQL Proxy's names for the levels.
    static func name(_ level: Logger.Level) -> String {
        switch level {
        case .critical: return "critical"
        case .error: return "error"
        case .warning: return "warning"
        case .notice: return "message"
        case .info: return "info"
        case .debug, .trace: return "debug"
        }
    }

    static func level(_ option: LogLevelOption) -> Logger.Level {
        switch option {
        case .critical: return .critical
        case .error: return .error
        case .warning: return .warning
        case .message: return .notice
        case .info: return .info
        case .debug: return .debug
        }
    }

    static func timestamp() -> String {
        var tv = timeval()
        gettimeofday(&tv, nil)
        var seconds = tv.tv_sec
        var parts = tm()
        localtime_r(&seconds, &parts)
        func pad(_ v: Int32, _ w: Int) -> String {
            let s = String(v)
            return s.count >= w ? s : String(repeating: "0", count: w - s.count) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2)) "
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(tv.tv_usec / 1000), 3))"
    }
}
