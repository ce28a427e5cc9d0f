/// What a statement's text says about session state that no tracker reports: user variables
/// (carried when only set to literals by SET, else the session is pinned), named locks, table
/// locks, HANDLER, XA, temporary tables, SQL-level PREPARE, SQL_CALC_FOUND_ROWS. A lexer, not a
/// parser: it skips strings, quoted identifiers and comments (but reads `/*! ... */`, which the
/// server runs), and errs on the side of pinning.
public struct StatementBackstop: Equatable, Sendable {
    /// Pins the statement sets.
    public var pins: SessionState.Pins = []
    /// Pins the statement clears (UNLOCK TABLES, XA COMMIT / ROLLBACK).
    public var clears: SessionState.Pins = []
    /// User variables set to literals by SET: name (lowercased) and the literal's SQL.
    public var userVariables: [(name: String, literal: String)] = []
    /// `SET NAMES charset COLLATE collation`: the collation (the tracker reports only the
    /// character sets).
    public var namesCollation: String?
    /// The session's own `session_track_*` settings, set to values the text names: narrowing
    /// `session_track_system_variables` from the proxy's `*` to a list is reported by no tracker,
    /// yet decides what the client is to see of each OK from then on.
    public var trackerSettings: [(name: String, value: String)] = []

    public static func == (a: StatementBackstop, b: StatementBackstop) -> Bool {
        a.pins == b.pins && a.clears == b.clears && a.userVariables.elementsEqual(b.userVariables, by: { $0 == $1 })
            && a.namesCollation == b.namesCollation && a.trackerSettings.elementsEqual(b.trackerSettings, by: { $0 == $1 })
    }

    enum Token: Equatable {
        case word(String)  // uppercased
        case userVariable(String)  // lowercased, without '@'
        case systemVariable(String)  // lowercased, without '@@' (and `session.`)
        case literal(String)  // a number, a string, as written
        case symbol(String)
    }

    public init() {}

    /// Reads one COM_QUERY's text (lexed only when it names a user variable or one of the words
    /// the backstop looks for: most statements cost one pass over their bytes and no tokens).
    public init<Bytes: Collection>(_ text: Bytes) where Bytes.Element == UInt8 {
        guard Self.worthReading(text) else { return }
        let tokens = Self.tokens(Array(text))
        classify(tokens)
    }

    /// The words (upper case) a statement must contain, as a word, for anything above to apply.
    static let words: [[UInt8]] = ["LOCK", "UNLOCK", "GET_LOCK", "GET_LOCK_BY_NAME", "HANDLER", "XA", "TEMPORARY", "PREPARE",
                                   "EXECUTE", "DEALLOCATE", "SQL_CALC_FOUND_ROWS", "NAMES", "SESSION_TRACK_SYSTEM_VARIABLES",
                                   "SESSION_TRACK_SCHEMA", "SESSION_TRACK_STATE_CHANGE", "SESSION_TRACK_TRANSACTION_INFO",
                                   "SESSION_TRACK_GTIDS"].map { Array($0.utf8) }

    /// Whether `text` has an `@` or one of `words` (anywhere, strings and comments too). Every
    /// statement of a tracked session passes here: one pass, each word hashed as it is read and
    /// compared with the words' hashes only where its length is one of theirs (a collision only
    /// costs the lexing that follows, which decides).
    static func worthReading<Bytes: Collection>(_ text: Bytes) -> Bool where Bytes.Element == UInt8 {
        if let answer = text.withContiguousStorageIfAvailable({ worthReading(bytes: $0) }) { return answer }
        return Array(text).withUnsafeBufferPointer { worthReading(bytes: $0) }
    }

    private static func worthReading(bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var hash = hashSeed
        var length = 0
        for c in bytes {
            if c == UInt8(ascii: "@") { return true }
            let upper = c >= 0x61 && c <= 0x7A ? c &- 0x20 : c
            if (upper >= 0x41 && upper <= 0x5A) || upper == 0x5F {
                hash = (hash ^ UInt64(upper)) &* hashPrime
                length &+= 1
            } else if length > 0 {
                if length < 64, wordLengths & (1 << UInt64(length)) != 0, wordHashes.contains(hash) { return true }
                hash = hashSeed
                length = 0
            }
        }
        return length > 0 && length < 64 && wordLengths & (1 << UInt64(length)) != 0 && wordHashes.contains(hash)
    }

    // FNV-1a over a word's upper-case bytes
    private static let hashSeed: UInt64 = 0xcbf2_9ce4_8422_2325
    private static let hashPrime: UInt64 = 0x100_0000_01b3
    private static let wordHashes: [UInt64] = words.map { $0.reduce(hashSeed) { ($0 ^ UInt64($1)) &* hashPrime } }
    /// Bit n set: one of `words` has n letters.
    private static let wordLengths: UInt64 = words.reduce(0) { $0 | 1 << UInt64($1.count) }

    private mutating func classify(_ tokens: [Token]) {
        // statements of a multi-statement query, one by one
        var start = 0
        for (i, t) in tokens.enumerated() where t == .symbol(";") {
            statement(tokens[start..<i])
            start = i + 1
        }
        statement(tokens[start...])
    }

