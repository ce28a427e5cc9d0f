import Logging
import MySQLWire
import NIOCore
import ProxyCore
import Testing
@testable import ProxyScripting

/// A script that spins, eats memory or reaches into another connection costs its own command at
/// most: the hook is aborted, its client gets an ERR naming the limit, and everything else goes on.
@Suite struct LimitsTests {
    static func query(_ sql: String) -> ByteBuffer { ByteBuffer(string: "\u{03}" + sql) }

    func limitedEngine(_ source: String, memory: Int = 64 << 20, timeout: Double = 0.3) -> ScriptEngine {
        var config = ScriptEngine.Configuration(scriptSource: source)
        config.memoryLimit = memory
        config.timeout = timeout
        return ScriptEngine(configuration: config, backends: FakeBackends(), logger: Logger(label: "test"))
    }

    func errorMessage(_ outcome: HookOutcome) -> String? {
        if case .returned(.sendResult(.error(let code, let state, let message))) = outcome, code == 1105, state == "HY000" { return message }
        return nil
    }

    @Test func aSpinningHookIsAbortedAndItsClientGetsAnError() throws {
        let e = limitedEngine("""
        function read_query(packet)
          if packet:sub(2) == "spin" then while true do end end
          if packet:sub(2) == "sneaky" then while true do pcall(function() while true do end end) end end
        end
        """)
        let spinning = try start(e, FakeHost())
        let other = try start(e, FakeHost())
        for sql in ["spin", "sneaky"] {
            let started = ContinuousClock.now
            let message = errorMessage(spinning.readQuery(packet: Self.query(sql), hints: []))
            #expect(message?.contains("Lua time limit") == true && message?.contains("--proxy-lua-timeout") == true, "\(String(describing: message))")
            #expect(ContinuousClock.now - started < .seconds(2))
        }
        #expect(other.readQuery(packet: Self.query("SELECT 1"), hints: []) == .returned(.noDecision))
        #expect(spinning.readQuery(packet: Self.query("SELECT 1"), hints: []) == .returned(.noDecision))
    }

    @Test func aHookThatEatsMemoryIsAbortedAndTheMemoryComesBack() throws {
        let e = limitedEngine("""
        function read_query(packet)
          local t = {}
          while true do t[#t + 1] = string.rep("x", 4096) .. #t end
        end
        """, memory: 16 << 20, timeout: 10)
        let script = try start(e, FakeHost())
        let before = e.memoryInUse
        let outcome = script.readQuery(packet: Self.query("x"), hints: [])
        let message = errorMessage(outcome)
        #expect(message?.contains("Lua memory limit") == true, "\(outcome)")
        #expect(e.memoryInUse < before + (1 << 20))
    }

    /// Every binding, driven under memory limits from none to comfortable: any allocation may fail,
    /// and nothing may crash, leak the limit or leave the engine unusable.
    @Test func everyBindingUnderATinyMemoryLimit() throws {
        let e = limitedEngine(Self.everything, memory: 0, timeout: 5)
        let host = FakeHost()
        host.scriptServer = ScriptServerInfo()
        let script = try start(e, host)
        let inj = InjectionResult(injection: Injection(id: 1, packet: Self.query("SELECT 1"), resultsetIsNeeded: true, queuedAt: 0),
                                  buffered: true, capabilities: [.protocol41])
        inj.packets = [ByteBuffer(bytes: [1]),
                       ByteBuffer(bytes: Array("\u{03}def\u{00}\u{00}\u{00}\u{01}a\u{00}\u{0c}\u{21}\u{00}\u{01}\u{00}\u{00}\u{00}\u{fd}\u{00}\u{00}\u{00}\u{00}\u{00}".utf8)),
                       ByteBuffer(bytes: [0xfe, 0, 0, 2, 0]), ByteBuffer(bytes: [1, 0x31]), ByteBuffer(bytes: [0xfe, 0, 0, 2, 0])]
        let base = e.memoryInUse
        var failures = 0
        for extra in stride(from: 0, through: 96 << 10, by: 512) {
            e.setLimits(memory: base + extra)
            if case .returned(.sendResult(.error)) = script.readQuery(packet: Self.query("SELECT everything"), hints: [(key: "k", value: "v")]) { failures += 1 }
            _ = script.readQueryResult(inj)
            #expect(e.memoryInUse <= base + extra + (4 << 20))
        }
        #expect(failures > 0)
        e.setLimits(memory: 0)
        #expect(script.readQuery(packet: Self.query("SELECT everything"), hints: []) == .returned(.noDecision))
    }

