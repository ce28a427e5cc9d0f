import Logging
import NIOCore
import Testing
@testable import ProxyScripting

/// Packets captured from MariaDB 10.11.19 and libmariadb 3.3.20 (the same captures as
/// MySQLWireTests' `Captured`).
private enum Capture {
    static let greeting = "0a352e352e352d31302e31312e31392d4d6172696144422d302b64656231327531000a000000474e34542c7d556e00fef7080200ff81150000000000001d0000004a643d406a76343f7b72484f006d7973716c5f6e61746976655f70617373776f726400"
    static let handshakeResponse = "84a2bf000000100021000000000000000000000000000000000000001d0000006e617400145f944c76085a805c6f80596fb1e9a40dd32c23d46d7973716c5f6e61746976655f70617373776f7264007e035f6f73054c696e75780c5f636c69656e745f6e616d650a6c69626d617269616462045f70696404353432340f5f636c69656e745f76657273696f6e06332e332e3230095f706c6174666f726d067838365f36340c70726f6772616d5f6e616d65056d7973716c0c5f7365727665725f686f7374093132372e302e302e31"
    static let accessDenied = "ff15042332383030304163636573732064656e69656420666f72207573657220276e61742740273132372e302e302e312720287573696e672070617373776f72643a2059455329"
}

/// Runs Lua test code at the top level of a connection's script; a failed assert fails the test
/// with the Lua message.
private func runLua(_ code: String, backends: ScriptBackendsHost? = FakeBackends(), sourceLocation: SourceLocation = #_sourceLocation) {
    let prelude = """
    local function unhex(h) return (h:gsub("..", function(x) return string.char(tonumber(x, 16)) end)) end
    local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end
    local function eq(a, b, what) if a ~= b then error(("%s: got %s, expected %s"):format(what or "value", tostring(a), tostring(b)), 2) end end

    """
    let e = engine(prelude + code, backends: backends)
    switch e.startConnection(host: FakeHost()) {
    case .success: break
    case .failure(let failure): Issue.record("\(failure)", sourceLocation: sourceLocation)
    }
}

@Suite struct SQLTokenizerTests {
    private func tokens(_ sql: String) -> [String] {
        SQLTokenizer.tokenize(sql).map { "\($0.name) \($0.string)" }
    }

    @Test func namesKeywordsAndOperators() {
        #expect(tokens("SELECT db.t.c, f(x) FROM t WHERE a >= 1 AND b <> 'x' OR c != @v := 2") == [
            "TK_SQL_SELECT SELECT", "TK_LITERAL db", "TK_DOT .", "TK_LITERAL t", "TK_DOT .", "TK_LITERAL c", "TK_COMMA ,",
            "TK_FUNCTION f", "TK_OBRACE (", "TK_LITERAL x", "TK_CBRACE )", "TK_SQL_FROM FROM", "TK_LITERAL t",
            "TK_SQL_WHERE WHERE", "TK_LITERAL a", "TK_GE >=", "TK_INTEGER 1", "TK_SQL_AND AND", "TK_LITERAL b",
            "TK_NE <>", "TK_STRING x", "TK_SQL_OR OR", "TK_LITERAL c", "TK_NE !=", "TK_LITERAL @v", "TK_ASSIGN :=",
            "TK_INTEGER 2",
        ])
        #expect(SQLTokenizer.tokenize("select").first?.id == SQLTokenizer.id("TK_SQL_SELECT"))
        #expect(SQLTokenizer.names[0] == "TK_UNKNOWN" && SQLTokenizer.names.last == "TK_LAST_TOKEN")
    }

    @Test func numbers() {
        #expect(tokens("1 1.5 .5 1e3 1.5e-3 1e 12abc 3+4") == [
            "TK_INTEGER 1", "TK_FLOAT 1.5", "TK_FLOAT .5", "TK_FLOAT 1e3", "TK_FLOAT 1.5e-3", "TK_LITERAL 1e",
            "TK_LITERAL 12abc", "TK_INTEGER 3", "TK_PLUS +", "TK_INTEGER 4",
        ])
    }

    @Test func stringsAndQuotedNames() {
        #expect(tokens(#"'it''s' "a\"b" `we``ird` 'open"#) == [
            "TK_STRING it's", #"TK_STRING a\"b"#, "TK_LITERAL we`ird", "TK_STRING open",
        ])
    }

    @Test func comments() {
        #expect(tokens("/* lead */ SELECT /*!40101 SQL_NO_CACHE */ 1 -- tail\n# hash\n--\n") == [
            "TK_COMMENT  lead ", "TK_SQL_SELECT SELECT", "TK_COMMENT_MYSQL 40101 SQL_NO_CACHE ", "TK_INTEGER 1",
            "TK_COMMENT tail", "TK_COMMENT  hash", "TK_COMMENT ",
        ])
        #expect(tokens("1--2") == ["TK_INTEGER 1", "TK_MINUS -", "TK_MINUS -", "TK_INTEGER 2"])
    }

    @Test func neverTrapsOnOddInput() {
        for text in ["", "'", "`", "/*", "/*!", "--", "-- ", "#", ".", "1.", "1e+", "\u{0}\u{ff}", "é.ü(", "a.b.c.d.e"] {
            _ = SQLTokenizer.tokenize(text)
        }
        var bytes: [UInt8] = []
        var seed: UInt64 = 42
        for _ in 0..<20_000 {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            bytes.append(UInt8(truncatingIfNeeded: seed >> 33) & 0x7f)
        }
        let all = bytes.withUnsafeBytes { SQLTokenizer.tokenize($0) }
        #expect(!all.isEmpty)
    }
}

