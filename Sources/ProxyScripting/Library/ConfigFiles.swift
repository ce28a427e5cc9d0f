#if canImport(Glibc)
import Glibc
#endif

// MARK: proxy.auto-config's files

/// SAVE CONFIG INTO and LOAD CONFIG FROM name a file a client chose: it must be a plain name (no
/// directory, no leading dot) in `--proxy-auto-config-dir`, opened without following a symlink.
/// Without the option both are refused.
enum ConfigFiles {
    static func path(_ name: [UInt8], in directory: String?) -> Result<String, ConfigFileError> {
        guard let directory, !directory.isEmpty else {
            return .failure(ConfigFileError("PROXY SAVE CONFIG and LOAD CONFIG are off: the proxy runs without --proxy-auto-config-dir"))
        }
        guard !name.isEmpty, name.count <= 255, name.first != UInt8(ascii: "."),
              !name.contains(UInt8(ascii: "/")), !name.contains(0) else {
            return .failure(ConfigFileError("(auto-config) the file must be a plain name in --proxy-auto-config-dir (no directory, no leading dot)"))
        }
        let base = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        return .success(base + "/" + String(decoding: name, as: UTF8.self))
    }

    static let limit = 1 << 20

    static func save(_ name: [UInt8], _ text: [UInt8], in directory: String?) -> ConfigFileError? {
        let path: String
        switch self.path(name, in: directory) {
        case .success(let p): path = p
        case .failure(let e): return e
        }
        guard text.count <= limit else { return ConfigFileError("(auto-config) the configuration is larger than \(limit) bytes") }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return ConfigFileError("(auto-config) cannot write \(String(decoding: name, as: UTF8.self)): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var written = 0
        while written < text.count {
            let n = text.withUnsafeBytes { write(fd, $0.baseAddress! + written, text.count - written) }
            guard n > 0 else { return ConfigFileError("(auto-config) cannot write \(String(decoding: name, as: UTF8.self)): \(String(cString: strerror(errno)))") }
            written += n
        }
        return nil
    }

    static func load(_ name: [UInt8], in directory: String?) -> Result<[UInt8], ConfigFileError> {
        let path: String
        switch self.path(name, in: directory) {
        case .success(let p): path = p
        case .failure(let e): return .failure(e)
        }
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return .failure(ConfigFileError("(auto-config) cannot read \(String(decoding: name, as: UTF8.self)): \(String(cString: strerror(errno)))")) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, Int(info.st_size) <= limit else {
            return .failure(ConfigFileError("(auto-config) \(String(decoding: name, as: UTF8.self)) is not a regular file of at most \(limit) bytes"))
        }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
        var got = 0
        while got < bytes.count {
            let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, $0.count - got) }
            guard n > 0 else { break }
            got += n
        }
        return .success(Array(bytes.prefix(got)))
    }
}

struct ConfigFileError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
