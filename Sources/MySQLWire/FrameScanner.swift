import NIOCore

/// Finds packet boundaries in a byte stream without buffering payloads, for relaying.
///
/// The relay forwards whole chunks as they were read; the scanner only walks the frame headers in
/// them and hands out, for each logical packet, its first frame's header and the first
/// `PacketPrefix.capacity` bytes of its payload (copied inline): enough to tell a row from an OK,
/// EOF or ERR packet and to read a status packet's flags. A row of any size costs a header read,
/// never a copy of its data. A chunk is walked over its raw bytes in one pass. Only when a header
/// or prefix straddles two reads are those few bytes kept aside.
public struct FrameScanner: Sendable {
    public struct PacketStart: Sendable {
        public var header: PacketHeader
        /// The first bytes of the payload: `min(payloadLength, 32)` of them.
        public var prefix: PacketPrefix
        /// Whether the header and prefix arrived over more than one read, so that the packet's first
        /// bytes belong to an earlier chunk.
        public var isSplit: Bool

        public init(header: PacketHeader, prefix: PacketPrefix, isSplit: Bool = false) {
            self.header = header
            self.prefix = prefix
            self.isSplit = isSplit
        }

        /// The first byte of the payload, nil for an empty packet.
        @inlinable public var firstByte: UInt8? { prefix[0] }
        /// Whether this packet spans several frames (its first frame is 16 MiB - 1 bytes).
        @inlinable public var isMultiFrame: Bool { header.payloadLength == PacketHeader.maxPayloadLength }
    }

    public enum Event: Sendable {
        /// A logical packet starts; its header begins at `offset` bytes into the chunk (or, when
        /// `isSplit`, began in an earlier chunk and `offset` is 0).
        case packetStart(PacketStart, offset: Int)
        /// The packet that started last ends `offset` bytes into the chunk.
        case packetEnd(offset: Int)
    }

    private var remaining = 0          // payload bytes of the current frame not consumed yet
    private var frameIsFull = false    // the current frame is 16 MiB - 1 bytes: another one follows
    private var inPacket = false
    private var carry: [UInt8] = []    // a header (and prefix) split across reads
    public private(set) var lastSequenceID: UInt8 = 0

    public init() {}

    /// True between packets: no frame is half read. Only here may the proxy insert a packet of its own.
    public var isAtPacketBoundary: Bool { !inPacket && carry.isEmpty }
    /// Bytes of a header (and prefix) held from earlier reads: a start reported `isSplit` in the
    /// next chunk took the rest of its header and prefix, `PacketHeader.size + prefix.count`
    /// minus this, from that chunk's beginning.
    public var carriedBytes: Int { carry.count }

    /// Walks all of `chunk`, calling `body` for every packet start and end in it, in order. `body`
    /// returns false to stop early (the scanner is then left mid-chunk and must not be used again).
    public mutating func scan(_ chunk: ByteBuffer, _ body: (Event) -> Bool) {
        chunk.withUnsafeReadableBytes { bytes in
            self.walk(bytes, reportsEnds: true, start: { body(.packetStart($0, offset: $1)) }, end: { body(.packetEnd(offset: $0)) })
        }
    }

    /// Like `scan`, for callers that only want to know where packets start (the relay): `body`
    /// gets each packet's start and the offset of its header, and no end events are made.
    public mutating func scanPacketStarts(_ chunk: ByteBuffer, _ body: (PacketStart, Int) -> Bool) {
        chunk.withUnsafeReadableBytes { bytes in
            self.walk(bytes, reportsEnds: false, start: body, end: { _ in true })
        }
    }

    /// The one walk behind both entry points; inlined into each so that `reportsEnds` is a constant there.
    @inline(__always)
    private mutating func walk(_ bytes: UnsafeRawBufferPointer, reportsEnds: Bool,
                               start: (PacketStart, Int) -> Bool, end: (Int) -> Bool) {
        let count = bytes.count
        var i = 0
        while true {
            if remaining > 0 {
                let n = Swift.min(remaining, count - i)
                i += n
                remaining -= n
                if remaining > 0 { return }
            }
            if inPacket && !frameIsFull {
                inPacket = false
                if reportsEnds && !end(i) { return }
                continue
            }
            if i == count && carry.isEmpty { return }
            let wantPrefix = !inPacket  // a continuation frame needs only its header
            // Fast path: the header and prefix are all in this chunk.
            if carry.isEmpty && count - i >= PacketHeader.size {
                let word = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt32.self))
                let length = Int(word & 0xFF_FFFF)
                let prefixLength = wantPrefix ? Swift.min(length, PacketPrefix.capacity) : 0
                if count - i - PacketHeader.size >= prefixLength {
                    let header = PacketHeader(payloadLength: length, sequenceID: UInt8(truncatingIfNeeded: word >> 24))
                    let headerOffset = i
                    i += PacketHeader.size
                    if !frameStarted(header) {
                        let prefix = PacketPrefix(bytes, at: i, count: prefixLength)
                        if !start(PacketStart(header: header, prefix: prefix), headerOffset) { return }
                    }
                    continue
                }
            }
            // Slow path: gather the header and prefix across reads.
            func take(upTo total: Int) {
                let missing = total - carry.count
                if missing > 0 {
                    let n = Swift.min(missing, count - i)
                    carry.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i..<(i + n)]))
                    i += n
                }
            }
            take(upTo: PacketHeader.size)
            guard carry.count >= PacketHeader.size else { return }
            let length = Int(carry[0]) | Int(carry[1]) << 8 | Int(carry[2]) << 16
            let prefixLength = wantPrefix ? Swift.min(length, PacketPrefix.capacity) : 0
            take(upTo: PacketHeader.size + prefixLength)
            guard carry.count == PacketHeader.size + prefixLength else { return }
            let header = PacketHeader(payloadLength: length, sequenceID: carry[3])
            let prefix = carry.withUnsafeBytes { PacketPrefix(UnsafeRawBufferPointer(rebasing: $0[PacketHeader.size...])) }
            carry.removeAll(keepingCapacity: true)
            let isContinuation = frameStarted(header)
            remaining -= prefixLength  // those payload bytes were consumed while gathering
            if !isContinuation {
                if !start(PacketStart(header: header, prefix: prefix, isSplit: true), 0) { return }
            }
        }
    }

    /// Records a frame header; returns whether it continues the current packet.
    private mutating func frameStarted(_ header: PacketHeader) -> Bool {
        lastSequenceID = header.sequenceID
        frameIsFull = header.payloadLength == PacketHeader.maxPayloadLength
        remaining = header.payloadLength
        if inPacket { return true }
        inPacket = true
        return false
    }
}
