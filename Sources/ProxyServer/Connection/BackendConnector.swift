import NIOCore
import NIOPosix

/// Opens connections to backends. The default uses NIO's ClientBootstrap; tests substitute one that
/// hands out embedded channels.
protocol BackendConnector: Sendable {
    func connect(to address: ProxyAddress, on eventLoop: EventLoop, timeout: TimeAmount,
                 handler: NIOLoopBound<BackendChannelHandler>) -> EventLoopFuture<Channel>
}

struct SocketBackendConnector: BackendConnector {
    func connect(to address: ProxyAddress, on eventLoop: EventLoop, timeout: TimeAmount,
                 handler: NIOLoopBound<BackendChannelHandler>) -> EventLoopFuture<Channel> {
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(handler.value)
                }
            }
        switch address {
        case .tcp(let host, let port):
            if let literal = try? SocketAddress(ipAddress: host, port: port) {
                return bootstrap.connect(to: literal)
            }
            return bootstrap.connect(host: host, port: port)
        case .unix(let path):
            return bootstrap.connect(unixDomainSocketPath: path)
        }
    }
}
