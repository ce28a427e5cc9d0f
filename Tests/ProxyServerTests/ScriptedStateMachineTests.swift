import Logging
import MySQLWire
import NIOCore
@testable import ProxyScripting
import Testing
@testable import ProxyServer

/// A script whose hooks are Swift closures: the state machine's side of scripting, tested without Lua.
final class FakeScript: ConnectionScripting {
    var hooks: ConnectionScript.Hooks
    var queries: [Injection] = []
    var hasQueries: Bool { !queries.isEmpty }
    var connectionCloseRequested = false
    var resultsetBufferLimit = 1 << 20
    var change: ServerChange?
    var logs: [(Logger.Level, String)] = []
    var results: [InjectionResult] = []
    var hints: [[String: String]] = []
    var databases: [(String, Bool)] = []
    var lastPrepare: (loggedIn: Bool, serverIdle: Bool)?

    var onConnectServer: () -> HookOutcome = { .returned(.noDecision) }
    var onReadHandshake: () -> HookOutcome = { .returned(.noDecision) }
    var onReadAuth: () -> HookOutcome = { .returned(.noDecision) }
    var onReadAuthResult: (ByteBuffer) -> HookOutcome = { _ in .returned(.noDecision) }
    var onReadQuery: (FakeScript, ByteBuffer) -> HookOutcome = { _, _ in .returned(.noDecision) }
    var onReadQueryResult: (FakeScript, InjectionResult) -> HookOutcome = { _, _ in .returned(.noDecision) }

    init(hooks: ConnectionScript.Hooks) { self.hooks = hooks }

    func prepareHook(loggedIn: Bool, serverIdle: Bool, status: ServerStatus) { lastPrepare = (loggedIn, serverIdle) }
    func greetingReceived(_ greeting: HandshakeV10) {}
    func handshakeResponseReceived(_ response: HandshakeResponse41, capabilities: CapabilityFlags) {}
    func databaseChanged(to name: String, forClient: Bool) { databases.append((name, forClient)) }
    func userChanged(to username: String, database: String) { users.append(username) }
    var users: [String] = []
    func connectServer() -> HookOutcome { onConnectServer() }
    func readHandshake() -> HookOutcome { onReadHandshake() }
    func readAuth() -> HookOutcome { onReadAuth() }
    func readAuthResult(packet: ByteBuffer) -> HookOutcome { onReadAuthResult(packet) }
    func readQuery(packet: ByteBuffer, hints: [(key: String, value: String)]) -> HookOutcome {
        self.hints.append(Dictionary(hints.map { ($0.key, $0.value) }, uniquingKeysWith: { $1 }))
        return onReadQuery(self, packet)
    }
    func readQueryResult(_ result: InjectionResult) -> HookOutcome {
        results.append(result)
        return onReadQueryResult(self, result)
    }
    func takeServerChange() -> ServerChange? { defer { change = nil }; return change }
    func log(_ level: Logger.Level, _ message: String) { logs.append((level, message)) }

    func append(_ id: Int, _ sql: String, buffered: Bool = false) {
        queries.append(Injection(id: id, packet: ByteBuffer(bytes: [0x03] + Array(sql.utf8)), resultsetIsNeeded: buffered, queuedAt: 0))
    }
}

/// The state machine with a script: hooks called at the right moments with the right packets, and
/// MySQL Proxy's rules for injected queries and their results.
@Suite struct ScriptedStateMachineTests {
    typealias Base = ConnectionStateMachineTests

    static func query(_ sql: String, seq: UInt8 = 0) -> ByteBuffer {
        var out = ByteBuffer()
        var s = seq
        out.writeMySQLPacket(ByteBuffer(bytes: [0x03] + Array(sql.utf8)), sequenceID: &s)
        return out
    }

    static func ok(seq: UInt8, affected: UInt8 = 0) -> ByteBuffer {
        var out = ByteBuffer()
        var s = seq
        out.writeMySQLPacket(ByteBuffer(bytes: [0x00, affected, 0x00, 0x02, 0x00, 0x00, 0x00]), sequenceID: &s)
        return out
    }

