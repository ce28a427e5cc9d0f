import Foundation
import Logging
import MySQLWire
import NIOCore
import Testing
import ProxyCore
@testable import ProxyServer
import ProxyScripting

/// The loop counters and their histograms, and the query log's lines.
@Suite struct StatisticsAndQueryLogTests {
    @Test func histogramsSumAcrossLoops() {
        let a = LoopStatistics(), b = LoopStatistics()
        a.commandCompleted(.query, backend: 0, nanoseconds: 50_000)       // first bucket (≤ 100 µs)
        b.commandCompleted(.query, backend: 0, nanoseconds: 3_000_000)    // ≤ 5 ms
        b.commandCompleted(.query, backend: 0, nanoseconds: 99_000_000_000) // +Inf
        b.commandCompleted(.ping, backend: nil, nanoseconds: 1)
        let h = LoopStatistics.commandHistogram([a, b], slot: 0, kind: .query)
        #expect(h.count == 3 && h.sum == 99_003_050_000)
        #expect(h.buckets[0] == 1 && h.buckets[5] == 1 && h.buckets.last == 1)
        #expect(LoopStatistics.commandHistogram([a, b], slot: LoopStatistics.noBackendSlot, kind: .ping).count == 1)
        a.add(.commands, 2)
        b.add(.commands, 3)
        #expect(a.value(.commands) + b.value(.commands) == 5)
        // what a connection's machine counted, added at once
        var counts = ConnectionMachine.Counts()
        counts.commands = 4
        counts.backendsLost = 1
        a.add(counts)
        #expect(a.value(.commands) == 6 && a.value(.backendsLost) == 1 && a.value(.queries) == 0)
    }

    @Test func queryLogLinesAreJSONWhateverTheBytes() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("moon-qlog-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var settings = QueryLog.Settings(path: dir.appendingPathComponent("q.log").path)
        settings.queueLimit = 0  // every entry is dropped: the event loop never waits
        let log = try QueryLog(settings: settings, logger: Logger(label: "test"))
        var record = ConnectionMachine.CommandRecord(command: .query, started: 0)
        record.text = ByteBuffer(bytes: Array("/* @trace_id \"a b\" */ SELECT '\u{e9}".utf8) + [0xFF, 0x0A, 0x22])
        let entry = QueryLog.Entry(record: record, connection: 7, user: "u\"", database: nil, client: nil, backend: nil)
        #expect(!log.append(entry))
        var line: [UInt8] = []
        log.format(entry, into: &line)
        log.stop()
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any])
        #expect(object["user"] as? String == "u\"")
        #expect((object["query"] as? String)?.hasSuffix("SELECT '\u{e9}\u{ff}\n\"") == true)
        #expect((object["hints"] as? [String: String])?["trace_id"] == "a b")
        #expect(object["db"] == nil)
    }

    @Test func normalizedStatementsCarryNoValues() {
        let text = SQLTokenizer.normalize(SQLTokenizer.tokenize("select a, f(1) from t where s = 'x' and n in (1, 2.5) -- c"))
        #expect(text == "SELECT `a` , F( ? ) FROM `t` WHERE `s` = ? AND `n` IN ( ? , ? )")
        #expect(SQLTokenizer.normalize(SQLTokenizer.tokenize("start transaction")) == "START TRANSACTION")
    }
}
