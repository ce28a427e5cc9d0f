#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOCore
import ProxyServer
import Testing

/// MoonProxy as a library: started in-process on an ephemeral port, with a script given as text
/// or as a file, with or without backends, and stopped again.
@Suite(.serialized) struct InProcessTests {
    /// A mock server in a few lines (the README shows this test).
    static let mockScript = #"""
    local proto = require("mysql.proto")
    function connect_server()
      proxy.response = { type = proxy.MYSQLD_PACKET_RAW, packets = { proto.to_challenge_packet({}) } }
      return proxy.PROXY_SEND_RESULT
    end
    function read_auth()
      proxy.response = { type = proxy.MYSQLD_PACKET_OK }
      return proxy.PROXY_SEND_RESULT
    end
    function read_query(packet)
      if packet:byte() ~= proxy.COM_QUERY then
        proxy.response = { type = proxy.MYSQLD_PACKET_OK }
      elseif packet:sub(2) == "SELECT * FROM users" then
        proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
          fields = { { name = "id", type = proxy.MYSQL_TYPE_LONG }, { name = "name" } },
          rows = { { 1, "ada" }, { 2, nil } } } }
      else
        proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errcode = 1146, sqlstate = "42S02", errmsg = "no such table" }
      end
      return proxy.PROXY_SEND_RESULT
    end
    """#

    static let mariadbCLI = ["/usr/bin/mariadb", "/usr/local/bin/mariadb"].first { FileManager.default.isExecutableFile(atPath: $0) }

    @Test(.enabled(if: mariadbCLI != nil, "needs the mariadb client"))
    func servesFakeResultSets() async throws {
        let proxy = MoonProxy(configuration: .embedded(script: Self.mockScript))
        try await proxy.start()
        let port = try #require(proxy.port)

        let result = try mariadb(port: port, "SELECT * FROM users")
        #expect(result.status == 0)
        #expect(result.output == "id\tname\n1\tada\n2\tNULL\n")
        let missing = try mariadb(port: port, "SELECT * FROM orders")
        #expect(missing.status == 1)
        #expect(missing.errors.contains("ERROR 1146 (42S02)"))

        await proxy.shutdown()
    }

    @Test func startsAndStopsManyTimesWithoutLeaking() async throws {
        let scriptFile = FileManager.default.temporaryDirectory.appendingPathComponent("moon-inprocess-\(getpid()).lua").path
        try Self.mockScript.write(toFile: scriptFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: scriptFile) }
        let unreachable = BackendConfiguration(address: .tcp(host: "127.0.0.1", port: 1))

        // one round first, so that lazily made process-wide things exist before counting
        try await oneRound(.embedded(script: Self.mockScript), expecting: 0x0a)
        let threads = nioThreadCount()
        let descriptors = openDescriptorCount()

        weak var lastProxy: MoonProxy?
        for round in 0..<30 {
            switch round % 3 {
            case 0: lastProxy = try await oneRound(.embedded(script: Self.mockScript), expecting: 0x0a)
            case 1: lastProxy = try await oneRound(.embedded(scriptFile: scriptFile), expecting: 0x0a)
            default: lastProxy = try await oneRound(.embedded(backends: [unreachable]), expecting: 0xff)  // no backend: ERR
            }
        }
        #expect(lastProxy == nil, "a stopped proxy is released")
        #expect(nioThreadCount() <= threads, "event loop threads are stopped")
        #expect(openDescriptorCount() <= descriptors, "listeners and connections are closed")
    }

    /// Starts a proxy, has a client read the first byte of its first packet, stops the proxy.
    @discardableResult
    private func oneRound(_ configuration: ProxyConfiguration, expecting firstByte: UInt8) async throws -> MoonProxy {
        let proxy = MoonProxy(configuration: configuration)
        try await proxy.start()
        let port = try #require(proxy.port)
        #expect(try firstPayloadByte(port: port) == firstByte)
        #expect(nioThreadCount() >= 1, "the proxy runs its own event loop thread")
        await proxy.shutdown()
        #expect(proxy.localAddress == nil)
        return proxy
    }
}

private func mariadb(port: Int, _ sql: String) throws -> (status: Int32, output: String, errors: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: InProcessTests.mariadbCLI!)
    process.arguments = ["-h127.0.0.1", "-P\(port)", "-uapp", "--skip-ssl", "--batch", "-e", sql]
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let output = out.fileHandleForReading.readDataToEndOfFile()
    let errors = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: output, as: UTF8.self), String(decoding: errors, as: UTF8.self))
}

/// Connects, reads one packet header and the first payload byte, closes.
private func firstPayloadByte(port: Int) throws -> UInt8? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { return nil }
    var bytes = [UInt8](repeating: 0, count: 5)
    var got = 0
    while got < 5 {
        let n = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, 5 - got, 0) }
        guard n > 0 else { return nil }
        got += n
    }
    return bytes[4]
}

private func nioThreadCount() -> Int {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.filter { task in
        let comm = (try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8)) ?? ""
        return comm.hasPrefix("NIO-ELT")
    }.count
}

private func openDescriptorCount() -> Int {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).count
}
