import MySQLWire
import NIOCore
import Testing
@testable import ProxyServer

/// The connection state machine driven with bytes only: no sockets, no event loop.
@Suite struct ConnectionStateMachineTests {
    static let greeting = "0a352e352e352d31302e31312e31392d4d6172696144422d302b64656231327531000a000000474e34542c7d556e00fef7080200ff81150000000000001d0000004a643d406a76343f7b72484f006d7973716c5f6e61746976655f70617373776f726400"
    static let handshakeResponse = "84a2bf000000100021000000000000000000000000000000000000001d0000006e617400145f944c76085a805c6f80596fb1e9a40dd32c23d46d7973716c5f6e61746976655f70617373776f7264007e035f6f73054c696e75780c5f636c69656e745f6e616d650a6c69626d617269616462045f70696404353432340f5f636c69656e745f76657273696f6e06332e332e3230095f706c6174666f726d067838365f36340c70726f6772616d5f6e616d65056d7973716c0c5f7365727665725f686f7374093132372e302e302e31"

    static func packets(_ list: [(String, UInt8)]) -> ByteBuffer {
        var out = ByteBuffer()
        for (hex, seq) in list {
            var s = seq
            out.writeMySQLPacket(ByteBuffer(hex: hex), sequenceID: &s)
        }
        return out
    }

    /// A machine that has relayed the greeting, the handshake response and the server's OK.
    func authenticated() -> ConnectionStateMachine {
        var m = ConnectionStateMachine(statistics: LoopStatistics())
        guard case .connectToBackend = m.clientConnected() else { fatalError() }
        _ = m.backendConnected()
        guard case .forwardToClient = m.backendDataReceived(Self.packets([(Self.greeting, 0)])) else { fatalError() }
        guard case .forwardToBackend = m.clientDataReceived(Self.packets([(Self.handshakeResponse, 1)])) else { fatalError() }
        guard case .forwardToClient = m.backendDataReceived(Self.packets([("00000002000000", 2)])) else { fatalError() }
        return m
    }

    @Test func greetingIsForwardedWithWhatTheProxyCannotCarryCleared() throws {
        var m = ConnectionStateMachine(statistics: LoopStatistics())
        _ = m.clientConnected()
        _ = m.backendConnected()
        let whole = Self.packets([(Self.greeting, 0)])
        // The greeting arrives in two reads.
        guard case .none = m.backendDataReceived(whole.getSlice(at: 0, length: 30)!) else { Issue.record("forwarded half a greeting"); return }
        guard case .forwardToClient(let out) = m.backendDataReceived(whole.getSlice(at: 30, length: whole.readableBytes - 30)!) else {
            Issue.record("greeting not forwarded"); return
        }
        let frame = try #require(out.frames().first)
        let g = try HandshakeV10(parsing: frame.payload)
        #expect(g.capabilities.contains(.compress))  // the server offers it; the proxy speaks it
        #expect(!g.capabilities.contains(.ssl))  // the server does not offer TLS (and no policy here)
        // MariaDB's progress reports, bulk operations, extended metadata and metadata caching pass.
        #expect(g.capabilities.mariaDBExtended == 0x1D)
        #expect(g.capabilities.contains(.deprecateEOF))
        #expect(g.serverVersion == "5.5.5-10.11.19-MariaDB-0+deb12u1")
        #expect(frame.sequenceID == 0)
        #expect(m.wantsClientReads)
    }

    @Test func handshakeResponseIsForwardedWithMariaDBCapabilitiesKept() throws {
        var m = ConnectionStateMachine(statistics: LoopStatistics())
        _ = m.clientConnected()
        _ = m.backendConnected()
        _ = m.backendDataReceived(Self.packets([(Self.greeting, 0)]))
        guard case .forwardToBackend(let out) = m.clientDataReceived(Self.packets([(Self.handshakeResponse, 1)])) else {
            Issue.record("not forwarded"); return
        }
        let frame = try #require(out.frames().first)
        #expect(frame.sequenceID == 1)
        let r = try HandshakeResponse41(parsing: frame.payload)
        #expect(r.capabilities.mariaDBExtended == 0x1D)
        #expect(r.username == "nat")
        #expect(m.session?.username == "nat")
        #expect(m.isAwaitingResponse)
    }

