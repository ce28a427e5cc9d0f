import NIOCore

/// The cipher suite a TLS link negotiated, read from the ServerHello as it passes (swift-nio-ssl
/// does not tell it): inbound on a backend link, where the server sends it, and outbound on a
/// client link, where the proxy does. The ServerHello is the first handshake record either way
/// and travels in clear in TLS 1.2 and 1.3 alike. The handler removes itself once it has it.
final class ServerHelloSniffer: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Direction { case inbound, outbound }

    private let direction: Direction
    private let found: (String) -> Void
    private var seen = ByteBuffer()
    private var done = false

    init(watching direction: Direction, found: @escaping (String) -> Void) {
        self.direction = direction
        self.found = found
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        context.fireChannelRead(data)
        if direction == .inbound { look(at: bytes, context: context) }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let bytes = unwrapOutboundIn(data)
        context.write(data, promise: promise)
        if direction == .outbound { look(at: bytes, context: context) }
    }

    private func look(at bytes: ByteBuffer, context: ChannelHandlerContext) {
        guard !done else { return }
        var b = bytes
        seen.writeBuffer(&b)
        switch Self.cipherSuite(inServerHello: seen) {
        case .some(.some(let code)):
            finish(Self.name(ofCipherSuite: code), context: context)
        case .some(.none):
            finish(nil, context: context)  // not a ServerHello: give up
        case .none:
            if seen.readableBytes > 4096 { finish(nil, context: context) }
        }
    }

    func flush(context: ChannelHandlerContext) {
        context.flush()
        // Outbound, the handler leaves after the flush that follows the ServerHello's write: the
        // TLS handler flushes through this context right after writing.
        if done && direction == .outbound { context.pipeline.syncOperations.removeHandler(context: context, promise: nil) }
    }

    private func finish(_ name: String?, context: ChannelHandlerContext) {
        done = true
        seen = ByteBuffer()
        if let name { found(name) }
        if direction == .inbound { context.pipeline.syncOperations.removeHandler(context: context, promise: nil) }
    }

    /// The cipher suite of the ServerHello at the start of `bytes`: nil while more bytes are
    /// needed, .some(nil) when they are not a ServerHello.
    static func cipherSuite(inServerHello bytes: ByteBuffer) -> UInt16?? {
        let base = bytes.readerIndex
        func byte(_ i: Int) -> UInt8? { bytes.getInteger(at: base + i, as: UInt8.self) }
        guard let contentType = byte(0) else { return nil }
        guard contentType == 0x16 else { return .some(nil) }  // a handshake record
        guard let handshakeType = byte(5) else { return nil }
        guard handshakeType == 0x02 else { return .some(nil) }  // ServerHello
        // record header (5), handshake header (4), legacy_version (2), random (32), session id
        guard let sessionIDLength = byte(5 + 4 + 2 + 32) else { return nil }
        let at = 5 + 4 + 2 + 32 + 1 + Int(sessionIDLength)
        guard let hi = byte(at), let lo = byte(at + 1) else { return nil }
        return .some(UInt16(hi) << 8 | UInt16(lo))
    }

    /// The suite's name as OpenSSL (and so MariaDB's `Ssl_cipher`) spells it.
    static func name(ofCipherSuite code: UInt16) -> String {
        switch code {
        case 0x1301: return "TLS_AES_128_GCM_SHA256"
        case 0x1302: return "TLS_AES_256_GCM_SHA384"
        case 0x1303: return "TLS_CHACHA20_POLY1305_SHA256"
        case 0xC02B: return "ECDHE-ECDSA-AES128-GCM-SHA256"
        case 0xC02C: return "ECDHE-ECDSA-AES256-GCM-SHA384"
        case 0xC02F: return "ECDHE-RSA-AES128-GCM-SHA256"
        case 0xC030: return "ECDHE-RSA-AES256-GCM-SHA384"
        case 0xCCA8: return "ECDHE-RSA-CHACHA20-POLY1305"
        case 0xCCA9: return "ECDHE-ECDSA-CHACHA20-POLY1305"
        case 0xC009: return "ECDHE-ECDSA-AES128-SHA"
        case 0xC00A: return "ECDHE-ECDSA-AES256-SHA"
        case 0xC013: return "ECDHE-RSA-AES128-SHA"
        case 0xC014: return "ECDHE-RSA-AES256-SHA"
        case 0x009C: return "AES128-GCM-SHA256"
        case 0x009D: return "AES256-GCM-SHA384"
        case 0x002F: return "AES128-SHA"
        case 0x0035: return "AES256-SHA"
        default:
            let hex = String(code, radix: 16, uppercase: true)
            return "0x" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex
        }
    }
}
