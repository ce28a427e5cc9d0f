import MySQLWire
import NIOCore
import Testing
@testable import ProxyCore

/// The machine with a script: hooks asked for at the right moments with the right packets, and
/// MySQL Proxy's rules for injected queries and their results. The script is a fake answering as
/// the handler would after running Lua.
@Suite struct ExchangeTests {
    @Test func readQueryWithoutDecisionForwardsAndStreams() throws {
        let script = FakeScript(hooks: [.readQuery])
        var d = Driver.loggedIn(script: script)
        let query = Wire.query("SELECT /* @route ro */ 1")
        let out = d.client(query)
        #expect(out.toBackend == query && out.toClient == nil)
        #expect(script.readQueries == [query.getSlice(at: 4, length: query.readableBytes - 4)!])
        let call = try #require(out.hooks.first)
        #expect(call.loggedIn && call.serverIdle && call.status == .autocommit && call.queries.isEmpty)
        let response = Wire.resultSet(["1"], capabilities: d.capabilities)
        #expect(d.server(response).actions == [.forwardToClient(response)])
        #expect(!d.machine.isAwaitingResponse)
    }

    @Test func sendResultAnswersWithoutTheServer() throws {
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { _, _ in
            .returned(.sendResult(.resultSet(fields: [ScriptField(name: "a", type: .varString)], rows: [["x"], [nil]], serverStatus: nil, warnings: 0)))
        }
        var d = Driver.loggedIn(script: script)
        let out = d.client(Wire.query("SELECT fake"))
        #expect(out.toBackend == nil)
        let frames = try #require(out.toClient).frames()
        #expect(frames.map(\.sequenceID) == Array(1...UInt8(frames.count)))
        // count, definition, [EOF], two rows, EOF/OK
        #expect(frames.count == (d.capabilities.contains(.deprecateEOF) ? 5 : 6))
        #expect(!d.machine.isAwaitingResponse)
        #expect(d.machine.serverIsIdle)
    }

    @Test func bufferedInjectionIsHiddenAndTheOriginalStreams() throws {
        let script = FakeScript(hooks: [.readQuery, .readQueryResult])
        script.onReadQuery = { s, packet in
            s.append(2, "SELECT 42", buffered: true)
            s.queries.append(Injection(id: 1, packet: packet, resultsetIsNeeded: false, queuedAt: 0))
            return .returned(.sendQuery)
        }
        script.onReadQueryResult = { _, result in result.injection.id == 2 ? .returned(.ignoreResult) : .returned(.noDecision) }
        var d = Driver.loggedIn(script: script)
        var out = d.client(Wire.query("SELECT 1"))
        #expect(out.toBackend == Wire.query("SELECT 42"))

        // the hidden result: nothing for the client, the original query goes out
        out = d.server(Wire.resultSet(["42"], capabilities: d.capabilities))
        #expect(out.toClient == nil)
        #expect(out.toBackend == Wire.query("SELECT 1"))
        let first = try #require(script.results.first)
        #expect(first.buffered && first.rows == 1 && first.wasResultSet && first.queryStatus == 0)
        // count, definition, [EOF], the row, EOF/OK: the row says 42
        #expect(first.packets.count == (d.capabilities.contains(.deprecateEOF) ? 4 : 5))
        #expect(first.packets.contains { $0.readableBytesView.elementsEqual([0x02, 0x34, 0x32]) })
        // the hook saw what was left to send: the original
        #expect(out.hooks.first?.queries.map(\.id) == [1])

        // the original's result streams, held until read_query_result has seen it
        let response = Wire.resultSet(["1"], capabilities: d.capabilities)
        #expect(d.server(response).actions == [.queueToClient(response)])
        #expect(script.results.count == 2)
        #expect(!d.machine.isAwaitingResponse)
    }

    @Test func bufferedResultIsForwardedWhenTheScriptSaysNothing() throws {
        let script = FakeScript(hooks: [.readQuery, .readQueryResult])
        script.onReadQuery = { s, _ in s.append(1, "SELECT 'x'", buffered: true); return .returned(.sendQuery) }
        var d = Driver.loggedIn(script: script)
        d.client(Wire.query("SELECT 1"))
        let response = Wire.resultSet(["x", "y"], capabilities: d.capabilities)
        #expect(d.server(response).toClient == response)
    }

