import NIOCore
import Testing
@testable import MySQLWire

/// The response tracker driven with packet sequences captured from MariaDB 10.11 (see
/// Tests/e2e/rawclient.py for the client that produced the DEPRECATE_EOF ones).
@Suite struct ResponseTrackerTests {
    static let classic: CapabilityFlags = [.protocol41, .multiResults, .multiStatements, .psMultiResults, .localFiles, .pluginAuth, .secureConnection]
    static let deprecateEOF: CapabilityFlags = classic.union(.deprecateEOF)

    func commandPhaseTracker(_ caps: CapabilityFlags) throws -> ResponseTracker {
        var t = ResponseTracker()
        t.handshakeResponseSent(capabilities: caps)
        _ = try t.serverPacketStarted(start("00000002000000"))
        #expect(t.clientPhase == .command)
        return t
    }

    /// Feeds server packets; returns the index of each packet that ended a response.
    func feed(_ t: inout ResponseTracker, _ packets: [String]) throws -> [Int] {
        var ends: [Int] = []
        for (i, hex) in packets.enumerated() {
            if case .endOfResponse = try t.serverPacketStarted(start(hex)) { ends.append(i) }
        }
        return ends
    }

    func send(_ t: inout ResponseTracker, _ hex: String) throws -> ResponseTracker.ClientPacket {
        try t.clientPacketStarted(start(hex, seq: 0))
    }

    @Test func resultSetClassic() throws {
        var t = try commandPhaseTracker(Self.classic)
        #expect(try send(&t, "0353454c454354202a2046524f4d20742e61") == .command(.query, .textResult))
        let packets = ["03", Captured.columnID, Captured.columnS, "03646566017401610161016401640c3f00160000000500001f0000",
                       "fe00002200", Captured.textRow, Captured.textRowWithNulls, "fe00002200"]
        #expect(try feed(&t, packets) == [7])
        #expect(!t.isAwaitingResponse)
        #expect(t.status == [.autocommit, .noIndexUsed])
    }

    @Test func rowCountAndEndInfo() throws {
        var t = try commandPhaseTracker(Self.classic)
        _ = try send(&t, "0353454c4543542031")
        for hex in ["01", "03646566000000013100000c3f0001000000038100000000", "fe00000200", "0131", "0131"] {
            _ = try t.serverPacketStarted(start(hex))
        }
        guard case .endOfResponse(let end) = try t.serverPacketStarted(start("fe00000200")) else {
            Issue.record("no end"); return
        }
        #expect(end.rows == 2)
        #expect(end.kind == .eof)
        #expect(end.command == .query)
        #expect(end.results == 1)
    }

    @Test(arguments: [false, true])
    func multiStatementResults(deprecate: Bool) throws {
        var t = try commandPhaseTracker(deprecate ? Self.deprecateEOF : Self.classic)
        _ = try send(&t, "0353454c45435420312041532061")
        let classic = ["01", "036465660000000161000c3f0001000000038100000000", "fe00000a00", "0131", "fe00000a00",
                       "0000000a000000",
                       "01", "036465660000000132000c3f0001000000038100000000", "fe00000200", "0132", "fe00000200"]
        let deprecated = ["01", "036465660000000161000c3f0001000000038100000000", "0131", "fe00000a000000",
                          "0000000a000000",
                          "01", "036465660000000132000c3f0001000000038100000000", "0132", "fe000002000000"]
        let packets = deprecate ? deprecated : classic
        #expect(try feed(&t, packets) == [packets.count - 1])
    }

    @Test(arguments: [false, true])
    func prepareExecuteWithCursorAndFetch(deprecate: Bool) throws {
        var t = try commandPhaseTracker(deprecate ? Self.deprecateEOF : Self.classic)
        #expect(try send(&t, "1653454c454354") == .command(.stmtPrepare, .prepare))
        let param = "03646566000000013f000c3f0000000000068000000000"
        var prepare = ["000100000002000100000000", param]
        if !deprecate { prepare.append("fe00000200") }
        prepare += [Captured.columnID, Captured.columnS]
        if !deprecate { prepare.append("fe00000200") }
        #expect(try feed(&t, prepare) == [prepare.count - 1])

        #expect(try send(&t, "1701000000010100000000010300" + "00000000") == .command(.stmtExecute, .binaryResult))
        let cursor = ["02", Captured.columnID, Captured.columnS, deprecate ? "fe000042000000" : "fe00004200"]
        #expect(try feed(&t, cursor) == [3])
        #expect(t.status.contains(.cursorExists))

        #expect(try send(&t, "1c0100000001000000") == .command(.stmtFetch, .fetch))
        #expect(try feed(&t, ["000001000000036f6e65", deprecate ? "fe000042000000" : "fe00004200"]) == [1])
        _ = try send(&t, "1c010000000a000000")
        #expect(try feed(&t, ["000802000000", deprecate ? "fe000082000000" : "fe00008200"]) == [1])
        #expect(t.status.contains(.lastRowSent))
        #expect(try send(&t, "1901000000") == .command(.stmtClose, .none))
        #expect(!t.isAwaitingResponse)
    }

