import NIOCore
import Testing
@testable import MySQLWire

/// Result sets the proxy makes up (a script's `proxy.response`) take the shape the client negotiated.
@Suite struct ResultSetEncodingTests {
    func frames(_ buffer: ByteBuffer) -> [MySQLFrame] {
        var copy = buffer
        var out: [MySQLFrame] = []
        while let f = copy.readMySQLFrame() { out.append(f) }
        return out
    }

    /// A MariaDB client with MARIADB_CLIENT_EXTENDED_METADATA expects the extended type information
    /// (empty here) in every column definition, as the server's own carry it.
    @Test func extendedMetadataIsWrittenWhenNegotiated() throws {
        let column = ColumnDefinition41(name: "j", type: .blob)
        var out = ByteBuffer()
        var seq: UInt8 = 1
        let caps: CapabilityFlags = [.protocol41, .mariaDBExtendedMetadata]
        try! ResponseEncoding.resultSet(columns: [column], rows: [["{}"]], binary: false, capabilities: caps, sequenceID: &seq, into: &out)
        let packets = frames(out)
        #expect(packets.count == 5)
        #expect(try ColumnDefinition41(parsing: packets[1].payload, mariaDBExtendedMetadata: true) == column)
        // and the tracker, which counts definitions, finds the response's end
        var t = ResponseTracker.commandPhase(capabilities: caps)
        _ = try t.clientPacketStarted(start("0353454c454354", seq: 0))
        var ends = 0
        for p in packets {
            if case .endOfResponse = try t.serverPacketStarted(start(p.payload.hex, seq: p.sequenceID)) { ends += 1 }
        }
        #expect(ends == 1 && !t.isAwaitingResponse)
    }

    /// With metadata caching or optional metadata negotiated, a column count says the definitions follow.
    @Test(arguments: [CapabilityFlags.mariaDBCacheMetadata, .optionalResultsetMetadata])
    func columnCountSaysTheDefinitionsFollow(flag: CapabilityFlags) throws {
        var out = ByteBuffer()
        var seq: UInt8 = 1
        try! ResponseEncoding.resultSet(columns: [ColumnDefinition41(name: "a")], rows: [["1"]], binary: true,
                                   capabilities: [.protocol41, flag], sequenceID: &seq, into: &out)
        #expect(frames(out)[0].payload.hex == "0101")
    }

    /// Values a script gives for binary rows (COM_STMT_EXECUTE answers): each within its type's
    /// range, else an error naming the row and field, never a trap.
    @Test(arguments: [
        ("0:300:0", ColumnType.time), ("1 -1:00:00", .time), ("9999999999 00:00:00", .time), ("839:00:00", .time),
        ("35 00:00:00", .time), ("12:00", .time), ("1:2:3.1234567", .time), ("-", .time), ("", .time),
        ("2024-13-01", .date), ("2024-01-32", .datetime), ("99999-01-01", .date), ("2024-01-01 24:00:00", .datetime),
        ("+1-01-01", .date), ("2024-01-01 1:2:3.", .datetime), ("x", .long), ("300", .tiny), ("-129", .tiny),
        ("70000", .short), ("4294967296", .long), ("18446744073709551616", .longlong), ("1e999x", .double),
    ])
    func valuesOutOfRangeAreErrors(value: String, type: ColumnType) {
        var out = ByteBuffer()
        var seq: UInt8 = 1
        #expect(throws: BinaryValueError.self) {
            try ResponseEncoding.resultSet(columns: [ColumnDefinition41(name: "c", type: type)], rows: [["ok"].map { _ in value }],
                                           binary: true, capabilities: [.protocol41], sequenceID: &seq, into: &out)
        }
        #expect(out.readableBytes == 0)
    }

    @Test(arguments: [
        ("838:59:59", ColumnType.time, "080022000000163b3b"), ("-1 02:03:04.5", .time, "0c0101000000020304" + "20a10700"),
        ("00:00:00", .time, "080000000000000000"), ("2024-02-29", .date, "04e807021d"),
        ("2024-02-29 23:59:59.000001", .datetime, "0be807021d173b3b01000000"), ("0000-00-00", .date, "0400000000"),
        ("255", .tiny, "ff"), ("-128", .tiny, "80"), ("18446744073709551615", .longlong, "ffffffffffffffff"),
    ])
    func valuesInRangeAreEncoded(value: String, type: ColumnType, hex: String) {
        var out = ByteBuffer()
        #expect(BinaryValueEncoding.encodeValue(value, type: type, into: &out))
        #expect(out.hex == hex)
    }
}
