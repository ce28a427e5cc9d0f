import NIOCore

/// One piece of session-state information in an OK packet (CLIENT_SESSION_TRACK with
/// SERVER_SESSION_STATE_CHANGED): a type byte and its data, kept as the server sent them so that
/// a filtered packet carries the remaining items byte for byte.
public struct SessionTrackItem: Hashable, Sendable {
    /// The trackers MariaDB and MySQL know (`enum_session_state_type`).
    public enum Kind: UInt8, Sendable {
        case systemVariable = 0
        case schema = 1
        case stateChange = 2
        case gtids = 3
        case transactionCharacteristics = 4
        case transactionState = 5
    }

    public var type: UInt8
    /// The item's data, without its type byte and length.
    public var data: ByteBuffer

    public init(type: UInt8, data: ByteBuffer) {
        self.type = type
        self.data = data
    }

    public var kind: Kind? { Kind(rawValue: type) }

    /// A system variable's new value: its name and value, each length-encoded in the data. An
    /// empty value also stands for NULL (MariaDB reports `SET character_set_results = NULL` so).
    public func systemVariable() throws(WireError) -> (name: String, value: String) {
        guard type == Kind.systemVariable.rawValue else { throw .invalid("not a system variable item") }
        var buffer = data
        let name = try buffer.readMySQLLengthEncodedString("tracked variable name")
        let value = try buffer.readMySQLLengthEncodedString("tracked variable value")
        return (name, value)
    }

    /// The data's one length-encoded string: the schema's name, the transaction's
    /// characteristics (replayable SQL) or state (8 characters); for a state change, its data as
    /// is ("1": MariaDB writes the flag without a length of its own).
    public func string() throws(WireError) -> String {
        var buffer = data
        if kind == .stateChange { return buffer.readString(length: buffer.readableBytes) ?? "" }
        return try buffer.readMySQLLengthEncodedString("tracked value")
    }

    public static func systemVariable(_ name: String, _ value: String) -> SessionTrackItem {
        var data = ByteBuffer()
        data.writeMySQLLengthEncodedString(name)
        data.writeMySQLLengthEncodedString(value)
        return SessionTrackItem(type: Kind.systemVariable.rawValue, data: data)
    }

    public static func string(_ kind: Kind, _ value: String) -> SessionTrackItem {
        var data = ByteBuffer()
        data.reserveCapacity(value.utf8.count + 9)
        data.writeMySQLLengthEncodedString(value)
        return SessionTrackItem(type: kind.rawValue, data: data)
    }

    /// Reads the items of an OK packet's session-state block (its contents, without the block's
    /// own length).
    public static func parse(_ block: ByteBuffer) throws(WireError) -> [SessionTrackItem] {
        var buffer = block
        var items: [SessionTrackItem] = []
        while buffer.readableBytes > 0 {
            let type: UInt8 = try buffer.readMySQLInteger("session track type")
            let data = try buffer.readMySQLLengthEncodedSlice("session track data")
            items.append(SessionTrackItem(type: type, data: data))
        }
        return items
    }

    public static func write(_ items: [SessionTrackItem], to buffer: inout ByteBuffer) {
        for item in items {
            buffer.writeInteger(item.type)
            buffer.writeMySQLLengthEncodedBuffer(item.data)
        }
    }
}

/// What a server writes after an OK packet's warning count, taken apart without losing a byte:
/// the info text (length-encoded: MariaDB writes it so with or without CLIENT_SESSION_TRACK) and
/// the session-state items.
public struct OKPacketTail: Sendable {
    /// The bytes up to and including the warning count.
    public var head: ByteBuffer
    public var status: ServerStatus
    /// The info text's bytes, nil when the packet ends after the warning count.
    public var info: ByteBuffer?
    public var items: [SessionTrackItem]

    /// Takes apart an OK (or CLIENT_DEPRECATE_EOF's 0xFE OK) payload sent to a connection that
    /// negotiated CLIENT_SESSION_TRACK.
    public init(parsing payload: ByteBuffer) throws(WireError) {
        var buffer = payload
        let header: UInt8 = try buffer.readMySQLInteger("OK header")
        guard header == 0x00 || header == 0xFE else { throw .invalid("OK packet header is 0x\(String(header, radix: 16))") }
        _ = try buffer.readMySQLLengthEncodedInteger("OK affected rows")
        _ = try buffer.readMySQLLengthEncodedInteger("OK last insert id")
        status = ServerStatus(rawValue: try buffer.readMySQLInteger("OK status flags"))
        let _: UInt16 = try buffer.readMySQLInteger("OK warning count")
        head = payload.getSlice(at: payload.readerIndex, length: buffer.readerIndex - payload.readerIndex)!
        info = buffer.readableBytes > 0 ? try buffer.readMySQLLengthEncodedSlice("OK info") : nil
        if status.contains(.sessionStateChanged), buffer.readableBytes > 0 {
            items = try SessionTrackItem.parse(try buffer.readMySQLLengthEncodedSlice("OK session state"))
        } else {
            items = []
        }
        guard buffer.readableBytes == 0 else { throw .invalid("\(buffer.readableBytes) bytes after an OK packet's session state") }
    }

