import NIOCore

/// The backend side of a proxied connection: passes bytes and events to the client's handler,
/// which owns the connection's state, and reads from the backend only while the client keeps up.
final class BackendChannelHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Set to nil once the client side is gone, so that late events go nowhere.
    var owner: ClientChannelHandler?
    private(set) var context: ChannelHandlerContext?
    private var readsPaused = false
    private var readPending = false

    init(owner: ClientChannelHandler) {
        self.owner = owner
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        owner?.backendDataReceived(self.unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        owner?.backendReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        owner?.backendClosed()
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        owner?.backendWritabilityChanged(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        owner?.backendErrorCaught(error)
        context.close(promise: nil)
    }

    // MARK: backpressure

    func read(context: ChannelHandlerContext) {
        if readsPaused {
            readPending = true
        } else {
            context.read()
        }
    }

    func pauseReads() {
        readsPaused = true
    }

    func resumeReads() {
        guard readsPaused else { return }
        readsPaused = false
        if readPending, let context {
            readPending = false
            context.read()
        }
    }

    // MARK: writing

    /// Queues bytes for the backend; the client handler flushes once per read cycle.
    func write(_ buffer: ByteBuffer) {
        guard let context else { return }
        context.write(self.wrapOutboundOut(buffer), promise: nil)
    }

    func flush() {
        context?.flush()
    }

    var isWritable: Bool { context?.channel.isWritable ?? true }

    func close() {
        context?.close(promise: nil)
    }
}
