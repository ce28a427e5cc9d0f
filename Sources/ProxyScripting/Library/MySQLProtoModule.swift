import LuaVM
import MySQLWire
import NIOCore

/// `mysql.proto`: MySQL Proxy's packet encoders and decoders, between Lua tables (MySQL Proxy's
/// field names) and packet payloads, done by MySQLWire's own parsers and writers. A `from_`
/// function raises a Lua error naming the packet when its input is short or foreign.
enum MySQLProtoModule {
    /// What a greeting offers unless the script says otherwise.
    static let defaultCapabilities: CapabilityFlags = [
        .longPassword, .foundRows, .longFlag, .connectWithDB, .protocol41, .transactions, .secureConnection,
        .multiStatements, .multiResults, .psMultiResults, .pluginAuth,
    ]

    static let functions: [(String, LuaFunction)] = [
        ("from_challenge_packet", fromChallenge), ("to_challenge_packet", toChallenge),
        ("from_response_packet", fromResponse), ("to_response_packet", toResponse),
        ("from_ok_packet", fromOK), ("to_ok_packet", toOK),
        ("from_err_packet", fromERR), ("to_err_packet", toERR),
        ("from_eof_packet", fromEOF), ("to_eof_packet", toEOF),
        ("from_masterinfo_string", fromMasterInfo), ("to_masterinfo_string", toMasterInfo),
        ("from_stmt_prepare_packet", fromStmtPrepare), ("to_stmt_prepare_packet", toStmtPrepare),
        ("from_stmt_prepare_ok_packet", fromStmtPrepareOK), ("to_stmt_prepare_ok_packet", toStmtPrepareOK),
        ("from_stmt_execute_packet", fromStmtExecute), ("to_stmt_execute_packet", toStmtExecute),
        ("stmt_id_from_stmt_execute_packet", stmtIDFromStmtExecute),
        ("from_stmt_close_packet", fromStmtClose), ("to_stmt_close_packet", toStmtClose),
        ("random_challenge", randomChallenge),
    ]

    /// Pushes the module table.
    static func push(_ lua: Lua) {
        lua.newTable(recordCapacity: Int32(functions.count + 2))
        for (name, function) in functions {
            lua.push(function: function)
            lua.rawSet(-2, name)
        }
        lua.setField("DEFAULT_CAPABILITIES", Int(truncatingIfNeeded: defaultCapabilities.rawValue))
        lua.setField("_VERSION", "MoonProxy mysql.proto 1.0")
    }

    static func challenge(count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8.random(in: 33...126) }
    }
}

// MARK: reading arguments and table fields

struct ProtoError: Error {
    var message: String
    init(_ message: String) { self.message = message }
}

/// Runs `body`, turning a thrown error into a Lua error raised by the C trampoline.
func protoCall(_ L: OpaquePointer?, _ name: String, _ body: (Lua) throws -> Int32) -> Int32 {
    let lua = Lua(L!)
    do {
        return try body(lua)
    } catch let error as ProtoError {
        return lua.raiseWithPosition("\(name)(): \(error.message)")
    } catch {
        return lua.raiseWithPosition("\(name)() failed: \(error)")
    }
}

func packetArgument(_ lua: Lua, _ index: Int32 = 1) throws -> ByteBuffer {
    guard lua.type(at: index) == .string, let buffer = lua.toByteBuffer(at: index) else {
        throw ProtoError("bad argument #\(index) (string expected, got \(lua.typeName(at: index)))")
    }
    return buffer
}

/// The table argument at `index`, read without metamethods.
struct ProtoFields {
    let lua: Lua
    let index: Int32

    init(_ lua: Lua, _ index: Int32 = 1) throws {
        guard lua.type(at: index) == .table else {
            throw ProtoError("bad argument #\(index) (table expected, got \(lua.typeName(at: index)))")
        }
        self.lua = lua
        self.index = lua.absolute(index)
    }

    func bool(_ key: String) -> Bool? {
        let kind = lua.rawGet(index, key)
        defer { lua.pop() }
        return kind == .nil ? nil : lua.toBool(at: -1)
    }

