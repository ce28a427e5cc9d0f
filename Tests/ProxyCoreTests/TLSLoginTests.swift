import MySQLWire
import NIOCore
import Testing
@testable import ProxyCore

/// The login when one link or both turn to TLS: the SSLRequest, the sequence ids on each link,
/// the refusals, and what may carry a password.
@Suite struct TLSLoginTests {
    /// The captured greeting, with CLIENT_SSL set as a server with TLS sends it.
    static var tlsGreeting: String {
        var bytes = Array(ByteBuffer(hex: Wire.greeting).readableBytesView)
        let nul = bytes[1...].firstIndex(of: 0)!
        bytes[nul + 1 + 4 + 9 + 1] |= 0x08  // lower capabilities, second byte: CLIENT_SSL (0x0800)
        return ByteBuffer(bytes: bytes).hex
    }

    static var sslRequest: String {
        try! HandshakeResponse41.sslRequest(for: ByteBuffer(hex: Wire.handshakeResponse)).hex
    }

    static func configuration(_ policy: ConnectionMachine.TLSPolicy) -> ConnectionMachine.Configuration {
        var c = ConnectionMachine.Configuration()
        c.tls = policy
        return c
    }

    static func greeted(_ policy: ConnectionMachine.TLSPolicy, greeting: String = tlsGreeting) -> (Driver, ByteBuffer) {
        let (d, out) = Driver.greeted(configuration(policy), greeting: greeting)
        return (d, out.toClient ?? ByteBuffer())
    }

    static func capabilities(ofGreeting framed: ByteBuffer) throws -> CapabilityFlags {
        try HandshakeV10(parsing: firstFrame(framed).payload).capabilities
    }

    @Test func theGreetingOffersTLSAsThePolicySays() throws {
        var policy = ConnectionMachine.TLSPolicy(offer: .likeBackend)
        #expect(try Self.capabilities(ofGreeting: Self.greeted(policy).1).contains(.ssl))
        #expect(try !Self.capabilities(ofGreeting: Self.greeted(policy, greeting: Wire.greeting).1).contains(.ssl))
        policy.offer = .always
        #expect(try Self.capabilities(ofGreeting: Self.greeted(policy, greeting: Wire.greeting).1).contains(.ssl))
        policy.offer = .never
        #expect(try !Self.capabilities(ofGreeting: Self.greeted(policy).1).contains(.ssl))
    }

    @Test func anSSLRequestStartsTLSWithTheBytesBehindIt() throws {
        var (d, _) = Self.greeted(.init(offer: .likeBackend, backend: .off))
        var chunk = Wire.packets([(Self.sslRequest, 1)])
        chunk.writeBytes([0x16, 0x03, 0x01])  // the ClientHello's first bytes, in the same read
        #expect(d.client(chunk).actions == [.startClientTLS(leftover: ByteBuffer(bytes: [0x16, 0x03, 0x01]))])
        // inside TLS: the handshake response with sequence id 2 goes to the plaintext server as 1
        let frame = try firstFrame(d.client([(Wire.handshakeResponse, 2)]).toBackend)
        #expect(frame.sequenceID == 1)
        #expect(try !HandshakeResponse41(parsing: frame.payload).capabilities.contains(.ssl))
        // an auth switch (server 2 → client 3), the client's answer (4 → 3), the OK (4 → 5)
        let authSwitch = "fe6d7973716c5f6e61746976655f70617373776f7264004142434445464748494a4b4c4d4e4f505152535400"
        #expect(try firstFrame(d.server([(authSwitch, 2)]).toClient).sequenceID == 3)
        #expect(try firstFrame(d.client([(String(repeating: "11", count: 20), 4)]).toBackend).sequenceID == 3)
        #expect(try firstFrame(d.server(Wire.ok(seq: 4)).toClient).sequenceID == 5)
        #expect(d.machine.session.clientTLS && !d.machine.session.backendTLS)
        // logged in: commands relay as usual
        let query = Wire.query("SELECT 1")
        #expect(d.client(query).actions == [.forwardToBackend(query)])
    }

    @Test func aPlaintextClientReachesATLSOnlyServer() throws {
        var (d, _) = Self.greeted(.init(offer: .likeBackend, backend: .required))
        let out = d.client([(Wire.handshakeResponse, 1)])
        guard case .startBackendTLS(let requestBytes) = out.actions.first else { Issue.record("no TLS to the server: \(out.actions)"); return }
        let request = try firstFrame(requestBytes)
        #expect(request.sequenceID == 1 && HandshakeResponse41.isSSLRequest(request.payload))
        guard case .write(nil, let responseBytes) = out.actions.dropFirst().first else { Issue.record("no response"); return }
        let response = try firstFrame(responseBytes)
        #expect(response.sequenceID == 2)
        #expect(try HandshakeResponse41(parsing: response.payload).capabilities.contains(.ssl))
        // the server's OK comes with 3 and reaches the client with 2
        #expect(try firstFrame(d.server(Wire.ok(seq: 3)).toClient).sequenceID == 2)
    }

