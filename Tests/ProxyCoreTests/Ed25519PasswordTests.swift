import ProxyCore
import Testing

/// MariaDB's ed25519 plugin on a captured login: the key MariaDB 10.11 stored for
/// `IDENTIFIED VIA ed25519 USING PASSWORD('edpass')`, the nonce of its auth switch request and
/// the signature the mariadb CLI (libmariadb's client_ed25519) answered with.
struct Ed25519PasswordTests {
    static let stored = "Piz5vwRwNNpHTXZ/zwiknmaAvByZxbBw6LPfPjTrsBs"
    static let nonce = NativePasswordTests.bytes("361dd4180da8304b3247a90a09ade9c786278a3cf830757a89b4b0733f6e65f4")
    static let signature = NativePasswordTests.bytes(
        "d77a6c5098411f8a59dd80c9b43073790e7b8fac3a108a00ebdac18ec8f509ad4741fa699dab2d1274a0f19d3ff44dd2313713c11828dbc1d804e39bdcc6a50d")

    @Test func theClientsSignatureVerifies() throws {
        let key = try #require(Ed25519Password.storedKey(Self.stored))
        #expect(Ed25519Password.verify(nonce: Self.nonce, signature: Self.signature, key: key))
    }

    @Test func anythingElseDoesNot() throws {
        let key = try #require(Ed25519Password.storedKey(Self.stored))
        var forged = Self.signature
        forged[10] ^= 0x40
        #expect(!Ed25519Password.verify(nonce: Self.nonce, signature: forged, key: key))
        var otherNonce = Self.nonce
        otherNonce[0] ^= 1
        #expect(!Ed25519Password.verify(nonce: otherNonce, signature: Self.signature, key: key))
        #expect(!Ed25519Password.verify(nonce: Self.nonce, signature: Array(Self.signature.prefix(63)), key: key))
        #expect(Ed25519Password.storedKey("") == nil)
        #expect(Ed25519Password.storedKey(Self.stored + "=") == nil)
        #expect(Ed25519Password.storedKey("!" + Self.stored.dropFirst()) == nil)
    }
}
