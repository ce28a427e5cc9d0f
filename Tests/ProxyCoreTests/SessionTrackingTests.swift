import MySQLWire
import NIOCore
@testable import ProxyCore
import Testing

/// Session tracking on the proxy's own server connections, on OK packets captured from MariaDB
/// 10.11 with `session_track_system_variables = '*'` and the other trackers on.
struct SessionTrackingTests {
    /// `SET NAMES latin1` (sql_mode ANSI_QUOTES, autocommit off): three variables.
    static let setNames = "00000000c00000005f001c146368617261637465725f7365745f636c69656e74066c6174696e31001d156368617261637465725f7365745f726573756c7473066c6174696e310020186368617261637465725f7365745f636f6e6e656374696f6e066c6174696e31"
    /// `USE mysql`: the schema and a state change.
    static let useMysql = "00000000400000000b0106056d7973716c020131"
    /// `START TRANSACTION READ ONLY` after `SET TRANSACTION ISOLATION LEVEL SERIALIZABLE`.
    static let startReadOnly = "00000001e000000058050908545f5f5f5f5f5f5f044b4a534554205452414e53414354494f4e2049534f4c4154494f4e204c4556454c2053455249414c495a41424c453b205354415254205452414e53414354494f4e2052454144204f4e4c593b"
    /// `INSERT ... VALUES (1),(2)`: an info text and the last GTID.
    static let insert = "00020002400000265265636f7264733a203220204475706c6963617465733a203020205761726e696e67733a2030150013096c6173745f6774696408302d312d36303132"
    /// `SET character_set_results = NULL`, `SET timestamp = 1000`.
    static let resultsNull = "00000002400000001c0017156368617261637465725f7365745f726573756c747300020131"
    static let timestamp = "00000002400000001b00160974696d657374616d700b313030302e303030303030020131"

    @Test func itemsAreReadAsTheServerWroteThem() throws {
        let tail = try OKPacketTail(parsing: ByteBuffer(hex: Self.setNames))
        #expect(tail.status.contains(.sessionStateChanged) && tail.info?.readableBytes == 0)
        let variables = try tail.items.map { try $0.systemVariable() }
        #expect(variables.map(\.name) == ["character_set_client", "character_set_results", "character_set_connection"])
        #expect(variables.allSatisfy { $0.value == "latin1" })
        let use = try OKPacketTail(parsing: ByteBuffer(hex: Self.useMysql))
        #expect(use.items.map(\.kind) == [.schema, .stateChange])
        #expect(try use.items[0].string() == "mysql" && use.items[1].string() == "1")
        let start = try OKPacketTail(parsing: ByteBuffer(hex: Self.startReadOnly))
        #expect(try start.items.map { try $0.string() } == ["T_______", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; START TRANSACTION READ ONLY;"])
        #expect(throws: WireError.self) { try OKPacketTail(parsing: ByteBuffer(hex: Self.useMysql + "00")) }
        #expect(throws: WireError.self) { try OKPacketTail(parsing: ByteBuffer(hex: "00000000400000000b0106056d79")) }
    }