    private mutating func statement(_ t: ArraySlice<Token>) {
        guard let first = t.first else { return }
        let words = t.compactMap { if case .word(let w) = $0 { w } else { nil } }
        let has = { (w: String) in words.contains(w) }
        if has("GET_LOCK") || has("GET_LOCK_BY_NAME") { pins.insert(.namedLock) }
        if first == .word("LOCK") || (first == .word("FLUSH") && has("LOCK")) { pins.insert(.tableLock) }
        if first == .word("UNLOCK") { clears.insert(.tableLock) }
        if first == .word("HANDLER") { pins.insert(.handler) }
        if first == .word("XA") {
            if has("START") || has("BEGIN") { pins.insert(.xa) }
            if has("COMMIT") || has("ROLLBACK") { clears.insert(.xa) }
        }
        if has("TEMPORARY") { pins.insert(.temporaryTable) }
        if first == .word("PREPARE") || first == .word("EXECUTE") || first == .word("DEALLOCATE") { pins.insert(.textPrepare) }
        if has("SQL_CALC_FOUND_ROWS") { pins.insert(.lastStatement) }
        if first == .word("SET"), t.dropFirst().first == .word("NAMES"), let c = t.firstIndex(of: .word("COLLATE")), c + 1 < t.endIndex {
            switch t[c + 1] {
            case .word(let name): namesCollation = name.lowercased()
            case .literal(let quoted): namesCollation = String(quoted.dropFirst().dropLast()).lowercased()
            default: break
            }
        }
        if first == .word("SET"), words.contains(where: { $0.hasPrefix("SESSION_TRACK_") })
            || t.contains(where: { if case .systemVariable(let name) = $0 { name.hasPrefix("session_track_") } else { false } }) {
            trackerStatement(t.dropFirst())
        }
        guard t.contains(where: { if case .userVariable = $0 { true } else { false } }) else { return }
        if first == .word("SET") {
            setStatement(t.dropFirst())
        } else if t.contains(.symbol(":=")) || has("INTO") {
            pins.insert(.userVariables)  // assigned somewhere in a statement: what to, only the server knows
        }
    }

    /// A `SET` of the session's own trackers (after the word) pins the session (`session_track`),
    /// and records each value the text names, so that the client's view of each OK follows; any
    /// other value (`DEFAULT`, an expression) leaves the client's view unknown (`untracked`).
    private mutating func trackerStatement(_ t: ArraySlice<Token>) {
        for item in Self.assignments(t) {
            var target = item[...]
            if case .word(let scope)? = target.first, scope == "SESSION" || scope == "LOCAL" { target = target.dropFirst() }
            let name: String
            switch target.first {
            case .word(let word)?: name = word.lowercased()
            case .systemVariable(let variable)?: name = variable
            default: continue
            }
            guard name.hasPrefix("session_track_") else { continue }
            pins.insert(.trackers)
            let rest = Array(target.dropFirst())
            guard rest.count == 2, rest[0] == .symbol("=") || rest[0] == .symbol(":=") else {
                pins.insert(.untracked)
                continue
            }
            switch rest[1] {
            case .literal(let quoted) where quoted.first == "'" || quoted.first == "\"":
                trackerSettings.append((name, String(quoted.dropFirst().dropLast())))
            case .literal(let number):
                trackerSettings.append((name, number))
            case .word(let word) where word != "DEFAULT":
                trackerSettings.append((name, word))
            default:
                pins.insert(.untracked)
            }
        }
    }

    /// The comma-separated assignments of a `SET` (after the word).
    private static func assignments(_ t: ArraySlice<Token>) -> [ArraySlice<Token>] {
        var items: [ArraySlice<Token>] = []
        var depth = 0
        var start = t.startIndex
        for i in t.indices {
            switch t[i] {
            case .symbol("("): depth += 1
            case .symbol(")"): depth -= 1
            case .symbol(",") where depth == 0:
                items.append(t[start..<i])
                start = i + 1
            default: break
            }
        }
        items.append(t[start...])
        return items
    }

    /// `SET @a = literal, @@x = ..., y = ...`: assignments to literals are carried; any other
    /// assignment of a user variable pins.
    private mutating func setStatement(_ t: ArraySlice<Token>) {
        for item in Self.assignments(t) {
            guard case .userVariable(let name)? = item.first else {
                // a system variable; a user variable on the right only reads it
                continue
            }
            let rest = Array(item.dropFirst())
            if rest.count == 2, rest[0] == .symbol("=") || rest[0] == .symbol(":="), case .literal(let value) = rest[1] {
                userVariables.append((name, value))
            } else if rest.count == 3, rest[0] == .symbol("=") || rest[0] == .symbol(":="), rest[1] == .symbol("-"),
                      case .literal(let value) = rest[2], value.first?.isNumber == true {
                userVariables.append((name, "-" + value))
            } else if rest.count == 2, rest[0] == .symbol("="), rest[1] == .word("NULL") {
                userVariables.append((name, "NULL"))
            } else {
                pins.insert(.userVariables)
            }
        }
    }

