import MySQLWire
import NIOCore
import Testing
@testable import ProxyServer

/// The login when one link or both turn to TLS: the SSLRequest, the sequence ids on each link,
/// and the refusals.
@Suite struct TLSStateMachineTests {
    typealias Base = ConnectionStateMachineTests

    /// The captured greeting, with CLIENT_SSL set as a server with TLS sends it.
    static var tlsGreeting: String {
        var bytes = Array(ByteBuffer(hex: Base.greeting).readableBytesView)
        let nul = bytes.firstIndex(of: 0, after: 1)
        bytes[nul + 1 + 4 + 9 + 1] |= 0x08  // lower capabilities, second byte: CLIENT_SSL (0x0800)
        return bytes.map { String(format: "%02x", $0) }.joined()
    }

    static var sslRequest: String {
        let response = ByteBuffer(hex: Base.handshakeResponse)
        let request = try! HandshakeResponse41.sslRequest(for: response)
        return request.readableBytesView.map { String(format: "%02x", $0) }.joined()
    }

    func greeted(_ policy: ConnectionStateMachine.TLSPolicy, greeting: String = tlsGreeting) -> (ConnectionStateMachine, ByteBuffer) {
        var m = ConnectionStateMachine(statistics: LoopStatistics(), tls: policy)
        _ = m.clientConnected()
        _ = m.backendConnected()
        guard case .forwardToClient(let sent) = m.backendDataReceived(Base.packets([(greeting, 0)])) else { fatalError("greeting") }
        return (m, sent)
    }

    static func capabilities(ofGreeting framed: ByteBuffer) throws -> CapabilityFlags {
        let frame = try #require(framed.frames().first)
        return try HandshakeV10(parsing: frame.payload).capabilities
    }

    @Test func theGreetingOffersTLSAsThePolicySays() throws {
        var policy = ConnectionStateMachine.TLSPolicy(offer: .likeBackend)
        #expect(try Self.capabilities(ofGreeting: greeted(policy).1).contains(.ssl))
        #expect(try !Self.capabilities(ofGreeting: greeted(policy, greeting: Base.greeting).1).contains(.ssl))
        policy.offer = .always
        #expect(try Self.capabilities(ofGreeting: greeted(policy, greeting: Base.greeting).1).contains(.ssl))
        policy.offer = .never
        #expect(try !Self.capabilities(ofGreeting: greeted(policy).1).contains(.ssl))
    }

    @Test func anSSLRequestStartsTLSWithTheBytesBehindIt() throws {
        var (m, _) = greeted(.init(offer: .likeBackend, backend: .off))
        var chunk = Base.packets([(Self.sslRequest, 1)])
        chunk.writeBytes([0x16, 0x03, 0x01])  // the ClientHello's first bytes, in the same read
        guard case .startClientTLS(let leftover) = m.clientDataReceived(chunk) else { Issue.record("no TLS"); return }
        #expect(Array(leftover.readableBytesView) == [0x16, 0x03, 0x01])
        // inside TLS: the handshake response with sequence id 2 goes to the plaintext server as 1
        guard case .forwardToBackend(let sent) = m.clientDataReceived(Base.packets([(Base.handshakeResponse, 2)])) else {
            Issue.record("response not forwarded"); return
        }
        let frame = try #require(sent.frames().first)
        #expect(frame.sequenceID == 1)
        #expect(try !HandshakeResponse41(parsing: frame.payload).capabilities.contains(.ssl))
        // an auth switch (server 2 → client 3), the client's answer (4 → 3), the OK (4 → 5)
        let authSwitch = "fe6d7973716c5f6e61746976655f70617373776f7264004142434445464748494a4b4c4d4e4f505152535400"
        let toClient = try Self.toClient(m.backendDataReceived(Base.packets([(authSwitch, 2)])))
        #expect(toClient.frames().first?.sequenceID == 3)
        let forwarded = try Self.toBackend(m.clientDataReceived(Base.packets([(String(repeating: "11", count: 20), 4)])))
        #expect(forwarded.frames().first?.sequenceID == 3)
        let verdict = try Self.toClient(m.backendDataReceived(ScriptedStateMachineTests.ok(seq: 4)))
        #expect(verdict.frames().first?.sequenceID == 5)
        // logged in: commands relay as usual
        guard case .forwardToBackend = m.clientDataReceived(ScriptedStateMachineTests.query("SELECT 1")) else { Issue.record("not relayed"); return }
        #expect(m.loginShift == 0)
    }

    @Test func aPlaintextClientReachesATLSOnlyServer() throws {
        var (m, _) = greeted(.init(offer: .likeBackend, backend: .required))
        guard case .send(let out) = m.clientDataReceived(Base.packets([(Base.handshakeResponse, 1)])) else { Issue.record("no TLS to the server"); return }
        let request = try #require(out.backendTLSRequest?.frames().first)
        #expect(request.sequenceID == 1 && HandshakeResponse41.isSSLRequest(request.payload))
        let response = try #require(out.toBackend?.frames().first)
        #expect(response.sequenceID == 2)
        #expect(try HandshakeResponse41(parsing: response.payload).capabilities.contains(.ssl))
        // the server's OK comes with 3 and reaches the client with 2
        let verdict = try Self.toClient(m.backendDataReceived(ScriptedStateMachineTests.ok(seq: 3)))
        #expect(verdict.frames().first?.sequenceID == 2)
    }

