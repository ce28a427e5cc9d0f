/// MySQL Proxy's SQL tokenizer (`mysql.tokenizer`, `proxy.tokenize`), written anew with the same
/// token names, ids and texts, so scripts that look at `token_name`, `token_id` or `text` behave
/// as they did:
///
/// - quoted strings (`'...'`, `"..."`) are `TK_STRING` and backquoted names `TK_LITERAL`, both
///   without their quotes; a doubled quote becomes one, backslash escapes are kept as written;
/// - `/* */` comments are `TK_COMMENT` and `/*! */` ones `TK_COMMENT_MYSQL`, with the text between
///   the markers; `-- ` and `#` comments are `TK_COMMENT` with the rest of the line;
/// - names are split at dots (`db.t.c` is three names and two `TK_DOT`s); a name is a keyword
///   (`TK_SQL_SELECT`, ...) when it is one, otherwise `TK_LITERAL`, or `TK_FUNCTION` when `(`
///   follows it directly; `@var` and `@@var` are literals;
/// - `12` is `TK_INTEGER`; `1.5`, `.5`, `1e3` and `1.5e-3` are `TK_FLOAT`; `1e` is a literal.
///
/// Bytes of 0x80 and above count as letters, so UTF-8 names stay whole.
public enum SQLTokenizer {
    public struct Token: Equatable, Sendable {
        public var id: Int
        public var text: [UInt8]
        public var name: String { SQLTokenizer.names[id] }
        public var string: String { String(decoding: text, as: UTF8.self) }

        public init(id: Int, text: [UInt8]) {
            self.id = id
            self.text = text
        }
    }

    /// Token names, indexed by token id (MySQL Proxy's order).
    public static let names: [String] = {
        var names = ["TK_UNKNOWN", "TK_LE", "TK_GE", "TK_LT", "TK_GT", "TK_EQ", "TK_NE", "TK_STRING", "TK_COMMENT",
                     "TK_LITERAL", "TK_FUNCTION", "TK_INTEGER", "TK_FLOAT", "TK_DOT", "TK_COMMA", "TK_ASSIGN",
                     "TK_OBRACE", "TK_CBRACE", "TK_SEMICOLON", "TK_STAR", "TK_PLUS", "TK_MINUS", "TK_DIV",
                     "TK_BITWISE_AND", "TK_BITWISE_OR", "TK_BITWISE_XOR", "TK_LOGICAL_AND", "TK_LOGICAL_OR"]
        names += keywords.map { "TK_SQL_" + $0 }
        names += ["TK_COMMENT_MYSQL", "TK_LAST_TOKEN"]
        return names
    }()

    public static func id(_ name: String) -> Int? { ids[name] }

