#if canImport(Glibc)
import Glibc
#endif
import ProxyScripting

/// Reads a MySQL Proxy configuration file: an INI file whose `[mysql-proxy]` section holds
/// `option = value` lines with the command line's long option names. Switches take `true`/`false`
/// (or 1/0). Options given on the command line win over the file.
enum DefaultsFile {
    struct Problem: Error, CustomStringConvertible {
        var description: String
    }

    /// Long names of options that are switches (no value).
    static let switches: Set<String> = [
        "proxy-skip-profiling", "proxy-fix-bug-25371", "no-proxy", "proxy-pool-no-change-user", "verbose-shutdown",
        "daemon", "log-use-syslog", "log-backtrace-on-crash", "keepalive", "version", "require-secure-transport", "skip-ssl",
        "proxy-backend-proxy-protocol", "query-log-normalize", "proxy-backend-get-server-public-key", "require-x509", "require-client-certificate",
    ]

    /// Long names of options that take a value, with their short forms.
    static let valued: [String: Character?] = [
        "proxy-address": "P", "proxy-read-only-backend-addresses": "r", "proxy-backend-addresses": "b",
        "proxy-lua-script": "s", "proxy-connect-timeout": nil, "proxy-read-timeout": nil, "proxy-write-timeout": nil,
        "proxy-backend-retry-interval": nil, "proxy-login-timeout": nil, "proxy-shutdown-timeout": nil, "proxy-resultset-buffer-limit": nil,
        "proxy-lua-timeout": nil, "proxy-lua-memory-limit": nil, "proxy-max-packet-size": nil,
        "admin-address": nil, "admin-username": nil, "admin-password": nil, "admin-password-file": nil, "admin-lua-script": nil,
        "proxy-backend-check-password-file": nil, "proxy-backend-server-public-key": nil, "proxy-auto-config-dir": nil, "max-unauthenticated-connections-per-address": nil, "proxy-backend-greeting-timeout": nil,
        "user": nil, "basedir": nil, "pid-file": nil, "plugin-dir": nil, "plugins": nil, "log-level": nil, "log-file": nil,
        "max-open-files": nil, "max-connections": nil, "metrics-address": nil, "query-log": nil, "query-log-max-query-length": nil, "proxy-protocol-networks": nil, "proxy-backend-check-interval": nil, "proxy-backend-check-user": nil, "proxy-backend-check-password": nil, "max-connections-per-address": nil, "event-threads": nil, "lua-path": nil, "lua-cpath": nil,
        "ssl-cert": nil, "ssl-key": nil, "ssl-ca": nil, "ssl-cipher": nil, "tls-version": nil,
        "proxy-backend-ssl": nil, "proxy-backend-ssl-ca": nil, "proxy-backend-ssl-cert": nil, "proxy-backend-ssl-key": nil,
        "protocol-compression-algorithms": nil, "proxy-backend-compression": nil,
        "proxy-users-user": nil, "proxy-users-password-file": nil, "proxy-users-refresh-interval": nil,
    ]

    /// Parses the `[mysql-proxy]` section into (key, value) pairs in file order.
    static func read(path: String) throws -> [(key: String, value: String)] {
        try SecretFile.checkNotWorldAccessible(path, what: "the defaults file")
        guard let text = readWholeFile(path, limit: 16 << 20).map({ String(decoding: $0, as: UTF8.self) }) else {
            throw Problem(description: "cannot read the defaults file '\(path)': \(String(cString: strerror(errno)))")
        }
        var section: String? = nil
        var pairs: [(String, String)] = []
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = String(rawLine).trimmed
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]") else { throw Problem(description: "\(path):\(number + 1): malformed section header") }
                section = String(line.dropFirst().dropLast()).trimmed
                continue
            }
            guard section == "mysql-proxy" else { continue }
            guard let eq = line.firstIndex(of: "=") else {
                throw Problem(description: "\(path):\(number + 1): expected 'option = value' (switches take true or false)")
            }
            let key = String(line[..<eq]).trimmed
            var value = String(line[line.index(after: eq)...]).trimmed
            if value.count >= 2, (value.hasPrefix("\"") && value.hasSuffix("\"")) || (value.hasPrefix("'") && value.hasSuffix("'")) {
                value = String(value.dropFirst().dropLast())
            }
            guard switches.contains(key) || valued.keys.contains(key) else {
                throw Problem(description: "\(path):\(number + 1): unknown option '\(key)'")
            }
            pairs.append((key, value))
        }
        return pairs
    }

    /// Turns the file's pairs into arguments, leaving out options the command line already sets.
    static func arguments(from pairs: [(key: String, value: String)], commandLine: [String]) throws -> [String] {
        func givenOnCommandLine(_ key: String) -> Bool {
            let short = valued[key] ?? nil
            return commandLine.contains { arg in
                arg == "--\(key)" || arg.hasPrefix("--\(key)=") || (short.map { arg.hasPrefix("-\($0)") && !arg.hasPrefix("--") } ?? false)
            }
        }
        var args: [String] = []
        for (key, value) in pairs where !givenOnCommandLine(key) {
            if switches.contains(key) {
                switch value.lowercased() {
                case "true", "1", "yes", "on": args.append("--\(key)")
                case "false", "0", "no", "off", "": break
                default: throw Problem(description: "option '\(key)' in the defaults file takes true or false, not '\(value)'")
                }
            } else {
                // Lists may use ',' or ';' as separators.
                args.append("--\(key)=\(String(value.map { $0 == ";" ? "," : $0 }))")
            }
        }
        return args
    }
}
