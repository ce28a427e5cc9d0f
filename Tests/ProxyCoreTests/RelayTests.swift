import MySQLWire
import NIOCore
import Testing
@testable import ProxyCore

/// The machine without a script, driven with bytes only: the login relayed, commands and
/// responses streamed, and every way the connection ends.
@Suite struct RelayTests {
    @Test func aClientConnectsToABackend() {
        var m = ConnectionMachine(configuration: .init())
        #expect(m.clientConnected() == .connectToBackend(preferred: nil))
        #expect(m.isConnecting)
        #expect(m.backendConnected() == .none)
        #expect(m.isAwaitingGreeting)
    }

    @Test func greetingIsForwardedWithWhatTheProxyCannotCarryCleared() throws {
        var d = Driver()
        d.connect()
        d.connected()
        let whole = Wire.packets([(Wire.greeting, 0)])
        // The greeting arrives in two reads.
        #expect(d.server(whole.getSlice(at: 0, length: 30)!).isEmpty)
        let rest = d.server(whole.getSlice(at: 30, length: whole.readableBytes - 30)!)
        // the server answered (the handler marks its backend up), and the greeting goes on
        guard rest.actions.count == 2, rest.actions[0] == .backendGreeted, case .forwardToClient(let out) = rest.actions[1] else {
            Issue.record("greeting not forwarded: \(rest.actions)"); return
        }
        let frame = try firstFrame(out)
        let g = try HandshakeV10(parsing: frame.payload)
        #expect(g.capabilities.contains(.compress))  // the server offers it; the proxy speaks it
        #expect(!g.capabilities.contains(.ssl))  // the server does not offer TLS (and no policy here)
        // MariaDB's progress reports, bulk operations, extended metadata and metadata caching pass.
        #expect(g.capabilities.mariaDBExtended == 0x1D)
        #expect(g.capabilities.contains(.deprecateEOF))
        #expect(g.serverVersion == "5.5.5-10.11.19-MariaDB-0+deb12u1")
        #expect(frame.sequenceID == 0)
        #expect(d.machine.wantsClientReads)
        #expect(d.machine.session.greeting?.connectionID == 10)
    }

    @Test func handshakeResponseIsForwardedWithMariaDBCapabilitiesKept() throws {
        var (d, _) = Driver.greeted()
        let response = Wire.packets([(Wire.handshakeResponse, 1)])
        let sent = d.client(response)
        #expect(sent.toClient == nil && sent.actions.count == 1)
        let frame = try firstFrame(sent.toBackend)
        #expect(frame.sequenceID == 1)
        let r = try HandshakeResponse41(parsing: frame.payload)
        #expect(r.capabilities.mariaDBExtended == 0x1D)
        #expect(r.username == "nat")
        #expect(d.machine.session.username == "nat")
        #expect(d.machine.isAwaitingResponse)
        #expect(!d.machine.loginEnded)
        #expect(d.server(Wire.ok(seq: 2)).actions == [.forwardToClient(Wire.ok(seq: 2)), .loginSucceeded])
        #expect(d.machine.loginEnded)
        #expect(d.machine.serverIsIdle)
    }

    @Test func serverErrorInsteadOfGreetingIsRelayedAndCloses() {
        var d = Driver()
        d.connect()
        d.connected()
        let tooMany = Wire.packets([("ff1004546f6f206d616e7920636f6e6e656374696f6e73", 0)])
        #expect(d.server(tooMany).actions == [.backendGreeted, .close(.init(mode: .afterFlush, toClient: tooMany, reason: nil, level: .info))])
        #expect(d.machine.closeSource == .backendHandshake)
    }

    @Test func garbageGreetingGivesAnErrorWithoutSQLState() throws {
        var d = Driver()
        d.connect()
        d.connected()
        let out = d.server([("0935", 0)])
        let err = try firstError(out.close?.toClient)
        #expect(err.code == 1835)
        #expect(err.sqlState == nil)
        #expect(d.counts.backendProtocolErrors == 1)
        #expect(d.counts.errorsSentByProxy == 1)
    }