    @Test func replacingABufferedResult() throws {
        let script = FakeScript(hooks: [.readQuery, .readQueryResult])
        script.onReadQuery = { s, _ in s.append(1, "SELECT 1", buffered: true); return .returned(.sendQuery) }
        script.onReadQueryResult = { _, _ in .returned(.sendResult(.error(code: 1234, sqlState: "42000", message: "replaced"))) }
        var d = Driver.loggedIn(script: script)
        d.client(Wire.query("SELECT 1"))
        let frame = try firstFrame(d.server(Wire.ok(seq: 1)).toClient)
        #expect(frame.sequenceID == 1)
        #expect(try ERRPacket(parsing: frame.payload).message == "replaced")
    }

    @Test func everyResultIgnoredGivesAnError() throws {
        let script = FakeScript(hooks: [.readQuery, .readQueryResult])
        script.onReadQuery = { s, _ in s.append(1, "DO 1", buffered: true); return .returned(.sendQuery) }
        script.onReadQueryResult = { _, _ in .returned(.ignoreResult) }
        var d = Driver.loggedIn(script: script)
        d.client(Wire.query("DO 1"))
        let out = d.server(Wire.ok(seq: 1))
        let frame = try firstFrame(out.toClient)
        let err = try ERRPacket(parsing: frame.payload)
        #expect(err.code == 1105 && err.sqlState == "07000" && frame.sequenceID == 1)
        #expect(out.logs.contains { $0.0 == .warning })
        #expect(!d.machine.isAwaitingResponse)
    }

    @Test func anUnbufferedInjectionBeforeAnotherIsKeptForTheScript() throws {
        // Only the last one's result can reach the client: the first is buffered and dropped.
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { s, _ in s.append(1, "DO 1"); s.append(2, "DO 2"); return .returned(.sendQuery) }
        var d = Driver.loggedIn(script: script)
        d.client(Wire.query("DO 1"))
        var out = d.server(Wire.ok(seq: 1))
        #expect(out.toClient == nil && out.close == nil)
        #expect(out.toBackend == Wire.query("DO 2"))
        out = d.server(Wire.ok(seq: 1))
        #expect(out.toClient == Wire.ok(seq: 1))
        #expect(!d.machine.isAwaitingResponse)
    }

    @Test func secondStreamedInjectionClosesTheClient() throws {
        // The first result went to the client; read_query_result queues another unbuffered one.
        let script = FakeScript(hooks: [.readQuery, .readQueryResult])
        script.onReadQuery = { s, _ in s.append(1, "DO 1"); return .returned(.sendQuery) }
        script.onReadQueryResult = { s, _ in
            if s.results.count == 1 { s.append(2, "DO 2") }
            return .returned(.noDecision)
        }
        var d = Driver.loggedIn(script: script)
        d.client(Wire.query("DO 1"))
        let out = d.server(Wire.ok(seq: 1))
        #expect(out.toClient == Wire.ok(seq: 1))
        #expect(out.close != nil)
        #expect(out.toBackend == nil)
        #expect(out.logs.contains { $0.0 == .critical })
    }

    @Test func theSecondBufferedResultIsDropped() throws {
        let script = FakeScript(hooks: [.readQuery, .readQueryResult])
        script.onReadQuery = { s, _ in s.append(1, "DO 1", buffered: true); s.append(2, "DO 2", buffered: true); return .returned(.sendQuery) }
        var d = Driver.loggedIn(script: script)
        d.client(Wire.query("DO 1"))
        var out = d.server(Wire.ok(seq: 1, affected: 1))
        #expect(out.toClient == Wire.ok(seq: 1, affected: 1))
        #expect(out.toBackend == Wire.query("DO 2"))
        out = d.server(Wire.ok(seq: 1, affected: 2))
        #expect(out.toClient == nil && out.close == nil)
        #expect(script.results.map(\.affectedRows) == [1, 2])
    }

    @Test func oversizedBufferedResultFailsTheCommand() throws {
        let script = FakeScript(hooks: [.readQuery, .readQueryResult])
        script.onReadQuery = { s, _ in s.append(1, "SELECT big", buffered: true); s.append(2, "DO 2", buffered: true); return .returned(.sendQuery) }
        var configuration = ConnectionMachine.Configuration()
        configuration.resultsetBufferLimit = 100
        var d = Driver.loggedIn(configuration, script: script)
        d.client(Wire.query("SELECT big"))
        let out = d.server(Wire.resultSet(Array(repeating: String(repeating: "z", count: 50), count: 10), capabilities: d.capabilities))
        #expect(try firstError(out.toClient).code == 1105)
        #expect(out.toBackend == nil)  // the rest of the queue is dropped
        #expect(script.results.isEmpty)
        #expect(!d.machine.isAwaitingResponse)
    }

