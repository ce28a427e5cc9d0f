import ProxyCore
import Testing
@testable import ProxyServer

/// Rows of the account loader's query, as MariaDB 10.11 answered it (captured with the mariadb
/// CLI: JSON_VALUE gives booleans as 1, a missing plugin for an account created before 10.4's
/// defaults, ssl_type 1 for REQUIRE SSL; the last column is @@skip_name_resolve).
@Suite struct AccountLoaderTests {
    @Test func rowsBecomeAccounts() {
        let root = AccountLoader.account(["root", "localhost", "mysql_native_password", "", "0", "1", "0", "1"])
        #expect(root == Account(user: "root", host: "localhost", methods: [("mysql_native_password", "")]))
        let tls = AccountLoader.account(["tx", "%", "mysql_native_password", "*667F407DE7C6AD07358FA38DAED7828A72014B4E", "0", "0", "1", "1"])
        #expect(tls?.tls == .any && tls?.passwordExpired == true && tls?.locked == false)
        let locked = AccountLoader.account(["ty", "10.%", "ed25519", "I0MFcdX/1wjyXmObmhAQXYOTzJiNwf0F1oiAbpMQ6eA", "1", "1796608779", "0", "1"])
        #expect(locked?.locked == true && locked?.methods.first?.plugin == "ed25519" && locked?.passwordExpired == false)
        // what is not a row of the query is no account
        #expect(AccountLoader.account(["u", nil, "p", "", "0", "1", "0", "1"]) == nil)
        #expect(AccountLoader.account(["u", "%"]) == nil)
    }

    @Test func theAdminSeesNoHash() {
        let table = AccountTable([AccountLoader.account(["tx", "%", "mysql_native_password", "*667F407DE7C6AD07358FA38DAED7828A72014B4E", "0", "0", "1", "1"])!])
        let rows = AccountLoader.rows(table).map { $0.map { "\($0.0)=\($0.1)" } }
        #expect(rows == [["user=tx", "host=%", "plugin=mysql_native_password", "locked=no", "password_expired=yes", "require=any"]])
        #expect(AccountLoader.rows(nil).isEmpty)
    }
}