    @Test func sslRequestIsRefusedWhenNotOffered() throws {
        var (d, _) = Driver.greeted()
        var ssl = ByteBuffer()
        ssl.writeMySQLInteger(CapabilityFlags([.protocol41, .ssl, .secureConnection]).lower32)
        ssl.writeRepeatingByte(0, count: 28)
        var framed = ByteBuffer()
        var seq: UInt8 = 1
        framed.writeMySQLPacket(ssl, sequenceID: &seq)
        let out = d.client(framed)
        let frame = try firstFrame(out.close?.toClient)
        #expect(frame.sequenceID == 2)
        #expect(try ERRPacket(parsing: frame.payload).code == 1043)
    }

    @Test func truncatedHandshakeResponseIsRefused() throws {
        var (d, _) = Driver.greeted()
        let err = try firstError(d.client([("84a2bf0000", 1)]).close?.toClient)
        #expect(err.code == 1043 && err.sqlState == "08S01")
        #expect(d.machine.isClosed)
    }

    @Test func commandsAndResponsesPassThroughUntouched() {
        var d = Driver.loggedIn()
        let query = Wire.packets([("0353454c4543542031", 0)])
        #expect(d.client(query).actions == [.forwardToBackend(query)])
        #expect(d.machine.isAwaitingResponse)
        #expect(!d.machine.serverIsIdle)
        let response = Wire.packets([("01", 1), ("03646566000000013100000c3f0001000000038100000000", 2), ("fe00000200", 3), ("0131", 4), ("fe00000200", 5)])
        #expect(d.server(response).actions == [.forwardToClient(response)])
        #expect(!d.machine.isAwaitingResponse)
        #expect(d.counts.commands == 1 && d.counts.queries == 1)
        #expect(d.machine.counts.isEmpty)  // reported as it was counted: the machine keeps none
    }

    /// The relay's usual event makes one action, which carries its counts: the handler asks for
    /// no more.
    @Test func aRelayedCommandIsOneActionWithItsCounts() {
        var d = Driver.loggedIn()
        let query = Wire.packets([("0353454c4543542031", 0)])
        var counted = ConnectionMachine.Counts()
        counted.commands = 1
        counted.queries = 1
        #expect(d.machine.clientDataReceived(query) == .relayToBackend(query, counted))
        #expect(d.machine.nextAction() == .none)
        let ok = Wire.ok(seq: 1)
        #expect(d.machine.backendDataReceived(ok) == .relayToClient(ok, .init()))
    }

    /// A lost server shows as what it is: the client gets what the server sent, then the close
    /// (client error 2013), never an ERR the server did not send.
    @Test func backendLostMidResultClosesAfterWhatWasRelayed() throws {
        var d = Driver.loggedIn()
        d.client([("0353454c4543542031", 0)])
        d.server([("01", 1), ("03646566000000013100000c3f0001000000038100000000", 2), ("fe00000200", 3), ("0131", 4)])
        let close = try #require(d.serverClosed().close)
        #expect(close.toClient == nil && close.mode == .afterFlush && close.level == .warning)
        #expect(close.reason?.contains("while a response was pending") == true)
        #expect(d.machine.closeSource == .backendNetwork)
        #expect(d.counts.backendsLost == 1)
    }

    @Test func backendLostBeforeAnyResponsePacketOrMidPacketCloses() throws {
        for partial in [nil, Wire.packets([("01", 1)]).getSlice(at: 0, length: 3)!] {
            var d = Driver.loggedIn()
            d.client([("0353454c4543542031", 0)])
            if let partial { d.server(partial) }
            let close = try #require(d.serverClosed().close)
            #expect(close.reason?.contains("while a response was pending") == true)
        }
    }

    @Test func backendKilledRelaysItsErrorThenCloses() throws {
        var d = Driver.loggedIn()
        d.client([("0353454c45435420534c454550283130290a", 0)])
        // ER_CONNECTION_KILLED as MariaDB sends it to the client of a killed connection
        let killed = Wire.packets([("ff8707233730313030436f6e6e656374696f6e20776173206b696c6c6564", 1)])
        #expect(d.server(killed).actions == [.forwardToClient(killed)])
        #expect(!d.machine.isAwaitingResponse)
        let close = try #require(d.serverClosed().close)
        #expect(close.level == .info && close.toClient == nil)
    }

    @Test func backendLostWhileIdleClosesQuietly() throws {
        var d = Driver.loggedIn()
        let close = try #require(d.serverClosed().close)
        #expect(close.reason == "the backend closed the connection" && close.level == .info)
    }

