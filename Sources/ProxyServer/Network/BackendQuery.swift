import MySQLWire
import NIOCore
import NIOPosix
import NIOSSL
import ProxyCore

/// One query on a server connection of the proxy's own, with an account of the operator's:
/// greeting, login (over TLS if the plan says so; mysql_native_password, with an auth switch to it
/// if asked), one text query, its rows, COM_QUIT. The health checks ask `SELECT @@read_only` so;
/// the account loader reads `mysql.global_priv`. The login always ends one way or the other, so
/// the server never counts the connection in `Aborted_connects` (which would get the proxy's host
/// blocked past `max_connect_errors`).
enum BackendQuery {
    enum Outcome: Sendable {
        /// The rows, each column's text or nil for NULL, and the server's greeting.
        case rows([[String?]], greeting: HandshakeV10?)
        case failed(String)
    }

    struct TLSPlan {
        var context: NIOSSLContext?
        var hostname: String?
        /// A server that does not offer TLS fails the query.
        var required: Bool
        /// Why the context could not be made.
        var problem: String?
    }

    /// More rows or bytes than this fail the query: what it reads is held in memory.
    static let rowLimit = 100_000
    static let byteLimit = 64 << 20

    static func run(_ query: String, on address: ProxyAddress, user: String, password: String, tls: TLSPlan?,
                    timeout: TimeAmount, group: EventLoopGroup) -> EventLoopFuture<Outcome> {
        open(query, on: address, user: user, password: password, tls: tls, timeout: timeout, group: group, keepOpen: false).outcome
    }

    /// As `run`, and with `keepOpen` the connection stays logged in after the rows for more
    /// queries (`BackendQueryHandler.query`), until `close()` or the server closes it.
    static func open(_ query: String, on address: ProxyAddress, user: String, password: String, tls: TLSPlan?,
                     timeout: TimeAmount, group: EventLoopGroup, keepOpen: Bool) -> (outcome: EventLoopFuture<Outcome>, handler: BackendQueryHandler) {
        let loop = group.next()
        let promise = loop.makePromise(of: Outcome.self)
        let handler = BackendQueryHandler(query: query, user: user, password: password, promise: promise, tls: tls)
        handler.keepOpen = keepOpen
        handler.timeout = timeout
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
            }
        let connect: EventLoopFuture<Channel>
        switch address {
        case .tcp(let host, let port): connect = bootstrap.connect(host: host, port: port)
        case .unix(let path): connect = bootstrap.connect(unixDomainSocketPath: path)
        }
        // everything below runs on `loop`, the query's channel's, as the handler does
        connect.whenComplete { result in
            switch result {
            case .failure(let error):
                handler.conclude(.failed("cannot connect: \(error)"))
            case .success(let channel):
                // a query that hangs fails; its connection is closed
                let timer = loop.scheduleTask(in: timeout) {
                    handler.conclude(.failed("no answer within \(timeout.nanoseconds / 1_000_000) ms"))
                    channel.close(promise: nil)
                }
                promise.futureResult.whenComplete { _ in timer.cancel() }
            }
        }
        return (promise.futureResult, handler)
    }

    /// How a connection of the proxy's own to `address` may turn to TLS: nil when it stays in
    /// plaintext. TLS when offered; required where even a plaintext client's link must be TLS.
    static func tlsPlan(for address: ProxyAddress, tls: TLSContexts?) -> TLSPlan? {
        guard let tls, tls.backend.mode != .off else { return nil }
        let required = tls.backend.mode.wantsTLS(clientUsesTLS: false, serverOffers: false) == nil
        let context: NIOSSLContext
        do {
            context = try tls.forBackend(clientVersion: nil)
        } catch {
            // the backend side cannot do TLS (its CA or key does not load): a mode that needs it
            // makes every query fail with the reason, as it does every client's connection
            return required ? TLSPlan(context: nil, hostname: nil, required: true, problem: "\(error)") : nil
        }
        var hostname: String? = nil
        if case .tcp(let host, _) = address, (try? SocketAddress(ipAddress: host, port: 0)) == nil {
            hostname = host  // SNI, and the name verify-identity checks
        }
        return TLSPlan(context: context, hostname: hostname, required: required, problem: nil)
    }
}