    @Test func aClientGetsTheOKItsOwnTrackersWouldHaveMade() throws {
        // without CLIENT_SESSION_TRACK: what MariaDB writes for such a client (captured)
        let setNames = try OKPacketTail(parsing: ByteBuffer(hex: Self.setNames))
        #expect(setNames.payload(keeping: [], clientTracks: false).hex == "00000000800000")
        let insert = try OKPacketTail(parsing: ByteBuffer(hex: Self.insert))
        #expect(insert.payload(keeping: [], clientTracks: false).hex
                == "00020002000000265265636f7264733a203220204475706c6963617465733a203020205761726e696e67733a2030")
        // with MariaDB's default trackers: the charset variables stay, the GTID and state change go
        let defaults = SessionTrackSettings.mariaDBDefaults
        #expect(setNames.items.allSatisfy { defaults.wants($0) })
        let use = try OKPacketTail(parsing: ByteBuffer(hex: Self.useMysql))
        let useForDefaults = use.payload(keeping: use.items.filter { defaults.wants($0) }, clientTracks: true)
        #expect(useForDefaults.hex == "0000000040000000080106056d7973716c")
        let insertForDefaults = insert.payload(keeping: insert.items.filter { defaults.wants($0) }, clientTracks: true)
        #expect(insertForDefaults.hex == "00020002000000265265636f7264733a203220204475706c6963617465733a203020205761726e696e67733a2030")
        var mine = defaults
        let applied = mine.apply(variable: "session_track_system_variables", value: "sql_mode, TIME_ZONE")
        #expect(applied)
        #expect(mine.systemVariables == ["sql_mode", "time_zone"] && !mine.wants(setNames.items[0]))
        let other = mine.apply(variable: "sql_mode", value: "")
        #expect(!other)
    }

    @Test func theModelKeepsWhatTheServerReported() throws {
        var state = SessionState()
        for hex in [Self.useMysql, Self.setNames, Self.insert, Self.resultsNull] {
            let tail = try OKPacketTail(parsing: ByteBuffer(hex: hex))
            state.apply(tail.items, status: tail.status)
        }
        #expect(state.schema == "mysql" && state.pins.isEmpty)
        #expect(state.value(of: "character_set_results") == "" && state.value(of: "last_gtid") == nil)
        #expect(state.restoreStatements() == [
            "USE `mysql`",
            "SET @@session.character_set_client = 'latin1', @@session.character_set_results = NULL, @@session.character_set_connection = 'latin1'",
        ])
        let start = try OKPacketTail(parsing: ByteBuffer(hex: Self.startReadOnly))
        state.apply(start.items, status: start.status)
        #expect(state.pins == .transaction)
        state.updateTransaction(.autocommit)
        let timestamp = try OKPacketTail(parsing: ByteBuffer(hex: Self.timestamp))
        state.apply(timestamp.items, status: timestamp.status)
        #expect(state.pins == .timestamp && state.pins.description == "timestamp")
        // values that need no quoting stay readable; anything else goes in hex, whatever the sql_mode
        #expect(SessionState.quotedString("STRICT_TRANS_TABLES,ANSI_QUOTES") == "'STRICT_TRANS_TABLES,ANSI_QUOTES'")
        #expect(SessionState.quotedString("a'b\\") == "X'6127625C'")
        #expect(SessionState.quotedIdentifier("we`ird") == "`we``ird`")
    }

    // MARK: the machine

    /// A client greeted by the proxy (offering `offered` beside its usual flags) that answered with
    /// `capabilities` and `database`, nat's right password.
    static func loggingIn(_ configuration: ConnectionMachine.Configuration, offered: CapabilityFlags, capabilities: CapabilityFlags,
                          database: String? = nil, script: FakeScript? = nil) -> Driver {
        var d = Driver(configuration, script: script)
        d.verifier = { ProxyAuthenticator.verify($0, table: ProxyLoginTests.table([ProxyLoginTests.nat]), hostname: nil, ip: "10.0.0.1") }
        var greeting = ProxyLoginTests.ownGreeting()
        greeting.capabilities.formUnion(offered)
        d.run(d.machine.clientConnected(ownGreeting: greeting))
        let r = HandshakeResponse41(capabilities: capabilities, username: "nat", authResponse: NativePasswordTests.answer,
                                    database: database, authPluginName: "mysql_native_password")
        var payload = ByteBuffer()
        r.write(to: &payload)
        var framed = ByteBuffer()
        var seq: UInt8 = 1
        framed.writeMySQLPacket(payload, sequenceID: &seq)
        d.client(framed)
        return d
    }

    static func tracking(clientTracks: Bool, multiplexes: Bool = false, script: FakeScript? = nil) -> Driver {
        var c = ConnectionMachine.Configuration()
        c.poolsServers = true
        c.tracksSessions = true
        c.multiplexes = multiplexes
        var capabilities: CapabilityFlags = [.protocol41, .secureConnection, .pluginAuth, .longPassword, .transactions, .deprecateEOF]
        if clientTracks { capabilities.insert(.sessionTrack) }
        var d = loggingIn(c, offered: .sessionTrack, capabilities: capabilities, script: script)
        d.connected()
        d.server([(Wire.greeting, 0)])
        return d
    }

    @Test func theTrackersGoOnAfterTheLoginAndTheirAnswerIsTheProxys() throws {
        var d = Self.tracking(clientTracks: false)
        let ok = d.server(Wire.ok(seq: 2))
        #expect(ok.toClient == Wire.ok(seq: 2))
        let enable = try #require(ok.toBackend)
        #expect(enable == Wire.query("SET SESSION session_track_system_variables = '*', session_track_schema = ON, session_track_state_change = ON, session_track_transaction_info = 'CHARACTERISTICS'"))
        // the client's first command goes behind it; the answers come in order, the proxy's is dropped
        #expect(d.client(Wire.query("SET NAMES latin1")).toBackend == Wire.query("SET NAMES latin1"))
        var both = Wire.packets([("000000024000000003020131", 1)])
        both.writeImmutableBuffer(Wire.packets([(Self.setNames, 1)]))
        let answers = d.server(both)
        #expect(answers.toClient == Wire.packets([("00000000800000", 1)]))
        #expect(d.machine.sessionState?.value(of: "character_set_client") == "latin1")
        #expect(d.machine.sessionState?.clientTrackers == .mariaDBDefaults)
    }

    @Test func anOKCutAnywhereAcrossReadsIsHeldUntilWhole() throws {
        let answer = Wire.packets([(Self.useMysql, 1)])
        var result = Wire.resultSet(["1"], capabilities: [.protocol41, .deprecateEOF])
        let both = { () -> ByteBuffer in var b = answer; b.writeBuffer(&result); return b }()
        for clientTracks in [false, true] {
            let expected = clientTracks ? "0000000040000000080106056d7973716c" : "00000000000000"
            var whole = Wire.packets([(expected, 1)])
            var tail = Wire.resultSet(["1"], capabilities: [.protocol41, .deprecateEOF])
            whole.writeBuffer(&tail)
            for cut in 1..<both.readableBytes {
                var d = Self.tracking(clientTracks: clientTracks)
                d.server(Wire.ok(seq: 2))
                d.server([("000000024000000003020131", 1)])  // the trackers' OK, dropped
                d.client(Wire.query("USE mysql"))
                d.client(Wire.query("SELECT 1"))
                #expect(d.server(both, cutAt: cut) == whole, "cut at \(cut), client tracks: \(clientTracks)")
                #expect(d.machine.sessionState?.schema == "mysql")
                #expect(!d.machine.isAwaitingResponse)
            }
        }
    }

    @Test func aPooledLoginsOKNamesItsSchemaAsTheServersDoes() throws {
        var c = ConnectionMachine.Configuration()
        c.poolsServers = true
        var d = Self.loggingIn(c, offered: [.sessionTrack, .connectWithDB],
                               capabilities: [.protocol41, .secureConnection, .pluginAuth, .transactions, .sessionTrack, .connectWithDB],
                               database: "mxdb")
        let attached = d.run(d.machine.pooledServerAttached(backendTLS: false, localSocket: false))
        // captured: MariaDB's OK to a login with database mxdb
        #expect(attached.toClient == Wire.packets([("0000000240000000070105046d786462", 2)]))
    }
}

