import NIOCore
import NIOHTTP1

/// `GET /metrics` on `--metrics-address`: the Prometheus text exposition. Anything else is 404
/// (405 for a method other than GET or HEAD on /metrics).
final class MetricsHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let exporter: MetricsExporter
    private var head: HTTPRequestHead?

    init(exporter: MetricsExporter) {
        self.exporter = exporter
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
            respond(to: request, context: context)
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
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
