import NIOCore

/// Turns a byte stream into whole logical packets (frames joined), for the places where the proxy
/// must see or rewrite entire packets: scripted commands and buffered results. Single-frame
/// packets come out as slices of the input; only packets of 16 MiB and more are copied together.
///
/// Memory stays near what arrived: a packet longer than `maximumPacketLength` is refused as soon
/// as a frame header shows it; the reads that make up a large frame are kept as they came (never
/// copied into a buffer that grows, which would hold the frame twice while it moves and round it
/// up to twice its size); the pieces of a multi-frame packet are joined once, when the last frame
/// came.
public struct PacketCollector: Sendable {
    public struct Collected: Sendable {
        /// The whole payload, with the sequence id of its first frame.
        public var packet: MySQLFrame
        /// The length of the first frame (what the response tracker needs to know about it).
        public var firstFrameLength: Int
        /// The packet's bytes as they came (header included) when it was a single frame, so that
        /// it can be passed on without being framed again.
        public var raw: ByteBuffer?

        public init(packet: MySQLFrame, firstFrameLength: Int, raw: ByteBuffer?) {
            self.packet = packet
            self.firstFrameLength = firstFrameLength
            self.raw = raw
        }

        /// What the response tracker and scanner call a packet start.
        public var start: FrameScanner.PacketStart {
            PacketCollector.start(of: packet, firstFrameLength: firstFrameLength)
        }
    }

    /// Frames at least this long are kept in the pieces they arrive in.
    static let streamingThreshold = 1 << 16

    /// Input not consumed yet: small frames, partial headers.
    private var pending = ByteBuffer()
    /// The large frame being received: its header, and the payload bytes received so far (in `pieces`).
    private var large: (header: PacketHeader, received: Int)?
    /// Payload pieces of the packet being assembled (earlier frames, and the large frame under way),
    /// and the payload bytes of its complete frames.
    private var pieces: [ByteBuffer] = []
    private var assembled = 0
    private var firstSequenceID: UInt8 = 0
    /// The largest packet this collector assembles.
    public var maximumPacketLength: Int

    public init(maximumPacketLength: Int = 64 << 20) {
        self.maximumPacketLength = maximumPacketLength
    }

    /// No partial packet is held.
    public var isEmpty: Bool { pending.readableBytes == 0 && large == nil && pieces.isEmpty }

    /// Bytes held waiting for the rest of their packet.
    public var bufferedBytes: Int { pending.readableBytes + (large?.received ?? 0) + assembled }

    public mutating func append(_ chunk: ByteBuffer) {
        if pending.readableBytes == 0 {
            pending = chunk
        } else {
            // Drop what was consumed before it piles up in front of a packet that is still partial.
            if pending.readerIndex > 1 << 16 { pending.discardReadBytes() }
            pending.writeImmutableBuffer(chunk)
        }
    }

    /// The bytes held that `next()` has not returned, as they came (a partial packet included), to
    /// be handed to another reader; nil while a large frame or a packet of several frames is under way.
    public mutating func takeUnread() -> ByteBuffer? {
        guard large == nil && pieces.isEmpty else { return nil }
        let rest = pending
        pending = ByteBuffer()
        return rest
    }

    /// The sequence id of the packet `next()` returns next (its first frame's), once its header
    /// is here; nil before.
    public func peekSequence() -> UInt8? {
        if large != nil || !pieces.isEmpty { return firstSequenceID }
        return PacketHeader.peek(pending, at: pending.readerIndex)?.sequenceID
    }

    /// Gives up on the packet under way (one `next()` refused as too large): forgets what was
    /// assembled of it and returns the bytes not consumed, from the header of the frame `next()`
    /// stopped at (to be skipped by a reader that only wants to know where the packet ends).
    public mutating func abandonPacket() -> ByteBuffer {
        let rest = pending
        reset()
        return rest
    }

