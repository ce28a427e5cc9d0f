import NIOCore

/// The server's greeting (Protocol::HandshakeV10).
public struct HandshakeV10: Hashable, Sendable {
    public var protocolVersion: UInt8 = 10
    public var serverVersion: String
    public var connectionID: UInt32
    /// The whole scramble: part 1 (8 bytes) and part 2 (usually 12 bytes), without the trailing NUL.
    public var authPluginData: [UInt8]
    public var capabilities: CapabilityFlags
    public var characterSet: UInt8
    public var status: ServerStatus
    public var authPluginName: String?

    public init(serverVersion: String, connectionID: UInt32, authPluginData: [UInt8],
                capabilities: CapabilityFlags, characterSet: UInt8 = 0x21, status: ServerStatus = .autocommit,
                authPluginName: String? = "mysql_native_password") {
        self.serverVersion = serverVersion
        self.connectionID = connectionID
        self.authPluginData = authPluginData
        self.capabilities = capabilities
        self.characterSet = characterSet
        self.status = status
        self.authPluginName = authPluginName
    }

    /// Byte offsets of the capability fields inside a greeting's payload, for patching in place.
    public struct CapabilityOffsets: Hashable, Sendable {
        public var lower: Int
        public var upper: Int?
        public var mariaDBExtended: Int?
    }

    public init(parsing payload: ByteBuffer) throws(WireError) {
        var offsets = CapabilityOffsets(lower: 0)
        try self.init(parsing: payload, offsets: &offsets)
    }

    init(parsing payload: ByteBuffer, offsets: inout CapabilityOffsets) throws(WireError) {
        var buffer = payload
        let start = buffer.readerIndex
        self.protocolVersion = try buffer.readMySQLInteger("protocol version")
        guard protocolVersion == 10 else { throw .invalid("handshake protocol version \(protocolVersion), only 10 is supported") }
        self.serverVersion = try buffer.readMySQLNullTerminatedString("server version")
        self.connectionID = try buffer.readMySQLInteger("connection id")
        var scramble = try buffer.readMySQLBytes(length: 8, "auth-plugin-data-part-1")
        _ = try buffer.readMySQLInteger(as: UInt8.self, "filler")
        let lowerOffset = buffer.readerIndex - start
        let lower: UInt16 = try buffer.readMySQLInteger("capability flags (lower)")
        var found = CapabilityOffsets(lower: lowerOffset, upper: nil, mariaDBExtended: nil)
        guard buffer.readableBytes > 0 else {
            // A pre-4.1 style greeting ends here.
            self.capabilities = CapabilityFlags(lower: UInt32(lower))
            self.characterSet = 0
            self.status = []
            self.authPluginData = scramble
            self.authPluginName = nil
            offsets = found
            return
        }
        self.characterSet = try buffer.readMySQLInteger("character set")
        self.status = ServerStatus(rawValue: try buffer.readMySQLInteger("status flags"))
        found.upper = buffer.readerIndex - start
        let upper: UInt16 = try buffer.readMySQLInteger("capability flags (upper)")
        let authDataLength: UInt8 = try buffer.readMySQLInteger("auth-plugin-data length")
        let reserved = try buffer.readMySQLBytes(length: 10, "reserved bytes")
        var caps = CapabilityFlags(lower: UInt32(lower) | UInt32(upper) << 16)
        if !caps.contains(.longPassword) {
            // MariaDB: the last 4 reserved bytes hold extended capabilities.
            let extended = UInt32(reserved[6]) | UInt32(reserved[7]) << 8 | UInt32(reserved[8]) << 16 | UInt32(reserved[9]) << 24
            caps.formUnion(CapabilityFlags(lower: 0, mariaDBExtended: extended))
            found.mariaDBExtended = buffer.readerIndex - 4 - start
        }
        self.capabilities = caps
        if caps.contains(.secureConnection) {
            let length = Swift.max(13, Int(authDataLength) - 8)
            let part2 = try buffer.readMySQLBytes(length: Swift.min(length, buffer.readableBytes), "auth-plugin-data-part-2")
            scramble.append(contentsOf: part2)
            if scramble.last == 0 { scramble.removeLast() }
        }
        self.authPluginData = scramble
        if caps.contains(.pluginAuth) {
            self.authPluginName = buffer.readMySQLNullTerminatedStringOrRest()
        } else {
            self.authPluginName = nil
        }
        offsets = found
    }

