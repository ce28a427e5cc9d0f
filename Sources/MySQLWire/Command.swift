import NIOCore
/// A command byte: the first byte of every packet a client sends in the command phase.
public struct CommandCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt8) { self.rawValue = rawValue }

    public static let sleep = CommandCode(0x00)
    public static let quit = CommandCode(0x01)
    public static let initDB = CommandCode(0x02)
    public static let query = CommandCode(0x03)
    public static let fieldList = CommandCode(0x04)
    public static let createDB = CommandCode(0x05)
    public static let dropDB = CommandCode(0x06)
    public static let refresh = CommandCode(0x07)
    public static let shutdown = CommandCode(0x08)
    public static let statistics = CommandCode(0x09)
    public static let processInfo = CommandCode(0x0A)
    public static let connect = CommandCode(0x0B)
    public static let processKill = CommandCode(0x0C)
    public static let debug = CommandCode(0x0D)
    public static let ping = CommandCode(0x0E)
    public static let time = CommandCode(0x0F)
    public static let delayedInsert = CommandCode(0x10)
    public static let changeUser = CommandCode(0x11)
    public static let binlogDump = CommandCode(0x12)
    public static let tableDump = CommandCode(0x13)
    public static let connectOut = CommandCode(0x14)
    public static let registerSlave = CommandCode(0x15)
    public static let stmtPrepare = CommandCode(0x16)
    public static let stmtExecute = CommandCode(0x17)
    public static let stmtSendLongData = CommandCode(0x18)
    public static let stmtClose = CommandCode(0x19)
    public static let stmtReset = CommandCode(0x1A)
    public static let setOption = CommandCode(0x1B)
    public static let stmtFetch = CommandCode(0x1C)
    public static let daemon = CommandCode(0x1D)
    public static let binlogDumpGTID = CommandCode(0x1E)
    public static let resetConnection = CommandCode(0x1F)
    /// MariaDB's COM_STMT_BULK_EXECUTE: a prepared statement run for many rows of parameters.
    public static let stmtBulkExecute = CommandCode(0xFA)

    /// Every command with its `COM_` name, as MySQL Proxy exposes them to scripts (`proxy.COM_*`).
    public static let all: [(name: String, code: CommandCode)] = [
        ("SLEEP", .sleep), ("QUIT", .quit), ("INIT_DB", .initDB), ("QUERY", .query),
        ("FIELD_LIST", .fieldList), ("CREATE_DB", .createDB), ("DROP_DB", .dropDB),
        ("REFRESH", .refresh), ("SHUTDOWN", .shutdown), ("STATISTICS", .statistics),
        ("PROCESS_INFO", .processInfo), ("CONNECT", .connect), ("PROCESS_KILL", .processKill),
        ("DEBUG", .debug), ("PING", .ping), ("TIME", .time), ("DELAYED_INSERT", .delayedInsert),
        ("CHANGE_USER", .changeUser), ("BINLOG_DUMP", .binlogDump), ("TABLE_DUMP", .tableDump),
        ("CONNECT_OUT", .connectOut), ("REGISTER_SLAVE", .registerSlave),
        ("STMT_PREPARE", .stmtPrepare), ("STMT_EXECUTE", .stmtExecute),
        ("STMT_SEND_LONG_DATA", .stmtSendLongData), ("STMT_CLOSE", .stmtClose),
        ("STMT_RESET", .stmtReset), ("SET_OPTION", .setOption), ("STMT_FETCH", .stmtFetch),
        ("DAEMON", .daemon), ("BINLOG_DUMP_GTID", .binlogDumpGTID),
        ("RESET_CONNECTION", .resetConnection), ("STMT_BULK_EXECUTE", .stmtBulkExecute),
    ]

    public var name: String {
        for entry in Self.all where entry.code == self { return "COM_" + entry.name }
        return "COM_UNKNOWN(0x" + String(rawValue, radix: 16) + ")"
    }

    public var description: String { name }
}

/// What the server sends back for a command, which is what the response tracker needs to know.
public enum ResponseShape: Hashable, Sendable {
    /// No response at all (COM_QUIT, COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA).
    case none
    /// OK, ERR or a text result set, possibly several (multi-statements, CALL), possibly a LOCAL
    /// INFILE request (COM_QUERY, COM_PROCESS_INFO).
    case textResult
    /// OK, ERR or binary result sets; with a cursor, only the column definitions (COM_STMT_EXECUTE,
    /// COM_STMT_BULK_EXECUTE).
    case binaryResult
    /// Binary rows then EOF, or ERR (COM_STMT_FETCH).
    case fetch
    /// COM_STMT_PREPARE's OK with parameter and column definitions, or ERR.
    case prepare
    /// Column definitions then EOF, or ERR (COM_FIELD_LIST).
    case fieldList
    /// Exactly one packet whatever it starts with (COM_STATISTICS answers with a bare string).
    case singlePacket
    /// OK, ERR or EOF: one packet (COM_PING, COM_INIT_DB, COM_SET_OPTION, COM_STMT_RESET, ...).
    case status
    /// A new authentication exchange that ends with OK or ERR (COM_CHANGE_USER).
    case authentication
    /// A stream of packets until one side closes, an ERR, or with BINLOG_DUMP_NON_BLOCK an EOF
    /// (COM_BINLOG_DUMP, COM_BINLOG_DUMP_GTID).
    case stream

    public init(command: CommandCode) {
        switch command {
        case .quit, .stmtClose, .stmtSendLongData: self = .none
        case .query, .processInfo: self = .textResult
        case .stmtExecute, .stmtBulkExecute: self = .binaryResult
        case .stmtFetch: self = .fetch
        case .stmtPrepare: self = .prepare
        case .fieldList: self = .fieldList
        case .statistics: self = .singlePacket
        case .changeUser: self = .authentication
        case .binlogDump, .binlogDumpGTID: self = .stream
        default: self = .status
        }
    }
}
