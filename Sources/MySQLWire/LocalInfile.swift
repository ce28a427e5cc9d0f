/// Which commands may be answered with a LOCAL INFILE request (0xFB, "send me this file").
///
/// A server sends one in answer to `LOAD DATA LOCAL INFILE` or `LOAD XML LOCAL INFILE`, and a
/// client library that allows local files answers it with whatever file it names. A rogue server,
/// or whoever sits on the server link, can send one in answer to any statement and read the
/// client's files. The proxy passes the request on only where the statement sent can ask for one:
/// a text statement whose first word is LOAD (or EXECUTE, for a statement PREPAREd from one), or a
/// prepared statement prepared from such a text. The word is read off the packet's first bytes
/// (past whitespace and comments; the code in `/*! */` counts); a statement whose first word lies
/// beyond them is not taken to ask for a file.
public enum LocalInfile {
    /// Whether the statement of a COM_QUERY or COM_STMT_PREPARE packet, whose first bytes
    /// (command byte included) `prefix` holds, may be answered with a LOCAL INFILE request.
    /// `payloadLength`: the packet's, which tells whether the prefix is all of it.
    public static func mayAskForFile(_ prefix: PacketPrefix, payloadLength: Int) -> Bool {
        let whole = prefix.count >= payloadLength
        let n = prefix.count
        var i = 1
        func byte(_ k: Int) -> UInt8 { prefix[k] ?? 0 }
        while i < n {
            let c = byte(i)
            if c == 32 || (c >= 9 && c <= 13) || c == UInt8(ascii: "(") { i += 1; continue }
            if c == UInt8(ascii: "/") && byte(i + 1) == UInt8(ascii: "*") {
                // /*! and /*M! hold code: read on past the marker and its version number
                if byte(i + 2) == UInt8(ascii: "!") || (byte(i + 2) | 0x20 == UInt8(ascii: "m") && byte(i + 3) == UInt8(ascii: "!")) {
                    i += byte(i + 2) == UInt8(ascii: "!") ? 3 : 4
                    while i < n && byte(i) >= 48 && byte(i) <= 57 { i += 1 }
                    continue
                }
                i += 2
                while i + 1 < n && !(byte(i) == UInt8(ascii: "*") && byte(i + 1) == UInt8(ascii: "/")) { i += 1 }
                guard i + 1 < n else { return false }
                i += 2
                continue
            }
            if c == UInt8(ascii: "#") || (c == UInt8(ascii: "-") && byte(i + 1) == UInt8(ascii: "-") && (byte(i + 2) == 32 || (byte(i + 2) >= 9 && byte(i + 2) <= 13))) {
                while i < n && byte(i) != 10 { i += 1 }
                guard i < n else { return false }
                continue
            }
            return startsWord("LOAD", at: i, prefix, whole: whole) || startsWord("EXECUTE", at: i, prefix, whole: whole)
        }
        return false
    }

    /// Whether `word` (upper case) stands at `index`, whole (a non-letter, or the end of the
    /// packet, after it: a word cut off by the end of the prefix does not count).
    private static func startsWord(_ word: String, at index: Int, _ prefix: PacketPrefix, whole: Bool) -> Bool {
        var k = index
        for letter in word.utf8 {
            guard let c = prefix[k], c & 0xDF == letter else { return false }
            k += 1
        }
        guard let next = prefix[k] else { return whole }
        return !((next | 0x20 >= 97 && next | 0x20 <= 122) || (next >= 48 && next <= 57) || next == 95 || next == 36 || next >= 0x80)
    }
}
