import CLuaShim
import NIOCore

/// A Swift function callable from Lua. It must not call any Lua API function that can raise an
/// error (anything that runs metamethods); to report an error it pushes a message and returns
/// `Lua.raise`'s result, and the C trampoline raises it after the Swift frame has returned.
public typealias LuaFunction = @convention(c) (OpaquePointer?) -> Int32

public enum LuaType: Int32, Sendable {
    case none = -1
    case `nil` = 0
    case boolean = 1
    case lightUserdata = 2
    case number = 3
    case string = 4
    case table = 5
    case function = 6
    case userdata = 7
    case thread = 8

    public var name: String {
        switch self {
        case .none: return "no value"
        case .nil: return "nil"
        case .boolean: return "boolean"
        case .lightUserdata, .userdata: return "userdata"
        case .number: return "number"
        case .string: return "string"
        case .table: return "table"
        case .function: return "function"
        case .thread: return "thread"
        }
    }
}

/// An error raised in Lua (or while loading a chunk), with its message and, for runtime errors,
/// a traceback.
public struct LuaError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `memoryLimit` and `timeLimit`: the call was aborted by the state's limits (`LuaState`).
    public enum Kind: Sendable { case syntax, runtime, memory, memoryLimit, timeLimit, other }
    public var kind: Kind
    public var message: String
    public var description: String { message }

    public init(kind: Kind, message: String) {
        self.kind = kind
        self.message = message
    }
}

/// A non-owning view of a `lua_State` with typed helpers. Only raw (metamethod-free) table access
/// is offered, so that none of these helpers can raise a Lua error through Swift frames.
public struct Lua {
    public let L: OpaquePointer

    @inlinable public init(_ L: OpaquePointer) { self.L = L }

    public static let registryIndex: Int32 = moon_registryindex()
    public static let multipleReturns: Int32 = LUA_MULTRET
    public static let noReference: Int32 = LUA_NOREF

    // MARK: stack

    @inlinable public var top: Int32 { lua_gettop(L) }
    @inlinable public func setTop(_ index: Int32) { lua_settop(L, index) }
    @inlinable public func pop(_ n: Int32 = 1) { lua_settop(L, -n - 1) }
    @inlinable public func absolute(_ index: Int32) -> Int32 { lua_absindex(L, index) }
    @inlinable public func type(at index: Int32) -> LuaType { LuaType(rawValue: lua_type(L, index)) ?? .none }
    @inlinable public func pushValue(at index: Int32) { lua_pushvalue(L, index) }
    @inlinable public func remove(at index: Int32) { moon_remove(L, index) }
    @inlinable public func insert(at index: Int32) { moon_insert(L, index) }
    /// Pops the top value into `index`.
    @inlinable public func replace(at index: Int32) { moon_replace(L, index) }
    public func upvalueIndex(_ i: Int32) -> Int32 { moon_upvalueindex(i) }

    // MARK: pushing

    @inlinable public func pushNil() { lua_pushnil(L) }
    @inlinable public func push(_ value: Bool) { lua_pushboolean(L, value ? 1 : 0) }
    @inlinable public func push(_ value: Int) { lua_pushinteger(L, lua_Integer(value)) }
    @inlinable public func push(_ value: Int64) { lua_pushinteger(L, lua_Integer(value)) }
    @inlinable public func push(_ value: UInt64) {
        if value <= UInt64(Int64.max) { lua_pushinteger(L, lua_Integer(value)) } else { lua_pushnumber(L, Double(value)) }
    }
    @inlinable public func push(_ value: Double) { lua_pushnumber(L, value) }

    public func push(_ string: String) {
        var s = string
        s.withUTF8 { utf8 in
            utf8.withMemoryRebound(to: CChar.self) { _ = lua_pushlstring(L, $0.baseAddress, $0.count) }
        }
    }

    public func push(bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else {
            _ = lua_pushstring(L, "")
            return
        }
        _ = lua_pushlstring(L, base.assumingMemoryBound(to: CChar.self), bytes.count)
    }

    public func push(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { push(bytes: $0) }
    }

    public func push<Bytes: Collection>(byteArray: Bytes) where Bytes.Element == UInt8 {
        Array(byteArray).withUnsafeBytes { push(bytes: $0) }
    }

