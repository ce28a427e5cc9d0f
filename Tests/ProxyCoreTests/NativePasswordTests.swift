import ProxyCore
import Testing

/// mysql_native_password on vectors nobody here computed: the stored hash as MariaDB 10.11 made it
/// (`SELECT PASSWORD('mypass')`, also the MySQL manual's example) and a client's answer as PyMySQL
/// makes it (`_auth.scramble_native_password(b"mypass", bytes(range(1, 21)))`).
struct NativePasswordTests {
    static let stored = "*6C8989366EAF75BB670AD8EA7A7FC1176A95CEF4"
    static let challenge = Array(UInt8(1)...UInt8(20))
    static let answer = bytes("ed2eba38550227c10a0f63ba68b3891be927d122")
    static let sha1OfPassword = bytes("e727d1464ae12436e899a726da5b2f11d8381b26")

    static func bytes(_ hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var i = hex.startIndex
        while i < hex.endIndex {
            let next = hex.index(i, offsetBy: 2)
            out.append(UInt8(hex[i..<next], radix: 16)!)
            i = next
        }
        return out
    }

    @Test func theStoredHashIsSHA1OfSHA1() throws {
        let stored = try #require(NativePassword.storedHash(Self.stored))
        #expect(NativePassword.hash(NativePassword.hash(Array("mypass".utf8))) == stored)
        #expect(NativePassword.storedHash(Self.stored.lowercased()) == stored)
        #expect(NativePassword.storedHash("") == nil)
        #expect(NativePassword.storedHash("6C8989366EAF75BB670AD8EA7A7FC1176A95CEF4") == nil)
        #expect(NativePassword.storedHash("*6C8989366EAF75BB670AD8EA7A7FC1176A95CEFZ") == nil)
    }

    @Test func aCorrectAnswerGivesSHA1OfThePassword() throws {
        let stored = try #require(NativePassword.storedHash(Self.stored))
        #expect(NativePassword.scramble(challenge: Self.challenge, hashedPassword: Self.sha1OfPassword) == Self.answer)
        // what a proxy holding the stored hash learns from the client's answer: enough to log in
        #expect(NativePassword.verify(challenge: Self.challenge, response: Self.answer, doubleHashed: stored) == Self.sha1OfPassword)
    }

    @Test func aWrongAnswerGivesNothing() throws {
        let stored = try #require(NativePassword.storedHash(Self.stored))
        var wrong = Self.answer
        wrong[19] ^= 1
        #expect(NativePassword.verify(challenge: Self.challenge, response: wrong, doubleHashed: stored) == nil)
        #expect(NativePassword.verify(challenge: Array(Self.challenge.reversed()), response: Self.answer, doubleHashed: stored) == nil)
        #expect(NativePassword.verify(challenge: Self.challenge, response: [], doubleHashed: stored) == nil)
        #expect(NativePassword.verify(challenge: Self.challenge, response: Self.answer + [0], doubleHashed: stored) == nil)
    }
}
