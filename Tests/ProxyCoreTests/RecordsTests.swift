import MySQLWire
import NIOCore
import Testing
@testable import ProxyCore

/// What the machine records about commands (for the metrics and the query log) and why a
/// connection ended. It reads no clock: the test sets `now` as a handler would.
@Suite struct RecordsTests {
    static func relaying(_ recording: ConnectionMachine.Recording) -> Driver {
        var configuration = ConnectionMachine.Configuration()
        configuration.recording = recording
        return Driver.loggedIn(configuration)
    }

    @Test func pipelinedCommandsAreTimedInOrder() throws {
        var d = Self.relaying(.text(limit: 8))
        #expect(d.machine.wantsTime)
        d.machine.now = 1_000
        // two queries and a COM_PING in one read; COM_STMT_CLOSE has no response
        d.client([(Wire.queryHex("SELECT 1 /* long */"), 0), ("0e", 0), ("1901000000", 0)])
        #expect(d.machine.openRecords.count == 2)
        d.machine.now = 5_000
        // OK for the query, then (a later read) OK for the ping
        d.server([(Wire.okHex, 1)])
        d.machine.now = 9_000
        d.server([(Wire.okHex, 1)])
        let records = d.takeRecords()
        #expect(records.map(\.command) == [.stmtClose, .query, .ping])
        #expect(records.map(\.nanoseconds) == [0, 4_000, 8_000])
        #expect(records[1].text.map { String(buffer: $0) } == "SELECT 1")
        #expect(records[1].textTruncated)
        #expect(records[1].responseBytes == 11)
        #expect(d.records.isEmpty && d.machine.openRecords.isEmpty)
    }

    /// The relay sees a statement one read at a time: wherever the client's reads split it (in
    /// the header, in the first 32 bytes, after them), the log gets the statement up to the limit,
    /// marked truncated only when it is longer than the limit; a second query in the last read
    /// gets its own text.
    @Test func aStatementSplitOverReadsIsRecordedWhole() {
        let long = "SELECT '" + String(repeating: "x", count: 90) + "' AS a_rather_long_column_name"
        let wire = Wire.packets([(Wire.queryHex(long), 0), (Wire.queryHex("SELECT 2"), 0)])
        let bytes = Array(wire.readableBytesView)
        let firstEnd = PacketHeader.size + 1 + long.utf8.count
        for limit in [8, 40, long.utf8.count, 4096] {
            for cut in 1..<firstEnd {
                for secondCut in [cut + 1, (cut + firstEnd) / 2, firstEnd] where secondCut > cut && secondCut <= firstEnd {
                    var d = Self.relaying(.text(limit: limit))
                    for range in [0..<cut, cut..<secondCut, secondCut..<bytes.count] where !range.isEmpty {
                        d.client(ByteBuffer(bytes: bytes[range]))
                    }
                    d.server([(Wire.okHex, 1)])
                    d.server([(Wire.okHex, 1)])
                    let records = d.takeRecords()
                    let texts = records.map { $0.text.map { String(buffer: $0) } }
                    #expect(texts == [String(long.prefix(limit)), String("SELECT 2".prefix(limit))], "limit \(limit), cuts \(cut) \(secondCut)")
                    #expect(records.map(\.textTruncated) == [long.utf8.count > limit, 8 > limit], "limit \(limit), cuts \(cut) \(secondCut)")
                }
            }
        }
    }

    /// A connection that ends inside a statement leaves its record marked truncated.
    @Test func aStatementCutShortStaysTruncated() {
        var d = Self.relaying(.text(limit: 100))
        let statement = "SELECT 'abcdefghijklmnopqrstuvwxyz0123456789'"
        let wire = Wire.packets([(Wire.queryHex(statement), 0)])
        d.client(wire.getSlice(at: 0, length: 40)!)
        #expect(d.machine.openRecords.count == 1 && d.machine.openRecords[0].textTruncated)
        #expect(d.machine.openRecords[0].text.map { String(buffer: $0) } == String(statement.prefix(35)))
    }

    @Test func nothingIsRecordedWhenOff() {
        var d = Self.relaying(.off)
        #expect(!d.machine.wantsTime)
        d.client([(Wire.queryHex("SELECT 1"), 0)])
        d.server([(Wire.okHex, 1)])
        #expect(d.machine.openRecords.isEmpty && d.records.isEmpty)
    }

    /// A command the script answered is recorded as answered by the script, not the server.
    @Test func aScriptsAnswerIsRecordedAsSuch() {
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { _, _ in .returned(.sendResult(.ok(affectedRows: 3, insertID: 0, serverStatus: nil, warnings: 0, message: nil))) }
        var configuration = ConnectionMachine.Configuration()
        configuration.recording = .durations
        var d = Driver.loggedIn(configuration, script: script)
        d.client(Wire.query("SELECT 1"))
        let records = d.takeRecords()
        #expect(records.count == 1 && records[0].answeredByScript && records[0].affectedRows == 3)
    }

    @Test func aRefusedLoginIsAuthFailed() {
        var (d, _) = Driver.greeted()
        d.client([(Wire.handshakeResponse, 1)])
        // ERR 1045 28000 Access denied
        d.server([("ff15042332383030304163636573732064656e696564", 2)])
        d.serverClosed()
        #expect(d.machine.closeSource == .authFailed)
    }

    @Test func anOrdinaryQuitIsNone() {
        var d = Self.relaying(.off)
        d.client([("01", 0)])
        #expect(d.clientClosed().close?.reason == nil)
        #expect(d.machine.closeSource == CloseSource.none)
    }

    @Test func aClientLeavingMidResponseIsANetworkClose() throws {
        var d = Self.relaying(.off)
        d.client([(Wire.queryHex("SELECT SLEEP(10)"), 0)])
        let close = try #require(d.clientClosed().close)
        #expect(close.reason?.contains("pending") == true)
        #expect(d.machine.closeSource == .clientNetwork)
    }
}
