import NIOCore

/// Builds whole responses (OK, ERR, result sets) as framed packets, for answers the proxy or a
/// script makes up. Result sets come out as the client expects them: with or without the EOF
/// packets (CLIENT_DEPRECATE_EOF), as text rows or, for COM_STMT_EXECUTE, binary rows.
public enum ResponseEncoding {
    public static func ok(_ ok: OKPacket, capabilities: CapabilityFlags, sequenceID: inout UInt8, into out: inout ByteBuffer) {
        // written in place behind a header whose length is set once it is known (an OK is far
        // below 16 MiB: one frame)
        out.reserveCapacity(minimumWritableBytes: PacketHeader.size + 16 + ok.info.utf8.count + (ok.sessionStateChanges?.readableBytes ?? 0))
        let start = out.writerIndex
        out.writeInteger(UInt32(0))
        ok.write(to: &out, capabilities: capabilities)
        let length = out.writerIndex - start - PacketHeader.size
        guard length < PacketHeader.maxPayloadLength else {
            // (an info text of 16 MiB: framed the long way)
            let payload = out.getSlice(at: start + PacketHeader.size, length: length)!
            out.moveWriterIndex(to: start)
            return out.writeMySQLPacket(payload, sequenceID: &sequenceID)
        }
        out.setInteger(UInt32(length) | UInt32(sequenceID) << 24, at: start, endianness: .little)
        sequenceID &+= 1
    }

    public static func error(_ err: ERRPacket, sequenceID: inout UInt8, into out: inout ByteBuffer) {
        var payload = ByteBuffer()
        err.write(to: &payload)
        out.writeMySQLPacket(payload, sequenceID: &sequenceID)
    }

    /// A result set: column count, definitions, [EOF], rows, then EOF or (DEPRECATE_EOF) an OK
    /// with the 0xFE header. Values are text; in binary rows each is converted for its column's
    /// type, and a value that does not convert (not a number for a numeric column, a date or time
    /// out of range) is an error: nothing is written then.
    public static func resultSet(columns: [ColumnDefinition41], rows: [[String?]], binary: Bool,
                                 capabilities: CapabilityFlags, status: ServerStatus = .autocommit, warnings: UInt16 = 0,
                                 sequenceID: inout UInt8, into out: inout ByteBuffer) throws(BinaryValueError) {
        var encodedRows: [ByteBuffer] = []
        var payload = ByteBuffer()
        if binary {
            encodedRows.reserveCapacity(rows.count)
            for (r, row) in rows.enumerated() {
                payload.clear()
                try BinaryValueEncoding.encodeRow(fitted(row, columns.count), columns: columns, row: r + 1, into: &payload)
                encodedRows.append(payload)
                payload = ByteBuffer()
            }
        }
        payload.writeMySQLLengthEncodedInteger(UInt64(columns.count))
        if capabilities.contains(.mariaDBCacheMetadata) || capabilities.contains(.optionalResultsetMetadata) {
            payload.writeInteger(UInt8(1))  // the column definitions follow
        }
        out.writeMySQLPacket(payload, sequenceID: &sequenceID)
        let extended = capabilities.contains(.mariaDBExtendedMetadata)
        for column in columns {
            payload.clear()
            column.write(to: &payload, mariaDBExtendedMetadata: extended)
            out.writeMySQLPacket(payload, sequenceID: &sequenceID)
        }
        let deprecateEOF = capabilities.contains(.deprecateEOF)
        if !deprecateEOF {
            payload.clear()
            EOFPacket(warnings: 0, status: status).write(to: &payload)
            out.writeMySQLPacket(payload, sequenceID: &sequenceID)
        }
        if binary {
            for row in encodedRows { out.writeMySQLPacket(row, sequenceID: &sequenceID) }
        } else {
            for row in rows {
                payload.clear()
                TextRow.encode(fitted(row, columns.count), into: &payload)
                out.writeMySQLPacket(payload, sequenceID: &sequenceID)
            }
        }
        payload.clear()
        if deprecateEOF {
            OKPacket(header: 0xFE, status: status, warnings: warnings).write(to: &payload, capabilities: capabilities)
        } else {
            EOFPacket(warnings: warnings, status: status).write(to: &payload)
        }
        out.writeMySQLPacket(payload, sequenceID: &sequenceID)
    }

