import Foundation
import Logging
import MySQLWire
import NIOConcurrencyHelpers
import NIOCore
import ProxyCore
import ProxyScripting

/// `--query-log=FILE`: one JSON object per line for each command a client ran.
///
/// The event loops only hand entries over (a copy of the statement's first bytes and a few
/// numbers, under a lock held for an append); a thread of its own formats them — normalising,
/// extracting proxy hints, JSON — and writes them. The queue is bounded: when the disk cannot keep
/// up, new entries are dropped and counted (`moonproxy_query_log_dropped_total`) rather than
/// memory growing or an event loop waiting. `reopen()` (SIGHUP) makes the writer open the file
/// again, for log rotation.
public final class QueryLog: Sendable {
    public struct Settings: Sendable, Equatable {
        public var path: String
        /// Bytes of each statement kept (longer ones are cut and marked so).
        public var textLimit: Int = 1024
        /// Log the statement normalised (constants as ?, comments dropped, names quoted) instead
        /// of as sent: no data values in the log, and one text per statement shape.
        public var normalize = false
        /// Entries waiting to be written, at most.
        public var queueLimit: Int = 65_536

        public init(path: String) { self.path = path }
    }

    /// One command, as an event loop hands it over.
    struct Entry: Sendable {
        var wallTime: timespec
        var connection: UInt64
        var user: String?
        var database: String?
        var client: String?
        var backend: String?
        var command: CommandCode
        var text: [UInt8]?
        var textTruncated: Bool
        var nanoseconds: Int
        var rows: UInt64
        var affectedRows: UInt64
        var responseBytes: Int
        var errorCode: UInt16
        var answeredByScript: Bool

        init(record: ConnectionMachine.CommandRecord, connection: UInt64, user: String?, database: String?,
             client: String?, backend: String?) {
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            wallTime = now
            self.connection = connection
            self.user = user
            self.database = database
            self.client = client
            self.backend = backend
            command = record.command
            text = record.text.map { Array($0.readableBytesView) }
            textTruncated = record.textTruncated
            nanoseconds = record.nanoseconds
            rows = record.rows
            affectedRows = record.affectedRows
            responseBytes = record.responseBytes
            errorCode = record.errorCode
            answeredByScript = record.answeredByScript
        }
    }

    private struct Queue {
        var entries: [Entry] = []
        var reopen = false
        var stopping = false
    }

    public let settings: Settings
    private let logger: Logger
    private let queue = NIOLockedValueBox(Queue())
    /// Signalled when entries arrive (or a reopen or the stop is asked).
    private let wakeup = ConditionLock(value: false)
    private let finished = ConditionLock(value: false)

    /// Opens (creates) the file now, so that a path that cannot be written is an error at startup.
    public init(settings: Settings, logger: Logger) throws {
        self.settings = settings
        self.logger = logger
        let fd = try Self.open(settings.path)
        let thread = Thread { [self] in self.run(fd: fd) }
        thread.name = "moonproxy-query-log"
        thread.start()
    }

