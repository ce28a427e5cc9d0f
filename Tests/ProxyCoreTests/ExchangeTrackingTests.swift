import MySQLWire
import NIOCore
@testable import ProxyCore
import Testing

/// Session tracking in a script's exchange, and a script's migration (+ExchangeTracking), on the
/// OK packets captured from MariaDB 10.11 that SessionTrackingTests reads.
struct ExchangeTrackingTests {
    static let enable = Wire.query(ConnectionMachine.enableTrackersStatement)
    /// The OK MariaDB answers the trackers' SET with (a state change).
    static let enabledOK = "000000024000000003020131"

    /// A tracked session of a script with `read_query`, logged in: the trackers on.
    static func loggedIn(_ script: FakeScript, clientTracks: Bool = false) -> Driver {
        var d = SessionTrackingTests.tracking(clientTracks: clientTracks, multiplexes: true, script: script)
        d.server(Wire.ok(seq: 2))
        d.server([(enabledOK, 1)])
        return d
    }

    @Test func theTrackersGoOnBehindTheLoginAndCommandsWaitForThem() throws {
        let script = FakeScript(hooks: [.readQuery])
        var d = SessionTrackingTests.tracking(clientTracks: false, multiplexes: true, script: script)
        let verdict = d.server(Wire.ok(seq: 2))
        #expect(verdict.toClient == Wire.ok(seq: 2))
        #expect(verdict.toBackend == Self.enable)
        // the client's first command waits: read_query sees the session once the trackers are on
        let early = d.client(Wire.query("SET NAMES latin1"))
        #expect(script.readQueries.isEmpty && early.toBackend == nil)
        let on = d.server([(Self.enabledOK, 1)])
        #expect(script.readQueries.count == 1 && on.toClient == nil)
        #expect(on.toBackend == Wire.query("SET NAMES latin1"))
        // its OK is read into the model, and written for a client without trackers
        let answer = d.server([(SessionTrackingTests.setNames, 1)])
        #expect(answer.toClient == Wire.packets([("00000000800000", 1)]))
        #expect(d.machine.sessionState?.value(of: "character_set_client") == "latin1")
        #expect(d.machine.sessionState?.pins == [])
        // the proxy's own statement changed nothing of the session's
        #expect(d.machine.sessionState?.variables.count == 3)
        // a multiplexed relay it is not: the session keeps its connection
        #expect(!d.machine.isMultiplexable)
    }

    @Test func aClientWithTrackersGetsWhatItsOwnWouldReport() throws {
        let script = FakeScript(hooks: [.readQuery])
        var d = Self.loggedIn(script, clientTracks: true)
        d.client(Wire.query("USE mysql"))
        // the schema stays (MariaDB's default trackers), the state change goes
        #expect(d.server([(SessionTrackingTests.useMysql, 1)]).toClient == Wire.packets([("0000000040000000080106056d7973716c", 1)]))
        #expect(d.machine.sessionState?.schema == "mysql")
    }

    @Test func injectedStatementsAndTheirResultsAreFollowedToo() throws {
        let script = FakeScript(hooks: [.readQuery, .readQueryResult])
        script.onReadQuery = { s, _ in
            s.queries = [Injection(id: 1, packet: ByteBuffer(hex: Wire.queryHex("SET NAMES latin1")), resultsetIsNeeded: true, queuedAt: 0)]
            return .returned(.sendQuery)
        }
        var d = Self.loggedIn(script)
        #expect(d.client(Wire.query("SELECT 1")).toBackend == Wire.query("SET NAMES latin1"))
        let answer = d.server([(SessionTrackingTests.setNames, 1)])
        // read_query_result saw the OK as the client would (no trackers), and the client got it
        #expect(script.results.first?.packets.first?.hex == "00000000800000")
        #expect(answer.toClient == Wire.packets([("00000000800000", 1)]))
        #expect(d.machine.sessionState?.value(of: "character_set_results") == "latin1")
    }

    @Test func whatNoTrackerReportsPinsAsInTheRelay() throws {
        let script = FakeScript(hooks: [.readQuery])
        var d = Self.loggedIn(script)
        d.client(Wire.query("CREATE TEMPORARY TABLE t (a INT)"))
        d.server(Wire.ok(seq: 1))
        #expect(d.machine.sessionState?.pins == .temporaryTable)
        d.client(Wire.packets([("16" + "53454c4543542031", 0)]))  // COM_STMT_PREPARE
        #expect(d.machine.sessionState?.pins == [.temporaryTable, .preparedStatement])
    }

    @Test func aResetTurnsTheTrackersOnAgain() throws {
        let script = FakeScript(hooks: [.readQuery])
        var d = Self.loggedIn(script)
        d.client(Wire.query("SET NAMES latin1"))
        d.server([(SessionTrackingTests.setNames, 1)])
        d.client(Wire.packets([("1f", 0)]))  // COM_RESET_CONNECTION
        #expect(d.machine.sessionState?.variables.isEmpty == true)
        let reset = d.server(Wire.ok(seq: 1))
        #expect(reset.toClient == Wire.ok(seq: 1))
        #expect(reset.toBackend == Self.enable)
        // the next command waits for them, and its answer is the client's
        #expect(d.client(Wire.query("SELECT 1")).toBackend == nil)
        #expect(d.server([(Self.enabledOK, 1)]).toBackend == Wire.query("SELECT 1"))
        let rows = Wire.resultSet(["1"], capabilities: [.protocol41, .deprecateEOF])
        #expect(d.server(rows).toClient == rows)
    }

