import NIOCore

/// HAProxy's PROXY protocol, versions 1 (a text line) and 2 (binary): the header a load balancer
/// or proxy puts in front of a connection to say whom it carries. Values and pure functions over
/// `ByteBuffer`: reading the header a client side sends, and writing the version 2 header the proxy
/// sends to a backend.
public enum ProxyProtocol {
    /// The endpoints a header announces.
    public enum Endpoints: Hashable, Sendable {
        /// LOCAL (v2), UNKNOWN (v1), or a family not carried (UNIX, UDP): the connection speaks for
        /// itself (a health check, say), and its own addresses stand.
        case local
        /// The client (`source`) and the address it connected to (`destination`).
        case proxied(source: SocketAddress, destination: SocketAddress)

        /// The address the client connected to, as the header names it (nil: the listener's stands).
        var destination: SocketAddress? {
            if case .proxied(_, let destination) = self { return destination }
            return nil
        }
    }

    public enum Parsed: Sendable {
        /// Not enough bytes yet to tell.
        case incomplete
        /// A whole header of `length` bytes; what follows it is the connection's own data.
        case header(Endpoints, length: Int)
        /// Not a PROXY header, or a broken one.
        case invalid(String)
    }

    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    static let v1Prefix: [UInt8] = Array("PROXY ".utf8)
    /// The longest v1 line, CRLF included (the specification's limit).
    static let v1MaximumLength = 107
    /// The most a v2 header may carry after its 16 fixed bytes: addresses and TLVs. The format
    /// allows 65535; a sender's TLVs (TLS details, unique ids) stay far below this.
    public static let v2MaximumBody = 2048

    /// Reads the header at the start of `buffer` (which is not consumed).
    public static func parse(_ buffer: ByteBuffer) -> Parsed {
        let bytes = buffer.readableBytesView
        let start = bytes.startIndex
        func byte(_ i: Int) -> UInt8 { bytes[start + i] }
        func startsWith(_ prefix: [UInt8]) -> Bool? {
            let n = min(prefix.count, bytes.count)
            for i in 0..<n where byte(i) != prefix[i] { return false }
            return n == prefix.count ? true : nil  // nil: agrees so far
        }
        switch (startsWith(v2Signature), startsWith(v1Prefix)) {
        case (true, _):
            return parseV2(bytes.count) { byte($0) }
        case (_, true):
            return parseV1(bytes.count) { byte($0) }
        case (nil, _), (_, nil):
            return .incomplete
        default:
            return .invalid("the connection does not start with a PROXY protocol header")
        }
    }

    private static func parseV2(_ count: Int, _ byte: (Int) -> UInt8) -> Parsed {
        guard count >= 16 else { return .incomplete }
        let versionCommand = byte(12)
        guard versionCommand >> 4 == 2 else { return .invalid("PROXY v2 header of version \(versionCommand >> 4)") }
        let command = versionCommand & 0x0F
        guard command <= 1 else { return .invalid("PROXY v2 header with command \(command)") }
        let family = byte(13)
        let bodyLength = Int(byte(14)) << 8 | Int(byte(15))
        guard bodyLength <= v2MaximumBody else {
            return .invalid("PROXY v2 header of \(bodyLength) bytes, more than the \(v2MaximumBody) allowed")
        }
        let length = 16 + bodyLength
        guard count >= length else { return .incomplete }
        if command == 0 { return .header(.local, length: length) }  // LOCAL
        func ipv4(_ at: Int) -> [UInt8] { (0..<4).map { byte(16 + at + $0) } }
        func port(_ at: Int) -> Int { Int(byte(16 + at)) << 8 | Int(byte(16 + at + 1)) }
        switch family {
        case 0x11:  // TCP over IPv4: 4 + 4 address bytes, 2 + 2 port bytes
            guard bodyLength >= 12 else { return .invalid("PROXY v2 TCP4 header too short for its addresses") }
            let source = ipv4(0).map(String.init).joined(separator: ".")
            let destination = ipv4(4).map(String.init).joined(separator: ".")
            return endpoints(source, port(8), destination, port(10), length: length)
        case 0x21:  // TCP over IPv6: 16 + 16 address bytes, 2 + 2 port bytes
            guard bodyLength >= 36 else { return .invalid("PROXY v2 TCP6 header too short for its addresses") }
            func ipv6(_ at: Int) -> String {
                stride(from: 0, to: 16, by: 2).map { String(Int(byte(16 + at + $0)) << 8 | Int(byte(16 + at + $0 + 1)), radix: 16) }
                    .joined(separator: ":")
            }
            return endpoints(ipv6(0), port(32), ipv6(16), port(34), length: length)
        case 0x00, 0x12, 0x22, 0x31, 0x32:
            // UNSPEC, UDP, UNIX: nothing a TCP connection's peer address can be replaced with
            return .header(.local, length: length)
        default:
            return .invalid("PROXY v2 header with address family 0x\(String(family, radix: 16))")
        }
    }

