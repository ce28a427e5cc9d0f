@testable import ProxyCore
import Testing

/// Which account a login is for. The expected orders were captured from MariaDB 10.11.19
/// (skip_name_resolve on, a client on 127.0.0.1): every account below created with a password
/// of its own, the client logged in as `hp` trying each password, the account that let it in
/// dropped, and again until none let it in.
struct AccountTests {
    static func table(_ accounts: [(String, String)]) -> AccountTable {
        AccountTable(accounts.map { Account(user: $0.0, host: $0.1, methods: [("mysql_native_password", "")]) })
    }

    /// What a server shows: log in, see the account, drop it, log in again.
    static func order(_ table: AccountTable, user: String, ip: String) -> [String] {
        var left = table.accounts
        var order: [String] = []
        while let account = AccountTable(left).account(user: user, hostname: nil, ip: ip) {
            order.append(account.name)
            left.removeAll { $0 == account }
        }
        return order
    }

    @Test func hostPatternsFromTheMostSpecificToTheMostGeneric() {
        let hosts = ["%", "127.0.0.%", "127.0.0.1", "127.0.%.1", "12_.0.0.1", "127.0.0._", "127.0.0.0/255.255.255.0",
                     "127.%", "1%", "localhost", "::1", "%.0.0.1", "127.0.0.1%"]
        let server = ["127.0.0.1", "127.0.0.0/255.255.255.0", "12_.0.0.1", "127.0.0._", "127.0.0.1%", "127.0.%.1",
                      "127.0.0.%", "%.0.0.1", "127.%", "1%", "%"]
        #expect(Self.order(Self.table(hosts.map { ("hp", $0) }), user: "hp", ip: "127.0.0.1") == server.map { "'hp'@'\($0)'" })
    }

    @Test func anAnonymousAccountWinsWhenItsHostIsMoreSpecific() {
        let accounts = [("hp", "%"), ("hp", "127.0.0.%"), ("", "127.0.0.1"), ("", "%"), ("", "127.0.%")]
        let server = [("", "127.0.0.1"), ("hp", "127.0.0.%"), ("", "127.0.%"), ("hp", "%"), ("", "%")]
        #expect(Self.order(Self.table(accounts), user: "hp", ip: "127.0.0.1") == server.map { "'\($0.0)'@'\($0.1)'" })
    }

    @Test func localhostIsANameNotAnAddress() {
        let table = Self.table([("u", "localhost"), ("u", "127.0.0.1")])
        #expect(table.account(user: "u", hostname: nil, ip: "127.0.0.1")?.host.text == "127.0.0.1")
        // a client on the local socket is named localhost (in any case)
        #expect(table.account(user: "u", hostname: "LocalHost", ip: nil)?.host.text == "localhost")
        #expect(table.account(user: "v", hostname: "localhost", ip: nil) == nil)
    }

    @Test func networksWildcardsAndEscapes() {
        #expect(HostPattern("10.1.0.0/255.255.0.0").matches(hostname: nil, ip: "10.1.200.3"))
        #expect(!HostPattern("10.1.0.0/255.255.0.0").matches(hostname: nil, ip: "10.2.0.1"))
        // a mask of 0.0.0.0 makes no network: the text is a plain pattern, which no address is
        #expect(!HostPattern("0.0.0.0/0.0.0.0").matches(hostname: nil, ip: "10.2.0.1"))
        #expect(HostPattern("").matches(hostname: nil, ip: "192.0.2.1"))  // empty is %
        #expect(HostPattern("db\\_1.example.com").matches(hostname: "db_1.example.com", ip: nil))
        #expect(!HostPattern("db\\_1.example.com").matches(hostname: "dbx1.example.com", ip: nil))
        #expect(HostPattern("db_1.example.com").matches(hostname: "dbx1.example.com", ip: nil))
        #expect(HostPattern("%.example.com").matches(hostname: "A.B.Example.COM", ip: nil))
        #expect(!HostPattern("%.example.com").matches(hostname: "example.com", ip: nil))
        #expect(HostPattern("fe80::%").matches(hostname: nil, ip: "fe80::1"))
        #expect(!HostPattern("FE80::%").matches(hostname: nil, ip: "fe80::1"))  // an address is compared exactly
        // many % and a long name: no blow-up (one backtracking point)
        let name = String(repeating: "a", count: 255)
        #expect(!HostPattern(String(repeating: "%a", count: 40) + "b").matches(hostname: name, ip: nil))
    }

    @Test func noAccountNoLogin() {
        let table = Self.table([("hp", "10.%")])
        #expect(table.account(user: "hp", hostname: nil, ip: "127.0.0.1") == nil)
        #expect(table.account(user: "other", hostname: nil, ip: "10.0.0.1") == nil)
        #expect(table.account(user: "", hostname: nil, ip: "10.0.0.1") == nil)
    }

    @Test func addressesAreReadAsMariaDBReadsThem() {
        #expect(HostPattern.ipv4("127.0.0.1") == 0x7F00_0001)
        #expect(HostPattern.ipv4("255.255.255.255") == .max)
        #expect(HostPattern.ipv4("010.0.0.1") == 0x0A00_0001)
        for bad in ["256.1.1.1", "1.2.3", "1.2.3.4.5", "1..2.3", "a.b.c.d", "", "1.2.3.4 ", "0001.2.3.4", ".1.2.3", "1.2.3.", "::1"] {
            #expect(HostPattern.ipv4(Substring(bad)) == nil, "\(bad)")
        }
    }
}
