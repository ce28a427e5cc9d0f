import MySQLWire
import NIOCore

/// A password a client sent in clear over TLS goes on to a server only where it is safe: over a
/// TLS link whose certificate the proxy verified, or encrypted with a key the proxy can trust.
///
/// The link to the server is either verified TLS (nothing to guard), unverified TLS (whoever sits
/// between may have answered the handshake) or plaintext (the client's own link is TLS and the
/// operator chose `--proxy-backend-ssl=off`). On the last two, when the server asks for the
/// password itself — caching_sha2_password's full authentication, sha256_password,
/// mysql_clear_password, PAM's dialog — the proxy refuses the login before the client sends it,
/// with the words a MySQL client uses for the same refusal, unless the operator said how to go on:
/// - `--proxy-backend-server-public-key`: on a plaintext link the password goes RSA-encrypted with
///   that key (the client sees the exchange it expects on a TLS link: password, verdict);
/// - `--proxy-backend-get-server-public-key`: on a plaintext link the proxy asks the server for its
///   key, as a MySQL client with `--get-server-public-key` does; on unverified TLS it passes the
///   password on as the plugin asks.
/// Plugins that can only send the password in clear are never passed over a plaintext link. An
/// RSA key shorter than 2048 bits is refused. The password the proxy holds meanwhile is zeroed
/// once used.
extension ConnectionMachine {
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
        /// The server link is TLS whose certificate was not verified (else: plaintext).
        var unverifiedTLS: Bool
        var step = Step.idle
    }

    /// A login the proxy cannot let go on without exposing the client's password.
    struct PasswordRefused: Error, CustomStringConvertible {
        var plugin: String
        var unverifiedTLS: Bool
        /// The plugin sends the password in clear, with no encrypted form.
        var cleartextOnly: Bool

        var description: String {
            if cleartextOnly && !unverifiedTLS {
                return "the server asks for \(plugin), which sends the password in clear, and the link to the server is not TLS; "
                    + "the proxy does not pass on a password its client sent over TLS (MoonProxy: set --proxy-backend-ssl)"
            }
            let link = unverifiedTLS ? "TLS whose certificate is not verified" : "not TLS"
            let remedies = unverifiedTLS ? "--proxy-backend-ssl=verify-ca (or verify-identity), or --proxy-backend-get-server-public-key to trust it"
                : "--proxy-backend-ssl=verify-ca, --proxy-backend-server-public-key, or --proxy-backend-get-server-public-key to trust the key the server sends"
            return "MoonProxy: the server asks for the password (\(plugin)) and the link to the server is \(link); set \(remedies)"
        }

        var packet: ERRPacket {
            cleartextOnly && !unverifiedTLS ? .authModeNotSupported(description) : .authRequiresSecureConnection(plugin: plugin, description)
        }
    }

    static let cleartextPlugins: Set<String> = ["mysql_clear_password", "dialog"]
    static let sha256PluginName = "sha256_password"
    /// sha256_password's request for the server's public key (caching_sha2_password's is 0x02).
    static let sha256PublicKeyRequest: [UInt8] = [0x01]

    /// Whether the server may have the client's password as the plugin sends it: the link is
    /// verified TLS, or the operator trusts unverified servers.
    private var passwordMayGoAsAsked: Bool { configuration.tls.trustUnverifiedBackends }

    /// The server asked for the password (full authentication, or a switch to a plugin that sends
    /// it): whether the client may send it, and how the proxy will pass it on.
    private func passwordAsked(_ secrets: inout SecretGuard) throws(PasswordRefused) {
        let cleartextOnly = Self.cleartextPlugins.contains(secrets.plugin)
        if secrets.unverifiedTLS {
            guard passwordMayGoAsAsked else { throw PasswordRefused(plugin: secrets.plugin, unverifiedTLS: true, cleartextOnly: cleartextOnly) }
            return  // the client's answer goes through the TLS link as it is
        }
        guard !cleartextOnly, configuration.tls.pinnedServerKey != nil || configuration.tls.trustUnverifiedBackends else {
            throw PasswordRefused(plugin: secrets.plugin, unverifiedTLS: false, cleartextOnly: cleartextOnly)
        }
        secrets.step = .fullAuthenticationAsked
    }

    /// A server packet of the login, before it goes to the client: false when the proxy keeps it
    /// (the public key it asked for), after sending what it answers to the server.
    mutating func guardServerLoginPacket(_ auth: inout Authentication, _ packet: MySQLFrame, _ out: inout Output) throws -> Bool {
        guard var secrets = auth.secretGuard else { return true }
        defer { auth.secretGuard = secrets }
        let payload = Array(packet.payload.readableBytesView)
        if case .publicKeyAsked(var password, let clientSequence) = secrets.step {
            secrets.step = .idle
            defer { Self.zero(&password) }
            guard payload.first == 0x01 else {
                throw RSAFailure(description: "the server did not answer the request for its public key")
            }
            let pem = String(decoding: payload.dropFirst(), as: UTF8.self)
            let encrypted = try RSAPassword.encrypted(password, scramble: secrets.scramble, publicKeyPEM: pem)
            out.backend(Self.framed(MySQLFrame(sequenceID: packet.sequenceID &+ 1, payload: ByteBuffer(bytes: encrypted))))
            // The verdict comes one packet later than the client expects it: two were added.
            auth.shift = clientSequence &+ 1 &- (packet.sequenceID &+ 2)
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
            // sha256_password over TLS: the client's answer to the switch is its password in clear
            if Self.cleartextPlugins.contains(secrets.plugin) || secrets.plugin == Self.sha256PluginName {
                try passwordAsked(&secrets)
            }
        case 0x01 where payload == RSAPassword.fullAuthenticationRequest && secrets.plugin == RSAPassword.cachingSHA2PluginName:
            try passwordAsked(&secrets)
        default:
            break
        }
        return true
    }

    /// A client packet of the login, before it goes to the server: false when the proxy keeps it
    /// (the cleartext password), after sending the server its encrypted form or a request for the
    /// server's public key.
    mutating func guardClientLoginPacket(_ auth: inout Authentication, _ packet: MySQLFrame, _ out: inout Output) throws -> Bool {
        guard var secrets = auth.secretGuard, case .fullAuthenticationAsked = secrets.step else { return true }
        defer { auth.secretGuard = secrets }
        secrets.step = .idle
        let keyRequest = secrets.plugin == Self.sha256PluginName ? Self.sha256PublicKeyRequest : RSAPassword.publicKeyRequest
        let bytes = Array(packet.payload.readableBytesView)
        if bytes == keyRequest || (secrets.plugin == Self.sha256PluginName && bytes.count >= 256 && bytes.last != 0) {
            return true  // the client does the RSA exchange itself
        }
        var password = packet.payload
        if let pinned = configuration.tls.pinnedServerKey {
            defer { Self.zero(&password) }
            let encrypted = try RSAPassword.encrypted(password, scramble: secrets.scramble, publicKeyPEM: pinned)
            out.backend(Self.framed(MySQLFrame(sequenceID: packet.sequenceID &- auth.shift, payload: ByteBuffer(bytes: encrypted))))
            return false
        }
        secrets.step = .publicKeyAsked(password: password, clientSequence: packet.sequenceID)
        out.backend(Self.framed(MySQLFrame(sequenceID: packet.sequenceID &- auth.shift, payload: ByteBuffer(bytes: keyRequest))))
        return false
    }

    /// Overwrites a password the proxy held (its own copy: one shared with a read buffer is copied
    /// first, and the read buffer's bytes are reused by the next read).
    static func zero(_ buffer: inout ByteBuffer) {
        buffer.withUnsafeMutableReadableBytes { bytes in
            for i in bytes.indices { bytes[i] = 0 }
        }
    }
}