    @Test(arguments: [false, true])
    func callThroughPreparedStatementReturnsSeveralResults(deprecate: Bool) throws {
        var t = try commandPhaseTracker(deprecate ? Self.deprecateEOF : Self.classic)
        _ = try send(&t, "170200000000")
        let classic = ["01", "036465660000000178000c3f0001000000038100000000", "fe00000a00", "000001000000", "fe00000a00",
                       "01", "036465660000000179000c3f0001000000038100000000", "fe00000a00", "000002000000", "fe00000a00",
                       "00000002000000"]
        let deprecated = ["01", "036465660000000178000c3f0001000000038100000000", "000001000000", "fe00000a000000",
                          "01", "036465660000000179000c3f0001000000038100000000", "000002000000", "fe00000a000000",
                          "00000002000000"]
        let packets = deprecate ? deprecated : classic
        #expect(try feed(&t, packets) == [packets.count - 1])
    }

    @Test func pipelinedCommandsAreAnsweredInOrder() throws {
        var t = try commandPhaseTracker(Self.classic)
        // COM_FIELD_LIST without a database, then COM_INIT_DB, sent back to back.
        _ = try send(&t, "046100")
        _ = try send(&t, "0274")
        #expect(t.pendingCount == 2)
        guard case .endOfResponse(let first) = try t.serverPacketStarted(start(Captured.noDatabase)) else { Issue.record(); return }
        #expect(first.command == .fieldList && first.kind == .error && first.errorCode == 1046)
        guard case .endOfResponse(let second) = try t.serverPacketStarted(start("00000002000000")) else { Issue.record(); return }
        #expect(second.command == .initDB && second.kind == .ok)
    }

    @Test(arguments: [false, true])
    func fieldList(deprecate: Bool) throws {
        var t = try commandPhaseTracker(deprecate ? Self.deprecateEOF : Self.classic)
        _ = try send(&t, "046100")
        let packets = ["036465660174016101610269640269640c3f000b0000000303500000000130",
                       "03646566017401610161017301730c21003c000000fd0000000000fb",
                       deprecate ? "fe000002000000" : "fe00000200"]
        #expect(try feed(&t, packets) == [2])
    }

    @Test func statisticsAndSetOption() throws {
        var t = try commandPhaseTracker(Self.classic)
        #expect(try send(&t, "09") == .command(.statistics, .singlePacket))
        #expect(try feed(&t, ["557074696d653a20323835"]) == [0])
        _ = try send(&t, "1b0000")
        #expect(try feed(&t, ["fe00000200"]) == [0])
        _ = try send(&t, "0e")
        #expect(try feed(&t, ["00000002000000"]) == [0])
    }

    @Test func localInfile() throws {
        var t = try commandPhaseTracker(Self.classic)
        _ = try send(&t, "034c4f4144")
        #expect(try t.serverPacketStarted(start("fb78")) == .localInfileRequest)
        #expect(t.clientPhase == .localInfile)
        #expect(try send(&t, "392c6e696e652c390a") == .data)
        #expect(try t.clientPacketStarted(start("", seq: 3)) == .endOfUpload)
        #expect(t.clientPhase == .command)
        #expect(try feed(&t, ["000100020003002f5265636f7264733a2031"]) == [0])
    }

    @Test func localInfileInsideMultiStatement() throws {
        var t = try commandPhaseTracker(Self.classic)
        _ = try send(&t, "034c4f4144")
        #expect(try t.serverPacketStarted(start("fb78")) == .localInfileRequest)
        _ = try t.clientPacketStarted(start("", seq: 2))
        #expect(try feed(&t, ["0001000a000000", "01", "036465660000000132000c3f0001000000038100000000", "fe00000200", "0132", "fe00000200"]) == [5])
    }