/// The statement backstop: what no tracker reports, from the text.
struct StatementBackstopTests {
    func read(_ sql: String) -> StatementBackstop { StatementBackstop(Array(sql.utf8)) }

    @Test func userVariablesSetToLiteralsAreCarriedAndOthersPin() {
        let orm = read("SET @x = 1, @@session.sql_mode = 'ANSI', @`Y` := 'it''s', @z = -2.5, @n = NULL")
        #expect(orm.pins.isEmpty)
        #expect(orm.userVariables.map(\.name) == ["x", "y", "z", "n"])
        #expect(orm.userVariables.map(\.literal) == ["1", "'it''s'", "-2.5", "NULL"])
        #expect(read("SET @x = @x + 1").pins == .userVariables)
        #expect(read("SET @x = (SELECT 1)").pins == .userVariables)
        #expect(read("SELECT @x := 1").pins == .userVariables)
        #expect(read("SELECT 1 INTO @x").pins == .userVariables)
        #expect(read("SELECT @x, @@sql_mode").pins.isEmpty)
        #expect(read("SELECT '@x := 1', `@y` /* SET @z := 1 */ -- @w := 2\n").pins.isEmpty)
        #expect(read("SELECT 1; SET @a = 2").userVariables.map(\.name) == ["a"])
        #expect(read("/*!40101 SET @OLD := @@sql_mode */").pins == .userVariables)
    }

