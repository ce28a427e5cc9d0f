/// Passwords in statements, masked before the statement is written anywhere (the query log):
/// `CREATE USER … IDENTIFIED BY '…'`, `ALTER USER`, `GRANT … IDENTIFIED BY`, `IDENTIFIED VIA …
/// USING '…'`, `PASSWORD('…')`, `SET PASSWORD … = '…'`, `CHANGE MASTER … MASTER_PASSWORD = '…'`,
/// `START SLAVE … PASSWORD = '…'`, `CREATE SERVER … OPTIONS (PASSWORD '…')`. Each such quoted
/// constant becomes `<secret>`, as MySQL's own logs write it; the rest of the statement is kept as
/// sent. Code in `/*! */` and `/*M! */` comments is read as code (the server runs it); other
/// comments are skipped. A constant cut off by the end of the text is masked to the end.
enum StatementSecrets {
    static let mask: [UInt8] = Array("<secret>".utf8)

    /// The statement with its secrets masked, or nil when it has none (the usual case, found
    /// without tokenizing: the text holds neither PASSWORD nor IDENTIFIED).
    static func masked(_ text: [UInt8]) -> [UInt8]? {
        guard mentionsSecrets(text) else { return nil }
        let ranges = secretRanges(text)
        guard !ranges.isEmpty else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(text.count)
        var position = 0
        for range in ranges {
            out.append(contentsOf: text[position..<range.lowerBound])
            out.append(contentsOf: mask)
            position = range.upperBound
        }
        out.append(contentsOf: text[position...])
        return out
    }

    private static let markers: [[UInt8]] = [Array("password".utf8), Array("identified".utf8)]

    static func mentionsSecrets(_ text: [UInt8]) -> Bool {
        guard text.count >= 8 else { return false }
        for start in 0...(text.count - 8) where text[start] | 0x20 == UInt8(ascii: "p") || text[start] | 0x20 == UInt8(ascii: "i") {
            for marker in markers where start + marker.count <= text.count {
                var k = 0
                while k < marker.count && text[start + k] | 0x20 == marker[k] { k += 1 }
                if k == marker.count { return true }
            }
        }
        return false
    }

    /// Words after which the next quoted constant (past `(` and `=`) is a password.
    private static let introducers: Set<String> = ["PASSWORD", "OLD_PASSWORD", "MASTER_PASSWORD", "SOURCE_PASSWORD"]

    /// The byte ranges of the quoted constants that hold passwords, quotes included, in order.
    static func secretRanges(_ s: [UInt8]) -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        let n = s.count
        var i = 0
        var words: [String] = []          // the statement's words so far, upper-cased
        var lastWord: String?             // the word before the next constant, if only ( and = came after it
        var previousWord: String?         // the word before lastWord
        var identified = false            // IDENTIFIED was seen: USING '...' is a plugin's password
        var afterEquals = false           // an = was seen (SET PASSWORD [FOR user] = ...)
        func isWordByte(_ c: UInt8) -> Bool {
            (c | 0x20 >= 97 && c | 0x20 <= 122) || (c >= 48 && c <= 57) || c == 95 || c == 36 || c >= 0x80
        }
        while i < n {
            let c = s[i]
            if c == 32 || (c >= 9 && c <= 13) { i += 1; continue }
            // comments: /*! and /*M! hold code; the others are skipped
            if c == UInt8(ascii: "/") && i + 1 < n && s[i + 1] == UInt8(ascii: "*") {
                if i + 2 < n && (s[i + 2] == UInt8(ascii: "!") || (s[i + 2] | 0x20 == UInt8(ascii: "m") && i + 3 < n && s[i + 3] == UInt8(ascii: "!"))) {
                    i += s[i + 2] == UInt8(ascii: "!") ? 3 : 4
                    while i < n && s[i] >= 48 && s[i] <= 57 { i += 1 }
                    continue
                }
                i += 2
                while i + 1 < n && !(s[i] == UInt8(ascii: "*") && s[i + 1] == UInt8(ascii: "/")) { i += 1 }
                i += 2
                continue
            }
            if c == UInt8(ascii: "*") && i + 1 < n && s[i + 1] == UInt8(ascii: "/") { i += 2; continue }  // the end of /*! code
            if c == UInt8(ascii: "#") || (c == UInt8(ascii: "-") && i + 2 < n && s[i + 1] == UInt8(ascii: "-") && (s[i + 2] == 32 || (s[i + 2] >= 9 && s[i + 2] <= 13))) {
                while i < n && s[i] != 10 { i += 1 }
                continue
            }
            if c == UInt8(ascii: "'") || c == UInt8(ascii: "\"") || c == UInt8(ascii: "`") {
                let start = i
                i += 1
                while i < n {
                    if s[i] == UInt8(ascii: "\\") && c != UInt8(ascii: "`") { i += 2; continue }
                    if s[i] == c {
                        if i + 1 < n && s[i + 1] == c { i += 2; continue }
                        break
                    }
                    i += 1
                }
                i = min(n, i + 1)
                guard c != UInt8(ascii: "`") else { lastWord = nil; continue }
                if isSecret(lastWord: lastWord, previousWord: previousWord, identified: identified, afterEquals: afterEquals, words: words) {
                    ranges.append(start..<i)
                }
                lastWord = nil
                continue
            }
            if isWordByte(c) {
                let start = i
                while i < n && isWordByte(s[i]) { i += 1 }
                guard i - start <= 32 else { lastWord = nil; continue }
                let word = String(decoding: s[start..<i].map { $0 >= 97 && $0 <= 122 ? $0 - 32 : $0 }, as: UTF8.self)
                if word == "IDENTIFIED" { identified = true }
                previousWord = lastWord
                lastWord = word
                if words.count < 2 { words.append(word) }
                continue
            }
            // ( and = may stand between the word and its constant; anything else ends the clause
            if c != UInt8(ascii: "(") && c != UInt8(ascii: "=") { lastWord = nil; previousWord = nil }
            if c == UInt8(ascii: "=") { afterEquals = true }
            if c == UInt8(ascii: ";") { words = []; identified = false; afterEquals = false }
            i += 1
        }
        return ranges
    }

    private static func isSecret(lastWord: String?, previousWord: String?, identified: Bool, afterEquals: Bool, words: [String]) -> Bool {
        if words.count == 2 && words[0] == "SET" && words[1] == "PASSWORD" && afterEquals { return true }
        guard let lastWord else { return false }
        if introducers.contains(lastWord) { return true }
        if lastWord == "BY" && previousWord == "IDENTIFIED" { return true }
        if lastWord == "USING" && identified { return true }
        return false
    }
}