    public func write(to buffer: inout ByteBuffer) {
        // (every connection's first packet: one growth at most, few writes, no array copied)
        let scramble = authPluginData
        let first = Swift.min(scramble.count, 8)
        let second = Swift.max(scramble.count - 8, 0)
        buffer.reserveCapacity(minimumWritableBytes: 48 + serverVersion.utf8.count + second + (authPluginName?.utf8.count ?? 0))
        buffer.writeInteger(protocolVersion)
        buffer.writeString(serverVersion)
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(connectionID, endianness: .little)
        // auth-plugin-data part 1: 8 bytes (zero-padded), then a filler
        buffer.writeBytes(scramble[0..<first])
        buffer.writeRepeatingByte(0, count: 8 - first + 1)
        let lower = capabilities.lower32
        buffer.writeInteger(UInt16(truncatingIfNeeded: lower), endianness: .little)
        buffer.writeInteger(characterSet)
        buffer.writeInteger(status.rawValue, endianness: .little)
        buffer.writeInteger(UInt16(truncatingIfNeeded: lower >> 16), endianness: .little)
        buffer.writeInteger(capabilities.contains(.pluginAuth) ? UInt8(truncatingIfNeeded: Swift.max(scramble.count, 8) + 1) : 0)
        if capabilities.contains(.longPassword) {
            buffer.writeRepeatingByte(0, count: 10)
        } else {
            buffer.writeRepeatingByte(0, count: 6)
            buffer.writeInteger(capabilities.mariaDBExtended, endianness: .little)
        }
        if capabilities.contains(.secureConnection) {
            // part 2: the rest, at least 12 bytes (zero-padded), then a NUL
            buffer.writeBytes(scramble[first..<(first + second)])
            buffer.writeRepeatingByte(0, count: Swift.max(12 - second, 0) + 1)
        }
        if capabilities.contains(.pluginAuth) {
            buffer.writeMySQLNullTerminatedString(authPluginName ?? "")
        }
    }

    /// Rewrites the capability fields of a greeting in place, leaving every other byte as the server
    /// sent it, and returns the capabilities as parsed before the change.
    public static func restrictCapabilities(of payload: inout ByteBuffer, to allowed: CapabilityFlags) throws(WireError) -> HandshakeV10 {
        try rewriteCapabilities(of: &payload) { $0.intersection(allowed) }
    }

    /// Rewrites the capability fields of a greeting in place to `change(capabilities)` (which may
    /// add a flag, such as CLIENT_SSL when the proxy offers TLS itself); returns the greeting as
    /// parsed before the change.
    public static func rewriteCapabilities(of payload: inout ByteBuffer, _ change: (CapabilityFlags) -> CapabilityFlags) throws(WireError) -> HandshakeV10 {
        var offsets = CapabilityOffsets(lower: 0)
        let greeting = try HandshakeV10(parsing: payload, offsets: &offsets)
        var caps = change(greeting.capabilities)
        if offsets.upper == nil { caps = CapabilityFlags(lower: caps.lower32 & 0xFFFF) }
        if offsets.mariaDBExtended == nil { caps = CapabilityFlags(lower: caps.lower32) }
        let base = payload.readerIndex
        payload.setInteger(UInt16(truncatingIfNeeded: caps.lower32), at: base + offsets.lower, endianness: .little)
        if let upper = offsets.upper {
            payload.setInteger(UInt16(truncatingIfNeeded: caps.lower32 >> 16), at: base + upper, endianness: .little)
        }
        if let extended = offsets.mariaDBExtended {
            payload.setInteger(caps.mariaDBExtended, at: base + extended, endianness: .little)
        }
        return greeting
    }
}

/// The client's reply to the greeting (Protocol::HandshakeResponse41).
public struct HandshakeResponse41: Hashable, Sendable {
    public var capabilities: CapabilityFlags
    public var maxPacketSize: UInt32
    public var characterSet: UInt8
    public var username: String
    public var authResponse: [UInt8]
    public var database: String?
    public var authPluginName: String?
    /// The connection attributes as sent (length-encoded key/value pairs, without the block's own
    /// length): checked when parsed, but turned into strings only when asked for, since the proxy
    /// passes them on unread on every login.
    public var attributesBlock = ByteBuffer()