    private static let keywords: [String] = """
        ACCESSIBLE ACTION ADD ALL ALTER ANALYZE AND AS ASC ASENSITIVE BEFORE BETWEEN BIGINT BINARY BIT BLOB
        BOTH BY CALL CASCADE CASE CHANGE CHAR CHARACTER CHECK COLLATE COLUMN CONDITION CONSTRAINT CONTINUE
        CONVERT CREATE CROSS CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER CURSOR DATABASE
        DATABASES DATE DAY_HOUR DAY_MICROSECOND DAY_MINUTE DAY_SECOND DEC DECIMAL DECLARE DEFAULT DELAYED
        DELETE DESC DESCRIBE DETERMINISTIC DISTINCT DISTINCTROW DIV DOUBLE DROP DUAL EACH ELSE ELSEIF
        ENCLOSED ENUM ESCAPED EXISTS EXIT EXPLAIN FALSE FETCH FLOAT FLOAT4 FLOAT8 FOR FORCE FOREIGN FROM
        FULLTEXT GRANT GROUP HAVING HIGH_PRIORITY HOUR_MICROSECOND HOUR_MINUTE HOUR_SECOND IF IGNORE IN
        INDEX INFILE INNER INOUT INSENSITIVE INSERT INT INT1 INT2 INT3 INT4 INT8 INTEGER INTERVAL INTO IS
        ITERATE JOIN KEY KEYS KILL LEADING LEAVE LEFT LIKE LIMIT LINEAR LINES LOAD LOCALTIME LOCALTIMESTAMP
        LOCK LONG LONGBLOB LONGTEXT LOOP LOW_PRIORITY MASTER_SSL_VERIFY_SERVER_CERT MATCH MEDIUMBLOB
        MEDIUMINT MEDIUMTEXT MIDDLEINT MINUTE_MICROSECOND MINUTE_SECOND MOD MODIFIES NATURAL NO NOT
        NO_WRITE_TO_BINLOG NULL NUMERIC ON OPTIMIZE OPTION OPTIONALLY OR ORDER OUT OUTER OUTFILE PRECISION
        PRIMARY PROCEDURE PURGE RANGE READ READ_ONLY READS READ_WRITE REAL REFERENCES REGEXP RELEASE RENAME
        REPEAT REPLACE REQUIRE RESTRICT RETURN REVOKE RIGHT RLIKE SCHEMA SCHEMAS SECOND_MICROSECOND SELECT
        SENSITIVE SEPARATOR SET SHOW SMALLINT SPATIAL SPECIFIC SQL SQL_BIG_RESULT SQL_CALC_FOUND_ROWS
        SQLEXCEPTION SQL_SMALL_RESULT SQLSTATE SQLWARNING SSL STARTING STRAIGHT_JOIN TABLE TERMINATED TEXT
        THEN TIME TIMESTAMP TINYBLOB TINYINT TINYTEXT TO TRAILING TRIGGER TRUE UNDO UNION UNIQUE UNLOCK
        UNSIGNED UPDATE USAGE USE USING UTC_DATE UTC_TIME UTC_TIMESTAMP VALUES VARBINARY VARCHAR
        VARCHARACTER VARYING WHEN WHERE WHILE WITH WRITE X509 XOR YEAR_MONTH ZEROFILL
        """.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)

    private static let ids: [String: Int] = Dictionary(uniqueKeysWithValues: names.enumerated().map { ($1, $0) })
    private static let keywordIDs: [[UInt8]: Int] = {
        var map: [[UInt8]: Int] = [:]
        for (i, k) in keywords.enumerated() { map[Array(k.utf8)] = 28 + i }
        return map
    }()

    static let unknown = 0, le = 1, ge = 2, lt = 3, gt = 4, eq = 5, ne = 6, string = 7, comment = 8
    static let literal = 9, function = 10, integer = 11, float = 12, dot = 13, comma = 14, assign = 15
    static let obrace = 16, cbrace = 17, semicolon = 18, star = 19, plus = 20, minus = 21, div = 22
    static let bitAnd = 23, bitOr = 24, bitXor = 25, logicalAnd = 26, logicalOr = 27
    static var commentMySQL: Int { names.count - 2 }

    /// The id of a name: its keyword's, or `TK_LITERAL`.
    public static func keywordID(_ name: some Collection<UInt8>) -> Int {
        guard name.count <= 32 else { return literal }
        var upper: [UInt8] = []
        upper.reserveCapacity(name.count)
        for c in name { upper.append(c >= 97 && c <= 122 ? c - 32 : c) }
        return keywordIDs[upper] ?? literal
    }

    public static func tokenize(_ text: String) -> [Token] {
        var copy = text
        return copy.withUTF8 { tokenize(UnsafeRawBufferPointer($0)) }
    }

    public static func tokenize(_ s: UnsafeRawBufferPointer) -> [Token] {
        tokenize(s, limit: .max) ?? []
    }

    /// The tokens of `s`, or nil once there would be more than `limit` (a bound on what a script's
    /// input may cost).
    public static func tokenize(_ s: UnsafeRawBufferPointer, limit: Int) -> [Token]? {
        var tokens: [Token] = []
        let n = s.count
        var i = 0

        func isDigit(_ c: UInt8) -> Bool { c >= 48 && c <= 57 }
        func isAlpha(_ c: UInt8) -> Bool { (c | 0x20) >= 97 && (c | 0x20) <= 122 || c == 95 || c == 64 || c >= 0x80 }
        func isSpace(_ c: UInt8) -> Bool { c == 32 || (c >= 9 && c <= 13) }
        func at(_ k: Int) -> UInt8 { k < n ? s[k] : 0 }
        func bytes(_ a: Int, _ b: Int) -> [UInt8] { Array(s[a..<b]) }
        func add(_ id: Int, _ a: Int, _ b: Int) { tokens.append(Token(id: id, text: bytes(a, b))) }

        // Lengths of the longest match of each number/name pattern at `p` (0: no match).
        func digits(_ p: Int) -> Int { var k = p; while k < n && isDigit(s[k]) { k += 1 }; return k - p }
        func scientific(_ p: Int) -> Int {
            func exponentFrom(_ k: Int) -> Int {      // [eE][-+]?[0-9]+ at k
                guard k < n, s[k] | 0x20 == 101 else { return 0 }
                var e = k + 1
                if e < n && (s[e] == 43 || s[e] == 45) { e += 1 }
                let d = digits(e)
                return d > 0 ? e + d - k : 0
            }
            var best = 0
            let lead = digits(p)
            if lead > 0 { let e = exponentFrom(p + lead); if e > 0 { best = lead + e } }
            if at(p + lead) == 46 {
                let frac = digits(p + lead + 1)
                if frac > 0 { let e = exponentFrom(p + lead + 1 + frac); if e > 0 { best = max(best, lead + 1 + frac + e) } }
            }
            return best
        }
        func namePart(_ p: Int) -> Int {             // [0-9]*[alpha_@][alnum_@]*
            var k = p + digits(p)
            guard k < n, isAlpha(s[k]) else { return 0 }
            k += 1
            while k < n && (isAlpha(s[k]) || isDigit(s[k])) { k += 1 }
            return k - p
        }

        while i < n {
            if tokens.count >= limit { return nil }
            let c = s[i]
            if isSpace(c) { i += 1; continue }

            // comments
            if c == 45 && at(i + 1) == 45 && (at(i + 2) == 10 || (at(i + 2) == 13 && at(i + 3) == 10)) {
                tokens.append(Token(id: comment, text: []))
                i += at(i + 2) == 10 ? 3 : 4
                continue
            }
            if (c == 45 && at(i + 1) == 45 && (at(i + 2) == 32 || at(i + 2) == 9)) || c == 35 {
                let start = c == 35 ? i + 1 : i + 3
                var end = start
                while end < n && s[end] != 10 { end += 1 }
                var textEnd = end
                if textEnd > start && s[textEnd - 1] == 13 && end < n { textEnd -= 1 }
                add(comment, start, textEnd)
                i = min(n, end + 1)
                continue
            }
            if c == 47 && at(i + 1) == 42 {
                let mysql = at(i + 2) == 33
                let start = i + (mysql ? 3 : 2)
                var end = start
                while end < n && !(s[end] == 42 && at(end + 1) == 47) { end += 1 }
                add(mysql ? commentMySQL : comment, start, end)
                i = min(n, end + 2)
                continue
            }

            // quoted strings and names
            if c == 39 || c == 34 || c == 96 {
                var text: [UInt8] = []
                var k = i + 1
                while k < n {
                    let d = s[k]
                    if d == 92 && k + 1 < n {          // a backslash escape, kept as written
                        text.append(d); text.append(s[k + 1]); k += 2
                    } else if d == c {
                        if at(k + 1) == c { text.append(c); k += 2 } else { k += 1; break }
                    } else {
                        text.append(d); k += 1
                    }
                }
                tokens.append(Token(id: c == 96 ? literal : string, text: text))
                i = k
                continue
            }

            // numbers and names: the longest match wins, ties go to the earlier rule
            if isDigit(c) || isAlpha(c) || (c == 46 && isDigit(at(i + 1))) {
                let sci = scientific(i)
                var parts: [Range<Int>] = []
                var k = i
                let first = namePart(k)
                if first > 0 {
                    parts.append(k..<(k + first))
                    k += first
                    while parts.count < 3, at(k) == 46 {
                        let next = namePart(k + 1)
                        guard next > 0 else { break }
                        parts.append((k + 1)..<(k + 1 + next))
                        k += 1 + next
                    }
                }
                let nameLen = k - i
                let isFunction = nameLen > 0 && at(k) == 40
                let nameMatch = nameLen + (isFunction ? 1 : 0)
                let intLen = digits(i)
                var floatLen = 0
                if at(i + intLen) == 46 { let f = digits(i + intLen + 1); if f > 0 { floatLen = intLen + 1 + f } }

                if sci > 0 && sci >= nameMatch && sci >= floatLen {
                    add(float, i, i + sci); i += sci
                } else if nameLen > 0 && nameMatch >= intLen && nameMatch >= floatLen {
                    for (index, part) in parts.enumerated() {
                        if index > 0 { tokens.append(Token(id: dot, text: [46])) }
                        let last = index == parts.count - 1
                        add(last && isFunction ? function : keywordID(s[part]), part.lowerBound, part.upperBound)
                    }
                    i += nameLen
                } else if floatLen > intLen {
                    add(float, i, i + floatLen); i += floatLen
                } else if intLen > 0 {
                    add(integer, i, i + intLen); i += intLen
                } else {
                    add(unknown, i, i + 1); i += 1
                }
                continue
            }

            // operators
            let two: Int? = switch (c, at(i + 1)) {
            case (60, 61): le
            case (62, 61): ge
            case (60, 62), (33, 61): ne
            case (58, 61): assign
            case (38, 38): logicalAnd
            case (124, 124): logicalOr
            default: nil
            }
            if let two { add(two, i, i + 2); i += 2; continue }
            let one: Int = switch c {
            case 44: comma
            case 46: dot
            case 60: lt
            case 62: gt
            case 61: eq
            case 40: obrace
            case 41: cbrace
            case 59: semicolon
            case 42: star
            case 43: plus
            case 47: div
            case 45: minus
            case 38: bitAnd
            case 124: bitOr
            case 94: bitXor
            default: unknown
            }
            add(one, i, i + 1)
            i += 1
        }
        return tokens
    }
}

