/// Capability flags exchanged in the handshake. The low 32 bits are the classic MySQL flags; the high
/// 32 bits hold MariaDB's extended capabilities, which travel in the greeting's and the handshake
/// response's reserved bytes when the peer clears `CLIENT_MYSQL` (bit 0).
public struct CapabilityFlags: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let longPassword = CapabilityFlags(rawValue: 1 << 0)  // CLIENT_MYSQL in MariaDB
    public static let foundRows = CapabilityFlags(rawValue: 1 << 1)
    public static let longFlag = CapabilityFlags(rawValue: 1 << 2)
    public static let connectWithDB = CapabilityFlags(rawValue: 1 << 3)
    public static let noSchema = CapabilityFlags(rawValue: 1 << 4)
    public static let compress = CapabilityFlags(rawValue: 1 << 5)
    public static let odbc = CapabilityFlags(rawValue: 1 << 6)
    public static let localFiles = CapabilityFlags(rawValue: 1 << 7)
    public static let ignoreSpace = CapabilityFlags(rawValue: 1 << 8)
    public static let protocol41 = CapabilityFlags(rawValue: 1 << 9)
    public static let interactive = CapabilityFlags(rawValue: 1 << 10)
    public static let ssl = CapabilityFlags(rawValue: 1 << 11)
    public static let ignoreSigpipe = CapabilityFlags(rawValue: 1 << 12)
    public static let transactions = CapabilityFlags(rawValue: 1 << 13)
    public static let reserved = CapabilityFlags(rawValue: 1 << 14)
    public static let secureConnection = CapabilityFlags(rawValue: 1 << 15)
    public static let multiStatements = CapabilityFlags(rawValue: 1 << 16)
    public static let multiResults = CapabilityFlags(rawValue: 1 << 17)
    public static let psMultiResults = CapabilityFlags(rawValue: 1 << 18)
    public static let pluginAuth = CapabilityFlags(rawValue: 1 << 19)
    public static let connectAttributes = CapabilityFlags(rawValue: 1 << 20)
    public static let pluginAuthLengthEncodedClientData = CapabilityFlags(rawValue: 1 << 21)
    public static let canHandleExpiredPasswords = CapabilityFlags(rawValue: 1 << 22)
    public static let sessionTrack = CapabilityFlags(rawValue: 1 << 23)
    public static let deprecateEOF = CapabilityFlags(rawValue: 1 << 24)
    public static let optionalResultsetMetadata = CapabilityFlags(rawValue: 1 << 25)
    public static let zstdCompression = CapabilityFlags(rawValue: 1 << 26)
    public static let queryAttributes = CapabilityFlags(rawValue: 1 << 27)
    public static let multiFactorAuthentication = CapabilityFlags(rawValue: 1 << 28)
    public static let capabilityExtension = CapabilityFlags(rawValue: 1 << 29)
    public static let sslVerifyServerCertificate = CapabilityFlags(rawValue: 1 << 30)
    public static let rememberOptions = CapabilityFlags(rawValue: 1 << 31)

    // MariaDB extended capabilities (bits 32...)
    public static let mariaDBProgress = CapabilityFlags(rawValue: 1 << 32)
    public static let mariaDBCommandMulti = CapabilityFlags(rawValue: 1 << 33)
    public static let mariaDBBulkOperations = CapabilityFlags(rawValue: 1 << 34)
    public static let mariaDBExtendedMetadata = CapabilityFlags(rawValue: 1 << 35)
    public static let mariaDBCacheMetadata = CapabilityFlags(rawValue: 1 << 36)

    // MariaDB extended capability of 11.5+, whose responses the proxy does not know yet.
    public static let mariaDBBulkUnitResults = CapabilityFlags(rawValue: 1 << 37)

    /// The flags whose effect on the wire the transparent relay understands and carries unchanged,
    /// so that client and server negotiate through the proxy what they would negotiate directly.
    /// Cleared in both directions: TLS and compression (each link has its own, which the proxy
    /// negotiates itself: see ProxyServer's TLS policy and CompressionSettings), COM_MULTI (no
    /// released server offers it, and its responses cannot be told apart from a packet's first
    /// bytes), CAPABILITY_EXTENSION, MariaDB 11.5's bulk unit results, and any bit not known yet.
    public static let relayable: CapabilityFlags = [
        .longPassword, .foundRows, .longFlag, .connectWithDB, .noSchema, .odbc, .localFiles,
        .ignoreSpace, .protocol41, .interactive, .ignoreSigpipe, .transactions, .reserved,
        .secureConnection, .multiStatements, .multiResults, .psMultiResults, .pluginAuth,
        .connectAttributes, .pluginAuthLengthEncodedClientData, .canHandleExpiredPasswords,
        .sessionTrack, .deprecateEOF, .optionalResultsetMetadata, .queryAttributes,
        .multiFactorAuthentication, .sslVerifyServerCertificate, .rememberOptions,
        .mariaDBProgress, .mariaDBBulkOperations, .mariaDBExtendedMetadata, .mariaDBCacheMetadata,
    ]

    /// What a connection whose script reads commands or results can carry: the relayable flags but
    /// those that take from a script what MySQL Proxy's scripts rely on. Query attributes put
    /// parameters before a COM_QUERY's text (scripts read `packet:sub(2)` as the query), and
    /// metadata caching and optional metadata leave out the column definitions that injected
    /// results (`resultset_is_needed`) are decoded with.
    public static let scriptable: CapabilityFlags = relayable.subtracting([
        .queryAttributes, .optionalResultsetMetadata, .mariaDBCacheMetadata,
    ])

    /// The flags that change how a logged-in session talks or behaves (packet formats, affected
    /// rows, multi-statements, LOCAL INFILE): two sessions that agree on these can share a server
    /// connection. Login-only flags (CONNECT_WITH_DB, PLUGIN_AUTH, CONNECT_ATTRS, ...) don't count,
    /// nor does compression, which each link negotiates on its own.
    public static let sessionAffecting: CapabilityFlags = [
        .longPassword, .foundRows, .longFlag, .noSchema, .localFiles, .ignoreSpace, .protocol41, .interactive,
        .transactions, .multiStatements, .multiResults, .psMultiResults, .sessionTrack, .deprecateEOF,
        .optionalResultsetMetadata, .queryAttributes, .mariaDBProgress, .mariaDBBulkOperations,
        .mariaDBExtendedMetadata, .mariaDBCacheMetadata,
    ]

    /// The low 32 bits (the classic capability field).
    @inlinable public var lower32: UInt32 { UInt32(truncatingIfNeeded: rawValue) }
    /// MariaDB's extended capabilities, as sent in the reserved bytes.
    @inlinable public var mariaDBExtended: UInt32 { UInt32(truncatingIfNeeded: rawValue >> 32) }

    @inlinable public init(lower: UInt32, mariaDBExtended: UInt32 = 0) {
        self.rawValue = UInt64(lower) | UInt64(mariaDBExtended) << 32
    }

    private static let names: [(CapabilityFlags, String)] = [
        (.longPassword, "LONG_PASSWORD"), (.foundRows, "FOUND_ROWS"), (.longFlag, "LONG_FLAG"),
        (.connectWithDB, "CONNECT_WITH_DB"), (.noSchema, "NO_SCHEMA"), (.compress, "COMPRESS"),
        (.odbc, "ODBC"), (.localFiles, "LOCAL_FILES"), (.ignoreSpace, "IGNORE_SPACE"),
        (.protocol41, "PROTOCOL_41"), (.interactive, "INTERACTIVE"), (.ssl, "SSL"),
        (.ignoreSigpipe, "IGNORE_SIGPIPE"), (.transactions, "TRANSACTIONS"), (.reserved, "RESERVED"),
        (.secureConnection, "SECURE_CONNECTION"), (.multiStatements, "MULTI_STATEMENTS"),
        (.multiResults, "MULTI_RESULTS"), (.psMultiResults, "PS_MULTI_RESULTS"),
        (.pluginAuth, "PLUGIN_AUTH"), (.connectAttributes, "CONNECT_ATTRS"),
        (.pluginAuthLengthEncodedClientData, "PLUGIN_AUTH_LENENC_CLIENT_DATA"),
        (.canHandleExpiredPasswords, "CAN_HANDLE_EXPIRED_PASSWORDS"), (.sessionTrack, "SESSION_TRACK"),
        (.deprecateEOF, "DEPRECATE_EOF"), (.optionalResultsetMetadata, "OPTIONAL_RESULTSET_METADATA"),
        (.zstdCompression, "ZSTD_COMPRESSION"), (.queryAttributes, "QUERY_ATTRIBUTES"),
        (.multiFactorAuthentication, "MULTI_FACTOR_AUTHENTICATION"),
        (.capabilityExtension, "CAPABILITY_EXTENSION"),
        (.sslVerifyServerCertificate, "SSL_VERIFY_SERVER_CERT"), (.rememberOptions, "REMEMBER_OPTIONS"),
        (.mariaDBProgress, "MARIADB_PROGRESS"), (.mariaDBCommandMulti, "MARIADB_COM_MULTI"),
        (.mariaDBBulkOperations, "MARIADB_STMT_BULK_OPERATIONS"),
        (.mariaDBExtendedMetadata, "MARIADB_EXTENDED_METADATA"),
        (.mariaDBCacheMetadata, "MARIADB_CACHE_METADATA"), (.mariaDBBulkUnitResults, "MARIADB_BULK_UNIT_RESULTS"),
    ]

    public var description: String {
        var parts: [String] = []
        var rest = self
        for (flag, name) in Self.names where self.contains(flag) {
            parts.append(name)
            rest.remove(flag)
        }
        if !rest.isEmpty { parts.append("0x" + String(rest.rawValue, radix: 16)) }
        return "[" + parts.joined(separator: ", ") + "]"
    }
}

/// The server status flags carried by OK and EOF packets.
public struct ServerStatus: OptionSet, Hashable, Sendable {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let inTransaction = ServerStatus(rawValue: 0x0001)
    public static let autocommit = ServerStatus(rawValue: 0x0002)
    public static let moreResultsExist = ServerStatus(rawValue: 0x0008)
    public static let noGoodIndexUsed = ServerStatus(rawValue: 0x0010)
    public static let noIndexUsed = ServerStatus(rawValue: 0x0020)
    public static let cursorExists = ServerStatus(rawValue: 0x0040)
    public static let lastRowSent = ServerStatus(rawValue: 0x0080)
    public static let databaseDropped = ServerStatus(rawValue: 0x0100)
    public static let noBackslashEscapes = ServerStatus(rawValue: 0x0200)
    public static let metadataChanged = ServerStatus(rawValue: 0x0400)
    public static let queryWasSlow = ServerStatus(rawValue: 0x0800)
    public static let psOutParams = ServerStatus(rawValue: 0x1000)
    public static let inTransactionReadOnly = ServerStatus(rawValue: 0x2000)
    public static let sessionStateChanged = ServerStatus(rawValue: 0x4000)
}
