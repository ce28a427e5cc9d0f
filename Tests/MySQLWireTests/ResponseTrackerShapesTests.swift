import NIOCore
import Testing
@testable import MySQLWire

/// Response shapes captured from MariaDB 10.11 (scripts/capture.py between Tests/e2e/rawclient.py,
/// with MariaDB's extended capabilities asked for, and the server), and MySQL 8's optional metadata
/// from its protocol documentation: each must end exactly where the server ends it.
@Suite struct ResponseTrackerShapesTests {
    static let classic = ResponseTrackerTests.classic
    static let mariaDB: CapabilityFlags = classic.union([.mariaDBProgress, .mariaDBBulkOperations, .mariaDBExtendedMetadata, .mariaDBCacheMetadata])
        .subtracting(.longPassword)

    func loggedIn(_ caps: CapabilityFlags) throws -> ResponseTracker {
        var t = ResponseTracker()
        t.handshakeResponseSent(capabilities: caps)
        _ = try t.serverPacketStarted(start("00000002000000", seq: 2))
        return t
    }

    func feed(_ t: inout ResponseTracker, _ packets: [String]) throws -> [Int] {
        var ends: [Int] = []
        for (i, hex) in packets.enumerated() {
            if case .endOfResponse = try t.serverPacketStarted(start(hex, seq: UInt8(i + 1))) { ends.append(i) }
        }
        return ends
    }

    func send(_ t: inout ResponseTracker, _ hex: String) throws -> ResponseTracker.ClientPacket {
        try t.clientPacketStarted(start(hex, seq: 0))
    }

    /// `CALL p1()` through COM_STMT_EXECUTE, no cursor asked for, of a procedure that has a cursor
    /// open while it selects: MariaDB sets SERVER_STATUS_CURSOR_EXISTS (0x4a) on the result set's
    /// EOFs, and the rows follow all the same (main.sp-cursor in --ps-protocol mode).
    @Test func procedureWithAnOpenCursorStillSendsItsRows() throws {
        var t = try loggedIn(Self.classic)
        #expect(try send(&t, "17040000000001000000") == .command(.stmtExecute, .binaryResult))
        let packets = ["0101", "0364656600000003765f6103765f61000c3f000b000000030000000000", "fe00004a00",
                       "000001000000", "fe00004a00", "00000002000000"]
        #expect(try feed(&t, packets) == [5])
        #expect(!t.isAwaitingResponse)
    }

    /// The same response when the client did ask for a cursor: MariaDB opens none for a CALL (more
    /// results follow), so the rows still come.
    @Test func cursorAskedForACallOpensNone() throws {
        var t = try loggedIn(Self.classic)
        _ = try send(&t, "17040000000101000000")
        let packets = ["0101", "0364656600000003765f6103765f61000c3f000b000000030000000000", "fe00004a00",
                       "000001000000", "fe00004a00", "00000002000000"]
        #expect(try feed(&t, packets) == [5])
    }

    /// A read-only cursor on a SELECT, then two COM_STMT_FETCH of two rows. (With metadata caching,
    /// even the first execute leaves out the definitions the prepare response gave.)
    @Test func cursorAndFetches() throws {
        var t = try loggedIn(Self.mariaDB)
        _ = try send(&t, "17050000000101000000")
        #expect(try feed(&t, ["0100", "fe00006200"]) == [1])
        #expect(t.status.contains(.cursorExists))
        _ = try send(&t, "1c0500000002000000")
        #expect(try feed(&t, ["000001000000", "000002000000", "fe00004200"]) == [2])
        _ = try send(&t, "1c0500000002000000")
        #expect(try feed(&t, ["000003000000", "fe00008200"]) == [1])
        #expect(t.status.contains(.lastRowSent))
    }

    /// `CALL po(?, ?, ?)` with OUT and INOUT parameters: the procedure's result set, then the OUT
    /// parameters' row with SERVER_PS_OUT_PARAMS (0x1000) and more results, then the final OK.
    /// MariaDB's metadata caching adds the "metadata follows" byte to each column count.
    @Test func outParameters() throws {
        var t = try loggedIn(Self.mariaDB)
        _ = try send(&t, "17040000000001000000020103000300fd0007000000026869")
        let packets = ["0101", "0364656600000001610161000c3f000b000000030000000000", "fe00000a00", "000007000000", "fe00000a00",
                       "0201", "03646566046d6f6f6e02706f02706f01620162000c3f000b000000030000000000",
                       "03646566046d6f6f6e02706f02706f01630163000c21001e000000fd0000000000", "fe00000a10",
                       "00000e00000003686921", "fe00000a10", "00000002000000"]
        #expect(try feed(&t, packets) == [11])
    }