    /// The payload a client gets that receives only `kept` of the items: without
    /// CLIENT_SESSION_TRACK (`clientTracks` false) none, and then the flag is cleared and the info
    /// written only when it says something, as the server writes an OK for such a client.
    public func payload(keeping kept: [SessionTrackItem], clientTracks: Bool) -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(head.readableBytes + (info?.readableBytes ?? 0) + 16)
        var head = self.head
        let statusAt = head.writerIndex - 4
        let items = clientTracks ? kept : []
        var newStatus = status
        if items.isEmpty { newStatus.remove(.sessionStateChanged) } else { newStatus.insert(.sessionStateChanged) }
        head.setInteger(newStatus.rawValue, at: statusAt, endianness: .little)
        out.writeImmutableBuffer(head)
        let hasInfo = (info?.readableBytes ?? 0) > 0
        if !items.isEmpty || hasInfo {
            out.writeMySQLLengthEncodedBuffer(info ?? ByteBuffer())
        }
        if !items.isEmpty {
            var block = ByteBuffer()
            SessionTrackItem.write(items, to: &block)
            out.writeMySQLLengthEncodedBuffer(block)
        }
        return out
    }
}

/// Which trackers a session has on (its `session_track_*` variables), and so which items of an
/// OK packet it would have been sent had the proxy not turned more of them on.
public struct SessionTrackSettings: Hashable, Sendable {
    public enum TransactionInfo: Int, Comparable, Sendable {
        case off = 0, state, characteristics
        public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    }

    /// Lowercased names; nil tracks every variable ('*').
    public var systemVariables: Set<String>?
    public var schema: Bool
    public var stateChange: Bool
    public var transactionInfo: TransactionInfo
    /// `session_track_gtids` other than OFF.
    public var gtids: Bool

    /// MariaDB 10.11's defaults.
    public static let mariaDBDefaults = SessionTrackSettings(
        systemVariables: ["autocommit", "character_set_client", "character_set_connection", "character_set_results", "time_zone"],
        schema: true, stateChange: false, transactionInfo: .off, gtids: false)

    /// What the proxy turns on for its own bookkeeping.
    public static let everything = SessionTrackSettings(systemVariables: nil, schema: true, stateChange: true, transactionInfo: .characteristics, gtids: false)

    public init(systemVariables: Set<String>?, schema: Bool, stateChange: Bool, transactionInfo: TransactionInfo, gtids: Bool) {
        self.systemVariables = systemVariables
        self.schema = schema
        self.stateChange = stateChange
        self.transactionInfo = transactionInfo
        self.gtids = gtids
    }

    /// `session_track_system_variables` as the server shows it: a comma-separated list, '*' for all.
    public static func variableList(_ value: String) -> Set<String>? {
        var names = Set<String>()
        for part in value.split(separator: ",") {
            let name = part.trimmingSpaces().lowercased()
            if name == "*" { return nil }
            if !name.isEmpty { names.insert(name) }
        }
        return names
    }

    /// Whether a session with these settings is sent `item`.
    public func wants(_ item: SessionTrackItem) -> Bool {
        switch item.kind {
        case .systemVariable:
            guard let names = systemVariables else { return true }
            guard let name = try? item.systemVariable().name else { return false }
            return names.contains(name.lowercased())
        case .schema: return schema
        case .stateChange: return stateChange
        case .gtids: return gtids
        case .transactionCharacteristics: return transactionInfo == .characteristics
        case .transactionState: return transactionInfo >= .state
        case nil: return true
        }
    }

    /// Applies a change of one of the `session_track_*` variables (as tracked); false for any
    /// other variable.
    public mutating func apply(variable name: String, value: String) -> Bool {
        let on = ["on", "1", "true"].contains(value.lowercased())
        switch name.lowercased() {
        case "session_track_system_variables": systemVariables = Self.variableList(value)
        case "session_track_schema": schema = on
        case "session_track_state_change": stateChange = on
        case "session_track_gtids": gtids = !(value.lowercased() == "off" || value == "0")
        case "session_track_transaction_info":
            switch value.lowercased() {
            case "state", "1": transactionInfo = .state
            case "characteristics", "2": transactionInfo = .characteristics
            default: transactionInfo = .off
            }
        default: return false
        }
        return true
    }
}

extension Substring {
    func trimmingSpaces() -> Substring {
        var s = self
        while let c = s.first, c == " " || c == "\t" || c == "\n" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" || c == "\n" { s = s.dropLast() }
        return s
    }
}
