import NIOCore

/// An OK packet (header 0x00), or the OK-shaped packet with header 0xFE that ends a result set when
/// CLIENT_DEPRECATE_EOF is on.
public struct OKPacket: Hashable, Sendable {
    public var header: UInt8
    public var affectedRows: UInt64
    public var lastInsertID: UInt64
    public var status: ServerStatus
    public var warnings: UInt16
    /// Human-readable info ("Rows matched: 1  Changed: 1  Warnings: 0").
    public var info: String
    /// Raw session state change data (CLIENT_SESSION_TRACK with SERVER_SESSION_STATE_CHANGED).
    public var sessionStateChanges: ByteBuffer?

    public init(header: UInt8 = 0x00, affectedRows: UInt64 = 0, lastInsertID: UInt64 = 0,
                status: ServerStatus = .autocommit, warnings: UInt16 = 0, info: String = "",
                sessionStateChanges: ByteBuffer? = nil) {
        self.header = header
        self.affectedRows = affectedRows
        self.lastInsertID = lastInsertID
        self.status = status
        self.warnings = warnings
        self.info = info
        self.sessionStateChanges = sessionStateChanges
    }

    public init(parsing payload: ByteBuffer, capabilities: CapabilityFlags) throws(WireError) {
        var buffer = payload
        let header: UInt8 = try buffer.readMySQLInteger("OK header")
        guard header == 0x00 || header == 0xFE else { throw .invalid("OK packet header is 0x\(String(header, radix: 16))") }
        self.header = header
        self.affectedRows = try buffer.readMySQLLengthEncodedInteger("OK affected rows")
        self.lastInsertID = try buffer.readMySQLLengthEncodedInteger("OK last insert id")
        self.status = ServerStatus(rawValue: try buffer.readMySQLInteger("OK status flags"))
        self.warnings = try buffer.readMySQLInteger("OK warning count")
        self.sessionStateChanges = nil
        if capabilities.contains(.sessionTrack) {
            if buffer.readableBytes > 0 {
                self.info = try buffer.readMySQLLengthEncodedString("OK info")
                if status.contains(.sessionStateChanged) {
                    self.sessionStateChanges = try buffer.readMySQLLengthEncodedSlice("OK session state")
                }
            } else {
                self.info = ""
            }
        } else {
            self.info = buffer.readString(length: buffer.readableBytes) ?? ""
        }
    }

    /// Reads only what the response tracker needs from an OK packet's first bytes: affected rows,
    /// last insert id, status flags and warnings (at most 1 + 9 + 9 + 4 bytes).
    @inlinable
    public static func peekStatus(_ prefix: PacketPrefix) throws(WireError) -> (status: ServerStatus, warnings: UInt16, affectedRows: UInt64, lastInsertID: UInt64) {
        var index = 1
        let affected = try prefix.lengthEncodedInteger(at: &index, "OK affected rows")
        let insertID = try prefix.lengthEncodedInteger(at: &index, "OK last insert id")
        let status = try prefix.uint16(at: index, "OK status flags")
        let warnings = try prefix.uint16(at: index + 2, "OK warning count")
        return (ServerStatus(rawValue: status), warnings, affected, insertID)
    }