    /// A one-column text result set as the server would send it.
    static func resultSet(_ values: [String], capabilities: CapabilityFlags, firstSeq: UInt8 = 1) -> ByteBuffer {
        var out = ByteBuffer()
        var seq = firstSeq
        let column = ColumnDefinition41(schema: "", table: "", orgTable: "", name: "v", orgName: "", characterSet: 33,
                                        columnLength: 10, type: .varString, flags: [], decimals: 0)
        try! ResponseEncoding.resultSet(columns: [column], rows: values.map { [$0] }, binary: false, capabilities: capabilities,
                                   status: .autocommit, warnings: 0, sequenceID: &seq, into: &out)
        return out
    }

    /// Logged in through the relay, with `script` attached.
    func loggedIn(_ script: FakeScript) -> ConnectionStateMachine {
        var m = ConnectionStateMachine(statistics: LoopStatistics(), script: script)
        guard case .connectToBackend = m.clientConnected() else { fatalError("no connect") }
        _ = m.backendConnected()
        guard case .forwardToClient = m.backendDataReceived(Base.packets([(Base.greeting, 0)])) else { fatalError("greeting") }
        _ = m.clientDataReceived(Base.packets([(Base.handshakeResponse, 1)]))
        _ = m.backendDataReceived(Self.ok(seq: 2))
        return m
    }

    static func firstFrame(_ bytes: ByteBuffer?) throws -> MySQLFrame {
        let b = try #require(bytes)
        return try #require(b.frames().first)
    }

    static func output(_ action: ConnectionStateMachine.Action) -> ConnectionStateMachine.Output {
        switch action {
        case .none: return .init()
        case .forwardToClient(let b): return .init(toClient: b)
        case .forwardToBackend(let b): return .init(toBackend: b)
        case .send(let o): return o
        case .forwardToClientAndClose(let b): return .init(toClient: b, close: "closed")
        case .sendToClientAndClose(let b, let reason): return .init(toClient: b, close: reason)
        case .closeConnections(let reason): return .init(close: reason ?? "closed")
        case .closeAfterBackendClosed: return .init(close: "the backend closed")
        case .forwardToClientUnderstoodNot(let b, _): return .init(toClient: b)
        case .abortConnections(let reason): return .init(close: reason)
        case .connectToBackend, .startClientTLS: return .init()
        }
    }

