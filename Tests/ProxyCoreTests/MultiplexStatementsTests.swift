import MySQLWire
import NIOCore
@testable import ProxyCore
import Testing

/// Binary prepared statements of a multiplexed session (ConnectionMachine+Statements): ids are
/// the session's, a statement is prepared again in front of the command that needs it on another
/// connection, and the types the client bound last go with it.
struct MultiplexStatementsTests {
    static func hex(_ s: String) -> String { Array(s.utf8).map { String(format: "%02x", $0) }.joined() }
    static func le(_ v: UInt32) -> String { (0..<4).map { String(format: "%02x", (v >> (8 * $0)) & 0xFF) }.joined() }

    /// COM_STMT_PREPARE of `sql`.
    static func prepare(_ sql: String) -> String { "16" + hex(sql) }
    /// The server's prepare OK for one parameter and no columns, and the parameter's definition
    /// (CLIENT_DEPRECATE_EOF: no EOF behind it).
    static func prepared(_ id: UInt32) -> [(String, UInt8)] {
        [("00" + le(id) + "0000" + "0100" + "00" + "0000", 1),
         ("03646566" + "00" + "00" + "00" + "013f" + "00" + "0c" + "3f00" + "00000000" + "fd" + "8000" + "00" + "0000", 2)]
    }
    /// COM_STMT_EXECUTE of `id` with one BIGINT parameter, its type sent or not; `flags` asks for a cursor.
    static func execute(_ id: UInt32, types: Bool, _ value: UInt8, flags: UInt8 = 0) -> String {
        "17" + le(id) + String(format: "%02x", flags) + "01000000" + "00" + (types ? "01" + "0800" : "00") + String(format: "%02x", value) + "00000000000000"
    }
    static let executed = "00000002000000"

    /// A session (time_zone set) that prepared `DO ?` (server id 1) and executed it with its type.
    static func withStatement() -> Driver {
        var d = MultiplexTests.session()
        #expect(d.client([(prepare("DO ?"), 0)]).toBackend == Wire.packets([(prepare("DO ?"), 0)]))
        #expect(d.server(prepared(1)).toClient == Wire.packets(prepared(1)))  // the server's id is free: the client's
        #expect(d.client([(execute(1, types: true, 7), 0)]).toBackend == Wire.packets([(execute(1, types: true, 7), 0)]))
        d.server([(executed, 1)])
        #expect(d.machine.sessionPins.isEmpty)
        return d
    }

    /// Parks the session and gives its next command (`command`) another session's connection.
    static func moved(_ d: inout Driver, _ command: String) -> Effects {
        #expect(d.run(d.machine.parkRequested()).actions == [.parkBackend])
        #expect(d.client([(command, 0)]).actions.contains(.takeBackend))
        return d.run(d.machine.multiplexedServerAttached(previous: SessionState()))
    }

    /// Moved with `command` (an EXECUTE of statement 1), which ran: the statement is 9 on the new connection.
    static func movedAndPreparedAgain(_ d: inout Driver, _ command: String) {
        _ = moved(&d, command)
        var answers = restoreAnswers
        answers.writeImmutableBuffer(Wire.packets(prepared(9)))
        answers.writeImmutableBuffer(Wire.packets([(executed, 1)]))
        d.server(answers)
    }

    /// What goes in front of a moved session's command: reset, trackers, its time_zone.
    static var restore: ByteBuffer {
        var out = Wire.packets([("1f", 0)])
        out.writeImmutableBuffer(Wire.query(MultiplexTests.enable))
        out.writeImmutableBuffer(Wire.query("SET @@session.time_zone = '+01:00'"))
        return out
    }

    static var restoreAnswers: ByteBuffer {
        Wire.packets([("00000002000000", 1), (MultiplexTests.trackersOK, 1), (MultiplexTests.timeZoneOK, 1)])
    }

    @Test func aStatementIsPreparedAgainInFrontOfTheCommandWithTheTypesItLastBound() {
        var d = Self.withStatement()
        let attached = Self.moved(&d, Self.execute(1, types: false, 8))
        var expected = Self.restore
        expected.writeImmutableBuffer(Wire.packets([(Self.prepare("DO ?"), 0)]))
        // "prepared last", the types flag set and BIGINT's type put in (the packet two bytes longer)
        expected.writeImmutableBuffer(Wire.packets([(Self.execute(0xFFFF_FFFF, types: true, 8), 0)]))
        #expect(attached.toBackend == expected)
        #expect(d.counts.statementsPreparedAgain == 1)
        // the proxy's answers are dropped: the client sees its EXECUTE's
        var answers = Self.restoreAnswers
        answers.writeImmutableBuffer(Wire.packets(Self.prepared(9)))
        answers.writeImmutableBuffer(Wire.packets([(Self.executed, 1)]))
        #expect(d.server(answers).toClient == Wire.packets([(Self.executed, 1)]))
        // from now on the client's id 1 is the server's 9 here
        #expect(d.client([(Self.execute(1, types: false, 9), 0)]).toBackend == Wire.packets([(Self.execute(9, types: false, 9), 0)]))
        d.server([(Self.executed, 1)])
        #expect(d.machine.mayPark)
    }