    @Test func backendLostBeforeItsGreetingCloses() throws {
        var d = Driver()
        d.connect()
        d.connected()
        let close = try #require(d.serverClosed().close)
        #expect(close.level == .warning)
        #expect(d.machine.closeSource == .backendHandshake)
    }

    /// A packet the tracker cannot place is no reason to end a connection without hooks: the bytes
    /// go to the client unchanged, and tracking resumes at the next command.
    @Test func unexpectedServerPacketIsRelayedAndTrackingResumes() throws {
        var d = Driver.loggedIn()
        d.client([("0353454c4543542031", 0)])
        // A column count that lies (0xFC with one byte).
        let bad = Wire.packets([("fc01", 1)])
        guard case .forwardToClientUnderstoodNot(let out, let warning) = d.server(bad).actions.first else { Issue.record(); return }
        #expect(out == bad)
        #expect(warning.contains("COM_QUERY") && warning.contains("fc01"))
        #expect(!d.machine.isAwaitingResponse)
        // The rest of what the server sends is relayed; the next command is followed again.
        let rest = Wire.packets([("0131", 2), ("fe00000200", 3)])
        #expect(d.server(rest).actions == [.forwardToClient(rest)])
        d.client([("0353454c4543542032", 0)])
        #expect(d.machine.isAwaitingResponse)
        d.server([(Wire.okHex, 1)])
        #expect(!d.machine.isAwaitingResponse)
    }

    /// MariaDB sets SERVER_STATUS_CURSOR_EXISTS on the result sets of a procedure that has a cursor
    /// open (captured: CALL p1() through COM_STMT_EXECUTE with no cursor asked for); the rows follow.
    @Test func procedureResultWithCursorFlagButNoCursorRequested() throws {
        var d = Driver.loggedIn()
        d.client([("17040000000001000000", 0)])
        let response = Wire.packets([("0101", 1), ("0364656600000003765f6103765f61000c3f000b000000030000000000", 2),
                                     ("fe00004a00", 3), ("000001000000", 4), ("fe00004a00", 5), ("00000002000000", 6)])
        #expect(d.server(response).actions == [.forwardToClient(response)])
        #expect(!d.machine.isAwaitingResponse)
    }

    /// A command pipelined behind the handshake response (before the login's OK) is answered after
    /// the login, and the proxy knows it is waiting for that answer.
    @Test func commandPipelinedBehindTheLogin() throws {
        var (d, _) = Driver.greeted()
        let both = Wire.packets([(Wire.handshakeResponse, 1), ("0353454c4543542031", 0)])
        #expect(d.client(both).toBackend?.frames().count == 2)
        d.server(Wire.ok(seq: 2))
        #expect(d.machine.isAwaitingResponse)
        d.server(Wire.ok(seq: 1))
        #expect(!d.machine.isAwaitingResponse)
    }

    @Test func emptyCommandFromClientIsAnsweredAndCloses() throws {
        var d = Driver.loggedIn()
        let frame = try firstFrame(d.client([("", 0)]).close?.toClient)
        #expect(frame.sequenceID == 1)
        #expect(try ERRPacket(parsing: frame.payload).code == 1047)
        #expect(d.counts.clientProtocolErrors == 1)
    }

    @Test func shutdownWaitsForTheRunningCommand() throws {
        var d = Driver.loggedIn()
        d.client([("0353454c4543542031", 0)])
        #expect(d.machine.shutdownRequested() == .none)
        #expect(!d.machine.wantsClientReads)
        let ok = Wire.ok(seq: 1)
        #expect(d.server(ok).actions == [.close(.init(mode: .afterFlush, toClient: ok, reason: nil, level: .info))])
        #expect(d.machine.closeSource == .proxyShutdown)
    }

    @Test func shutdownClosesAnIdleConnectionAtOnce() {
        var d = Driver.loggedIn()
        #expect(d.machine.shutdownRequested() == .close(.init(mode: .afterFlush, reason: "shutting down", level: .info)))
    }