    @Test func readQueryWithoutDecisionForwardsAndStreams() throws {
        let script = FakeScript(hooks: [.readQuery])
        var m = loggedIn(script)
        let out = Self.output(m.clientDataReceived(Self.query("SELECT /* @route ro */ 1")))
        #expect(out.toBackend == Self.query("SELECT /* @route ro */ 1"))
        #expect(out.toClient == nil)
        #expect(script.hints == [["route": "ro"]])
        let response = Self.resultSet(["1"], capabilities: try #require(m.session).capabilities)
        guard case .forwardToClient(let relayed) = m.backendDataReceived(response) else { Issue.record("not streamed"); return }
        #expect(relayed == response)
        #expect(!m.isAwaitingResponse)
    }

    @Test func sendResultAnswersWithoutTheServer() throws {
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { _, _ in
            .returned(.sendResult(.resultSet(fields: [ScriptField(name: "a", type: .varString)], rows: [["x"], [nil]], serverStatus: nil, warnings: 0)))
        }
        var m = loggedIn(script)
        let out = Self.output(m.clientDataReceived(Self.query("SELECT fake")))
        #expect(out.toBackend == nil)
        let frames = try #require(out.toClient).frames()
        #expect(frames.map(\.sequenceID) == Array(1...UInt8(frames.count)))
        let deprecateEOF = try #require(m.session).capabilities.contains(.deprecateEOF)
        // count, definition, [EOF], two rows, EOF/OK
        #expect(frames.count == (deprecateEOF ? 5 : 6))
        #expect(!m.isAwaitingResponse)
    }

    @Test func bufferedInjectionIsHiddenAndTheOriginalStreams() throws {
        let script = FakeScript(hooks: [.readQuery, .readQueryResult])
        script.onReadQuery = { s, packet in
            s.append(2, "SELECT 42", buffered: true)
            s.queries.append(Injection(id: 1, packet: packet, resultsetIsNeeded: false, queuedAt: 0))
            return .returned(.sendQuery)
        }
        script.onReadQueryResult = { _, result in result.injection.id == 2 ? .returned(.ignoreResult) : .returned(.noDecision) }
        var m = loggedIn(script)
        let caps = try #require(m.session).capabilities
        var out = Self.output(m.clientDataReceived(Self.query("SELECT 1")))
        #expect(out.toBackend == Self.query("SELECT 42"))

        // the hidden result: nothing for the client, the original query goes out
        out = Self.output(m.backendDataReceived(Self.resultSet(["42"], capabilities: caps)))
        #expect(out.toClient == nil)
        #expect(out.toBackend == Self.query("SELECT 1"))
        let first = try #require(script.results.first)
        #expect(first.buffered)
        #expect(first.rows == 1)
        #expect(first.wasResultSet)
        #expect(first.queryStatus == 0)
        #expect(first.row(at: try #require(first.parsed).firstRow) == .some(["42"]))

        // the original's result streams
        let response = Self.resultSet(["1"], capabilities: caps)
        guard case .forwardToClient(let relayed) = m.backendDataReceived(response) else { Issue.record("not streamed"); return }
        #expect(relayed == response)
        #expect(script.results.count == 2)
        #expect(!m.isAwaitingResponse)
    }

    @Test func bufferedResultIsForwardedWhenTheScriptSaysNothing() throws {
        let script = FakeScript(hooks: [.readQuery, .readQueryResult])
        script.onReadQuery = { s, _ in s.append(1, "SELECT 'x'", buffered: true); return .returned(.sendQuery) }
        var m = loggedIn(script)
        let caps = try #require(m.session).capabilities
        _ = m.clientDataReceived(Self.query("SELECT 1"))
        let response = Self.resultSet(["x", "y"], capabilities: caps)
        let out = Self.output(m.backendDataReceived(response))
        #expect(out.toClient == response)
    }

    @Test func replacingABufferedResult() throws {
        let script = FakeScript(hooks: [.readQuery, .readQueryResult])
        script.onReadQuery = { s, _ in s.append(1, "SELECT 1", buffered: true); return .returned(.sendQuery) }
        script.onReadQueryResult = { _, _ in .returned(.sendResult(.error(code: 1234, sqlState: "42000", message: "replaced"))) }
        var m = loggedIn(script)
        _ = m.clientDataReceived(Self.query("SELECT 1"))
        let out = Self.output(m.backendDataReceived(Self.ok(seq: 1)))
        let frame = try Self.firstFrame(out.toClient)
        #expect(frame.sequenceID == 1)
        #expect(try ERRPacket(parsing: frame.payload).message == "replaced")
    }

    @Test func everyResultIgnoredGivesAnError() throws {
        let script = FakeScript(hooks: [.readQuery, .readQueryResult])
        script.onReadQuery = { s, _ in s.append(1, "DO 1", buffered: true); return .returned(.sendQuery) }
        script.onReadQueryResult = { _, _ in .returned(.ignoreResult) }
        var m = loggedIn(script)
        _ = m.clientDataReceived(Self.query("DO 1"))
        let out = Self.output(m.backendDataReceived(Self.ok(seq: 1)))
        let frame = try Self.firstFrame(out.toClient)
        let err = try ERRPacket(parsing: frame.payload)
        #expect(err.code == 1105)
        #expect(err.sqlState == "07000")
        #expect(frame.sequenceID == 1)
        #expect(script.logs.contains { $0.0 == .warning })
        #expect(!m.isAwaitingResponse)
    }

    @Test func anUnbufferedInjectionBeforeAnotherIsKeptForTheScript() throws {
        // Only the last one's result can reach the client: the first is buffered and dropped.
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { s, _ in s.append(1, "DO 1"); s.append(2, "DO 2"); return .returned(.sendQuery) }
        var m = loggedIn(script)
        _ = m.clientDataReceived(Self.query("DO 1"))
        var out = Self.output(m.backendDataReceived(Self.ok(seq: 1)))
        #expect(out.toClient == nil)
        #expect(out.close == nil)
        #expect(out.toBackend != nil)  // DO 2 goes on
        out = Self.output(m.backendDataReceived(Self.ok(seq: 1)))
        #expect(out.toClient == Self.ok(seq: 1))
        #expect(!m.isAwaitingResponse)
    }

    @Test func secondStreamedInjectionClosesTheClient() throws {
        // The first result went to the client; read_query_result queues another unbuffered one.
        let script = FakeScript(hooks: [.readQuery, .readQueryResult])
        script.onReadQuery = { s, _ in s.append(1, "DO 1"); return .returned(.sendQuery) }
        script.onReadQueryResult = { s, _ in
            if s.queries.isEmpty && !s.logs.contains(where: { $0.1.contains("again") }) {
                s.log(.info, "again")
                s.append(2, "DO 2")
            }
            return .returned(.noDecision)
        }
        var m = loggedIn(script)
        _ = m.clientDataReceived(Self.query("DO 1"))
        let out = Self.output(m.backendDataReceived(Self.ok(seq: 1)))
        #expect(out.toClient == Self.ok(seq: 1))
        #expect(out.close != nil)
        #expect(out.toBackend == nil)
        #expect(script.logs.contains { $0.0 == .critical })
    }

    @Test func theSecondBufferedResultIsDropped() throws {
        let script = FakeScript(hooks: [.readQuery, .readQueryResult])
        script.onReadQuery = { s, _ in s.append(1, "DO 1", buffered: true); s.append(2, "DO 2", buffered: true); return .returned(.sendQuery) }
        var m = loggedIn(script)
        _ = m.clientDataReceived(Self.query("DO 1"))
        var out = Self.output(m.backendDataReceived(Self.ok(seq: 1, affected: 1)))
        #expect(out.toClient == Self.ok(seq: 1, affected: 1))
        #expect(out.toBackend == Self.query("DO 2"))
        out = Self.output(m.backendDataReceived(Self.ok(seq: 1, affected: 2)))
        #expect(out.toClient == nil)
        #expect(out.close == nil)
        #expect(script.results.map(\.affectedRows) == [1, 2])
    }

    @Test func oversizedBufferedResultFailsTheCommand() throws {
        let script = FakeScript(hooks: [.readQuery, .readQueryResult])
        script.resultsetBufferLimit = 100
        script.onReadQuery = { s, _ in s.append(1, "SELECT big", buffered: true); s.append(2, "DO 2", buffered: true); return .returned(.sendQuery) }
        var m = loggedIn(script)
        _ = m.clientDataReceived(Self.query("SELECT big"))
        let caps = try #require(m.session).capabilities
        let out = Self.output(m.backendDataReceived(Self.resultSet(Array(repeating: String(repeating: "z", count: 50), count: 10), capabilities: caps)))
        let frame = try Self.firstFrame(out.toClient)
        #expect(try ERRPacket(parsing: frame.payload).code == 1105)
        #expect(out.toBackend == nil)  // the rest of the queue is dropped
        #expect(script.results.isEmpty)
        #expect(!m.isAwaitingResponse)
    }

    @Test func commandsSentTogetherAreTakenOneAtATime() throws {
        let script = FakeScript(hooks: [.readQuery])
        var m = loggedIn(script)
        var both = Self.query("SELECT 1")
        var second = Self.query("SELECT 2")
        both.writeBuffer(&second)
        var out = Self.output(m.clientDataReceived(both))
        #expect(out.toBackend == Self.query("SELECT 1"))
        #expect(script.hints.count == 1)
        out = Self.output(m.backendDataReceived(Self.ok(seq: 1)))
        #expect(out.toClient == Self.ok(seq: 1))
        #expect(out.toBackend == Self.query("SELECT 2"))
        #expect(script.hints.count == 2)
    }

    @Test func answeredCommandsLetQueuedOnesRun() throws {
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { _, packet in
            packet.getString(at: packet.readerIndex + 1, length: packet.readableBytes - 1) == "SELECT 1"
                ? .returned(.sendResult(.ok(affectedRows: 0, insertID: 0, serverStatus: nil, warnings: 0, message: nil)))
                : .returned(.noDecision)
        }
        var m = loggedIn(script)
        var both = Self.query("SELECT 1")
        var second = Self.query("SELECT 2")
        both.writeBuffer(&second)
        let out = Self.output(m.clientDataReceived(both))
        #expect(out.toClient != nil)
        #expect(out.toBackend == Self.query("SELECT 2"))
    }

    @Test func serverLostDuringABufferedInjectionClosesTheClient() throws {
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { s, _ in s.append(1, "SELECT 1", buffered: true); return .returned(.sendQuery) }
        var m = loggedIn(script)
        _ = m.clientDataReceived(Self.query("SELECT 1"))
        let caps = try #require(m.session).capabilities
        let partial = Self.resultSet(["1"], capabilities: caps)
        _ = m.backendDataReceived(partial.getSlice(at: 0, length: 7)!)
        guard case .closeAfterBackendClosed(duringResponse: true) = m.backendClosed() else { Issue.record("not closed"); return }
    }

    @Test func connectionCloseEndsTheConnectionAfterTheResponse() throws {
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { s, _ in s.connectionCloseRequested = true; return .returned(.noDecision) }
        var m = loggedIn(script)
        _ = m.clientDataReceived(Self.query("DO 1"))
        let out = Self.output(m.backendDataReceived(Self.ok(seq: 1)))
        #expect(out.toClient == Self.ok(seq: 1))
        #expect(out.close != nil)
        #expect(m.phase == .closed)
    }

    @Test func initDBUpdatesTheSessionDatabase() throws {
        let script = FakeScript(hooks: [.readQuery])
        var m = loggedIn(script)
        var seq: UInt8 = 0
        var initDB = ByteBuffer()
        initDB.writeMySQLPacket(ByteBuffer(bytes: [0x02] + Array("shop".utf8)), sequenceID: &seq)
        _ = m.clientDataReceived(initDB)
        _ = m.backendDataReceived(Self.ok(seq: 1))
        #expect(m.session?.database == "shop")
        #expect(script.databases.last! == ("shop", true))
    }

    @Test func releasedServerLeavesUnansweredCommandsWithAnError() throws {
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { s, _ in s.change = .released; return .returned(.noDecision) }
        var m = loggedIn(script)
        let out = Self.output(m.clientDataReceived(Self.query("SELECT 1")))
        #expect(out.toBackend == nil)
        let frame = try Self.firstFrame(out.toClient)
        #expect(try ERRPacket(parsing: frame.payload).code == 1105)
        #expect(!m.hasServer)
        #expect(m.backendClosed().isNone)
    }

    @Test func mockServerMode() throws {
        let script = FakeScript(hooks: [.connectServer, .readQuery])
        var greeting = ByteBuffer()
        Base.greetingValue().write(to: &greeting)
        script.onConnectServer = { .returned(.sendResult(.raw([greeting]))) }
        script.onReadQuery = { _, packet in
            packet.readableBytes > 1 ? .returned(.sendResult(.ok(affectedRows: 7, insertID: 0, serverStatus: nil, warnings: 0, message: nil))) : .returned(.noDecision)
        }
        var m = ConnectionStateMachine(statistics: LoopStatistics(), script: script)
        var out = Self.output(m.clientConnected())
        let sent = try Self.firstFrame(out.toClient)
        #expect(sent.sequenceID == 0)
        #expect(try HandshakeV10(parsing: sent.payload).serverVersion == Base.greetingValue().serverVersion)
        #expect(!m.hasServer)

        // no read_auth: the client is let in
        out = Self.output(m.clientDataReceived(Base.packets([(Base.handshakeResponse, 1)])))
        let ok = try Self.firstFrame(out.toClient)
        #expect(ok.sequenceID == 2)
        #expect(ok.payload.getInteger(at: ok.payload.readerIndex, as: UInt8.self) == 0)

        out = Self.output(m.clientDataReceived(Self.query("INSERT")))
        let answer = try Self.firstFrame(out.toClient)
        #expect(try OKPacket(parsing: answer.payload, capabilities: try #require(m.session).capabilities).affectedRows == 7)

        // COM_QUIT without a server: close
        var quit = ByteBuffer()
        var seq: UInt8 = 0
        quit.writeMySQLPacket(ByteBuffer(bytes: [0x01]), sequenceID: &seq)
        out = Self.output(m.clientDataReceived(quit))
        #expect(out.close != nil)
    }

    @Test func readAuthCanRefuse() throws {
        let script = FakeScript(hooks: [.readAuth])
        script.onReadAuth = { .returned(.sendResult(.error(code: 1045, sqlState: "28000", message: "no"))) }
        var m = ConnectionStateMachine(statistics: LoopStatistics(), script: script)
        _ = m.clientConnected()
        _ = m.backendConnected()
        _ = m.backendDataReceived(Base.packets([(Base.greeting, 0)]))
        let out = Self.output(m.clientDataReceived(Base.packets([(Base.handshakeResponse, 1)])))
        #expect(out.toBackend == nil)
        #expect(out.close != nil)
        let frame = try Self.firstFrame(out.toClient)
        #expect(frame.sequenceID == 2)
        #expect(try ERRPacket(parsing: frame.payload).code == 1045)
    }

    @Test func readAuthResultSeesAndReplacesTheVerdict() throws {
        let script = FakeScript(hooks: [.readAuthResult])
        var seen: ByteBuffer?
        script.onReadAuthResult = { packet in
            seen = packet
            return .returned(.sendResult(.error(code: 1045, sqlState: "28000", message: "not today")))
        }
        var m = ConnectionStateMachine(statistics: LoopStatistics(), script: script)
        _ = m.clientConnected()
        _ = m.backendConnected()
        _ = m.backendDataReceived(Base.packets([(Base.greeting, 0)]))
        _ = m.clientDataReceived(Base.packets([(Base.handshakeResponse, 1)]))
        // the OK arrives in two pieces
        let ok = Self.ok(seq: 2)
        #expect(m.backendDataReceived(ok.getSlice(at: 0, length: 5)!).isNone)
        let out = Self.output(m.backendDataReceived(ok.getSlice(at: 5, length: ok.readableBytes - 5)!))
        #expect(seen?.getInteger(at: 0, as: UInt8.self) == 0)
        let frame = try Self.firstFrame(out.toClient)
        #expect(frame.sequenceID == 2)
        #expect(try ERRPacket(parsing: frame.payload).message == "not today")
        #expect(out.close != nil)
    }

    @Test func readHandshakeCanAnswerAndClose() throws {
        let script = FakeScript(hooks: [.readHandshake])
        script.onReadHandshake = { .returned(.sendResult(.error(code: 1040, sqlState: "08004", message: "busy"))) }
        var m = ConnectionStateMachine(statistics: LoopStatistics(), script: script)
        _ = m.clientConnected()
        _ = m.backendConnected()
        let out = Self.output(m.backendDataReceived(Base.packets([(Base.greeting, 0)])))
        #expect(out.close != nil)
        #expect(try ERRPacket(parsing: try Self.firstFrame(out.toClient).payload).code == 1040)
    }

    /// A client that sends its first query in the same write as its handshake response: the query
    /// waits for the login's verdict and then goes through read_query (a firewall is not bypassed).
    @Test func queryPipelinedBehindTheLoginGoesThroughReadQuery() throws {
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { _, _ in .returned(.sendResult(.error(code: 1142, sqlState: "42000", message: "refused"))) }
        var m = ConnectionStateMachine(statistics: LoopStatistics(), script: script)
        _ = m.clientConnected()
        _ = m.backendConnected()
        _ = m.backendDataReceived(Base.packets([(Base.greeting, 0)]))
        var both = Base.packets([(Base.handshakeResponse, 1)])
        var query = Self.query("DROP TABLE t")
        both.writeBuffer(&query)
        let sent = Self.output(m.clientDataReceived(both))
        // only the handshake response reaches the server; nothing was decided yet
        #expect(sent.toBackend?.frames().count == 1)
        #expect(script.hints.isEmpty)
        let out = Self.output(m.backendDataReceived(Self.ok(seq: 2)))
        #expect(script.hints.count == 1)
        let frames = try #require(out.toClient).frames()
        #expect(frames.count == 2)  // the login's OK, then the script's answer to the query
        #expect(frames[1].sequenceID == 1)
        #expect(try ERRPacket(parsing: frames[1].payload).code == 1142)
        #expect(out.toBackend == nil)
    }

    /// Commands behind COM_CHANGE_USER wait for its verdict, then go through read_query.
    @Test func queryPipelinedBehindChangeUserWaitsForTheVerdict() throws {
        let script = FakeScript(hooks: [.readQuery])
        var m = loggedIn(script)
        var both = ByteBuffer()
        var s: UInt8 = 0
        both.writeMySQLPacket(ByteBuffer(bytes: [0x11] + Array("nat".utf8) + [0, 0]), sequenceID: &s)
        var query = Self.query("SELECT 1")
        both.writeBuffer(&query)
        let sent = Self.output(m.clientDataReceived(both))
        #expect(sent.toBackend?.frames().count == 1)
        #expect(script.hints.count == 1)  // COM_CHANGE_USER itself
        // an auth switch and the client's answer
        _ = m.backendDataReceived(Base.packets([("fe6d7973716c5f6e61746976655f70617373776f726400", 1)]))
        let answer = Self.output(m.clientDataReceived(Base.packets([("", 2)])))
        #expect(answer.toBackend?.frames().first?.sequenceID == 2)
        #expect(script.hints.count == 1)
        let out = Self.output(m.backendDataReceived(Self.ok(seq: 3)))
        #expect(script.hints.count == 2)
        #expect(out.toBackend == Self.query("SELECT 1"))
    }

    /// With read_auth_result, what follows the verdict in the same read (here the start of a packet
    /// that ends in the next read) is framed like everything else.
    @Test func bytesAfterTheVerdictKeepTheirFraming() throws {
        let script = FakeScript(hooks: [.readAuthResult])
        var m = ConnectionStateMachine(statistics: LoopStatistics(), script: script)
        _ = m.clientConnected()
        _ = m.backendConnected()
        _ = m.backendDataReceived(Base.packets([(Base.greeting, 0)]))
        _ = m.clientDataReceived(Base.packets([(Base.handshakeResponse, 1)]))
        var chunk = Self.ok(seq: 2)
        let unsolicited = Base.packets([("ff8707233730313030436f6e6e656374696f6e20776173206b696c6c6564", 0)])
        chunk.writeImmutableBuffer(unsolicited.getSlice(at: 0, length: 10)!)
        let first = Self.output(m.backendDataReceived(chunk))
        let second = Self.output(m.backendDataReceived(unsolicited.getSlice(at: 10, length: unsolicited.readableBytes - 10)!))
        var all = try #require(first.toClient)
        var rest = try #require(second.toClient)
        all.writeBuffer(&rest)
        var expected = Self.ok(seq: 2)
        expected.writeImmutableBuffer(unsolicited)
        #expect(all == expected)
        #expect(m.fromServer.isAtPacketBoundary)
    }

    /// A command read_query would need whole that is larger than --proxy-max-packet-size: ERR 1153
    /// as the server sends past max_allowed_packet, and the close, before the packet is held.
    @Test func commandLargerThanTheMaximumPacketSize() throws {
        for sizes in [[2000], [8, 4000]] {
            let script = FakeScript(hooks: [.readQuery])
            var m = ConnectionStateMachine(statistics: LoopStatistics(), script: script, maxPacketSize: 1024)
            _ = m.clientConnected()
            _ = m.backendConnected()
            _ = m.backendDataReceived(Base.packets([(Base.greeting, 0)]))
            _ = m.clientDataReceived(Base.packets([(Base.handshakeResponse, 1)]))
            _ = m.backendDataReceived(Self.ok(seq: 2))
            let big = Self.query(String(repeating: "x", count: sizes.last!))
            // in one read, or with only the header and a few bytes in the first
            let out = Self.output(m.clientDataReceived(sizes.count == 1 ? big : big.getSlice(at: 0, length: sizes[0])!))
            let frame = try Self.firstFrame(out.toClient)
            #expect(frame.sequenceID == 1)
            let err = try ERRPacket(parsing: frame.payload)
            #expect(err.code == 1153 && err.sqlState == "08S01")
            #expect(out.close != nil)
            #expect(out.toBackend == nil)
            #expect(script.hints.isEmpty)
        }
    }

    @Test func scriptWithoutReadQueryRelaysTransparently() throws {
        let script = FakeScript(hooks: [.disconnectClient])
        var m = loggedIn(script)
        let q = Self.query("SELECT 1")
        guard case .forwardToBackend(let out) = m.clientDataReceived(q) else { Issue.record(); return }
        #expect(out == q)
        #expect(!m.intercepting)
    }
}

extension ConnectionStateMachine.Action {
    var isNone: Bool { if case .none = self { return true } else { return false } }
}

extension ConnectionStateMachineTests {
    static func greetingValue() -> HandshakeV10 {
        let frame = packets([(greeting, 0)]).frames()[0]
        return try! HandshakeV10(parsing: frame.payload)
    }
}
