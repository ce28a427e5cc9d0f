import Testing
@testable import ProxyScripting
@testable import ProxyServer

/// Passwords in statements never reach the query log, in either of its modes.
@Suite struct StatementSecretsTests {
    func masked(_ text: String) -> String {
        String(decoding: StatementSecrets.masked(Array(text.utf8)) ?? Array(text.utf8), as: UTF8.self)
    }

    @Test func passwordsAreMasked() {
        let cases: [(String, String)] = [
            ("CREATE USER 'u'@'%' IDENTIFIED BY 'hunter2'", "CREATE USER 'u'@'%' IDENTIFIED BY <secret>"),
            ("create user u identified by \"hunter2\" require ssl", "create user u identified by <secret> require ssl"),
            ("ALTER USER u@h IDENTIFIED BY 'it''s'", "ALTER USER u@h IDENTIFIED BY <secret>"),
            ("ALTER USER u IDENTIFIED BY PASSWORD '*6BB4837EB74329105EE4568DDA7DC67ED2CA2AD9'", "ALTER USER u IDENTIFIED BY PASSWORD <secret>"),
            ("GRANT ALL ON *.* TO u@'%' IDENTIFIED BY 'pw'", "GRANT ALL ON *.* TO u@'%' IDENTIFIED BY <secret>"),
            ("CREATE USER e IDENTIFIED VIA ed25519 USING PASSWORD('pw')", "CREATE USER e IDENTIFIED VIA ed25519 USING PASSWORD(<secret>)"),
            ("CREATE USER e IDENTIFIED VIA ed25519 USING 'hashhash'", "CREATE USER e IDENTIFIED VIA ed25519 USING <secret>"),
            ("SET PASSWORD FOR 'u'@'h' = PASSWORD('pw')", "SET PASSWORD FOR 'u'@'h' = PASSWORD(<secret>)"),
            ("SET PASSWORD = 'hash'", "SET PASSWORD = <secret>"),
            ("CHANGE MASTER TO MASTER_HOST='db1', MASTER_USER='repl', MASTER_PASSWORD='pw'", "CHANGE MASTER TO MASTER_HOST='db1', MASTER_USER='repl', MASTER_PASSWORD=<secret>"),
            ("START SLAVE USER='repl' PASSWORD='pw'", "START SLAVE USER='repl' PASSWORD=<secret>"),
            ("CREATE SERVER s FOREIGN DATA WRAPPER mysql OPTIONS (USER 'u', PASSWORD 'pw')", "CREATE SERVER s FOREIGN DATA WRAPPER mysql OPTIONS (USER 'u', PASSWORD <secret>)"),
            ("/*!50000 CREATE USER x IDENTIFIED BY 'pw' */", "/*!50000 CREATE USER x IDENTIFIED BY <secret> */"),
            ("CREATE USER /* by 'no' */ x IDENTIFIED BY 'pw'", "CREATE USER /* by 'no' */ x IDENTIFIED BY <secret>"),
            ("CREATE USER x IDENTIFIED BY 'cut off by the logs limi", "CREATE USER x IDENTIFIED BY <secret>"),
        ]
        for (statement, expected) in cases {
            #expect(masked(statement) == expected, "\(statement)")
        }
    }

    @Test func otherStatementsAreKeptAsSent() {
        for statement in ["SELECT 'IDENTIFIED BY' AS x", "SELECT * FROM t WHERE name = 'a'", "SELECT user, password_expired FROM mysql.user",
                          "INSERT INTO t VALUES ('by', 'using')"] {
            #expect(masked(statement) == statement)
        }
        #expect(StatementSecrets.masked(Array("SELECT 1".utf8)) == nil)
    }

    @Test func normalizingCoversExecutableCommentsAndHexLiterals() {
        func normalized(_ s: String) -> String { SQLTokenizer.normalize(SQLTokenizer.tokenize(s)) }
        #expect(normalized("/*!50000 CREATE USER x IDENTIFIED BY 'pw' */").contains("?"))
        #expect(!normalized("/*!50000 CREATE USER x IDENTIFIED BY 'pw' */").contains("pw"))
        #expect(normalized("SELECT 0xDEADBEEF, X'CAFE', 0b101, b'11', _utf8mb4'secret'") == "SELECT ? , ? , ? , ? , ?")
        #expect(!normalized("INSERT INTO t VALUES (0x73656372657431)").contains("7365"))
    }
}