    @Test func idsStayTheSessionsWhenServersHandOutTheSameOnes() {
        var d = Self.withStatement()
        Self.movedAndPreparedAgain(&d, Self.execute(1, types: false, 8))
        // a new statement gets server id 1 here, which the session's first statement has: the client gets another
        d.client([(Self.prepare("DO ? + 1"), 0)])
        let answer = d.server(Self.prepared(1))
        var renamed = Self.prepared(0x4000_0000)
        renamed[1].1 = 2
        #expect(answer.toClient == Wire.packets(renamed))
        #expect(d.client([(Self.execute(0x4000_0000, types: true, 1), 0)]).toBackend == Wire.packets([(Self.execute(1, types: true, 1), 0)]))
        d.server([(Self.executed, 1)])
        #expect(d.client([(Self.execute(1, types: false, 2), 0)]).toBackend == Wire.packets([(Self.execute(9, types: false, 2), 0)]))
    }

    @Test func anIdTheSessionNeverGotOrClosedReachesTheServerAsZero() {
        var d = Self.withStatement()
        #expect(d.client([(Self.execute(5, types: true, 1), 0)]).toBackend == Wire.packets([(Self.execute(0, types: true, 1), 0)]))
        d.server([("ff" + "db04" + "23" + Self.hex("HY000") + Self.hex("Unknown prepared statement handler"), 1)])
        // COM_STMT_CLOSE: passed on; the id is gone for the session afterwards
        #expect(d.client([("19" + Self.le(1), 0)]).toBackend == Wire.packets([("19" + Self.le(1), 0)]))
        #expect(d.client([(Self.execute(1, types: true, 1), 0)]).toBackend == Wire.packets([(Self.execute(0, types: true, 1), 0)]))
    }

    @Test func aRewrittenHeaderSplitAcrossReadsIsHeldUntilWhole() {
        let whole = Wire.packets([(Self.execute(1, types: false, 3), 0)]).readableBytes
        for cut in 1..<whole {
            var d = Self.withStatement()
            Self.movedAndPreparedAgain(&d, Self.execute(1, types: false, 8))
            var bytes = Wire.packets([(Self.execute(1, types: false, 3), 0)])
            let first = bytes.readSlice(length: cut)!
            var sent = d.client(first).toBackend ?? ByteBuffer()
            if let rest = d.client(bytes).toBackend { sent.writeImmutableBuffer(rest) }
            #expect(sent == Wire.packets([(Self.execute(9, types: false, 3), 0)]), "cut at \(cut)")
        }
    }

    @Test func theTypesOfAnExecuteOfPreparedLastBeforeItsAnswerAreKept() {
        // MariaDB's direct execution: PREPARE and EXECUTE(0xFFFFFFFF) in one write
        var d = MultiplexTests.session()
        var both = Wire.packets([(Self.prepare("DO ?"), 0)])
        both.writeImmutableBuffer(Wire.packets([(Self.execute(0xFFFF_FFFF, types: true, 4), 0)]))
        #expect(d.client(both).toBackend == both)
        var answers = Wire.packets(Self.prepared(3))
        answers.writeImmutableBuffer(Wire.packets([(Self.executed, 1)]))
        d.server(answers)
        #expect(d.machine.sessionPins.isEmpty)
        let attached = Self.moved(&d, Self.execute(3, types: false, 5))
        var expected = Self.restore
        expected.writeImmutableBuffer(Wire.packets([(Self.prepare("DO ?"), 0)]))
        expected.writeImmutableBuffer(Wire.packets([(Self.execute(0xFFFF_FFFF, types: true, 5), 0)]))
        #expect(attached.toBackend == expected)
    }

    /// A binary result that opens a cursor (CLIENT_DEPRECATE_EOF: the OK-style terminator says
    /// SERVER_STATUS_CURSOR_EXISTS), or ends a FETCH with `status`.
    static let column = "03646566" + "00" + "00" + "00" + "0176" + "00" + "0c" + "3f00" + "00000000" + "fd" + "0000" + "00" + "0000"
    static let cursorOpened: [(String, UInt8)] = [("01", 1), (column, 2), ("fe000042000000", 3)]
    static func fetched(status: String) -> [(String, UInt8)] { [("0000" + "0161", 1), ("fe0000" + status + "0000", 2)] }

