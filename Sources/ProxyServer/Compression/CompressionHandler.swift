import MySQLWire
import NIOCore

/// MySQL's compressed protocol on one link, under the MySQL framing: inbound compressed frames
/// (7-byte header: compressed length, compressed sequence id, uncompressed length, 0 for a payload
/// sent as it is) come out as the plain bytes they carry; outbound bytes leave as compressed frames.
/// The proxy's other handlers, the response tracker and scripts see plain packets.
///
/// Each frame is decoded as it completes, so memory stays at one frame (at most 16 MiB) whatever
/// the size of a result. Added to a channel when the login that negotiated compression (zlib or
/// zstd, each link on its own) ends.
final class CompressionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Role {
        /// The proxy is the server on this link (the client's): replies continue the client's numbering.
        case server
        /// The proxy is the client (the backend's): a new command starts the numbering at 0.
        case client
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static let headerSize = 7
    static let maxFramePayload = (1 << 24) - 1
    /// Payloads shorter than this go uncompressed, as MySQL's own clients and servers send them.
    static let minimumCompressedLength = 50

    private let role: Role
    private var inbound = ByteBuffer()
    private var lastInboundSequence: UInt8 = 0
    private var readSinceWrite = false
    private var nextSequence: UInt8 = 0
    private let codec: FrameCodec
    let compression: ProtocolCompression
    private var context: ChannelHandlerContext?

    init(role: Role, compression: ProtocolCompression) throws {
        self.role = role
        self.compression = compression
        self.codec = try makeFrameCodec(compression)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        codec.release()
    }

