import NIOCore

/// The 4-byte header in front of every frame: payload length (3 bytes, little-endian) and sequence id.
public struct PacketHeader: Hashable, Sendable {
    /// Largest payload of one frame. A frame this long is followed by another frame of the same
    /// logical packet; a packet whose length is an exact multiple of it ends with an empty frame.
    public static let maxPayloadLength = 0xFF_FFFF
    public static let size = 4

    public var payloadLength: Int
    public var sequenceID: UInt8

    @inlinable public init(payloadLength: Int, sequenceID: UInt8) {
        self.payloadLength = payloadLength
        self.sequenceID = sequenceID
    }

    /// Reads a header at `index` without moving the reader index; nil if fewer than 4 bytes are there.
    @inlinable
    public static func peek(_ buffer: ByteBuffer, at index: Int) -> PacketHeader? {
        guard let word = buffer.getInteger(at: index, endianness: .little, as: UInt32.self) else { return nil }
        return PacketHeader(payloadLength: Int(word & 0xFF_FFFF), sequenceID: UInt8(word >> 24))
    }
}

/// One frame as it was on the wire: a sequence id and up to 16 MiB - 1 bytes of payload.
public struct MySQLFrame: Hashable, Sendable {
    public var sequenceID: UInt8
    public var payload: ByteBuffer

    @inlinable public init(sequenceID: UInt8, payload: ByteBuffer) {
        self.sequenceID = sequenceID
        self.payload = payload
    }

    /// Whether another frame of the same logical packet follows this one.
    @inlinable public var continues: Bool { payload.readableBytes == PacketHeader.maxPayloadLength }
}

extension ByteBuffer {
    /// Reads one whole frame, or returns nil (consuming nothing) when it has not fully arrived.
    @inlinable
    public mutating func readMySQLFrame() -> MySQLFrame? {
        guard let header = PacketHeader.peek(self, at: self.readerIndex),
              self.readableBytes >= PacketHeader.size + header.payloadLength
        else { return nil }
        self.moveReaderIndex(forwardBy: PacketHeader.size)
        let payload = self.readSlice(length: header.payloadLength)!  // length checked above
        return MySQLFrame(sequenceID: header.sequenceID, payload: payload)
    }

    /// Writes `payload` as one logical packet: frames of at most 16 MiB - 1 bytes with consecutive
    /// sequence ids starting at `sequenceID`, plus an empty frame when the payload's length is a
    /// multiple of the maximum (zero included only in that it is sent as one empty frame).
    /// On return `sequenceID` is the id the next packet should use.
    @inlinable
    public mutating func writeMySQLPacket(_ payload: ByteBuffer, sequenceID: inout UInt8) {
        // one growth at most, and each header in one write: what the proxy frames is mostly a
        // small packet into a buffer made for it
        let frames = payload.readableBytes / PacketHeader.maxPayloadLength + 1
        self.reserveCapacity(minimumWritableBytes: payload.readableBytes + frames * PacketHeader.size)
        var offset = payload.readerIndex
        while true {
            let length = Swift.min(payload.writerIndex - offset, PacketHeader.maxPayloadLength)
            self.writeInteger(UInt32(length) | UInt32(sequenceID) << 24, endianness: .little)
            sequenceID &+= 1
            self.writeImmutableBuffer(payload.getSlice(at: offset, length: length)!)
            offset += length
            if length < PacketHeader.maxPayloadLength { break }
        }
    }

    /// Convenience for building a single packet whose payload is written by `body`.
    @inlinable
    public mutating func writeMySQLPacket(sequenceID: inout UInt8, allocator: ByteBufferAllocator = ByteBufferAllocator(), _ body: (inout ByteBuffer) -> Void) {
        var payload = allocator.buffer(capacity: 64)
        body(&payload)
        self.writeMySQLPacket(payload, sequenceID: &sequenceID)
    }
}

/// Joins the frames of logical packets, enforcing a size limit so that a peer that announces a huge
/// packet cannot make the proxy buffer it.
public struct PacketAssembler: Sendable {
    public var maximumPacketLength: Int
    private var pending: ByteBuffer?
    private var firstSequenceID: UInt8 = 0

    public init(maximumPacketLength: Int = 1 << 30) {
        self.maximumPacketLength = maximumPacketLength
    }

    /// Whether a logical packet has begun but not ended.
    public var isAssembling: Bool { pending != nil }
    /// Payload bytes of the packet being assembled so far.
    public var assembledLength: Int { pending?.readableBytes ?? 0 }

    /// Adds one frame; returns the logical packet (with its first frame's sequence id) once complete.
    public mutating func append(_ frame: MySQLFrame) throws(WireError) -> MySQLFrame? {
        if var buffer = self.pending {
            self.pending = nil
            guard buffer.readableBytes + frame.payload.readableBytes <= maximumPacketLength else {
                throw .tooLarge(limit: maximumPacketLength, sequenceID: frame.sequenceID)
            }
            var payload = frame.payload
            buffer.writeBuffer(&payload)
            if frame.continues {
                self.pending = buffer
                return nil
            }
            return MySQLFrame(sequenceID: self.firstSequenceID, payload: buffer)
        }
        if frame.continues {
            guard frame.payload.readableBytes <= maximumPacketLength else {
                throw .tooLarge(limit: maximumPacketLength, sequenceID: frame.sequenceID)
            }
            self.firstSequenceID = frame.sequenceID
            var copy = ByteBuffer()
            copy.reserveCapacity(frame.payload.readableBytes)  // no more than what arrived
            var payload = frame.payload
            copy.writeBuffer(&payload)
            self.pending = copy
            return nil
        }
        return frame
    }
}
