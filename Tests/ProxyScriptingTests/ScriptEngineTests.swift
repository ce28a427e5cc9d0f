#if canImport(Glibc)
import Glibc
#endif
import Logging
import MySQLWire
import NIOCore
import ProxyCore
import Testing
@testable import ProxyScripting

final class FakeHost: ScriptConnectionHost {
    var scriptClient = ScriptClientInfo()
    var scriptServer: ScriptServerInfo? = nil
    var scriptBackendIndex = 0
    var backendIndexWrites: [Int] = []
    var closeRequested = false

    init() {
        scriptClient.username = "alice"
        scriptClient.defaultDB = "shop"
        scriptClient.src = ScriptAddress(name: "127.0.0.1:50000", address: "127.0.0.1", port: 50000, type: 2)
        scriptClient.dst = ScriptAddress(name: "127.0.0.1:4040", address: "127.0.0.1", port: 4040, type: 2)
    }

    func scriptSetBackendIndex(_ index: Int) {
        backendIndexWrites.append(index)
        scriptBackendIndex = index
    }
    func scriptSetConnectionClose(_ close: Bool) { closeRequested = close }
    var scriptSessionState: SessionState?
    var migrations: [Int] = []
    var migrateRefusal: String?
    func scriptMigrate(_ index: Int) -> String? {
        if migrateRefusal == nil { migrations.append(index) }
        return migrateRefusal
    }
}

final class FakeBackends: ScriptBackendsHost, @unchecked Sendable {
    var states = [1, 0]
    var minIdle = [0, 0]
    func backendInfo(_ index: Int) -> ScriptBackendInfo? {
        guard index < 2 else { return nil }
        return ScriptBackendInfo(dst: ScriptAddress(name: "127.0.0.1:330\(6 + index)", address: "127.0.0.1", port: 3306 + index, type: 2),
                                 connectedClients: 3, state: states[index], type: index == 0 ? 1 : 2, uuid: nil,
                                 idlingConnections: 1, minIdleConnections: minIdle[index], maxIdleConnections: 8)
    }
    var backendCount: Int { 2 }
    func setBackendState(_ index: Int, _ state: Int) { states[index] = state }
    func setBackendUUID(_ index: Int, _ uuid: String?) {}
    func idleConnections(_ index: Int, user: String) -> Int { user == "alice" ? 2 : 0 }
    func setPoolLimits(_ index: Int, min: Int?, max: Int?) { if let min { minIdle[index] = min } }
}

func engine(_ source: String, backends: ScriptBackendsHost? = FakeBackends()) -> ScriptEngine {
    var config = ScriptEngine.Configuration(scriptSource: source)
    config.config = ["proxy-address": .string(":4040")]
    return ScriptEngine(configuration: config, backends: backends, logger: Logger(label: "test"))
}

func start(_ engine: ScriptEngine, _ host: FakeHost) throws -> ConnectionScript {
    try engine.startConnection(host: host).get()
}

@Suite struct ScriptEngineTests {
    @Test func hooksAreFoundAndCalled() throws {
        let e = engine("""
        function read_query(packet)
          if packet:byte() == proxy.COM_QUERY and packet:sub(2) == "SELECT 1" then
            proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = { fields = { { name = "one", type = proxy.MYSQL_TYPE_LONG } }, rows = { { 1 } } } }
            return proxy.PROXY_SEND_RESULT
          end
        end
        function disconnect_client() end
        """)
        let host = FakeHost()
        let script = try start(e, host)
        #expect(script.hooks == [.readQuery, .disconnectClient])
        let answered = script.readQuery(packet: ByteBuffer(string: "\u{03}SELECT 1"), hints: [])
        #expect(answered == .returned(.sendResult(.resultSet(fields: [ScriptField(name: "one", type: .long)], rows: [["1"]], serverStatus: nil, warnings: 0))))
        #expect(script.readQuery(packet: ByteBuffer(string: "\u{03}SELECT 2"), hints: []) == .returned(.noDecision))
        #expect(script.connectServer() == .notDefined)
    }

    @Test func globalsArePerConnectionAndProxyGlobalIsShared() throws {
        let e = engine("""
        counter = (counter or 0) + 1
        proxy.global.connections = (proxy.global.connections or 0) + 1
        function read_query(packet)
          proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = counter .. "/" .. proxy.global.connections }
          return proxy.PROXY_SEND_RESULT
        end
        """)
        let a = try start(e, FakeHost())
        let b = try start(e, FakeHost())
        #expect(b.readQuery(packet: ByteBuffer(string: "\u{03}x"), hints: []) == .returned(.sendResult(.error(code: 1105, sqlState: "07000", message: "1/2"))))
        #expect(a.readQuery(packet: ByteBuffer(string: "\u{03}x"), hints: []) == .returned(.sendResult(.error(code: 1105, sqlState: "07000", message: "1/2"))))
    }

