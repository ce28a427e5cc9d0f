import NIOCore

/// Finds packet boundaries in a byte stream without buffering payloads, for relaying.
///
/// The relay forwards whole chunks as they were read; the scanner only walks the frame headers in
/// them and hands out, for each logical packet, its first frame's header and the first
/// `prefixLength` bytes of its payload: enough to tell a row from an OK, EOF or ERR packet and to
/// read a status packet's flags. A row of any size costs a header read, never a copy. Only when a
/// header or prefix straddles two reads are those few bytes copied aside.
public struct FrameScanner: Sendable {
    /// How many payload bytes a packet start carries (fewer when the packet is shorter). 32 bytes
    /// cover every field the response tracker reads: two length-encoded integers, status and
    /// warning count of an OK packet; the column count; a prepare-OK's 12 bytes.
    public static let prefixLength = 32

    public struct PacketStart: Sendable {
        public var header: PacketHeader
        /// The first bytes of the payload: `min(payloadLength, prefixLength)` of them.
        public var prefix: ByteBuffer
        /// Whether the header and prefix arrived over more than one read, so that the packet's first
        /// bytes belong to an earlier chunk.
        public var isSplit: Bool = false

        public init(header: PacketHeader, prefix: ByteBuffer, isSplit: Bool = false) {
            self.header = header
            self.prefix = prefix
            self.isSplit = isSplit
        }

        /// The first byte of the payload, nil for an empty packet.
        @inlinable public var firstByte: UInt8? { prefix.getInteger(at: prefix.readerIndex, as: UInt8.self) }
        /// Whether this packet spans several frames (its first frame is 16 MiB - 1 bytes).
        @inlinable public var isMultiFrame: Bool { header.payloadLength == PacketHeader.maxPayloadLength }
    }

    public enum Event: Sendable {
        /// A logical packet starts. Its header began at the chunk's reader index before this call
        /// (or in an earlier chunk, when it straddled two reads).
        case packetStart(PacketStart)
        /// The logical packet that started last has ended at the chunk's current reader index.
        case packetEnd
    }

    private var remaining = 0          // payload bytes of the current frame not consumed yet
    private var frameIsFull = false    // the current frame is 16 MiB - 1 bytes: another one follows
    private var inPacket = false
    private var carry: ByteBuffer?     // a header (and prefix) split across reads
    public private(set) var lastSequenceID: UInt8 = 0
    public private(set) var framesSeen = 0

    public init() {}

    /// True between packets: no frame is half read. Only here may the proxy insert a packet of its own.
    @inlinable public var isAtPacketBoundary: Bool { !inPacketOrCarrying }
    @usableFromInline var inPacketOrCarrying: Bool { inPacket || carry != nil }

    /// Consumes bytes of `chunk` up to the next event and returns it, or returns nil once all of
    /// `chunk` is consumed.
    public mutating func next(_ chunk: inout ByteBuffer) -> Event? {
        while true {
            if remaining > 0 {
                let available = chunk.readableBytes
                if available == 0 { return nil }
                let n = remaining < available ? remaining : available
                chunk.moveReaderIndex(forwardBy: n)
                remaining -= n
                continue
            }
            if inPacket && !frameIsFull {
                inPacket = false
                return .packetEnd
            }
            let wantPrefix = !inPacket  // a continuation frame needs only its header
            let carried = carry != nil
            guard let (header, prefix, taken) = self.takeHeader(&chunk, wantPrefix: wantPrefix) else { return nil }
            lastSequenceID = header.sequenceID
            framesSeen &+= 1
            frameIsFull = header.payloadLength == PacketHeader.maxPayloadLength
            remaining = header.payloadLength - taken
            if wantPrefix {
                inPacket = true
                return .packetStart(PacketStart(header: header, prefix: prefix, isSplit: carried || taken > 0))
            }
        }
    }

    /// Returns the next header (and prefix) and how many payload bytes it already consumed.
    private mutating func takeHeader(_ chunk: inout ByteBuffer, wantPrefix: Bool) -> (PacketHeader, ByteBuffer, Int)? {
        if carry == nil && chunk.readableBytes == 0 { return nil }
        if carry == nil, let header = PacketHeader.peek(chunk, at: chunk.readerIndex) {
            let prefixLength = wantPrefix ? Swift.min(header.payloadLength, Self.prefixLength) : 0
            if chunk.readableBytes >= PacketHeader.size + prefixLength {
                // Fast path: all in this chunk. The prefix is a slice; the skip loop consumes it.
                let prefix = chunk.getSlice(at: chunk.readerIndex + PacketHeader.size, length: prefixLength)!
                chunk.moveReaderIndex(forwardBy: PacketHeader.size)
                return (header, prefix, 0)
            }
        }
        // Slow path: gather the header and prefix in `carry` across reads.
        var gathered = carry ?? ByteBuffer()
        carry = nil
        func take(upTo total: Int) {
            let missing = total - gathered.readableBytes
            if missing > 0, chunk.readableBytes > 0 {
                var bytes = chunk.readSlice(length: Swift.min(missing, chunk.readableBytes))!
                gathered.writeBuffer(&bytes)
            }
        }
        take(upTo: PacketHeader.size)
        guard let header = PacketHeader.peek(gathered, at: gathered.readerIndex) else {
            carry = gathered
            return nil
        }
        let prefixLength = wantPrefix ? Swift.min(header.payloadLength, Self.prefixLength) : 0
        take(upTo: PacketHeader.size + prefixLength)
        guard gathered.readableBytes == PacketHeader.size + prefixLength else {
            carry = gathered
            return nil
        }
        gathered.moveReaderIndex(forwardBy: PacketHeader.size)
        return (header, gathered, prefixLength)
    }
}
