import NIOCore

/// A list of networks as MariaDB's `proxy_protocol_networks` takes it: comma-separated CIDR
/// ranges (`192.168.0.0/16`, `::1/128`), single addresses, `localhost` for Unix socket
/// connections, and `*` for every client.
public struct NetworkList: Hashable, Sendable, CustomStringConvertible {
    struct Range: Hashable, Sendable {
        var bytes: [UInt8]  // 4 or 16
        var prefix: Int
    }

    var ranges: [Range] = []
    var any = false
    var localSockets = false
    public let description: String

    public struct Problem: Error, CustomStringConvertible {
        public let description: String
    }

    public init(parsing text: String) throws {
        description = text
        for raw in text.split(separator: ",") {
            let item = String(raw.drop(while: { $0 == " " || $0 == "\t" }).reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed())
            if item.isEmpty { continue }
            if item == "*" { any = true; continue }
            if item == "localhost" { localSockets = true; continue }
            let parts = item.split(separator: "/", maxSplits: 1).map(String.init)
            guard let bytes = Self.addressBytes(parts[0]) else {
                throw Problem(description: "'\(item)' is not an IP address, a CIDR range, localhost or *")
            }
            var prefix = bytes.count * 8
            if parts.count == 2 {
                guard let n = Int(parts[1]), (0...bytes.count * 8).contains(n) else {
                    throw Problem(description: "'\(item)' has a bad prefix length")
                }
                prefix = n
            }
            ranges.append(Range(bytes: bytes, prefix: prefix))
        }
    }

    /// Whether a connection from `address` belongs to the list.
    public func contains(_ address: SocketAddress?) -> Bool {
        if any { return true }
        guard let address else { return false }
        if case .unixDomainSocket = address { return localSockets }
        guard var bytes = address.ipAddress.flatMap(Self.addressBytes) else { return false }
        // an IPv4 client on an IPv6 socket (::ffff:a.b.c.d) is matched as IPv4
        if bytes.count == 16, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF {
            bytes = Array(bytes[12...])
        }
        return ranges.contains { range in
            guard range.bytes.count == bytes.count else { return false }
            var left = range.prefix
            for i in 0..<bytes.count where left > 0 {
                let mask: UInt8 = left >= 8 ? 0xFF : ~(0xFF >> UInt8(left))
                if bytes[i] & mask != range.bytes[i] & mask { return false }
                left -= 8
            }
            return true
        }
    }

    static func addressBytes(_ text: String) -> [UInt8]? {
        guard let address = try? SocketAddress(ipAddress: text, port: 0) else { return nil }
        switch address {
        case .v4(let a): return withUnsafeBytes(of: a.address.sin_addr) { Array($0) }
        case .v6(let a): return withUnsafeBytes(of: a.address.sin6_addr) { Array($0) }
        default: return nil
        }
    }
}
