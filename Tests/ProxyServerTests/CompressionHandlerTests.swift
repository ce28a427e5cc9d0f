import MySQLWire
import NIOCore
import NIOEmbedded
import Testing
@testable import ProxyServer

/// The compressed protocol's framing, on byte vectors from MySQL's documentation and on round trips
/// between the two roles.
@Suite struct CompressionHandlerTests {
    func channel(_ role: CompressionHandler.Role, _ compression: ProtocolCompression = .zlib) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(CompressionHandler(role: role, compression: compression))
        return channel
    }

    static let algorithms: [ProtocolCompression] = [.zlib, .zstd(level: 3), .zstd(level: 19)]

    @Test func aShortPayloadGoesUncompressed() throws {
        // MySQL's documentation: COM_QUIT in the compressed protocol, "05 00 00 00 00 00 00" + the packet
        let client = try channel(.client)
        try client.writeOutbound(ByteBuffer(bytes: [0x01, 0x00, 0x00, 0x00, 0x01]))
        let frame = try #require(try client.readOutbound(as: ByteBuffer.self))
        #expect(Array(frame.readableBytesView) == [0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01])
        // and read back by the other side as the packet it carries
        let server = try channel(.server)
        try server.writeInbound(frame)
        #expect(try server.readInbound(as: ByteBuffer.self).map { Array($0.readableBytesView) } == [0x01, 0x00, 0x00, 0x00, 0x01])
    }

    @Test(arguments: algorithms) func roundTripsLargeAndSplitInput(_ algorithm: ProtocolCompression) throws {
        let client = try channel(.client, algorithm)
        let server = try channel(.server, algorithm)
        // a 20 MB command: two MySQL frames, in compressed frames cut at packet boundaries
        var payload = ByteBuffer()
        payload.writeInteger(UInt8(0x03))
        payload.writeRepeatingByte(UInt8(ascii: "a"), count: 20_000_000)
        var command = ByteBuffer()
        var seq: UInt8 = 0
        command.writeMySQLPacket(payload, sequenceID: &seq)  // two MySQL frames
        try client.writeOutbound(command)
        let compressed = try #require(try client.readOutbound(as: ByteBuffer.self))
        #expect(compressed.readableBytes < 200_000)
        #expect(compressed.getInteger(at: 3, as: UInt8.self) == 0)
        // delivered to the other side a few bytes at a time
        var rest = compressed
        var received = ByteBuffer()
        while rest.readableBytes > 0 {
            try server.writeInbound(rest.readSlice(length: min(rest.readableBytes, 1000))!)
            while var part = try server.readInbound(as: ByteBuffer.self) { received.writeBuffer(&part) }
        }
        #expect(received == command)
        // the server's reply continues the numbering: the first MySQL frame (16 MiB + 3 bytes) took
        // compressed frames 0 and 1, the second one frame 2
        try server.writeOutbound(ByteBuffer(bytes: [0x07, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00]))
        let reply = try #require(try server.readOutbound(as: ByteBuffer.self))
        #expect(reply.getInteger(at: 3, as: UInt8.self) == 3)
    }

    @Test(arguments: algorithms) func corruptFramesAreAnErrorNotACrash(_ algorithm: ProtocolCompression) throws {
        let server = try channel(.server, algorithm)
        // claims 100 bytes inflated, carries garbage
        #expect(throws: (any Error).self) {
            try server.writeInbound(ByteBuffer(bytes: [0x04, 0x00, 0x00, 0x00, 0x64, 0x00, 0x00, 0xDE, 0xAD, 0xBE, 0xEF]))
        }
    }

    /// A COM_QUERY packet (77 bytes) as the `zstd` command-line tool compresses it: a frame with
    /// a checksum, which a peer's library may send as well as the proxy's own frames without one.
    static let zstdFrameFromTheCLI: [UInt8] = [
        0x28, 0xb5, 0x2f, 0xfd, 0x24, 0x4d, 0x5d, 0x01, 0x00, 0x34, 0x02, 0x49, 0x00, 0x00, 0x00, 0x03, 0x53, 0x45, 0x4c, 0x45,
        0x43, 0x54, 0x20, 0x31, 0x20, 0x46, 0x52, 0x4f, 0x4d, 0x20, 0x74, 0x20, 0x57, 0x48, 0x45, 0x52, 0x45, 0x20, 0x61, 0x20,
        0x3d, 0x20, 0x31, 0x20, 0x4f, 0x52, 0x01, 0x00, 0x4b, 0xa8, 0x3c, 0x01, 0x21, 0x5f, 0x2e, 0x67,
    ]

    @Test func readsAZstdFrameMadeByTheReferenceTool() throws {
        let server = try channel(.server, .zstd(level: 3))
        var frame = ByteBuffer(bytes: [UInt8(Self.zstdFrameFromTheCLI.count), 0x00, 0x00, 0x00, 77, 0x00, 0x00])
        frame.writeBytes(Self.zstdFrameFromTheCLI)
        try server.writeInbound(frame)
        let packet = try #require(try server.readInbound(as: ByteBuffer.self))
        #expect(packet.readableBytes == 77)
        #expect(Array(packet.readableBytesView.prefix(5)) == [73, 0, 0, 0, 0x03])
        #expect(String(decoding: packet.readableBytesView.dropFirst(5), as: UTF8.self).hasPrefix("SELECT 1 FROM t WHERE a = 1 OR"))
        // the wrong length in the header is an error, not a short packet
        let strict = try channel(.server, .zstd(level: 3))
        var lying = ByteBuffer(bytes: [UInt8(Self.zstdFrameFromTheCLI.count), 0x00, 0x00, 0x00, 76, 0x00, 0x00])
        lying.writeBytes(Self.zstdFrameFromTheCLI)
        #expect(throws: (any Error).self) { try strict.writeInbound(lying) }
    }

    @Test func zstdFramesAreSmallerAndIncompressibleOnesGoAsTheyAre() throws {
        let client = try channel(.client, .zstd(level: 3))
        var packet = ByteBuffer()
        var seq: UInt8 = 0
        packet.writeMySQLPacket(ByteBuffer(bytes: [0x03] + Array(repeating: UInt8(ascii: "z"), count: 5000)), sequenceID: &seq)
        try client.writeOutbound(packet)
        let frame = try #require(try client.readOutbound(as: ByteBuffer.self))
        #expect(frame.readableBytes < 100)
        #expect(frame.getBytes(at: 7, length: 4) == [0x28, 0xb5, 0x2f, 0xfd])  // zstd's magic number
        // random bytes: no gain, so the frame says "uncompressed" (length 0) and carries them as they are
        var random = SystemRandomNumberGenerator()
        let noise = (0..<3000).map { _ in UInt8.random(in: 0...255, using: &random) }
        var noisy = ByteBuffer()
        seq = 0
        noisy.writeMySQLPacket(ByteBuffer(bytes: noise), sequenceID: &seq)
        try client.writeOutbound(noisy)
        let stored = try #require(try client.readOutbound(as: ByteBuffer.self))
        #expect(stored.getBytes(at: 4, length: 3) == [0, 0, 0])
        #expect(stored.readableBytes == 7 + 3004)
    }
}
