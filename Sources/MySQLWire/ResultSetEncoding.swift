import NIOCore

/// Builds whole responses (OK, ERR, result sets) as framed packets, for answers the proxy or a
/// script makes up. Result sets come out as the client expects them: with or without the EOF
/// packets (CLIENT_DEPRECATE_EOF), as text rows or, for COM_STMT_EXECUTE, binary rows.
public enum ResponseEncoding {
    public static func ok(_ ok: OKPacket, capabilities: CapabilityFlags, sequenceID: inout UInt8, into out: inout ByteBuffer) {
        var payload = ByteBuffer()
        ok.write(to: &payload, capabilities: capabilities)
        out.writeMySQLPacket(payload, sequenceID: &sequenceID)
    }

    public static func error(_ err: ERRPacket, sequenceID: inout UInt8, into out: inout ByteBuffer) {
        var payload = ByteBuffer()
        err.write(to: &payload)
        out.writeMySQLPacket(payload, sequenceID: &sequenceID)
    }

    /// A result set: column count, definitions, [EOF], rows, then EOF or (DEPRECATE_EOF) an OK
    /// with the 0xFE header. Values are text; in binary rows each is converted for its column's
    /// type (columns whose values do not convert are declared as strings instead).
    public static func resultSet(columns: [ColumnDefinition41], rows: [[String?]], binary: Bool,
                                 capabilities: CapabilityFlags, status: ServerStatus = .autocommit, warnings: UInt16 = 0,
                                 sequenceID: inout UInt8, into out: inout ByteBuffer) {
        var columns = columns
        if binary {
            for (i, column) in columns.enumerated() where !rows.allSatisfy({ row in
                i >= row.count || row[i] == nil || BinaryValueEncoding.canEncode(row[i]!, as: column.type)
            }) {
                columns[i].type = .varString
            }
        }
        var payload = ByteBuffer()
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
        for row in rows {
            payload.clear()
            var values = row
            if values.count < columns.count { values += Array(repeating: nil, count: columns.count - values.count) }
            if values.count > columns.count { values = Array(values.prefix(columns.count)) }
            if binary {
                BinaryValueEncoding.encodeRow(values, columns: columns, into: &payload)
            } else {
                TextRow.encode(values, into: &payload)
            }
            out.writeMySQLPacket(payload, sequenceID: &sequenceID)
        }
        payload.clear()
        if deprecateEOF {
            OKPacket(header: 0xFE, status: status, warnings: warnings).write(to: &payload, capabilities: capabilities)
        } else {
            EOFPacket(warnings: warnings, status: status).write(to: &payload)
        }
        out.writeMySQLPacket(payload, sequenceID: &sequenceID)
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

/// Converting text values to the binary protocol's encodings.
public enum BinaryValueEncoding {
    static func isInteger(_ type: ColumnType) -> Bool {
        [.tiny, .short, .long, .longlong, .int24, .year].contains(type)
    }

    static func isTemporal(_ type: ColumnType) -> Bool {
        [.date, .datetime, .timestamp, .newdate, .time].contains(type)
    }

    public static func canEncode(_ text: String, as type: ColumnType) -> Bool {
        if isInteger(type) { return Int64(text) != nil || UInt64(text) != nil }
        if type == .float || type == .double { return Double(text) != nil }
        if isTemporal(type) { return parseTemporal(text, type: type) != nil }
        return true
    }

    static func encodeRow(_ values: [String?], columns: [ColumnDefinition41], into out: inout ByteBuffer) {
        out.writeInteger(UInt8(0x00))
        var bitmap = [UInt8](repeating: 0, count: (columns.count + 7 + 2) / 8)
        for (i, value) in values.enumerated() where value == nil {
            bitmap[(i + 2) / 8] |= 1 << UInt8((i + 2) % 8)
        }
        out.writeBytes(bitmap)
        for (i, value) in values.enumerated() {
            guard let value else { continue }
            encodeValue(value, type: columns[i].type, into: &out)
        }
    }

    static func encodeValue(_ text: String, type: ColumnType, into out: inout ByteBuffer) {
        switch type {
        case .tiny: out.writeInteger(UInt8(truncatingIfNeeded: Int64(text) ?? Int64(bitPattern: UInt64(text) ?? 0)))
        case .short, .year: out.writeMySQLInteger(UInt16(truncatingIfNeeded: Int64(text) ?? Int64(bitPattern: UInt64(text) ?? 0)))
        case .long, .int24: out.writeMySQLInteger(UInt32(truncatingIfNeeded: Int64(text) ?? Int64(bitPattern: UInt64(text) ?? 0)))
        case .longlong: out.writeMySQLInteger(UInt64(bitPattern: Int64(text) ?? Int64(bitPattern: UInt64(text) ?? 0)))
        case .float: out.writeMySQLInteger(Float(text)?.bitPattern ?? 0)
        case .double: out.writeMySQLInteger(Double(text)?.bitPattern ?? 0)
        case .date, .datetime, .timestamp, .newdate, .time:
            if let bytes = parseTemporal(text, type: type) {
                out.writeInteger(UInt8(bytes.count))
                out.writeBytes(bytes)
            } else {
                out.writeInteger(UInt8(0))
            }
        default:
            out.writeMySQLLengthEncodedString(text)
        }
    }

    /// 'YYYY-MM-DD[ HH:MM:SS[.ffffff]]' or, for TIME, '[-][D ]HH:MM:SS[.ffffff]'.
    static func parseTemporal(_ text: String, type: ColumnType) -> [UInt8]? {
        func number(_ s: Substring) -> Int? { Int(s) }
        if type == .time {
            var s = Substring(text)
            let negative = s.hasPrefix("-")
            if negative { s = s.dropFirst() }
            var days = 0
            if let space = s.firstIndex(of: " ") {
                guard let d = number(s[..<space]) else { return nil }
                days = d
                s = s[s.index(after: space)...]
            }
            let (clock, micro) = splitFraction(s)
            let parts = clock.split(separator: ":")
            guard parts.count == 3, let h = number(parts[0]), let m = number(parts[1]), let sec = number(parts[2]) else { return nil }
            days += h / 24
            var out: [UInt8] = [negative ? 1 : 0]
            withUnsafeBytes(of: UInt32(days).littleEndian) { out += $0 }
            out += [UInt8(h % 24), UInt8(m), UInt8(sec)]
            if micro > 0 { withUnsafeBytes(of: UInt32(micro).littleEndian) { out += $0 } }
            return out
        }
        let pieces = text.split(separator: " ", maxSplits: 1)
        guard let datePart = pieces.first else { return nil }
        let ymd = datePart.split(separator: "-")
        guard ymd.count == 3, let y = number(ymd[0]), let mo = number(ymd[1]), let d = number(ymd[2]) else { return nil }
        var out: [UInt8] = []
        withUnsafeBytes(of: UInt16(truncatingIfNeeded: y).littleEndian) { out += $0 }
        out += [UInt8(truncatingIfNeeded: mo), UInt8(truncatingIfNeeded: d)]
        if pieces.count == 2 {
            let (clock, micro) = splitFraction(pieces[1])
            let hms = clock.split(separator: ":")
            guard hms.count == 3, let h = number(hms[0]), let m = number(hms[1]), let s = number(hms[2]) else { return nil }
            out += [UInt8(truncatingIfNeeded: h), UInt8(truncatingIfNeeded: m), UInt8(truncatingIfNeeded: s)]
            if micro > 0 { withUnsafeBytes(of: UInt32(micro).littleEndian) { out += $0 } }
        }
        return out
    }

    private static func splitFraction(_ s: Substring) -> (Substring, Int) {
        guard let dot = s.firstIndex(of: ".") else { return (s, 0) }
        var digits = String(s[s.index(after: dot)...].prefix(6))
        while digits.count < 6 { digits += "0" }
        return (s[..<dot], Int(digits) ?? 0)
    }
}