@Suite struct LuaLibraryTests {
    @Test func tokenizerModules() {
        runLua(#"""
        local tokenizer = require("proxy.tokenizer")
        local tokens = proxy.tokenize("SELECT * FROM t WHERE id = 42 AND name = 'x' /* c */")
        eq(#tokens, 13, "token count")
        eq(tokens[1].token_name, "TK_SQL_SELECT"); eq(tokens[1].text, "SELECT"); eq(type(tokens[1].token_id), "number")
        eq(tokenizer.normalize(tokens), "SELECT * FROM `t` WHERE `id` = ? AND `name` = ? ")
        eq(tokenizer.normalize(tokenizer.tokenize("commit")), "COMMIT ")
        eq(tokenizer.normalize(tokenizer.tokenize("start transaction")), "START TRANSACTION ")
        eq(tokenizer.normalize(tokenizer.tokenize("select count(*) from t")), "SELECT COUNT( * ) FROM `t` ")
        eq(tokenizer.first_stmt_token(tokenizer.tokenize("/* x */ commit")).text, "commit")
        eq(tokenizer.tokens_to_query(tokenizer.tokenize("select 'a' /* x */ from t")), 'select "a" from t ')
        eq(table.concat(tokenizer.bare_tokens(tokenizer.tokenize("select 'a' /* x */"), true), "|"), 'select|"a"')
        eq(table.concat(tokenizer.tokens_without_comments(tokenizer.tokenize("/* x */ select 1")), "|"), "select|1")
        -- the MySQL Proxy globals
        require("mysql.tokenizer")
        eq(tokenizer.tokenize, require("proxy.tokenizer").tokenize)
        eq(type(_G.tokenizer.tokenize), "function")
        eq(proxy.tokenizer, require("proxy.tokenizer"))
        """#)
    }

    @Test func passwordVectors() {
        // SHA1("secret") and SHA1(SHA1("secret")), and the answer to a known challenge, computed
        // independently (Python's hashlib).
        runLua(#"""
        local password = require("mysql.password")
        local h1 = password.hash("secret")
        eq(hex(h1), "e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4", "hash")
        local h2 = password.hash(h1)
        eq(hex(h2), "14e65567abdb5135d0cfd9a70b3032c179a49ee7", "double hash")
        local challenge = "abcdefghijklmnopqrst"
        local response = password.scramble(challenge, h1)
        eq(hex(response), "8817c50fa779daef010ee7577825b0847df9842e", "scramble")
        eq(password.check(challenge, response, h2), true, "check")
        eq(password.check(challenge, response, password.hash(password.hash("wrong"))), false, "wrong password")
        eq(password.check(challenge, "", h2), false, "empty answer")
        eq(password.unscramble(challenge, response, h2), h1, "unscramble")
        """#)
    }

    @Test func protoAgainstCaptures() {
        runLua(#"""
        local proto = require("mysql.proto")
        local g = proto.from_challenge_packet(unhex("\#(Capture.greeting)"))
        eq(g.protocol_version, 10); eq(g.server_version_str, "5.5.5-10.11.19-MariaDB-0+deb12u1"); eq(g.server_version, 50505)
        eq(g.thread_id, 10); eq(#g.challenge, 20); eq(g.auth_plugin_name, "mysql_native_password"); eq(g.charset, 8)
        eq(g.server_status, 2)
        local again = proto.from_challenge_packet(proto.to_challenge_packet(g))
        for _, k in ipairs({ "server_version_str", "thread_id", "challenge", "capabilities", "charset", "server_status", "auth_plugin_name" }) do
          eq(again[k], g[k], "challenge round trip: " .. k)
        end

        local r = proto.from_response_packet(unhex("\#(Capture.handshakeResponse)"), g.capabilities)
        eq(r.username, "nat"); eq(#r.response, 20); eq(r.auth_plugin_name, "mysql_native_password"); eq(r.charset, 33)
        eq(r.max_packet_size, 1048576)
        local r2 = proto.from_response_packet(proto.to_response_packet({ server_capabilities = g.capabilities, username = "nat",
          response = r.response, database = "shop", auth_plugin_name = "mysql_native_password" }), g.capabilities)
        eq(r2.username, "nat"); eq(r2.response, r.response); eq(r2.database, "shop"); eq(r2.auth_plugin_name, "mysql_native_password")

        local e = proto.from_err_packet(unhex("\#(Capture.accessDenied)"))
        eq(e.errcode, 1045); eq(e.sqlstate, "28000"); eq(e.errmsg, "Access denied for user 'nat'@'127.0.0.1' (using password: YES)")
        eq(hex(proto.to_err_packet(e)), "\#(Capture.accessDenied)", "ERR bytes")
        """#)
    }

    /// Found by Fuzz/ProtoFuzzer: a greeting whose version string held a 19-digit number trapped on
    /// overflow while computing `server_version`, taking the whole proxy down.
    @Test func absurdServerVersionsReadAsZero() {
        #expect(ScriptServerInfo.versionNumber("5.5.5-10.11.19-MariaDB") == 101119)
        #expect(ScriptServerInfo.versionNumber("5.5.5-10.11.19-MariaDB", keepingReplicationPrefix: true) == 50505)
        #expect(ScriptServerInfo.versionNumber("8.0.36") == 80036)
        #expect(ScriptServerInfo.versionNumber("9223372036854775807.1.1") == 0)
        #expect(ScriptServerInfo.versionNumber("99999999999999999999999.1.1") == 0)
        #expect(ScriptServerInfo.versionNumber("5.\u{0663}.1") == 0)      // a non-ASCII digit is no digit
        #expect(ScriptServerInfo.versionNumber("MariaDB") == 0)
        #expect(ScriptServerInfo.versionNumber("10.11") == 0)
        #expect(ScriptServerInfo.versionNumber("v10.11.19-log") == 101119)
        #expect(ScriptServerInfo.versionNumber("1.2.3.45678") == 10203)
        #expect(ScriptServerInfo.versionNumber("1.2.34567") == 0)
        #expect(ScriptServerInfo.versionNumber("") == 0)
        runLua(#"""
        local proto = require("mysql.proto")
        local g = proto.to_challenge_packet({ server_version_str = "9223372036854775807.1.1" })
        eq(proto.from_challenge_packet(g).server_version, 0)
        """#)
    }

    @Test func protoSmallPackets() {
        runLua(#"""
        local proto = require("mysql.proto")
        eq(hex(proto.to_ok_packet({ affected_rows = 1, insert_id = 300, server_status = 2, warnings = 1 })), "0001fc2c0102000100", "OK bytes")
        local ok = proto.from_ok_packet(unhex("0001fc2c0102000100"))
        eq(ok.affected_rows, 1); eq(ok.insert_id, 300); eq(ok.server_status, 2); eq(ok.warnings, 1)
        eq(hex(proto.to_eof_packet({ warnings = 0, server_status = 0x22 })), "fe00002200", "EOF bytes")
        local eof = proto.from_eof_packet(unhex("fe00002200")); eq(eof.server_status, 0x22); eq(eof.warnings, 0)

        eq(hex(proto.to_stmt_prepare_packet({ stmt_text = "SELECT ?" })), "1653454c454354203f")
        eq(proto.from_stmt_prepare_packet(unhex("1653454c454354203f")).stmt_text, "SELECT ?")
        -- COM_STMT_PREPARE OK from the protocol documentation's layout: id 1, 2 columns, 1 parameter
        eq(hex(proto.to_stmt_prepare_ok_packet({ stmt_id = 1, num_columns = 2, num_params = 1 })), "000100000002000100000000")
        local pok = proto.from_stmt_prepare_ok_packet(unhex("000100000002000100000000"))
        eq(pok.stmt_id, 1); eq(pok.num_columns, 2); eq(pok.num_params, 1); eq(pok.warnings, 0)
        eq(hex(proto.to_stmt_close_packet({ stmt_id = 7 })), "1907000000")
        eq(proto.from_stmt_close_packet(unhex("1907000000")).stmt_id, 7)

        -- COM_STMT_EXECUTE with a NULL, an integer, a string, a double: bytes and back
        local packet = proto.to_stmt_execute_packet({ stmt_id = 2, params = {
          { type = proxy.MYSQL_TYPE_NULL }, { value = -5 }, { value = "hi" }, { value = 1.5 } } })
        eq(hex(packet), "17020000000001000000" .. "01" .. "01" .. "06000800fe000500" .. "fbffffffffffffff" .. "026869" .. "000000000000f83f", "EXECUTE bytes")
        local x = proto.from_stmt_execute_packet(packet, 4)
        eq(x.stmt_id, 2); eq(x.iteration_count, 1); eq(x.new_params_bound, true)
        eq(x.params[1].value, nil); eq(x.params[2].value, -5); eq(x.params[3].value, "hi"); eq(x.params[4].value, 1.5)
        eq(proto.stmt_id_from_stmt_execute_packet(packet), 2)
        -- a DATETIME parameter as a client sends it
        local dt = proto.from_stmt_execute_packet(unhex("17030000000001000000" .. "00" .. "01" .. "0c00" .. "07e8070b150d0e0f"), 1)
        eq(dt.params[1].value, "2024-11-21 13:14:15")

        local info = { master_lines = 15, master_log_file = "bin.000042", master_log_pos = 4711, master_host = "db1",
          master_user = "repl", master_password = "pw", master_port = 3306, master_connect_retry = 60, master_ssl = 0,
          master_ssl_verify_server_cert = 0 }
        local text = proto.to_masterinfo_string(info)
        eq(text:sub(1, 28), "15\nbin.000042\n4711\ndb1\nrepl\n", "master.info text")
        local back = proto.from_masterinfo_string(text)
        for k, v in pairs(info) do eq(back[k], v, "masterinfo " .. k) end

        -- short or foreign input is an error, never a crash
        for _, call in ipairs({
          function() return proto.from_ok_packet("\0") end,
          function() return proto.from_err_packet("\0\1") end,
          function() return proto.from_challenge_packet("\10abc") end,
          function() return proto.from_response_packet("\1\2") end,
          function() return proto.from_stmt_execute_packet("\23\1\0", 1) end,
          function() return proto.from_stmt_prepare_ok_packet("\255") end,
          function() return proto.from_masterinfo_string("x") end,
        }) do
          local done, msg = pcall(call)
          eq(done, false, "malformed input accepted")
          assert(type(msg) == "string" and #msg > 0)
        end
        """#)
    }

    @Test func commandsBalanceAutoConfigAndTest() {
        runLua(#"""
        local commands = require("proxy.commands")
        local c = commands.parse(string.char(proxy.COM_QUERY) .. "SELECT 1")
        eq(c.type, proxy.COM_QUERY); eq(c.type_name, "COM_QUERY"); eq(c.query, "SELECT 1")
        eq(commands.pretty_print(c), "[COM_QUERY] SELECT 1")
        eq(commands.parse("\2shop").schema, "shop")
        eq(commands.parse("\23\5\0\0\0\0\1\0\0\0").stmt_handler_id, 5)
        eq(commands.pretty_print(commands.parse("\14")), "[COM_PING]")
        eq(commands.parse(""), nil)

        local balance = require("proxy.balance")
        eq(balance.idle_failsafe_rw(), 1); eq(balance.idle_ro(), 2)
        eq(balance.least_connected(proxy.BACKEND_TYPE_RO), 2); eq(balance.fewest_idle(), 1)

        require("proxy.auto-config")
        proxy.global.config.rwsplit = { max_idle_connections = 8, is_debug = false }
        local cmd = commands.parse(string.char(proxy.COM_QUERY) .. "PROXY SET GLOBAL rwsplit.max_idle_connections = 2")
        eq(proxy.global.config:handle(cmd), proxy.PROXY_SEND_RESULT)
        eq(proxy.global.config.rwsplit.max_idle_connections, 2); eq(proxy.response.type, proxy.MYSQLD_PACKET_OK)
        proxy.global.config:handle(commands.parse(string.char(proxy.COM_QUERY) .. "PROXY SET GLOBAL rwsplit.is_debug = 3"))
        eq(proxy.response.type, proxy.MYSQLD_PACKET_ERR)
        proxy.global.config:handle(commands.parse(string.char(proxy.COM_QUERY) .. "proxy show config"))
        eq(#proxy.response.resultset.rows, 2)
        eq(proxy.global.config:handle(commands.parse(string.char(proxy.COM_QUERY) .. "SELECT 1")), nil)

        local test = require("proxy.test")
        TestOne = test.BaseTest:new()
        function TestOne:testPasses() assertEquals(1 + 1, 2) end
        function TestOne:testFails() assertEquals("a", 1) end
        local suite = test.Suite:new({ result = test.Result:new() })
        suite:run({ "TestOne" }, _ENV)
        eq(suite.result.passed, 1); eq(suite.result.failed, 1); eq(suite:exit_code(), 1)
        """#)
    }

    @Test func parserFindsTablesReadAndWritten() {
        runLua(#"""
        local parser = require("proxy.parser")
        local tokenizer = require("proxy.tokenizer")
        local function tables(sql)
          local t, out = parser.get_tables(tokenizer.tokenize(sql)), {}
          for name, kind in pairs(t) do out[#out + 1] = name .. "=" .. kind end
          table.sort(out)
          return table.concat(out, " ")
        end
        -- the fake connection's default database is "shop"
        eq(tables("SELECT * FROM t"), "shop.t=read")
        eq(tables("SELECT a FROM shop.orders AS o JOIN shop.items i ON o.id = i.o, t3 WHERE x IN (SELECT y FROM sub)"),
           "shop.items=read shop.orders=read shop.sub=read shop.t3=read")
        eq(tables("SELECT * FROM `histogram`.`queries`"), "histogram.queries=read")
        eq(tables("/* c */ SELECT * FROM (SELECT 1 FROM inner_t) AS d"), "shop.inner_t=read")
        eq(tables("INSERT IGNORE INTO log (a) SELECT a FROM src"), "shop.log=write shop.src=read")
        eq(tables("REPLACE shop.x VALUES (1)"), "shop.x=write")
        eq(tables("UPDATE LOW_PRIORITY a, b SET a.x = b.y"), "shop.a=write shop.b=write")
        eq(tables("DELETE FROM old WHERE id IN (SELECT id FROM keep)"), "shop.keep=read shop.old=write")
        eq(tables("CREATE TEMPORARY TABLE IF NOT EXISTS tmp (a INT)"), "shop.tmp=write")
        eq(tables("DROP TABLE IF EXISTS a, s.b"), "s.b=write shop.a=write")
        eq(tables("TRUNCATE TABLE t"), "shop.t=write"); eq(tables("TRUNCATE t"), "shop.t=write")
        eq(tables("SELECT 1"), ""); eq(tables(""), ""); eq(tables("SELECT * FROM"), "")
        eq(parser.tablename_expand("t", "s"), "s.t")
        """#)
    }

    @Test func chassisAndLua51Shims() {
        runLua(#"""
        local chassis = require("chassis")
        chassis.log("info", "from a test"); chassis.message("hello"); chassis.debug("quiet")
        assert(not pcall(chassis.log, "loud", "x"))
        eq(chassis.get_stats(), nil)
        eq(loadstring("return 1 + 1")(), 2); eq(select("#", unpack({ 1, 2, 3 })), 3); eq(table.getn({ 1, 2 }), 2)
        eq(math.mod(7, 3), 1.0)
        local words = {}
        for w in string.gfind("a b c", "%a") do words[#words + 1] = w end
        eq(#words, 3)
        package.preload["legacy.module"] = function(...)
          module("legacy.module", package.seeall)
          function hello() return "hi " .. tostring(type(print)) end
        end
        eq(require("legacy.module").hello(), "hi function")
        """#)
    }
}
