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
        ResponseEncoding.resultSet(columns: [column], rows: [["{}"]], binary: false, capabilities: caps, sequenceID: &seq, into: &out)
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
        ResponseEncoding.resultSet(columns: [ColumnDefinition41(name: "a")], rows: [["1"]], binary: true,
                                   capabilities: [.protocol41, flag], sequenceID: &seq, into: &out)
        #expect(frames(out)[0].payload.hex == "0101")
    }
}
