import Crypto
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// MariaDB's ed25519 authentication: the account stores an Ed25519 public key derived from the
/// password (base64 without padding in `authentication_string`); the server sends a 32-byte nonce
/// and the client answers with the nonce's Ed25519 signature. Whoever holds the stored key can tell
/// a right password from a wrong one, and learns nothing to log into a server with: a proxy that
/// verifies clients itself refuses a wrong ed25519 password at once and relays the right one.
public enum Ed25519Password {
    /// The public key an account's authentication string holds; nil for anything else.
    public static func storedKey(_ authenticationString: String) -> Curve25519.Signing.PublicKey? {
        guard authenticationString.utf8.count == 43 else { return nil }
        guard let bytes = Data(base64Encoded: authenticationString + "="), bytes.count == 32 else { return nil }
        return try? Curve25519.Signing.PublicKey(rawRepresentation: bytes)
    }

    /// Whether `signature` is the client's answer to `nonce` for the account's key.
    public static func verify(nonce: [UInt8], signature: [UInt8], key: Curve25519.Signing.PublicKey) -> Bool {
        guard nonce.count == 32, signature.count == 64 else { return false }
        return key.isValidSignature(signature, for: nonce)
    }
}
