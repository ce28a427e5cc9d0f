/// Lua 5.1 source that Lua 5.4 refuses, made acceptable without changing what it means: an escape
/// sequence 5.1 did not know in a quoted string (`"^(%d+)\.(%d+)"`, written for `string.match`)
/// meant the character itself there, and is an error ("invalid escape sequence") in 5.4. The
/// backslash of such an escape is dropped. Everything else, valid 5.4 source above all, is left
/// byte for byte as it is: the scan knows comments, long strings and long comments, and the
/// escapes 5.4 has (`\x`, `\z` and `\u{...}` keep their 5.4 meaning where they are well formed).
enum Lua51Source {
    /// The source with 5.1's unknown escapes made literal, or nil when there are none.
    static func rewrite(_ source: [UInt8]) -> [UInt8]? {
        var drops: [Int] = []  // indexes of backslashes to drop
        var i = 0
        let n = source.count
        @inline(__always) func at(_ k: Int) -> UInt8 { k < n ? source[k] : 0 }

        /// The level of a long bracket opening at `k` (`[[` is 0, `[==[` is 2), or nil.
        func longBracket(_ k: Int) -> Int? {
            guard at(k) == UInt8(ascii: "[") else { return nil }
            var j = k + 1
            while at(j) == UInt8(ascii: "=") { j += 1 }
            return at(j) == UInt8(ascii: "[") ? j - k - 1 : nil
        }
        /// Skips a long string or comment whose opening bracket (of `level`) starts at `k`.
        func skipLong(_ k: Int, level: Int) -> Int {
            var j = k + level + 2
            while j < n {
                if source[j] == UInt8(ascii: "]") {
                    var e = j + 1
                    while at(e) == UInt8(ascii: "=") { e += 1 }
                    if at(e) == UInt8(ascii: "]") && e - j - 1 == level { return e + 1 }
                }
                j += 1
            }
            return n
        }
        func isHex(_ c: UInt8) -> Bool {
            (c >= 48 && c <= 57) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102)
        }

        while i < n {
            let c = source[i]
            if c == UInt8(ascii: "-") && at(i + 1) == UInt8(ascii: "-") {
                if let level = longBracket(i + 2) {
                    i = skipLong(i + 2, level: level)
                } else {
                    while i < n && source[i] != UInt8(ascii: "\n") { i += 1 }
                }
                continue
            }
            if let level = longBracket(i) {
                i = skipLong(i, level: level)
                continue
            }
            guard c == UInt8(ascii: "\"") || c == UInt8(ascii: "'") else {
                i += 1
                continue
            }
            // a quoted string
            let quote = c
            i += 1
            while i < n && source[i] != quote && source[i] != UInt8(ascii: "\n") {
                guard source[i] == UInt8(ascii: "\\") else {
                    i += 1
                    continue
                }
                let e = at(i + 1)
                switch e {
                case UInt8(ascii: "\n"), UInt8(ascii: "\r"):
                    // an escaped line break: "\r\n" and "\n\r" count as one
                    let other = e == UInt8(ascii: "\n") ? UInt8(ascii: "\r") : UInt8(ascii: "\n")
                    i += at(i + 2) == other ? 3 : 2
                case UInt8(ascii: "a"), UInt8(ascii: "b"), UInt8(ascii: "f"), UInt8(ascii: "n"), UInt8(ascii: "r"),
                     UInt8(ascii: "t"), UInt8(ascii: "v"), UInt8(ascii: "\\"), UInt8(ascii: "\""), UInt8(ascii: "'"),
                     UInt8(ascii: "z"), 48...57:
                    i += 2
                case UInt8(ascii: "x") where isHex(at(i + 2)) && isHex(at(i + 3)):
                    i += 4
                case UInt8(ascii: "u") where at(i + 2) == UInt8(ascii: "{"):
                    i += 3
                case 0 where i + 1 >= n:
                    i += 1
                default:
                    drops.append(i)  // 5.1: the character itself
                    i += 2
                }
            }
            i += 1  // the closing quote (or the end of the line: 5.4 reports the unfinished string)
        }
        guard !drops.isEmpty else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(n - drops.count)
        var from = 0
        for d in drops {
            out.append(contentsOf: source[from..<d])
            from = d + 1
        }
        out.append(contentsOf: source[from...])
        return out
    }
}