    @Test func queriesAndResponseStartEmptyForEachQuery() throws {
        let e = engine("""
        function read_query(packet)
          assert(#proxy.queries == 0 and proxy.queries:len() == 0)
          assert(next(proxy.response) == nil)
          proxy.queries:append(1, packet, { resultset_is_needed = true })
          proxy.queries:prepend(2, string.char(proxy.COM_QUERY) .. "SELECT NOW()")
          proxy.response.type = proxy.MYSQLD_PACKET_OK
          return proxy.PROXY_SEND_QUERY
        end
        """)
        let script = try start(e, FakeHost())
        for _ in 0..<2 {
            #expect(script.readQuery(packet: ByteBuffer(string: "\u{03}SELECT 1"), hints: []) == .returned(.sendQuery))
            #expect(script.queries.map(\.id) == [2, 1])
            #expect(script.queries.map(\.resultsetIsNeeded) == [false, true])
        }
    }

    @Test func runtimeErrorsAreReportedWithTheirLine() throws {
        let e = engine("function read_query(packet)\n  local t = nil\n  return t.x\nend\n")
        let script = try start(e, FakeHost())
        guard case .failed(let message) = script.readQuery(packet: ByteBuffer(string: "\u{03}x"), hints: []) else {
            Issue.record("no failure"); return
        }
        #expect(message.contains(":3:"))
        #expect(message.contains("stack traceback"))
    }

    @Test func topLevelErrorsFailTheConnection() {
        let e = engine("error('not today')")
        let result = e.startConnection(host: FakeHost())
        guard case .failure(.executeFailed(let message)) = result else { Issue.record("started"); return }
        #expect(message.contains("not today"))
    }

    @Test func syntaxErrorMeansNotLoaded() {
        let e = engine("function read_query(")
        #expect(!e.isLoaded)
        #expect(e.loadError?.contains("(inline script)") == true)
        #expect(e.startConnection(host: FakeHost()) .failureValue == .loadFailed)
    }