    public func write(to buffer: inout ByteBuffer, capabilities: CapabilityFlags) {
        // the fixed part in one access to the buffer (each write is one, and an OK is written for
        // most commands a script answers, and for every pooled login)
        let (header, affectedRows, lastInsertID, flags, warnings) = (self.header, self.affectedRows, self.lastInsertID, self.status.rawValue, self.warnings)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 23) { out in
            var n = 0
            func byte(_ b: UInt8) { out[n] = b; n += 1 }
            func little(_ v: UInt64, _ width: Int) { for i in 0..<width { byte(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
            func lenenc(_ v: UInt64) {
                // (as writeMySQLLengthEncodedInteger: the marker, then the width mysqlLengthEncodedIntegerSize says)
                let size = mysqlLengthEncodedIntegerSize(v)
                guard size > 1 else { return byte(UInt8(v)) }
                byte(size == 3 ? 0xFC : size == 4 ? 0xFD : 0xFE)
                little(v, size - 1)
            }
            byte(header)
            lenenc(affectedRows)
            lenenc(lastInsertID)
            little(UInt64(flags), 2)
            little(UInt64(warnings), 2)
            return n
        }
        if capabilities.contains(.sessionTrack) {
            if !info.isEmpty || sessionStateChanges != nil {
                buffer.writeMySQLLengthEncodedString(info)
            }
            if let changes = sessionStateChanges, status.contains(.sessionStateChanged) {
                buffer.writeMySQLLengthEncodedBuffer(changes)
            }
        } else {
            buffer.writeString(info)
        }
    }
}

/// An ERR packet. Before the handshake has settled PROTOCOL_41 (and for clients without it) there is
/// no SQLSTATE; otherwise the message is preceded by '#' and a 5-character SQLSTATE.
public struct ERRPacket: Hashable, Sendable, Error, CustomStringConvertible {
    public var code: UInt16
    public var sqlState: String?
    public var message: String

    public init(code: UInt16, sqlState: String? = "HY000", message: String) {
        self.code = code
        self.sqlState = sqlState
        self.message = message
    }

    public init(parsing payload: ByteBuffer) throws(WireError) {
        var buffer = payload
        let header: UInt8 = try buffer.readMySQLInteger("ERR header")
        guard header == 0xFF else { throw .invalid("ERR packet header is 0x\(String(header, radix: 16))") }
        self.code = try buffer.readMySQLInteger("ERR code")
        if buffer.readableBytes >= 6, buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == UInt8(ascii: "#") {
            buffer.moveReaderIndex(forwardBy: 1)
            self.sqlState = buffer.readString(length: 5)
        } else {
            self.sqlState = nil
        }
        self.message = buffer.readString(length: buffer.readableBytes) ?? ""
    }

    public func write(to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(0xFF))
        buffer.writeMySQLInteger(code)
        if let state = sqlState {
            buffer.writeInteger(UInt8(ascii: "#"))
            var padded = Array(state.utf8.prefix(5))
            while padded.count < 5 { padded.append(UInt8(ascii: "0")) }
            buffer.writeBytes(padded)
        }
        buffer.writeString(message)
    }

    public var description: String {
        "ERROR \(code) (\(sqlState ?? "HY000")): \(message)"
    }
}

/// An EOF packet (header 0xFE, fewer than 9 bytes), used when CLIENT_DEPRECATE_EOF is off.
public struct EOFPacket: Hashable, Sendable {
    public var warnings: UInt16
    public var status: ServerStatus

    public init(warnings: UInt16 = 0, status: ServerStatus = .autocommit) {
        self.warnings = warnings
        self.status = status
    }

    public init(parsing payload: ByteBuffer) throws(WireError) {
        var buffer = payload
        let header: UInt8 = try buffer.readMySQLInteger("EOF header")
        guard header == 0xFE else { throw .invalid("EOF packet header is 0x\(String(header, radix: 16))") }
        if buffer.readableBytes == 0 {
            // A pre-4.1 EOF carries no flags.
            self.warnings = 0
            self.status = []
            return
        }
        self.warnings = try buffer.readMySQLInteger("EOF warning count")
        self.status = ServerStatus(rawValue: try buffer.readMySQLInteger("EOF status flags"))
    }

    public func write(to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(0xFE))
        buffer.writeMySQLInteger(warnings)
        buffer.writeMySQLInteger(status.rawValue)
    }

    /// Whether a payload is an EOF packet in the classic protocol.
    @inlinable
    public static func isEOF(firstByte: UInt8?, payloadLength: Int) -> Bool {
        firstByte == 0xFE && payloadLength < 9
    }
}