    /// A row with exactly `count` values: missing ones are NULL, extra ones dropped.
    private static func fitted(_ row: [String?], _ count: Int) -> [String?] {
        if row.count == count { return row }
        if row.count > count { return Array(row.prefix(count)) }
        return row + Array(repeating: nil, count: count - row.count)
    }

    /// Column definitions alone, as COM_FIELD_LIST answers: definitions then EOF (or OK-EOF).
    public static func fieldList(columns: [ColumnDefinition41], capabilities: CapabilityFlags, status: ServerStatus = .autocommit,
                                 sequenceID: inout UInt8, into out: inout ByteBuffer) {
        var payload = ByteBuffer()
        for column in columns {
            payload.clear()
            var c = column
            c.defaultValue = c.defaultValue ?? ByteBuffer()
            c.write(to: &payload, mariaDBExtendedMetadata: capabilities.contains(.mariaDBExtendedMetadata))
            out.writeMySQLPacket(payload, sequenceID: &sequenceID)
        }
        payload.clear()
        if capabilities.contains(.deprecateEOF) {
            OKPacket(header: 0xFE, status: status).write(to: &payload, capabilities: capabilities)
        } else {
            EOFPacket(status: status).write(to: &payload)
        }
        out.writeMySQLPacket(payload, sequenceID: &sequenceID)
    }
}

/// A value a result set cannot carry in the binary protocol.
public struct BinaryValueError: Error, Hashable, Sendable, CustomStringConvertible {
    public var row: Int
    public var column: Int
    public var columnName: String
    public var type: ColumnType
    public var value: String

    public var description: String {
        let shown = value.count > 40 ? String(value.prefix(40)) + "..." : value
        return "row \(row), field \(column) ('\(columnName)'): '\(shown)' is not a valid \(type) value"
    }
}

/// Converting text values to the binary protocol's encodings, within each type's range.
public enum BinaryValueEncoding {
    static func isTemporal(_ type: ColumnType) -> Bool {
        [.date, .datetime, .timestamp, .newdate, .time].contains(type)
    }

    static func encodeRow(_ values: [String?], columns: [ColumnDefinition41], row: Int, into out: inout ByteBuffer) throws(BinaryValueError) {
        out.writeInteger(UInt8(0x00))
        var bitmap = [UInt8](repeating: 0, count: (columns.count + 7 + 2) / 8)
        for (i, value) in values.enumerated() where value == nil {
            bitmap[(i + 2) / 8] |= 1 << UInt8((i + 2) % 8)
        }
        out.writeBytes(bitmap)
        for (i, value) in values.enumerated() {
            guard let value else { continue }
            guard encodeValue(value, type: columns[i].type, into: &out) else {
                throw BinaryValueError(row: row, column: i + 1, columnName: columns[i].name, type: columns[i].type, value: value)
            }
        }
    }

    /// Writes `text` as a value of `type`; false (writing nothing) when it is not one.
    public static func encodeValue(_ text: String, type: ColumnType, into out: inout ByteBuffer) -> Bool {
        func integer(_ range: ClosedRange<Int64>) -> Int64? {
            if let v = Int64(text), range.contains(v) { return v }
            if range.upperBound == .max, let v = UInt64(text) { return Int64(bitPattern: v) }  // BIGINT UNSIGNED
            return nil
        }
        switch type {
        case .tiny:
            guard let v = integer(-128...255) else { return false }
            out.writeInteger(UInt8(truncatingIfNeeded: v))
        case .short, .year:
            guard let v = integer(-32768...65535) else { return false }
            out.writeMySQLInteger(UInt16(truncatingIfNeeded: v))
        case .long, .int24:
            guard let v = integer(-2_147_483_648...4_294_967_295) else { return false }
            out.writeMySQLInteger(UInt32(truncatingIfNeeded: v))
        case .longlong:
            guard let v = integer(Int64.min...Int64.max) else { return false }
            out.writeMySQLInteger(UInt64(bitPattern: v))
        case .float:
            guard let v = Float(text) else { return false }
            out.writeMySQLInteger(v.bitPattern)
        case .double:
            guard let v = Double(text) else { return false }
            out.writeMySQLInteger(v.bitPattern)
        case .date, .datetime, .timestamp, .newdate, .time:
            guard let bytes = parseTemporal(text, type: type) else { return false }
            out.writeInteger(UInt8(bytes.count))
            out.writeBytes(bytes)
        default:
            out.writeMySQLLengthEncodedString(text)
        }
        return true
    }