    @Test func sessionStateAndMigrate() throws {
        let e = engine("""
        function read_query(packet)
          local s = proxy.connection.session_state
          if not s then
            proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "none" }
            return proxy.PROXY_SEND_RESULT
          end
          local ok, why = proxy.connection:migrate(2)
          local bad = pcall(function() return proxy.connection:migrate("x") end)
          proxy.response = { type = proxy.MYSQLD_PACKET_ERR,
            errmsg = table.concat({ s.schema, tostring(s.in_transaction), s.variables.time_zone, s.user_variables.x,
                                    table.concat(s.pins, "+"), tostring(s.movable), s.last_insert_id,
                                    tostring(ok), tostring(why), tostring(bad) }, ",") }
          return proxy.PROXY_SEND_RESULT
        end
        """)
        let host = FakeHost()
        let script = try start(e, host)
        let query = ByteBuffer(string: "\u{03}x")
        #expect(script.readQuery(packet: query, hints: []) == .returned(.sendResult(.error(code: 1105, sqlState: "07000", message: "none"))))
        var state = SessionState()
        state.apply([.systemVariable("time_zone", "+03:00"), .string(.schema, "shop")], status: [.autocommit, .inTransaction])
        state.apply(StatementBackstop(Array("SET @x = 5".utf8)))
        state.lastInsertID = 7
        host.scriptSessionState = state
        host.migrateRefusal = "the session holds state that cannot move (transaction)"
        #expect(script.readQuery(packet: query, hints: []) == .returned(.sendResult(.error(code: 1105, sqlState: "07000",
            message: "shop,true,+03:00,5,transaction,false,7,false,the session holds state that cannot move (transaction),false"))))
        #expect(host.migrations.isEmpty)
        host.migrateRefusal = nil
        state.updateTransaction(.autocommit)
        host.scriptSessionState = state
        #expect(script.readQuery(packet: query, hints: []) == .returned(.sendResult(.error(code: 1105, sqlState: "07000",
            message: "shop,false,+03:00,5,,true,7,true,nil,false"))))
        #expect(host.migrations == [2])
    }

    @Test func connectionFields() throws {
        let e = engine("""
        function read_query(packet)
          local c = proxy.connection.client
          proxy.response = { type = proxy.MYSQLD_PACKET_ERR,
            errmsg = table.concat({ c.username, c.default_db, c.src.name, c.dst.port, tostring(proxy.connection.server),
                                    proxy.connection.backend_ndx }, ",") }
          proxy.connection.backend_ndx = 2
          proxy.connection.connection_close = true
          return proxy.PROXY_SEND_RESULT
        end
        """)
        let host = FakeHost()
        let script = try start(e, host)
        #expect(script.readQuery(packet: ByteBuffer(string: "\u{03}x"), hints: []) ==
                .returned(.sendResult(.error(code: 1105, sqlState: "07000", message: "alice,shop,127.0.0.1:50000,4040,nil,0"))))
        #expect(host.backendIndexWrites == [2])
        #expect(host.closeRequested)
    }

    @Test func writingAReadOnlyFieldIsAnError() throws {
        let e = engine("function read_query() proxy.connection.client = 1 end")
        let host = FakeHost()
        let script = try start(e, host)
        defer { withExtendedLifetime(host) {} }
        guard case .failed(let m) = script.readQuery(packet: ByteBuffer(string: "\u{03}x"), hints: []) else { Issue.record(); return }
        #expect(m.contains("proxy.connection.client is not writable"))
    }

    @Test func hintsAreVisible() throws {
        let e = engine("""
        function read_query(packet)
          proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = (proxy.hints.trace_id or "none") .. ":" .. (proxy.hints.route or "none") }
          return proxy.PROXY_SEND_RESULT
        end
        """)
        let script = try start(e, FakeHost())
        #expect(script.readQuery(packet: ByteBuffer(string: "\u{03}x"), hints: [("trace_id", "abc"), ("route", "ro")]) ==
                .returned(.sendResult(.error(code: 1105, sqlState: "07000", message: "abc:ro"))))
        #expect(script.readQuery(packet: ByteBuffer(string: "\u{03}x"), hints: []) ==
                .returned(.sendResult(.error(code: 1105, sqlState: "07000", message: "none:none"))))
    }

    @Test func rawAndOKResponses() throws {
        let e = engine("""
        function read_query(packet)
          if packet:sub(2) == "raw" then
            proxy.response = { type = proxy.MYSQLD_PACKET_RAW, packets = { "\\0\\0\\0\\2\\0\\0\\0" } }
          else
            proxy.response = { type = proxy.MYSQLD_PACKET_OK, affected_rows = 3, insert_id = 7 }
          end
          return proxy.PROXY_SEND_RESULT
        end
        """)
        let script = try start(e, FakeHost())
        #expect(script.readQuery(packet: ByteBuffer(string: "\u{03}raw"), hints: []) ==
                .returned(.sendResult(.raw([ByteBuffer(bytes: [0, 0, 0, 2, 0, 0, 0])]))))
        #expect(script.readQuery(packet: ByteBuffer(string: "\u{03}ok"), hints: []) ==
                .returned(.sendResult(.ok(affectedRows: 3, insertID: 7, serverStatus: nil, warnings: 0, message: nil))))
    }

    @Test func unusableResponseBecomesTheHandlingFailedError() throws {
        let e = engine("function read_query() proxy.response = { type = 'OK' } return proxy.PROXY_SEND_RESULT end")
        let script = try start(e, FakeHost())
        #expect(script.readQuery(packet: ByteBuffer(string: "\u{03}x"), hints: []) == .returned(.sendResult(.handlingFailed)))
    }

    @Test func readQueryResultSeesTheBufferedResultSet() throws {
        let e = engine("""
        function read_query_result(inj)
          local res = inj.resultset
          local names = {}
          for i = 1, #res.fields do names[#names + 1] = res.fields[i].name .. "/" .. res.fields[i].type end
          local values = {}
          for row in res.rows do values[#values + 1] = (row[1] or "NULL") .. "," .. (row[2] or "NULL") end
          proxy.response = { type = proxy.MYSQLD_PACKET_ERR,
            errmsg = inj.id .. "|" .. table.concat(names, ";") .. "|" .. table.concat(values, ";") .. "|" ..
                     tostring(res.flags.auto_commit) .. "|" .. tostring(res.affected_rows) .. "|" .. res.row_count }
          return proxy.PROXY_SEND_RESULT
        end
        """)
        let script = try start(e, FakeHost())
        let injection = Injection(id: 5, packet: ByteBuffer(string: "\u{03}SELECT"), resultsetIsNeeded: true, queuedAt: 0)
        let result = InjectionResult(injection: injection, buffered: true, capabilities: [.protocol41])
        result.packets = ["02", "036465660174016101610269640269640c3f000b000000030350000000",
                          "03646566017401610161017301730c21003c000000fd0000000000", "fe00002200",
                          "0131036f6e65", "0132fb", "fe00002200"].map { ByteBuffer(hex: $0) }
        result.wasResultSet = true
        result.rows = 2
        result.serverStatus = 0x22
        #expect(script.readQueryResult(result) ==
                .returned(.sendResult(.error(code: 1105, sqlState: "07000", message: "5|id/3;s/253|1,one;2,NULL|true|nil|2"))))
    }

    @Test func unbufferedResultsRefuseRowAccess() throws {
        let e = engine("function read_query_result(inj) local x = inj.resultset.rows end")
        let script = try start(e, FakeHost())
        let result = InjectionResult(injection: Injection(id: 1, packet: ByteBuffer(string: "\u{03}x"), resultsetIsNeeded: false, queuedAt: 0),
                                     buffered: false, capabilities: [.protocol41])
        guard case .failed(let m) = script.readQueryResult(result) else { Issue.record(); return }
        #expect(m.contains("resultset_is_needed"))
    }

    @Test func backendsAreVisibleAndWritable() throws {
        let backends = FakeBackends()
        let e = engine("""
        function read_query()
          local b = proxy.global.backends
          local r = { #b, b[1].dst.name, b[2].type, b[1].state, b[1].pool.users["alice"].cur_idle_connections, tostring(b[3]) }
          b[2].state = proxy.BACKEND_STATE_DOWN
          b[1].pool.min_idle_connections = 4
          proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = table.concat(r, ",") }
          return proxy.PROXY_SEND_RESULT
        end
        """, backends: backends)
        let script = try start(e, FakeHost())
        #expect(script.readQuery(packet: ByteBuffer(string: "\u{03}x"), hints: []) ==
                .returned(.sendResult(.error(code: 1105, sqlState: "07000", message: "2,127.0.0.1:3306,2,1,2,nil"))))
        #expect(backends.states == [1, 2])
        #expect(backends.minIdle == [4, 0])
    }

    @Test func lua51Compatibility() throws {
        let e = engine("""
        local t = { 1, 2, 3 }
        assert(table.getn(t) == 3 and math.mod(7, 3) == 1 and select("#", unpack(t)) == 3)
        assert(loadstring("return 42")() == 42)
        local words = {}
        for w in string.gfind("a b c", "%a") do words[#words + 1] = w end
        assert(#words == 3)
        package.preload["legacy"] = function(...)
          module("legacy", package.seeall)
          function answer() return 42 end
        end
        local legacy = require("legacy")
        assert(legacy.answer() == 42 and legacy._NAME == "legacy")
        function read_query() return proxy.PROXY_SEND_QUERY end
        """)
        let script = try start(e, FakeHost())
        #expect(script.readQuery(packet: ByteBuffer(string: "\u{03}x"), hints: []) == .returned(.sendQuery))
    }

    @Test func constants() throws {
        let e = engine("""
        assert(proxy.PROXY_VERSION == 0x00805)
        assert(proxy.COM_QUERY == 3 and proxy.COM_STMT_EXECUTE == 23 and proxy.COM_RESET_CONNECTION == 31)
        assert(proxy.MYSQL_TYPE_LONGLONG == 8 and proxy.MYSQL_TYPE_VAR_STRING == 253)
        assert(proxy.MYSQLD_PACKET_ERR == 255 and proxy.MYSQLD_PACKET_RAW == 250)
        assert(proxy.PROXY_SEND_QUERY == 1 and proxy.PROXY_SEND_RESULT == 2 and proxy.PROXY_IGNORE_RESULT == 4)
        assert(proxy.BACKEND_TYPE_RO == 2 and proxy.BACKEND_STATE_DOWN == 2)
        assert(proxy.SERVER_STATUS_IN_TRANS == 1 and proxy.SERVER_STATUS_AUTOCOMMIT == 2)
        assert(proxy.global.config["proxy-address"] == ":4040")
        """)
        _ = try start(e, FakeHost())
    }

    @Test func closedConnectionsAreReleased() throws {
        let e = engine("function read_query() end")
        let before = e.memoryInUse
        for _ in 0..<200 {
            let s = try start(e, FakeHost())
            s.close()
        }
        e.withLua { lua in
            lua.pushGlobalTable()
            lua.rawGet(-1, "collectgarbage")
            lua.push("collect")
            try? lua.pcall(arguments: 1, results: 0)
            lua.pop()
        }
        #expect(e.memoryInUse < before + 64 * 1024)
    }
}

extension Result {
    var failureValue: Failure? { if case .failure(let f) = self { return f } else { return nil } }
}

extension ByteBuffer {
    init(hex: String) {
        var bytes: [UInt8] = []
        var chars = hex.makeIterator()
        while let hi = chars.next(), let lo = chars.next() { bytes.append(UInt8(String([hi, lo]), radix: 16)!) }
        self.init(bytes: bytes)
    }
}