    @Test func commandsSentTogetherAreTakenOneAtATime() throws {
        let script = FakeScript(hooks: [.readQuery])
        var d = Driver.loggedIn(script: script)
        var both = Wire.query("SELECT 1")
        var second = Wire.query("SELECT 2")
        both.writeBuffer(&second)
        var out = d.client(both)
        #expect(out.toBackend == Wire.query("SELECT 1"))
        #expect(script.readQueries.count == 1)
        out = d.server(Wire.ok(seq: 1))
        #expect(out.toClient == Wire.ok(seq: 1))
        #expect(out.toBackend == Wire.query("SELECT 2"))
        #expect(script.readQueries.count == 2)
    }

    @Test func answeredCommandsLetQueuedOnesRun() throws {
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { _, packet in
            packet.getString(at: packet.readerIndex + 1, length: packet.readableBytes - 1) == "SELECT 1"
                ? .returned(.sendResult(.ok(affectedRows: 0, insertID: 0, serverStatus: nil, warnings: 0, message: nil)))
                : .returned(.noDecision)
        }
        var d = Driver.loggedIn(script: script)
        var both = Wire.query("SELECT 1")
        var second = Wire.query("SELECT 2")
        both.writeBuffer(&second)
        let out = d.client(both)
        #expect(out.toClient != nil)
        #expect(out.toBackend == Wire.query("SELECT 2"))
    }

    /// A hook is a round trip: while it runs the machine takes no decision and reads nothing
    /// more from the client; what came meanwhile waits until its answer is in.
    @Test func whatComesWhileAHookRunsWaitsForItsAnswer() throws {
        let script = FakeScript(hooks: [.readQuery])
        var d = Driver.loggedIn(script: script)
        guard case .runHook(let call) = d.machine.clientDataReceived(Wire.query("SELECT 1")) else { Issue.record("no hook"); return }
        #expect(call.hook == .readQuery(packet: ByteBuffer(bytes: [0x03] + Array("SELECT 1".utf8))))
        #expect(!d.machine.wantsClientReads)
        #expect(d.machine.isAwaitingResponse)
        // a hook that runs elsewhere: the handler is told to stop reading until its answer
        #expect(d.client(Wire.query("SELECT 2")).actions == [.readFromClient(false)])
        // the first goes to the server once the script said nothing; the second waits its turn
        let out = d.run(d.machine.hookReturned(.init(outcome: .returned(.noDecision))))
        #expect(out.toBackend == Wire.query("SELECT 1"))
        #expect(out.actions.last == .readFromClient(true))
        #expect(d.machine.wantsClientReads)
        #expect(d.server(Wire.ok(seq: 1)).toBackend == Wire.query("SELECT 2"))
    }

    @Test func serverLostDuringABufferedInjectionClosesTheClient() throws {
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { s, _ in s.append(1, "SELECT 1", buffered: true); return .returned(.sendQuery) }
        var d = Driver.loggedIn(script: script)
        d.client(Wire.query("SELECT 1"))
        let partial = Wire.resultSet(["1"], capabilities: d.capabilities)
        d.server(partial.getSlice(at: 0, length: 7)!)
        let close = try #require(d.serverClosed().close)
        #expect(close.reason?.contains("pending") == true)
        #expect(d.machine.closeSource == .backendNetwork)
    }

    @Test func connectionCloseEndsTheConnectionAfterTheResponse() throws {
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { s, _ in s.connectionCloseRequested = true; return .returned(.noDecision) }
        var d = Driver.loggedIn(script: script)
        d.client(Wire.query("DO 1"))
        let out = d.server(Wire.ok(seq: 1))
        #expect(out.toClient == Wire.ok(seq: 1))
        #expect(out.close != nil)
        #expect(d.machine.isClosed)
    }

    @Test func initDBUpdatesTheSessionDatabase() throws {
        let script = FakeScript(hooks: [.readQuery])
        var d = Driver.loggedIn(script: script)
        var seq: UInt8 = 0
        var initDB = ByteBuffer()
        initDB.writeMySQLPacket(ByteBuffer(bytes: [0x02] + Array("shop".utf8)), sequenceID: &seq)
        d.client(initDB)
        #expect(d.machine.session.database == nil)
        d.server(Wire.ok(seq: 1))
        #expect(d.machine.session.database == "shop")
    }