    @Test func noBackendErrorIsAPreHandshakeError() throws {
        var d = Driver()
        d.connect()
        let frame = try firstFrame(d.run(d.machine.noBackendAvailable("none up")).close?.toClient)
        #expect(frame.sequenceID == 0)
        let err = try ERRPacket(parsing: frame.payload)
        #expect(err.code == 1105 && err.sqlState == nil)
        #expect(d.machine.closeSource == .noBackend)
    }

    /// A connect that failed goes to the next backend; a full proxy refuses as a full server does.
    @Test func aFailedConnectTriesAgainAndExhaustionRefuses() throws {
        var d = Driver()
        d.connect()
        #expect(d.machine.backendConnectFailed() == .connectToBackend(preferred: nil))
        let err = try firstError(d.run(d.machine.refusedForWantOfResources()).close?.toClient)
        #expect(err.code == 1040 && err.sqlState == "08004")
        #expect(d.machine.closeSource == .limit)
    }

    /// A server that accepted and never greeted: the handler dropped it, the machine asks for
    /// the next one; past the greeting nothing of the kind happens.
    @Test func aMissedGreetingAsksForTheNextBackend() {
        var d = Driver()
        d.connect()
        d.connected()
        #expect(d.machine.backendGreetingTimedOut() == .connectToBackend(preferred: nil))
        var e = Driver.loggedIn()
        #expect(e.machine.backendGreetingTimedOut() == .none)
    }

    @Test func localInfileThroughPreparedStatement() {
        var d = Driver.loggedIn()
        let load = Array("LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t".utf8).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        d.client([("16" + load, 0)])
        d.server([("000100000000000000000000", 1)])
        d.client([("1701000000000100000000", 0)])
        let request = Wire.packets([("fb2f746d702f78", 1)])
        #expect(d.server(request).actions == [.forwardToClient(request)])
        let file = Wire.packets([("312c610a", 2), ("", 3)])
        #expect(d.client(file).actions == [.forwardToBackend(file)])
        d.server([("00010002000000", 4)])
        #expect(!d.machine.isAwaitingResponse)
    }

    /// A LOCAL INFILE request in answer to a statement that loads no file (a rogue server): the
    /// client gets an ERR where the request stood, and both sides close.
    @Test func aLocalInfileRequestForAnotherStatementIsRefused() throws {
        var d = Driver.loggedIn()
        d.client([("0353454c4543542031", 0)])
        let frame = try firstFrame(d.server([("fb2f6574632f706173737764", 1)]).close?.toClient)
        #expect(frame.sequenceID == 1)
        #expect(try ERRPacket(parsing: frame.payload).code == 1148)
    }

    /// Timeouts: an idle client is closed quietly; a server silent mid-response gets the client
    /// an ERR when one can still stand in, else the connection is cut.
    @Test func readTimeouts() throws {
        var d = Driver.loggedIn()
        #expect(d.machine.readTimedOut(client: false) == .none)  // nothing asked of the server
        let idle = try #require(d.run(d.machine.readTimedOut(client: true)).close)
        #expect(idle.level == .info && idle.toClient == nil)
        #expect(d.machine.closeSource == .timeout)

        d = Driver.loggedIn()
        d.client([("0353454c4543542031", 0)])
        #expect(d.machine.readTimedOut(client: true) == .none)  // the client waits for its answer
        let err = try firstFrame(d.run(d.machine.readTimedOut(client: false)).close?.toClient)
        #expect(err.sequenceID == 1)

        d = Driver.loggedIn()
        d.client([("0353454c4543542031", 0)])
        d.server(Wire.packets([("01", 1)]).getSlice(at: 0, length: 3)!)
        let cut = try #require(d.run(d.machine.readTimedOut(client: false)).close)
        #expect(cut.mode == .abort && cut.toClient == nil)
    }

    /// The handler gives up on a connection (its login or write timeout): one close, after which
    /// nothing more is said, and the first reason stays the cause.
    @Test func abandonClosesOnce() {
        var d = Driver.loggedIn()
        #expect(d.machine.abandon(.timeout, reason: "blocked") == .close(.init(mode: .abort, reason: "blocked", level: .warning)))
        #expect(d.machine.abandon(.proxyShutdown, reason: "again") == .none)
        #expect(d.machine.clientClosed() == .none)
        #expect(d.machine.backendClosed() == .none)
        #expect(d.machine.closeSource == .timeout)
    }
}