    private static func open(_ path: String) throws -> Int32 {
        let fd = Foundation.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            throw QueryLogError(message: "cannot open the query log \(path): \(String(cString: strerror(errno)))")
        }
        return fd
    }

    struct QueryLogError: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    /// Queues an entry; false when the queue is full and it was dropped.
    func append(_ entry: Entry) -> Bool {
        let (accepted, wasEmpty) = queue.withLockedValue { q -> (Bool, Bool) in
            guard q.entries.count < settings.queueLimit else { return (false, false) }
            q.entries.append(entry)
            return (true, q.entries.count == 1)
        }
        if wasEmpty { signal() }
        return accepted
    }

    /// Opens the file again before the next write (after log rotation moved it).
    public func reopen() {
        queue.withLockedValue { $0.reopen = true }
        signal()
    }

    /// Writes what is queued and stops the writer.
    public func stop() {
        queue.withLockedValue { $0.stopping = true }
        signal()
        finished.lock(whenValue: true)
        finished.unlock()
    }

    private func signal() {
        wakeup.lock()
        wakeup.unlock(withValue: true)
    }

    private func run(fd initial: Int32) {
        var fd = initial
        var batch: [Entry] = []
        var out: [UInt8] = []
        while true {
            wakeup.lock(whenValue: true)
            wakeup.unlock(withValue: false)
            let (reopen, stopping) = queue.withLockedValue { q -> (Bool, Bool) in
                swap(&batch, &q.entries)
                defer { q.reopen = false }
                return (q.reopen, q.stopping)
            }
            if reopen {
                do {
                    let new = try Self.open(settings.path)
                    close(fd)
                    fd = new
                    logger.info("query log reopened: \(settings.path)")
                } catch {
                    logger.error("\(error); still writing to the file open before")
                }
            }
            out.removeAll(keepingCapacity: true)
            for entry in batch { format(entry, into: &out) }
            batch.removeAll(keepingCapacity: true)
            if !out.isEmpty { write(out, to: fd) }
            if stopping {
                let rest = queue.withLockedValue { q -> [Entry] in
                    defer { q.entries.removeAll() }
                    return q.entries
                }
                out.removeAll(keepingCapacity: true)
                for entry in rest { format(entry, into: &out) }
                if !out.isEmpty { write(out, to: fd) }
                close(fd)
                finished.lock()
                finished.unlock(withValue: true)
                return
            }
        }
    }

    private func write(_ bytes: [UInt8], to fd: Int32) {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Foundation.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    logger.error("cannot write the query log \(settings.path): \(String(cString: strerror(errno)))")
                    return
                }
                offset += n
            }
        }
    }

    // MARK: formatting

    /// The entry as one line of JSON.
    func format(_ e: Entry, into out: inout [UInt8]) {
        out.append(contentsOf: Array("{\"time\":\"".utf8))
        Self.appendTime(e.wallTime, to: &out)
        out.append(contentsOf: Array("\",\"conn\":\(e.connection)".utf8))
        Self.field("user", e.user, &out)
        Self.field("db", e.database.flatMap { $0.isEmpty ? nil : $0 }, &out)
        Self.field("client", e.client, &out)
        Self.field("backend", e.backend, &out)
        Self.field("command", e.command.name, &out)
        var hints: [(key: String, value: String)] = []
        if let text = e.text {
            let statement: [UInt8]
            if settings.normalize {
                statement = text.withUnsafeBytes { Array(SQLTokenizer.normalize(SQLTokenizer.tokenize($0)).utf8) }
            } else {
                statement = StatementSecrets.masked(text) ?? text
            }
            out.append(contentsOf: Array(",\"query\":".utf8))
            Self.appendString(statement, to: &out)
            if e.textTruncated { out.append(contentsOf: Array(",\"query_truncated\":true".utf8)) }
            if e.command == .query { hints = text.withUnsafeBytes { ProxyHints.parse(bytes: $0) } }
        }
        out.append(contentsOf: Array(",\"duration_us\":\(e.nanoseconds / 1000),\"rows\":\(e.rows),\"affected_rows\":\(e.affectedRows),\"bytes\":\(e.responseBytes),\"error\":\(e.errorCode)".utf8))
        if e.answeredByScript { out.append(contentsOf: Array(",\"answered_by\":\"script\"".utf8)) }
        if !hints.isEmpty {
            out.append(contentsOf: Array(",\"hints\":{".utf8))
            for (i, hint) in hints.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                Self.appendString(Array(hint.key.utf8), to: &out)
                out.append(UInt8(ascii: ":"))
                Self.appendString(Array(hint.value.utf8), to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
        out.append(contentsOf: Array("}\n".utf8))
    }

    private static func field(_ name: String, _ value: String?, _ out: inout [UInt8]) {
        guard let value else { return }
        out.append(contentsOf: Array(",\"\(name)\":".utf8))
        appendString(Array(value.utf8), to: &out)
    }

    /// RFC 3339, UTC, microseconds.
    static func appendTime(_ t: timespec, to out: inout [UInt8]) {
        var seconds = t.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let micros = Int(t.tv_nsec) / 1000
        var fraction = String(micros)
        while fraction.count < 6 { fraction = "0" + fraction }
        let text = "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(fraction)Z"
        out.append(contentsOf: Array(text.utf8))
    }

    /// A JSON string. Statements are bytes in the connection's character set, not necessarily
    /// UTF-8: bytes that are not valid UTF-8 are written as \u00XX of their value, so the line is
    /// always valid JSON and the original bytes can be recovered.
    static func appendString(_ bytes: [UInt8], to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        func escaped(_ b: UInt8) {
            out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(b >> 4)], hex[Int(b & 15)]])
        }
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            switch b {
            case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), b]); i += 1
            case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), b]); i += 1
            case UInt8(ascii: "\n"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")]); i += 1
            case UInt8(ascii: "\r"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")]); i += 1
            case UInt8(ascii: "\t"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")]); i += 1
            case 0..<0x20, 0x7F: escaped(b); i += 1
            case 0x20..<0x80: out.append(b); i += 1
            default:
                let length = utf8SequenceLength(bytes, at: i)
                if length == 0 {
                    escaped(b)
                    i += 1
                } else {
                    out.append(contentsOf: bytes[i..<(i + length)])
                    i += length
                }
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// The length of the valid UTF-8 sequence starting at `i`, or 0.
    private static func utf8SequenceLength(_ b: [UInt8], at i: Int) -> Int {
        let lead = b[i]
        let length: Int
        var minimum: UInt32
        var value: UInt32
        switch lead {
        case 0xC2...0xDF: length = 2; value = UInt32(lead & 0x1F); minimum = 0x80
        case 0xE0...0xEF: length = 3; value = UInt32(lead & 0x0F); minimum = 0x800
        case 0xF0...0xF4: length = 4; value = UInt32(lead & 0x07); minimum = 0x10000
        default: return 0
        }
        guard i + length <= b.count else { return 0 }
        for k in 1..<length {
            let c = b[i + k]
            guard c & 0xC0 == 0x80 else { return 0 }
            value = value << 6 | UInt32(c & 0x3F)
        }
        guard value >= minimum, value <= 0x10FFFF, !(0xD800...0xDFFF).contains(value) else { return 0 }
        return length
    }
}