    func integer(_ key: String) throws -> Int? {
        let kind = lua.rawGet(index, key)
        defer { lua.pop() }
        if kind == .nil { return nil }
        // a numeric string counts, as Lua's own coercion (and MySQL Proxy) has it
        guard kind == .number || kind == .string, let value = lua.toInteger(at: -1) else { throw ProtoError(".\(key) has to be an integer") }
        return value
    }

    func integer<T: FixedWidthInteger>(_ key: String, default value: T) throws -> T {
        guard let given = try integer(key) else { return value }
        guard let fitting = T(exactly: given) else { throw ProtoError(".\(key) = \(given) is out of range") }
        return fitting
    }

    func bytes(_ key: String) throws -> [UInt8]? {
        let kind = lua.rawGet(index, key)
        defer { lua.pop() }
        if kind == .nil { return nil }
        guard let bytes = lua.withBytes(at: -1, { Array($0) }) else { throw ProtoError(".\(key) has to be a string") }
        return bytes
    }

    func string(_ key: String) throws -> String? {
        try bytes(key).map { String(decoding: $0, as: UTF8.self) }
    }

    /// `body` runs with the field's table on top of the stack (skipped when the field is nil).
    func table(_ key: String, _ body: (ProtoFields) throws -> Void) throws {
        let kind = lua.rawGet(index, key)
        defer { lua.pop() }
        if kind == .nil { return }
        guard kind == .table else { throw ProtoError(".\(key) has to be a table") }
        try body(try ProtoFields(lua, -1))
    }
}

func pushPacket(_ lua: Lua, _ write: (inout ByteBuffer) throws -> Void) rethrows -> Int32 {
    var buffer = ByteBuffer()
    try write(&buffer)
    lua.push(buffer)
    return 1
}

// MARK: greeting and handshake response

private let fromChallenge: LuaFunction = { L in
    protoCall(L, "from_challenge_packet") { lua in
        let greeting = try HandshakeV10(parsing: try packetArgument(lua))
        lua.newTable()
        lua.setField("protocol_version", Int(greeting.protocolVersion))
        lua.setField("server_version_str", greeting.serverVersion)
        lua.setField("server_version", ScriptServerInfo.versionNumber(greeting.serverVersion, keepingReplicationPrefix: true))
        lua.setField("thread_id", Int(greeting.connectionID))
        lua.setField("capabilities", Int(truncatingIfNeeded: greeting.capabilities.rawValue))
        lua.setField("charset", Int(greeting.characterSet))
        lua.setField("server_status", Int(greeting.status.rawValue))
        lua.setField("challenge", byteArray: greeting.authPluginData)
        if let plugin = greeting.authPluginName { lua.setField("auth_plugin_name", plugin) }
        return 1
    }
}

private let toChallenge: LuaFunction = { L in
    protoCall(L, "to_challenge_packet") { lua in
        let f = try ProtoFields(lua)
        let version: String
        if let text = try f.string("server_version_str") {
            version = text
        } else {
            let v = try f.integer("server_version") ?? 50099
            version = "\(v / 10000).\(v / 100 % 100).\(v % 100)"
        }
        var greeting = HandshakeV10(
            serverVersion: version,
            connectionID: try f.integer("thread_id", default: 1),
            authPluginData: try f.bytes("challenge") ?? MySQLProtoModule.challenge(count: 20),
            capabilities: try f.integer("capabilities").map { CapabilityFlags(rawValue: UInt64(truncatingIfNeeded: $0)) }
                ?? MySQLProtoModule.defaultCapabilities,
            characterSet: try f.integer("charset", default: 33),
            status: ServerStatus(rawValue: try f.integer("server_status", default: 2)),
            authPluginName: try f.string("auth_plugin_name") ?? "mysql_native_password")
        greeting.protocolVersion = try f.integer("protocol_version", default: 10)
        return pushPacket(lua) { greeting.write(to: &$0) }
    }
}

