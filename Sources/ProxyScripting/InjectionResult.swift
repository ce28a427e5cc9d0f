import MySQLWire
import NIOCore
import ProxyCore

/// The result of an injected query, as `read_query_result(inj)` sees it. The proxy fills it in as
/// the response passes (or is buffered, with `resultset_is_needed`); fields and rows are parsed
/// from the buffered packets only when a script asks for them.
@dynamicMemberLookup
public final class InjectionResult {
    /// What the machine saw of the response (`result.rows`, `result.packets`, ... read through).
    public var outcome: InjectionOutcome
    /// The connection whose `read_query_result` got this (set when the hook is called): the only
    /// one that may use it.
    weak var owner: ConnectionScript?

    public init(injection: Injection, buffered: Bool, capabilities: CapabilityFlags) {
        outcome = InjectionOutcome(injection: injection, buffered: buffered, capabilities: capabilities)
    }

    /// The result as the connection's machine saw it pass.
    public init(_ outcome: InjectionOutcome) {
        self.outcome = outcome
    }

    public subscript<T>(dynamicMember field: WritableKeyPath<InjectionOutcome, T>) -> T {
        get { outcome[keyPath: field] }
        set { outcome[keyPath: field] = newValue }
    }

    /// Rows of COM_STMT_EXECUTE (and bulk execute) responses are in the binary protocol.
    public var binary: Bool { outcome.injection.command == .stmtExecute || outcome.injection.command == .stmtBulkExecute }

    struct Parsed {
        var columns: [ColumnDefinition41]
        var firstRow: Int
    }

    private var parsedCache: Parsed??

    /// The column definitions and where the rows start, if the response is a result set.
    var parsed: Parsed? {
        if let cached = parsedCache { return cached }
        let result = parse()
        parsedCache = .some(result)
        return result
    }

    private func parse() -> Parsed? {
        guard var first = outcome.packets.first, let header = first.getInteger(at: first.readerIndex, as: UInt8.self),
              header != 0x00, header != 0xFF, header != 0xFB,
              let count = try? first.readMySQLLengthEncodedInteger(), count > 0, count < 4096,
              outcome.packets.count > Int(count)
        else { return nil }
        var columns: [ColumnDefinition41] = []
        let extended = outcome.capabilities.contains(.mariaDBExtendedMetadata)
        for i in 1...Int(count) {
            guard let column = try? ColumnDefinition41(parsing: outcome.packets[i], mariaDBExtendedMetadata: extended) else { return nil }
            columns.append(column)
        }
        var next = Int(count) + 1
        if !outcome.capabilities.contains(.deprecateEOF) { next += 1 }  // the EOF after the definitions
        return Parsed(columns: columns, firstRow: next)
    }

    /// The row at packet `index` as text values, or nil at the end of the rows.
    func row(at index: Int) -> [String?]?? {
        guard let parsed, index < outcome.packets.count else { return nil }
        let packet = outcome.packets[index]
        let first = packet.getInteger(at: packet.readerIndex, as: UInt8.self)
        if first == 0xFF || (first == 0xFE && packet.readableBytes < PacketHeader.maxPayloadLength) { return nil }
        if binary {
            guard let values = try? BinaryRow.decode(packet, columns: parsed.columns.map { ($0.type, $0.flags) }) else { return .some(nil) }
            return .some(values.map(\.text))
        }
        guard let values = try? TextRow.decode(packet, columnCount: parsed.columns.count) else { return .some(nil) }
        return .some(values.map { $0.map { String(decoding: $0.readableBytesView, as: UTF8.self) } })
    }
}
