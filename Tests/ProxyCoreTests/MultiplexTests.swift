import MySQLWire
import NIOCore
@testable import ProxyCore
import Testing

/// Multiplexing in the machine: a session gives its connection up between commands, asks for one
/// at its next command, and the connection it gets is brought to its state in front of it.
struct MultiplexTests {
    static let trackersOK = "000000024000000003020131"
    /// The OK to `SET time_zone = '+01:00'`, the variable tracked.
    static let timeZoneOK = "00000002400000" + "00" + "13" + "00110974696d655f7a6f6e65062b30313a3030"
    static let enable = "SET SESSION session_track_system_variables = '*', session_track_schema = ON, session_track_state_change = ON, session_track_transaction_info = 'CHARACTERISTICS'"

    /// A session logged in by the proxy, its trackers on, `SET time_zone = '+01:00'` done.
    static func session() -> Driver {
        var d = SessionTrackingTests.tracking(clientTracks: false, multiplexes: true)
        d.server(Wire.ok(seq: 2))
        d.server([(trackersOK, 1)])
        d.client(Wire.query("SET time_zone = '+01:00'"))
        // the server's OK names the variable (captured form)
        d.server([(timeZoneOK, 1)])
        return d
    }

    @Test func aSessionBetweenCommandsGivesItsConnectionUpAndTakesOneBack() throws {
        var d = Self.session()
        #expect(d.machine.mayPark)
        #expect(d.run(d.machine.parkRequested()).actions == [.parkBackend])
        #expect(d.machine.isParked)
        // the next command waits for a connection; reads stop meanwhile
        let asked = d.client(Wire.query("SELECT 1"))
        #expect(asked.actions == [.readFromClient(false), .takeBackend])
        // another session's connection: reset, trackers, the session's state, then the command
        var other = SessionState()
        other.apply([.systemVariable("sql_mode", "ANSI")], status: .autocommit)
        let attached = d.run(d.machine.multiplexedServerAttached(previous: other))
        var expected = Wire.packets([("1f", 0)])
        expected.writeImmutableBuffer(Wire.query(Self.enable))
        expected.writeImmutableBuffer(Wire.query("SET @@session.time_zone = '+01:00'"))
        expected.writeImmutableBuffer(Wire.query("SELECT 1"))
        #expect(attached.toBackend == expected)
        #expect(attached.actions.contains(.readFromClient(true)))
        // the proxy's three answers are dropped; the client gets its result
        var answers = Wire.packets([("00000002000000", 1), (Self.trackersOK, 1), (Self.timeZoneOK, 1)])
        var result = Wire.resultSet(["1"], capabilities: d.capabilities)
        answers.writeBuffer(&result)
        #expect(d.server(answers).toClient == Wire.resultSet(["1"], capabilities: d.capabilities))
        #expect(d.machine.mayPark)
    }

    @Test func itsOwnConnectionOrOneInTheSameStateNeedsNothing() throws {
        var d = Self.session()
        d.run(d.machine.parkRequested())
        d.client(Wire.query("SELECT 1"))
        let state = try #require(d.machine.sessionState)
        #expect(d.run(d.machine.multiplexedServerAttached(previous: state)).toBackend == Wire.query("SELECT 1"))
        d.server(Wire.resultSet(["1"], capabilities: d.capabilities))
        d.run(d.machine.parkRequested())
        d.client(Wire.query("SELECT 2"))
        #expect(d.run(d.machine.multiplexedServerAttached(previous: SessionState(), own: true)).toBackend == Wire.query("SELECT 2"))
    }

    /// A session that took a pooled connection knows no schema (nil: its login's); one whose
    /// connection was brought to its state learned the same schema from the server. Taken for
    /// different states, every hand-over between two such sessions sent the trackers and a USE
    /// in front of the command (sysbench's sessions, all logged into one database).
    @Test func aSchemaNobodyChoseIsTheLoginDatabase() {
        var learned = SessionState()
        learned.apply([.string(.schema, "sbtest")], status: .autocommit)
        #expect(learned.schema == "sbtest")
        let fresh = SessionState()
        #expect(learned.sameServerState(as: fresh, loginDatabase: "sbtest"))
        #expect(fresh.sameServerState(as: learned, loginDatabase: "sbtest"))
        #expect(!learned.sameServerState(as: fresh, loginDatabase: "other"))
        #expect(!learned.sameServerState(as: fresh, loginDatabase: ""))
        var elsewhere = SessionState()
        elsewhere.apply([.string(.schema, "other")], status: .autocommit)
        #expect(!elsewhere.sameServerState(as: learned, loginDatabase: "sbtest"))
        #expect(!elsewhere.sameServerState(as: fresh, loginDatabase: "sbtest"))
    }

    @Test func aRestoreTheServerRefusesEndsTheSessionWithANamedError() throws {
        var d = Self.session()
        d.run(d.machine.parkRequested())
        d.client(Wire.query("SELECT 1"))
        d.run(d.machine.multiplexedServerAttached(previous: nil))
        let refused = d.server(Wire.packets([(Self.trackersOK, 1), ("ff4a04233432303030" + Array("no".utf8).map { String(format: "%02x", $0) }.joined(), 1)]))
        let close = try #require(refused.close)
        let err = try ERRPacket(parsing: try firstFrame(close.toClient).payload)
        #expect(err.code == 1105 && err.message.contains("could not bring another server connection"))
        #expect(try firstFrame(close.toClient).sequenceID == 1)
    }

