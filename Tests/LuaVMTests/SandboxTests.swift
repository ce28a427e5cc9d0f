import Foundation
import CLuaShim
import NIOCore
import Testing
@testable import LuaVM

/// Pushes a string of as many bytes as its integer argument asks: a Swift function that allocates.
let bigStringFunction: LuaFunction = { L in
    let lua = Lua(L!)
    let count = min(lua.toInteger(at: 1) ?? 0, 64 << 20)
    [UInt8](repeating: 0x78, count: max(0, count)).withUnsafeBytes { lua.push(bytes: $0) }
    return 1
}

/// What a script can reach must not crash, freeze or bypass the proxy: built-in functions keep
/// their Swift entry points, binary chunks are refused, and the state's time and memory limits
/// abort a call however the script tries to keep it going, leaving the state usable.
@Suite struct SandboxTests {
    func run(_ state: LuaState, _ code: String) -> LuaError? {
        let lua = state.lua
        let top = lua.top
        defer { lua.setTop(top) }
        do {
            try lua.load(code, name: "=sandbox")
            try lua.pcall(arguments: 0, results: 0)
            return nil
        } catch {
            return error
        }
    }

    func withFunctions(_ state: LuaState) {
        let lua = state.lua
        lua.pushGlobalTable()
        lua.setField("add", function: addFunction)
        lua.setField("big", function: bigStringFunction)
        lua.pop()
    }

    @Test func builtInFunctionsKeepTheirEntryPoint() {
        let state = LuaState()
        withFunctions(state)
        // The crash of issue #10: the upvalue holding the Swift function replaced.
        let e = run(state, "debug.setupvalue(add, 1, 0)")
        #expect(e?.message.contains("cannot be changed") == true)
        // Nor can one built-in's entry point be given to another.
        #expect(run(state, "local _, box = debug.getupvalue(big, 1); debug.setupvalue(add, 1, box)") != nil)
        #expect(run(state, "assert(add(2, 3) == 5)") == nil)
        // Lua functions' upvalues are the script's own business.
        #expect(run(state, "local x = 1; local function f() return x end; debug.setupvalue(f, 1, 2); assert(f() == 2)") == nil)
    }

    @Test func userdataMetatablesAndTheRegistryAreOutOfReach() {
        let state = LuaState()
        #expect(run(state, "debug.setmetatable(io.stdout, {})")?.message.contains("cannot be changed") == true)
        #expect(run(state, "debug.getregistry()")?.message.contains("not available") == true)
        #expect(run(state, "debug.sethook()")?.message.contains("not available") == true)
        #expect(run(state, "debug.setmetatable(1, nil); assert(true)") == nil)  // other values as before
    }

    @Test func processLevelFunctionsAreRefused() {
        let state = LuaState()
        for call in ["os.exit(1)", "os.execute('true')", "io.popen('true')"] {
            #expect(run(state, call)?.message.contains("not available in MoonProxy") == true, "\(call)")
        }
    }

    @Test func finalizersAreRefused() {
        let state = LuaState()
        #expect(run(state, "setmetatable({}, {__gc = function() while true do end end})")?.message.contains("__gc") == true)
        #expect(run(state, "debug.setmetatable({}, {__gc = print})")?.message.contains("__gc") == true)
        #expect(run(state, "local t = setmetatable({}, {__index = {a = 1}}); assert(t.a == 1)") == nil)
    }

    @Test func xpcallStillWorks() {
        let state = LuaState()
        #expect(run(state, "local ok, m = xpcall(function(a) error(a .. '!') end, function(m) return 'handled: ' .. m end, 'x'); assert(not ok and m:find('handled: .*x!'))") == nil)
        #expect(run(state, "local ok, a, b = xpcall(function(x, y) return x + y, x end, print, 2, 3); assert(ok and a == 5 and b == 2)") == nil)
    }

    @Test func binaryChunksAreRefused() {
        let state = LuaState()
        #expect(run(state, "local f, e = load(string.dump(function() return 1 end)); assert(f == nil and e:find('binary'))") == nil)
        #expect(run(state, "local f, e = load(string.dump(function() return 1 end), 'x', 'b'); assert(f == nil)") == nil)
        #expect(run(state, "assert(load('return 7')() == 7)") == nil)
        #expect(run(state, "local env = {y = 3}; assert(load('return y', 'c', 't', env)() == 3)") == nil)
    }