    /// A rogue server's LOCAL INFILE request in answer to a statement that loads no file is
    /// refused (and not taken as the start of an upload); LOAD statements, also behind comments or
    /// in /*! */ code, and statements prepared from them may ask.
    @Test func localInfileOnlyForStatementsThatLoadAFile() throws {
        func hex(_ text: String) -> String { Array(text.utf8).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
        for (statement, asks) in [("SELECT 1", false), ("load data local infile 'x' into table t", true),
                                  ("  /* @trace_id abc */ LOAD XML LOCAL INFILE 'x'", true), ("/*!40101 LOAD DATA LOCAL */", true),
                                  ("-- note\nLOAD DATA LOCAL INFILE 'x' INTO TABLE t", true), ("EXECUTE s", true),
                                  ("SELECT 'LOAD DATA LOCAL'", false), ("LOADED", false), ("/* a comment much longer than the packet's prefix */ LOAD DATA", false),
                                  ("INSERT INTO t SELECT * FROM u", false)] {
            var t = try commandPhaseTracker(Self.classic)
            _ = try send(&t, "03" + hex(statement))
            let kind = try t.serverPacketStarted(start("fb2f6574632f706173737764"))
            #expect(kind == (asks ? .localInfileRequest : .localInfileRequestRefused), "\(statement)")
            #expect(t.clientPhase == (asks ? .localInfile : .command), "\(statement)")
        }
        // prepared: the statement id of a prepared LOAD may ask when executed, others not
        var t = try commandPhaseTracker(Self.deprecateEOF)
        _ = try send(&t, "16" + hex("LOAD DATA LOCAL INFILE ? INTO TABLE t"))
        #expect(try feed(&t, ["000700000000000100000000", "03646566000000013f000c3f000000000006800000000000"]) == [1])
        _ = try send(&t, "16" + hex("SELECT ?"))
        #expect(try feed(&t, ["000800000001000100000000", "03646566000000013f000c3f000000000006800000000000",
                               "036465660000000131000c3f000000000006800000000000"]) == [2])
        _ = try send(&t, "170800000000010000000001fd00037878")
        #expect(try t.serverPacketStarted(start("fb78")) == .localInfileRequestRefused)
        var u = try commandPhaseTracker(Self.deprecateEOF)
        _ = try send(&u, "16" + hex("LOAD DATA LOCAL INFILE ? INTO TABLE t"))
        _ = try feed(&u, ["000700000000000100000000", "03646566000000013f000c3f000000000006800000000000"])
        _ = try send(&u, "170700000000010000000001fd00037878")
        #expect(try u.serverPacketStarted(start("fb78")) == .localInfileRequest)
        // once closed, the id asks no more
        _ = try send(&u, "")  // the upload's end
        _ = try feed(&u, ["0000000200000000"])
        _ = try send(&u, "1907000000")
        _ = try send(&u, "170700000000010000000001fd00037878")
        #expect(try u.serverPacketStarted(start("fb78")) == .localInfileRequestRefused)
    }

    @Test func changeUserWithAuthSwitch() throws {
        var t = try commandPhaseTracker(Self.classic)
        #expect(try send(&t, "116e617400") == .command(.changeUser, .authentication))
        #expect(t.clientPhase == .authentication)
        #expect(try t.serverPacketStarted(start(Captured.edAuthSwitch)) == .authenticationStep)
        #expect(try t.clientPacketStarted(start("b9de9767", seq: 2)) == .data)
        #expect(try feed(&t, [Captured.okWithSessionState]) == [0])
        #expect(t.clientPhase == .command)
    }

    @Test func cachingSha2FullAuthentication() throws {
        // Greeting → response → 0x01 0x04 (full auth) → client asks for the key (0x02) → PEM key →
        // encrypted password → OK. Derived from the MySQL documentation of caching_sha2_password.
        var t = ResponseTracker()
        t.handshakeResponseSent(capabilities: Self.classic)
        #expect(try t.serverPacketStarted(start("0104")) == .authenticationStep)
        #expect(try t.clientPacketStarted(start("02")) == .data)
        #expect(try t.serverPacketStarted(start("012d2d2d2d2d424547494e")) == .authenticationStep)
        #expect(try t.clientPacketStarted(start("aabbcc")) == .data)
        #expect(try feed(&t, ["00000002000000"]) == [0])
        #expect(t.clientPhase == .command)
    }

    @Test func cachingSha2FastAuthentication() throws {
        var t = ResponseTracker()
        t.handshakeResponseSent(capabilities: Self.classic)
        #expect(try t.serverPacketStarted(start("0103")) == .authenticationStep)
        #expect(try feed(&t, ["00000002000000"]) == [0])
    }

    @Test func wrongPassword() throws {
        var t = ResponseTracker()
        t.handshakeResponseSent(capabilities: Self.classic)
        guard case .endOfResponse(let end) = try t.serverPacketStarted(start(Captured.accessDenied)) else { Issue.record(); return }
        #expect(end.kind == .error)
    }

    @Test func errorInsideRows() throws {
        var t = try commandPhaseTracker(Self.classic)
        _ = try send(&t, "0353454c454354")
        // e.g. a query killed while sending rows
        #expect(try feed(&t, ["01", "036465660000000131000c3f0001000000038100000000", "fe00000200", "0131",
                             "ff2507233730313030517565727920657865637574696f6e2077617320696e746572727570746564"]) == [4])
    }

    @Test func commandsWithoutResponse() throws {
        var t = try commandPhaseTracker(Self.classic)
        #expect(try send(&t, "18010000000000") == .command(.stmtSendLongData, .none))
        #expect(try send(&t, "1901000000") == .command(.stmtClose, .none))
        #expect(!t.isAwaitingResponse)
        #expect(try send(&t, "01") == .command(.quit, .none))
        #expect(throws: WireError.self) { try send(&t, "0e") }
    }

    @Test func binlogDumpStreamsForever() throws {
        var t = try commandPhaseTracker(Self.classic)
        #expect(try send(&t, "12040000000000000001000000") == .command(.binlogDump, .stream))
        for _ in 0..<10 { #expect(try t.serverPacketStarted(start("00aabbcc")) == .partOfResponse) }
        #expect(try send(&t, "ef0102") == .data)
    }

    @Test func unsolicitedPacket() throws {
        var t = try commandPhaseTracker(Self.classic)
        #expect(try t.serverPacketStarted(start("ff8f07233730313030")) == .unsolicited)
    }

    @Test func rowThatStartsLikeAnEOFButIsHuge() throws {
        // A text row whose first value is longer than 16 MiB begins with 0xFE: it is a row, because
        // its first frame is full length.
        var t = try commandPhaseTracker(Self.classic)
        _ = try send(&t, "0353454c454354")
        for hex in ["01", "036465660000000131000c3f0001000000038100000000", "fe00000200"] {
            _ = try t.serverPacketStarted(start(hex))
        }
        var big = FrameScanner.PacketStart(header: PacketHeader(payloadLength: PacketHeader.maxPayloadLength, sequenceID: 4), prefix: PacketPrefix(ByteBuffer(hex: "fe0000000101000000")))
        #expect(try t.serverPacketStarted(big) == .row)
        big.header.payloadLength = 5
        big.prefix = PacketPrefix(ByteBuffer(hex: "fe00000200"))
        #expect(try t.serverPacketStarted(big) == .endOfResponse(.init(command: .query, kind: .eof, status: .autocommit, warnings: 0, affectedRows: 0, lastInsertID: 0, rows: 1, results: 1)))
    }

    @Test func malformedServerPacketsThrow() throws {
        var t = try commandPhaseTracker(Self.classic)
        _ = try send(&t, "0353454c454354")
        #expect(throws: WireError.self) { try t.serverPacketStarted(start("")) }          // empty
        var u = try commandPhaseTracker(Self.classic)
        _ = try send(&u, "0353454c454354")
        #expect(throws: WireError.self) { try u.serverPacketStarted(start("fc01")) }      // lying column count
        var v = try commandPhaseTracker(Self.classic)
        _ = try send(&v, "0353454c454354")
        #expect(throws: WireError.self) { try v.serverPacketStarted(start("00fe")) }      // OK cut short
        var w = try commandPhaseTracker(Self.classic)
        _ = try send(&w, "1653454c454354")
        #expect(throws: WireError.self) { try w.serverPacketStarted(start("0001000000")) } // prepare OK cut short
        var x = try commandPhaseTracker(Self.classic)
        _ = try send(&x, "0353454c454354")
        _ = try x.serverPacketStarted(start("01"))
        _ = try x.serverPacketStarted(start("036465660000000131000c3f0001000000038100000000"))
        #expect(throws: WireError.self) { try x.serverPacketStarted(start("0131")) }       // a row where EOF belongs
        var y = try commandPhaseTracker(Self.classic)
        #expect(throws: WireError.self) { try y.clientPacketStarted(start("", seq: 0)) }   // empty command
    }

    @Test func randomServerInputNeverTraps() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var t = ResponseTracker()
            t.handshakeResponseSent(capabilities: Bool.random() ? Self.classic : Self.deprecateEOF)
            _ = try? t.serverPacketStarted(start("00000002000000"))
            let code = UInt8.random(in: 0...0x20, using: &generator)
            _ = try? t.clientPacketStarted(start(String(format2: code) + "00", seq: 0))
            for _ in 0..<20 {
                let length = Int.random(in: 0...40, using: &generator)
                let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
                _ = try? t.serverPacketStarted(start(bytes.map { String(format2: $0) }.joined()))
            }
        }
    }
}

extension String {
    init(format2 byte: UInt8) {
        let digits = Array("0123456789abcdef")
        self = String([digits[Int(byte >> 4)], digits[Int(byte & 15)]])
    }
}