    @Test func aCursorAndLongDataPinUntilTheyClear() {
        var d = Self.withStatement()
        // a cursor asked for but not opened (the statement gave no result set): nothing pinned
        d.client([(Self.execute(1, types: false, 1, flags: 1), 0)])
        d.server([(Self.executed, 1)])
        #expect(d.machine.sessionPins.isEmpty)
        // opened: pinned while rows remain; the FETCH that sends the last row closes it
        d.client([(Self.execute(1, types: false, 1, flags: 1), 0)])
        d.server(Self.cursorOpened)
        #expect(d.machine.sessionPins == .cursor && !d.machine.mayPark)
        d.client([("1c" + Self.le(1) + "01000000", 0)])
        d.server(Self.fetched(status: "4200"))
        #expect(d.machine.sessionPins == .cursor)
        d.client([("1c" + Self.le(1) + "01000000", 0)])
        d.server(Self.fetched(status: "c200"))
        #expect(d.machine.sessionPins.isEmpty)
        // or COM_STMT_RESET closes it
        d.client([(Self.execute(1, types: false, 1, flags: 1), 0)])
        d.server(Self.cursorOpened)
        #expect(d.machine.sessionPins == .cursor)
        d.client([("1a" + Self.le(1), 0)])
        d.server([(Self.executed, 1)])
        #expect(d.machine.sessionPins.isEmpty)
        d.client([("18" + Self.le(1) + "0000" + "6162", 0)])  // COM_STMT_SEND_LONG_DATA, no answer
        #expect(d.machine.sessionPins == .longData && !d.machine.mayPark)
        d.client([(Self.execute(1, types: false, 1), 0)])
        d.server([(Self.executed, 1)])
        #expect(d.machine.sessionPins.isEmpty && d.machine.mayPark)
    }

    @Test func aStatementTheProxyDidNotKeepPins() {
        var d = MultiplexTests.session()
        d.client([(Self.prepare("LOAD DATA LOCAL INFILE 'x' INTO TABLE t"), 0)])
        d.server([("00" + Self.le(1) + "0000" + "0000" + "00" + "0000", 1)])
        #expect(d.machine.sessionPins == .preparedStatement)
        d.client([("19" + Self.le(1), 0)])
        #expect(d.machine.sessionPins.isEmpty)
    }

    @Test func aConnectionsStatementsServeTheNextSessionWithoutAPrepare() throws {
        var d = Self.withStatement()
        // the connection kept its statement for the sessions after this one
        let key = try #require(d.machine.serverStatements.byKey.first { $0.value == 1 }?.key)
        #expect(d.run(d.machine.parkRequested()).actions == [.parkBackend])
        d.client([(Self.execute(1, types: false, 8), 0)])
        // another connection in the same state, where another session prepared the same statement as 7
        var shared = ServerStatements()
        shared.byKey[key] = 7
        let state = try #require(d.machine.sessionState)
        let attached = d.run(d.machine.multiplexedServerAttached(previous: state, statements: shared))
        // nothing prepared: the shared statement, with this session's types
        #expect(attached.toBackend == Wire.packets([(Self.execute(7, types: true, 8), 0)]))
        #expect(d.counts.statementsPreparedAgain == 0)
        d.server([(Self.executed, 1)])
        #expect(d.client([(Self.execute(1, types: false, 9), 0)]).toBackend == Wire.packets([(Self.execute(7, types: false, 9), 0)]))
    }

    @Test func aSecondCopyOfAStatementIsClosedWhenTheSessionLeaves() {
        var d = Self.withStatement()
        d.client([(Self.prepare("DO ?"), 0)])
        d.server(Self.prepared(2))
        // leaving: statement 2 is the same text as the connection's 1, so it is closed in front of the hand-over
        let park = d.run(d.machine.parkRequested())
        #expect(park.toBackend == Wire.packets([("19" + Self.le(2), 0)]))
        #expect(park.actions.last == .parkBackend)
        #expect(d.machine.serverStatements.count == 1)
        // elsewhere both are the connection's one statement for that text: closing one keeps it for the other
        d.client([(Self.execute(2, types: true, 1), 0)])
        var shared = ServerStatements()
        shared.byKey = d.machine.serverStatements.byKey.mapValues { _ in 7 }
        let attached = d.run(d.machine.multiplexedServerAttached(previous: d.machine.sessionState, statements: shared))
        #expect(attached.toBackend == Wire.packets([(Self.execute(7, types: true, 1), 0)]))
        d.server([(Self.executed, 1)])
        #expect(d.client([(Self.execute(1, types: false, 4), 0)]).toBackend == Wire.packets([(Self.execute(7, types: true, 4), 0)]))
        d.server([(Self.executed, 1)])
        #expect(d.client([("19" + Self.le(2), 0)]).toBackend == Wire.packets([("19" + Self.le(0), 0)]))
        #expect(d.client([(Self.execute(1, types: true, 5), 0)]).toBackend == Wire.packets([(Self.execute(7, types: true, 5), 0)]))
        d.server([(Self.executed, 1)])
        #expect(d.client([("19" + Self.le(1), 0)]).toBackend == Wire.packets([("19" + Self.le(7), 0)]))
        #expect(d.machine.serverStatements.count == 0)
    }

