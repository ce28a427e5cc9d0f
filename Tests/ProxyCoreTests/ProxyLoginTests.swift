import MySQLWire
import NIOCore
import Testing
@testable import ProxyCore

/// `--proxy-auth=proxy`: the verdict on a login (as MariaDB 10.11 decides and words it), the
/// machine's own greeting and login to the server, the pool's hand-over, and the reset.
@Suite struct ProxyLoginTests {
    typealias N = NativePasswordTests
    static let challenge = N.challenge  // 1...20: PyMySQL's answer to it is N.answer

    static func table(_ accounts: [Account]) -> AccountTable { AccountTable(accounts) }
    static let nat = Account(user: "nat", host: "%", methods: [("mysql_native_password", N.stored)])

    static func attempt(_ response: [UInt8] = N.answer, user: String = "nat", plugin: String? = "mysql_native_password",
                        tls: Bool = false, switched: Bool = false) -> LoginAttempt {
        LoginAttempt(user: user, plugin: plugin, response: response, challenge: challenge, clientTLS: tls, switched: switched)
    }

    // MARK: the verdict

    @Test func aRightAnswerRevealsTheCredential() {
        let verdict = ProxyAuthenticator.verify(Self.attempt(), table: Self.table([Self.nat]), hostname: nil, ip: "10.0.0.1")
        #expect(verdict == .accepted(credential: N.sha1OfPassword, account: "%"))
    }