final class BackendQueryHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum Step { case greeting, login, columns, columnDefinitions, rows, idle, done }
    private let query: String
    private let user: String
    private let password: String
    private var promise: EventLoopPromise<BackendQuery.Outcome>
    /// Stay logged in after the rows (`query` runs the next one).
    var keepOpen = false
    var timeout = TimeAmount.seconds(5)
    private var context: ChannelHandlerContext?
    private var step = Step.greeting
    private var collector = PacketCollector()
    private var sequence: UInt8 = 0
    private var columns = 0
    private var definitionsLeft = 0
    private var rows: [[String?]] = []
    private var rowBytes = 0
    private var capabilities: CapabilityFlags = []
    private var greeting: HandshakeV10?
    private let tls: BackendQuery.TLSPlan?

    init(query: String, user: String, password: String, promise: EventLoopPromise<BackendQuery.Outcome>, tls: BackendQuery.TLSPlan? = nil) {
        self.query = query
        self.user = user
        self.password = password
        self.promise = promise
        self.tls = tls
        collector.maximumPacketLength = 1 << 20
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// Whether `query` may run: logged in, nothing running, the connection open.
    var isIdle: Bool { step == .idle && context != nil }

    /// Runs another query on the kept connection (on its event loop); failed when it is not idle.
    func query(_ sql: String) -> EventLoopFuture<BackendQuery.Outcome> {
        guard let context, step == .idle else {
            return (context?.eventLoop ?? promise.futureResult.eventLoop).makeSucceededFuture(.failed("the connection is not idle"))
        }
        promise = context.eventLoop.makePromise(of: BackendQuery.Outcome.self)
        rows = []
        rowBytes = 0
        sequence = 0
        step = .columns
        send(ByteBuffer(bytes: [CommandCode.query.rawValue] + Array(sql.utf8)), context: context)
        let timer = context.eventLoop.scheduleTask(in: timeout) { [self] in
            self.conclude(.failed("no answer within \(self.timeout.nanoseconds / 1_000_000) ms"))
            context.close(promise: nil)
        }
        promise.futureResult.whenComplete { _ in timer.cancel() }
        return promise.futureResult
    }

    /// Ends a kept connection: COM_QUIT, then the close.
    func close() {
        guard let context else { return }
        if step == .idle {
            sequence = 0
            send(ByteBuffer(bytes: [CommandCode.quit.rawValue]), context: context)
        }
        step = .done
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        collector.append(unwrapInboundIn(data))
        do {
            while step != .done && step != .idle, let c = try collector.next() {
                sequence = c.packet.sequenceID &+ 1
                try handle(c.packet.payload, context: context)
            }
        } catch {
            finish(.failed("malformed answer: \(error)"), context: context, quit: false)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        conclude(.failed("the server closed the connection"))
        context.fireChannelInactive()
    }

    /// The outcome, once (the first of the answer, a close, a failed connect, the timeout).
    func conclude(_ outcome: BackendQuery.Outcome) {
        guard step != .done && step != .idle else { return }
        step = .done
        promise.succeed(outcome)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        finish(.failed(TLSFailure.isFailure(error) ? "TLS with the backend failed: \(TLSFailure.describe(error))" : "\(error)"),
               context: context, quit: false)
    }

    private func handle(_ payload: ByteBuffer, context: ChannelHandlerContext) throws {
        let first = payload.getInteger(at: payload.readerIndex, as: UInt8.self) ?? 0
        if first == 0xFF, let err = try? ERRPacket(parsing: payload) {
            // 1040 too many connections, 1129 host blocked, 1045 access denied, 1142 no SELECT ...
            return finish(.failed("\(err.code) \(err.message)"), context: context, quit: step != .greeting && step != .login)
        }
        switch step {
        case .greeting:
            let greeting = try HandshakeV10(parsing: payload)
            self.greeting = greeting
            capabilities = greeting.capabilities.intersection([.longPassword, .protocol41, .secureConnection, .pluginAuth, .transactions])
            let useTLS = tls != nil && greeting.capabilities.contains(.ssl)
            if let tls, tls.required {
                if let problem = tls.problem { return finish(.failed("TLS to the backend cannot be set up: \(problem)"), context: context, quit: false) }
                if !useTLS { return finish(.failed("the server does not offer TLS, which --proxy-backend-ssl requires"), context: context, quit: false) }
            }
            if useTLS { capabilities.insert(.ssl) }
            let response = HandshakeResponse41(capabilities: capabilities, username: user,
                                               authResponse: answer(greeting.authPluginData),
                                               authPluginName: capabilities.contains(.pluginAuth) ? "mysql_native_password" : nil)
            var out = ByteBuffer()
            response.write(to: &out)
            if useTLS, let tls, let sslContext = tls.context {
                // the SSLRequest in plaintext, then the TLS handler under this one: the response
                // waits in it until the handshake is done
                send(try HandshakeResponse41.sslRequest(for: out), context: context)
                try context.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: tls.hostname),
                                                               position: .first)
            }
            send(out, context: context)
            step = .login
        case .login:
            if first == 0xFE {
                let request = try AuthSwitchRequest(parsing: payload)
                guard request.pluginName == "mysql_native_password" else {
                    return finish(.failed("the account uses \(request.pluginName); it needs mysql_native_password"), context: context, quit: false)
                }
                send(ByteBuffer(bytes: answer(request.pluginData)), context: context)
                return
            }
            guard first == 0x00 else { return finish(.failed("unexpected answer to the login"), context: context, quit: false) }
            sequence = 0
            send(ByteBuffer(bytes: [CommandCode.query.rawValue] + Array(query.utf8)), context: context)
            step = .columns
        case .columns:
            // without CLIENT_DEPRECATE_EOF: column count, definitions, EOF, rows, EOF
            guard first != 0x00 else { return finish(.rows([], greeting: greeting), context: context, quit: true) }  // no result set
            var cursor = payload
            let count = try cursor.readMySQLLengthEncodedInteger("column count")
            guard count > 0, count <= 4096 else {
                return finish(.failed("unexpected answer to the query"), context: context, quit: true)
            }
            columns = Int(count)
            definitionsLeft = columns + 1  // and the EOF behind them
            step = .columnDefinitions
        case .columnDefinitions:
            definitionsLeft -= 1
            if definitionsLeft == 0 { step = .rows }
        case .rows:
            if first == 0xFE && payload.readableBytes < 9 { return finish(.rows(rows, greeting: greeting), context: context, quit: true) }
            rowBytes += payload.readableBytes
            guard rows.count < BackendQuery.rowLimit, rowBytes <= BackendQuery.byteLimit else {
                return finish(.failed("more than \(BackendQuery.rowLimit) rows or \(BackendQuery.byteLimit >> 20) MiB"), context: context, quit: false)
            }
            var cursor = payload
            var row: [String?] = []
            row.reserveCapacity(columns)
            for i in 0..<columns {
                if cursor.getInteger(at: cursor.readerIndex, as: UInt8.self) == 0xFB {
                    cursor.moveReaderIndex(forwardBy: 1)
                    row.append(nil)
                } else {
                    row.append(try cursor.readMySQLLengthEncodedString("column \(i + 1)"))
                }
            }
            rows.append(row)
        case .done, .idle:
            break
        }
    }

    private func answer(_ challenge: [UInt8]) -> [UInt8] {
        guard !password.isEmpty else { return [] }
        let scramble = Array(challenge.prefix(20))
        return NativePassword.scramble(challenge: scramble, hashedPassword: NativePassword.hash(Array(password.utf8)))
    }

    private func send(_ payload: ByteBuffer, context: ChannelHandlerContext) {
        var out = ByteBuffer()
        out.writeMySQLPacket(payload, sequenceID: &sequence)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    private func finish(_ outcome: BackendQuery.Outcome, context: ChannelHandlerContext, quit: Bool) {
        guard step != .done && step != .idle else { return }
        if keepOpen, quit, case .rows = outcome {
            // logged in and answered: kept for the next query
            step = .idle
            promise.succeed(outcome)
            return
        }
        conclude(outcome)
        if quit {
            sequence = 0
            send(ByteBuffer(bytes: [CommandCode.quit.rawValue]), context: context)
        }
        context.close(promise: nil)
    }
}
