import MySQLWire
import NIOCore

/// What a client session changed on its server since it logged in, as the server reported it in
/// OK packets (the session trackers the proxy turns on for its own connections), with the
/// statements' text only as a backstop for what no tracker reports. Enough to bring another
/// server connection, logged in as the same user, to the same state (`restoreStatements`), or to
/// say why that cannot be done (`pins`).
public struct SessionState: Hashable, Sendable {
    /// Why a session cannot leave its server connection, each until the named state clears (or
    /// for the session's life where nothing clears it).
    public struct Pins: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }

        /// A transaction is open (status flags): until COMMIT / ROLLBACK.
        public static let transaction = Pins(rawValue: 1 << 0)
        /// A temporary table exists (CREATE TEMPORARY TABLE): for the session.
        public static let temporaryTable = Pins(rawValue: 1 << 1)
        /// GET_LOCK: for the session (no tracker reports the lock's release).
        public static let namedLock = Pins(rawValue: 1 << 2)
        /// LOCK TABLES / FLUSH TABLES WITH READ LOCK: until UNLOCK TABLES.
        public static let tableLock = Pins(rawValue: 1 << 3)
        /// HANDLER ... OPEN: for the session.
        public static let handler = Pins(rawValue: 1 << 4)
        /// PREPARE (SQL-level prepared statements): for the session.
        public static let textPrepare = Pins(rawValue: 1 << 5)
        /// SET timestamp: the tracker reports the old value after SET timestamp = DEFAULT.
        public static let timestamp = Pins(rawValue: 1 << 6)
        /// The session changed its own trackers (`session_track_*`).
        public static let trackers = Pins(rawValue: 1 << 7)
        /// The server reported a change the proxy could not read, or that no statement explains.
        public static let untracked = Pins(rawValue: 1 << 8)
        /// A binary prepared statement is open that the proxy cannot prepare again elsewhere (see
        /// ConnectionMachine+Statements; without multiplexing, any).
        public static let preparedStatement = Pins(rawValue: 1 << 9)
        /// A cursor is open (COM_STMT_EXECUTE asking for one): until its statement is reset or closed.
        public static let cursor = Pins(rawValue: 1 << 10)
        /// COM_STMT_SEND_LONG_DATA sent parameter data: until its statement is executed, reset or closed.
        public static let longData = Pins(rawValue: 1 << 12)
        /// XA START: until XA COMMIT / ROLLBACK.
        public static let xa = Pins(rawValue: 1 << 11)
        /// The session changed user (COM_CHANGE_USER).
        public static let changedUser = Pins(rawValue: 1 << 13)
        /// The next statement may ask for FOUND_ROWS(), ROW_COUNT() or the warnings of this one.
        public static let lastStatement = Pins(rawValue: 1 << 14)
        /// User variables are set (carried only where the proxy copies them).
        public static let userVariables = Pins(rawValue: 1 << 15)
        /// The session changed its schema, and its login named none: no statement gives another
        /// connection "no schema" back.
        public static let schemaWithoutLoginDatabase = Pins(rawValue: 1 << 16)

        public static let names: [(Pins, String)] = [
            (.transaction, "transaction"), (.temporaryTable, "temporary_table"), (.namedLock, "get_lock"),
            (.tableLock, "lock_tables"), (.handler, "handler"), (.textPrepare, "prepare"), (.timestamp, "timestamp"),
            (.trackers, "session_track"), (.untracked, "untracked"), (.preparedStatement, "prepared_statement"),
            (.xa, "xa"), (.changedUser, "change_user"), (.cursor, "cursor"), (.longData, "long_data"),
            (.lastStatement, "last_statement"), (.userVariables, "user_variables"),
            (.schemaWithoutLoginDatabase, "schema_without_login_database"),
        ]

        /// The reasons' names, comma-separated ("" for none).
        public var description: String {
            Self.names.filter { contains($0.0) }.map(\.1).joined(separator: ",")
        }
    }

    /// The current schema, when the session changed it since its login.
    public private(set) var schema: String?
    /// System variables the session changed, latest value, in the order first changed; lowercased names.
    public private(set) var variables: [(name: String, value: String)] = []
    /// SQL that gives the next transaction the characteristics the session set (`SET TRANSACTION
    /// ...` / `START TRANSACTION ...`), "" for none.
    public private(set) var transactionCharacteristics = ""
    /// User variables the session set to literals with SET (no tracker reports them), latest
    /// value, in the order first set; lowercased names.
    public private(set) var userVariables: [(name: String, literal: String)] = []
    /// The last id an insert generated (or `LAST_INSERT_ID(n)` set), as OK packets report it:
    /// `LAST_INSERT_ID()` on another connection must say the same.
    public var lastInsertID: UInt64 = 0
    /// The trackers the client itself would have on (what it is shown of each OK).
    public var clientTrackers: SessionTrackSettings
    public var pins: Pins = []
    /// The collation of the `SET NAMES ... COLLATE` on its way (applied with its character sets).
    var pendingCollation: String?

    public init(clientTrackers: SessionTrackSettings = .mariaDBDefaults) {
        self.clientTrackers = clientTrackers
    }

    public static func == (a: SessionState, b: SessionState) -> Bool {
        a.schema == b.schema && a.variables.elementsEqual(b.variables, by: { $0 == $1 })
            && a.userVariables.elementsEqual(b.userVariables, by: { $0 == $1 }) && a.lastInsertID == b.lastInsertID
            && a.transactionCharacteristics == b.transactionCharacteristics && a.clientTrackers == b.clientTrackers && a.pins == b.pins
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(schema)
        for v in variables { hasher.combine(v.name); hasher.combine(v.value) }
        hasher.combine(transactionCharacteristics)
        hasher.combine(pins)
    }

    private mutating func set(_ name: String, _ value: String) {
        if let i = variables.firstIndex(where: { $0.name == name }) {
            variables[i].value = value
        } else {
            variables.append((name, value))
        }
    }

    /// The value the session set for `name`, if it set one.
    public func value(of name: String) -> String? {
        variables.last { $0.name == name }?.value
    }

    /// The most user variables carried for a session (each SET looks its names up, and a move
    /// sets them all).
    static let mostUserVariables = 64

    /// Variables the server reports but a session cannot set (or that are not state).
    static let notRestored: Set<String> = ["last_gtid", "in_transaction", "warning_count", "error_count", "external_user", "proxy_user"]

    /// Applies what one OK packet reported. A state change the trackers report without saying
    /// what changed (a user variable, a temporary table, a PREPARE) is left to the statement
    /// backstop (`noteStatement`); `status` keeps the transaction pin current.
    public mutating func apply(_ items: [SessionTrackItem], status: ServerStatus) {
        updateTransaction(status)
        for item in items {
            do throws(WireError) {
                switch item.kind {
                case .systemVariable:
                    let (rawName, value) = try item.systemVariable()
                    let name = rawName.lowercased()
                    if clientTrackers.apply(variable: name, value: value) {
                        pins.insert(.trackers)
                        continue
                    }
                    if Self.notRestored.contains(name) { continue }
                    if name == "timestamp" { pins.insert(.timestamp) }
                    set(name, value)
                    if name == "character_set_connection" {
                        // the character set brings its default collation, unless SET NAMES named one
                        variables.removeAll { $0.name == "collation_connection" }
                        if let collation = pendingCollation { variables.append(("collation_connection", collation)) }
                    }
                case .schema:
                    schema = try item.string()
                    // no statement leaves a schema for none (the login named one, or the schema was dropped)
                    if schema == "" { pins.insert(.untracked) }
                case .transactionCharacteristics:
                    transactionCharacteristics = try item.string()
                case .stateChange, .gtids, .transactionState, nil:
                    break
                }
            } catch {
                pins.insert(.untracked)
            }
        }
    }

    /// Applies what a statement's text says (see `StatementBackstop`), as the statement goes to
    /// the server.
    public mutating func apply(_ statement: StatementBackstop) {
        pendingCollation = statement.namesCollation
        for setting in statement.trackerSettings { _ = clientTrackers.apply(variable: setting.name, value: setting.value) }
        pins.formUnion(statement.pins)
        pins.subtract(statement.clears.subtracting(statement.pins))
        for (name, literal) in statement.userVariables {
            if let i = userVariables.firstIndex(where: { $0.name == name }) {
                userVariables[i].literal = literal
            } else if userVariables.count < Self.mostUserVariables {
                userVariables.append((name, literal))
            } else {
                pins.insert(.userVariables)  // more than the proxy carries: the session stays where they are
            }
        }
    }

    /// The session's COM_RESET_CONNECTION: what it set is gone (its schema stays).
    public mutating func reset() {
        variables = []
        userVariables = []
        lastInsertID = 0
        transactionCharacteristics = ""
        clientTrackers = .mariaDBDefaults
        pins.subtract([.temporaryTable, .namedLock, .tableLock, .handler, .textPrepare, .timestamp, .trackers,
                       .preparedStatement, .lastStatement, .userVariables, .transaction, .cursor, .longData])
    }

    /// Keeps the transaction pin in step with the status flags of the latest OK or EOF.
    public mutating func updateTransaction(_ status: ServerStatus) {
        if status.contains(.inTransaction) { pins.insert(.transaction) } else { pins.remove(.transaction) }
    }

    /// The statements that bring a server connection freshly logged in as this session's user
    /// (same login database, character set and capabilities) to this state, in order; each
    /// answers with one OK.
    /// `loginDatabase`: the database the login named ("": none), the schema of a session that
    /// never changed it (COM_RESET_CONNECTION keeps the connection's schema as it was).
    public func restoreStatements(loginDatabase: String = "") -> [String] {
        var out: [String] = []
        if let schema = schema ?? (loginDatabase.isEmpty ? nil : loginDatabase), !schema.isEmpty {
            out.append("USE \(Self.quotedIdentifier(schema))")
        }
        if !variables.isEmpty {
            let assignments = variables.map { "@@session.\($0.name) = \(Self.literal(name: $0.name, value: $0.value))" }
            out.append("SET " + assignments.joined(separator: ", "))
        }
        if !userVariables.isEmpty {
            out.append("SET " + userVariables.map { "@\(Self.quotedIdentifier($0.name)) = \($0.literal)" }.joined(separator: ", "))
        }
        if lastInsertID != 0 {
            out.append("DO LAST_INSERT_ID(\(lastInsertID))")
        }
        if !transactionCharacteristics.isEmpty, !transactionCharacteristics.uppercased().contains("START TRANSACTION") {
            // "SET TRANSACTION ...;" possibly several; each is one statement
            for part in transactionCharacteristics.split(separator: ";") where !part.trimmingCharacters(in: " ").isEmpty {
                out.append(String(part.trimmingCharacters(in: " ")))
            }
        }
        return out
    }

    /// A variable's value as SQL: numbers bare, the charset variables' empty value as NULL,
    /// everything else a quoted string.
    static func literal(name: String, value: String) -> String {
        if value.isEmpty, name.hasPrefix("character_set_") || name.hasPrefix("collation_") { return "NULL" }
        if isNumber(value) { return value }
        return quotedString(value)
    }

    static func isNumber(_ s: String) -> Bool {
        var digits = 0
        var dots = 0
        for (i, c) in s.utf8.enumerated() {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digits += 1
            case UInt8(ascii: "."): dots += 1
            case UInt8(ascii: "-") where i == 0: break
            default: return false
            }
        }
        return digits > 0 && dots <= 1
    }

    /// A string literal that reads the same whatever the connection's sql_mode (ANSI_QUOTES,
    /// NO_BACKSLASH_ESCAPES): quoted when it holds only plain characters, else in hex.
    public static func quotedString(_ s: String) -> String {
        let plain = s.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
                || c == UInt8(ascii: "_") || c == UInt8(ascii: ",") || c == UInt8(ascii: ".") || c == UInt8(ascii: ":")
                || c == UInt8(ascii: "+") || c == UInt8(ascii: "-") || c == UInt8(ascii: "/") || c == UInt8(ascii: " ")
        }
        if plain { return "'" + s + "'" }
        let digits = Array("0123456789ABCDEF")
        return "X'" + String(s.utf8.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] }) + "'"
    }

    public static func quotedIdentifier(_ s: String) -> String {
        var out = "`"
        for c in s.unicodeScalars {
            if c == "`" { out += "``" } else { out.unicodeScalars.append(c) }
        }
        return out + "`"
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: Character) -> Substring {
        var s = self[...]
        while s.first == set { s = s.dropFirst() }
        while s.last == set { s = s.dropLast() }
        return Substring(s)
    }
}
