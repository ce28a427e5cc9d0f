/// The accounts of the servers behind the proxy, and which one a login is for, as MariaDB decides
/// it: the ground `--proxy-auth=proxy` stands on (the proxy greets and verifies clients itself).
///
/// MariaDB keeps its accounts sorted from the most specific host pattern to the most generic and
/// takes the first whose user name is the client's and whose host pattern matches the client; an
/// anonymous account (empty user name) wins instead when its host pattern is strictly more
/// specific. The order is MariaDB 10.11's (sql_acl.cc, sql_acl_getsort.ic), checked against a
/// real server by creating accounts and logging in until none is left (Tests/ProxyCoreTests/
/// AccountTests).

/// An account's host part: a name or address with `%` and `_` wildcards (`\` escapes one), or an
/// IPv4 network as `address/netmask`; empty is the same as `%`.
public struct HostPattern: Equatable, Hashable, Sendable {
    public let text: String
    /// The text's bytes, as the matching reads them (made once, not at every login).
    let bytes: [UInt8]
    /// `192.168.0.0/255.255.255.0`: compared as numbers with an IPv4 client address.
    let network: (address: UInt32, mask: UInt32)?

    public init(_ text: String) {
        self.text = text.isEmpty ? "%" : text
        bytes = Array(self.text.utf8)
        network = Self.network(self.text)
    }

    /// A client as the patterns see it, converted once per lookup.
    public struct Client {
        let hostname: [UInt8]?
        let ip: [UInt8]?
        let ipv4: UInt32?

        public init(hostname: String?, ip: String?) {
            self.hostname = hostname.map { Array($0.utf8) }
            self.ip = ip.map { Array($0.utf8) }
            ipv4 = ip.flatMap { HostPattern.ipv4(Substring($0)) }
        }
    }

    public static func == (a: HostPattern, b: HostPattern) -> Bool { a.text == b.text }
    public func hash(into hasher: inout Hasher) { hasher.combine(text) }

    /// Whether a client matches: `ip` its address as text (`127.0.0.1`, `::1`), `hostname` its
    /// name when one is known (`localhost` for a local socket). MariaDB compares a name without
    /// regard to case and an address exactly.
    public func matches(hostname: String?, ip: String?) -> Bool {
        matches(Client(hostname: hostname, ip: ip))
    }

    public func matches(_ client: Client) -> Bool {
        if let network, let address = client.ipv4 {
            return address & network.mask == network.address
        }
        if let hostname = client.hostname, Self.wildcardMatch(hostname, bytes, ignoringCase: true) { return true }
        if let ip = client.ip, Self.wildcardMatch(ip, bytes, ignoringCase: false) { return true }
        return false
    }

    /// How generic the pattern is: compared in order, larger is more generic. It counts, as
    /// MariaDB does, how many host names of up to 255 characters the pattern could match: the
    /// lengths a `%` leaves open (L), how many `%` (K) and `_` (M) there are, and the length of
    /// the literal prefix (P) to break ties.
    public var generality: [Int] {
        var n = 0, m = 0, k = 0, p = 0
        let bytes = Array(text.utf8)
        var i = 0
        while i < bytes.count {
            switch bytes[i] {
            case UInt8(ascii: "%"):
                if k == 0 && m == 0 { p = n }
                k += 1
                while i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: "%") { i += 1 }
            case UInt8(ascii: "_"):
                if k == 0 && m == 0 { p = n }
                m += 1
            default:
                if bytes[i] == UInt8(ascii: "\\") && i + 1 < bytes.count { i += 1 }
                n += 1
            }
            i += 1
        }
        k = min(k, 31)
        m = min(m, 31)
        let l = k > 0 ? max(0, Self.maximumLength - n - m) : 0
        return l > m ? [2 * l + 1, k, m, p] : [2 * m, l, k, p]
    }

    static let maximumLength = 255

    /// `%` any run of bytes, `_` one byte, `\x` the byte x.
    static func wildcardMatch(_ string: [UInt8], _ pattern: [UInt8], ignoringCase: Bool) -> Bool {
        func same(_ a: UInt8, _ b: UInt8) -> Bool {
            guard ignoringCase else { return a == b }
            func lower(_ c: UInt8) -> UInt8 { c >= 65 && c <= 90 ? c + 32 : c }
            return lower(a) == lower(b)
        }
        // iterative, with one backtracking point (the last %): linear in practice, never recursive
        var s = 0, p = 0
        var star: Int? = nil, resume = 0
        while s < string.count {
            if p < pattern.count {
                let c = pattern[p]
                if c == UInt8(ascii: "%") {
                    star = p
                    resume = s
                    p += 1
                    continue
                }
                if c == UInt8(ascii: "_") {
                    s += 1
                    p += 1
                    continue
                }
                let literal = c == UInt8(ascii: "\\") && p + 1 < pattern.count ? pattern[p + 1] : c
                if same(string[s], literal) {
                    s += 1
                    p += c == UInt8(ascii: "\\") && p + 1 < pattern.count ? 2 : 1
                    continue
                }
            }
            guard let starAt = star else { return false }
            p = starAt + 1
            resume += 1
            s = resume
        }
        while p < pattern.count && pattern[p] == UInt8(ascii: "%") { p += 1 }
        return p == pattern.count
    }

    /// `a.b.c.d`, each part 0...255 in decimal.
    static func ipv4(_ text: Substring) -> UInt32? {
        var value: UInt32 = 0
        var part: UInt32 = 0
        var digits = 0
        var parts = 0
        for c in text.utf8 {
            if c == UInt8(ascii: ".") {
                guard digits > 0, parts < 3 else { return nil }
                value = value << 8 | part
                parts += 1
                part = 0
                digits = 0
            } else if c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") {
                digits += 1
                part = part * 10 + UInt32(c - UInt8(ascii: "0"))
                guard digits <= 3, part <= 255 else { return nil }
            } else {
                return nil
            }
        }
        guard digits > 0, parts == 3 else { return nil }
        return value << 8 | part
    }

    /// `address/netmask`; a mask of 0.0.0.0 is no network (the text is then a plain pattern).
    static func network(_ text: String) -> (address: UInt32, mask: UInt32)? {
        guard let slash = text.firstIndex(of: "/"),
              let address = ipv4(text[..<slash]),
              let mask = ipv4(text[text.index(after: slash)...]), mask != 0 else { return nil }
        return (address, mask)
    }
}