    // MARK: lexing

    static func tokens(_ s: [UInt8]) -> [Token] {
        var out: [Token] = []
        var i = 0
        let n = s.count
        func isWordByte(_ c: UInt8) -> Bool {
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || c == 0x24 || c >= 0x80
        }
        while i < n {
            let c = s[i]
            switch c {
            case 0x20, 0x09, 0x0A, 0x0D, 0x0C:
                i += 1
            case UInt8(ascii: "#"):
                while i < n && s[i] != 0x0A { i += 1 }
            case UInt8(ascii: "-") where i + 1 < n && s[i + 1] == UInt8(ascii: "-") && (i + 2 >= n || s[i + 2] <= 0x20):
                while i < n && s[i] != 0x0A { i += 1 }
            case UInt8(ascii: "/") where i + 1 < n && s[i + 1] == UInt8(ascii: "*"):
                if i + 2 < n && (s[i + 2] == UInt8(ascii: "!") || s[i + 2] == UInt8(ascii: "M")) {
                    // an executable comment: its text runs (after an optional version number)
                    i += 3
                    while i < n && s[i] >= 0x30 && s[i] <= 0x39 { i += 1 }
                    continue
                }
                i += 2
                while i + 1 < n && !(s[i] == UInt8(ascii: "*") && s[i + 1] == UInt8(ascii: "/")) { i += 1 }
                i += 2
            case UInt8(ascii: "*") where i + 1 < n && s[i + 1] == UInt8(ascii: "/"):
                i += 2  // the end of an executable comment
            case UInt8(ascii: "'"), UInt8(ascii: "\""):
                let start = i
                i = skipQuoted(s, i, quote: c)
                out.append(.literal(String(decoding: s[start..<min(i, n)], as: UTF8.self)))
            case UInt8(ascii: "`"):
                i = skipQuoted(s, i, quote: c)
                out.append(.word("`"))
            case UInt8(ascii: "@"):
                if i + 1 < n && s[i + 1] == UInt8(ascii: "@") {
                    i += 2
                    let start = i
                    while i < n && (isWordByte(s[i]) || s[i] == UInt8(ascii: ".")) { i += 1 }
                    var name = String(decoding: s[start..<i], as: UTF8.self).lowercased()
                    for scope in ["session.", "local."] where name.hasPrefix(scope) { name.removeFirst(scope.count) }
                    out.append(.systemVariable(name))
                } else {
                    i += 1
                    var start = i
                    var end: Int
                    if i < n && (s[i] == UInt8(ascii: "'") || s[i] == UInt8(ascii: "\"") || s[i] == UInt8(ascii: "`")) {
                        let quote = s[i]
                        i = skipQuoted(s, i, quote: quote)
                        start += 1
                        end = max(start, min(i, n) - 1)
                        let inner = Array(s[start..<end])
                        var name: [UInt8] = []
                        var k = 0
                        while k < inner.count {  // a doubled quote stands for one
                            name.append(inner[k])
                            k += inner[k] == quote && k + 1 < inner.count && inner[k + 1] == quote ? 2 : 1
                        }
                        out.append(.userVariable(String(decoding: name, as: UTF8.self).lowercased()))
                        continue
                    }
                    while i < n && (isWordByte(s[i]) || s[i] == UInt8(ascii: ".")) { i += 1 }
                    end = i
                    out.append(.userVariable(String(decoding: s[start..<end], as: UTF8.self).lowercased()))
                }
            case UInt8(ascii: ":") where i + 1 < n && s[i + 1] == UInt8(ascii: "="):
                out.append(.symbol(":="))
                i += 2
            case 0x30...0x39, UInt8(ascii: "."):
                let start = i
                while i < n && (isWordByte(s[i]) || s[i] == UInt8(ascii: ".")) { i += 1 }
                if i == start { i += 1 }
                out.append(.literal(String(decoding: s[start..<i], as: UTF8.self)))
            default:
                if isWordByte(c) {
                    let start = i
                    while i < n && isWordByte(s[i]) { i += 1 }
                    // X'..', B'..', N'..', _charset'..': one literal
                    if i < n && s[i] == UInt8(ascii: "'") {
                        i = skipQuoted(s, i, quote: s[i])
                        out.append(.literal(String(decoding: s[start..<min(i, n)], as: UTF8.self)))
                    } else {
                        out.append(.word(String(decoding: s[start..<i], as: UTF8.self).uppercased()))
                    }
                } else {
                    out.append(.symbol(String(UnicodeScalar(c))))
                    i += 1
                }
            }
        }
        return out
    }

    /// The index after a quoted run starting at `i` (doubled quotes and backslash escapes inside).
    private static func skipQuoted(_ s: [UInt8], _ i: Int, quote: UInt8) -> Int {
        var j = i + 1
        while j < s.count {
            if s[j] == UInt8(ascii: "\\") && quote != UInt8(ascii: "`") { j += 2; continue }
            if s[j] == quote {
                if j + 1 < s.count && s[j + 1] == quote { j += 2; continue }
                return j + 1
            }
            j += 1
        }
        return s.count
    }
}
