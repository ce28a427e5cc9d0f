#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import NIOPosix

/// Keeps a listener sane at the descriptor limit. Without it an `accept` that fails with EMFILE
/// is retried at once, forever (the pending connection stays readable): a busy loop, while the
/// clients waiting in the backlog get no answer at all.
///
/// The guard holds one spare descriptor. When accepting fails for want of descriptors it gives the
/// spare up and lets one accept through: that client gets the freed descriptor and an answer
/// (ERR 1040 "Too many connections" when its server connection cannot be opened either, see
/// `ClientChannelHandler`), and the next accept waits for the back-off, when the spare is taken
/// again if a descriptor has come free. So every waiting client is answered as descriptors come
/// free, and the listener costs nothing while none do.
final class AcceptGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = Channel
    typealias OutboundIn = Channel

    private var spare: CInt = AcceptGuard.openSpare()
    private var paused: Scheduled<Void>?
    private var readWanted = false
    private let backoff: TimeAmount
    private let onExhausted: (IOError) -> Void

    init(backoff: TimeAmount = .milliseconds(100), onExhausted: @escaping (IOError) -> Void) {
        self.backoff = backoff
        self.onExhausted = onExhausted
    }

    deinit {
        if spare >= 0 { Glibc.close(spare) }
    }

    private static func openSpare() -> CInt {
        open("/dev/null", O_RDONLY | O_CLOEXEC)
    }

    static func isExhaustion(_ error: Error) -> Bool {
        guard let io = error as? IOError else { return false }
        return [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(io.errnoCode)
    }

    /// A connect that failed for want of the proxy's own resources (NIO reports the errors of
    /// each address it tried inside one error).
    static func isExhaustion(connectError error: Error) -> Bool {
        if isExhaustion(error) { return true }
        guard let connection = error as? NIOConnectionError else { return false }
        return connection.connectionErrors.contains { isExhaustion($0.error) }
            || [connection.dnsAAAAError, connection.dnsAError].contains { $0.map { isExhaustion($0) } ?? false }
    }

    func read(context: ChannelHandlerContext) {
        guard paused == nil else {
            readWanted = true
            return
        }
        context.read()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let io = error as? IOError, Self.isExhaustion(io) else {
            context.fireErrorCaught(error)
            return
        }
        onExhausted(io)
        if spare >= 0 {
            // one more accept, with the spare's descriptor, so that the client waiting gets an answer
            Glibc.close(spare)
            spare = -1
            return
        }
        guard paused == nil else { return }
        paused = context.eventLoop.assumeIsolated().scheduleTask(in: backoff) { [self] in
            self.paused = nil
            if self.spare < 0 { self.spare = Self.openSpare() }
            if self.readWanted {
                self.readWanted = false
                context.read()
            }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        paused?.cancel()
        paused = nil
    }
}