private let fromResponse: LuaFunction = { L in
    protoCall(L, "from_response_packet") { lua in
        let response = try HandshakeResponse41(parsing: try packetArgument(lua))
        lua.newTable()
        let capabilities = Int(truncatingIfNeeded: response.capabilities.rawValue)
        lua.setField("capabilities", capabilities)
        lua.setField("server_capabilities", lua.toInteger(at: 2) ?? capabilities)
        lua.setField("max_packet_size", Int(response.maxPacketSize))
        lua.setField("charset", Int(response.characterSet))
        lua.setField("username", response.username)
        lua.setField("response", byteArray: response.authResponse)
        if let database = response.database { lua.setField("database", database) }
        if let plugin = response.authPluginName { lua.setField("auth_plugin_name", plugin) }
        return 1
    }
}

private let toResponse: LuaFunction = { L in
    protoCall(L, "to_response_packet") { lua in
        let f = try ProtoFields(lua)
        // What the server offered decides the packet's layout; MySQL Proxy's scripts (its
        // tutorial-scramble) leave it out, and a 4.1 server's usual offer is assumed then.
        let server = try f.integer("server_capabilities") ?? f.integer("capabilities")
        let serverCapabilities = server.map { CapabilityFlags(rawValue: UInt64(truncatingIfNeeded: $0)) } ?? MySQLProtoModule.defaultCapabilities
        guard serverCapabilities.contains(.protocol41) else { throw ProtoError("pre-4.1 handshakes are not supported") }
        let database = try f.string("database")
        let plugin = try f.string("auth_plugin_name")
        let response = try f.bytes("response") ?? []
        var capabilities: CapabilityFlags
        if let given = try f.integer("capabilities") {
            capabilities = CapabilityFlags(rawValue: UInt64(truncatingIfNeeded: given))
        } else {
            capabilities = serverCapabilities.intersection(MySQLProtoModule.defaultCapabilities.union(.pluginAuthLengthEncodedClientData))
            if (database ?? "").isEmpty { capabilities.remove(.connectWithDB) }
            if plugin == nil { capabilities.remove(.pluginAuth) }
        }
        if response.count > 255 && !capabilities.contains(.pluginAuthLengthEncodedClientData) && capabilities.contains(.secureConnection) {
            throw ProtoError(".response is longer than 255 bytes")
        }
        let packet = HandshakeResponse41(
            capabilities: capabilities, maxPacketSize: try f.integer("max_packet_size", default: 1 << 24),
            characterSet: try f.integer("charset", default: 33), username: try f.string("username") ?? "",
            authResponse: response, database: database,
            authPluginName: capabilities.contains(.pluginAuth) ? (plugin ?? "mysql_native_password") : plugin)
        return pushPacket(lua) { packet.write(to: &$0) }
    }
}

// MARK: OK, ERR, EOF

private let fromOK: LuaFunction = { L in
    protoCall(L, "from_ok_packet") { lua in
        let ok = try OKPacket(parsing: try packetArgument(lua), capabilities: [])
        lua.newTable()
        lua.setField("affected_rows", Int(truncatingIfNeeded: ok.affectedRows))
        lua.setField("insert_id", Int(truncatingIfNeeded: ok.lastInsertID))
        lua.setField("server_status", Int(ok.status.rawValue))
        lua.setField("warnings", Int(ok.warnings))
        if !ok.info.isEmpty { lua.setField("message", ok.info) }
        return 1
    }
}

private let toOK: LuaFunction = { L in
    protoCall(L, "to_ok_packet") { lua in
        let f = try ProtoFields(lua)
        let ok = OKPacket(affectedRows: try f.integer("affected_rows", default: 0), lastInsertID: try f.integer("insert_id", default: 0),
                          status: ServerStatus(rawValue: try f.integer("server_status", default: 2)),
                          warnings: try f.integer("warnings", default: 0), info: try f.string("message") ?? "")
        return pushPacket(lua) { ok.write(to: &$0, capabilities: []) }
    }
}