    @Test func aPrepareTheServerRefusesGivesTheClientItsReason() {
        var d = Self.withStatement()
        _ = Self.moved(&d, Self.execute(1, types: false, 8))
        let reason = "ff" + "7a04" + "23" + Self.hex("42S02") + Self.hex("Table 'moon.t' doesn't exist")
        var answers = Self.restoreAnswers
        answers.writeImmutableBuffer(Wire.packets([(reason, 1)]))
        answers.writeImmutableBuffer(Wire.packets([("ff" + "db04" + "23" + Self.hex("HY000") + Self.hex("Unknown prepared statement handler (4294967295) given to mysqld_stmt_execute"), 1)]))
        #expect(d.server(answers).toClient == Wire.packets([(reason, 1)]))
        #expect(d.machine.mayPark)
        // the next command prepares it again
        var expected = Wire.packets([(Self.prepare("DO ?"), 0)])
        expected.writeImmutableBuffer(Wire.packets([(Self.execute(0xFFFF_FFFF, types: true, 9), 0)]))
        #expect(d.client([(Self.execute(1, types: false, 9), 0)]).toBackend == expected)
    }

    @Test func preparedLastIsTheClientsLastStatementWhereverItWasPrepared() {
        // after a move and back, "prepared last" names the client's last statement (its id here);
        // right behind the client's own prepare it passes as it is
        var d = Self.withStatement()
        Self.movedAndPreparedAgain(&d, Self.execute(1, types: true, 8))
        d.run(d.machine.parkRequested())
        d.client([(Self.execute(0xFFFF_FFFF, types: true, 1), 0)])
        // own connection back: nothing to restore; "prepared last" is the client's last statement, id 1 (here 9)
        let own = d.run(d.machine.multiplexedServerAttached(previous: d.machine.sessionState, own: true,
                                                            statements: d.machine.serverStatements))
        #expect(own.toBackend == Wire.packets([(Self.execute(9, types: true, 1), 0)]))
        d.server([(Self.executed, 1)])
        var pipelined = Wire.packets([(Self.prepare("DO ? + 2"), 0)])
        pipelined.writeImmutableBuffer(Wire.packets([(Self.execute(0xFFFF_FFFF, types: true, 2), 0)]))
        // the client's own "prepared last" right behind its prepare passes as it is
        #expect(d.client(pipelined).toBackend == pipelined)
    }

    @Test func preparedLastBehindAPrepareOfTheProxysGetsTheServersError() {
        var d = Self.withStatement()
        #expect(d.run(d.machine.parkRequested()).actions == [.parkBackend])
        // one write: a new prepare, the old statement (not on the next connection), "prepared last"
        var three = Wire.packets([(Self.prepare("DO ? + 2"), 0)])
        three.writeImmutableBuffer(Wire.packets([(Self.execute(1, types: true, 1), 0)]))
        three.writeImmutableBuffer(Wire.packets([(Self.execute(0xFFFF_FFFF, types: true, 2), 0)]))
        #expect(d.client(three).actions.contains(.takeBackend))
        let attached = d.run(d.machine.multiplexedServerAttached(previous: SessionState()))
        var expected = Self.restore
        expected.writeImmutableBuffer(Wire.packets([(Self.prepare("DO ? + 2"), 0)]))
        expected.writeImmutableBuffer(Wire.packets([(Self.prepare("DO ?"), 0)]))
        expected.writeImmutableBuffer(Wire.packets([(Self.execute(0xFFFF_FFFF, types: true, 1), 0)]))
        // the server's "prepared last" is the proxy's now: the client's cannot be reached
        expected.writeImmutableBuffer(Wire.packets([(Self.execute(0, types: true, 2), 0)]))
        #expect(attached.toBackend == expected)
    }

    @Test func theTextKeptForASessionIsBounded() {
        // 16 statements of 64,000 bytes fit the 1 MiB kept for a session; the 17th is not kept, and pins
        var d = MultiplexTests.session()
        for i in 0..<17 {
            let sql = "DO ?" + String(repeating: " ", count: 64_000 - 5) + String(i % 10)
            d.client([(Self.prepare(sql), 0)])
            d.server(Self.prepared(UInt32(i + 1)))
            #expect(d.machine.sessionPins == (i < 16 ? [] : .preparedStatement), "statement \(i + 1)")
        }
        // closing it lets the session go again
        d.client([("19" + Self.le(17), 0)])
        #expect(d.machine.sessionPins.isEmpty)
    }
}