    @Test func refusalsHaveTheServersCodesAndWords() {
        let table = Self.table([Self.nat, Account(user: "locked", host: "%", methods: [("mysql_native_password", N.stored)], locked: true),
                                Account(user: "tls", host: "%", methods: [("mysql_native_password", N.stored)], tls: .any)])
        func refusal(_ a: LoginAttempt) -> ERRPacket? {
            if case .refused(let err, _) = ProxyAuthenticator.verify(a, table: table, hostname: nil, ip: "10.0.0.1") { return err }
            return nil
        }
        var wrong = N.answer
        wrong[0] ^= 1
        // the texts are MariaDB 10.11's (e2e test_proxy_auth compares them with a direct login)
        #expect(refusal(Self.attempt(wrong)) == ERRPacket(code: 1045, sqlState: "28000", message: "Access denied for user 'nat'@'10.0.0.1' (using password: YES)"))
        #expect(refusal(Self.attempt([])) == ERRPacket(code: 1045, sqlState: "28000", message: "Access denied for user 'nat'@'10.0.0.1' (using password: NO)"))
        #expect(refusal(Self.attempt(user: "nobody"))?.code == 1045)
        // a locked account: 4151, but only to whoever knows the password
        #expect(refusal(Self.attempt(user: "locked")) == ERRPacket(code: 4151, sqlState: "HY000", message: "Access denied, this account is locked"))
        #expect(refusal(Self.attempt(wrong, user: "locked"))?.code == 1045)
        // REQUIRE SSL: 1045 over plaintext, in over TLS
        #expect(refusal(Self.attempt(user: "tls"))?.code == 1045)
        #expect(ProxyAuthenticator.verify(Self.attempt(user: "tls", tls: true), table: table, hostname: nil, ip: "10.0.0.1")
                == .accepted(credential: N.sha1OfPassword, account: "%"))
    }

    @Test func anotherPluginIsSwitchedOnceAndOtherAccountsAreRelayed() {
        let table = Self.table([Self.nat, Account(user: "ed", host: "%", methods: [("ed25519", "abc")]),
                                Account(user: "nopw", host: "%", methods: [("mysql_native_password", "")])])
        func verdict(_ a: LoginAttempt) -> LoginVerdict { ProxyAuthenticator.verify(a, table: table, hostname: nil, ip: "10.0.0.1") }
        #expect(verdict(Self.attempt([1, 2, 3], plugin: "caching_sha2_password")) == .switchPlugin("mysql_native_password"))
        if case .refused(let err, _) = verdict(Self.attempt([1, 2, 3], plugin: "caching_sha2_password", switched: true)) {
            #expect(err.code == 1045)
        } else {
            Issue.record("a second switch was not refused")
        }
        #expect(verdict(Self.attempt(user: "ed")) == .relay(plugin: "ed25519"))
        #expect(verdict(Self.attempt([], user: "nopw")) == .accepted(credential: [], account: "%"))
        #expect(verdict(Self.attempt(user: "nopw")) != .accepted(credential: [], account: "%"))
    }

    @Test func aClearPasswordOverTLSIsVerifiedAsIs() {
        let table = Self.table([Self.nat])
        func verdict(_ a: LoginAttempt) -> LoginVerdict { ProxyAuthenticator.verify(a, table: table, hostname: nil, ip: "10.0.0.1") }
        let password = Array("mypass".utf8)
        #expect(verdict(Self.attempt(password + [0], plugin: "mysql_clear_password", tls: true)) == .accepted(credential: N.sha1OfPassword, account: "%"))
        if case .refused(let err, _) = verdict(Self.attempt(Array("nope".utf8) + [0], plugin: "mysql_clear_password", tls: true)) {
            #expect(err.code == 1045)
        } else {
            Issue.record("a wrong clear password was not refused")
        }
        // over plaintext the proxy asks for a scramble instead
        #expect(verdict(Self.attempt(password + [0], plugin: "mysql_clear_password")) == .switchPlugin("mysql_native_password"))
    }

    @Test func aHostNoAccountNamesIsKnownBeforeTheGreeting() {
        let table = Self.table([Account(user: "a", host: "192.168.%", methods: []), Account(user: "b", host: "localhost", methods: [])])
        #expect(ProxyAuthenticator.hostKnown(table, hostname: nil, ip: "192.168.1.5"))
        #expect(ProxyAuthenticator.hostKnown(table, hostname: "localhost", ip: nil))
        #expect(!ProxyAuthenticator.hostKnown(table, hostname: nil, ip: "10.1.1.1"))
        #expect(ERRPacket.hostNotAllowed("10.1.1.1").message == "Host '10.1.1.1' is not allowed to connect to this MariaDB server")
    }

    @Test func challengesArePrintableAsMariaDBs() {
        var random = SystemRandomNumberGenerator()
        let c = ProxyAuthenticator.challenge(from: (random.next(), random.next(), random.next()))
        #expect(c.count == 20 && c.allSatisfy { (33...126).contains($0) })
        let fixed: [UInt8] = ProxyAuthenticator.challenge(from: (0, .max, 0x0102030405060708))
        let high: UInt8 = 33 + 255 % 94
        #expect(Array(fixed.prefix(10)) == [33, 33, 33, 33, 33, 33, 33, 33, high, high])
        let tail: [UInt8] = [41, 40, 39, 38]  // 33 + 8, 7, 6, 5: the third word's low bytes first
        #expect(Array(fixed.suffix(4)) == tail)
    }

    // MARK: the machine

    static func ownGreeting() -> HandshakeV10 {
        var g = Wire.greetingValue()
        g.authPluginData = challenge
        g.connectionID = 77
        return g
    }

    /// The client's handshake response to the proxy's greeting: user nat, PyMySQL's answer.
    static func response(seq: UInt8 = 1, plugin: String = "mysql_native_password", answer: [UInt8] = N.answer) -> ByteBuffer {
        let r = HandshakeResponse41(capabilities: [.protocol41, .secureConnection, .pluginAuth, .longPassword, .transactions, .deprecateEOF],
                                    username: "nat", authResponse: answer, authPluginName: plugin)
        var payload = ByteBuffer()
        r.write(to: &payload)
        var out = ByteBuffer()
        var s = seq
        out.writeMySQLPacket(payload, sequenceID: &s)
        return out
    }

    static func verifying(pools: Bool = false) -> Driver {
        var c = ConnectionMachine.Configuration()
        c.poolsServers = pools
        var d = Driver(c)
        d.verifier = { ProxyAuthenticator.verify($0, table: Self.table([Self.nat]), hostname: nil, ip: "10.0.0.1") }
        return d
    }

    @Test func theProxyGreetsVerifiesAndLogsIntoTheServer() throws {
        var d = Self.verifying(pools: true)
        let greeted = d.run(d.machine.clientConnected(ownGreeting: Self.ownGreeting()))
        let greeting = try HandshakeV10(parsing: try firstFrame(greeted.toClient).payload)
        #expect(greeting.authPluginData == Self.challenge && greeting.connectionID == 77)
        // verified before any server connection: a wrong password would end here
        let answered = d.client(Self.response())
        #expect(d.attempts == [Self.attempt()])
        // no client reads while the login waits for its server (what the client pipelines waits in
        // the socket)
        #expect(answered.actions == [.connectToBackend(preferred: nil), .readFromClient(false)])
        #expect(!d.machine.wantsClientReads)
        #expect(d.machine.pendingServerLogin?.credential == N.sha1OfPassword)
        d.connected()
        // the server's greeting: the proxy answers its challenge from SHA1(password)
        let login = d.server([(Wire.greeting, 0)])
        let sent = try firstFrame(login.toBackend)
        let response = try HandshakeResponse41(parsing: sent.payload)
        let serverChallenge = Array(Wire.greetingValue().authPluginData.prefix(20))
        #expect(response.authResponse == NativePassword.scramble(challenge: serverChallenge, hashedPassword: N.sha1OfPassword))
        #expect(response.username == "nat" && response.authPluginName == "mysql_native_password" && sent.sequenceID == 1)
        #expect(login.toClient == nil)
        #expect(login.actions.contains(.readFromClient(true)))  // the login went to the server: reads go on
        let ok = d.server(Wire.ok(seq: 2))
        #expect(ok.actions == [.forwardToClient(Wire.ok(seq: 2)), .loginSucceeded])
        #expect(d.machine.serverLogin?.user == "nat" && d.machine.serverChallenge == serverChallenge)
        // the client quits: the idle server connection goes to the pool, the quit goes nowhere
        let quit = d.client([("01", 0)])
        #expect(quit.actions.contains(.releaseBackend))
        #expect(quit.toBackend == nil && quit.close != nil)
        #expect(d.machine.closeSource == CloseSource.none)
    }

    @Test func whatAClientSendsWhileItsLoginWaitsIsBounded() {
        var c = ConnectionMachine.Configuration()
        c.maximumPacketLength = 1 << 10
        var d = Driver(c)
        d.verifier = { ProxyAuthenticator.verify($0, table: Self.table([Self.nat]), hostname: nil, ip: "10.0.0.1") }
        d.run(d.machine.clientConnected(ownGreeting: Self.ownGreeting()))
        d.client(Self.response())
        #expect(d.machine.isConnecting && !d.machine.wantsClientReads)
        // a command pipelined behind the login waits for it; a flood ends the connection
        #expect(d.client(Wire.query("SELECT 1")).isEmpty)
        let flood = d.client(ByteBuffer(repeating: 0x41, count: 2 << 10))
        #expect(flood.close?.mode == .abort && d.machine.isClosed)
    }

    @Test func aWrongPasswordIsRefusedWithoutAServer() throws {
        var d = Self.verifying()
        d.run(d.machine.clientConnected(ownGreeting: Self.ownGreeting()))
        var wrong = N.answer
        wrong[3] ^= 0x40
        let refused = d.client(Self.response(answer: wrong))
        #expect(!refused.actions.contains { if case .connectToBackend = $0 { return true } else { return false } })
        let err = try firstFrame(refused.close?.toClient)
        #expect(err.sequenceID == 2)
        #expect(try ERRPacket(parsing: err.payload).code == 1045)
        #expect(d.machine.closeSource == .authFailed)
    }

    @Test func readAuthResultSeesTheProxysRefusalAndCannotUndoIt() throws {
        let script = FakeScript(hooks: [.readAuthResult])
        script.onReadAuthResult = { _ in .returned(.sendResult(.ok(affectedRows: 0, insertID: 0, serverStatus: nil, warnings: 0, message: nil))) }
        var d = Driver(script: script)
        d.verifier = { ProxyAuthenticator.verify($0, table: Self.table([Self.nat]), hostname: nil, ip: "10.0.0.1") }
        d.run(d.machine.clientConnected(ownGreeting: Self.ownGreeting()))
        var wrong = N.answer
        wrong[0] ^= 1
        let refused = d.client(Self.response(answer: wrong))
        guard case .readAuthResult(let packet)? = refused.hooks.first?.hook else {
            Issue.record("read_auth_result did not run: \(refused.hooks)"); return
        }
        #expect(try ERRPacket(parsing: packet).code == 1045)
        // the script answered OK; the client gets it, and the connection ends all the same
        #expect(refused.close != nil && d.machine.isClosed)
        #expect(!refused.actions.contains { if case .connectToBackend = $0 { return true } else { return false } })
        #expect(d.machine.closeSource == .authFailed)
    }

    @Test func aClientAnsweringWithAnotherPluginIsSwitched() throws {
        var d = Self.verifying()
        d.run(d.machine.clientConnected(ownGreeting: Self.ownGreeting()))
        let asked = d.client(Self.response(plugin: "caching_sha2_password", answer: Array(repeating: 7, count: 32)))
        let switchFrame = try firstFrame(asked.toClient)
        #expect(switchFrame.sequenceID == 2)
        let request = try AuthSwitchRequest(parsing: switchFrame.payload)
        #expect(request.pluginName == "mysql_native_password" && Array(request.pluginData.prefix(20)) == Self.challenge)
        // the answer (sequence id 3) is verified; the server's OK (2) reaches the client as 4
        #expect(d.client([(N.answer.map { String(format: "%02x", $0) }.joined(), 3)]).actions == [.connectToBackend(preferred: nil), .readFromClient(false)])
        #expect(d.attempts.last?.switched == true)
        d.connected()
        d.server([(Wire.greeting, 0)])
        let ok = d.server(Wire.ok(seq: 2))
        #expect(try firstFrame(ok.toClient).sequenceID == 4)
    }

    @Test func aPooledConnectionServesTheNextLoginAtOnce() throws {
        var d = Self.verifying(pools: true)
        d.run(d.machine.clientConnected(ownGreeting: Self.ownGreeting()))
        d.client(Self.response())
        let attached = d.run(d.machine.pooledServerAttached(backendTLS: false, localSocket: false))
        let ok = try firstFrame(attached.toClient)
        #expect(ok.sequenceID == 2 && ok.payload.getInteger(at: ok.payload.readerIndex, as: UInt8.self) == 0)
        #expect(attached.actions.contains(.loginSucceeded))
        let q = d.client(Wire.query("SELECT 1"))
        #expect(q.actions == [.forwardToBackend(Wire.query("SELECT 1"))])
        // the server answers; then the client leaves without COM_QUIT: still idle, still pooled
        d.server(Wire.resultSet(["1"], capabilities: d.capabilities))
        #expect(d.clientClosed().actions.contains(.releaseBackend))
    }

    @Test func aQuitSentBehindTheLoginFollowsItsOK() throws {
        // (the quit's actions were queued behind the OK, and the first of them queued again at
        // the end: the OK went after the close, which drops it)
        var d = Self.verifying(pools: true)
        d.run(d.machine.clientConnected(ownGreeting: Self.ownGreeting()))
        var both = Self.response()
        both.writeImmutableBuffer(Wire.packets([("01", 0)]))
        d.client(both)
        let attached = d.run(d.machine.pooledServerAttached(backendTLS: false, localSocket: false))
        let ok = try firstFrame(attached.toClient)
        #expect(ok.sequenceID == 2 && ok.payload.getInteger(at: ok.payload.readerIndex, as: UInt8.self) == 0)
        #expect(attached.actions.contains(.releaseBackend) && attached.close != nil)
        let order = attached.actions.map { action -> String in
            switch action {
            case .write: return "write"
            case .releaseBackend: return "release"
            case .close: return "close"
            default: return "other"
            }
        }.filter { $0 != "other" }
        #expect(order == ["write", "release", "close"])
    }

    @Test func aQuitBehindAPendingCommandLetsTheAnswerThrough() {
        // (the quit went to the server and the client was closed at once: the answer it waited
        // for was lost, as the login's OK was for a quit pipelined behind a fresh login)
        var d = Self.verifying(pools: true)
        d.run(d.machine.clientConnected(ownGreeting: Self.ownGreeting()))
        d.client(Self.response())
        d.run(d.machine.pooledServerAttached(backendTLS: false, localSocket: false))
        var both = Wire.query("SELECT 1")
        both.writeImmutableBuffer(Wire.packets([("01", 0)]))
        let sent = d.client(both)
        #expect(sent.toBackend == both && sent.close == nil && !sent.actions.contains(.releaseBackend))
        let answer = Wire.resultSet(["1"], capabilities: d.capabilities)
        #expect(d.server(answer).toClient == answer)
        let closed = d.serverClosed()
        #expect(closed.close != nil && d.machine.closeSource == CloseSource.none)
    }

    /// A script's session (read_query: the exchange) under proxy auth: the connection the proxy
    /// logged in goes back to the pool when the client quits (a COM_QUIT the script let through,
    /// or a client gone between commands), as a relayed session's does; a COM_QUIT the script
    /// answered itself leaves the connection to the script.
    @Test func aScriptsSessionGivesItsConnectionBackWhenTheClientQuits() throws {
        func scripted(_ onQuit: HookOutcome = .returned(.noDecision)) -> Driver {
            var c = ConnectionMachine.Configuration()
            c.poolsServers = true
            let script = FakeScript(hooks: [.readQuery])
            script.onReadQuery = { _, packet in packet.getInteger(at: packet.readerIndex, as: UInt8.self) == 1 ? onQuit : .returned(.noDecision) }
            var d = Driver(c, script: script)
            d.verifier = { ProxyAuthenticator.verify($0, table: Self.table([Self.nat]), hostname: nil, ip: "10.0.0.1") }
            d.run(d.machine.clientConnected(ownGreeting: Self.ownGreeting()))
            d.client(Self.response())
            d.run(d.machine.pooledServerAttached(backendTLS: false, localSocket: false))
            let q = d.client(Wire.query("SELECT 1"))
            #expect(q.toBackend == Wire.query("SELECT 1"))
            d.server(Wire.resultSet(["1"], capabilities: d.capabilities))
            return d
        }
        var d = scripted()
        let quit = d.client([("01", 0)])
        #expect(quit.actions.contains(.releaseBackend) && quit.toBackend == nil && quit.close != nil)
        #expect(d.machine.closeSource == CloseSource.none)
        d = scripted()
        #expect(d.clientClosed().actions.contains(.releaseBackend))
        // busy: the connection is not given back
        d = scripted()
        d.client(Wire.query("SELECT SLEEP(10)"))
        #expect(!d.clientClosed().actions.contains(.releaseBackend))
        d = scripted(.returned(.sendResult(.ok(affectedRows: 0, insertID: 0, serverStatus: nil, warnings: 0, message: nil))))
        let kept = d.client([("01", 0)])
        #expect(!kept.actions.contains(.releaseBackend) && kept.toBackend == nil && kept.close != nil)
    }

    /// A script's session with read_auth_result takes a pooled connection: the hook sees the OK
    /// the client gets (MySQL Proxy's pooling scripts give the connection to their pool there),
    /// and what the client sent behind its login waits for it.
    @Test func readAuthResultSeesAPooledLoginsOK() throws {
        var c = ConnectionMachine.Configuration()
        c.poolsServers = true
        let script = FakeScript(hooks: [.readAuthResult, .readQuery])
        script.onReadAuthResult = { _ in
            script.change = .released  // backend_ndx = 0
            return .returned(.noDecision)
        }
        var d = Driver(c, script: script)
        d.verifier = { ProxyAuthenticator.verify($0, table: Self.table([Self.nat]), hostname: nil, ip: "10.0.0.1") }
        #expect(d.machine.pendingServerLogin == nil)
        d.run(d.machine.clientConnected(ownGreeting: Self.ownGreeting()))
        var both = Self.response()
        both.writeImmutableBuffer(Wire.query("SELECT 1"))
        d.client(both)
        #expect(d.machine.pendingServerLogin != nil)
        let attached = d.run(d.machine.pooledServerAttached(backendTLS: false, localSocket: false))
        guard case .readAuthResult(let packet)? = attached.hooks.first?.hook else {
            Issue.record("read_auth_result did not run: \(attached.hooks)"); return
        }
        #expect(packet.getInteger(at: packet.readerIndex, as: UInt8.self) == 0)
        let ok = try firstFrame(attached.toClient)
        #expect(ok.sequenceID == 2 && ok.payload == packet)
        #expect(attached.actions.contains(.loginSucceeded))
        // the query behind the login reached read_query, with no server connection to run on
        #expect(script.readQueries.count == 1)
        #expect(attached.toBackend == nil && attached.close == nil)
    }

    @Test func aConnectionBusyWhenTheClientLeavesIsNotPooled() {
        var d = Self.verifying(pools: true)
        d.run(d.machine.clientConnected(ownGreeting: Self.ownGreeting()))
        d.client(Self.response())
        d.run(d.machine.pooledServerAttached(backendTLS: false, localSocket: false))
        d.client(Wire.query("SELECT SLEEP(10)"))
        #expect(!d.clientClosed().actions.contains(.releaseBackend))
    }

    // MARK: the reset

    @Test func theResetLogsInAgainThroughMariaDBsSwitch() throws {
        let login = ConnectionMachine.ServerLogin(user: "nat", database: "app", characterSet: 33,
                                                  capabilities: [.protocol41, .secureConnection, .pluginAuth], sessionCapabilities: [],
                                                  credential: N.sha1OfPassword, attributes: ByteBuffer(), clientTLS: false)
        var reset = ServerLoginReset(login: login, challenge: Self.challenge)
        let request = try firstFrame(reset.request())
        let parsed = try ChangeUserRequest(parsing: request.payload, capabilities: login.capabilities)
        #expect(parsed.username == "nat" && parsed.database == "app" && parsed.characterSet == 33 && request.sequenceID == 0)
        #expect(parsed.authResponse == N.answer)
        // MariaDB 10.11 answers with a switch to a new challenge (captured: it always does)
        let next = Array(UInt8(41)...UInt8(60))
        var payload = ByteBuffer()
        AuthSwitchRequest(pluginName: "mysql_native_password", pluginData: next + [0]).write(to: &payload)
        guard case .send(let answer) = reset.received(MySQLFrame(sequenceID: 1, payload: payload)) else {
            Issue.record("no answer to the switch"); return
        }
        let frame = try firstFrame(answer)
        #expect(frame.sequenceID == 2)
        #expect(Array(frame.payload.readableBytesView) == NativePassword.scramble(challenge: next, hashedPassword: N.sha1OfPassword))
        #expect(reset.challenge == next)
        #expect(reset.received(MySQLFrame(sequenceID: 3, payload: ByteBuffer(hex: Wire.okHex))) == .done)
    }

    @Test func aLoginWithADatabaseIsResetWithoutAuthentication() throws {
        let login = ConnectionMachine.ServerLogin(user: "nat", database: "app", characterSet: 33, capabilities: [.protocol41, .secureConnection],
                                                  sessionCapabilities: [], credential: N.sha1OfPassword, attributes: ByteBuffer(), clientTLS: false)
        var reset = ServerLoginReset(login: login, challenge: Self.challenge, sessionChangedUser: false)
        #expect(reset.way == .resetConnection)
        let frames = reset.request().frames()
        #expect(frames.map(\.sequenceID) == [0, 0])
        #expect(Array(frames[0].payload.readableBytesView) == [0x1F])
        #expect(Array(frames[1].payload.readableBytesView) == [0x02] + Array("app".utf8))
        let ok = MySQLFrame(sequenceID: 1, payload: ByteBuffer(hex: Wire.okHex))
        #expect(reset.received(ok) == .send(ByteBuffer()))
        #expect(reset.received(ok) == .done)
        // the database is gone: the connection is
        var again = ServerLoginReset(login: login, challenge: Self.challenge, sessionChangedUser: false)
        var err = ByteBuffer()
        ERRPacket(code: 1049, sqlState: "42000", message: "Unknown database 'app'").write(to: &err)
        #expect(again.received(ok) == .send(ByteBuffer()))
        #expect(again.received(MySQLFrame(sequenceID: 1, payload: err)) == .failed("1049 Unknown database 'app'"))
        // a session that changed user, or a login without a database, logs in again
        #expect(ServerLoginReset(login: login, challenge: Self.challenge, sessionChangedUser: true).way == .changeUser)
        var none = login
        none.database = ""
        #expect(ServerLoginReset(login: none, challenge: Self.challenge, sessionChangedUser: false).way == .changeUser)
    }

    /// The login is one box shared by its copies: a change to a copy makes a box of its own.
    @Test func aServerLoginIsAValue() {
        let login = ConnectionMachine.ServerLogin(user: "nat", database: "app", characterSet: 33, capabilities: [.protocol41],
                                                  sessionCapabilities: [], credential: N.sha1OfPassword, attributes: ByteBuffer(), clientTLS: false)
        var copy = login
        #expect(copy.isCopy(of: login) && copy == login)
        copy.capabilities.insert(.secureConnection)
        #expect(!copy.isCopy(of: login) && copy != login)
        #expect(login.capabilities == [.protocol41] && copy.capabilities == [.protocol41, .secureConnection])
        #expect(copy.user == "nat" && copy.database == "app" && copy.credential == N.sha1OfPassword)
        copy.capabilities = [.protocol41]
        #expect(!copy.isCopy(of: login) && copy == login)  // (equal by value, in another box)
    }

    @Test func aRefusedResetFails() {
        let login = ConnectionMachine.ServerLogin(user: "nat", database: "", characterSet: 33, capabilities: [.protocol41, .secureConnection],
                                                  sessionCapabilities: [], credential: [], attributes: ByteBuffer(), clientTLS: false)
        var reset = ServerLoginReset(login: login, challenge: Self.challenge)
        var err = ByteBuffer()
        ERRPacket(code: 1045, sqlState: "28000", message: "Access denied").write(to: &err)
        #expect(reset.received(MySQLFrame(sequenceID: 1, payload: err)) == .failed("1045 Access denied"))
        var other = ByteBuffer()
        AuthSwitchRequest(pluginName: "client_ed25519", pluginData: [1]).write(to: &other)
        var fresh = ServerLoginReset(login: login, challenge: Self.challenge)
        if case .failed = fresh.received(MySQLFrame(sequenceID: 1, payload: other)) {} else { Issue.record("switch to another plugin accepted") }
    }
}
