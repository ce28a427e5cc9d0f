import MySQLWire

/// `--proxy-auth=proxy`: the proxy greets a client itself and verifies its login against the
/// servers' accounts (`AccountTable`), as MariaDB would, before any server connection is made.
/// For mysql_native_password a right answer reveals SHA1(password), which is all the proxy needs
/// to log the client into any server (and to reset a pooled connection to it later); other
/// plugins are relayed to the server as before.

/// A client's login, as far as the proxy verifies it.
public struct LoginAttempt: Equatable, Sendable {
    public var user: String
    /// The plugin the client answered with (nil: a client without CLIENT_PLUGIN_AUTH, which
    /// answers as mysql_native_password does).
    public var plugin: String?
    public var response: [UInt8]
    /// The greeting's challenge (20 bytes).
    public var challenge: [UInt8]
    /// The client's link is TLS (or a unix socket, which REQUIRE SSL accepts as MariaDB does not:
    /// see `verify`).
    public var clientTLS: Bool
    /// The client was asked to switch plugins once already.
    public var switched: Bool
    /// A COM_CHANGE_USER, not a login.
    public var changingUser: Bool

    public init(user: String, plugin: String?, response: [UInt8], challenge: [UInt8], clientTLS: Bool, switched: Bool = false,
                changingUser: Bool = false) {
        self.user = user
        self.plugin = plugin
        self.response = response
        self.challenge = challenge
        self.clientTLS = clientTLS
        self.switched = switched
        self.changingUser = changingUser
    }
}

/// What the proxy decided about a login.
public enum LoginVerdict: Equatable, Sendable {
    /// The password is right: `credential` is SHA1(password) (empty for an account without one);
    /// `account` the host pattern of the account it is for (a pooled connection serves only
    /// logins of the same account).
    case accepted(credential: [UInt8], account: String = "")
    /// The client answered with another plugin: it is asked for mysql_native_password on the
    /// same challenge.
    case switchPlugin(String)
    /// The account uses a plugin the proxy cannot log into servers with: the login goes to the
    /// server, which asks the client itself.
    case relay(plugin: String)
    /// Refused, with the server's words; `reason` for the log.
    case refused(ERRPacket, reason: String)
}

public enum ProxyAuthenticator {
    public static let nativePlugin = "mysql_native_password"
    public static let clearPlugin = "mysql_clear_password"

    /// Decides a login as MariaDB 10.11 would: the account (`AccountTable`'s order), then the
    /// password, then a locked account (4151) and the TLS requirement (1045), in the server's
    /// order. `host` is how the server would name the client in its errors (the address; or
    /// `localhost` for a unix socket). An expired password is left to the server, which knows
    /// whether the client can handle one.
    public static func verify(_ attempt: LoginAttempt, table: AccountTable, hostname: String?, ip: String?) -> LoginVerdict {
        let host = hostname ?? ip ?? "unknown"
        // (made only for a refusal: its words cost a string's building, every login otherwise)
        var denied: ERRPacket { ERRPacket.accessDenied(user: attempt.user, host: host, usingPassword: !attempt.response.isEmpty) }
        guard let account = table.account(user: attempt.user, hostname: hostname, ip: ip) else {
            return .refused(denied, reason: "login refused: no account '\(attempt.user)' matches host \(host)")
        }
        guard let method = account.methods.first else { return .refused(denied, reason: "login refused: \(account.name) has no authentication method") }
        guard method.plugin == nativePlugin else { return .relay(plugin: method.plugin) }
        let plugin = attempt.plugin ?? nativePlugin
        if plugin == clearPlugin && attempt.clientTLS && !method.authenticationString.isEmpty {
            // the password itself, over TLS: SHA1(SHA1(password)) is compared with the stored hash
            var password = attempt.response
            if password.last == 0 { password.removeLast() }
            let credential = NativePassword.hash(password)
            guard let stored = NativePassword.storedHash(method.authenticationString),
                  zip(NativePassword.hash(credential), stored).reduce(0, { $0 | ($1.0 ^ $1.1) }) == 0 else {
                return .refused(denied, reason: "login refused: wrong password for \(account.name)")
            }
            return finish(account, credential: credential, clientTLS: attempt.clientTLS, denied: { denied })
        }
        if plugin != nativePlugin {
            if attempt.switched { return .refused(denied, reason: "login refused: the client answered \(plugin) after a switch to \(nativePlugin)") }
            return .switchPlugin(nativePlugin)
        }
        let credential: [UInt8]
        if method.authenticationString.isEmpty {
            // no password: the client must send none
            guard attempt.response.isEmpty else { return .refused(denied, reason: "login refused: \(account.name) has no password and the client sent one") }
            credential = []
        } else {
            guard let stored = NativePassword.storedHash(method.authenticationString),
                  let recovered = NativePassword.verify(challenge: Array(attempt.challenge.prefix(20)), response: attempt.response, doubleHashed: stored)
            else { return .refused(denied, reason: "login refused: wrong password for \(account.name)") }
            credential = recovered
        }
        return finish(account, credential: credential, clientTLS: attempt.clientTLS, denied: { denied })
    }

    /// What follows a right password, in the server's order: a locked account, then the TLS
    /// requirement.
    static func finish(_ account: Account, credential: [UInt8], clientTLS: Bool, denied: () -> ERRPacket) -> LoginVerdict {
        if account.locked {
            return .refused(ERRPacket(code: 4151, sqlState: "HY000", message: "Access denied, this account is locked"),
                            reason: "login refused: \(account.name) is locked")
        }
        if account.tls != .none && !clientTLS {
            return .refused(denied(), reason: "login refused: \(account.name) requires TLS and the client's link is plaintext")
        }
        return .accepted(credential: credential, account: account.host.text)
    }

    /// Whether any account's host pattern matches the client: MariaDB answers a client from a host
    /// no account names with 1130 instead of its greeting.
    public static func hostKnown(_ table: AccountTable, hostname: String?, ip: String?) -> Bool {
        let client = HostPattern.Client(hostname: hostname, ip: ip)
        return table.accounts.contains { $0.host.matches(client) }
    }

    /// A challenge as MariaDB makes one: 20 printable bytes (33...126), from 24 random bytes
    /// (three words, which the handler reads from the kernel in one system call).
    public static func challenge(from words: (UInt64, UInt64, UInt64)) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(20)
        for word in [words.0, words.1, words.2] {
            var w = word
            for _ in 0..<8 where out.count < 20 {
                out.append(33 + UInt8(truncatingIfNeeded: w & 0xFF) % 94)
                w >>= 8
            }
        }
        return out
    }
}

extension ERRPacket {
    /// ER_ACCESS_DENIED_ERROR, as the server words it.
    public static func accessDenied(user: String, host: String, usingPassword: Bool) -> ERRPacket {
        ERRPacket(code: 1045, sqlState: "28000",
                  message: "Access denied for user '\(user)'@'\(host)' (using password: \(usingPassword ? "YES" : "NO"))")
    }

    /// ER_HOST_NOT_PRIVILEGED, sent instead of a greeting.
    public static func hostNotAllowed(_ host: String) -> ERRPacket {
        ERRPacket(code: 1130, sqlState: "HY000", message: "Host '\(host)' is not allowed to connect to this MariaDB server")
    }
}