    public var attributes: [(key: String, value: String)] {
        get {
            var block = attributesBlock
            var out: [(key: String, value: String)] = []
            while block.readableBytes > 0,
                  let key = try? block.readMySQLLengthEncodedString("attribute name"),
                  let value = try? block.readMySQLLengthEncodedString("attribute value") {
                out.append((key, value))
            }
            return out
        }
        set {
            var block = ByteBuffer()
            for (key, value) in newValue {
                block.writeMySQLLengthEncodedString(key)
                block.writeMySQLLengthEncodedString(value)
            }
            attributesBlock = block
        }
    }
    /// The zstd level a client asking for CLIENT_ZSTD_COMPRESSION_ALGORITHM sends last.
    public var zstdCompressionLevel: UInt8?
    /// Where, in the parsed payload, the zstd level byte is or would go: the end of the fields
    /// before it.
    public private(set) var zstdLevelOffset = 0

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.capabilities == rhs.capabilities && lhs.maxPacketSize == rhs.maxPacketSize
            && lhs.characterSet == rhs.characterSet && lhs.username == rhs.username
            && lhs.authResponse == rhs.authResponse && lhs.database == rhs.database
            && lhs.authPluginName == rhs.authPluginName
            && lhs.attributes.map(\.key) == rhs.attributes.map(\.key)
            && lhs.attributes.map(\.value) == rhs.attributes.map(\.value)
            && lhs.zstdCompressionLevel == rhs.zstdCompressionLevel
    }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(username)
        hasher.combine(authResponse)
    }

    public init(capabilities: CapabilityFlags, maxPacketSize: UInt32 = 1 << 24, characterSet: UInt8 = 0x21,
                username: String, authResponse: [UInt8], database: String? = nil,
                authPluginName: String? = nil, attributes: [(key: String, value: String)] = [], zstdCompressionLevel: UInt8? = nil) {
        self.capabilities = capabilities
        self.maxPacketSize = maxPacketSize
        self.characterSet = characterSet
        self.username = username
        self.authResponse = authResponse
        self.database = database
        self.authPluginName = authPluginName
        self.zstdCompressionLevel = zstdCompressionLevel
        self.attributes = attributes
    }

    /// The fixed part is 32 bytes; a packet of exactly that size with CLIENT_SSL is an SSLRequest.
    public static let fixedLength = 32

    /// The SSLRequest that precedes `response` on a link that turns to TLS: its fixed part
    /// (capabilities with CLIENT_SSL, maximum packet size, character set, MariaDB's extended
    /// capabilities) and nothing else.
    public static func sslRequest(for response: ByteBuffer) throws(WireError) -> ByteBuffer {
        guard var request = response.getSlice(at: response.readerIndex, length: fixedLength),
              let lower = request.getInteger(at: request.readerIndex, endianness: .little, as: UInt32.self)
        else { throw .truncated("handshake response's fixed part") }
        var copy = ByteBuffer()
        copy.writeBuffer(&request)
        copy.setInteger(lower | CapabilityFlags.ssl.lower32, at: copy.readerIndex, endianness: .little)
        return copy
    }

    public static func isSSLRequest(_ payload: ByteBuffer) -> Bool {
        guard payload.readableBytes == fixedLength,
              let caps = payload.getInteger(at: payload.readerIndex, endianness: .little, as: UInt32.self)
        else { return false }
        return CapabilityFlags(lower: caps).contains(.ssl)
    }

    public init(parsing payload: ByteBuffer) throws(WireError) {
        var buffer = payload
        let lower: UInt32 = try buffer.readMySQLInteger("client capability flags")
        var caps = CapabilityFlags(lower: lower)
        guard caps.contains(.protocol41) else {
            throw .invalid("client does not speak protocol 4.1 (HandshakeResponse320 is not supported)")
        }
        self.maxPacketSize = try buffer.readMySQLInteger("max packet size")
        self.characterSet = try buffer.readMySQLInteger("character set")
        let filler = try buffer.readMySQLBytes(length: 23, "filler")
        if !caps.contains(.longPassword) {
            let extended = UInt32(filler[19]) | UInt32(filler[20]) << 8 | UInt32(filler[21]) << 16 | UInt32(filler[22]) << 24
            caps.formUnion(CapabilityFlags(lower: 0, mariaDBExtended: extended))
        }
        self.capabilities = caps
        self.username = try buffer.readMySQLNullTerminatedString("username")
        if caps.contains(.pluginAuthLengthEncodedClientData) {
            var data = try buffer.readMySQLLengthEncodedSlice("auth response")
            self.authResponse = data.readBytes(length: data.readableBytes) ?? []
        } else if caps.contains(.secureConnection) {
            let length: UInt8 = try buffer.readMySQLInteger("auth response length")
            self.authResponse = try buffer.readMySQLBytes(length: Int(length), "auth response")
        } else {
            self.authResponse = Array(try buffer.readMySQLNullTerminatedString("auth response").utf8)
        }
        self.database = nil
        self.authPluginName = nil
        if caps.contains(.connectWithDB), buffer.readableBytes > 0 {
            self.database = buffer.readMySQLNullTerminatedStringOrRest()
        }
        if caps.contains(.pluginAuth), buffer.readableBytes > 0 {
            self.authPluginName = buffer.readMySQLNullTerminatedStringOrRest()
        }
        if caps.contains(.connectAttributes), buffer.readableBytes > 0 {
            let attrs = try buffer.readMySQLLengthEncodedSlice("connection attributes")
            var walk = attrs
            while walk.readableBytes > 0 {
                _ = try walk.readMySQLLengthEncodedSlice("attribute name")
                _ = try walk.readMySQLLengthEncodedSlice("attribute value")
            }
            self.attributesBlock = attrs
        }
        self.zstdCompressionLevel = nil
        self.zstdLevelOffset = buffer.readerIndex - payload.readerIndex
        if caps.contains(.zstdCompression), buffer.readableBytes > 0 {
            self.zstdCompressionLevel = try buffer.readMySQLInteger("zstd compression level")
        }
    }

    public func write(to buffer: inout ByteBuffer) {
        buffer.writeMySQLInteger(capabilities.lower32)
        buffer.writeMySQLInteger(maxPacketSize)
        buffer.writeInteger(characterSet)
        buffer.writeRepeatingByte(0, count: 19)
        if capabilities.contains(.longPassword) {
            buffer.writeRepeatingByte(0, count: 4)
        } else {
            buffer.writeMySQLInteger(capabilities.mariaDBExtended)
        }
        buffer.writeMySQLNullTerminatedString(username)
        if capabilities.contains(.pluginAuthLengthEncodedClientData) {
            buffer.writeMySQLLengthEncodedBytes(authResponse)
        } else if capabilities.contains(.secureConnection) {
            buffer.writeInteger(UInt8(truncatingIfNeeded: authResponse.count))
            buffer.writeBytes(authResponse.prefix(255))
        } else {
            buffer.writeBytes(authResponse)
            buffer.writeInteger(UInt8(0))
        }
        if capabilities.contains(.connectWithDB) {
            buffer.writeMySQLNullTerminatedString(database ?? "")
        }
        if capabilities.contains(.pluginAuth) {
            buffer.writeMySQLNullTerminatedString(authPluginName ?? "")
        }
        if capabilities.contains(.connectAttributes) {
            buffer.writeMySQLLengthEncodedBuffer(attributesBlock)
        }
        if capabilities.contains(.zstdCompression) {
            buffer.writeInteger(zstdCompressionLevel ?? UInt8(ProtocolCompression.defaultZstdLevel))
        }
    }

    /// Sets, in place, the protocol compression a handshake response asks for to `compression`
    /// (both capability bits, and the zstd level byte that ends the packet when zstd is asked).
    /// `response` is the parsed form of `payload`.
    public static func setCompression(of payload: inout ByteBuffer, parsed response: HandshakeResponse41,
                                      to compression: ProtocolCompression?) throws(WireError) {
        let base = payload.readerIndex
        let levelAt = response.zstdLevelOffset
        guard payload.readableBytes >= fixedLength, let lower = payload.getInteger(at: base, endianness: .little, as: UInt32.self),
              levelAt >= fixedLength, levelAt <= payload.readableBytes
        else { throw .truncated("handshake response") }
        var caps = CapabilityFlags(lower: lower).subtracting(ProtocolCompression.capabilities)
        if let compression { caps.formUnion(compression.capability) }
        payload.setInteger(caps.lower32, at: base, endianness: .little)
        let had = response.zstdCompressionLevel != nil
        var level: UInt8? = nil
        if case .zstd(let l) = compression { level = UInt8(clamping: l) }
        if !had && level == nil { return }
        var rebuilt = ByteBuffer()
        rebuilt.reserveCapacity(payload.readableBytes + 1)
        rebuilt.writeBytes(payload.readableBytesView.prefix(levelAt))
        if let level { rebuilt.writeInteger(level) }
        rebuilt.writeBytes(payload.readableBytesView.dropFirst(levelAt + (had ? 1 : 0)))
        payload = rebuilt
    }

    /// Clears, in place, every capability bit of a handshake response (or SSLRequest) outside
    /// `allowed`; returns the capabilities the client asked for.
    @discardableResult
    public static func restrictCapabilities(of payload: inout ByteBuffer, to allowed: CapabilityFlags, adding added: CapabilityFlags = []) throws(WireError) -> CapabilityFlags {
        let base = payload.readerIndex
        guard payload.readableBytes >= fixedLength,
              let lower = payload.getInteger(at: base, endianness: .little, as: UInt32.self),
              let extended = payload.getInteger(at: base + 28, endianness: .little, as: UInt32.self)
        else { throw .truncated("handshake response's fixed part") }
        var asked = CapabilityFlags(lower: lower)
        if !asked.contains(.longPassword) {
            asked.formUnion(CapabilityFlags(lower: 0, mariaDBExtended: extended))
        }
        let kept = asked.intersection(allowed).union(added)
        payload.setInteger(kept.lower32, at: base, endianness: .little)
        if !asked.contains(.longPassword) {
            payload.setInteger(kept.mariaDBExtended, at: base + 28, endianness: .little)
        }
        return asked
    }
}

