import Crypto

/// mysql_native_password. The server stores SHA1(SHA1(password)) (`*` and 40 hex digits in
/// `authentication_string`); a client proves it knows SHA1(password) by answering a 20-byte
/// challenge with SHA1(password) XOR SHA1(challenge + SHA1(SHA1(password))). Whoever holds the
/// stored hash and sees a correct answer learns SHA1(password), which is all a login to a server
/// needs: how a proxy that verifies clients itself logs them into servers (issue 24).
public enum NativePassword {
    static func sha1(_ parts: [UInt8]...) -> [UInt8] {
        var hasher = Insecure.SHA1()
        for p in parts { hasher.update(data: p) }
        return Array(hasher.finalize())
    }

    /// SHA1(password).
    public static func hash(_ password: [UInt8]) -> [UInt8] { sha1(password) }

    /// The client's answer to `challenge`: SHA1(password) XOR SHA1(challenge + SHA1(SHA1(password))).
    public static func scramble(challenge: [UInt8], hashedPassword: [UInt8]) -> [UInt8] {
        let mask = sha1(challenge, sha1(hashedPassword))
        return zip(hashedPassword, mask).map { $0 ^ $1 }
    }

    /// SHA1(password) recovered from an answer, given SHA1(SHA1(password)).
    public static func unscramble(challenge: [UInt8], response: [UInt8], doubleHashed: [UInt8]) -> [UInt8] {
        let mask = sha1(challenge, doubleHashed)
        return zip(response, mask).map { $0 ^ $1 }
    }

    public static func check(challenge: [UInt8], response: [UInt8], doubleHashed: [UInt8]) -> Bool {
        verify(challenge: challenge, response: response, doubleHashed: doubleHashed) != nil
    }

    /// SHA1(password) when `response` answers `challenge` for the stored SHA1(SHA1(password)),
    /// else nil. Compared without an early exit.
    public static func verify(challenge: [UInt8], response: [UInt8], doubleHashed: [UInt8]) -> [UInt8]? {
        guard response.count == 20, doubleHashed.count == 20 else { return nil }
        let candidate = unscramble(challenge: challenge, response: response, doubleHashed: doubleHashed)
        return zip(sha1(candidate), doubleHashed).reduce(0) { $0 | ($1.0 ^ $1.1) } == 0 ? candidate : nil
    }

    /// The 20 bytes of a stored `*`-and-hex authentication string; nil for anything else.
    public static func storedHash(_ authenticationString: String) -> [UInt8]? {
        let text = Array(authenticationString.utf8)
        guard text.count == 41, text[0] == UInt8(ascii: "*") else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(20)
        var i = 1
        while i < 41 {
            guard let high = hexValue(text[i]), let low = hexValue(text[i + 1]) else { return nil }
            bytes.append(high << 4 | low)
            i += 2
        }
        return bytes
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
