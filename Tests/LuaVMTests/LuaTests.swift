import CLuaShim
import NIOCore
import Testing
@testable import LuaVM

/// A Swift function that raises a Lua error: the trampoline must raise it after this returns.
let failingFunction: LuaFunction = { L in
    Lua(L!).raise("swift says no")
}

/// Adds its two integer arguments; complains about anything else.
let addFunction: LuaFunction = { L in
    let lua = Lua(L!)
    guard let a = lua.toInteger(at: 1), let b = lua.toInteger(at: 2) else {
        return lua.raiseWithPosition("add expects two integers")
    }
    lua.push(a + b)
    return 1
}

@Suite struct LuaTests {
    @Test func runsCodeAndReturnsValues() throws {
        let state = LuaState()
        defer { withExtendedLifetime(state) {} }
        let lua = state.lua
        try lua.load("return 1 + 2, 'x' .. 'y'", name: "=test")
        try lua.pcall(arguments: 0, results: 2)
        #expect(lua.toInteger(at: -2) == 3)
        #expect(lua.toString(at: -1) == "xy")
        lua.pop(2)
        #expect(lua.top == 0)
    }

    @Test func syntaxErrorsNameTheLine() {
        let state = LuaState()
        defer { withExtendedLifetime(state) {} }
        let lua = state.lua
        #expect {
            try lua.load("local x = 1\nthis is not lua\n", name: "@script.lua")
        } throws: { error in
            guard let e = error as? LuaError else { return false }
            return e.kind == .syntax && e.message.contains("script.lua:2:")
        }
        #expect(lua.top == 0)
    }

    @Test func runtimeErrorsCarryATraceback() throws {
        let state = LuaState()
        defer { withExtendedLifetime(state) {} }
        let lua = state.lua
        try lua.load("local function f() error('boom') end\nf()\n", name: "@hooks.lua")
        #expect {
            try lua.pcall(arguments: 0, results: 0)
        } throws: { error in
            guard let e = error as? LuaError else { return false }
            return e.kind == .runtime && e.message.contains("hooks.lua:1: boom") && e.message.contains("stack traceback")
        }
        #expect(lua.top == 0)
    }

    @Test func swiftFunctionsRaiseErrorsSafely() throws {
        let state = LuaState()
        defer { withExtendedLifetime(state) {} }
        let lua = state.lua
        lua.push(function: failingFunction)
        lua.pushGlobalTable()
        lua.insert(at: -2)
        lua.rawSet(-2, "fail")
        lua.pop()
        try lua.load("local ok, err = pcall(fail)\nreturn ok, err", name: "=t")
        try lua.pcall(arguments: 0, results: 2)
        #expect(lua.toBool(at: -2) == false)
        #expect(lua.toString(at: -1) == "swift says no")
        lua.pop(2)
        // and an uncaught one reaches our pcall as an error
        try lua.load("fail()", name: "=t")
        #expect(throws: LuaError.self) { try lua.pcall(arguments: 0, results: 0) }
    }

    @Test func swiftFunctionsGetArguments() throws {
        let state = LuaState()
        defer { withExtendedLifetime(state) {} }
        let lua = state.lua
        lua.push(function: addFunction)
        lua.pushGlobalTable()
        lua.insert(at: -2)
        lua.rawSet(-2, "add")
        lua.pop()
        try lua.load("return add(40, 2)", name: "=t")
        try lua.pcall(arguments: 0, results: 1)
        #expect(lua.toInteger(at: -1) == 42)
        lua.pop()
        try lua.load("return add('x')", name: "=t")
        #expect {
            try lua.pcall(arguments: 0, results: 1)
        } throws: { ($0 as? LuaError)?.message.contains("add expects two integers") == true }
    }

    @Test func binaryChunksRoundTrip() throws {
        let state = LuaState()
        defer { withExtendedLifetime(state) {} }
        let lua = state.lua
        try lua.load("local n = ... return n * 2", name: "=double")
        let chunk = try lua.dumpFunction()
        #expect(lua.top == 0)
        try chunk.withUnsafeBytes { try lua.load($0, name: "=double", mode: "b") }
        lua.push(21)
        try lua.pcall(arguments: 1, results: 1)
        #expect(lua.toInteger(at: -1) == 42)
    }

    @Test func largeFunctionsDumpWhole() throws {
        // bigger than a luaL_Buffer's first block, so the dump grows its buffer several times
        let state = LuaState()
        defer { withExtendedLifetime(state) {} }
        let lua = state.lua
        var source = "local t = {}\n"
        for i in 0..<2000 { source += "t[\(i)] = 'value number \(i)'\n" }
        source += "return #t"
        try lua.load(source, name: "=big")
        let chunk = try lua.dumpFunction()
        #expect(chunk.count > 20_000)
        #expect(chunk.prefix(4) == [0x1B, 0x4C, 0x75, 0x61])
        try chunk.withUnsafeBytes { try lua.load($0, name: "=big", mode: "b") }
        try lua.pcall(arguments: 0, results: 1)
        #expect(lua.toInteger(at: -1) == 1999)
    }

    @Test func bytesSurviveUnchanged() throws {
        let state = LuaState()
        defer { withExtendedLifetime(state) {} }
        let lua = state.lua
        let packet = ByteBuffer(bytes: [0x03, 0x00, 0xFF, 0x80, 0x41])
        lua.push(packet)
        #expect(lua.toByteBuffer(at: -1) == packet)
        lua.push(bytes: UnsafeRawBufferPointer(start: nil, count: 0))
        #expect(lua.toString(at: -1) == "")
    }

    @Test func referencesAndRawTables() throws {
        let state = LuaState()
        defer { withExtendedLifetime(state) {} }
        let lua = state.lua
        lua.newTable()
        lua.push("value")
        lua.rawSet(-2, "key")
        let ref = lua.ref()
        #expect(lua.top == 0)
        #expect(lua.push(reference: ref) == .table)
        #expect(lua.rawGet(-1, "key") == .string)
        #expect(lua.toString(at: -1) == "value")
        lua.pop(2)
        lua.unref(ref)
    }

    @Test func memoryIsCounted() throws {
        let state = LuaState()
        let before = state.memoryInUse
        try state.lua.load("big = string.rep('x', 1000000)", name: "=t")
        try state.lua.pcall(arguments: 0, results: 0)
        #expect(state.memoryInUse > before + 900_000)
    }

    /// The hook lookup: the table's own function first, else the global one, else nothing pushed;
    /// clearing fields writes nil only where a value is.
    @Test func pushFunctionAndClearFields() throws {
        let state = LuaState()
        defer { withExtendedLifetime(state) {} }
        let lua = state.lua
        try lua.load("g = function() return 'global' end; t = { f = function() return 'own' end, n = 1, s = 's' }", name: "=t")
        try lua.pcall(arguments: 0, results: 0)
        lua.pushGlobalTable()
        _ = lua.rawGet(-1, "t")
        let table = lua.ref()
        lua.pop()
        func key(_ name: String) -> Int32 { lua.push(name); return lua.ref() }
        let f = key("f"), g = key("g"), missing = key("missing"), n = key("n"), s = key("s")
        for (name, expected) in [(f, "own"), (g, "global")] {
            #expect(lua.pushFunction(key: name, inTableOrGlobals: table))
            try lua.pcall(arguments: 0, results: 1)
            #expect(lua.toString(at: -1) == expected)
            lua.pop()
        }
        #expect(!lua.pushFunction(key: missing, inTableOrGlobals: table))
        #expect(!lua.pushFunction(key: n, inTableOrGlobals: table))  // a number is no hook
        #expect(lua.top == 0)
        lua.clearFields([n, missing, s], ofTable: table)
        #expect(lua.top == 0)
        lua.push(reference: table)
        #expect(lua.rawGet(-1, "n") == .nil)
        #expect(lua.rawGet(-2, "s") == .nil)
        #expect(lua.rawGet(-3, "f") == .function)
        lua.pop(4)
    }
}
