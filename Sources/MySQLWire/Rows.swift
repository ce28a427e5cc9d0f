import NIOCore

/// A row of a text result set (Protocol::TextResultsetRow): each value is a length-encoded string,
/// NULL is 0xFB.
public enum TextRow {
    /// Splits a row into its values (slices of the payload; nil for NULL).
    public static func decode(_ payload: ByteBuffer, columnCount: Int) throws(WireError) -> [ByteBuffer?] {
        var buffer = payload
        var values: [ByteBuffer?] = []
        values.reserveCapacity(columnCount)
        for index in 0..<columnCount {
            values.append(try buffer.readMySQLLengthEncodedSliceOrNull("value of column \(index + 1)"))
        }
        guard buffer.readableBytes == 0 else {
            throw .invalid("text row has \(buffer.readableBytes) bytes after its \(columnCount) values")
        }
        return values
    }

    public static func encode(_ values: [String?], into buffer: inout ByteBuffer) {
        for value in values {
            if let value {
                buffer.writeMySQLLengthEncodedString(value)
            } else {
                buffer.writeInteger(UInt8(0xFB))
            }
        }
    }
}

/// A value of a binary result set row, as the protocol carries it.
public enum BinaryValue: Hashable, Sendable {
    case null
    case signed(Int64)
    case unsigned(UInt64)
    case float(Float)
    case double(Double)
    /// DATE, DATETIME, TIMESTAMP.
    case date(year: UInt16, month: UInt8, day: UInt8, hour: UInt8, minute: UInt8, second: UInt8, microsecond: UInt32, hasTime: Bool)
    /// TIME: a signed duration.
    case time(negative: Bool, days: UInt32, hour: UInt8, minute: UInt8, second: UInt8, microsecond: UInt32)
    /// Strings, decimals, blobs, BIT, ENUM, SET, JSON, GEOMETRY: the bytes as sent.
    case bytes(ByteBuffer)

    /// The value as the text protocol would show it (what a script sees for either kind of row).
    public var text: String? {
        switch self {
        case .null: return nil
        case .signed(let v): return String(v)
        case .unsigned(let v): return String(v)
        case .float(let v): return BinaryValue.format(Double(v), significantDigits: 6)
        case .double(let v): return BinaryValue.format(v, significantDigits: 17)
        case let .date(year, month, day, hour, minute, second, micro, hasTime):
            var s = pad(Int(year), 4) + "-" + pad(Int(month), 2) + "-" + pad(Int(day), 2)
            if hasTime {
                s += " " + pad(Int(hour), 2) + ":" + pad(Int(minute), 2) + ":" + pad(Int(second), 2)
                if micro > 0 { s += "." + pad(Int(micro), 6) }
            }
            return s
        case let .time(negative, days, hour, minute, second, micro):
            var s = negative ? "-" : ""
            s += pad(Int(days) * 24 + Int(hour), 2) + ":" + pad(Int(minute), 2) + ":" + pad(Int(second), 2)
            if micro > 0 { s += "." + pad(Int(micro), 6) }
            return s
        case .bytes(let b): return String(decoding: b.readableBytesView, as: UTF8.self)
        }
    }

    private func pad(_ value: Int, _ width: Int) -> String {
        let s = String(value)
        return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
    }

    static func format(_ value: Double, significantDigits: Int) -> String {
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        // Shortest representation that round-trips, as the server prints doubles.
        return "\(value)"
    }
}

/// A row of a binary result set (Protocol::BinaryResultsetRow): a 0x00 header, a NULL bitmap with a
/// 2-bit offset, then each non-NULL value encoded by its column's type.
public enum BinaryRow {
    public static func decode(_ payload: ByteBuffer, columns: [(type: ColumnType, flags: ColumnFlags)]) throws(WireError) -> [BinaryValue] {
        var buffer = payload
        let header: UInt8 = try buffer.readMySQLInteger("binary row header")
        guard header == 0x00 else { throw .invalid("binary row header is 0x\(String(header, radix: 16))") }
        let bitmap = try buffer.readMySQLBytes(length: (columns.count + 7 + 2) / 8, "NULL bitmap")
        var values: [BinaryValue] = []
        values.reserveCapacity(columns.count)
        for (index, column) in columns.enumerated() {
            let bit = index + 2
            if bitmap[bit / 8] & (1 << UInt8(bit % 8)) != 0 {
                values.append(.null)
                continue
            }
            values.append(try decodeValue(&buffer, type: column.type, unsigned: column.flags.contains(.unsigned), index: index))
        }
        return values
    }

