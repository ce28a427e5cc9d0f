import MySQLWire
import NIOCore
import NIOEmbedded
import Testing
@testable import ProxyServer

/// The compressed protocol's framing, on byte vectors from MySQL's documentation and on round trips
/// between the two roles.
@Suite struct CompressionHandlerTests {
    func channel(_ role: CompressionHandler.Role) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(CompressionHandler(role: role))
        return channel
    }

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

    @Test func roundTripsLargeAndSplitInput() throws {
        let client = try channel(.client)
        let server = try channel(.server)
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

    @Test func corruptFramesAreAnErrorNotACrash() throws {
        let server = try channel(.server)
        // claims 100 bytes inflated, carries garbage
        #expect(throws: (any Error).self) {
            try server.writeInbound(ByteBuffer(bytes: [0x04, 0x00, 0x00, 0x00, 0x64, 0x00, 0x00, 0xDE, 0xAD, 0xBE, 0xEF]))
        }
    }
}
