import MySQLWire
import NIOCore

/// `proxy.response` as a value: what a hook that returned PROXY_SEND_RESULT wants sent.
public enum ScriptResponse: Sendable, Equatable {
    case ok(affectedRows: UInt64, insertID: UInt64, serverStatus: UInt16?, warnings: UInt16, message: String?)
    case error(code: UInt16, sqlState: String, message: String)
    /// Payloads sent as they are, one packet each, with consecutive sequence ids.
    case raw([ByteBuffer])
    case resultSet(fields: [ScriptField], rows: [[String?]], serverStatus: UInt16?, warnings: UInt16)

    /// What MySQL Proxy sends when `proxy.response` cannot be used.
    public static let handlingFailed = ScriptResponse.error(code: 1105, sqlState: "07000", message: "(lua) handling proxy.response failed, check error-log")

    /// The packets that answer `command` (nil: the handshake phase), starting at `sequenceID`.
    public func encode(command: CommandCode?, capabilities: CapabilityFlags, sequenceID: UInt8) -> ByteBuffer {
        encodeChecked(command: command, capabilities: capabilities, sequenceID: sequenceID).bytes
    }

    /// Like `encode`, and says what is wrong with the response when it cannot be sent (a value a
    /// binary row cannot carry): the client then gets an ERR naming it, as the script's fault.
    public func encodeChecked(command: CommandCode?, capabilities: CapabilityFlags, sequenceID: UInt8) -> (bytes: ByteBuffer, problem: String?) {
        var out = ByteBuffer()
        var seq = sequenceID
        switch self {
        case let .ok(affected, insertID, status, warnings, message):
            let ok = OKPacket(affectedRows: affected, lastInsertID: insertID, status: ServerStatus(rawValue: status ?? ServerStatus.autocommit.rawValue),
                              warnings: warnings, info: message ?? "")
            ResponseEncoding.ok(ok, capabilities: capabilities, sequenceID: &seq, into: &out)
        case let .error(code, sqlState, message):
            ResponseEncoding.error(ERRPacket(code: code, sqlState: sqlState, message: message),
                                   sequenceID: &seq, into: &out)
        case .raw(let packets):
            for packet in packets { out.writeMySQLPacket(packet, sequenceID: &seq) }
        case let .resultSet(fields, rows, status, warnings):
            let columns = fields.map(\.definition)
            let serverStatus = ServerStatus(rawValue: status ?? ServerStatus.autocommit.rawValue)
            if command == .fieldList {
                ResponseEncoding.fieldList(columns: columns, capabilities: capabilities, status: serverStatus, sequenceID: &seq, into: &out)
            } else {
                do {
                    try ResponseEncoding.resultSet(columns: columns, rows: rows,
                                                   binary: command == .stmtExecute || command == .stmtFetch || command == .stmtBulkExecute,
                                                   capabilities: capabilities, status: serverStatus, warnings: warnings, sequenceID: &seq, into: &out)
                } catch {
                    let problem = "proxy.response.resultset cannot be sent in the binary protocol: \(error)"
                    var err = ByteBuffer()
                    var first = sequenceID
                    ResponseEncoding.error(ERRPacket(code: 1105, sqlState: "HY000", message: "(proxy) " + problem), sequenceID: &first, into: &err)
                    return (err, problem)
                }
            }
        }
        return (out, nil)
    }
}

/// A column of a result set a script makes up.
public struct ScriptField: Sendable, Equatable {
    public var name: String
    public var type: ColumnType
    public var table: String = ""
    public var orgName: String = ""
    public var orgTable: String = ""
    public var schema: String = ""

    public init(name: String, type: ColumnType) {
        self.name = name
        self.type = type
    }

    public var definition: ColumnDefinition41 {
        // Flags and length as MySQL Proxy declared its fields.
        var d = ColumnDefinition41(schema: schema, table: table, orgTable: orgTable, name: name, orgName: orgName,
                                   characterSet: 0x21, columnLength: 32, type: type, flags: [.primaryKey], decimals: 0)
        if [.tinyBlob, .mediumBlob, .longBlob, .blob].contains(type) { d.flags.insert(.blob) }
        return d
    }
}