    private static func parseV1(_ count: Int, _ byte: (Int) -> UInt8) -> Parsed {
        // "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n", or "PROXY UNKNOWN ...\r\n"
        var end: Int?
        var i = 0
        while i + 1 < min(count, v1MaximumLength) {
            if byte(i) == 0x0D && byte(i + 1) == 0x0A { end = i; break }
            i += 1
        }
        guard let end else {
            return count >= v1MaximumLength ? .invalid("PROXY v1 header line longer than \(v1MaximumLength) bytes") : .incomplete
        }
        let line = String(decoding: (0..<end).map(byte), as: UTF8.self)
        let fields = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard fields.count >= 2 else { return .invalid("PROXY v1 header without a protocol") }
        if fields[1] == "UNKNOWN" { return .header(.local, length: end + 2) }
        guard fields[1] == "TCP4" || fields[1] == "TCP6", fields.count == 6 else {
            return .invalid("PROXY v1 header '\(line.prefix(60))' is not TCP4/TCP6 with two addresses and two ports")
        }
        guard let sourcePort = v1Port(fields[4]), let destinationPort = v1Port(fields[5]) else {
            return .invalid("PROXY v1 header with a bad port")
        }
        let ipv6 = fields[1] == "TCP6"
        guard fields[2].contains(":") == ipv6, fields[3].contains(":") == ipv6 else {
            return .invalid("PROXY v1 header whose addresses are not \(fields[1])")
        }
        return endpoints(fields[2], sourcePort, fields[3], destinationPort, length: end + 2)
    }

    private static func v1Port(_ text: String) -> Int? {
        guard !text.isEmpty, text.count <= 5, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let n = Int(text), n <= 65535 else { return nil }
        return n
    }

    private static func endpoints(_ source: String, _ sourcePort: Int, _ destination: String, _ destinationPort: Int,
                                  length: Int) -> Parsed {
        guard let s = try? SocketAddress(ipAddress: source, port: sourcePort),
              let d = try? SocketAddress(ipAddress: destination, port: destinationPort) else {
            return .invalid("PROXY header with an address that is not an IP address")
        }
        return .header(.proxied(source: s, destination: d), length: length)
    }

    /// The version 2 header for a TCP connection from `source` to `destination` (both IPv4 or both
    /// IPv6; otherwise, or for other kinds of address, a LOCAL header).
    public static func v2Header(source: SocketAddress?, destination: SocketAddress?) -> ByteBuffer {
        var out = ByteBuffer()
        out.writeBytes(v2Signature)
        func proxied(family: UInt8, _ s: [UInt8], _ d: [UInt8]) {
            out.writeInteger(UInt8(0x21))  // version 2, PROXY
            out.writeInteger(family)
            out.writeInteger(UInt16(s.count + d.count + 4))
            out.writeBytes(s)
            out.writeBytes(d)
            out.writeInteger(UInt16(source?.port ?? 0))
            out.writeInteger(UInt16(destination?.port ?? 0))
        }
        switch (source, destination) {
        case (.v4(let s)?, .v4(let d)?):
            proxied(family: 0x11, withUnsafeBytes(of: s.address.sin_addr) { Array($0) }, withUnsafeBytes(of: d.address.sin_addr) { Array($0) })
        case (.v6(let s)?, .v6(let d)?):
            proxied(family: 0x21, withUnsafeBytes(of: s.address.sin6_addr) { Array($0) }, withUnsafeBytes(of: d.address.sin6_addr) { Array($0) })
        default:
            out.writeInteger(UInt8(0x20))  // version 2, LOCAL
            out.writeInteger(UInt8(0x00))
            out.writeInteger(UInt16(0))
        }
        return out
    }
}
