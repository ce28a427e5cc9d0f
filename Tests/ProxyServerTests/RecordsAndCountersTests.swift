import Foundation
import Logging
import MySQLWire
import NIOCore
import Testing
@testable import ProxyServer
import ProxyScripting

/// What the machine records about commands and endings, the loop counters' histograms, and the
/// query log's lines.
@Suite struct RecordsAndCountersTests {
    typealias T = ConnectionStateMachineTests

    func relaying(recording: ConnectionStateMachine.Recording, statistics: LoopStatistics = LoopStatistics()) -> ConnectionStateMachine {
        var m = ConnectionStateMachine(statistics: statistics, recording: recording)
        _ = m.clientConnected()
        _ = m.backendConnected()
        _ = m.backendDataReceived(T.packets([(T.greeting, 0)]))
        _ = m.clientDataReceived(T.packets([(T.handshakeResponse, 1)]))
        _ = m.backendDataReceived(T.packets([("00000002000000", 2)]))
        return m
    }

    static func query(_ sql: String) -> String { "03" + Array(sql.utf8).map { String(format: "%02x", $0) }.joined() }

    @Test func pipelinedCommandsAreTimedInOrder() throws {
        var m = relaying(recording: .text(limit: 8))
        m.now = 1_000
        // two queries and a COM_PING in one read; COM_STMT_CLOSE has no response
        _ = m.clientDataReceived(T.packets([(Self.query("SELECT 1 /* long */"), 0), ("0e", 0), ("1901000000", 0)]))
        #expect(m.openRecords.count == 2)
        m.now = 5_000
        // OK for the query, then (a later read) OK for the ping
        _ = m.backendDataReceived(T.packets([("00000002000000", 1)]))
        m.now = 9_000
        _ = m.backendDataReceived(T.packets([("00000002000000", 1)]))
        let records = m.takeFinishedRecords()
        #expect(records.map(\.command) == [.stmtClose, .query, .ping])
        #expect(records.map(\.nanoseconds) == [0, 4_000, 8_000])
        #expect(records[1].text.map { String(buffer: $0) } == "SELECT 1")
        #expect(records[1].textTruncated)
        #expect(records[1].responseBytes == 11)
        #expect(m.finishedRecords.isEmpty && m.openRecords.isEmpty)
    }

    /// The relay sees a statement one read at a time: wherever the client's reads split it (in
    /// the header, in the first 32 bytes, after them), the log gets the statement up to the limit,
    /// marked truncated only when it is longer than the limit; a second query in the last read
    /// gets its own text.
    @Test func aStatementSplitOverReadsIsRecordedWhole() {
        let long = "SELECT '" + String(repeating: "x", count: 90) + "' AS a_rather_long_column_name"
        let wire = T.packets([(Self.query(long), 0), (Self.query("SELECT 2"), 0)])
        let bytes = Array(wire.readableBytesView)
        let firstEnd = PacketHeader.size + 1 + long.utf8.count
        for limit in [8, 40, long.utf8.count, 4096] {
            for cut in 1..<firstEnd {
                for secondCut in [cut + 1, (cut + firstEnd) / 2, firstEnd] where secondCut > cut && secondCut <= firstEnd {
                    var m = relaying(recording: .text(limit: limit))
                    for range in [0..<cut, cut..<secondCut, secondCut..<bytes.count] where !range.isEmpty {
                        _ = m.clientDataReceived(ByteBuffer(bytes: bytes[range]))
                    }
                    _ = m.backendDataReceived(T.packets([("00000002000000", 1)]))
                    _ = m.backendDataReceived(T.packets([("00000002000000", 1)]))
                    let records = m.takeFinishedRecords()
                    let texts = records.map { $0.text.map { String(buffer: $0) } }
                    #expect(texts == [String(long.prefix(limit)), String("SELECT 2".prefix(limit))], "limit \(limit), cuts \(cut) \(secondCut)")
                    #expect(records.map(\.textTruncated) == [long.utf8.count > limit, 8 > limit], "limit \(limit), cuts \(cut) \(secondCut)")
                }
            }
        }
    }

    /// A connection that ends inside a statement leaves its record marked truncated.
    @Test func aStatementCutShortStaysTruncated() {
        var m = relaying(recording: .text(limit: 100))
        let statement = "SELECT 'abcdefghijklmnopqrstuvwxyz0123456789'"
        let wire = T.packets([(Self.query(statement), 0)])
        _ = m.clientDataReceived(wire.getSlice(at: 0, length: 40)!)
        #expect(m.openRecords.count == 1 && m.openRecords[0].textTruncated)
        #expect(m.openRecords[0].text.map { String(buffer: $0) } == String(statement.prefix(35)))
    }

    @Test func nothingIsRecordedWhenOff() {
        var m = relaying(recording: .off)
        _ = m.clientDataReceived(T.packets([(Self.query("SELECT 1"), 0)]))
        _ = m.backendDataReceived(T.packets([("00000002000000", 1)]))
        #expect(m.openRecords.isEmpty && m.finishedRecords.isEmpty)
    }

    @Test func aRefusedLoginIsAuthFailed() {
        var m = ConnectionStateMachine(statistics: LoopStatistics())
        _ = m.clientConnected()
        _ = m.backendConnected()
        _ = m.backendDataReceived(T.packets([(T.greeting, 0)]))
        _ = m.clientDataReceived(T.packets([(T.handshakeResponse, 1)]))
        // ERR 1045 28000 Access denied
        _ = m.backendDataReceived(T.packets([("ff15042332383030304163636573732064656e696564", 2)]))
        _ = m.backendClosed()
        #expect(m.closeSource == .authFailed)
    }

    @Test func anOrdinaryQuitIsNone() {
        var m = relaying(recording: .off)
        _ = m.clientDataReceived(T.packets([("01", 0)]))
        _ = m.clientClosed()
        #expect(m.closeSource == CloseSource.none)
    }

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
    }

    @Test func queryLogLinesAreJSONWhateverTheBytes() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("moon-qlog-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var settings = QueryLog.Settings(path: dir.appendingPathComponent("q.log").path)
        settings.queueLimit = 0  // every entry is dropped: the event loop never waits
        let log = try QueryLog(settings: settings, logger: Logger(label: "test"))
        var record = ConnectionStateMachine.CommandRecord(command: .query, started: 0)
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
