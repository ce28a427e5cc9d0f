import Testing
@testable import ProxyScripting

/// Lua 5.1 escapes that 5.4 refuses are made literal; valid 5.4 source is never touched.
@Suite struct Lua51SourceTests {
    func rewrite(_ s: String) -> String? {
        Lua51Source.rewrite(Array(s.utf8)).map { String(decoding: $0, as: UTF8.self) }
    }

    @Test func unknownEscapesMeanTheCharacter() {
        #expect(rewrite(#"local v = ("5.0.45"):match("^(%d+)\.(%d+)")"#) == #"local v = ("5.0.45"):match("^(%d+).(%d+)")"#)
        #expect(rewrite(#"x = '\%' .. "\-" .. "\xZZ" .. "\u0""#) == #"x = '%' .. "-" .. "xZZ" .. "u0""#)
    }

    @Test func valid54SourceIsLeftAlone() {
        for source in [
            #"s = "a\n\t\\\"\'\065\x41\u{48}\z    b""#,
            "s = [[ \\. not an escape in a long string ]]",
            "s = [==[ ]] \\. ]==] t = 1",
            "-- a comment with \"\\.\" in it\nx = 1",
            "--[[ long comment \"\\.\" ]] x = 1",
            "--[=[ long ]] comment \\. ]=] y = 2",
            "s = \"line \\\r\n continued\" .. \"\\.\"",
        ].dropLast() {
            #expect(rewrite(source) == nil, "\(source)")
        }
        // after an escaped CRLF the scan is still in the string, and still finds the next one
        #expect(rewrite("s = \"line \\\r\n continued\" .. \"\\.\"") == "s = \"line \\\r\n continued\" .. \".\"")
    }
}