    /// 'YYYY-MM-DD[ HH:MM:SS[.ffffff]]' or, for TIME, '[-][D ]HH:MM:SS[.ffffff]' (at most 838 hours,
    /// as MySQL's TIME), each part within its range; nil for anything else.
    static func parseTemporal(_ text: String, type: ColumnType) -> [UInt8]? {
        func number(_ s: Substring, max: Int) -> Int? {
            guard !s.isEmpty, s.count <= 10, s.utf8.allSatisfy({ (48...57).contains($0) }), let v = Int(s), v <= max else { return nil }
            return v
        }
        if type == .time {
            var s = Substring(text)
            let negative = s.hasPrefix("-")
            if negative { s = s.dropFirst() }
            var days = 0
            if let space = s.firstIndex(of: " ") {
                guard let d = number(s[..<space], max: 34) else { return nil }
                days = d
                s = s[s.index(after: space)...]
            }
            guard let (clock, micro) = splitFraction(s) else { return nil }
            let parts = clock.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 3, let h = number(parts[0], max: 838), let m = number(parts[1], max: 59),
                  let sec = number(parts[2], max: 59), days * 24 + h <= 838 else { return nil }
            days += h / 24
            var out: [UInt8] = [negative ? 1 : 0]
            withUnsafeBytes(of: UInt32(days).littleEndian) { out += $0 }
            out += [UInt8(h % 24), UInt8(m), UInt8(sec)]
            if micro > 0 { withUnsafeBytes(of: UInt32(micro).littleEndian) { out += $0 } }
            return out
        }
        let pieces = text.split(separator: " ", maxSplits: 1)
        guard let datePart = pieces.first else { return nil }
        let ymd = datePart.split(separator: "-", omittingEmptySubsequences: false)
        guard ymd.count == 3, let y = number(ymd[0], max: 9999), let mo = number(ymd[1], max: 12),
              let d = number(ymd[2], max: 31) else { return nil }
        var out: [UInt8] = []
        withUnsafeBytes(of: UInt16(y).littleEndian) { out += $0 }
        out += [UInt8(mo), UInt8(d)]
        if pieces.count == 2 {
            guard let (clock, micro) = splitFraction(pieces[1]) else { return nil }
            let hms = clock.split(separator: ":", omittingEmptySubsequences: false)
            guard hms.count == 3, let h = number(hms[0], max: 23), let m = number(hms[1], max: 59),
                  let s = number(hms[2], max: 59) else { return nil }
            if type != .date {  // a DATE keeps the date of a date and time
                out += [UInt8(h), UInt8(m), UInt8(s)]
                if micro > 0 { withUnsafeBytes(of: UInt32(micro).littleEndian) { out += $0 } }
            }
        }
        return out
    }

    /// The clock part and its microseconds (at most six digits).
    private static func splitFraction(_ s: Substring) -> (Substring, Int)? {
        guard let dot = s.firstIndex(of: ".") else { return (s, 0) }
        let fraction = s[s.index(after: dot)...]
        guard !fraction.isEmpty, fraction.count <= 6, fraction.utf8.allSatisfy({ (48...57).contains($0) }) else { return nil }
        var digits = String(fraction)
        while digits.count < 6 { digits += "0" }
        return (s[..<dot], Int(digits) ?? 0)
    }
}
