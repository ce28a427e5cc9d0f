import NIOCore
import NIOPosix

/// Opens connections to backends. The default uses NIO's ClientBootstrap; tests substitute one that
/// hands out embedded channels.
protocol BackendConnector: Sendable {
    /// Connects to `address` (`resolved` when it was resolved in advance).
    func connect(to address: ProxyAddress, resolved: SocketAddress?, on eventLoop: EventLoop, timeout: TimeAmount,
                 handler: NIOLoopBound<BackendChannelHandler>) -> EventLoopFuture<Channel>
}

struct SocketBackendConnector: BackendConnector {
    func connect(to address: ProxyAddress, resolved: SocketAddress?, on eventLoop: EventLoop, timeout: TimeAmount,
                 handler: NIOLoopBound<BackendChannelHandler>) -> EventLoopFuture<Channel> {
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(timeout)
            .channelOption(.recvAllocator, value: ReceiveBuffers.allocator)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(handler.value)
                }
            }
        if let resolved {
            return bootstrap.connect(to: resolved)
        }
        switch address {
        case .tcp(let host, let port):
            return bootstrap.connect(host: host, port: port)
        case .unix(let path):
            return bootstrap.connect(unixDomainSocketPath: path)
        }
    }
}

/// How each link's receive buffer is sized: from what arrives, starting small. NIO keeps a link's
/// buffer for its next read, so this is what an idle connection holds per link (NIO's default
/// starts at 2 KiB); a read that fills it makes the next one larger, up to 64 KiB.
enum ReceiveBuffers {
    static let allocator = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 65536)
}

extension ChannelHandlerContext {
    /// Writes a chunk that was just read from the other side. A read that did not fill its buffer
    /// is the last of its read cycle, so it is flushed at once; after a full one NIO reads again,
    /// and the flush waits for the end of the cycle so that the chunks leave in one system call.
    func forward(_ buffer: ByteBuffer, flushPending: inout Bool) {
        if buffer.writableBytes > 0 && !flushPending {
            writeAndFlush(NIOAny(buffer), promise: nil)
        } else {
            write(NIOAny(buffer), promise: nil)
            flushPending = true
        }
    }
}