extension ERRPacket {
    // Errors the proxy itself reports. They use server error codes (below 2000) on purpose:
    // libmariadb (the mariadb CLI, mysqltest, PHP, ...) rejects an ERR packet carrying a client-side
    // code such as 2003 or 2013 as "Received malformed packet".

    /// ER_NET_PACKET_TOO_LARGE, as a server sends it past max_allowed_packet.
    public static func packetTooLarge(_ limit: Int) -> ERRPacket {
        ERRPacket(code: 1153, sqlState: "08S01", message: "Got a packet bigger than 'max_allowed_packet' bytes (MoonProxy's --proxy-max-packet-size is \(limit))")
    }

    /// The backend sent nothing for longer than the read timeout.
    public static func backendReadTimeout() -> ERRPacket {
        ERRPacket(code: 1159, sqlState: "08S01", message: "Got timeout reading communication packets from the backend server")
    }
    public static func malformedPacket(_ detail: String) -> ERRPacket {
        ERRPacket(code: 1835, sqlState: "08S01", message: "Malformed communication packet: \(detail)")
    }
    /// No backend could be reached; sent instead of a greeting.
    public static func noBackend(_ detail: String) -> ERRPacket {
        ERRPacket(code: 1105, sqlState: "HY000", message: "No backend server is available: \(detail)")
    }
    public static func badHandshake(_ detail: String) -> ERRPacket {
        ERRPacket(code: 1043, sqlState: "08S01", message: "Bad handshake" + (detail.isEmpty ? "" : ": \(detail)"))
    }
    public static func unknownCommand() -> ERRPacket {
        ERRPacket(code: 1047, sqlState: "08S01", message: "Unknown command")
    }
    /// A plaintext login where TLS is required (MariaDB's `require_secure_transport`).
    public static func secureTransportRequired() -> ERRPacket {
        ERRPacket(code: 3159, sqlState: "08004", message: "Connections using insecure transport are prohibited while --require_secure_transport=ON.")
    }
    /// The TLS link to the server that the login needs could not be made. A client connecting
    /// directly would report CR_SSL_CONNECTION_ERROR (2026), but that is a client library's code:
    /// libmariadb takes an ERR packet carrying a code of its own range for a malformed packet. So
    /// the code is the server's generic one, and the message begins with the client's words.
    public static func sslConnectionError(_ detail: String) -> ERRPacket {
        ERRPacket(code: 1105, sqlState: "HY000", message: "SSL connection error: \(detail)")
    }
    /// ER_NOT_SUPPORTED_AUTH_MODE: the authentication the server asks for cannot be done here.
    /// ER_CON_COUNT_ERROR, as the server words it.
    public static let tooManyConnections = ERRPacket(code: 1040, sqlState: "08004", message: "Too many connections")

    public static func authModeNotSupported(_ detail: String) -> ERRPacket {
        ERRPacket(code: 1251, sqlState: "08004", message: "Client does not support authentication protocol requested by server: \(detail)")
    }
    /// A password the client would send in clear, or that the proxy would have to encrypt with a
    /// key it cannot trust, where the link to the server is not verified TLS: the words a MySQL
    /// client says when it refuses the same (CR_AUTH_PLUGIN_ERR), under the server's code for an
    /// authentication the client cannot do (a client-range code reads as a malformed packet).
    public static func authRequiresSecureConnection(plugin: String, _ detail: String) -> ERRPacket {
        ERRPacket(code: 1251, sqlState: "08004",
                  message: "Authentication plugin '\(plugin)' reported error: Authentication requires secure connection. (\(detail))")
    }
    /// A LOCAL INFILE request the proxy did not pass on: the statement sent asks for no local file
    /// (ER_NOT_ALLOWED_COMMAND, what a server says when local files are off).
    public static func localInfileRefused(_ detail: String) -> ERRPacket {
        ERRPacket(code: 1148, sqlState: "42000", message: "The used command is not allowed with this MariaDB version: \(detail)")
    }
}