    @Test func refusals() throws {
        // a server without TLS where the policy requires it
        var (m, _) = greeted(.init(offer: .likeBackend, backend: .required), greeting: Base.greeting)
        guard case .sendToClientAndClose(let err, _) = m.clientDataReceived(Base.packets([(Base.handshakeResponse, 1)])) else {
            Issue.record("not refused"); return
        }
        #expect(try ERRPacket(parsing: #require(err.frames().first).payload).code == 1105)
        // plaintext with --require-secure-transport
        (m, _) = greeted(.init(offer: .likeBackend, requireSecureTransport: true))
        guard case .sendToClientAndClose(let err2, _) = m.clientDataReceived(Base.packets([(Base.handshakeResponse, 1)])) else {
            Issue.record("not refused"); return
        }
        let e = try ERRPacket(parsing: #require(err2.frames().first).payload)
        #expect(e.code == 3159 && e.sqlState == "08004")
        // an SSLRequest the greeting did not invite
        (m, _) = greeted(.init(offer: .never))
        guard case .sendToClientAndClose = m.clientDataReceived(Base.packets([(Self.sslRequest, 1)])) else { Issue.record("not refused"); return }
    }

    /// With --ssl-cert the greeting offers TLS whatever the server's says; a server link stripped
    /// of TLS is refused for a TLS client rather than carried over plaintext.
    @Test func aTLSClientIsNotDowngraded() throws {
        var (m, _) = greeted(.init(offer: .always, backend: .preferred), greeting: Base.greeting)
        guard case .startClientTLS = m.clientDataReceived(Base.packets([(Self.sslRequest, 1)])) else { Issue.record("no TLS"); return }
        guard case .sendToClientAndClose(let err, let reason) = m.clientDataReceived(Base.packets([(Base.handshakeResponse, 2)])) else {
            Issue.record("not refused"); return
        }
        #expect(reason.contains("does not carry a TLS client over a plaintext server link"))
        let frame = try #require(err.frames().first)
        let code = try ERRPacket(parsing: frame.payload).code
        #expect(frame.sequenceID == 3 && code == 1105)
    }

    /// TLS on both links, the server's certificate not verified: a switch to a plugin that sends
    /// the password in clear is refused before the client sends it, unless the operator trusts
    /// unverified servers or verified this one.
    @Test func aPasswordGoesOverUnverifiedTLSOnlyWhenTrusted() throws {
        let clearSwitch = "fe" + Array("mysql_clear_password".utf8).map { String(format: "%02x", $0) }.joined() + "00"
        func login(_ policy: ConnectionStateMachine.TLSPolicy) throws -> ConnectionStateMachine.Action {
            var (m, _) = greeted(policy)
            guard case .startClientTLS = m.clientDataReceived(Base.packets([(Self.sslRequest, 1)])) else { throw TestFailure.unexpected("no TLS") }
            guard case .send(let out) = m.clientDataReceived(Base.packets([(Base.handshakeResponse, 2)])), out.backendTLSRequest != nil else {
                throw TestFailure.unexpected("no TLS to the server")
            }
            return m.backendDataReceived(Base.packets([(clearSwitch, 3)]))
        }
        guard case .send(let refused) = try login(.init(offer: .likeBackend, backend: .preferred)), refused.close != nil else {
            Issue.record("not refused"); return
        }
        let err = try ERRPacket(parsing: #require(refused.toClient?.frames().first).payload)
        #expect(err.code == 1251 && err.message.contains("Authentication requires secure connection"))
        #expect(refused.toBackend == nil)
        for trusted in [ConnectionStateMachine.TLSPolicy(offer: .likeBackend, backend: .preferred, trustUnverifiedBackends: true),
                        ConnectionStateMachine.TLSPolicy(offer: .likeBackend, backend: .verifyCA)] {
            let passed = try Self.toClient(login(trusted))
            #expect(try #require(passed.frames().first).payload.getInteger(at: 0, as: UInt8.self) == 0xFE)
        }
    }

    static func toClient(_ action: ConnectionStateMachine.Action) throws -> ByteBuffer {
        switch action {
        case .forwardToClient(let b): return b
        case .send(let o): return try #require(o.toClient)
        default: throw TestFailure.unexpected("\(action)")
        }
    }

    static func toBackend(_ action: ConnectionStateMachine.Action) throws -> ByteBuffer {
        switch action {
        case .forwardToBackend(let b): return b
        case .send(let o): return try #require(o.toBackend)
        default: throw TestFailure.unexpected("\(action)")
        }
    }

    enum TestFailure: Error { case unexpected(String) }
}

private extension Array where Element == UInt8 {
    func firstIndex(of byte: UInt8, after start: Int) -> Int {
        self[start...].firstIndex(of: byte)!
    }
}