    /// `backend_ndx = 0`: the handler gave the server connection to the pool during the hook. A
    /// command nobody answers then gets an ERR, and the old connection's close is not this
    /// session's business.
    @Test func releasedServerLeavesUnansweredCommandsWithAnError() throws {
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { s, _ in s.change = .released; return .returned(.noDecision) }
        var d = Driver.loggedIn(script: script)
        let out = d.client(Wire.query("SELECT 1"))
        #expect(out.toBackend == nil)
        #expect(try firstError(out.toClient).code == 1105)
        #expect(out.logs.contains { $0.0 == .error })
        #expect(!d.machine.hasServer)
        #expect(!d.machine.serverIsIdle)
        #expect(d.machine.backendClosed() == .none)
        #expect(!d.machine.isClosed)
    }

    /// Another pooled connection, logged in already, took the old one's place during the hook:
    /// the command goes to it, and the session carries on with its status.
    @Test func aReplacedServerTakesTheCommand() throws {
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { s, _ in
            if s.readQueries.count == 1 { s.change = .replaced(status: [.autocommit, .inTransaction]) }
            return .returned(.noDecision)
        }
        var d = Driver.loggedIn(script: script)
        let out = d.client(Wire.query("SELECT 1"))
        #expect(out.toBackend == Wire.query("SELECT 1"))
        #expect(d.machine.hasServer)
        #expect(d.machine.serverStatus.contains(.inTransaction))
        #expect(d.server(Wire.ok(seq: 1)).toClient == Wire.ok(seq: 1))
        #expect(d.machine.serverIsIdle)
    }

    @Test func mockServerMode() throws {
        let script = FakeScript(hooks: [.connectServer, .readQuery])
        var greeting = ByteBuffer()
        Wire.greetingValue().write(to: &greeting)
        script.onConnectServer = { .returned(.sendResult(.raw([greeting]))) }
        script.onReadQuery = { _, packet in
            packet.readableBytes > 1 ? .returned(.sendResult(.ok(affectedRows: 7, insertID: 0, serverStatus: nil, warnings: 0, message: nil))) : .returned(.noDecision)
        }
        var d = Driver(script: script)
        var out = d.connect()
        #expect(out.hooks.map(\.hook) == [.connectServer])
        #expect(!out.actions.contains { if case .connectToBackend = $0 { true } else { false } })
        let sent = try firstFrame(out.toClient)
        #expect(sent.sequenceID == 0)
        #expect(try HandshakeV10(parsing: sent.payload).serverVersion == Wire.greetingValue().serverVersion)
        #expect(!d.machine.hasServer)

        // no read_auth: the client is let in
        out = d.client([(Wire.handshakeResponse, 1)])
        let ok = try firstFrame(out.toClient)
        #expect(ok.sequenceID == 2)
        #expect(ok.payload.getInteger(at: ok.payload.readerIndex, as: UInt8.self) == 0)

        out = d.client(Wire.query("INSERT"))
        let answer = try firstFrame(out.toClient)
        #expect(try OKPacket(parsing: answer.payload, capabilities: d.capabilities).affectedRows == 7)

        // COM_QUIT without a server: close
        out = d.client([("01", 0)])
        #expect(out.close != nil)
    }

    /// `connect_server` picks the backend (0-based), and is asked again after a failed connect.
    @Test func connectServerChoosesTheBackend() {
        let script = FakeScript(hooks: [.connectServer])
        script.backendChoice = 1
        var d = Driver(script: script)
        #expect(d.connect().actions == [.connectToBackend(preferred: 1)])
        script.backendChoice = nil
        let again = d.run(d.machine.backendConnectFailed())
        #expect(again.hooks.map(\.hook) == [.connectServer])
        #expect(again.actions == [.connectToBackend(preferred: nil)])
    }

    @Test func readAuthCanRefuse() throws {
        let script = FakeScript(hooks: [.readAuth])
        script.onReadAuth = { .returned(.sendResult(.error(code: 1045, sqlState: "28000", message: "no"))) }
        var (d, _) = Driver.greeted(script: script)
        let out = d.client([(Wire.handshakeResponse, 1)])
        #expect(out.toBackend == nil)
        #expect(out.close != nil)
        let frame = try firstFrame(out.toClient)
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
        var (d, _) = Driver.greeted(script: script)
        d.client([(Wire.handshakeResponse, 1)])
        // the OK arrives in two pieces
        let ok = Wire.ok(seq: 2)
        #expect(d.server(ok.getSlice(at: 0, length: 5)!).isEmpty)
        let out = d.server(ok.getSlice(at: 5, length: ok.readableBytes - 5)!)
        #expect(seen?.getInteger(at: 0, as: UInt8.self) == 0)
        let frame = try firstFrame(out.toClient)
        #expect(frame.sequenceID == 2)
        #expect(try ERRPacket(parsing: frame.payload).message == "not today")
        #expect(out.close != nil)
    }