/// The server asks the client to authenticate again with another plugin (header 0xFE).
public struct AuthSwitchRequest: Hashable, Sendable {
    public var pluginName: String
    public var pluginData: [UInt8]

    public init(pluginName: String, pluginData: [UInt8]) {
        self.pluginName = pluginName
        self.pluginData = pluginData
    }

    public init(parsing payload: ByteBuffer) throws(WireError) {
        var buffer = payload
        let header: UInt8 = try buffer.readMySQLInteger("auth switch header")
        guard header == 0xFE else { throw .invalid("auth switch header is 0x\(String(header, radix: 16))") }
        if buffer.readableBytes == 0 {
            // The old (pre-4.1) switch to mysql_old_password carries nothing else.
            self.pluginName = "mysql_old_password"
            self.pluginData = []
            return
        }
        self.pluginName = try buffer.readMySQLNullTerminatedString("auth plugin name")
        self.pluginData = buffer.readBytes(length: buffer.readableBytes) ?? []
    }

    public func write(to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(0xFE))
        buffer.writeMySQLNullTerminatedString(pluginName)
        buffer.writeBytes(pluginData)
    }
}

/// Extra authentication data from the server (header 0x01), e.g. caching_sha2_password's fast-auth
/// verdict (0x03 success, 0x04 full authentication required) or an RSA public key.
public struct AuthMoreData: Hashable, Sendable {
    public var data: [UInt8]

    public init(data: [UInt8]) { self.data = data }

    public init(parsing payload: ByteBuffer) throws(WireError) {
        var buffer = payload
        let header: UInt8 = try buffer.readMySQLInteger("auth more data header")
        guard header == 0x01 else { throw .invalid("auth more data header is 0x\(String(header, radix: 16))") }
        self.data = buffer.readBytes(length: buffer.readableBytes) ?? []
    }

    public func write(to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(0x01))
        buffer.writeBytes(data)
    }
}