    @Test func theSessionsOwnTrackersAreReadFromTheText() {
        // narrowing session_track_system_variables from the proxy's '*' is reported by no tracker
        let narrowed = read("SET SESSION session_track_system_variables = 'time_zone,sql_mode', @@session_track_schema = OFF")
        #expect(narrowed.pins == .trackers)
        #expect(narrowed.trackerSettings.map(\.name) == ["session_track_system_variables", "session_track_schema"])
        #expect(narrowed.trackerSettings.map(\.value) == ["time_zone,sql_mode", "OFF"])
        var state = SessionState()
        state.apply(narrowed)
        #expect(state.clientTrackers.systemVariables == ["time_zone", "sql_mode"] && !state.clientTrackers.schema)
        #expect(read("SET @@local.session_track_state_change = 1").trackerSettings.map(\.value) == ["1"])
        #expect(read("SET session_track_system_variables = DEFAULT").pins == [.trackers, .untracked])
        // reading them is not changing them
        #expect(read("SELECT @@session_track_system_variables").pins.isEmpty)
        #expect(read("SET time_zone = '+01:00'").trackerSettings.isEmpty)
    }

    @Test func stateNoTrackerReportsPinsTheSession() {
        #expect(read("SELECT GET_LOCK('a', 1)").pins == .namedLock)
        #expect(read("lock tables t1 read").pins == .tableLock)
        #expect(read("FLUSH TABLES WITH READ LOCK").pins == .tableLock)
        #expect(read("UNLOCK TABLES").clears == .tableLock)
        #expect(read("CREATE TEMPORARY TABLE t (a int)").pins == .temporaryTable)
        #expect(read("HANDLER t OPEN").pins == .handler)
        #expect(read("XA START 'x'").pins == .xa && read("XA COMMIT 'x'").clears == .xa)
        #expect(read("PREPARE s FROM 'SELECT 1'").pins == .textPrepare)
        #expect(read("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1").pins == .lastStatement)
        #expect(read("SELECT 'GET_LOCK(1)', `temporary` FROM t").pins.isEmpty)
        // what names none of the words is not lexed at all
        #expect(!StatementBackstop.worthReading(Array("SELECT c FROM sbtest1 WHERE id = 42 /* locked */".utf8)))
        #expect(StatementBackstop.worthReading(Array("select x from t lock in share mode".utf8)))
        #expect(!StatementBackstop.worthReading(Array(("SELECT " + String(repeating: "A", count: 100) + "LOCK").utf8)))
        var state = SessionState()
        state.apply(read("LOCK TABLES t WRITE"))
        state.apply(read("SET @a = 1"))
        #expect(state.pins == .tableLock)
        state.apply(read("UNLOCK TABLES"))
        #expect(state.pins.isEmpty)
        #expect(state.restoreStatements() == ["SET @`a` = 1"])
        // a session that sets more user variables than the proxy carries stays on its connection
        state.apply(read("SET " + (0..<100).map { "@v\($0) = \($0)" }.joined(separator: ", ")))
        #expect(state.pins == .userVariables && state.userVariables.count == 64)
    }
}