    /// Forgets everything held.
    public mutating func reset() {
        pending = ByteBuffer()
        large = nil
        pieces = []
        assembled = 0
    }

    /// The next whole packet, or nil until more bytes arrive. A packet longer than the maximum is
    /// refused as soon as a frame header shows it, before its bytes are held.
    public mutating func next() throws(WireError) -> Collected? {
        while true {
            if var frame = large {
                let missing = frame.header.payloadLength - frame.received
                if let part = pending.readSlice(length: Swift.min(missing, pending.readableBytes)), part.readableBytes > 0 {
                    pieces.append(part)
                    frame.received += part.readableBytes
                }
                guard frame.received == frame.header.payloadLength else {
                    large = frame
                    compact()
                    return nil
                }
                large = nil
                if let packet = frameCompleted(frame.header, piece: nil) { return packet }
                continue
            }
            let start = pending.readerIndex
            guard let header = PacketHeader.peek(pending, at: start) else {
                compact()
                return nil
            }
            guard assembled + header.payloadLength <= maximumPacketLength else {
                throw .tooLarge(limit: maximumPacketLength, sequenceID: header.sequenceID)
            }
            if pending.readableBytes >= PacketHeader.size + header.payloadLength {
                let raw = pending.readSlice(length: PacketHeader.size + header.payloadLength)!
                let payload = raw.getSlice(at: raw.readerIndex + PacketHeader.size, length: header.payloadLength)!
                if pieces.isEmpty && header.payloadLength < PacketHeader.maxPayloadLength {
                    compact()
                    return Collected(packet: MySQLFrame(sequenceID: header.sequenceID, payload: payload),
                                     firstFrameLength: header.payloadLength, raw: raw)
                }
                if let packet = frameCompleted(header, piece: payload) { return packet }
                continue
            }
            guard header.payloadLength >= Self.streamingThreshold else {
                compact()
                return nil
            }
            // A large frame: its bytes are kept in the pieces they arrive in.
            pending.moveReaderIndex(forwardBy: PacketHeader.size)
            if pieces.isEmpty { firstSequenceID = header.sequenceID }
            large = (header, 0)
        }
    }

    /// A frame of a multi-frame packet, or a large frame, is complete (`piece` is its payload when
    /// it came whole); returns the packet when this frame ends it.
    private mutating func frameCompleted(_ header: PacketHeader, piece: ByteBuffer?) -> Collected? {
        if let piece {
            if pieces.isEmpty { firstSequenceID = header.sequenceID }
            pieces.append(piece)
        }
        assembled += header.payloadLength
        guard header.payloadLength < PacketHeader.maxPayloadLength else { return nil }
        var whole = ByteBuffer()
        whole.reserveCapacity(assembled)
        for part in pieces { whole.writeImmutableBuffer(part) }
        let firstLength = Swift.min(assembled, PacketHeader.maxPayloadLength)
        pieces = []
        assembled = 0
        compact()
        return Collected(packet: MySQLFrame(sequenceID: firstSequenceID, payload: whole), firstFrameLength: firstLength, raw: nil)
    }

    private mutating func compact() {
        if pending.readableBytes == 0 {
            pending = ByteBuffer()
        } else if pending.readerIndex > 1 << 16 {
            pending.discardReadBytes()
        }
    }

    /// What the response tracker and scanner call a packet start, for a whole packet.
    public static func start(of packet: MySQLFrame, firstFrameLength: Int) -> FrameScanner.PacketStart {
        let prefixLength = Swift.min(packet.payload.readableBytes, PacketPrefix.capacity)
        let prefix = packet.payload.withUnsafeReadableBytes { PacketPrefix(UnsafeRawBufferPointer(rebasing: $0[0..<prefixLength])) }
        return FrameScanner.PacketStart(header: PacketHeader(payloadLength: firstFrameLength, sequenceID: packet.sequenceID), prefix: prefix)
    }
}
