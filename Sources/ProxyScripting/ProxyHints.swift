#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore

/// Proxy hints: `/* @key value */` comments in a query, visible to `read_query` as `proxy.hints`.
///
/// A comment whose text starts with `@` holds one or more `@key value` pairs; a value is one word
/// or a quoted string, and a key without a value gets "". Quoted strings, backquoted names and
/// `--`/`#` comments of the query are skipped, so an `@` inside them is never a hint. Later keys
/// win over earlier ones.
///
/// Bounded whatever the query: at most `maximumCount` hints, keys of at most `maximumKeyLength`
/// bytes and values of at most `maximumValueLength` (longer ones are left out), so that a query
/// with a million `@k` costs no more than the query.
public enum ProxyHints {
    public static let maximumCount = 64
    public static let maximumKeyLength = 64
    public static let maximumValueLength = 1024

    /// Parses a COM_QUERY payload (with or without its command byte).
    public static func parse(_ query: ByteBuffer) -> [(key: String, value: String)] {
        query.withUnsafeReadableBytes { parse(bytes: $0) }
    }

    public static func parse(bytes: UnsafeRawBufferPointer) -> [(key: String, value: String)] {
        var hints: [(String, String)] = []
        let n = bytes.count
        var i = 0
        // Fast exit: no "/*" at all.
        guard let base = bytes.baseAddress, memchrSlash(base, n) else { return [] }
        while i < n {
            let c = bytes[i]
            switch c {
            case UInt8(ascii: "'"), UInt8(ascii: "\""), UInt8(ascii: "`"):
                i = skipQuoted(bytes, from: i, quote: c)
            case UInt8(ascii: "#"):
                i = skipLine(bytes, from: i)
            case UInt8(ascii: "-") where i + 2 < n && bytes[i + 1] == UInt8(ascii: "-") && (bytes[i + 2] == 32 || bytes[i + 2] == 9 || bytes[i + 2] == 10):
                i = skipLine(bytes, from: i)
            case UInt8(ascii: "/") where i + 1 < n && bytes[i + 1] == UInt8(ascii: "*"):
                let start = i + 2
                var end = start
                while end + 1 < n && !(bytes[end] == UInt8(ascii: "*") && bytes[end + 1] == UInt8(ascii: "/")) { end += 1 }
                let bodyEnd = end + 1 < n ? end : n
                parseComment(UnsafeRawBufferPointer(rebasing: bytes[start..<bodyEnd]), into: &hints)
                if hints.count >= maximumCount { return hints }
                i = min(n, bodyEnd + 2)
            default:
                i += 1
            }
        }
        return hints
    }

    /// Whether the bytes hold "/*": libc's memchr finds each '/' (vectorised; a query without
    /// one, the usual case, costs a few dozen instructions rather than a loop over every byte).
    private static func memchrSlash(_ base: UnsafeRawPointer, _ n: Int) -> Bool {
        var p = base
        var left = n
        while left > 1, let hit = memchr(p, Int32(UInt8(ascii: "/")), left) {
            let offset = base.distance(to: UnsafeRawPointer(hit))
            if offset + 1 >= n { return false }
            if base.load(fromByteOffset: offset + 1, as: UInt8.self) == UInt8(ascii: "*") { return true }
            p = base + offset + 1
            left = n - offset - 1
        }
        return false
    }

    private static func skipQuoted(_ b: UnsafeRawBufferPointer, from start: Int, quote: UInt8) -> Int {
        var i = start + 1
        while i < b.count {
            if b[i] == UInt8(ascii: "\\") && quote != UInt8(ascii: "`") { i += 2; continue }
            if b[i] == quote {
                if i + 1 < b.count && b[i + 1] == quote { i += 2; continue }  // doubled quote
                return i + 1
            }
            i += 1
        }
        return b.count
    }

    private static func skipLine(_ b: UnsafeRawBufferPointer, from start: Int) -> Int {
        var i = start
        while i < b.count && b[i] != 10 { i += 1 }
        return i
    }

    private static func isSpace(_ c: UInt8) -> Bool { c == 32 || c == 9 || c == 10 || c == 13 }

    private static func parseComment(_ body: UnsafeRawBufferPointer, into result: inout [(String, String)]) {
        var i = 0
        let n = body.count
        while i < n && isSpace(body[i]) { i += 1 }
        guard i < n, body[i] == UInt8(ascii: "@") else { return }
        while i < n && result.count < maximumCount {
            while i < n && isSpace(body[i]) { i += 1 }
            guard i < n, body[i] == UInt8(ascii: "@") else { break }
            i += 1
            let keyStart = i
            while i < n && !isSpace(body[i]) && body[i] != UInt8(ascii: "@") { i += 1 }
            let keyRange = keyStart..<i
            while i < n && isSpace(body[i]) { i += 1 }
            var valueRange = i..<i
            if i < n && body[i] != UInt8(ascii: "@") {
                let q = body[i]
                if q == UInt8(ascii: "'") || q == UInt8(ascii: "\"") {
                    let valueStart = i + 1
                    var j = valueStart
                    while j < n && body[j] != q { j += 1 }
                    valueRange = valueStart..<j
                    i = min(n, j + 1)
                } else {
                    let valueStart = i
                    while i < n && !isSpace(body[i]) { i += 1 }
                    valueRange = valueStart..<i
                }
            }
            guard !keyRange.isEmpty, keyRange.count <= maximumKeyLength, valueRange.count <= maximumValueLength else { continue }
            result.append((String(decoding: UnsafeRawBufferPointer(rebasing: body[keyRange]), as: UTF8.self),
                           String(decoding: UnsafeRawBufferPointer(rebasing: body[valueRange]), as: UTF8.self)))
        }
    }
}