/// One row of `mysql.global_priv` that can log in (roles cannot).
public struct Account: Equatable, Sendable {
    public enum TLSRequirement: Equatable, Sendable {
        case none, any, x509, specified
    }

    public var user: String
    public var host: HostPattern
    /// The authentication plugins the account accepts, in order (`IDENTIFIED VIA a OR b`), each
    /// with its authentication string (for mysql_native_password, `*` and SHA1(SHA1(password)) in hex).
    public var methods: [(plugin: String, authenticationString: String)]
    public var locked: Bool
    public var passwordExpired: Bool
    public var tls: TLSRequirement

    public init(user: String, host: String, methods: [(plugin: String, authenticationString: String)],
                locked: Bool = false, passwordExpired: Bool = false, tls: TLSRequirement = .none) {
        self.user = user
        self.host = HostPattern(host)
        self.methods = methods
        self.locked = locked
        self.passwordExpired = passwordExpired
        self.tls = tls
    }

    public static func == (a: Account, b: Account) -> Bool {
        a.user == b.user && a.host == b.host && a.locked == b.locked && a.passwordExpired == b.passwordExpired
            && a.tls == b.tls && a.methods.elementsEqual(b.methods) { $0.plugin == $1.plugin && $0.authenticationString == $1.authenticationString }
    }

    /// The account's name as the server writes it in errors: 'user'@'host'.
    public var name: String { "'\(user)'@'\(host.text)'" }
}

/// The accounts, in the order MariaDB searches them.
public struct AccountTable: Sendable {
    public private(set) var accounts: [Account]
    private let keys: [[Int]]

    public init(_ accounts: [Account]) {
        // the sort key: the host's generality, then a named user before an anonymous one; ties
        // go to the host text in descending byte order (MariaDB's, which puts localhost before ::1)
        let keyed = accounts.map { (account: $0, key: $0.host.generality + [$0.user.isEmpty ? 1 : 0]) }
            .sorted { a, b in
                if a.key != b.key { return a.key.lexicographicallyPrecedes(b.key) }
                return Array(b.account.host.text.utf8).lexicographicallyPrecedes(Array(a.account.host.text.utf8))
            }
        self.accounts = keyed.map(\.account)
        self.keys = keyed.map(\.key)
    }

    /// The account a client logging in as `user` from `ip` (and `hostname`, when known) is for:
    /// the first of that name whose host matches, unless an anonymous account that matches comes
    /// strictly before it.
    public func account(user: String, hostname: String?, ip: String?) -> Account? {
        let client = HostPattern.Client(hostname: hostname, ip: ip)
        var found: Int?
        for (i, account) in accounts.enumerated() where account.user == user && !user.isEmpty {
            if account.host.matches(client) {
                found = i
                break
            }
        }
        for (i, account) in accounts.enumerated() where account.user.isEmpty {
            if let found, !keys[i].lexicographicallyPrecedes(keys[found]) { break }
            if account.host.matches(client) { return account }
        }
        return found.map { accounts[$0] }
    }
}
