import NIOCore
import Testing
@testable import ProxyServer

/// Byte vectors from HAProxy's PROXY protocol specification (proxy-protocol.txt, sections 2.1 and 2.2).
@Suite struct ProxyProtocolTests {
    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    func parse(_ bytes: [UInt8]) -> ProxyProtocol.Parsed { ProxyProtocol.parse(ByteBuffer(bytes: bytes)) }

    func endpoints(_ bytes: [UInt8]) -> (String, String, Int)? {
        guard case .header(.proxied(let s, let d), let length) = parse(bytes) else { return nil }
        return ("\(s.ipAddress!):\(s.port!)", "\(d.ipAddress!):\(d.port!)", length)
    }

    @Test func version1() {
        let line = Array("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET /".utf8)
        let e = endpoints(line)
        #expect(e?.0 == "192.168.0.1:56324" && e?.1 == "192.168.0.11:443" && e?.2 == line.count - 5)
        #expect(endpoints(Array("PROXY TCP6 ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".utf8)) == nil)
        let v6 = endpoints(Array("PROXY TCP6 2001:db8::1 2001:db8::2 65535 1\r\n".utf8))
        #expect(v6?.0 == "2001:db8::1:65535")
        guard case .header(.local, let n) = parse(Array("PROXY UNKNOWN\r\n".utf8)) else { Issue.record("UNKNOWN"); return }
        #expect(n == 15)
        // the longest line the specification allows, and one byte more
        let longest = "PROXY UNKNOWN " + String(repeating: "x", count: 107 - 16) + "\r\n"
        #expect(longest.utf8.count == 107)
        if case .header(.local, 107) = parse(Array(longest.utf8)) {} else { Issue.record("107 bytes") }
        if case .invalid = parse(Array(("PROXY UNKNOWN " + String(repeating: "x", count: 120)).utf8)) {} else { Issue.record("too long") }
    }

    @Test func version1Refusals() {
        for bad in ["PROXY TCP4 1.2.3.4 5.6.7.8 65536 1\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 -1 1\r\n",
                    "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                    "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY\r\n", "GET / HTTP/1.1\r\n"] {
            if case .invalid = parse(Array(bad.utf8)) {} else { Issue.record("accepted: \(bad)") }
        }
        for partial in ["P", "PROXY", "PROXY TCP4 1.2.3.4"] {
            if case .incomplete = parse(Array(partial.utf8)) {} else { Issue.record("not incomplete: \(partial)") }
        }
    }

    @Test func version2() {
        // PROXY, TCP over IPv4, 12 bytes: 127.0.0.1:1234 -> 127.0.0.2:80, then a TLV and the data
        var bytes = Self.v2Signature + [0x21, 0x11, 0x00, 0x11, 127, 0, 0, 1, 127, 0, 0, 2, 0x04, 0xD2, 0x00, 0x50]
        bytes += [0x04, 0x00, 0x02, 0x61, 0x62]  // PP2_TYPE_NOOP with 2 bytes
        bytes += [0x03]  // the connection's first byte
        let e = endpoints(bytes)
        #expect(e?.0 == "127.0.0.1:1234" && e?.1 == "127.0.0.2:80" && e?.2 == bytes.count - 1)
        // TCP over IPv6
        var v6 = Self.v2Signature + [0x21, 0x21, 0x00, 0x24]
        v6 += [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1]
        v6 += [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [2]
        v6 += [0x00, 0x07, 0x00, 0x08]
        #expect(endpoints(v6)?.0 == "2001:db8::1:7")
        // LOCAL, and UNIX addresses: the connection's own stand
        if case .header(.local, 16) = parse(Self.v2Signature + [0x20, 0x00, 0x00, 0x00]) {} else { Issue.record("LOCAL") }
        let unix = Self.v2Signature + [0x21, 0x31, 0x00, 0xD8] + [UInt8](repeating: 0, count: 216)
        if case .header(.local, 232) = parse(unix) {} else { Issue.record("UNIX") }
    }

    @Test func version2Refusals() {
        let s = Self.v2Signature
        for bad in [s + [0x11, 0x11, 0x00, 0x0C] + [UInt8](repeating: 0, count: 12),   // version 1 in binary
                    s + [0x22, 0x11, 0x00, 0x0C] + [UInt8](repeating: 0, count: 12),   // command 2
                    s + [0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4],                           // too short for TCP4
                    s + [0x21, 0x21, 0x00, 0x0C] + [UInt8](repeating: 0, count: 12),   // too short for TCP6
                    s + [0x21, 0x41, 0x00, 0x00],                                       // unknown family
                    s + [0x21, 0x11, 0xFF, 0xFF]] {                                     // oversize
            if case .invalid = parse(bad) {} else { Issue.record("accepted: \(bad)") }
        }
        for partial in [Array(s.prefix(5)), s, s + [0x21, 0x11, 0x00, 0x0C, 1, 2]] {
            if case .incomplete = parse(partial) {} else { Issue.record("not incomplete: \(partial)") }
        }
    }

    @Test func writesVersion2() throws {
        let header = ProxyProtocol.v2Header(source: try SocketAddress(ipAddress: "192.0.2.1", port: 1234),
                                            destination: try SocketAddress(ipAddress: "198.51.100.2", port: 3306))
        #expect(Array(header.readableBytesView) == Self.v2Signature + [0x21, 0x11, 0x00, 0x0C, 192, 0, 2, 1, 198, 51, 100, 2, 0x04, 0xD2, 0x0C, 0xEA])
        // and reads back
        let e = endpoints(Array(header.readableBytesView))
        #expect(e?.0 == "192.0.2.1:1234" && e?.1 == "198.51.100.2:3306")
        let local = ProxyProtocol.v2Header(source: nil, destination: nil)
        #expect(Array(local.readableBytesView) == Self.v2Signature + [0x20, 0x00, 0x00, 0x00])
    }

    @Test func networkLists() throws {
        let list = try NetworkList(parsing: "192.168.0.0/16, 10.1.2.3,::1/128,localhost")
        #expect(list.contains(try SocketAddress(ipAddress: "192.168.44.5", port: 1)))
        #expect(!list.contains(try SocketAddress(ipAddress: "192.169.0.1", port: 1)))
        #expect(list.contains(try SocketAddress(ipAddress: "10.1.2.3", port: 1)))
        #expect(!list.contains(try SocketAddress(ipAddress: "10.1.2.4", port: 1)))
        #expect(list.contains(try SocketAddress(ipAddress: "::1", port: 1)))
        #expect(list.contains(try SocketAddress(ipAddress: "::ffff:192.168.1.1", port: 1)))
        #expect(list.contains(try SocketAddress(unixDomainSocketPath: "/tmp/x.sock")))
        #expect(try NetworkList(parsing: "*").contains(try SocketAddress(ipAddress: "8.8.8.8", port: 1)))
        #expect(try NetworkList(parsing: "0.0.0.0/0").contains(try SocketAddress(ipAddress: "8.8.8.8", port: 1)))
        for bad in ["10.0.0.0/33", "banana", "10.0.0.0/x", "::1/129"] {
            #expect(throws: NetworkList.Problem.self) { try NetworkList(parsing: bad) }
        }
    }
}