    @Test func aMigratedSessionIsRestoredAheadOfItsCommand() throws {
        let script = FakeScript(hooks: [.readQuery])
        var d = Self.loggedIn(script)
        d.client(Wire.query("SET NAMES latin1"))
        d.server([(SessionTrackingTests.setNames, 1)])
        // migrate(): the handler attached a connection another session left in its own state
        script.change = .migrated(previous: SessionState())
        let moved = d.client(Wire.query("SELECT @@character_set_client"))
        var expected = Wire.packets([("1f", 0)])
        var enable = Self.enable
        expected.writeBuffer(&enable)
        var restore = Wire.query("SET @@session.character_set_client = 'latin1', @@session.character_set_results = 'latin1', @@session.character_set_connection = 'latin1'")
        expected.writeBuffer(&restore)
        var command = Wire.query("SELECT @@character_set_client")
        expected.writeBuffer(&command)
        #expect(moved.toBackend == expected)
        // the answers to the proxy's three statements are dropped; the command's is the client's
        var answers = Wire.ok(seq: 1)
        var on = Wire.packets([(Self.enabledOK, 1)])
        answers.writeBuffer(&on)
        var restored = Wire.packets([(SessionTrackingTests.setNames, 1)])
        answers.writeBuffer(&restored)
        let rows = Wire.resultSet(["latin1"], capabilities: [.protocol41, .deprecateEOF])
        var copy = rows
        answers.writeBuffer(&copy)
        #expect(d.server(answers).toClient == rows)
        #expect(d.machine.sessionState?.pins == [] && d.machine.sessionState?.variables.count == 3)
    }

    @Test func aRefusedRestoreEndsTheSessionWithANamedError() throws {
        let script = FakeScript(hooks: [.readQuery])
        var d = Self.loggedIn(script)
        d.client(Wire.query("SET NAMES latin1"))
        d.server([(SessionTrackingTests.setNames, 1)])
        script.change = .migrated(previous: nil)
        d.client(Wire.query("SELECT 1"))
        var answers = Wire.packets([(Self.enabledOK, 1)])
        var refused = Wire.packets([("ff1504233432303030416363657373", 1)])
        answers.writeBuffer(&refused)
        let end = d.server(answers)
        let close = try #require(end.close)
        #expect(close.toClient.map { String(decoding: $0.readableBytesView, as: UTF8.self) }?.contains("could not bring another server connection") == true)
    }

    @Test func aSwapByBackendNdxLeavesAStateTheModelDoesNotKnow() throws {
        let script = FakeScript(hooks: [.readQuery])
        var d = Self.loggedIn(script)
        script.change = .replaced(status: .autocommit)
        d.client(Wire.query("SELECT 1"))
        #expect(d.machine.sessionState?.pins == .untracked)
    }

    @Test func aDrainMovesAnIdleSessionAndOnlyThen() throws {
        let script = FakeScript(hooks: [.readQuery])
        var d = Self.loggedIn(script)
        d.client(Wire.query("SET NAMES latin1"))
        #expect(!d.machine.mayMoveScriptSession)  // a response on its way
        d.server([(SessionTrackingTests.setNames, 1)])
        #expect(d.machine.mayMoveScriptSession)
        let moved = d.run(d.machine.scriptSessionMoved(previous: nil))
        var expected = Self.enable
        var restore = Wire.query("SET @@session.character_set_client = 'latin1', @@session.character_set_results = 'latin1', @@session.character_set_connection = 'latin1'")
        expected.writeBuffer(&restore)
        #expect(moved.toBackend == expected)
        #expect(!d.machine.mayMoveScriptSession)  // until the restore is answered
        // the next command waits for the answers, then goes
        #expect(d.client(Wire.query("SELECT 1")).toBackend == nil)
        var answers = Wire.packets([(Self.enabledOK, 1)])
        var restored = Wire.packets([(SessionTrackingTests.setNames, 1)])
        answers.writeBuffer(&restored)
        #expect(d.server(answers).toBackend == Wire.query("SELECT 1"))
        // pinned: it stays
        d.server(Wire.resultSet(["1"], capabilities: [.protocol41, .deprecateEOF]))
        d.client(Wire.query("CREATE TEMPORARY TABLE t (a INT)"))
        d.server(Wire.ok(seq: 1))
        #expect(!d.machine.mayMoveScriptSession)
        #expect(d.run(d.machine.scriptSessionMoved(previous: nil)).isEmpty)
    }

    @Test func responsesStreamAndAnOKWithStateIsTakenWholeWhereverReadsCutIt() throws {
        let use = Wire.packets([(SessionTrackingTests.useMysql, 1)])
        let rows = Wire.resultSet(["1", "2"], capabilities: [.protocol41, .deprecateEOF])
        for clientTracks in [false, true] {
            let expected = Wire.packets([(clientTracks ? "0000000040000000080106056d7973716c" : "00000000000000", 1)])
            for cut in 1..<use.readableBytes {
                let script = FakeScript(hooks: [.readQuery])
                var d = Self.loggedIn(script, clientTracks: clientTracks)
                d.client(Wire.query("USE mysql"))
                #expect(d.server(use, cutAt: cut) == expected, "cut at \(cut), client tracks: \(clientTracks)")
                #expect(d.machine.sessionState?.schema == "mysql")
                // the next response streams as it comes, however it is cut
                d.client(Wire.query("SELECT 1"))
                let at = min(cut, rows.readableBytes - 1)
                #expect(d.server(rows, cutAt: at) == rows, "cut at \(at)")
                #expect(!d.machine.isAwaitingResponse)
            }
        }
    }
}
