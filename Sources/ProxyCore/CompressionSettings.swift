import MySQLWire

/// Protocol compression on each of a connection's two links, negotiated independently: the client
/// picks from what the proxy offers it, and the proxy asks the server for what this says.
public struct CompressionSettings: Sendable, Equatable {
    /// What the proxy asks backends for.
    public enum Backend: Sendable, Equatable, CustomStringConvertible {
        /// The client's choice: the same algorithm when the server offers it, else the other one
        /// it offers, else none; an uncompressed client gets an uncompressed server link.
        case mirror
        /// Never compressed.
        case off
        /// Always this algorithm when the server offers it (whatever the client chose), else
        /// uncompressed: for a backend across a slow network.
        case always(ProtocolCompression)

        public var description: String {
            switch self {
            case .mirror: "mirror"
            case .off: "off"
            case .always(.zlib): "zlib"
            case .always(.zstd(let level)): "zstd:\(level)"
            }
        }
    }

    /// `--protocol-compression-algorithms` (the MySQL server's name): the capability bits the
    /// proxy offers clients, CLIENT_COMPRESS and CLIENT_ZSTD_COMPRESSION_ALGORITHM by default.
    public var clientAlgorithms: CapabilityFlags = ProtocolCompression.capabilities
    /// `--proxy-backend-compression`.
    public var backend: Backend = .mirror

    public init() {}

    public struct Problem: Error, CustomStringConvertible {
        public var description: String
    }

    /// "zlib,zstd,uncompressed" (MySQL's protocol_compression_algorithms): the capabilities to offer.
    public static func parseAlgorithms(_ text: String) throws -> CapabilityFlags {
        var flags: CapabilityFlags = []
        for name in text.split(separator: ",").map({ $0.filter { $0 != " " }.lowercased() }) {
            switch name {
            case "zlib": flags.insert(.compress)
            case "zstd": flags.insert(.zstdCompression)
            case "uncompressed": break
            default: throw Problem(description: "--protocol-compression-algorithms takes zlib, zstd and uncompressed, not '\(name)'")
            }
        }
        return flags
    }

    /// "mirror", "off", "zlib", "zstd" or "zstd:LEVEL" (1 to 22).
    public static func parseBackend(_ text: String) throws -> Backend {
        let lowered = text.lowercased()
        switch lowered {
        case "mirror": return .mirror
        case "off": return .off
        case "zlib": return .always(.zlib)
        case "zstd": return .always(.zstd(level: ProtocolCompression.defaultZstdLevel))
        default:
            if lowered.hasPrefix("zstd:"), let level = Int(lowered.dropFirst(5)), ProtocolCompression.zstdLevels.contains(level) {
                return .always(.zstd(level: level))
            }
            throw Problem(description: "--proxy-backend-compression takes mirror, off, zlib, zstd or zstd:LEVEL (1 to 22), not '\(text)'")
        }
    }

    /// The compression of a server link whose greeting offered `offered`, when the client's link
    /// has `client`.
    public func backendCompression(client: ProtocolCompression?, offered: CapabilityFlags) -> ProtocolCompression? {
        switch backend {
        case .off: return nil
        case .mirror: return client.flatMap { ProtocolCompression.choice(preferring: $0, offered: offered) }
        case .always(let wanted): return offered.contains(wanted.capability) ? wanted : nil
        }
    }
}