    // MARK: inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        receive(unwrapInboundIn(data), context: context)
    }

    /// Compressed bytes that came before this handler was in place (behind the login's verdict).
    func receiveEarly(_ bytes: ByteBuffer) {
        guard let context, bytes.readableBytes > 0 else { return }
        receive(bytes, context: context)
        context.fireChannelReadComplete()
    }

    private func receive(_ chunk: ByteBuffer, context: ChannelHandlerContext) {
        if inbound.readableBytes == 0 { inbound = chunk } else { var c = chunk; inbound.writeBuffer(&c) }
        deliver(context: context)
    }

    /// Inflates and passes on the frames that are complete, a batch at a time, for as long as the
    /// channel reads (the proxy switches autoRead off while the other side does not keep up): a
    /// read of 1 MiB of well-compressed rows inflates to a hundred times that, which must not be
    /// made at once. The rest waits for the next read request.
    @discardableResult
    private func deliver(context: ChannelHandlerContext) -> Bool {
        var plain: ByteBuffer? = nil
        var delivered = false
        do {
            while let frame = try nextFrame() {
                if plain == nil { plain = frame } else { var f = frame; plain!.writeBuffer(&f) }
                if plain!.readableBytes >= Self.deliveryBatch {
                    context.fireChannelRead(wrapInboundOut(plain!))
                    plain = nil
                    delivered = true
                    if !reading(context) { break }
                }
            }
        } catch {
            inbound.clear()
            context.fireErrorCaught(error)
            return delivered
        }
        if inbound.readableBytes == 0 { inbound = ByteBuffer() } else if inbound.readerIndex > 1 << 16 { inbound.discardReadBytes() }
        if let plain {
            context.fireChannelRead(wrapInboundOut(plain))
            delivered = true
        }
        return delivered
    }

    static let deliveryBatch = 64 * 1024

    private func reading(_ context: ChannelHandlerContext) -> Bool {
        (try? context.channel.syncOptions?.getOption(.autoRead)) ?? true
    }

    /// A read request (reads resumed): frames already here go first.
    func read(context: ChannelHandlerContext) {
        if hasCompleteFrame, deliver(context: context) {
            context.fireChannelReadComplete()
            if hasCompleteFrame { return }  // paused again before all were out
        }
        context.read()
    }

    private var hasCompleteFrame: Bool {
        guard inbound.readableBytes >= Self.headerSize, let length = inbound.getUInt24(at: inbound.readerIndex) else { return false }
        return inbound.readableBytes >= Self.headerSize + length
    }

    private func nextFrame() throws -> ByteBuffer? {
        let start = inbound.readerIndex
        guard inbound.readableBytes >= Self.headerSize,
              let compressedLength = inbound.getUInt24(at: start),
              let sequence = inbound.getInteger(at: start + 3, as: UInt8.self),
              let plainLength = inbound.getUInt24(at: start + 4),
              inbound.readableBytes >= Self.headerSize + compressedLength
        else { return nil }
        inbound.moveReaderIndex(forwardBy: Self.headerSize)
        let payload = inbound.readSlice(length: compressedLength)!
        lastInboundSequence = sequence
        readSinceWrite = true
        if plainLength == 0 { return payload }
        var out = ByteBuffer()
        do {
            try codec.decompress(payload, plainLength: plainLength, into: &out)
        } catch {
            throw Failure(description: "a \(compression) frame that does not inflate to its \(plainLength) bytes: \(error)")
        }
        return out
    }

    // MARK: outbound

    /// Outbound bytes of a packet that is not complete yet.
    private var held = ByteBuffer()

    /// Frames are cut at packet boundaries, as servers and clients cut them: small packets share
    /// frames of about 16 KiB (MariaDB's net buffer), a larger packet has frames of its own. Clients
    /// depend on it: mysql-connector-python cannot read a packet header split between two frames
    /// nor a packet spread over more than two, and libmariadb over TLS stumbles on frames of
    /// megabytes that hold many packets. So the start of a packet whose end has not come yet is
    /// held (at most one packet: 16 MiB) until it has.
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        var bytes = unwrapOutboundIn(data)
        guard bytes.readableBytes > 0 else {
            context.write(data, promise: promise)
            return
        }
        if readSinceWrite {
            readSinceWrite = false
            nextSequence = lastInboundSequence &+ 1
        }
        if role == .client, held.readableBytes == 0, bytes.readableBytes >= 4,
           bytes.getInteger(at: bytes.readerIndex + 3, as: UInt8.self) == 0 {
            nextSequence = 0  // a command: a new exchange
        }
        if held.readableBytes == 0 { held = bytes } else { held.writeBuffer(&bytes) }
        var out = ByteBuffer()
        do {
            var batchStart = held.readerIndex
            var cursor = held.readerIndex
            while held.writerIndex - cursor >= 4, let length = held.getUInt24(at: cursor),
                  held.writerIndex - cursor >= 4 + length {
                let end = cursor + 4 + length
                if end - batchStart > Self.batchPayload && cursor > batchStart {
                    try emit(from: batchStart, to: cursor, into: &out)
                    batchStart = cursor
                }
                cursor = end
                if cursor - batchStart >= Self.batchPayload {
                    try emit(from: batchStart, to: cursor, into: &out)
                    batchStart = cursor
                }
            }
            if cursor > batchStart { try emit(from: batchStart, to: cursor, into: &out) }
            held.moveReaderIndex(to: cursor)
        } catch {
            promise?.fail(error)
            context.fireErrorCaught(error)
            return
        }
        if held.readableBytes == 0 { held = ByteBuffer() } else if held.readerIndex > 1 << 16 { held.discardReadBytes() }
        guard out.readableBytes > 0 else {
            promise?.succeed(())  // all of it is held: the rest of its packet follows
            return
        }
        context.write(wrapOutboundOut(out), promise: promise)
    }

    /// About what MariaDB puts in one compressed frame of small packets (net_buffer_length).
    static let batchPayload = 16 * 1024

    private func emit(from start: Int, to end: Int, into out: inout ByteBuffer) throws {
        var bytes = held.getSlice(at: start, length: end - start)!
        while bytes.readableBytes > 0 {
            var chunk = bytes.readSlice(length: min(bytes.readableBytes, Self.maxFramePayload))!
            try appendFrame(&chunk, to: &out)
        }
    }

    private func appendFrame(_ chunk: inout ByteBuffer, to out: inout ByteBuffer) throws {
        let plainLength = chunk.readableBytes
        let headerAt = out.writerIndex
        out.writeBytes([0, 0, 0, nextSequence, 0, 0, 0])
        nextSequence &+= 1
        var stored = plainLength < Self.minimumCompressedLength
        if !stored {
            stored = try !codec.compress(chunk, into: &out)  // no gain: sent as it is
        }
        if stored { out.writeBuffer(&chunk) }
        out.setUInt24(out.writerIndex - headerAt - Self.headerSize, at: headerAt)
        out.setUInt24(stored ? 0 : plainLength, at: headerAt + 4)
    }
}

extension ByteBuffer {
    fileprivate func getUInt24(at index: Int) -> Int? {
        guard let b = getBytes(at: index, length: 3) else { return nil }
        return Int(b[0]) | Int(b[1]) << 8 | Int(b[2]) << 16
    }

    fileprivate mutating func setUInt24(_ value: Int, at index: Int) {
        setBytes([UInt8(truncatingIfNeeded: value), UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value >> 16)], at: index)
    }
}
