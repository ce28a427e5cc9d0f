#if canImport(Glibc)
import Glibc
#endif
import ProxyScripting

/// Secrets the operator gives the proxy without putting them on a command line (where `ps` shows
/// them to every user): a file, or an environment variable. Files holding secrets, the defaults
/// file among them, must not be open to every user of the machine, as MySQL Proxy required of its
/// configuration file.
enum SecretFile {
    struct Problem: Error, CustomStringConvertible {
        var description: String
    }

    /// Refuses a file that users other than its owner and group may read, write or run.
    static func checkNotWorldAccessible(_ path: String, what: String) throws(Problem) {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw Problem(description: "cannot read \(what) '\(path)': \(String(cString: strerror(errno)))")
        }
        let mode = info.st_mode & 0o777
        if mode & 0o007 != 0 {
            throw Problem(description: "\(what) '\(path)' has permissions 0\(String(mode, radix: 8)), should be 0660 or stricter (chmod o-rwx)")
        }
    }

    /// The secret in `path`: its first line (a final newline is not part of it).
    static func read(_ path: String, option: String) throws(Problem) -> String {
        try checkNotWorldAccessible(path, what: option)
        guard let bytes = readWholeFile(path, limit: 64 << 10) else {
            throw Problem(description: "cannot read \(option) '\(path)': \(String(cString: strerror(errno)))")
        }
        var text = String(decoding: bytes, as: UTF8.self)
        if let newline = text.firstIndex(where: { $0 == "\n" || $0 == "\r\n" }) { text = String(text[..<newline]) }
        return text
    }

    /// A secret from, in this order: its option on the command line (or in the defaults file),
    /// the file its `-file` option names, or the environment variable.
    static func resolve(value: String?, file: String?, fileOption: String, environment: String) throws(Problem) -> String? {
        if let value { return value }
        if let file { return try read(file, option: fileOption) }
        if let value = getenv(environment) { return String(cString: value) }
        return nil
    }

    /// Options whose values are secrets.
    static let secretOptions = ["--admin-password", "--proxy-backend-check-password"]

    /// Overwrites the values of secret options in the process's own argument strings, which is
    /// what `ps` and /proc/PID/cmdline show, as MySQL's clients do with `-p`. Returns whether
    /// there was one.
    @discardableResult
    static func scrubCommandLine() -> Bool {
        var found = false
        let argv = CommandLine.unsafeArgv
        var index = 1
        while index < Int(CommandLine.argc) {
            defer { index += 1 }
            guard let argument = argv[index] else { continue }
            let text = String(cString: argument)
            for option in secretOptions {
                if text.hasPrefix(option + "=") {
                    overwrite(argument + option.utf8.count + 1)
                    found = true
                } else if text == option, index + 1 < Int(CommandLine.argc), let value = argv[index + 1] {
                    overwrite(value)
                    found = true
                }
            }
        }
        return found
    }

    private static func overwrite(_ string: UnsafeMutablePointer<CChar>) {
        var p = string
        while p.pointee != 0 {
            p.pointee = CChar(UInt8(ascii: "x"))
            p += 1
        }
    }
}