    /// Pushes a Swift function; the `upvalues` values on top of the stack become its upvalues
    /// 1...upvalues (reach them with `upvalueIndex(i + 1)`: the first slot holds the function).
    public func push(function: LuaFunction, upvalues: Int32 = 0) {
        moon_push_swift_function(L, function, upvalues)
    }

    public func push(lightUserdata pointer: UnsafeMutableRawPointer?) { lua_pushlightuserdata(L, pointer) }

    // MARK: reading

    public func toBool(at index: Int32) -> Bool { lua_toboolean(L, index) != 0 }

    public func toInteger(at index: Int32) -> Int? {
        var isNumber: Int32 = 0
        let value = moon_tointeger(L, index, &isNumber)
        return isNumber != 0 ? Int(value) : nil
    }

    public func toNumber(at index: Int32) -> Double? {
        var isNumber: Int32 = 0
        let value = moon_tonumber(L, index, &isNumber)
        return isNumber != 0 ? value : nil
    }

    /// The raw bytes of a string (numbers are converted, as Lua does); nil for other types.
    public func withBytes<R>(at index: Int32, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R? {
        let kind = type(at: index)
        guard kind == .string || kind == .number else { return nil }
        var length = 0
        guard let pointer = moon_tostring(L, index, &length) else { return nil }
        return try body(UnsafeRawBufferPointer(start: pointer, count: length))
    }

    public func toString(at index: Int32) -> String? {
        withBytes(at: index) { String(decoding: $0, as: UTF8.self) }
    }

    public func toByteBuffer(at index: Int32) -> ByteBuffer? {
        withBytes(at: index) { ByteBuffer(bytes: $0) }
    }

    public func toUserdata(at index: Int32) -> UnsafeMutableRawPointer? { lua_touserdata(L, index) }

    public func typeName(at index: Int32) -> String { type(at: index).name }

    // MARK: tables (raw access only)

    public func newTable(arrayCapacity: Int32 = 0, recordCapacity: Int32 = 0) {
        lua_createtable(L, arrayCapacity, recordCapacity)
    }

    /// Pushes `table[key]` without metamethods; returns its type.
    @discardableResult
    public func rawGet(_ table: Int32, _ key: String) -> LuaType {
        let t = absolute(table)
        push(key)
        return LuaType(rawValue: lua_rawget(L, t)) ?? .none
    }

    @discardableResult
    public func rawGet(_ table: Int32, _ index: Int) -> LuaType {
        LuaType(rawValue: lua_rawgeti(L, table, lua_Integer(index))) ?? .none
    }

    /// Sets `table[key]` to the value on top of the stack (popped), without metamethods.
    public func rawSet(_ table: Int32, _ key: String) {
        let t = absolute(table)
        push(key)
        insert(at: -2)
        lua_rawset(L, t)
    }

    /// `t[key] = value` for the table `t` on top of the stack, without metamethods.
    public func setField(_ key: String, _ value: Bool) { push(value); rawSet(-2, key) }
    public func setField(_ key: String, _ value: Int) { push(value); rawSet(-2, key) }
    public func setField(_ key: String, _ value: Int64) { push(value); rawSet(-2, key) }
    public func setField(_ key: String, _ value: UInt64) { push(value); rawSet(-2, key) }
    public func setField(_ key: String, _ value: Double) { push(value); rawSet(-2, key) }
    public func setField(_ key: String, _ value: String) { push(value); rawSet(-2, key) }
    public func setField(_ key: String, _ value: ByteBuffer) { push(value); rawSet(-2, key) }
    public func setField(_ key: String, function: LuaFunction) { push(function: function); rawSet(-2, key) }
    public func setField<Bytes: Collection>(_ key: String, byteArray: Bytes) where Bytes.Element == UInt8 {
        push(byteArray: byteArray)
        rawSet(-2, key)
    }

    public func rawSet(_ table: Int32, _ index: Int) {
        lua_rawseti(L, table, lua_Integer(index))
    }

    /// `table[key] = value` with the key and then the value on top of the stack (both popped).
    @inlinable public func rawSetPair(_ table: Int32) { lua_rawset(L, table) }

    /// Replaces the key on top of the stack with `table[key]`; returns its type.
    @inlinable @discardableResult
    public func rawGetKey(_ table: Int32) -> LuaType { LuaType(rawValue: lua_rawget(L, table)) ?? .none }

    public func rawLength(_ index: Int32) -> Int { Int(lua_rawlen(L, index)) }

    @discardableResult
    public func getMetatable(_ index: Int32) -> Bool { lua_getmetatable(L, index) != 0 }
    public func setMetatable(_ index: Int32) { lua_setmetatable(L, index) }

    public func pushGlobalTable() { lua_rawgeti(L, Self.registryIndex, lua_Integer(LUA_RIDX_GLOBALS)) }

    /// Iterates over a table's pairs; `body` finds the key at -2 and the value at -1 and must
    /// leave the stack as it found it.
    public func forEachPair(_ table: Int32, _ body: () -> Void) {
        let t = absolute(table)
        pushNil()
        while lua_next(L, t) != 0 {
            body()
            pop()
        }
    }

    /// Pops the top value into upvalue `n` of the function at `functionIndex`; returns the
    /// upvalue's name, or nil (popping nothing) when there is no such upvalue.
    @discardableResult
    public func setUpvalue(of functionIndex: Int32, _ n: Int32) -> String? {
        guard let name = lua_setupvalue(L, functionIndex, n) else { return nil }
        return String(cString: name)
    }

    /// Pops the top value into upvalue `n` of the running C function.
    public func replaceUpvalue(_ n: Int32) {
        lua_copy(L, -1, moon_upvalueindex(n))
        pop()
    }

    // MARK: references

    /// Pops the top value into the registry and returns its reference.
    public func ref() -> Int32 { luaL_ref(L, Self.registryIndex) }
    public func unref(_ reference: Int32) { luaL_unref(L, Self.registryIndex, reference) }
    @discardableResult
    public func push(reference: Int32) -> LuaType {
        LuaType(rawValue: lua_rawgeti(L, Self.registryIndex, lua_Integer(reference))) ?? .none
    }

    /// Pushes the function stored under the key registry[`keyRef`] in the table
    /// registry[`tableRef`], or else in the globals (raw lookups, one call into C); false, with
    /// nothing pushed, when neither holds a function.
    public func pushFunction(key keyRef: Int32, inTableOrGlobals tableRef: Int32) -> Bool {
        moon_push_field_or_global(L, tableRef, keyRef) != 0
    }

    /// Sets the fields under the keys registry[`keyRefs`] of the table registry[`tableRef`] to
    /// nil, writing only those that are not nil already (one call into C).
    public func clearFields(_ keyRefs: [Int32], ofTable tableRef: Int32) {
        keyRefs.withUnsafeBufferPointer { moon_clear_fields(L, tableRef, $0.baseAddress, Int32($0.count)) }
    }

    // MARK: loading and calling

    /// Loads a chunk (source or binary) and pushes it as a function.
    public func load(_ bytes: UnsafeRawBufferPointer, name: String, mode: String = "bt") throws(LuaError) {
        let status = name.withCString { cname in
            mode.withCString { cmode in
                moon_loadbuffer(L, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count, cname, cmode)
            }
        }
        if status != LUA_OK { throw popError(status) }
    }

    public func load(_ source: String, name: String) throws(LuaError) {
        var s = source
        let result: Result<Void, LuaError> = s.withUTF8 { utf8 in
            do throws(LuaError) {
                try load(UnsafeRawBufferPointer(utf8), name: name)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try result.get()
    }

    /// Calls the function below its `arguments`, protected; on error the message carries a traceback.
    /// Pushes the message handler that adds a traceback to errors (for `pcall(...handler:)`).
    /// "file:line" of the Lua function `level` frames up (1: whoever called the running C
    /// function), or nil when there is no such frame.
    public func callerPosition(level: Int32) -> String? {
        var record = lua_Debug()
        guard lua_getstack(L, level, &record) != 0, lua_getinfo(L, "Sl", &record) != 0 else { return nil }
        let source = withUnsafeBytes(of: &record.short_src) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        return record.currentline > 0 ? "\(source):\(record.currentline)" : source
    }

    public func pushTracebackHandler() { moon_push_traceback_handler(L) }

    /// Calls with the message handler kept at `handler` (an absolute index below the function).
    public func pcall(arguments: Int32, results: Int32, handler: Int32) throws(LuaError) {
        let status = moon_pcall(L, arguments, results, handler)
        if status != LUA_OK { throw popError(status) }
    }

    public func pcall(arguments: Int32, results: Int32) throws(LuaError) {
        let functionIndex = top - arguments
        moon_push_traceback_handler(L)
        insert(at: functionIndex)
        let status = moon_pcall(L, arguments, results, functionIndex)
        remove(at: functionIndex)
        if status != LUA_OK { throw popError(status) }
    }

    /// Dumps the function on top of the stack to a binary chunk (the function is popped).
    public func dumpFunction() throws(LuaError) -> [UInt8] {
        let status = moon_dump_function(L)
        if status != LUA_OK { throw popError(status) }
        defer { pop() }
        return withBytes(at: -1) { Array($0) } ?? []
    }

    private func popError(_ status: Int32) -> LuaError {
        let message = toString(at: -1) ?? "(error object is a \(typeName(at: -1)) value)"
        pop()
        var kind: LuaError.Kind
        switch status {
        case LUA_ERRSYNTAX: kind = .syntax
        case LUA_ERRRUN: kind = .runtime
        case LUA_ERRMEM: kind = .memory
        default: kind = .other
        }
        if let limits = moon_limits_of(L), status != LUA_ERRSYNTAX {
            if limits.pointee.exceeded == MOON_LIMIT_TIME { kind = .timeLimit }
            if limits.pointee.exceeded == MOON_LIMIT_MEMORY { kind = .memoryLimit }
        }
        return LuaError(kind: kind, message: message)
    }

    /// Bytes Lua code may still allocate under the state's memory limit (nil: no limit). A Swift
    /// function whose output grows with its input sizes it against this before building it.
    public var memoryHeadroom: Int? {
        guard let limits = moon_limits_of(L), limits.pointee.memory_limit > 0 else { return nil }
        return max(0, Int(limits.pointee.memory_limit - limits.pointee.bytes))
    }

    // MARK: errors from Swift functions

    /// Pushes `message` as the error to raise; return the result from the Swift function.
    public func raise(_ message: String) -> Int32 {
        push(message)
        return MOON_LUA_RAISE
    }

    /// Pushes `message` prefixed with the position of the calling Lua code, like luaL_error.
    public func raiseWithPosition(_ message: String) -> Int32 {
        luaL_where(L, 1)
        let position = toString(at: -1) ?? ""
        pop()
        return raise(position + message)
    }
}

/// An owned Lua state with the standard libraries, sandboxed (see `moon_sandbox`), counting its
/// memory and enforcing its limits: `memoryLimit` bytes while Lua code runs, and `timeout` for
/// each protected call (`Lua.pcall`); a call that exceeds either fails with `.memoryLimit` or
/// `.timeLimit`, and the state stays usable.
public final class LuaState {
    public let lua: Lua
    private let limits: UnsafeMutablePointer<moon_limits>

    public init(memoryLimit: Int = 0, timeout: Double = 0) {
        limits = UnsafeMutablePointer<moon_limits>.allocate(capacity: 1)
        limits.initialize(to: moon_limits())
        guard let L = moon_newstate(limits) else { fatalError("cannot allocate a Lua state") }
        lua = Lua(L)
        moon_set_panic_handler(L)
        if moon_open_libs(L) != LUA_OK || moon_sandbox(L) != LUA_OK {
            fatalError("cannot open the Lua standard libraries")
        }
        self.memoryLimit = memoryLimit
        self.timeout = timeout
    }

    deinit {
        lua_close(lua.L)
        limits.deallocate()
    }

    /// Bytes currently allocated by this state.
    public var memoryInUse: Int { Int(limits.pointee.bytes) }

    /// The most Lua code may make the state hold (0: no limit).
    public var memoryLimit: Int {
        get { Int(limits.pointee.memory_limit) }
        set { limits.pointee.memory_limit = Int64(max(0, newValue)) }
    }

    /// How long one protected call may run, in seconds (0: no limit).
    public var timeout: Double {
        get { Double(limits.pointee.timeout_ns) / 1e9 }
        set { limits.pointee.timeout_ns = newValue > 0 ? Int64(min(newValue, 1e6) * 1e9) : 0 }
    }

    public static var release: String { String(cString: moon_lua_release()) }

    /// Gives scripts C modules (`package.loadlib`, `require`'s searchers for C libraries), which
    /// the sandbox leaves out: the operator named a C path.
    public func allowCModules() {
        _ = moon_allow_c_modules(lua.L)
    }
}
