/// A link's protocol compression, as its handshake negotiated it: zlib (CLIENT_COMPRESS) or zstd
/// (CLIENT_ZSTD_COMPRESSION_ALGORITHM, with the level the client sent as the handshake
/// response's last byte). Both put the same 7-byte frame header under the MySQL framing.
public enum ProtocolCompression: Hashable, Sendable, CustomStringConvertible {
    case zlib
    case zstd(level: Int)

    /// MySQL's default zstd level (protocol_compression_level's default).
    public static let defaultZstdLevel = 3
    public static let zstdLevels = 1...22

    public var description: String {
        switch self {
        case .zlib: "zlib"
        case .zstd: "zstd"
        }
    }

    /// The capability that asks for it.
    public var capability: CapabilityFlags {
        switch self {
        case .zlib: .compress
        case .zstd: .zstdCompression
        }
    }

    /// Both capability bits of protocol compression.
    public static let capabilities: CapabilityFlags = [.compress, .zstdCompression]

    /// What a client that asked for `asked` in answer to a greeting offering `offered` negotiated:
    /// zlib when both ask and offer it (MySQL's rule when a client sets both bits), else zstd at
    /// `zstdLevel` (outside 1...22, or missing, MySQL's default 3), else nothing.
    public static func negotiated(asked: CapabilityFlags, offered: CapabilityFlags, zstdLevel: UInt8?) -> ProtocolCompression? {
        let agreed = asked.intersection(offered)
        if agreed.contains(.compress) { return .zlib }
        if agreed.contains(.zstdCompression) {
            let level = zstdLevel.map(Int.init) ?? defaultZstdLevel
            return .zstd(level: zstdLevels.contains(level) ? level : defaultZstdLevel)
        }
        return nil
    }

    /// The algorithm to ask a server offering `offered` for, preferring `preferred`, then the
    /// other one; nil when the server offers neither.
    public static func choice(preferring preferred: ProtocolCompression, offered: CapabilityFlags) -> ProtocolCompression? {
        if offered.contains(preferred.capability) { return preferred }
        switch preferred {
        case .zlib: return offered.contains(.zstdCompression) ? .zstd(level: defaultZstdLevel) : nil
        case .zstd: return offered.contains(.compress) ? .zlib : nil
        }
    }
}