    /// The server's TLS handshake failed while the login waited: the client hears it as a
    /// client library reports its own.
    @Test func aFailedServerHandshakeIsAnSSLConnectionError() throws {
        var (d, _) = Self.greeted(.init(offer: .likeBackend, backend: .required))
        d.client([(Wire.handshakeResponse, 1)])
        let out = d.run(d.machine.backendTLSFailed("certificate expired"))
        let err = try firstError(out.close?.toClient)
        #expect(err.code == 2026 || err.code == 1105)
        #expect(err.message.contains("certificate expired"))
        #expect(d.machine.closeSource == .backendHandshake)
    }

    @Test func refusals() throws {
        // a server without TLS where the policy requires it
        var (d, _) = Self.greeted(.init(offer: .likeBackend, backend: .required), greeting: Wire.greeting)
        #expect(try firstError(d.client([(Wire.handshakeResponse, 1)]).close?.toClient).code == 1105)
        // plaintext with --require-secure-transport
        (d, _) = Self.greeted(.init(offer: .likeBackend, requireSecureTransport: true))
        let e = try firstError(d.client([(Wire.handshakeResponse, 1)]).close?.toClient)
        #expect(e.code == 3159 && e.sqlState == "08004")
        // ... except through a unix socket
        (d, _) = Self.greeted(.init(offer: .likeBackend, requireSecureTransport: true, localSocket: true))
        #expect(d.client([(Wire.handshakeResponse, 1)]).close == nil)
        // an SSLRequest the greeting did not invite
        (d, _) = Self.greeted(.init(offer: .never))
        #expect(d.client([(Self.sslRequest, 1)]).close != nil)
    }

    /// With --ssl-cert the greeting offers TLS whatever the server's says; a server link stripped
    /// of TLS is refused for a TLS client rather than carried over plaintext.
    @Test func aTLSClientIsNotDowngraded() throws {
        var (d, _) = Self.greeted(.init(offer: .always, backend: .preferred), greeting: Wire.greeting)
        guard case .startClientTLS = d.client([(Self.sslRequest, 1)]).actions.first else { Issue.record("no TLS"); return }
        let close = try #require(d.client([(Wire.handshakeResponse, 2)]).close)
        #expect(close.reason?.contains("does not carry a TLS client over a plaintext server link") == true)
        let frame = try firstFrame(close.toClient)
        let code = try ERRPacket(parsing: frame.payload).code
        #expect(frame.sequenceID == 3 && code == 1105)
    }

    /// TLS on both links, the server's certificate not verified: a switch to a plugin that sends
    /// the password in clear is refused before the client sends it, unless the operator trusts
    /// unverified servers or verified this one.
    @Test func aPasswordGoesOverUnverifiedTLSOnlyWhenTrusted() throws {
        let clearSwitch = "fe" + ByteBuffer(bytes: Array("mysql_clear_password".utf8)).hex + "00"
        func login(_ policy: ConnectionMachine.TLSPolicy) throws -> Effects {
            var (d, _) = Self.greeted(policy)
            guard case .startClientTLS = d.client([(Self.sslRequest, 1)]).actions.first else { throw Failure.unexpected("no TLS") }
            guard case .startBackendTLS = d.client([(Wire.handshakeResponse, 2)]).actions.first else { throw Failure.unexpected("no TLS to the server") }
            return d.server([(clearSwitch, 3)])
        }
        let refused = try login(.init(offer: .likeBackend, backend: .preferred))
        let err = try firstError(refused.close?.toClient)
        #expect(err.code == 1251 && err.message.contains("Authentication requires secure connection"))
        #expect(refused.toBackend == nil)
        for trusted in [ConnectionMachine.TLSPolicy(offer: .likeBackend, backend: .preferred, trustUnverifiedBackends: true),
                        ConnectionMachine.TLSPolicy(offer: .likeBackend, backend: .verifyCA)] {
            let passed = try login(trusted)
            #expect(try firstFrame(passed.toClient).payload.getInteger(at: 0, as: UInt8.self) == 0xFE)
        }
    }

    /// A TLS client's password goes over a plaintext server link only behind a unix socket,
    /// where nobody sits between.
    @Test func aPasswordMayGoToALocalServer() throws {
        let clearSwitch = "fe" + ByteBuffer(bytes: Array("mysql_clear_password".utf8)).hex + "00"
        func login(local: Bool) -> Effects {
            var d = Driver(Self.configuration(.init(offer: .likeBackend, backend: .off)))
            d.connect()
            d.connected(localSocket: local)
            d.server([(Self.tlsGreeting, 0)])
            d.client([(Self.sslRequest, 1)])
            d.client([(Wire.handshakeResponse, 2)])
            return d.server([(clearSwitch, 2)])
        }
        #expect(login(local: true).close == nil)
        #expect(try firstError(login(local: false).close?.toClient).code == 1251)
    }

    enum Failure: Error { case unexpected(String) }
}
