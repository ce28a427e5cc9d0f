import NIOCore

/// A column's type code (`MYSQL_TYPE_*`).
public struct ColumnType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt8) { self.rawValue = rawValue }

    public static let decimal = ColumnType(0)
    public static let tiny = ColumnType(1)
    public static let short = ColumnType(2)
    public static let long = ColumnType(3)
    public static let float = ColumnType(4)
    public static let double = ColumnType(5)
    public static let null = ColumnType(6)
    public static let timestamp = ColumnType(7)
    public static let longlong = ColumnType(8)
    public static let int24 = ColumnType(9)
    public static let date = ColumnType(10)
    public static let time = ColumnType(11)
    public static let datetime = ColumnType(12)
    public static let year = ColumnType(13)
    public static let newdate = ColumnType(14)
    public static let varchar = ColumnType(15)
    public static let bit = ColumnType(16)
    public static let timestamp2 = ColumnType(17)
    public static let datetime2 = ColumnType(18)
    public static let time2 = ColumnType(19)
    public static let json = ColumnType(245)
    public static let newdecimal = ColumnType(246)
    public static let `enum` = ColumnType(247)
    public static let set = ColumnType(248)
    public static let tinyBlob = ColumnType(249)
    public static let mediumBlob = ColumnType(250)
    public static let longBlob = ColumnType(251)
    public static let blob = ColumnType(252)
    public static let varString = ColumnType(253)
    public static let string = ColumnType(254)
    public static let geometry = ColumnType(255)

    /// Every type with the name MySQL Proxy gives it (`proxy.MYSQL_TYPE_*`).
    public static let all: [(name: String, type: ColumnType)] = [
        ("DECIMAL", .decimal), ("TINY", .tiny), ("SHORT", .short), ("LONG", .long), ("FLOAT", .float),
        ("DOUBLE", .double), ("NULL", .null), ("TIMESTAMP", .timestamp), ("LONGLONG", .longlong),
        ("INT24", .int24), ("DATE", .date), ("TIME", .time), ("DATETIME", .datetime), ("YEAR", .year),
        ("NEWDATE", .newdate), ("VARCHAR", .varchar), ("BIT", .bit), ("TIMESTAMP2", .timestamp2),
        ("DATETIME2", .datetime2), ("TIME2", .time2), ("JSON", .json), ("NEWDECIMAL", .newdecimal),
        ("ENUM", .enum), ("SET", .set), ("TINY_BLOB", .tinyBlob), ("MEDIUM_BLOB", .mediumBlob),
        ("LONG_BLOB", .longBlob), ("BLOB", .blob), ("VAR_STRING", .varString), ("STRING", .string),
        ("GEOMETRY", .geometry),
    ]

    public var description: String {
        for entry in Self.all where entry.type == self { return "MYSQL_TYPE_" + entry.name }
        return "MYSQL_TYPE_\(rawValue)"
    }
}

public struct ColumnFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let notNull = ColumnFlags(rawValue: 1)
    public static let primaryKey = ColumnFlags(rawValue: 2)
    public static let uniqueKey = ColumnFlags(rawValue: 4)
    public static let multipleKey = ColumnFlags(rawValue: 8)
    public static let blob = ColumnFlags(rawValue: 16)
    public static let unsigned = ColumnFlags(rawValue: 32)
    public static let zerofill = ColumnFlags(rawValue: 64)
    public static let binary = ColumnFlags(rawValue: 128)
    public static let `enum` = ColumnFlags(rawValue: 256)
    public static let autoIncrement = ColumnFlags(rawValue: 512)
    public static let timestamp = ColumnFlags(rawValue: 1024)
    public static let set = ColumnFlags(rawValue: 2048)
    public static let noDefaultValue = ColumnFlags(rawValue: 4096)
    public static let onUpdateNow = ColumnFlags(rawValue: 8192)
    public static let num = ColumnFlags(rawValue: 32768)
}