    static let everything = #"""
    local proto = require("mysql.proto")
    local tokenizer = require("proxy.tokenizer")
    local password = require("mysql.password")
    local commands = require("proxy.commands")
    local balance = require("proxy.balance")
    local chassis = require("chassis")
    function read_query(packet)
      local c = proxy.connection
      local _ = c.client.username, c.client.src, c.server, c.backend_ndx
      proxy.queries:append(1, packet, { resultset_is_needed = true })
      proxy.queries:prepend(2, packet)
      local _ = proxy.queries:len() + #proxy.queries
      proxy.queries:reset()
      local g = proto.to_challenge_packet({ server_version = 50505, thread_id = 7 })
      proto.from_challenge_packet(g)
      proto.from_response_packet(proto.to_response_packet({ username = "u", response = "x", server_capabilities = proto.DEFAULT_CAPABILITIES }))
      proto.from_ok_packet(proto.to_ok_packet({ affected_rows = 1 }))
      proto.from_err_packet(proto.to_err_packet({ errmsg = "e" }))
      proto.from_eof_packet(proto.to_eof_packet({}))
      proto.from_stmt_prepare_packet(proto.to_stmt_prepare_packet({ stmt_text = "SELECT ?" }))
      proto.from_stmt_prepare_ok_packet(proto.to_stmt_prepare_ok_packet({ stmt_id = 1, num_params = 1 }))
      proto.from_stmt_execute_packet(proto.to_stmt_execute_packet({ stmt_id = 1, params = { { type = proxy.MYSQL_TYPE_LONG, value = 5 } } }), 1)
      proto.stmt_id_from_stmt_execute_packet(proto.to_stmt_execute_packet({ stmt_id = 3 }))
      proto.from_stmt_close_packet(proto.to_stmt_close_packet({ stmt_id = 3 }))
      proto.from_masterinfo_string(proto.to_masterinfo_string({ master_host = "h" }))
      proto.random_challenge(20)
      local tokens = proxy.tokenize("SELECT a, b FROM t WHERE c = 'x' /* hi */")
      tokenizer.normalize(tokens)
      tokenizer.first_stmt_token(tokens)
      tokenizer.tokens_to_query(tokenizer.bare_tokens(tokens))
      password.check(password.scramble("12345678901234567890", password.hash(password.hash("pw"))) and "12345678901234567890" or "x", "y", "z")
      commands.pretty_print(commands.parse(packet))
      local _ = proxy.global.backends[1].dst.name, #proxy.global.backends, proxy.global.config
      balance.least_connected()
      chassis.get_stats()
      local _ = proxy.hints and proxy.hints.k
      proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = { fields = { { name = "a" } }, rows = { { "1" } } } }
    end
    function read_query_result(inj)
      local _ = inj.id, inj.query, inj.query_time, inj.resultset.row_count, inj.resultset.fields[1].name, #inj.resultset.fields
      for row in inj.resultset.rows do local _ = row[1] end
    end
    """#

    /// Objects of one connection kept in proxy.global raise an error in another connection's
    /// hooks (and once their connection is closed) instead of reaching across event loops.
    @Test func objectsOfAnotherConnectionRaiseAnError() throws {
        let e = limitedEngine("""
        function read_query(packet)
          if packet:sub(2) == "keep" then
            proxy.global.kept = { connection = proxy.connection, queries = proxy.queries }
            return
          end
          local ok, err = pcall(function() return proxy.global.kept.connection.client.username end)
          local ok2, err2 = pcall(function() proxy.global.kept.queries:append(1, "\\3SELECT 1") end)
          proxy.global.errors = tostring(err) .. " | " .. tostring(err2)
          proxy.global.ok = ok or ok2
        end
        function read_query_result(inj)
          proxy.global.inj = inj
        end
        """)
        let a = try start(e, FakeHost())
        let b = try start(e, FakeHost())
        _ = a.readQuery(packet: Self.query("keep"), hints: [])
        _ = b.readQuery(packet: Self.query("use"), hints: [])
        let (ok, errors) = e.withLua { lua -> (Bool, String) in
            lua.pushGlobalTable()
            lua.rawGet(-1, "proxy")
            lua.rawGet(-1, "global")
            lua.rawGet(-1, "ok")
            let ok = lua.toBool(at: -1)
            lua.pop()
            lua.rawGet(-1, "errors")
            let errors = lua.toString(at: -1) ?? ""
            lua.pop(4)
            return (ok, errors)
        }
        #expect(!ok)
        #expect(errors.contains("belongs to another connection"), "\(errors)")
        a.close()
        _ = b.readQuery(packet: Self.query("use"), hints: [])
        let closedErrors = e.withLua { lua -> String in
            lua.pushGlobalTable()
            lua.rawGet(-1, "proxy")
            lua.rawGet(-1, "global")
            lua.rawGet(-1, "errors")
            defer { lua.pop(4) }
            return lua.toString(at: -1) ?? ""
        }
        #expect(closedErrors.contains("closed"), "\(closedErrors)")
    }

    /// The cases of issue #10 that reached a trap or a bad pointer from a script's values.
    @Test func scriptValuesNeverTrap() throws {
        let e = limitedEngine("""
        local proto = require("mysql.proto")
        function read_query(packet)
          local results = {}
          for _, f in ipairs({
            function() return proto.to_stmt_execute_packet({ stmt_id = 1, num_params = math.maxinteger }) end,
            function() return proto.to_stmt_execute_packet({ stmt_id = 1, num_params = 2^40 }) end,
            function() return proto.to_stmt_execute_packet({ stmt_id = 1, num_params = -1 }) end,
            function() debug.setupvalue(proxy.tokenize, 1, 0); return proxy.tokenize("x") end,
            function() return proto.to_err_packet({ errcode = 70000 }) end,
            function() return proto.to_ok_packet({ affected_rows = -1 }) end,
            function() return proto.random_challenge(math.mininteger) end,
          }) do
            local ok, err = pcall(f)
            results[#results + 1] = ok and "ok" or "error"
          end
          proxy.global.results = table.concat(results, ",")
          return proxy.PROXY_SEND_RESULT
        end
        """)
        let script = try start(e, FakeHost())
        _ = script.readQuery(packet: Self.query("x"), hints: [])
        let results = e.withLua { lua -> String in
            lua.pushGlobalTable()
            lua.rawGet(-1, "proxy")
            lua.rawGet(-1, "global")
            lua.rawGet(-1, "results")
            defer { lua.pop(4) }
            return lua.toString(at: -1) ?? ""
        }
        #expect(results == "error,error,error,error,error,error,error")
        // and proxy.tokenize still works
        #expect(e.withLua { lua -> Bool in
            (try? lua.load("return #proxy.tokenize('SELECT 1')", name: "=t")) != nil && (try? lua.pcall(arguments: 0, results: 1)) != nil
                && { defer { lua.pop() }; return lua.toInteger(at: -1) == 2 }()
        })
    }
}
