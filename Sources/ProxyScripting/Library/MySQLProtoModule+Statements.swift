import LuaVM
import MySQLWire
import NIOCore

// mysql.proto's prepared-statement packets: COM_STMT_PREPARE and its OK, COM_STMT_EXECUTE with its
// parameters in the binary protocol, COM_STMT_CLOSE.

private func readCommand(_ buffer: inout ByteBuffer, _ command: CommandCode) throws {
    let header: UInt8 = try buffer.readMySQLInteger("command")
    guard header == command.rawValue else { throw ProtoError("not a \(command.name) packet") }
}

let fromStmtPrepare: LuaFunction = { L in
    protoCall(L, "from_stmt_prepare_packet") { lua in
        var packet = try packetArgument(lua)
        try readCommand(&packet, .stmtPrepare)
        lua.newTable()
        lua.setField("stmt_text", String(decoding: packet.readableBytesView, as: UTF8.self))
        return 1
    }
}

let toStmtPrepare: LuaFunction = { L in
    protoCall(L, "to_stmt_prepare_packet") { lua in
        let text = try ProtoFields(lua).bytes("stmt_text") ?? []
        return pushPacket(lua) {
            $0.writeInteger(CommandCode.stmtPrepare.rawValue)
            $0.writeBytes(text)
        }
    }
}

/// COM_STMT_PREPARE's OK: 0x00, statement id (4), columns (2), parameters (2), filler, warnings (2).
let fromStmtPrepareOK: LuaFunction = { L in
    protoCall(L, "from_stmt_prepare_ok_packet") { lua in
        var packet = try packetArgument(lua)
        guard try packet.readMySQLInteger(as: UInt8.self, "header") == 0 else { throw ProtoError("not a COM_STMT_PREPARE OK packet") }
        let id: UInt32 = try packet.readMySQLInteger("statement id")
        let columns: UInt16 = try packet.readMySQLInteger("column count")
        let parameters: UInt16 = try packet.readMySQLInteger("parameter count")
        lua.newTable()
        lua.setField("stmt_id", Int(id))
        lua.setField("num_columns", Int(columns))
        lua.setField("num_params", Int(parameters))
        _ = try packet.readMySQLInteger(as: UInt8.self, "filler")
        lua.setField("warnings", packet.readableBytes >= 2 ? Int(try packet.readMySQLInteger(as: UInt16.self, "warnings")) : 0)
        return 1
    }
}

let toStmtPrepareOK: LuaFunction = { L in
    protoCall(L, "to_stmt_prepare_ok_packet") { lua in
        let f = try ProtoFields(lua)
        let id: UInt32 = try f.integer("stmt_id", default: 0)
        let columns: UInt16 = try f.integer("num_columns", default: 0)
        let parameters: UInt16 = try f.integer("num_params", default: 0)
        let warnings: UInt16 = try f.integer("warnings", default: 0)
        return pushPacket(lua) {
            $0.writeInteger(UInt8(0))
            $0.writeMySQLInteger(id)
            $0.writeMySQLInteger(columns)
            $0.writeMySQLInteger(parameters)
            $0.writeInteger(UInt8(0))
            $0.writeMySQLInteger(warnings)
        }
    }
}

let stmtIDFromStmtExecute: LuaFunction = { L in
    protoCall(L, "stmt_id_from_stmt_execute_packet") { lua in
        var packet = try packetArgument(lua)
        try readCommand(&packet, .stmtExecute)
        lua.push(Int(try packet.readMySQLInteger(as: UInt32.self, "statement id")))
        return 1
    }
}

/// COM_STMT_EXECUTE: statement id, flags, iteration count, then (with parameters) the NULL bitmap,
/// new-params-bound flag, the parameters' types and their values in the binary protocol.
let fromStmtExecute: LuaFunction = { L in
    protoCall(L, "from_stmt_execute_packet") { lua in
        var packet = try packetArgument(lua)
        guard let count = lua.toInteger(at: 2), count >= 0, count <= 65535 else {
            throw ProtoError("bad argument #2 (the statement's parameter count expected)")
        }
        try readCommand(&packet, .stmtExecute)
        lua.newTable()
        lua.setField("stmt_id", Int(try packet.readMySQLInteger(as: UInt32.self, "statement id")))
        lua.setField("flags", Int(try packet.readMySQLInteger(as: UInt8.self, "flags")))
        lua.setField("iteration_count", Int(try packet.readMySQLInteger(as: UInt32.self, "iteration count")))
        guard count > 0 else {
            lua.setField("new_params_bound", false)
            return 1
        }
        let bitmap = try packet.readMySQLBytes(length: (count + 7) / 8, "NULL bitmap")
        let bound = try packet.readMySQLInteger(as: UInt8.self, "new params bound") == 1
        lua.setField("new_params_bound", bound)
        guard bound else { return 1 }
        var types: [(type: ColumnType, unsigned: Bool)] = []
        for _ in 0..<count {
            let type: UInt8 = try packet.readMySQLInteger("parameter type")
            let flags: UInt8 = try packet.readMySQLInteger("parameter flags")
            types.append((ColumnType(type), flags & 0x80 != 0))
        }
        lua.newTable(arrayCapacity: Int32(count))
        for (i, parameter) in types.enumerated() {
            lua.newTable(recordCapacity: 3)
            lua.setField("type", Int(parameter.type.rawValue))
            lua.setField("unsigned", parameter.unsigned)
            if bitmap[i / 8] & (1 << UInt8(i % 8)) == 0 {
                switch try BinaryRow.decodeValue(&packet, type: parameter.type, unsigned: parameter.unsigned, index: i) {
                case .null: lua.pushNil()
                case .signed(let v): lua.push(v)
                case .unsigned(let v): lua.push(v)
                case .float(let v): lua.push(Double(v))
                case .double(let v): lua.push(v)
                case .bytes(let b): lua.push(b)
                case let other: lua.push(other.text ?? "")
                }
                lua.rawSet(-2, "value")
            }
            lua.rawSet(-2, i + 1)
        }
        lua.rawSet(-2, "params")
        return 1
    }
}

