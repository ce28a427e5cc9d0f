import Logging
import NIOCore

/// Reads the PROXY protocol header a trusted load balancer puts in front of each connection
/// (`--proxy-protocol-networks`), before anything else sees the connection: the handlers after it
/// get `channelActive` only once the header is in, with the client it announces, and the bytes
/// after the header as the connection's first. A connection whose header is broken or missing
/// is closed (as MariaDB closes it); one that sends nothing is closed after the login timeout.
final class ProxyProtocolDecoder: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let timeout: TimeAmount
    private let logger: Logger
    private let announced: (ProxyProtocol.Endpoints) -> Void
    private var buffered = ByteBuffer()
    private var deadline: Scheduled<Void>?
    private var done = false

    /// `announced` is told the header's endpoints before `channelActive` goes on.
    init(timeout: TimeAmount, logger: Logger, announced: @escaping (ProxyProtocol.Endpoints) -> Void) {
        self.timeout = timeout
        self.logger = logger
        self.announced = announced
    }

    func channelActive(context: ChannelHandlerContext) {
        // held back until the header is in
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [weak self] in
            guard let self, !self.done else { return }
            self.fail(context, "no PROXY protocol header within the login timeout")
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return context.fireChannelRead(data) }
        var chunk = unwrapInboundIn(data)
        buffered.writeBuffer(&chunk)
        switch ProxyProtocol.parse(buffered) {
        case .incomplete:
            if buffered.readableBytes > 16 + ProxyProtocol.v2MaximumBody {
                fail(context, "PROXY protocol header longer than allowed")
            }
        case .invalid(let reason):
            fail(context, reason)
        case .header(let endpoints, let length):
            done = true
            deadline?.cancel()
            buffered.moveReaderIndex(forwardBy: length)
            let rest = buffered
            buffered = ByteBuffer()
            announced(endpoints)
            context.fireChannelActive()
            if rest.readableBytes > 0 {
                context.fireChannelRead(wrapInboundOut(rest))
                context.fireChannelReadComplete()
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        // the handlers after this one never saw the connection open: they do not see it close
        if done { context.fireChannelInactive() }
    }

    private func fail(_ context: ChannelHandlerContext, _ reason: String) {
        done = true
        deadline?.cancel()
        var logger = logger
        logger[metadataKey: "client"] = "\(context.channel.remoteAddress.map { "\($0)" } ?? "?")"
        logger.warning("closing: \(reason) (the client's network is in --proxy-protocol-networks, which requires one)")
        context.close(promise: nil)
    }
}