    public static func decodeValue(_ buffer: inout ByteBuffer, type: ColumnType, unsigned: Bool, index: Int) throws(WireError) -> BinaryValue {
        let field = "value of column \(index + 1)"
        switch type {
        case .longlong:
            let v: UInt64 = try buffer.readMySQLInteger(field)
            return unsigned ? .unsigned(v) : .signed(Int64(bitPattern: v))
        case .long, .int24:
            let v: UInt32 = try buffer.readMySQLInteger(field)
            return unsigned ? .unsigned(UInt64(v)) : .signed(Int64(Int32(bitPattern: v)))
        case .short, .year:
            let v: UInt16 = try buffer.readMySQLInteger(field)
            return unsigned || type == .year ? .unsigned(UInt64(v)) : .signed(Int64(Int16(bitPattern: v)))
        case .tiny:
            let v: UInt8 = try buffer.readMySQLInteger(field)
            return unsigned ? .unsigned(UInt64(v)) : .signed(Int64(Int8(bitPattern: v)))
        case .double:
            let v: UInt64 = try buffer.readMySQLInteger(field)
            return .double(Double(bitPattern: v))
        case .float:
            let v: UInt32 = try buffer.readMySQLInteger(field)
            return .float(Float(bitPattern: v))
        case .null:
            return .null
        case .date, .datetime, .timestamp, .newdate, .datetime2, .timestamp2:
            let length: UInt8 = try buffer.readMySQLInteger(field)
            guard [0, 4, 7, 11].contains(length) else { throw .invalid("\(field) has date length \(length)") }
            var year: UInt16 = 0, month: UInt8 = 0, day: UInt8 = 0, hour: UInt8 = 0, minute: UInt8 = 0, second: UInt8 = 0
            var micro: UInt32 = 0
            if length >= 4 {
                year = try buffer.readMySQLInteger(field)
                month = try buffer.readMySQLInteger(field)
                day = try buffer.readMySQLInteger(field)
            }
            if length >= 7 {
                hour = try buffer.readMySQLInteger(field)
                minute = try buffer.readMySQLInteger(field)
                second = try buffer.readMySQLInteger(field)
            }
            if length == 11 { micro = try buffer.readMySQLInteger(field) }
            return .date(year: year, month: month, day: day, hour: hour, minute: minute, second: second,
                         microsecond: micro, hasTime: type != .date && type != .newdate)
        case .time, .time2:
            let length: UInt8 = try buffer.readMySQLInteger(field)
            guard [0, 8, 12].contains(length) else { throw .invalid("\(field) has time length \(length)") }
            if length == 0 { return .time(negative: false, days: 0, hour: 0, minute: 0, second: 0, microsecond: 0) }
            let negative: UInt8 = try buffer.readMySQLInteger(field)
            let days: UInt32 = try buffer.readMySQLInteger(field)
            let hour: UInt8 = try buffer.readMySQLInteger(field)
            let minute: UInt8 = try buffer.readMySQLInteger(field)
            let second: UInt8 = try buffer.readMySQLInteger(field)
            let micro: UInt32 = length == 12 ? try buffer.readMySQLInteger(field) : 0
            return .time(negative: negative == 1, days: days, hour: hour, minute: minute, second: second, microsecond: micro)
        default:
            return .bytes(try buffer.readMySQLLengthEncodedSlice(field))
        }
    }

    /// Encodes a row whose every column is sent as a string (types VAR_STRING/STRING/BLOB/DECIMAL);
    /// used for result sets a script makes up in answer to COM_STMT_EXECUTE.
    public static func encodeStrings(_ values: [String?], into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(0x00))
        var bitmap = [UInt8](repeating: 0, count: (values.count + 7 + 2) / 8)
        for (index, value) in values.enumerated() where value == nil {
            let bit = index + 2
            bitmap[bit / 8] |= 1 << UInt8(bit % 8)
        }
        buffer.writeBytes(bitmap)
        for value in values {
            if let value { buffer.writeMySQLLengthEncodedString(value) }
        }
    }
}