let toStmtExecute: LuaFunction = { L in
    protoCall(L, "to_stmt_execute_packet") { lua in
        let f = try ProtoFields(lua)
        var parameters: [(type: ColumnType, unsigned: Bool, value: ByteBuffer?)] = []
        try f.table("params") { params in
            var i = 1
            while lua.rawGet(params.index, i) == .table {
                let p = try ProtoFields(lua, -1)
                defer { lua.pop() }
                parameters.append(try encodeParameter(p, index: i))
                i += 1
            }
            lua.pop()
        }
        // A prepared statement has at most 65535 parameters (the prepare OK's count is 16 bits):
        // bounded before the NULL bitmap is allocated.
        let count = try f.integer("num_params") ?? parameters.count
        guard (0...65535).contains(count) else { throw ProtoError(".num_params = \(count) is out of range (0 to 65535)") }
        let id: UInt32 = try f.integer("stmt_id", default: 0)
        let flags: UInt8 = try f.integer("flags", default: 0)
        let iterations: UInt32 = try f.integer("iteration_count", default: 1)
        let bound = f.bool("new_params_bound") ?? true
        return pushPacket(lua) { packet in
            packet.writeInteger(CommandCode.stmtExecute.rawValue)
            packet.writeMySQLInteger(id)
            packet.writeInteger(flags)
            packet.writeMySQLInteger(iterations)
            guard count > 0 else { return }
            var bitmap = [UInt8](repeating: 0, count: (count + 7) / 8)
            for i in 0..<count where i >= parameters.count || parameters[i].value == nil {
                bitmap[i / 8] |= 1 << UInt8(i % 8)
            }
            packet.writeBytes(bitmap)
            packet.writeInteger(UInt8(bound ? 1 : 0))
            guard bound else { return }
            for i in 0..<count {
                let p = i < parameters.count ? parameters[i] : (type: ColumnType.null, unsigned: false, value: nil)
                packet.writeInteger(p.type.rawValue)
                packet.writeInteger(UInt8(p.unsigned ? 0x80 : 0))
            }
            for p in parameters.prefix(count) {
                if var value = p.value { packet.writeBuffer(&value) }
            }
        }
    }
}

/// One parameter `{ type =, value =, unsigned = }` in the binary protocol; without a type, Lua
/// integers are LONGLONG, other numbers DOUBLE, anything else a STRING.
private func encodeParameter(_ p: ProtoFields, index: Int) throws -> (type: ColumnType, unsigned: Bool, value: ByteBuffer?) {
    let lua = p.lua
    let unsigned = p.bool("unsigned") ?? false
    let givenType = try p.integer("type").map { ColumnType(UInt8(truncatingIfNeeded: $0)) }
    let kind = lua.rawGet(p.index, "value")
    defer { lua.pop() }
    if kind == .nil { return (givenType ?? .null, unsigned, nil) }
    let integer = kind == .number ? lua.toInteger(at: -1) : nil
    let type = givenType ?? (integer != nil ? .longlong : kind == .number ? .double : .string)
    var value = ByteBuffer()
    func whole<T: FixedWidthInteger>(_: T.Type) throws -> T {
        guard let integer, let fitting = T(exactly: integer) else { throw ProtoError("params[\(index)].value does not fit its type") }
        return fitting
    }
    switch type {
    case .tiny: value.writeInteger(unsigned ? try whole(UInt8.self) : UInt8(bitPattern: try whole(Int8.self)))
    case .short, .year: value.writeMySQLInteger(unsigned ? try whole(UInt16.self) : UInt16(bitPattern: try whole(Int16.self)))
    case .long, .int24: value.writeMySQLInteger(unsigned ? try whole(UInt32.self) : UInt32(bitPattern: try whole(Int32.self)))
    case .longlong: value.writeMySQLInteger(UInt64(bitPattern: Int64(try whole(Int.self))))
    case .float:
        guard let number = lua.toNumber(at: -1) else { throw ProtoError("params[\(index)].value has to be a number") }
        value.writeMySQLInteger(Float(number).bitPattern)
    case .double:
        guard let number = lua.toNumber(at: -1) else { throw ProtoError("params[\(index)].value has to be a number") }
        value.writeMySQLInteger(number.bitPattern)
    default:
        guard let bytes = lua.withBytes(at: -1, { Array($0) }) else { throw ProtoError("params[\(index)].value has to be a string") }
        value.writeMySQLLengthEncodedBytes(bytes)
    }
    return (type, unsigned, value)
}

let fromStmtClose: LuaFunction = { L in
    protoCall(L, "from_stmt_close_packet") { lua in
        var packet = try packetArgument(lua)
        try readCommand(&packet, .stmtClose)
        lua.newTable()
        lua.setField("stmt_id", Int(try packet.readMySQLInteger(as: UInt32.self, "statement id")))
        return 1
    }
}

let toStmtClose: LuaFunction = { L in
    protoCall(L, "to_stmt_close_packet") { lua in
        let id: UInt32 = try ProtoFields(lua).integer("stmt_id", default: 0)
        return pushPacket(lua) {
            $0.writeInteger(CommandCode.stmtClose.rawValue)
            $0.writeMySQLInteger(id)
        }
    }
}
