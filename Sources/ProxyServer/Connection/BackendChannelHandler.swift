import NIOCore
import MySQLWire
import NIOSSL
import NIOTLS
import ProxyCore

/// The backend side of a proxied connection: passes bytes and events to the client's handler,
/// which owns the connection's state, and reads from the backend only while the client keeps up.
///
/// It is an inbound handler only, so that read requests do not pass through it on every read;
/// backpressure switches the channel's autoRead option instead, which happens rarely.
final class BackendChannelHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Set to nil once the client side is gone, so that late events go nowhere.
    var owner: ClientChannelHandler?
    /// The pool holding this connection while no client uses it.
    weak var parkedIn: ServerConnectionPool?
    /// The core pool holding it (`--proxy-auth=proxy`), and who the proxy logged it in as.
    weak var corePool: CorePool?
    /// Multiplexing: the pool that counts this connection against its login's cap.
    weak var countingPool: CorePool?
    var countedKey: CorePool.Key?
    var serverLogin: ConnectionMachine.ServerLogin?
    var serverChallenge: [UInt8] = []
    /// The server's id for the connection, where the pool logged it in (else the session's greeting says).
    var serverThreadID: UInt32?
    /// When the connection was opened (its lifetime in the pool counts from it).
    var createdAt: NIODeadline?
    private(set) var context: ChannelHandlerContext?
    private var readsPaused = false
    /// The backend channel's writability, kept here so the hot path need not ask the channel.
    private(set) var isWritable = true

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
        if let owner {
            var data = self.unwrapInboundIn(data)
            if resetAnswer != nil {
                guard takeResetAnswer(&data, owner: owner) else { return }
            }
            owner.backendDataReceived(data)
        } else if let corePool {
            corePool.received(self, unwrapInboundIn(data))
        } else {
            parkedIn?.parkedConnectionEnded(self)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        owner?.backendReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        owner?.backendClosed()
        parkedIn?.parkedConnectionEnded(self)
        corePool?.ended(self)
        if let countedKey {
            countingPool?.connectionEnded(countedKey)
            self.countedKey = nil
        }
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event as? TLSUserEvent ?? .shutdownCompleted {
            owner?.backendTLSEstablished(tlsHandler?.tlsVersion, cipher: cipher)
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: TLS

    private var tlsHandler: NIOSSLClientHandler?
    /// Between the socket and the TLS handler: closes the socket under it.
    private var socketCloser: SocketCloser?
    /// The cipher suite the server chose (read from its ServerHello).
    private var cipher: String?

    /// Writes the SSLRequest in plaintext, then puts a TLS handler between this one and the
    /// socket: later writes wait in it until its handshake is done.
    func startTLS(request: ByteBuffer, context sslContext: NIOSSLContext, serverHostname: String?) throws {
        guard let context else { return }
        context.writeAndFlush(NIOAny(request), promise: nil)
        let handler = try NIOSSLClientHandler(context: sslContext, serverHostname: serverHostname)
        try context.pipeline.syncOperations.addHandler(handler, position: .first)
        tlsHandler = handler
        let closer = SocketCloser()
        try context.pipeline.syncOperations.addHandler(closer, position: .first)
        socketCloser = closer
        try context.pipeline.syncOperations.addHandler(ServerHelloSniffer(watching: .inbound) { [weak self] cipher in
            self?.cipher = cipher
        }, position: .first)
    }

    /// The login's OK came: the server's link speaks the compressed protocol from now on; `early`
    /// is what the server sent behind the OK, decompressed once this read cycle is over.
    func startCompression(_ algorithm: ProtocolCompression, early: ByteBuffer?) throws {
        guard let context else { return }
        let codec = try CompressionHandler(role: .client, compression: algorithm)
        try context.pipeline.syncOperations.addHandler(codec, position: .before(self))
        if let early {
            context.eventLoop.assumeIsolated().execute { codec.receiveEarly(early) }
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        isWritable = context.channel.isWritable
        owner?.backendWritabilityChanged(isWritable)
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        owner?.backendErrorCaught(error)
        context.close(promise: nil)
    }

    // MARK: session reset

    /// Bytes of the answer to COM_RESET_CONNECTION (and COM_INIT_DB), while it is awaited.
    private var resetAnswer: ByteBuffer?
    /// The OKs still to come of it.
    private var resetAnswersLeft = 0

    /// The part of the reset's answer read so far, when the answer is still to come, and how many
    /// OKs it still has: the caller takes it over (the core pool, when the client quit before it came).
    func takeOverResetAnswer() -> (ByteBuffer, oks: Int)? {
        defer { resetAnswer = nil }
        if heldReset != nil {
            // never sent: no answer comes (the pool's own reset follows)
            heldReset = nil
            resetAnswersLeft = 0
            return nil
        }
        return resetAnswer.map { ($0, resetAnswersLeft) }
    }

    /// A reset written with the owner's next bytes (`resetSession(flushNow: false)`), not yet.
    private var heldReset: ByteBuffer?

    /// Clears the server-side session of this (pooled) connection before another client session
    /// uses it. The one-packet answer is taken here, before anything reaches the owner; what the
    /// owner writes next follows the reset on the wire.
    /// `flushNow` false: the reset waits to go out with what the owner writes next (one system
    /// call for both, and one turn of the server's: the client's first command, behind it);
    /// a connection given back before that never sends it.
    /// `database`: the reset keeps the connection's schema; a session that changed it is followed
    /// by COM_INIT_DB of the login's (two OKs then).
    func resetSession(flushNow: Bool = true, database: String? = nil) {
        let packet = ServerLoginReset.resetPackets(database: database)
        resetAnswersLeft = database == nil ? 1 : 2
        resetAnswer = ByteBuffer()
        heldReset = nil  // (one reset at a time: this one replaces a held one)
        guard !flushNow else { return writeAndFlush(packet) }
        heldReset = packet
    }

    /// Takes the reset's answer off the front of `data`: false while it is incomplete or when it
    /// failed (the owner is told), else `data` is what follows it.
    private func takeResetAnswer(_ data: inout ByteBuffer, owner: ClientChannelHandler) -> Bool {
        guard var pending = resetAnswer else { return true }
        pending.writeBuffer(&data)
        while resetAnswersLeft > 0 {
            guard let header = PacketHeader.peek(pending, at: pending.readerIndex),
                  pending.readableBytes >= PacketHeader.size + header.payloadLength else {
                resetAnswer = pending
                return false
            }
            let first = pending.getInteger(at: pending.readerIndex + PacketHeader.size, as: UInt8.self)
            let answer = pending.readSlice(length: PacketHeader.size + header.payloadLength)
            resetAnswersLeft -= 1
            guard first == 0x00 else {
                resetAnswer = nil
                resetAnswersLeft = 0
                var text = "no OK"
                if let payload = answer?.getSlice(at: PacketHeader.size, length: header.payloadLength),
                   let err = try? ERRPacket(parsing: payload) {
                    text = "\(err.code) \(err.message)"
                }
                owner.backendResetFailed(text)
                return false
            }
        }
        resetAnswer = nil
        data = pending
        return data.readableBytes > 0
    }

    // MARK: backpressure

    /// Stops reading from the backend (the client is not keeping up) or starts again.
    func setReadsPaused(_ paused: Bool) {
        guard paused != readsPaused, let context else { return }
        readsPaused = paused
        try? context.channel.syncOptions?.setOption(.autoRead, value: !paused)
        // Turning autoRead on asks the socket, not the pipeline: a read request through the
        // pipeline lets handlers that hold bytes already read (decompression, TLS) pass them on,
        // or they would wait for bytes that may never come. Made once this call stack is done,
        // since what it delivers comes back here.
        if !paused { Self.requestRead(context) }
    }

    /// A read request through `context`'s pipeline, on the next turn of the event loop.
    static func requestRead(_ context: ChannelHandlerContext) {
        context.eventLoop.assumeIsolated().execute {
            guard context.channel.isActive, (try? context.channel.syncOptions?.getOption(.autoRead)) == true else { return }
            context.read()
        }
    }

    // MARK: writing

    private var flushPending = false

    /// Sends bytes to the backend. See `ChannelHandlerContext.forward` for when they are flushed.
    func write(_ buffer: ByteBuffer) {
        guard let context else { return }
        if let held = heldReset.take() { context.write(NIOAny(held), promise: nil) }
        context.forward(buffer, flushPending: &flushPending)
    }

    /// Sends bytes the proxy made, now.
    func writeAndFlush(_ buffer: ByteBuffer) {
        guard let context else { return }
        flushPending = false
        if let held = heldReset.take() { context.write(NIOAny(held), promise: nil) }
        context.writeAndFlush(NIOAny(buffer), promise: nil)
    }

    var localAddress: SocketAddress? { context?.channel.localAddress }
    var remoteAddress: SocketAddress? { context?.channel.remoteAddress }

    /// Flushes what `write` left queued, at the end of the client's read cycle.
    func flushIfPending() {
        guard flushPending, let context else { return }
        flushPending = false
        context.flush()
    }

    /// Ends a logged-in, idle server connection as a client would: COM_QUIT, then the close (the
    /// server counts no aborted client).
    func quit() {
        guard let context else { return }
        var packet = ByteBuffer()
        var seq: UInt8 = 0
        packet.writeMySQLPacket(ByteBuffer(bytes: [CommandCode.quit.rawValue]), sequenceID: &seq)
        context.writeAndFlush(NIOAny(packet)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    /// Closes the server connection. `abrupt` skips TLS's close_notify: a server running a query
    /// sees a connection that still has bytes to read (the alert) as alive, and goes on until the
    /// query ends, where a client that vanished directly is noticed at once.
    func close(abrupt: Bool = false) {
        if abrupt, let socketCloser {
            socketCloser.closeSocket()
        } else {
            context?.close(promise: nil)
        }
    }
}

/// Sits next to the socket, under the TLS handler, so that a close it makes does not go through TLS.
final class SocketCloser: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = ByteBuffer
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func closeSocket() {
        context?.close(promise: nil)
    }
}
