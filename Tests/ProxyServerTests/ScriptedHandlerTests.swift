import Logging
import MySQLWire
import NIOCore
import NIOEmbedded
import Testing
import ProxyScripting
@testable import ProxyServer

/// The client handler with a Lua script that moves server connections through the pool while its
/// hooks run (MySQL Proxy's rw-splitting does so on every statement): the script's request is
/// carried out after the hook returned, never while the machine changes. Embedded channels on
/// both sides; a debug build checks exclusivity at run time, so a re-entrant access would trap.
@Suite struct ScriptedHandlerTests {
    static let pooling = """
    function read_auth_result(auth)
      if auth.packet:byte() == proxy.MYSQLD_PACKET_OK then proxy.connection.backend_ndx = 0 end
    end
    function read_query(packet)
      if proxy.connection.backend_ndx == 0 then proxy.connection.backend_ndx = 1 end
      proxy.queries:append(1, packet, { resultset_is_needed = true })
      return proxy.PROXY_SEND_QUERY
    end
    function read_query_result(inj)
      proxy.connection.backend_ndx = 0
    end
    """

    let loop = EmbeddedEventLoop()
    let connector: EmbeddedConnector
    let context: ProxyContext

    init() throws {
        connector = EmbeddedConnector(loop: loop)
        var config = ProxyConfiguration()
        config.backends = [BackendConfiguration(address: .tcp(host: "127.0.0.1", port: 3306))]
        let backends = BackendPool(config.backends)
        let engine = ScriptEngine(configuration: .init(scriptSource: Self.pooling), backends: backends, logger: Logger(label: "test"))
        // with the admin interface's registry, which lists what each connection does
        context = ProxyContext(configuration: config, backends: backends, statistics: ProxyStatistics(),
                               connector: connector, logger: Logger(label: "test"), scriptEngine: engine,
                               registry: ConnectionRegistry())
    }

    func connectClient(port: Int) throws -> EmbeddedChannel {
        let client = EmbeddedChannel(loop: loop)
        try client.pipeline.syncOperations.addHandler(ClientChannelHandler(shared: context, channel: client))
        try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: port)).wait()
        return client
    }

    static func packet(_ hex: String, seq: UInt8) -> ByteBuffer {
        var out = ByteBuffer()
        var s = seq
        out.writeMySQLPacket(ByteBuffer(hex: hex), sequenceID: &s)
        return out
    }

    static func query(_ sql: String) -> ByteBuffer {
        var out = ByteBuffer()
        var s: UInt8 = 0
        out.writeMySQLPacket(ByteBuffer(bytes: [0x03] + Array(sql.utf8)), sequenceID: &s)
        return out
    }

    func readAll(_ channel: EmbeddedChannel) throws -> ByteBuffer {
        var all = ByteBuffer()
        while var chunk = try channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&chunk) }
        return all
    }

    /// Logs a client in through a fresh server connection, which the script then pools.
    func login(_ client: EmbeddedChannel, backend: EmbeddedChannel) throws {
        try backend.writeInbound(Self.packet(Captured.greeting, seq: 0))
        _ = try readAll(client)
        try client.writeInbound(Self.packet(Captured.handshakeResponse, seq: 1))
        _ = try readAll(backend)
        try backend.writeInbound(Self.packet("00000002000000", seq: 2))
        #expect(try readAll(client).frames().count == 1)
    }

    @Test func serverConnectionsMoveThroughThePoolBetweenStatements() throws {
        let a = try connectClient(port: 50001)
        let serverA = connector.channels[0]
        try login(a, backend: serverA)
        #expect(context.backends.idleCount(backend: 0) == 1)

        // a's statement takes its own pooled connection back: no reset, the query goes out
        try a.writeInbound(Self.query("SELECT 1"))
        #expect(try readAll(serverA) == Self.query("SELECT 1"))
        #expect(context.backends.idleCount(backend: 0) == 0)
        let ok = Self.packet("00000002000000", seq: 1)
        try serverA.writeInbound(ok)
        #expect(try readAll(a) == ok)
        #expect(context.backends.idleCount(backend: 0) == 1)  // read_query_result gave it back

        // time passes past the sweeper's first ticks (the login is over for it now), and the
        // next statement moves the connection again
        loop.advanceTime(by: .seconds(3))
        try a.writeInbound(Self.query("SELECT 1"))
        #expect(try readAll(serverA) == Self.query("SELECT 1"))
        try serverA.writeInbound(ok)
        #expect(try readAll(a) == ok)
        let listed = try #require(context.registry?.rows().first)
        #expect(listed.contains { $0 == ("user", "nat") } && listed.contains { $0 == ("state", "logged in") })

        // b logs in on a second connection, and its statement takes one of the two
        let b = try connectClient(port: 50002)
        let serverB = connector.channels[1]
        try login(b, backend: serverB)
        #expect(context.backends.idleCount(backend: 0) == 2)
        try b.writeInbound(Self.query("SELECT 2"))
        let wentToA = try readAll(serverA)
        let wentToB = try readAll(serverB)
        if wentToA.readableBytes > 0 {
            // a's connection, used by another session: reset first, then the statement
            #expect(wentToA.frames().map { $0.payload.getInteger(at: 0, as: UInt8.self) } == [CommandCode.resetConnection.rawValue, 0x03])
            try serverA.writeInbound(Self.packet("00000002000000", seq: 1))  // the reset's OK, kept from the client
            try serverA.writeInbound(ok)
        } else {
            #expect(wentToB == Self.query("SELECT 2"))
            try serverB.writeInbound(ok)
        }
        #expect(try readAll(b) == ok)
        #expect(context.backends.idleCount(backend: 0) == 2)

        // a client that leaves between statements leaves its server connections to the pool
        try a.close().wait()
        try b.close().wait()
        #expect(serverA.isActive && serverB.isActive)
        #expect(context.statistics.value(.connectionsActive) == 0)
    }
}