    @Test func serverErrorInsteadOfGreetingIsRelayedAndCloses() {
        var m = ConnectionStateMachine(statistics: LoopStatistics())
        _ = m.clientConnected()
        _ = m.backendConnected()
        let tooMany = Self.packets([("ff1004546f6f206d616e7920636f6e6e656374696f6e73", 0)])
        guard case .forwardToClientAndClose(let out) = m.backendDataReceived(tooMany) else { Issue.record(); return }
        #expect(out == tooMany)
    }

    @Test func garbageGreetingGivesAnErrorWithoutSQLState() throws {
        var m = ConnectionStateMachine(statistics: LoopStatistics())
        _ = m.clientConnected()
        _ = m.backendConnected()
        guard case .sendToClientAndClose(let out, _) = m.backendDataReceived(Self.packets([("0935", 0)])) else { Issue.record(); return }
        let frame = try #require(out.frames().first)
        let err = try ERRPacket(parsing: frame.payload)
        #expect(err.code == 1835)
        #expect(err.sqlState == nil)
    }

    @Test func sslRequestIsRefused() throws {
        var m = ConnectionStateMachine(statistics: LoopStatistics())
        _ = m.clientConnected()
        _ = m.backendConnected()
        _ = m.backendDataReceived(Self.packets([(Self.greeting, 0)]))
        var ssl = ByteBuffer()
        ssl.writeMySQLInteger(CapabilityFlags([.protocol41, .ssl, .secureConnection]).lower32)
        ssl.writeRepeatingByte(0, count: 28)
        var framed = ByteBuffer()
        var seq: UInt8 = 1
        framed.writeMySQLPacket(ssl, sequenceID: &seq)
        guard case .sendToClientAndClose(let out, _) = m.clientDataReceived(framed) else { Issue.record(); return }
        let frame = try #require(out.frames().first)
        #expect(frame.sequenceID == 2)
        #expect(try ERRPacket(parsing: frame.payload).code == 1043)
    }

