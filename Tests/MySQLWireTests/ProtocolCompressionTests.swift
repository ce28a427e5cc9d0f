import MySQLWire
import NIOCore
import Testing

/// Compression negotiation as MySQL's documentation states it, and the handshake response's zstd
/// level byte.
@Suite struct ProtocolCompressionTests {
    @Test func negotiation() {
        let both: CapabilityFlags = [.compress, .zstdCompression]
        // "If both CLIENT_COMPRESS and CLIENT_ZSTD_COMPRESSION_ALGORITHM are set then zlib is used."
        #expect(ProtocolCompression.negotiated(asked: both, offered: both, zstdLevel: 7) == .zlib)
        #expect(ProtocolCompression.negotiated(asked: .zstdCompression, offered: both, zstdLevel: 7) == .zstd(level: 7))
        #expect(ProtocolCompression.negotiated(asked: .zstdCompression, offered: both, zstdLevel: nil) == .zstd(level: 3))
        #expect(ProtocolCompression.negotiated(asked: .zstdCompression, offered: both, zstdLevel: 40) == .zstd(level: 3))
        // "if client flags do not match then connection falls back to uncompressed mode"
        #expect(ProtocolCompression.negotiated(asked: .zstdCompression, offered: .compress, zstdLevel: 3) == nil)
        #expect(ProtocolCompression.negotiated(asked: [], offered: both, zstdLevel: nil) == nil)
        #expect(ProtocolCompression.choice(preferring: .zstd(level: 5), offered: .compress) == .zlib)
        #expect(ProtocolCompression.choice(preferring: .zlib, offered: .zstdCompression) == .zstd(level: 3))
        #expect(ProtocolCompression.choice(preferring: .zlib, offered: []) == nil)
    }

    func response(zstd level: UInt8?, attributes: Bool) -> ByteBuffer {
        var caps: CapabilityFlags = [.protocol41, .secureConnection, .pluginAuth, .longPassword]
        if attributes { caps.insert(.connectAttributes) }
        if level != nil { caps.insert(.zstdCompression) }
        let r = HandshakeResponse41(capabilities: caps, username: "u", authResponse: [1, 2, 3], authPluginName: "mysql_native_password",
                                    attributes: attributes ? [("_client_name", "t")] : [], zstdCompressionLevel: level)
        var b = ByteBuffer()
        r.write(to: &b)
        return b
    }

    @Test(arguments: [true, false]) func theLevelByteIsReadAndRewritten(attributes: Bool) throws {
        let withZstd = response(zstd: 9, attributes: attributes)
        let parsed = try HandshakeResponse41(parsing: withZstd)
        #expect(parsed.zstdCompressionLevel == 9)
        #expect(parsed.attributes.count == (attributes ? 1 : 0))
        // towards a server that gets zlib instead: the bit and the byte go
        var payload = withZstd
        try HandshakeResponse41.setCompression(of: &payload, parsed: parsed, to: .zlib)
        var expected = response(zstd: nil, attributes: attributes)
        let lower = expected.getInteger(at: 0, endianness: .little, as: UInt32.self)! | CapabilityFlags.compress.lower32
        expected.setInteger(lower, at: 0, endianness: .little)
        #expect(payload == expected)
        // and back: an uncompressed client's response asking a server for zstd at level 4
        let plain = response(zstd: nil, attributes: attributes)
        var asking = plain
        try HandshakeResponse41.setCompression(of: &asking, parsed: try HandshakeResponse41(parsing: plain), to: .zstd(level: 4))
        let reparsed = try HandshakeResponse41(parsing: asking)
        #expect(reparsed.zstdCompressionLevel == 4 && reparsed.capabilities.contains(.zstdCompression))
        #expect(reparsed.username == "u" && reparsed.authPluginName == "mysql_native_password")
        // nothing asked, nothing changed
        var same = plain
        try HandshakeResponse41.setCompression(of: &same, parsed: try HandshakeResponse41(parsing: plain), to: nil)
        #expect(same == plain)
    }
}