    @Test func readHandshakeCanAnswerAndClose() throws {
        let script = FakeScript(hooks: [.readHandshake])
        script.onReadHandshake = { .returned(.sendResult(.error(code: 1040, sqlState: "08004", message: "busy"))) }
        let (d, out) = Driver.greeted(script: script)
        #expect(out.close != nil)
        #expect(try firstError(out.toClient).code == 1040)
        #expect(d.machine.isClosed)
    }

    /// A client that sends its first query in the same write as its handshake response: the query
    /// waits for the login's verdict and then goes through read_query (a firewall is not bypassed).
    @Test func queryPipelinedBehindTheLoginGoesThroughReadQuery() throws {
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { _, _ in .returned(.sendResult(.error(code: 1142, sqlState: "42000", message: "refused"))) }
        var (d, _) = Driver.greeted(script: script)
        var both = Wire.packets([(Wire.handshakeResponse, 1)])
        var query = Wire.query("DROP TABLE t")
        both.writeBuffer(&query)
        let sent = d.client(both)
        // only the handshake response reaches the server; nothing was decided yet
        #expect(sent.toBackend?.frames().count == 1)
        #expect(script.readQueries.isEmpty)
        let out = d.server(Wire.ok(seq: 2))
        #expect(script.readQueries.count == 1)
        let frames = try #require(out.toClient).frames()
        #expect(frames.count == 2)  // the login's OK, then the script's answer to the query
        #expect(frames[1].sequenceID == 1)
        #expect(try ERRPacket(parsing: frames[1].payload).code == 1142)
        #expect(out.toBackend == nil)
    }

    /// Commands behind COM_CHANGE_USER wait for its verdict, then go through read_query.
    @Test func queryPipelinedBehindChangeUserWaitsForTheVerdict() throws {
        let script = FakeScript(hooks: [.readQuery])
        var d = Driver.loggedIn(script: script)
        var both = ByteBuffer()
        var s: UInt8 = 0
        both.writeMySQLPacket(ByteBuffer(bytes: [0x11] + Array("nat".utf8) + [0, 0]), sequenceID: &s)
        var query = Wire.query("SELECT 1")
        both.writeBuffer(&query)
        let sent = d.client(both)
        #expect(sent.toBackend?.frames().count == 1)
        #expect(script.readQueries.count == 1)  // COM_CHANGE_USER itself
        // an auth switch and the client's answer
        d.server([("fe6d7973716c5f6e61746976655f70617373776f726400", 1)])
        let answer = d.client([("", 2)])
        #expect(answer.toBackend?.frames().first?.sequenceID == 2)
        #expect(script.readQueries.count == 1)
        let out = d.server(Wire.ok(seq: 3))
        #expect(script.readQueries.count == 2)
        #expect(out.toBackend == Wire.query("SELECT 1"))
    }

    /// With read_auth_result, what follows the verdict in the same read (here the start of a packet
    /// that ends in the next read) is framed like everything else.
    @Test func bytesAfterTheVerdictKeepTheirFraming() throws {
        let script = FakeScript(hooks: [.readAuthResult])
        var (d, _) = Driver.greeted(script: script)
        d.client([(Wire.handshakeResponse, 1)])
        var chunk = Wire.ok(seq: 2)
        let unsolicited = Wire.packets([("ff8707233730313030436f6e6e656374696f6e20776173206b696c6c6564", 0)])
        chunk.writeImmutableBuffer(unsolicited.getSlice(at: 0, length: 10)!)
        let first = d.server(chunk)
        let second = d.server(unsolicited.getSlice(at: 10, length: unsolicited.readableBytes - 10)!)
        var all = try #require(first.toClient)
        var rest = try #require(second.toClient)
        all.writeBuffer(&rest)
        var expected = Wire.ok(seq: 2)
        expected.writeImmutableBuffer(unsolicited)
        #expect(all == expected)
        #expect(d.machine.fromServer.isAtPacketBoundary)
    }

