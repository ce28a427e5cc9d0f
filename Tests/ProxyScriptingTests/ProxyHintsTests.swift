import NIOCore
import Testing
@testable import ProxyScripting

@Suite struct ProxyHintsTests {
    func hints(_ query: String) -> [String] {
        ProxyHints.parse(ByteBuffer(string: query)).map { "\($0.key)=\($0.value)" }
    }

    @Test func oneHint() { #expect(hints("SELECT /* @trace_id abc */ 1") == ["trace_id=abc"]) }
    @Test func severalHintsInOneAndInSeveralComments() {
        #expect(hints("/* @route ro @timeout 5 */ SELECT 1 /* @tag 'two words' */") == ["route=ro", "timeout=5", "tag=two words"])
    }
    @Test func flagsAndNonHintComments() {
        #expect(hints("SELECT /* just a comment @not */ 1 /*@nocache*/") == ["nocache="])
    }
    @Test func hintsInsideStringsAndLineCommentsDoNotCount() {
        #expect(hints("SELECT '/* @x 1 */', \"/* @y 2 */\", `/* @z */` -- /* @w 3 */\n FROM t # /* @v */") == [])
    }
    @Test func noComment() { #expect(hints("SELECT 1").isEmpty) }
    /// The quick test for "/*" looks past slashes that do not open a comment, and at the last byte.
    @Test func slashesThatOpenNoComment() {
        #expect(hints("SELECT 4/2, 6 / 3 /").isEmpty)
        #expect(hints("/").isEmpty)
        #expect(hints("").isEmpty)
        #expect(hints("SELECT 8/4//*@a 1*/") == ["a=1"])
        #expect(hints("SELECT 1 / *@b*/").isEmpty)
        #expect(hints("/*@c*/") == ["c="])
    }
    @Test func unterminatedCommentDoesNotTrap() { #expect(hints("SELECT /* @a b") == ["a=b"]) }
    @Test func escapedQuotes() { #expect(hints("SELECT 'it''s /* @no */' /* @yes 1 */") == ["yes=1"]) }
    /// A million hints cost no more than the query: the first 64 count, overlong keys and values
    /// are left out.
    @Test func boundedWhateverTheQuery() {
        let many = "SELECT /* " + String(repeating: "@k ", count: 1_000_000) + "*/ 1"
        #expect(ProxyHints.parse(ByteBuffer(string: many)).count == ProxyHints.maximumCount)
        let long = "SELECT /* @" + String(repeating: "k", count: 65) + " v @ok " + String(repeating: "v", count: 1025) + " @fine yes */ 1"
        #expect(hints(long) == ["fine=yes"])
    }
}
