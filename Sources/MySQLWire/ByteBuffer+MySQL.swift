import NIOCore

// Readers and writers for the protocol's basic data types
// (https://mariadb.com/kb/en/protocol-data-types/): fixed-length little-endian integers,
// length-encoded integers and strings, NUL-terminated strings, strings that run to the end.
// Each reader either consumes a whole field or leaves the buffer untouched and throws.

extension ByteBuffer {
    @inlinable
    public mutating func readMySQLInteger<T: FixedWidthInteger>(as: T.Type = T.self, _ field: @autoclosure () -> String = "integer") throws(WireError) -> T {
        guard let value = self.readInteger(endianness: .little, as: T.self) else {
            throw .truncated(field())
        }
        return value
    }

    /// Reads a 3-byte little-endian integer (packet lengths, some counts).
    @inlinable
    public mutating func readMySQLUInt24(_ field: @autoclosure () -> String = "int<3>") throws(WireError) -> UInt32 {
        guard let bytes = self.readBytes(length: 3) else { throw .truncated(field()) }
        return UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16
    }

    /// Reads a length-encoded integer. `0xFB` (NULL in rows) and `0xFF` (an ERR marker) are not
    /// integers and throw; use `readMySQLLengthEncodedIntegerOrNull` where NULL is allowed.
    @inlinable
    public mutating func readMySQLLengthEncodedInteger(_ field: @autoclosure () -> String = "length-encoded integer") throws(WireError) -> UInt64 {
        guard let value = try self.readMySQLLengthEncodedIntegerOrNull(field()) else {
            throw .invalid("\(field()) is 0xFB (NULL) where a number is required")
        }
        return value
    }

    /// Reads a length-encoded integer, returning nil for the NULL marker `0xFB`.
    @inlinable
    public mutating func readMySQLLengthEncodedIntegerOrNull(_ field: @autoclosure () -> String = "length-encoded integer") throws(WireError) -> UInt64? {
        guard let first = self.getInteger(at: self.readerIndex, as: UInt8.self) else {
            throw .truncated(field())
        }
        let width: Int
        switch first {
        case 0..<0xFB:
            self.moveReaderIndex(forwardBy: 1)
            return UInt64(first)
        case 0xFB:
            self.moveReaderIndex(forwardBy: 1)
            return nil
        case 0xFC: width = 2
        case 0xFD: width = 3
        case 0xFE: width = 8
        default:
            throw .invalid("\(field()) starts with 0xFF")
        }
        guard self.readableBytes >= 1 + width else { throw .truncated(field()) }
        var value: UInt64 = 0
        for i in 0..<width {
            // bounds were checked above
            value |= UInt64(self.getInteger(at: self.readerIndex + 1 + i, as: UInt8.self)!) << (8 * UInt64(i))
        }
        self.moveReaderIndex(forwardBy: 1 + width)
        return value
    }

    /// Reads a length-encoded string as raw bytes (a slice of this buffer: no copy).
    @inlinable
    public mutating func readMySQLLengthEncodedSlice(_ field: @autoclosure () -> String = "length-encoded string") throws(WireError) -> ByteBuffer {
        guard let slice = try self.readMySQLLengthEncodedSliceOrNull(field()) else {
            throw .invalid("\(field()) is NULL")
        }
        return slice
    }

    @inlinable
    public mutating func readMySQLLengthEncodedSliceOrNull(_ field: @autoclosure () -> String = "length-encoded string") throws(WireError) -> ByteBuffer? {
        let save = self.readerIndex
        guard let length = try self.readMySQLLengthEncodedIntegerOrNull(field()) else { return nil }
        guard length <= UInt64(self.readableBytes), let slice = self.readSlice(length: Int(length)) else {
            self.moveReaderIndex(to: save)
            throw .truncated(field())
        }
        return slice
    }

    @inlinable
    public mutating func readMySQLLengthEncodedString(_ field: @autoclosure () -> String = "length-encoded string") throws(WireError) -> String {
        var slice = try self.readMySQLLengthEncodedSlice(field())
        return slice.readString(length: slice.readableBytes) ?? ""
    }

    /// Reads bytes up to a NUL and consumes the NUL.
    @inlinable
    public mutating func readMySQLNullTerminatedString(_ field: @autoclosure () -> String = "NUL-terminated string") throws(WireError) -> String {
        guard let nul = self.readableBytesView.firstIndex(of: 0) else { throw .truncated(field()) }
        let length = nul - self.readerIndex
        let string = self.readString(length: length) ?? ""
        self.moveReaderIndex(forwardBy: 1)
        return string
    }

    /// Reads bytes up to a NUL, or to the end when there is none (some old servers omit the last NUL).
    @inlinable
    public mutating func readMySQLNullTerminatedStringOrRest() -> String {
        if let nul = self.readableBytesView.firstIndex(of: 0) {
            let string = self.readString(length: nul - self.readerIndex) ?? ""
            self.moveReaderIndex(forwardBy: 1)
            return string
        }
        return self.readString(length: self.readableBytes) ?? ""
    }

    @inlinable
    public mutating func readMySQLBytes(length: Int, _ field: @autoclosure () -> String = "bytes") throws(WireError) -> [UInt8] {
        guard length >= 0, let bytes = self.readBytes(length: length) else { throw .truncated(field()) }
        return bytes
    }

    // MARK: writers

    @inlinable
    public mutating func writeMySQLInteger<T: FixedWidthInteger>(_ value: T) {
        self.writeInteger(value, endianness: .little)
    }

    @inlinable
    public mutating func writeMySQLUInt24(_ value: UInt32) {
        self.writeInteger(UInt8(truncatingIfNeeded: value))
        self.writeInteger(UInt8(truncatingIfNeeded: value >> 8))
        self.writeInteger(UInt8(truncatingIfNeeded: value >> 16))
    }

    @inlinable
    public mutating func writeMySQLLengthEncodedInteger(_ value: UInt64) {
        switch value {
        case 0..<0xFB:
            self.writeInteger(UInt8(value))
        case 0xFB...0xFFFF:
            self.writeInteger(UInt8(0xFC))
            self.writeInteger(UInt16(value), endianness: .little)
        case 0x1_0000...0xFF_FFFF:
            self.writeInteger(UInt8(0xFD))
            self.writeMySQLUInt24(UInt32(value))
        default:
            self.writeInteger(UInt8(0xFE))
            self.writeInteger(value, endianness: .little)
        }
    }

    @inlinable
    public mutating func writeMySQLLengthEncodedString(_ string: String) {
        self.writeMySQLLengthEncodedInteger(UInt64(string.utf8.count))
        self.writeString(string)
    }

    @inlinable
    public mutating func writeMySQLLengthEncodedBytes<Bytes: Collection>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        self.writeMySQLLengthEncodedInteger(UInt64(bytes.count))
        self.writeBytes(bytes)
    }

    @inlinable
    public mutating func writeMySQLLengthEncodedBuffer(_ buffer: ByteBuffer) {
        self.writeMySQLLengthEncodedInteger(UInt64(buffer.readableBytes))
        self.writeImmutableBuffer(buffer)
    }

    @inlinable
    public mutating func writeMySQLNullTerminatedString(_ string: String) {
        self.writeString(string)
        self.writeInteger(UInt8(0))
    }
}

/// The number of bytes `writeMySQLLengthEncodedInteger` uses for `value`.
@inlinable
public func mysqlLengthEncodedIntegerSize(_ value: UInt64) -> Int {
    switch value {
    case 0..<0xFB: return 1
    case 0xFB...0xFFFF: return 3
    case 0x1_0000...0xFF_FFFF: return 4
    default: return 9
    }
}