    /// A command read_query would need whole that is larger than --proxy-max-packet-size: ERR 1153
    /// as the server sends past max_allowed_packet, with the sequence id after the packet's last
    /// frame, and the close, without the packet ever being held.
    @Test func commandLargerThanTheMaximumPacketSize() throws {
        for sizes in [[2000], [8, 4000]] {
            let script = FakeScript(hooks: [.readQuery])
            var configuration = ConnectionMachine.Configuration()
            configuration.maximumPacketLength = 1024
            var d = Driver.loggedIn(configuration, script: script)
            let big = Wire.query(String(repeating: "x", count: sizes.last!))
            // in one read, or with only the header and a few bytes in the first
            let out = d.client(sizes.count == 1 ? big : big.getSlice(at: 0, length: sizes[0])!)
            let frame = try firstFrame(out.toClient)
            #expect(frame.sequenceID == 1)
            let err = try ERRPacket(parsing: frame.payload)
            #expect(err.code == 1153 && err.sqlState == "08S01")
            #expect(out.close != nil)
            #expect(out.toBackend == nil)
            #expect(script.readQueries.isEmpty)
        }
    }

    /// A packet of 16 MiB or more comes in several frames: the ERR carries the sequence id
    /// after the last of them, which the machine learns by skipping them.
    @Test func aMultiFrameCommandTooLargeIsAnsweredAfterItsLastFrame() throws {
        let script = FakeScript(hooks: [.readQuery])
        var configuration = ConnectionMachine.Configuration()
        configuration.maximumPacketLength = 1024
        var d = Driver.loggedIn(configuration, script: script)
        var first = ByteBuffer()
        first.writeBytes([0xFF, 0xFF, 0xFF, 0x00, 0x03])
        #expect(d.client(first).isEmpty)
        // the rest of the first frame, then a last frame of 3 bytes with sequence id 1
        let filler = ByteBuffer(repeating: 0x78, count: PacketHeader.maxPayloadLength - 1)
        #expect(d.client(filler).isEmpty)
        let out = d.client(ByteBuffer(bytes: [0x03, 0x00, 0x00, 0x01, 0x78, 0x78, 0x78]))
        let frame = try firstFrame(out.toClient)
        #expect(frame.sequenceID == 2)
        #expect(try ERRPacket(parsing: frame.payload).code == 1153)
    }

    @Test func scriptWithoutReadQueryRelaysTransparently() throws {
        let script = FakeScript(hooks: [.disconnectClient])
        var d = Driver.loggedIn(script: script)
        let q = Wire.query("SELECT 1")
        #expect(d.client(q).actions == [.forwardToBackend(q)])
        #expect(!d.machine.isExchanging)
        #expect(script.calls.isEmpty)
    }

    /// A hook that raised an error is as one that decided nothing (MySQL Proxy's rule).
    @Test func aFailedHookDecidesNothing() throws {
        let script = FakeScript(hooks: [.readQuery])
        script.onReadQuery = { _, _ in .failed("boom") }
        var d = Driver.loggedIn(script: script)
        #expect(d.client(Wire.query("SELECT 1")).toBackend == Wire.query("SELECT 1"))
    }

    /// The exchange lives out of line but is a value: a copy of the machine goes its own way.
    @Test func aCopiedMachineIsIndependent() throws {
        let script = FakeScript(hooks: [.readQuery])
        let original = Driver.loggedIn(script: script)
        var a = original
        var b = original
        a.client(Wire.query("SELECT 1"))
        #expect(a.machine.isAwaitingResponse)
        #expect(!b.machine.isAwaitingResponse)
        #expect(b.client(Wire.query("SELECT 2")).toBackend == Wire.query("SELECT 2"))
        #expect(a.server(Wire.ok(seq: 1)).toClient == Wire.ok(seq: 1))
        #expect(!original.machine.isAwaitingResponse)
    }

    /// The proxy refuses a client before any byte of its own (a limit, a script that cannot start).
    @Test func aRefusedConnectionGetsItsErrorWhereTheGreetingWouldBe() throws {
        var d = Driver()
        let out = d.run(d.machine.refuseConnection(.tooManyConnections, source: .limit, reason: "full"))
        let frame = try firstFrame(out.close?.toClient)
        let code = try ERRPacket(parsing: frame.payload).code
        #expect(frame.sequenceID == 0 && code == 1040)
        #expect(d.machine.closeSource == .limit)
        #expect(d.machine.clientConnected() == .none)
    }
}
