import _CryptoExtras
import NIOCore

/// caching_sha2_password's full authentication (and sha256_password's) as their client side does
/// it on a plaintext link: the password (NUL-terminated) XOR the scramble, encrypted with RSA-OAEP
/// (SHA-1) under the server's public key.
public enum RSAPassword {
    static let cachingSHA2PluginName = "caching_sha2_password"
    /// The server's "perform full authentication" (auth more data, 0x04).
    static let fullAuthenticationRequest: [UInt8] = [0x01, 0x04]
    /// The client's request for the server's public key.
    static let publicKeyRequest: [UInt8] = [0x02]

    /// RSA keys shorter than this are refused: one that short can be factored by whoever sent it
    /// in place of the server.
    static let minimumKeyBits = 2048

    static func encrypted(_ password: ByteBuffer, scramble: [UInt8], publicKeyPEM: String) throws -> [UInt8] {
        guard !scramble.isEmpty else { throw RSAFailure(description: "no scramble to mix the password with") }
        var bytes = Array(password.readableBytesView)
        defer { for i in bytes.indices { bytes[i] = 0 } }
        if bytes.last != 0 { bytes.append(0) }
        for i in bytes.indices { bytes[i] ^= scramble[i % scramble.count] }
        let key: _RSA.Encryption.PublicKey
        do { key = try _RSA.Encryption.PublicKey(unsafePEMRepresentation: publicKeyPEM) } catch {
            throw RSAFailure(description: "the server's public key cannot be read: \(error)")
        }
        guard key.keySizeInBits >= minimumKeyBits else {
            throw RSAFailure(description: "the server's RSA key has \(key.keySizeInBits) bits, fewer than the \(minimumKeyBits) the proxy accepts")
        }
        guard bytes.count <= key.keySizeInBits / 8 - 42 else { throw RSAFailure(description: "the password is too long for the server's RSA key") }
        return Array(try key.encrypt(bytes, padding: .PKCS1_OAEP))
    }

    /// Checks a PEM public key at startup (`--proxy-backend-server-public-key`): RSA, readable, long enough.
    public static func checkPublicKey(_ pem: String) throws {
        let key: _RSA.Encryption.PublicKey
        do { key = try _RSA.Encryption.PublicKey(unsafePEMRepresentation: pem) } catch {
            throw RSAFailure(description: "not an RSA public key in PEM: \(error)")
        }
        guard key.keySizeInBits >= minimumKeyBits else {
            throw RSAFailure(description: "the RSA key has \(key.keySizeInBits) bits, fewer than \(minimumKeyBits)")
        }
    }
}

/// Why a password could not be encrypted for the server.
public struct RSAFailure: Error, CustomStringConvertible {
    public var description: String
}