    /// MariaDB's metadata caching: a second COM_STMT_EXECUTE of the same statement has a column
    /// count whose "metadata follows" byte is 0, no column definitions, and still the EOF.
    @Test func cachedMetadataIsLeftOut() throws {
        var t = try loggedIn(Self.mariaDB)
        _ = try send(&t, "17030000000001000000")
        #expect(try feed(&t, ["0100", "fe00000200", "0000027b7d", "fe00000200"]) == [3])
        // with the metadata: a JSON column with its extended type information (format=json)
        _ = try send(&t, "0353454c454354206a2046524f4d206a74")
        #expect(try feed(&t, ["0101", "03646566046d6f6f6e026a74026a74016a016a0601046a736f6e0c2100fffffffffc9000000000",
                              "fe00000200", "027b7d", "fe00000200"]) == [4])
    }

    /// MariaDB's progress reports during ALTER TABLE (progress_report_time=1): ERR-like packets with
    /// code 0xFFFF that take sequence ids and do not end the response.
    @Test func progressReports() throws {
        var t = try loggedIn(Self.mariaDB)
        _ = try send(&t, "03414c544552205441424c452062696720454e47494e453d41726961")
        #expect(try t.serverPacketStarted(start("ffffff0101029a020011636f707920746f20746d70207461626c65", seq: 1)) == .progress)
        #expect(try t.serverPacketStarted(start("ffffff0102020000000d456e61626c696e67206b657973", seq: 2)) == .progress)
        guard case .endOfResponse(let end) = try t.serverPacketStarted(start("00fd60e31600020000002c5265636f7264733a20313530303030", seq: 3)) else {
            Issue.record(); return
        }
        #expect(end.kind == .ok && end.affectedRows == 1_500_000)
        // Without the capability negotiated, 0xFFFF is just an error code.
        var u = try loggedIn(Self.classic)
        _ = try send(&u, "0353454c454354")
        guard case .endOfResponse = try u.serverPacketStarted(start("ffffff0101029a020011636f707920746f20746d70207461626c65")) else {
            Issue.record(); return
        }
    }

    /// COM_STMT_BULK_EXECUTE (0xFA): an OK for an INSERT, a binary result set for INSERT ... RETURNING.
    @Test func bulkExecute() throws {
        var t = try loggedIn(Self.mariaDB)
        #expect(try send(&t, "fa010000008000fd000178000279790003") == .command(.stmtBulkExecute, .binaryResult))
        #expect(try feed(&t, ["00030102000000265265636f7264733a203320204475706c6963617465733a203020205761726e696e67733a2030"]) == [0])
        _ = try send(&t, "fa020000008000fd00000170000171")
        let returning = ["0201", "03646566046d6f6f6e02627402627401610161000c3f000b000000030342000000",
                         "03646566046d6f6f6e02627402627401620162000c21001e000000fd0000000000", "fe00000200",
                         "0000040000000170", "0000050000000171", "fe00000200"]
        #expect(try feed(&t, returning) == [6])
    }

    /// mysqlbinlog --read-from-remote-server without --stop-never: a non-blocking COM_BINLOG_DUMP
    /// (flags 0x0001) ends with an EOF after the last event (MariaDB then closes the connection).
    @Test func nonBlockingBinlogDumpEndsAtItsEOF() throws {
        var t = try loggedIn(Self.classic)
        #expect(try send(&t, "12040000000100630000006d7973716c642d62696e2e303030303031") == .command(.binlogDump, .stream))
        #expect(t.clientPhase == .stream)
        let events = ["000000000004010000002c00000000000000200004000000000000006d7973716c642d62696e2e303030303031",
                      "003a19106b0e010000001d0000001d0100000800010000002101fddd9dbb", "fe00000200"]
        #expect(try feed(&t, events) == [2])
        #expect(t.clientPhase == .command)
        #expect(!t.isStreaming)
        // An ERR ends a blocking one.
        var u = try loggedIn(Self.classic)
        _ = try send(&u, "12040000000000630000006d7973716c642d62696e2e303030303031")
        #expect(try feed(&u, ["003a19106b0e010000001d0000001d0100000800010000002101fddd9dbb", "fe00000200",
                              "ff9e04234859303030436f756c64206e6f742066696e64"]) == [2])
    }

    /// MySQL 8's CLIENT_OPTIONAL_RESULTSET_METADATA with resultset_metadata=NONE (from the protocol
    /// documentation and the server's Protocol_classic): the count is followed by 0 and the column
    /// definitions are left out; a prepare OK's 13th byte does the same for its definitions.
    @Test(arguments: [false, true])
    func optionalResultsetMetadata(deprecate: Bool) throws {
        var caps = Self.classic.union(.optionalResultsetMetadata)
        if deprecate { caps.insert(.deprecateEOF) }
        var t = try loggedIn(caps)
        _ = try send(&t, "0353454c4543542031")
        let eof = deprecate ? [] : ["fe00000200"]
        let end = deprecate ? "fe000002000000" : "fe00000200"
        var packets = ["0100"] + eof + ["0131", end]
        #expect(try feed(&t, packets) == [packets.count - 1])
        // FULL: the definitions are there
        _ = try send(&t, "0353454c4543542031")
        packets = ["0101", "036465660000000131000c3f0001000000038100000000"] + eof + ["0131", end]
        #expect(try feed(&t, packets) == [packets.count - 1])
        // prepare: 2 columns, 1 parameter, metadata left out
        _ = try send(&t, "1653454c454354203f2c2031")
        packets = ["00010000000200010000000000"] + eof + eof
        #expect(try feed(&t, packets) == [packets.count - 1])
    }

    /// A command sent behind the handshake response, before the login's OK (sequence id 0, where
    /// answers to the login continue the sequence): it is answered after the login.
    @Test func commandPipelinedBehindTheLogin() throws {
        var t = ResponseTracker()
        t.handshakeResponseSent(capabilities: Self.classic)
        #expect(try t.clientPacketStarted(start("0353454c4543542031", seq: 0)) == .command(.query, .textResult))
        #expect(t.pendingCount == 2)
        #expect(try t.serverPacketStarted(start("fe6d7973716c5f6e61746976655f70617373776f726400", seq: 2)) == .authenticationStep)
        #expect(try t.clientPacketStarted(start("aabbcc", seq: 3)) == .data)
        guard case .endOfResponse(let login) = try t.serverPacketStarted(start("00000002000000", seq: 4)) else { Issue.record(); return }
        #expect(login.command == nil)
        #expect(t.clientPhase == .command)
        #expect(t.replySequence(afterServerSequence: 4) == 1)
        guard case .endOfResponse(let query) = try t.serverPacketStarted(start("00000002000000", seq: 1)) else { Issue.record(); return }
        #expect(query.command == .query)
    }

    /// The sequence id a packet of the proxy's own must carry: after the server's last packet once
    /// the response began, else the one answering the command (with several commands pipelined,
    /// the oldest).
    @Test func replySequenceFollowsTheOldestCommand() throws {
        var t = try loggedIn(Self.classic)
        _ = try send(&t, "0353454c4543542031")
        _ = try send(&t, "0e")
        #expect(t.replySequence(afterServerSequence: 2) == 1)
        _ = try t.serverPacketStarted(start("01", seq: 1))
        _ = try t.serverPacketStarted(start("036465660000000131000c3f0001000000038100000000", seq: 2))
        #expect(t.replySequence(afterServerSequence: 2) == 3)
        // A command of 16 MiB or more is answered after its last frame.
        var u = try loggedIn(Self.classic)
        let long = FrameScanner.PacketStart(header: PacketHeader(payloadLength: PacketHeader.maxPayloadLength, sequenceID: 0),
                                            prefix: PacketPrefix(ByteBuffer(hex: "03494e53")))
        _ = try u.clientPacketStarted(long)
        u.clientFramesSeen(upTo: 1)
        #expect(u.replySequence(afterServerSequence: 0) == 2)
    }

    /// After a packet it cannot place, a desynchronised tracker ignores the server until the
    /// client's next command, and follows from there.
    @Test func desynchronisedTrackerResumesAtTheNextCommand() throws {
        var t = try loggedIn(Self.classic)
        _ = try send(&t, "0353454c4543542031")
        #expect(throws: WireError.self) { try t.serverPacketStarted(start("fc01")) }
        t.desynchronize()
        #expect(t.isDesynchronized && !t.isAwaitingResponse)
        #expect(try t.serverPacketStarted(start("0131")) == .unsolicited)
        _ = try send(&t, "0e")
        #expect(!t.isDesynchronized)
        #expect(try feed(&t, ["00000002000000"]) == [0])
    }
}
