import NIOCore

/// COM_CHANGE_USER: logs a connection in again as `username` with `database` and
/// `characterSet`, ending everything of the session before it (its transaction, temporary
/// tables, variables, prepared statements, locks). What the proxy sends a pooled connection
/// before the next client session uses it: the state a fresh login would have.
public struct ChangeUserRequest: Hashable, Sendable {
    public var username: String
    public var authResponse: [UInt8]
    /// The default database ("": none).
    public var database: String
    public var characterSet: UInt8
    public var authPluginName: String?
    /// The connection attributes block, as in the handshake response (without its length).
    public var attributesBlock: ByteBuffer

    public init(username: String, authResponse: [UInt8], database: String, characterSet: UInt8,
                authPluginName: String?, attributesBlock: ByteBuffer = ByteBuffer()) {
        self.username = username
        self.authResponse = authResponse
        self.database = database
        self.characterSet = characterSet
        self.authPluginName = authPluginName
        self.attributesBlock = attributesBlock
    }

    /// The payload, shaped by the session's capabilities (as the server reads it).
    public func write(to buffer: inout ByteBuffer, capabilities: CapabilityFlags) {
        buffer.writeInteger(CommandCode.changeUser.rawValue)
        buffer.writeMySQLNullTerminatedString(username)
        if capabilities.contains(.secureConnection) {
            buffer.writeInteger(UInt8(truncatingIfNeeded: min(authResponse.count, 255)))
            buffer.writeBytes(authResponse.prefix(255))
        } else {
            buffer.writeBytes(authResponse)
            buffer.writeInteger(UInt8(0))
        }
        buffer.writeMySQLNullTerminatedString(database)
        guard capabilities.contains(.protocol41) else { return }
        buffer.writeMySQLInteger(UInt16(characterSet))
        if capabilities.contains(.pluginAuth) {
            buffer.writeMySQLNullTerminatedString(authPluginName ?? "")
        }
        if capabilities.contains(.connectAttributes) {
            buffer.writeMySQLLengthEncodedBuffer(attributesBlock)
        }
    }

    /// `payload` starts with the command byte 0x11 (protocol 4.1: user NUL, auth data with a
    /// 1-byte length under CLIENT_SECURE_CONNECTION or NUL-terminated, database NUL, character
    /// set, plugin name, attributes).
    public init(parsing payload: ByteBuffer, capabilities: CapabilityFlags) throws(WireError) {
        var buffer = payload
        let code: UInt8 = try buffer.readMySQLInteger("command")
        guard code == CommandCode.changeUser.rawValue else { throw .invalid("not COM_CHANGE_USER") }
        username = try buffer.readMySQLNullTerminatedString("username")
        if capabilities.contains(.secureConnection) {
            let length: UInt8 = try buffer.readMySQLInteger("auth response length")
            authResponse = try buffer.readMySQLBytes(length: Int(length), "auth response")
        } else {
            authResponse = Array(try buffer.readMySQLNullTerminatedString("auth response").utf8)
        }
        // an old client may end the packet before the database
        database = buffer.readableBytes > 0 ? try buffer.readMySQLNullTerminatedString("database") : ""
        characterSet = 0
        authPluginName = nil
        attributesBlock = ByteBuffer()
        if buffer.readableBytes >= 2 {
            let charset: UInt16 = try buffer.readMySQLInteger("character set")
            characterSet = UInt8(truncatingIfNeeded: charset)
        }
        if capabilities.contains(.pluginAuth), buffer.readableBytes > 0 {
            authPluginName = buffer.readMySQLNullTerminatedStringOrRest()
        }
        if capabilities.contains(.connectAttributes), buffer.readableBytes > 0 {
            attributesBlock = try buffer.readMySQLLengthEncodedSlice("connection attributes")
        }
    }
}
