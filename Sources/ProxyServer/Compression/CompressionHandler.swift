import CompressNIO
import NIOCore

/// MySQL's compressed protocol on one link, under the MySQL framing: inbound compressed frames
/// (7-byte header: compressed length, compressed sequence id, uncompressed length, 0 for a payload
/// sent as it is) come out as the plain bytes they carry; outbound bytes leave as compressed frames.
/// The proxy's other handlers, the response tracker and scripts see plain packets.
///
/// Each frame is decoded as it completes, so memory stays at one frame (at most 16 MiB) whatever
/// the size of a result. Added to a channel when the login that negotiated CLIENT_COMPRESS ends.
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
    private let compressor = CompressionAlgorithm.zlib().compressor
    private let decompressor = CompressionAlgorithm.zlib().decompressor
    private var context: ChannelHandlerContext?

    init(role: Role) {
        self.role = role
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

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
        var plain: ByteBuffer? = nil
        do {
            while let frame = try nextFrame() {
                if plain == nil { plain = frame } else { var f = frame; plain!.writeBuffer(&f) }
            }
        } catch {
            inbound.clear()
            context.fireErrorCaught(error)
            return
        }
        if inbound.readableBytes == 0 { inbound = ByteBuffer() } else if inbound.readerIndex > 1 << 16 { inbound.discardReadBytes() }
        if let plain { context.fireChannelRead(wrapInboundOut(plain)) }
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
        var payload = inbound.readSlice(length: compressedLength)!
        lastInboundSequence = sequence
        readSinceWrite = true
        if plainLength == 0 { return payload }
        var out = ByteBuffer()
        out.reserveCapacity(plainLength)
        do {
            try decompressor.inflate(from: &payload, to: &out)
        } catch {
            throw Failure(description: "a compressed frame that does not inflate to its \(plainLength) bytes: \(error)")
        }
        guard out.readableBytes == plainLength else {
            throw Failure(description: "a compressed frame inflates to \(out.readableBytes) bytes, its header says \(plainLength)")
        }
        return out
    }

    // MARK: outbound

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
        if role == .client, bytes.readableBytes >= 4, bytes.getInteger(at: bytes.readerIndex + 3, as: UInt8.self) == 0 {
            nextSequence = 0  // a command: a new exchange
        }
        var out = ByteBuffer()
        do {
            while bytes.readableBytes > 0 {
                var chunk = bytes.readSlice(length: min(bytes.readableBytes, Self.maxFramePayload))!
                try appendFrame(&chunk, to: &out)
            }
        } catch {
            promise?.fail(error)
            context.fireErrorCaught(error)
            return
        }
        context.write(wrapOutboundOut(out), promise: promise)
    }

    private func appendFrame(_ chunk: inout ByteBuffer, to out: inout ByteBuffer) throws {
        let plainLength = chunk.readableBytes
        let headerAt = out.writerIndex
        out.writeBytes([0, 0, 0, nextSequence, 0, 0, 0])
        nextSequence &+= 1
        var stored = plainLength < Self.minimumCompressedLength
        if !stored {
            let before = out.writerIndex
            // zlib's deflateBound for a one-shot stream, with room to spare
            out.reserveCapacity(minimumWritableBytes: plainLength + plainLength / 1000 + (plainLength >> 12) + 64)
            var copy = chunk
            try compressor.deflate(from: &copy, to: &out)
            if out.writerIndex - before >= plainLength {
                out.moveWriterIndex(to: before)  // no gain: sent as it is
                stored = true
            }
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
