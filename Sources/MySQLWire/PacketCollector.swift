import NIOCore

/// Turns a byte stream into whole logical packets (frames joined), for the places where the proxy
/// must see or rewrite entire packets: scripted commands and buffered results. Single-frame
/// packets come out as slices of the input; only packets of 16 MiB and more are copied together.
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

    private var pending = ByteBuffer()
    private var assembler: PacketAssembler

    public init(maximumPacketLength: Int = 64 << 20) {
        assembler = PacketAssembler(maximumPacketLength: maximumPacketLength)
    }

    /// The largest packet this collector assembles.
    public var maximumPacketLength: Int {
        get { assembler.maximumPacketLength }
        set { assembler.maximumPacketLength = newValue }
    }

    /// No partial packet is held.
    public var isEmpty: Bool { pending.readableBytes == 0 && !assembler.isAssembling }

    /// Bytes held waiting for the rest of their packet.
    public var bufferedBytes: Int { pending.readableBytes }

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
    /// be handed to another reader; nil while a packet of several frames is half assembled.
    public mutating func takeUnread() -> ByteBuffer? {
        guard !assembler.isAssembling else { return nil }
        let rest = pending
        pending = ByteBuffer()
        return rest
    }

    /// Forgets everything held.
    public mutating func reset() {
        pending = ByteBuffer()
        assembler = PacketAssembler(maximumPacketLength: assembler.maximumPacketLength)
    }

    /// The next whole packet, or nil until more bytes arrive. A packet longer than the maximum is
    /// refused as soon as a frame header shows it, before its bytes are held.
    public mutating func next() throws(WireError) -> Collected? {
        while true {
            let start = pending.readerIndex
            if let header = PacketHeader.peek(pending, at: start),
               assembler.assembledLength + header.payloadLength > assembler.maximumPacketLength {
                throw .tooLarge(limit: assembler.maximumPacketLength, sequenceID: header.sequenceID)
            }
            guard let frame = pending.readMySQLFrame() else { break }
            let continuing = assembler.isAssembling
            let firstLength = continuing ? PacketHeader.maxPayloadLength : frame.payload.readableBytes
            if let packet = try assembler.append(frame) {
                var raw: ByteBuffer? = nil
                if !continuing && !frame.continues {
                    raw = pending.getSlice(at: start, length: pending.readerIndex - start)
                }
                if pending.readableBytes == 0 { pending = ByteBuffer() }
                return Collected(packet: packet, firstFrameLength: firstLength, raw: raw)
            }
        }
        if pending.readableBytes == 0 { pending = ByteBuffer() }
        return nil
    }

    /// What the response tracker and scanner call a packet start, for a whole packet.
    public static func start(of packet: MySQLFrame, firstFrameLength: Int) -> FrameScanner.PacketStart {
        let prefixLength = Swift.min(packet.payload.readableBytes, PacketPrefix.capacity)
        let prefix = packet.payload.withUnsafeReadableBytes { PacketPrefix(UnsafeRawBufferPointer(rebasing: $0[0..<prefixLength])) }
        return FrameScanner.PacketStart(header: PacketHeader(payloadLength: firstFrameLength, sequenceID: packet.sequenceID), prefix: prefix)
    }
}