extension SQLTokenizer {
    /// Words that start a statement although the tokenizer sees them as names, and the word that
    /// may follow each.
    private static let statementWords: [String: String?] = ["COMMIT": nil, "ROLLBACK": nil, "BEGIN": nil, "START": "TRANSACTION"]

    /// The statement with comments removed, names quoted, constants (hexadecimal and bit
    /// literals too, also inside `/*! */` code) turned into `?` and keywords in upper case: one
    /// text for every statement of the same shape, for the query log. (`proxy.tokenizer`'s
    /// `normalize`, in Lua, keeps `/*! */` code verbatim, as MySQL Proxy's does.)
    public static func normalize(_ tokens: [Token]) -> String {
        var out = ""
        var words = 0
        var first: String?
        var index = tokens.startIndex
        while index < tokens.endIndex {
            let token = tokens[index]
            index += 1
            switch token.id {
            case comment:
                continue
            case commentMySQL:
                // Code the server runs: normalised like the rest, behind its version number.
                let version = token.text.prefix { $0 >= 48 && $0 <= 57 }
                let inner = token.text.dropFirst(version.count).withUnsafeBytes { normalize(tokenize($0)) }
                out += "/*!" + String(decoding: version, as: UTF8.self) + " " + inner + " */ "
            case literal:
                let text = token.string
                let upper = text.uppercased()
                if isNumberLiteral(token.text) {
                    out += "? "   // 0x0A, 0b101
                } else if isStringPrefix(token.text), index < tokens.endIndex, tokens[index].id == string {
                    out += "? "   // X'0A', B'101', N'...', _utf8mb4'...'
                    index += 1
                } else if text.hasPrefix("@") {
                    out += text + " "
                } else if words == 0, statementWords[upper] != nil {
                    out += upper + " "
                    first = upper
                } else if words == 1, let first, let follower = statementWords[first] ?? nil, follower == upper {
                    out += upper + " "
                } else {
                    out += "`" + text + "` "
                }
            case string, integer, float:
                out += "? "
            case function:
                out += token.string.uppercased()
            default:
                out += token.string.uppercased() + " "
            }
            words += 1
        }
        if out.hasSuffix(" ") { out.removeLast() }
        return out
    }

    /// `0x...` and `0b...` (a name to the tokenizer).
    static func isNumberLiteral(_ text: [UInt8]) -> Bool {
        guard text.count > 2, text[0] == 48 else { return false }
        switch text[1] {
        case 120, 88: return text.dropFirst(2).allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 | 0x20 >= 97 && $0 | 0x20 <= 102) }
        case 98, 66: return text.dropFirst(2).allSatisfy { $0 == 48 || $0 == 49 }
        default: return false
        }
    }

    /// What may stand right before a quoted constant and belongs to it: `X`, `B`, `N`, `_charset`.
    static func isStringPrefix(_ text: [UInt8]) -> Bool {
        (text.count == 1 && [88, 120, 66, 98, 78, 110].contains(text[0])) || (text.count > 1 && text[0] == 95)
    }
}
