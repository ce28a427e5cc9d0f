import MySQLWire
import NIOCore

/// A login the proxy makes on a new server connection with no client waiting on the wire: for a
/// session between commands whose login has no idle connection (multiplexing), with the
/// credential an earlier client login proved. It answers the server's greeting with the login's
/// user, database, character set, capabilities and attributes (as the session's own login did),
/// MariaDB's switch back to `mysql_native_password` included, and reports the verdict.
public struct ServerLoginDriver: Sendable {
    public enum Step: Equatable, Sendable {
        /// Write these bytes; the server's next packet follows.
        case send(ByteBuffer)
        /// Write `sslRequest` in plaintext and turn the link to TLS; then `send` (the response).
        case startTLS(sslRequest: ByteBuffer, then: ByteBuffer)
        /// Logged in: the link's compression starts (if any), and the connection serves the login.
        case done(challenge: [UInt8], compression: ProtocolCompression?)
        case failed(String)
        /// Nothing yet: a packet is not whole.
        case wait
    }

    public let login: ConnectionMachine.ServerLogin
    /// The server link is TLS (as the login it repeats had it).
    public let tls: Bool
    /// The proxy reads the session's state from the server (+Tracking): CLIENT_SESSION_TRACK.
    public let tracks: Bool
    private var gathered = ByteBuffer()
    private var challenge: [UInt8] = []
    private var greeted = false
    private var switched = false
    private var compression: ProtocolCompression?
    /// The capabilities the login was made with (what a later COM_CHANGE_USER is written with).
    public private(set) var capabilities: CapabilityFlags = []

    public init(login: ConnectionMachine.ServerLogin, tls: Bool, tracks: Bool) {
        self.login = login
        self.tls = tls
        self.tracks = tracks
    }

    /// The server's id for the connection (its greeting's), once greeted.
    public private(set) var connectionID: UInt32 = 0

    /// Bytes from the server.
    public mutating func received(_ data: ByteBuffer) -> Step {
        gathered.writeImmutableBuffer(data)
        guard let frame = gathered.readMySQLFrame() else {
            return gathered.readableBytes > 1 << 16 ? .failed("a packet over 64 KiB during the login") : .wait
        }
        gathered.discardReadBytes()
        return greeted ? verdict(frame) : greeting(frame)
    }

    private mutating func greeting(_ frame: MySQLFrame) -> Step {
        greeted = true
        if frame.payload.getInteger(at: frame.payload.readerIndex, as: UInt8.self) == 0xFF {
            let err = try? ERRPacket(parsing: frame.payload)
            return .failed(err.map { "the server refused the connection: \($0.code) \($0.message)" } ?? "a malformed ERR for a greeting")
        }
        let greeting: HandshakeV10
        do {
            greeting = try HandshakeV10(parsing: frame.payload)
        } catch {
            return .failed("a malformed greeting: \(error)")
        }
        if tls && !greeting.capabilities.contains(.ssl) { return .failed("the server does not offer TLS, which the login had") }
        challenge = Array(greeting.authPluginData.prefix(20))
        connectionID = greeting.connectionID
        // what the session's login asked for, as far as this server offers it
        var capabilities = (login.capabilities.isEmpty ? login.sessionCapabilities.union(Self.usual) : login.capabilities)
            .intersection(greeting.capabilities).subtracting(ProtocolCompression.capabilities).subtracting(.ssl)
        capabilities.formUnion(greeting.capabilities.intersection([.protocol41, .secureConnection, .pluginAuth]))
        guard capabilities.isSuperset(of: login.sessionCapabilities) else {
            return .failed("the server does not offer the capabilities the session negotiated")
        }
        if !login.database.isEmpty, greeting.capabilities.contains(.connectWithDB) { capabilities.insert(.connectWithDB) }
        if tls { capabilities.insert(.ssl) }
        if tracks, greeting.capabilities.contains(.sessionTrack) { capabilities.insert(.sessionTrack) }
        var zstdLevel: UInt8?
        if let wanted = login.compression {
            guard greeting.capabilities.contains(wanted.capability) else { return .failed("the server does not offer the login's compression") }
            capabilities.formUnion(wanted.capability)
            if case .zstd(let level) = wanted { zstdLevel = UInt8(clamping: level) }
            compression = wanted
        }
        var response = HandshakeResponse41(capabilities: capabilities, characterSet: login.characterSet, username: login.user,
                                           authResponse: ServerLoginReset.answer(challenge, credential: login.credential), database: login.database.isEmpty ? nil : login.database,
                                           authPluginName: ProxyAuthenticator.nativePlugin, zstdCompressionLevel: zstdLevel)
        response.attributesBlock = login.attributes
        self.capabilities = capabilities
        var payload = ByteBuffer()
        response.write(to: &payload)
        var out = ByteBuffer()
        var seq: UInt8 = tls ? 2 : 1
        out.writeMySQLPacket(payload, sequenceID: &seq)
        guard tls else { return .send(out) }
        guard let request = try? HandshakeResponse41.sslRequest(for: payload) else { return .failed("cannot make the SSLRequest") }
        var framed = ByteBuffer()
        var one: UInt8 = 1
        framed.writeMySQLPacket(request, sequenceID: &one)
        return .startTLS(sslRequest: framed, then: out)
    }

    private mutating func verdict(_ frame: MySQLFrame) -> Step {
        let payload = frame.payload
        switch payload.getInteger(at: payload.readerIndex, as: UInt8.self) {
        case 0x00?:
            return .done(challenge: challenge, compression: compression)
        case 0xFE? where !switched:
            switch ServerLoginReset.answerSwitch(frame, credential: login.credential) {
            case .answer(let out, let fresh):
                switched = true
                challenge = fresh
                return .send(out)
            case .refused(let reason):
                return .failed("\(reason) (the account changed)")
            }
        case 0xFF?:
            let err = try? ERRPacket(parsing: payload)
            return .failed(err.map { "the server refused the login: \($0.code) \($0.message)" } ?? "a malformed ERR")
        default:
            return .failed("an unexpected answer to the login")
        }
    }


    /// What a login asks for beside the session's own flags when the capabilities it was made
    /// with are not known.
    static let usual: CapabilityFlags = [.longPassword, .longFlag, .protocol41, .transactions, .secureConnection,
                                         .multiResults, .psMultiResults, .pluginAuth, .connectAttributes,
                                         .pluginAuthLengthEncodedClientData]
}