private let fromERR: LuaFunction = { L in
    protoCall(L, "from_err_packet") { lua in
        let err = try ERRPacket(parsing: try packetArgument(lua))
        lua.newTable()
        lua.setField("errcode", Int(err.code))
        if let state = err.sqlState { lua.setField("sqlstate", state) }
        lua.setField("errmsg", err.message)
        return 1
    }
}

private let toERR: LuaFunction = { L in
    protoCall(L, "to_err_packet") { lua in
        let f = try ProtoFields(lua)
        let err = ERRPacket(code: try f.integer("errcode", default: 1105), sqlState: try f.string("sqlstate") ?? "07000",
                            message: try f.string("errmsg") ?? "")
        return pushPacket(lua) { err.write(to: &$0) }
    }
}

private let fromEOF: LuaFunction = { L in
    protoCall(L, "from_eof_packet") { lua in
        let packet = try packetArgument(lua)
        guard EOFPacket.isEOF(firstByte: packet.getInteger(at: packet.readerIndex), payloadLength: packet.readableBytes) else {
            throw ProtoError("not an EOF packet")
        }
        let eof = try EOFPacket(parsing: packet)
        lua.newTable()
        lua.setField("warnings", Int(eof.warnings))
        lua.setField("server_status", Int(eof.status.rawValue))
        return 1
    }
}

private let toEOF: LuaFunction = { L in
    protoCall(L, "to_eof_packet") { lua in
        let f = lua.type(at: 1) == .none ? nil : try ProtoFields(lua)
        let eof = EOFPacket(warnings: try f?.integer("warnings", default: 0) ?? 0,
                            status: ServerStatus(rawValue: try f?.integer("server_status", default: 2) ?? 2))
        return pushPacket(lua) { eof.write(to: &$0) }
    }
}

// MARK: master.info: one value per line, the line count first

private let masterInfoFields: [(name: String, isInteger: Bool)] = [
    ("master_lines", true), ("master_log_file", false), ("master_log_pos", true), ("master_host", false),
    ("master_user", false), ("master_password", false), ("master_port", true), ("master_connect_retry", true),
    ("master_ssl", true), ("master_ssl_ca", false), ("master_ssl_capath", false), ("master_ssl_cert", false),
    ("master_ssl_cipher", false), ("master_ssl_key", false), ("master_ssl_verify_server_cert", true),
]

private let toMasterInfo: LuaFunction = { L in
    protoCall(L, "to_masterinfo_string") { lua in
        let f = try ProtoFields(lua)
        let lines = try f.integer("master_lines") ?? masterInfoFields.count
        var text = ""
        for field in masterInfoFields.prefix(max(0, lines)) {
            if field.name == "master_lines" {
                text += "\(lines)"
            } else if field.isInteger {
                text += "\(try f.integer(field.name) ?? 0)"
            } else {
                text += try f.string(field.name) ?? ""
            }
            text += "\n"
        }
        lua.push(text)
        return 1
    }
}

private let fromMasterInfo: LuaFunction = { L in
    protoCall(L, "from_masterinfo_string") { lua in
        guard let text = lua.toString(at: 1) else { throw ProtoError("bad argument #1 (string expected)") }
        let values = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard let lines = values.first.flatMap({ Int($0) }), lines >= 14 else { throw ProtoError("not a master.info file") }
        lua.newTable()
        for (i, field) in masterInfoFields.prefix(lines).enumerated() {
            let value = i < values.count ? values[i] : ""
            if field.isInteger {
                lua.setField(field.name, Int(value) ?? 0)
            } else if !value.isEmpty {
                lua.setField(field.name, value)
            }
        }
        return 1
    }
}

private let randomChallenge: LuaFunction = { L in
    protoCall(L, "random_challenge") { lua in
        let count = lua.toInteger(at: 1) ?? 20
        guard (1...255).contains(count) else { throw ProtoError("bad argument #1 (a length from 1 to 255 expected)") }
        MySQLProtoModule.challenge(count: count).withUnsafeBytes { lua.push(bytes: $0) }
        return 1
    }
}
