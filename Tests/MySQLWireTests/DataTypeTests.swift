import NIOCore
import Testing
@testable import MySQLWire

/// Length-encoded integers and strings, with the examples of the protocol documentation
/// ("Protocol Data Types": 0xFA is 250, 0xFC 0xFB 0x00 is 251, 0xFD 3 bytes, 0xFE 8 bytes).
@Suite struct DataTypeTests {
    @Test(arguments: [
        ("00", UInt64(0)), ("fa", 250), ("fcfb00", 251), ("fcffff", 65535), ("fd000001", 65536),
        ("fdffffff", 16_777_215), ("fe0000000100000000", 16_777_216),
        ("feffffffffffffffff", UInt64.max),
    ])
    func lengthEncodedIntegerRoundTrips(hex: String, value: UInt64) throws {
        var buffer = ByteBuffer(hex: hex)
        #expect(try buffer.readMySQLLengthEncodedInteger() == value)
        #expect(buffer.readableBytes == 0)
        var out = ByteBuffer()
        out.writeMySQLLengthEncodedInteger(value)
        #expect(out.hex == hex)
        #expect(mysqlLengthEncodedIntegerSize(value) == hex.count / 2)
    }

    @Test(arguments: ["", "fc", "fcff", "fd0000", "fe00000000000000"])
    func truncatedLengthEncodedIntegerThrowsAndConsumesNothing(hex: String) {
        var buffer = ByteBuffer(hex: hex)
        #expect(throws: WireError.self) { try buffer.readMySQLLengthEncodedInteger() }
        #expect(buffer.readableBytes == hex.count / 2)
    }

    @Test func errMarkerIsNotAnInteger() {
        var buffer = ByteBuffer(hex: "ff0102")
        #expect(throws: WireError.self) { try buffer.readMySQLLengthEncodedInteger() }
    }

    @Test func nullMarker() throws {
        var buffer = ByteBuffer(hex: "fb")
        #expect(try buffer.readMySQLLengthEncodedIntegerOrNull() == nil)
        var again = ByteBuffer(hex: "fb")
        #expect(throws: WireError.self) { try again.readMySQLLengthEncodedInteger() }
    }

    @Test func lengthEncodedStringThatLiesAboutItsLength() {
        // claims 10 bytes, has 3
        var buffer = ByteBuffer(hex: "0a616263")
        #expect(throws: WireError.truncated("length-encoded string")) { try buffer.readMySQLLengthEncodedSlice() }
        #expect(buffer.readableBytes == 4)
        // claims 2^64-1 bytes: must not overflow or trap
        var huge = ByteBuffer(hex: "feffffffffffffffff61")
        #expect(throws: WireError.self) { try huge.readMySQLLengthEncodedSlice() }
    }

    @Test func nullTerminatedString() throws {
        var buffer = ByteBuffer(hex: "6162630064")
        #expect(try buffer.readMySQLNullTerminatedString() == "abc")
        #expect(buffer.readableBytes == 1)
        var unterminated = ByteBuffer(hex: "616263")
        #expect(throws: WireError.self) { try unterminated.readMySQLNullTerminatedString() }
    }
}
