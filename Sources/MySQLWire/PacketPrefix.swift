import NIOCore

/// The first bytes (up to 32) of a packet's payload, held inline: no allocation, no reference
/// counting. Every reader is bounds-checked and reports short input as `WireError`.
public struct PacketPrefix: Sendable, Equatable, CustomStringConvertible {
    public static let capacity = 32
    @usableFromInline var storage: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    @usableFromInline var _count: Int = 0
    public var count: Int { _count }

    public init() {}

    /// Copies up to `capacity` bytes.
    @inlinable
    public init(_ bytes: UnsafeRawBufferPointer) {
        let n = Swift.min(bytes.count, Self.capacity)
        self._count = n
        if n > 0 {
            withUnsafeMutableBytes(of: &storage) { $0.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: n) }
        }
    }

    /// The `count` (at most `capacity`) bytes at `offset` in `bytes`. When a whole `capacity`
    /// bytes lie there, they are loaded as four words (no call to memcpy); the ones past `count`
    /// belong to whatever follows and are never read.
    @inlinable @inline(__always)
    public init(_ bytes: UnsafeRawBufferPointer, at offset: Int, count: Int) {
        precondition(offset >= 0 && count >= 0 && count <= Self.capacity && offset + count <= bytes.count)
        if bytes.count - offset >= Self.capacity {
            self._count = count
            self.storage = (bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self),
                            bytes.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self),
                            bytes.loadUnaligned(fromByteOffset: offset + 16, as: UInt64.self),
                            bytes.loadUnaligned(fromByteOffset: offset + 24, as: UInt64.self))
        } else {
            self._count = count
            if count > 0 {
                withUnsafeMutableBytes(of: &storage) { $0.baseAddress!.copyMemory(from: bytes.baseAddress! + offset, byteCount: count) }
            }
        }
    }

    public init(_ buffer: ByteBuffer) {
        self = buffer.withUnsafeReadableBytes { PacketPrefix($0) }
    }

    public init<Bytes: Collection>(bytes: Bytes) where Bytes.Element == UInt8 {
        let array = Array(bytes.prefix(Self.capacity))
        self = array.withUnsafeBytes { PacketPrefix($0) }
    }

    @inlinable
    public subscript(index: Int) -> UInt8? {
        guard index >= 0 && index < count else { return nil }
        return withUnsafeBytes(of: storage) { $0[index] }
    }

    @inlinable
    public func uint16(at index: Int) -> UInt16? {
        guard index >= 0 && index + 2 <= count else { return nil }
        return withUnsafeBytes(of: storage) { UInt16($0[index]) | UInt16($0[index + 1]) << 8 }
    }

    @inlinable
    public func uint32(at index: Int) -> UInt32? {
        guard let low = uint16(at: index), let high = uint16(at: index + 2) else { return nil }
        return UInt32(low) | UInt32(high) << 16
    }

    @inlinable
    public func uint16(at index: Int, _ field: @autoclosure () -> String) throws(WireError) -> UInt16 {
        guard let value = uint16(at: index) else { throw .truncated(field()) }
        return value
    }

    /// Reads a length-encoded integer at `index` and moves `index` past it; 0xFB (NULL) and 0xFF
    /// are not integers.
    @inlinable
    public func lengthEncodedInteger(at index: inout Int, _ field: @autoclosure () -> String) throws(WireError) -> UInt64 {
        guard let first = self[index] else { throw .truncated(field()) }
        let width: Int
        switch first {
        case 0..<0xFB:
            index += 1
            return UInt64(first)
        case 0xFC: width = 2
        case 0xFD: width = 3
        case 0xFE: width = 8
        default: throw .invalid("\(field()) starts with 0x\(String(first, radix: 16))")
        }
        guard index + 1 + width <= count else { throw .truncated(field()) }
        var value: UInt64 = 0
        withUnsafeBytes(of: storage) { bytes in
            for i in 0..<width { value |= UInt64(bytes[index + 1 + i]) << (8 * UInt64(i)) }
        }
        index += 1 + width
        return value
    }

    /// The bytes as a buffer (for tests and logs).
    public var buffer: ByteBuffer {
        withUnsafeBytes(of: storage) { ByteBuffer(bytes: UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
    }

    public static func == (lhs: PacketPrefix, rhs: PacketPrefix) -> Bool {
        lhs.buffer == rhs.buffer
    }

    public var description: String {
        withUnsafeBytes(of: storage) { bytes in
            bytes[0..<count].map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        }
    }
}