    @Test func whatCannotMovePinsTheSession() {
        var d = Self.session()
        d.client(Wire.query("CREATE TEMPORARY TABLE t (a INT)"))
        d.server(Wire.ok(seq: 1))
        #expect(d.machine.sessionState?.pins == .temporaryTable)
        #expect(d.run(d.machine.parkRequested()).actions.isEmpty)
        var e = Self.session()
        e.client(Wire.query("BEGIN"))
        e.server([("00000003000000", 1)])  // in a transaction
        #expect(!e.machine.mayPark && e.machine.sessionState?.pins == .transaction)
        e.client(Wire.query("COMMIT"))
        e.server([("00000002000000", 1)])
        #expect(e.machine.mayPark)
        // a command on its way, or an answer not read yet, keeps the connection too
        e.client(Wire.query("SELECT 1"))
        #expect(!e.machine.mayPark)
    }

    @Test func aClientQuittingWhileParkedNeedsNoServer() {
        var d = Self.session()
        d.run(d.machine.parkRequested())
        let quit = d.client([("01", 0)])
        #expect(!quit.actions.contains(.takeBackend) && quit.close != nil)
        #expect(d.machine.closeSource == CloseSource.none)
        var e = Self.session()
        e.run(e.machine.parkRequested())
        e.client(Wire.query("SELECT 1"))
        let unavailable = e.run(e.machine.multiplexedServerUnavailable(.noBackend("none came"), reason: "test"))
        #expect(unavailable.close != nil)
    }
}

/// The proxy's own login on a new server connection (multiplexing).
struct ServerLoginDriverTests {
    static let login = ConnectionMachine.ServerLogin(
        user: "nat", database: "moon", characterSet: 45, capabilities: [], sessionCapabilities: [.protocol41, .transactions, .deprecateEOF],
        credential: NativePasswordTests.sha1OfPassword, attributes: ByteBuffer(), clientTLS: false, compression: nil)

    @Test func itAnswersTheGreetingAndMariaDBsSwitch() throws {
        var d = ServerLoginDriver(login: Self.login, tls: false, tracks: true)
        var greeting = Wire.packets([(Wire.greeting, 0)])
        let half = greeting.readSlice(length: 10)!
        #expect(d.received(half) == .wait)
        guard case .send(let response) = d.received(greeting) else { Issue.record("no response"); return }
        let frame = try firstFrame(response)
        let sent = try HandshakeResponse41(parsing: frame.payload)
        let challenge = Array(Wire.greetingValue().authPluginData.prefix(20))
        #expect(frame.sequenceID == 1 && sent.username == "nat" && sent.database == "moon" && sent.characterSet == 45)
        #expect(sent.authResponse == NativePassword.scramble(challenge: challenge, hashedPassword: NativePasswordTests.sha1OfPassword))
        let wanted: CapabilityFlags = [.protocol41, .transactions, .deprecateEOF, .sessionTrack, .connectWithDB]
        #expect(sent.capabilities.isSuperset(of: wanted))
        // the server switches to mysql_native_password with a new challenge: answered once
        let fresh = Array(repeating: UInt8(7), count: 20)
        let switchRequest = "fe" + Array("mysql_native_password".utf8).map { String(format: "%02x", $0) }.joined() + "00"
            + fresh.map { String(format: "%02x", $0) }.joined() + "00"
        guard case .send(let answer) = d.received(Wire.packets([(switchRequest, 2)])) else { Issue.record("no answer"); return }
        let answered = try firstFrame(answer)
        #expect(answered.sequenceID == 3)
        #expect(Array(answered.payload.readableBytesView) == NativePassword.scramble(challenge: fresh, hashedPassword: NativePasswordTests.sha1OfPassword))
        #expect(d.received(Wire.ok(seq: 4)) == .done(challenge: fresh, compression: nil))
    }

    /// The captured greeting, framed, with CLIENT_SSL offered or not.
    static func greeting(ssl: Bool) -> ByteBuffer {
        var greeting = Wire.greetingValue()
        if ssl { greeting.capabilities.insert(.ssl) } else { greeting.capabilities.remove(.ssl) }
        var payload = ByteBuffer()
        greeting.write(to: &payload)
        var framed = ByteBuffer()
        var seq: UInt8 = 0
        framed.writeMySQLPacket(payload, sequenceID: &seq)
        return framed
    }

    @Test func overTLSTheRequestComesFirstAndARefusalFails() throws {
        var d = ServerLoginDriver(login: Self.login, tls: true, tracks: false)
        // a greeting without CLIENT_SSL cannot serve a login that had TLS
        guard case .failed = d.received(Self.greeting(ssl: false)) else { Issue.record("a plaintext server accepted"); return }
        var e = ServerLoginDriver(login: Self.login, tls: true, tracks: false)
        guard case .startTLS(let request, let then) = e.received(Self.greeting(ssl: true)) else { Issue.record("no TLS"); return }
        #expect(try firstFrame(request).sequenceID == 1 && firstFrame(then).sequenceID == 2)
        guard case .failed(let reason) = e.received(Wire.packets([("ff15042332383030304163636573732064656e696564", 3)])) else {
            Issue.record("a refusal went through"); return
        }
        #expect(reason.contains("1045"))
    }
}