/// Protocol::ColumnDefinition41.
public struct ColumnDefinition41: Hashable, Sendable {
    public var catalog: String = "def"
    public var schema: String
    public var table: String
    public var orgTable: String
    public var name: String
    public var orgName: String
    public var characterSet: UInt16
    public var columnLength: UInt32
    public var type: ColumnType
    public var flags: ColumnFlags
    public var decimals: UInt8
    /// COM_FIELD_LIST appends the column's default value.
    public var defaultValue: ByteBuffer?

    public init(schema: String = "", table: String = "", orgTable: String = "", name: String, orgName: String = "",
                characterSet: UInt16 = 0x21, columnLength: UInt32 = 0, type: ColumnType = .varString,
                flags: ColumnFlags = [], decimals: UInt8 = 0) {
        self.schema = schema
        self.table = table
        self.orgTable = orgTable
        self.name = name
        self.orgName = orgName
        self.characterSet = characterSet
        self.columnLength = columnLength
        self.type = type
        self.flags = flags
        self.decimals = decimals
        self.defaultValue = nil
    }

    /// Parses a column definition. With MARIADB_CLIENT_EXTENDED_METADATA negotiated, MariaDB sends
    /// an extra length-encoded string (type and format information) after `org_name`.
    public init(parsing payload: ByteBuffer, mariaDBExtendedMetadata: Bool = false) throws(WireError) {
        var buffer = payload
        self.catalog = try buffer.readMySQLLengthEncodedString("catalog")
        self.schema = try buffer.readMySQLLengthEncodedString("schema")
        self.table = try buffer.readMySQLLengthEncodedString("table")
        self.orgTable = try buffer.readMySQLLengthEncodedString("org_table")
        self.name = try buffer.readMySQLLengthEncodedString("name")
        self.orgName = try buffer.readMySQLLengthEncodedString("org_name")
        if mariaDBExtendedMetadata {
            _ = try buffer.readMySQLLengthEncodedSlice("extended metadata")
        }
        let fixed = try buffer.readMySQLLengthEncodedInteger("length of fixed fields")
        guard fixed >= 0x0C, UInt64(buffer.readableBytes) >= fixed else {
            throw .truncated("column definition's fixed fields")
        }
        let fixedEnd = buffer.readerIndex + Int(fixed)
        self.characterSet = try buffer.readMySQLInteger("character set")
        self.columnLength = try buffer.readMySQLInteger("column length")
        self.type = ColumnType(try buffer.readMySQLInteger(as: UInt8.self, "column type"))
        self.flags = ColumnFlags(rawValue: try buffer.readMySQLInteger("column flags"))
        self.decimals = try buffer.readMySQLInteger("decimals")
        buffer.moveReaderIndex(to: fixedEnd)
        self.defaultValue = buffer.readableBytes > 0 ? try buffer.readMySQLLengthEncodedSliceOrNull("default value") : nil
    }

    /// Writes the definition; with MARIADB_CLIENT_EXTENDED_METADATA negotiated, the (empty) extended
    /// type information a MariaDB client then expects after `org_name`.
    public func write(to buffer: inout ByteBuffer, mariaDBExtendedMetadata: Bool = false) {
        buffer.writeMySQLLengthEncodedString(catalog)
        buffer.writeMySQLLengthEncodedString(schema)
        buffer.writeMySQLLengthEncodedString(table)
        buffer.writeMySQLLengthEncodedString(orgTable)
        buffer.writeMySQLLengthEncodedString(name)
        buffer.writeMySQLLengthEncodedString(orgName)
        if mariaDBExtendedMetadata {
            buffer.writeInteger(UInt8(0))
        }
        buffer.writeInteger(UInt8(0x0C))
        buffer.writeMySQLInteger(characterSet)
        buffer.writeMySQLInteger(columnLength)
        buffer.writeInteger(type.rawValue)
        buffer.writeMySQLInteger(flags.rawValue)
        buffer.writeInteger(decimals)
        buffer.writeMySQLInteger(UInt16(0))
        if let value = defaultValue {
            buffer.writeMySQLLengthEncodedBuffer(value)
        }
    }
}
