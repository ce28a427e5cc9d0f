import Logging
import MySQLWire
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing
@testable import ProxyServer

/// Hands out embedded channels as backend connections, all on one embedded event loop.
final class EmbeddedConnector: BackendConnector, @unchecked Sendable {
    let loop: EmbeddedEventLoop
    private(set) var channels: [EmbeddedChannel] = []
    var refuse = false

    init(loop: EmbeddedEventLoop) { self.loop = loop }

    func connect(to address: ProxyAddress, resolved: SocketAddress?, on eventLoop: EventLoop, timeout: TimeAmount,
                 handler: NIOLoopBound<BackendChannelHandler>) -> EventLoopFuture<Channel> {
        if refuse { return loop.makeFailedFuture(ChannelError.connectTimeout(timeout)) }
        let channel = EmbeddedChannel(loop: loop)
        try! channel.pipeline.syncOperations.addHandler(handler.value)
        channels.append(channel)
        return channel.connect(to: try! SocketAddress(ipAddress: "127.0.0.1", port: 3306)).map { channel }
    }
}

/// The client handler with embedded channels on both sides: the real handler code, no sockets.
@Suite struct ClientChannelHandlerTests {
    let loop = EmbeddedEventLoop()
    let connector: EmbeddedConnector
    let client: EmbeddedChannel
    let context: ProxyContext

    init() throws {
        connector = EmbeddedConnector(loop: loop)
        var config = ProxyConfiguration()
        config.backends = [BackendConfiguration(address: .tcp(host: "127.0.0.1", port: 3306))]
        context = ProxyContext(configuration: config, backends: BackendPool(config.backends), statistics: ProxyStatistics(),
                               connector: connector, logger: Logger(label: "test"))
        client = EmbeddedChannel(loop: loop)
        try client.pipeline.syncOperations.addHandler(ClientChannelHandler(shared: context, channel: client))
        try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 55555)).wait()
    }

    var backend: EmbeddedChannel { connector.channels[0] }

    static func packet(_ hex: String, seq: UInt8) -> ByteBuffer {
        var out = ByteBuffer()
        var s = seq
        out.writeMySQLPacket(ByteBuffer(hex: hex), sequenceID: &s)
        return out
    }

    func readAll(_ channel: EmbeddedChannel) throws -> ByteBuffer {
        var all = ByteBuffer()
        while var chunk = try channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&chunk) }
        return all
    }

    @Test func greetingHandshakeAndQueryFlowThrough() throws {
        #expect(connector.channels.count == 1)
        try backend.writeInbound(Self.packet(Captured.greeting, seq: 0))
        let greeting = try readAll(client).frames()
        #expect(greeting.count == 1)
        // relayed as the server offered it (compression included); TLS as the policy says
        #expect(try HandshakeV10(parsing: greeting[0].payload).capabilities.contains(.compress))

        try client.writeInbound(Self.packet(Captured.handshakeResponse, seq: 1))
        #expect(try readAll(backend).frames().first?.sequenceID == 1)
        try backend.writeInbound(Self.packet("00000002000000", seq: 2))
        #expect(try readAll(client).frames().count == 1)

        let query = Self.packet("0353454c4543542031", seq: 0)
        try client.writeInbound(query)
        #expect(try readAll(backend) == query)
        let response = Self.packet("01", seq: 1)
        try backend.writeInbound(response)
        #expect(try readAll(client) == response)
        #expect(context.statistics.value(.queries) == 1)
    }

    /// What the server sent before it went away reaches the client, then the close: no ERR of the
    /// proxy's own, as a direct client would see it.
    @Test func backendClosingMidResultRelaysWhatCameThenCloses() throws {
        try backend.writeInbound(Self.packet(Captured.greeting, seq: 0))
        try client.writeInbound(Self.packet(Captured.handshakeResponse, seq: 1))
        try backend.writeInbound(Self.packet("00000002000000", seq: 2))
        _ = try readAll(client)
        try client.writeInbound(Self.packet("0353454c4543542031", seq: 0))
        let columnCount = Self.packet("01", seq: 1)
        try backend.writeInbound(columnCount)
        try backend.close().wait()
        #expect(try readAll(client) == columnCount)
        #expect(!client.isActive)
    }

    @Test func noBackendGivesAnErrorAndCloses() throws {
        let loop = EmbeddedEventLoop()
        let connector = EmbeddedConnector(loop: loop)
        connector.refuse = true
        let config = ProxyConfiguration()
        let context = ProxyContext(configuration: config, backends: BackendPool(config.backends), statistics: ProxyStatistics(),
                                   connector: connector, logger: Logger(label: "test"))
        let client = EmbeddedChannel(loop: loop)
        try client.pipeline.syncOperations.addHandler(ClientChannelHandler(shared: context, channel: client))
        try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 55555)).wait()
        let frames = try readAll(client).frames()
        #expect(try ERRPacket(parsing: frames[0].payload).code == 1105)
        #expect(context.backends.snapshot()[0].state == .down)
        #expect(!client.isActive)
    }

    @Test func clientGoingAwayClosesTheBackend() throws {
        try backend.writeInbound(Self.packet(Captured.greeting, seq: 0))
        try client.close().wait()
        #expect(!backend.isActive)
        #expect(context.backends.snapshot()[0].connectedClients == 0)
        #expect(context.statistics.value(.connectionsActive) == 0)
    }
}
