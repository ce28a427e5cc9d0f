import MySQLWire
import NIOCore

/// A password the client sent in clear over TLS must not go on in clear over a plaintext server
/// link: for caching_sha2_password's full authentication and for sha256_password, the proxy asks
/// the server for its public key and sends the password encrypted with it, as a client on a
/// plaintext link does. The client sees the exchange it expects on a TLS link (password, verdict).
/// Plugins that can only send the password in clear (mysql_clear_password, PAM's dialog) are
/// refused on such a link, with ER_NOT_SUPPORTED_AUTH_MODE, before the client sends it.
extension ConnectionStateMachine {
    struct SecretGuard {
        enum Step {
            case idle
            /// The server asked for full authentication: the client's next packet is its password.
            case fullAuthenticationAsked
            /// The password is held while the server's public key comes.
            case publicKeyAsked(password: ByteBuffer, clientSequence: UInt8)
        }
        /// The authentication plugin in use and its scramble (an auth switch changes both).
        var plugin: String
        var scramble: [UInt8]
        var step = Step.idle
    }

    /// A login the proxy cannot let go on without exposing the client's password.
    struct CleartextRefused: Error, CustomStringConvertible {
        var plugin: String
        var description: String {
            "the server asks for \(plugin), which sends the password in clear, and the link to the server is not TLS; "
                + "the proxy does not pass on a password its client sent over TLS (MoonProxy: set --proxy-backend-ssl)"
        }
    }

    static let cleartextPlugins: Set<String> = ["mysql_clear_password", "dialog"]
    static let sha256PluginName = "sha256_password"
    /// sha256_password's request for the server's public key (caching_sha2_password's is 0x02).
    static let sha256PublicKeyRequest: [UInt8] = [0x01]

    /// A server packet of the login, before it goes to the client: nil when the proxy keeps it
    /// (the public key it asked for), after sending what it answers to the server.
    mutating func guardServerLoginPacket(_ packet: MySQLFrame, _ out: inout Output) throws -> Bool {
        guard var secrets = secretGuard else { return true }
        defer { secretGuard = secrets }
        let payload = Array(packet.payload.readableBytesView)
        if case .publicKeyAsked(let password, let clientSequence) = secrets.step {
            secrets.step = .idle
            guard payload.first == 0x01 else {
                throw CachingSHA2.Failure(description: "the server did not answer the request for its public key")
            }
            let pem = String(decoding: payload.dropFirst(), as: UTF8.self)
            let encrypted = try CachingSHA2.encryptedPassword(password, scramble: secrets.scramble, publicKeyPEM: pem)
            out.backend(Self.framed(MySQLFrame(sequenceID: packet.sequenceID &+ 1, payload: ByteBuffer(bytes: encrypted))))
            // The verdict comes one packet later than the client expects it: two were added.
            loginShift = clientSequence &+ 1 &- (packet.sequenceID &+ 2)
            return false
        }
        switch payload.first {
        case 0xFE where payload.count > 1:
            // auth switch: plugin name (NUL-terminated), then its data (MySQL ends it with a NUL)
            var rest = payload.dropFirst()
            let end = rest.firstIndex(of: 0) ?? rest.endIndex
            secrets.plugin = String(decoding: rest[..<end], as: UTF8.self)
            rest = end < rest.endIndex ? rest[(end + 1)...] : []
            secrets.scramble = Array(rest.last == 0 ? rest.dropLast() : rest)
            secrets.step = .idle
            if Self.cleartextPlugins.contains(secrets.plugin) { throw CleartextRefused(plugin: secrets.plugin) }
            // sha256_password over TLS: the client's answer to the switch is its password in clear
            if secrets.plugin == Self.sha256PluginName { secrets.step = .fullAuthenticationAsked }
        case 0x01 where payload == CachingSHA2.fullAuthenticationRequest && secrets.plugin == CachingSHA2.pluginName:
            secrets.step = .fullAuthenticationAsked
        default:
            break
        }
        return true
    }

    /// A client packet of the login, before it goes to the server: false when the proxy keeps it
    /// (the cleartext password), after asking the server for its public key instead.
    mutating func guardClientLoginPacket(_ packet: MySQLFrame, _ out: inout Output) -> Bool {
        guard var secrets = secretGuard, case .fullAuthenticationAsked = secrets.step else { return true }
        defer { secretGuard = secrets }
        let keyRequest = secrets.plugin == Self.sha256PluginName ? Self.sha256PublicKeyRequest : CachingSHA2.publicKeyRequest
        let bytes = Array(packet.payload.readableBytesView)
        if bytes == keyRequest || (secrets.plugin == Self.sha256PluginName && bytes.count >= 256 && bytes.last != 0) {
            secrets.step = .idle  // the client does the RSA exchange itself
            return true
        }
        secrets.step = .publicKeyAsked(password: packet.payload, clientSequence: packet.sequenceID)
        out.backend(Self.framed(MySQLFrame(sequenceID: packet.sequenceID &- loginShift, payload: ByteBuffer(bytes: keyRequest))))
        return false
    }
}
