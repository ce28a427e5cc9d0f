#if canImport(Glibc)
import Glibc
#endif

/// The whole of a file, or nil when it cannot be opened or read, or grows past `limit` bytes
/// (errno then says why, but for the limit). For scripts and configuration: small files read
/// once, where pulling in Foundation or a thread pool would be out of proportion.
public func readWholeFile(_ path: String, limit: Int = .max) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 { if errno == EINTR { continue }; return nil }
        if n == 0 { return bytes }
        bytes.append(contentsOf: chunk[0..<n])
        if bytes.count > limit { return nil }
    }
}
