import Atomics
import NIOCore
import NIOHTTP1

/// `GET /metrics` on `--metrics-address`: the Prometheus text exposition. Anything else is 404
/// (405 for a method other than GET or HEAD on /metrics).
///
/// A scraper's connection costs little and cannot be made to cost more: at most `Limits.connections`
/// at once (more are closed at accept); a request must arrive whole within `Limits.requestTime` of
/// the connection's start or of the previous response (an idle or trickling client is closed);
/// and a response is not made while the previous one still waits to be written (pipelined
/// requests from a client that does not read stop being read, instead of piling up responses).
final class MetricsHTTPHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// What every connection of one metrics listener shares.
    final class Limits: Sendable {
        let connections: Int
        let requestTime: TimeAmount
        private let open = ManagedAtomic(0)

        init(connections: Int = 64, requestTime: TimeAmount = .seconds(10)) {
            self.connections = connections
            self.requestTime = requestTime
        }

        /// Counts a new connection: false (nothing counted) when `connections` are open.
        func admit() -> Bool {
            while true {
                let n = open.load(ordering: .relaxed)
                guard n < connections else { return false }
                if open.compareExchange(expected: n, desired: n + 1, ordering: .relaxed).exchanged { return true }
            }
        }

        func release() { open.wrappingDecrement(ordering: .relaxed) }
    }

    private let exporter: MetricsExporter
    private let limits: Limits
    private var head: HTTPRequestHead?
    /// A whole request waiting for the previous response to be written.
    private var waiting: HTTPRequestHead?
    private var deadline: Scheduled<Void>?
    private var readPending = false
    private var released = false

    init(exporter: MetricsExporter, limits: Limits) {
        self.exporter = exporter
        self.limits = limits
    }

    func handlerAdded(context: ChannelHandlerContext) {
        armDeadline(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        if !released {
            released = true
            limits.release()
        }
    }

    /// Closes the connection unless a whole request arrives in time.
    private func armDeadline(_ context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: limits.requestTime) {
            context.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            head = request
        case .body:
            break  // a scrape has no body; whatever comes is ignored
        case .end:
            guard let request = head else { return }
            head = nil
            deadline?.cancel()
            deadline = nil
            if context.channel.isWritable {
                respond(to: request, context: context)
            } else {
                waiting = request
            }
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            if let request = waiting {
                waiting = nil
                respond(to: request, context: context)
            }
            if readPending && waiting == nil {
                readPending = false
                context.read()
            }
        }
        context.fireChannelWritabilityChanged()
    }

    /// Reads stop while a response waits to be written or a request waits for its response.
    func read(context: ChannelHandlerContext) {
        if waiting != nil || !context.channel.isWritable {
            readPending = true
        } else {
            context.read()
        }
    }

    private func respond(to request: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.uri
        var status = HTTPResponseStatus.ok
        var body = ByteBuffer()
        var headers = HTTPHeaders()
        if path == "/metrics" {
            if request.method == .GET || request.method == .HEAD {
                let bytes = exporter.scrape()
                if request.method == .GET { body.writeBytes(bytes) }
                headers.add(name: "Content-Type", value: "text/plain; version=0.0.4; charset=utf-8")
                headers.add(name: "Content-Length", value: "\(bytes.count)")
            } else {
                status = .methodNotAllowed
                headers.add(name: "Allow", value: "GET, HEAD")
            }
        } else {
            status = .notFound
        }
        if status != .ok {
            body.writeString("\(status.code) \(status.reasonPhrase): MoonProxy's metrics are at /metrics\n")
            headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
            headers.add(name: "Content-Length", value: "\(body.readableBytes)")
        }
        let keepAlive = request.isKeepAlive
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
        if body.readableBytes > 0 { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            done.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        } else {
            armDeadline(context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
