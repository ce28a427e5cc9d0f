import CompressNIO
import CZstd
import MySQLWire
import NIOCore

/// One compressed frame's payload at a time, each compressed and inflated on its own (MySQL's
/// compressed protocol keeps no dictionary between frames).
protocol FrameCodec: AnyObject {
    /// Appends `chunk` compressed to `out`; false (and `out` unchanged) when that would not make
    /// it smaller, so the frame goes as it is.
    func compress(_ chunk: ByteBuffer, into out: inout ByteBuffer) throws -> Bool
    /// Appends the `plainLength` bytes that `payload` inflates to; anything else is an error.
    func decompress(_ payload: ByteBuffer, plainLength: Int, into out: inout ByteBuffer) throws
    func release()
}

struct CodecFailure: Error, CustomStringConvertible {
    var description: String
}

func makeFrameCodec(_ compression: ProtocolCompression) throws -> FrameCodec {
    switch compression {
    case .zlib: return try ZlibFrameCodec()
    case .zstd(let level): return try ZstdFrameCodec(level: level)
    }
}

/// zlib through compress-nio. Its streams are set up once and reset after each frame (deflateReset,
/// inflateReset): setting one up costs hundreds of KiB of allocations.
final class ZlibFrameCodec: FrameCodec {
    private let compressor = CompressionAlgorithm.zlib().compressor
    private let decompressor = CompressionAlgorithm.zlib().decompressor
    private var started = false

    init() throws {
        try compressor.startStream()
        try decompressor.startStream()
        started = true
    }

    func compress(_ chunk: ByteBuffer, into out: inout ByteBuffer) throws -> Bool {
        let plainLength = chunk.readableBytes
        let before = out.writerIndex
        // zlib's deflateBound for a one-shot stream, with room to spare
        out.reserveCapacity(minimumWritableBytes: plainLength + plainLength / 1000 + (plainLength >> 12) + 64)
        var copy = chunk
        try compressor.streamDeflate(from: &copy, to: &out, flush: .finish)
        try compressor.resetStream()
        if out.writerIndex - before >= plainLength {
            out.moveWriterIndex(to: before)
            return false
        }
        return true
    }

    func decompress(_ payload: ByteBuffer, plainLength: Int, into out: inout ByteBuffer) throws {
        var input = payload
        let before = out.writerIndex
        out.reserveCapacity(minimumWritableBytes: plainLength)
        try decompressor.streamInflate(from: &input, to: &out)
        try decompressor.resetStream()
        guard out.writerIndex - before == plainLength else {
            throw CodecFailure(description: "a compressed frame inflates to \(out.writerIndex - before) bytes, its header says \(plainLength)")
        }
    }

    func release() {
        guard started else { return }
        started = false
        try? compressor.finishStream()
        try? decompressor.finishStream()
    }
}

/// zstd through Debian's libzstd: one zstd frame per compressed frame, compressed at the level
/// the link negotiated. Inflating is one-shot into a buffer of the size the header announces, so
/// a frame claiming a large window cannot make the proxy allocate more than that.
final class ZstdFrameCodec: FrameCodec {
    private var cctx: OpaquePointer?
    private var dctx: OpaquePointer?

    init(level: Int) throws {
        guard let c = ZSTD_createCCtx(), let d = ZSTD_createDCtx() else { throw CodecFailure(description: "zstd: out of memory") }
        cctx = c
        dctx = d
        let clamped = Int32(min(max(level, Int(ZSTD_minCLevel())), Int(ZSTD_maxCLevel())))
        try Self.check(ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, clamped), "setting the level")
    }

    deinit { release() }

    private static func check(_ code: Int, _ what: String) throws {
        if ZSTD_isError(code) != 0 {
            throw CodecFailure(description: "zstd \(what): \(String(cString: ZSTD_getErrorName(code)))")
        }
    }

    func compress(_ chunk: ByteBuffer, into out: inout ByteBuffer) throws -> Bool {
        guard let cctx else { throw CodecFailure(description: "zstd: released") }
        let plainLength = chunk.readableBytes
        // no gain unless it fits in fewer bytes than the plain payload
        let capacity = plainLength - 1
        guard capacity > 0 else { return false }
        out.reserveCapacity(minimumWritableBytes: capacity)
        var written = 0
        var failed = 0
        chunk.withUnsafeReadableBytes { src in
            out.withUnsafeMutableWritableBytes { dst in
                let r = ZSTD_compress2(cctx, dst.baseAddress, capacity, src.baseAddress, src.count)
                if ZSTD_isError(r) != 0 { failed = r } else { written = r }
            }
        }
        if failed != 0 {
            ZSTD_CCtx_reset(cctx, ZSTD_reset_session_only)
            // dstSize_tooSmall: it does not shrink; anything else is a real failure
            if ZSTD_getErrorCode(failed) == ZSTD_error_dstSize_tooSmall { return false }
            try Self.check(failed, "compressing")
        }
        out.moveWriterIndex(forwardBy: written)
        return true
    }

    func decompress(_ payload: ByteBuffer, plainLength: Int, into out: inout ByteBuffer) throws {
        guard let dctx else { throw CodecFailure(description: "zstd: released") }
        out.reserveCapacity(minimumWritableBytes: plainLength)
        var result = 0
        payload.withUnsafeReadableBytes { src in
            out.withUnsafeMutableWritableBytes { dst in
                result = ZSTD_decompressDCtx(dctx, dst.baseAddress, plainLength, src.baseAddress, src.count)
            }
        }
        if ZSTD_isError(result) != 0 {
            ZSTD_DCtx_reset(dctx, ZSTD_reset_session_only)
            try Self.check(result, "inflating a frame said to hold \(plainLength) bytes")
        }
        guard result == plainLength else {
            throw CodecFailure(description: "a compressed frame inflates to \(result) bytes, its header says \(plainLength)")
        }
        out.moveWriterIndex(forwardBy: result)
    }

    func release() {
        if let cctx { ZSTD_freeCCtx(cctx) }
        if let dctx { ZSTD_freeDCtx(dctx) }
        cctx = nil
        dctx = nil
    }
}