    @Test func binaryChunksAreRefusedThroughUpvaluesReadersAndRequire() throws {
        let state = LuaState()
        // The library's load, hidden behind a wrapper, was one upvalue away (issue 22).
        #expect(run(state, "assert(select('#', debug.getupvalue(load, 1)) == 0)") == nil)
        #expect(run(state, "assert(select('#', debug.getupvalue(setmetatable, 1)) == 0)") == nil)
        #expect(run(state, "local x = 1; local function f() return x end; assert(debug.getupvalue(f, 1) == 'x')") == nil)
        // A reader function cannot reach a library load on the stack, and what it gives is text only.
        #expect(run(state, """
            local dump, found = string.dump(function() return 1 end), {}
            local f = load(function()
              if dump == nil then return nil end
              for level = 2, 3 do
                for i = 1, 10 do
                  local name, v = debug.getlocal(level, i)
                  if not name then break end
                  if type(v) == 'function' then found[#found + 1] = v end
                end
              end
              local piece = dump; dump = nil; return piece
            end)
            assert(f == nil)
            for _, v in ipairs(found) do
              local ok, g = pcall(v, string.dump(function() return 2 end))
              assert(not (ok and type(g) == 'function' and g() == 2))
            end
            local parts = { 'return ', '4', '2' }
            assert(load(function() return table.remove(parts, 1) end)() == 42)
            """) == nil)
        // require loads text only
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("moon-sandbox-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let dir = directory.path
        #expect(run(state, """
            local out = io.open('\(dir)/binmod.lua', 'wb'); out:write(string.dump(function() return 'bin' end)); out:close()
            out = io.open('\(dir)/textmod.lua', 'wb'); out:write("return 'text'"); out:close()
            package.path = '\(dir)/?.lua'
            assert(require('textmod') == 'text')
            local ok, e = pcall(require, 'binmod')
            assert(not ok and e:find('binary'), e)
            """) == nil)
    }

    @Test func cModulesOnlyWhenTheOperatorAllowsThem() {
        let state = LuaState()
        // package.loadlib could reopen os with os.execute in it
        #expect(run(state, "assert(package.loadlib == nil and #package.searchers == 2)") == nil)
        #expect(run(state, "assert(not pcall(require, 'definitely_not_a_c_module'))") == nil)
        state.allowCModules()
        #expect(run(state, "assert(type(package.loadlib) == 'function' and #package.searchers == 4)") == nil)
    }

    @Test func aSpinningCallIsStoppedAtTheTimeout() {
        let state = LuaState(timeout: 0.2)
        for code in ["while true do end",
                     "while true do pcall(function() while true do end end) end",
                     "local co = coroutine.wrap(function() while true do end end); co()",
                     "while true do xpcall(function() while true do end end, function() while true do end end) end"] {
            let started = ContinuousClock.now
            let e = run(state, code)
            let took = ContinuousClock.now - started
            #expect(e?.kind == .timeLimit, "\(code): \(String(describing: e))")
            #expect(took < .seconds(2), "\(code) took \(took)")
        }
        // and the state goes on
        #expect(run(state, "local s = 0; for i = 1, 1000 do s = s + i end; assert(s == 500500)") == nil)
    }

    @Test func memoryIsLimitedWhileLuaRuns() {
        let state = LuaState(memoryLimit: 8 << 20)
        withFunctions(state)
        let before = state.memoryInUse
        for code in ["local t = {} for i = 1, 1e8 do t[i] = i end",
                     "local s = string.rep('x', 1 << 30)",
                     "local t = {} while true do t[#t + 1] = big(65536) end",
                     "x = big(64 << 20)"] {
            let started = ContinuousClock.now
            let e = run(state, code)
            #expect(e?.kind == .memoryLimit, "\(code): \(String(describing: e))")
            #expect(ContinuousClock.now - started < .seconds(3), "\(code)")
            #expect(state.memoryInUse < 8 << 20 + 65 << 20)
        }
        // A script that catches the error and tries again is stopped by the time limit.
        state.timeout = 0.3
        let e = run(state, "while true do pcall(function() local t = {} for i = 1, 1e8 do t[i] = {} end end) end")
        #expect(e?.kind == .timeLimit || e?.kind == .memoryLimit)
        // The garbage goes with the failed call; the state goes on.
        #expect(run(state, "collectgarbage()") == nil)
        #expect(state.memoryInUse < before + (1 << 20))
        #expect(run(state, "local t = {} for i = 1, 1000 do t[i] = i end") == nil)
    }
}