    @Test func truncatedHandshakeResponseIsRefused() throws {
        var m = ConnectionStateMachine(statistics: LoopStatistics())
        _ = m.clientConnected()
        _ = m.backendConnected()
        _ = m.backendDataReceived(Self.packets([(Self.greeting, 0)]))
        guard case .sendToClientAndClose(let out, _) = m.clientDataReceived(Self.packets([("84a2bf0000", 1)])) else { Issue.record(); return }
        let err = try ERRPacket(parsing: try #require(out.frames().first).payload)
        #expect(err.code == 1043 && err.sqlState == "08S01")
    }

    @Test func commandsAndResponsesPassThroughUntouched() {
        var m = authenticated()
        let query = Self.packets([("0353454c4543542031", 0)])
        guard case .forwardToBackend(let q) = m.clientDataReceived(query) else { Issue.record(); return }
        #expect(q == query)
        #expect(m.isAwaitingResponse)
        let response = Self.packets([("01", 1), ("03646566000000013100000c3f0001000000038100000000", 2), ("fe00000200", 3), ("0131", 4), ("fe00000200", 5)])
        guard case .forwardToClient(let r) = m.backendDataReceived(response) else { Issue.record(); return }
        #expect(r == response)
        #expect(!m.isAwaitingResponse)
    }

    /// A lost server shows as what it is: the client gets what the server sent, then the close
    /// (client error 2013), never an ERR the server did not send.
    @Test func backendLostMidResultClosesAfterWhatWasRelayed() throws {
        var m = authenticated()
        _ = m.clientDataReceived(Self.packets([("0353454c4543542031", 0)]))
        _ = m.backendDataReceived(Self.packets([("01", 1), ("03646566000000013100000c3f0001000000038100000000", 2), ("fe00000200", 3), ("0131", 4)]))
        guard case .closeAfterBackendClosed(duringResponse: true) = m.backendClosed() else { Issue.record(); return }
    }

    @Test func backendLostBeforeAnyResponsePacketCloses() throws {
        var m = authenticated()
        _ = m.clientDataReceived(Self.packets([("0353454c4543542031", 0)]))
        guard case .closeAfterBackendClosed(duringResponse: true) = m.backendClosed() else { Issue.record(); return }
    }

    @Test func backendLostMidPacketCloses() {
        var m = authenticated()
        _ = m.clientDataReceived(Self.packets([("0353454c4543542031", 0)]))
        let partial = Self.packets([("01", 1)]).getSlice(at: 0, length: 3)!
        _ = m.backendDataReceived(partial)
        guard case .closeAfterBackendClosed(duringResponse: true) = m.backendClosed() else { Issue.record(); return }
    }

    @Test func backendKilledRelaysItsErrorThenCloses() throws {
        var m = authenticated()
        _ = m.clientDataReceived(Self.packets([("0353454c45435420534c454550283130290a", 0)]))
        // ER_CONNECTION_KILLED as MariaDB sends it to the client of a killed connection
        let killed = Self.packets([("ff8707233730313030436f6e6e656374696f6e20776173206b696c6c6564", 1)])
        guard case .forwardToClient(let out) = m.backendDataReceived(killed) else { Issue.record(); return }
        #expect(out == killed)
        #expect(!m.isAwaitingResponse)
        guard case .closeAfterBackendClosed(duringResponse: false) = m.backendClosed() else { Issue.record(); return }
    }

    @Test func backendLostWhileIdleClosesQuietly() {
        var m = authenticated()
        guard case .closeAfterBackendClosed(duringResponse: false) = m.backendClosed() else { Issue.record(); return }
    }

    @Test func backendLostBeforeItsGreetingCloses() {
        var m = ConnectionStateMachine(statistics: LoopStatistics())
        _ = m.clientConnected()
        _ = m.backendConnected()
        guard case .closeAfterBackendClosed(duringResponse: true) = m.backendClosed() else { Issue.record(); return }
    }

    /// A packet the tracker cannot place is no reason to end a connection without hooks: the bytes
    /// go to the client unchanged, and tracking resumes at the next command.
    @Test func unexpectedServerPacketIsRelayedAndTrackingResumes() throws {
        var m = authenticated()
        _ = m.clientDataReceived(Self.packets([("0353454c4543542031", 0)]))
        // A column count that lies (0xFC with one byte).
        let bad = Self.packets([("fc01", 1)])
        guard case .forwardToClientUnderstoodNot(let out, let warning) = m.backendDataReceived(bad) else { Issue.record(); return }
        #expect(out == bad)
        #expect(warning.contains("COM_QUERY") && warning.contains("fc01"))
        #expect(!m.isAwaitingResponse)
        // The rest of what the server sends is relayed; the next command is followed again.
        guard case .forwardToClient = m.backendDataReceived(Self.packets([("0131", 2), ("fe00000200", 3)])) else { Issue.record(); return }
        _ = m.clientDataReceived(Self.packets([("0353454c4543542032", 0)]))
        #expect(m.isAwaitingResponse)
        guard case .forwardToClient = m.backendDataReceived(Self.packets([("00000002000000", 1)])) else { Issue.record(); return }
        #expect(!m.isAwaitingResponse)
    }

    /// MariaDB sets SERVER_STATUS_CURSOR_EXISTS on the result sets of a procedure that has a cursor
    /// open (captured: CALL p1() through COM_STMT_EXECUTE with no cursor asked for); the rows follow.
    @Test func procedureResultWithCursorFlagButNoCursorRequested() throws {
        var m = authenticated()
        _ = m.clientDataReceived(Self.packets([("17040000000001000000", 0)]))
        let response = Self.packets([("0101", 1), ("0364656600000003765f6103765f61000c3f000b000000030000000000", 2),
                                     ("fe00004a00", 3), ("000001000000", 4), ("fe00004a00", 5), ("00000002000000", 6)])
        guard case .forwardToClient(let out) = m.backendDataReceived(response) else { Issue.record(); return }
        #expect(out == response)
        #expect(!m.isAwaitingResponse)
    }

    /// A command pipelined behind the handshake response (before the login's OK) is answered after
    /// the login, and the proxy knows it is waiting for that answer.
    @Test func commandPipelinedBehindTheLogin() throws {
        var m = ConnectionStateMachine(statistics: LoopStatistics())
        _ = m.clientConnected()
        _ = m.backendConnected()
        _ = m.backendDataReceived(Self.packets([(Self.greeting, 0)]))
        guard case .forwardToBackend(let out) = m.clientDataReceived(Self.packets([(Self.handshakeResponse, 1), ("0353454c4543542031", 0)])) else {
            Issue.record(); return
        }
        #expect(out.frames().count == 2)
        guard case .forwardToClient = m.backendDataReceived(Self.packets([("00000002000000", 2)])) else { Issue.record(); return }
        #expect(m.isAwaitingResponse)
        guard case .forwardToClient = m.backendDataReceived(Self.packets([("00000002000000", 1)])) else { Issue.record(); return }
        #expect(!m.isAwaitingResponse)
    }

    @Test func emptyCommandFromClientIsAnsweredAndCloses() throws {
        var m = authenticated()
        guard case .sendToClientAndClose(let out, _) = m.clientDataReceived(Self.packets([("", 0)])) else { Issue.record(); return }
        let frame = try #require(out.frames().first)
        #expect(frame.sequenceID == 1)
        #expect(try ERRPacket(parsing: frame.payload).code == 1047)
    }

    @Test func shutdownWaitsForTheRunningCommand() {
        var m = authenticated()
        _ = m.clientDataReceived(Self.packets([("0353454c4543542031", 0)]))
        guard case .none = m.shutdownRequested() else { Issue.record(); return }
        #expect(!m.wantsClientReads)
        guard case .forwardToClientAndClose = m.backendDataReceived(Self.packets([("00000002000000", 1)])) else { Issue.record(); return }
    }

    @Test func shutdownClosesAnIdleConnectionAtOnce() {
        var m = authenticated()
        guard case .closeConnections = m.shutdownRequested() else { Issue.record(); return }
    }

    @Test func noBackendErrorIsAPreHandshakeError() throws {
        var m = ConnectionStateMachine(statistics: LoopStatistics())
        _ = m.clientConnected()
        guard case .sendToClientAndClose(let out, _) = m.noBackendAvailable("none up") else { Issue.record(); return }
        let frame = try #require(out.frames().first)
        #expect(frame.sequenceID == 0)
        let err = try ERRPacket(parsing: frame.payload)
        #expect(err.code == 1105 && err.sqlState == nil)
    }

    @Test func localInfileThroughPreparedStatement() {
        var m = authenticated()
        let load = Array("LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t".utf8).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        _ = m.clientDataReceived(Self.packets([("16" + load, 0)]))
        _ = m.backendDataReceived(Self.packets([("000100000000000000000000", 1)]))
        _ = m.clientDataReceived(Self.packets([("1701000000000100000000", 0)]))
        guard case .forwardToClient = m.backendDataReceived(Self.packets([("fb2f746d702f78", 1)])) else { Issue.record(); return }
        guard case .forwardToBackend = m.clientDataReceived(Self.packets([("312c610a", 2), ("", 3)])) else { Issue.record(); return }
        guard case .forwardToClient = m.backendDataReceived(Self.packets([("00010002000000", 4)])) else { Issue.record(); return }
        #expect(!m.isAwaitingResponse)
    }

    /// A LOCAL INFILE request in answer to a statement that loads no file (a rogue server): the
    /// client gets an ERR where the request stood, and both sides close.
    @Test func aLocalInfileRequestForAnotherStatementIsRefused() throws {
        var m = authenticated()
        _ = m.clientDataReceived(Self.packets([("0353454c4543542031", 0)]))
        guard case .sendToClientAndClose(let out, _) = m.backendDataReceived(Self.packets([("fb2f6574632f706173737764", 1)])) else {
            Issue.record(); return
        }
        let frame = try #require(out.frames().first)
        #expect(frame.sequenceID == 1)
        #expect(try ERRPacket(parsing: frame.payload).code == 1148)
    }
}

extension ByteBuffer {
    func frames() -> [MySQLFrame] {
        var copy = self
        var result: [MySQLFrame] = []
        while let f = copy.readMySQLFrame() { result.append(f) }
        return result
    }

    init(hex: String) {
        var bytes: [UInt8] = []
        var chars = hex.makeIterator()
        while let hi = chars.next(), let lo = chars.next() {
            bytes.append(UInt8(String([hi, lo]), radix: 16)!)
        }
        self.init(bytes: bytes)
    }
}
