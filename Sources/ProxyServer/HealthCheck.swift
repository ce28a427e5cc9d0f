import Logging
import MySQLWire
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import ProxyScripting

/// Active health checks (`--proxy-backend-check-interval`, with `--proxy-backend-check-user` and
/// `--proxy-backend-check-password`): every interval each backend gets a connection that logs in
/// with the check account, asks `SELECT @@read_only` and quits with COM_QUIT, as ProxySQL's and
/// MaxScale's monitors do. The answer decides the backend's state (up, or down with the reason
/// logged once) and its type (a read-only server serves as RO, a writable one as RW). A probe
/// always ends its login one way or the other, so the server never counts it in
/// `Aborted_connects` (which would get the proxy's host blocked past `max_connect_errors`).
///
/// The login goes over TLS whenever the server offers it and `--proxy-backend-ssl` is not off
/// (so a check account created `REQUIRE SSL` works, and the check proves the TLS path clients
/// take), with the backend side's CA, client certificate and verification; under `required` and
/// the verifying modes a server that offers no TLS is down, as it is for clients.
final class HealthChecker: Sendable {
    struct Settings: Sendable {
        var interval: TimeAmount
        var user: String
        var password: String
        var timeout: TimeAmount
    }

    private let settings: Settings
    private let backends: BackendPool
    private let group: EventLoopGroup
    private let logger: Logger
    private let task = NIOLockedValueBox<RepeatedTask?>(nil)
    private let metrics: MetricsExporter?
    private let tls: TLSContexts?

    init(settings: Settings, backends: BackendPool, group: EventLoopGroup, logger: Logger, metrics: MetricsExporter? = nil,
         tls: TLSContexts? = nil) {
        self.metrics = metrics
        self.tls = tls
        self.settings = settings
        self.backends = backends
        self.group = group
        self.logger = logger
    }

    func start() {
        let loop = group.next()
        let repeated = loop.scheduleRepeatedAsyncTask(initialDelay: .zero, delay: settings.interval) { [self] _ in
            let probes = backends.snapshot().map { backend in
                probe(backend).map { (backend, $0) }
            }
            return EventLoopFuture.whenAllComplete(probes, on: loop).map { results in
                for case .success(let (backend, outcome)) in results { self.apply(outcome, to: backend) }
            }
        }
        task.withLockedValue { $0 = repeated }
    }

    func stop() {
        task.withLockedValue { $0?.cancel(); $0 = nil }
    }

    enum Outcome: Sendable {
        case up(readOnly: Bool)
        case down(String)
    }

    private func apply(_ outcome: Outcome, to backend: BackendInfo) {
        if case .up = outcome {
            metrics?.checkCompleted(backend: backend.address, up: true)
        } else {
            metrics?.checkCompleted(backend: backend.address, up: false)
        }
        switch outcome {
        case .up(let readOnly):
            let type: BackendType = readOnly ? .readOnly : .readWrite
            if backend.state == .down || backend.state == .unknown {
                logger.notice("backend \(backend.address) is up (health check; \(readOnly ? "read-only" : "writable"))")
            }
            if backend.type != type {
                logger.notice("backend \(backend.address) is \(readOnly ? "read-only now: serving as ro" : "writable now: serving as rw")")
            }
            backends.checked(backend.index, up: true, type: type)
        case .down(let reason):
            if backend.state != .down {
                logger.warning("backend \(backend.address) is down (health check): \(reason)")
            }
            backends.checked(backend.index, up: false, type: nil)
        }
    }

    private func probe(_ backend: BackendInfo) -> EventLoopFuture<Outcome> {
        let loop = group.next()
        let promise = loop.makePromise(of: Outcome.self)
        let handler = HealthProbeHandler(user: settings.user, password: settings.password, promise: promise,
                                         tls: tlsPlan(for: backend.address))
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(settings.timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
            }
        let connect: EventLoopFuture<Channel>
        switch backend.address {
        case .tcp(let host, let port): connect = bootstrap.connect(host: host, port: port)
        case .unix(let path): connect = bootstrap.connect(unixDomainSocketPath: path)
        }
        // everything below runs on `loop`, the probe's channel's, as the handler does
        connect.whenComplete { result in
            switch result {
            case .failure(let error):
                handler.conclude(.down("cannot connect: \(error)"))
            case .success(let channel):
                // a probe that hangs counts as down; its connection is closed
                let timer = loop.scheduleTask(in: self.settings.timeout) {
                    handler.conclude(.down("no answer within \(self.settings.timeout.nanoseconds / 1_000_000) ms"))
                    channel.close(promise: nil)
                }
                promise.futureResult.whenComplete { _ in timer.cancel() }
            }
        }
        return promise.futureResult
    }
}

extension HealthChecker {
    /// How a probe of `address` may turn to TLS: nil when it stays in plaintext.
    func tlsPlan(for address: ProxyAddress) -> HealthProbeHandler.TLSPlan? {
        guard let tls, tls.backend.mode != .off else { return nil }
        // TLS when offered; required where even a plaintext client's link must be TLS
        let required = tls.backend.mode.wantsTLS(clientUsesTLS: false, serverOffers: false) == nil
        let context: NIOSSLContext
        do {
            context = try tls.forBackend(clientVersion: nil)
        } catch {
            // the backend side cannot do TLS (its CA or key does not load): a mode that needs it
            // makes every check fail with the reason, as it does every client's connection
            return required ? HealthProbeHandler.TLSPlan(context: nil, hostname: nil, required: true, problem: "\(error)") : nil
        }
        var hostname: String? = nil
        if case .tcp(let host, _) = address, (try? SocketAddress(ipAddress: host, port: 0)) == nil {
            hostname = host  // SNI, and the name verify-identity checks
        }
        return HealthProbeHandler.TLSPlan(context: context, hostname: hostname, required: required, problem: nil)
    }
}

/// One probe: greeting, login (over TLS if the plan says so; mysql_native_password, with an auth
/// switch to it if asked), `SELECT @@read_only`, COM_QUIT.
final class HealthProbeHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum Step { case greeting, login, query, done }
    private let user: String
    private let password: String
    private let promise: EventLoopPromise<HealthChecker.Outcome>
    private var step = Step.greeting
    private var collector = PacketCollector()
    private var sequence: UInt8 = 0
    private var queryPackets: [ByteBuffer] = []
    private var capabilities: CapabilityFlags = []
    private let tls: TLSPlan?

    struct TLSPlan {
        var context: NIOSSLContext?
        var hostname: String?
        /// A server that does not offer TLS is down.
        var required: Bool
        /// Why the context could not be made.
        var problem: String?
    }

    init(user: String, password: String, promise: EventLoopPromise<HealthChecker.Outcome>, tls: TLSPlan? = nil) {
        self.user = user
        self.password = password
        self.promise = promise
        self.tls = tls
        collector.maximumPacketLength = 1 << 20
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        collector.append(unwrapInboundIn(data))
        do {
            while step != .done, let c = try collector.next() {
                sequence = c.packet.sequenceID &+ 1
                try handle(c.packet.payload, context: context)
            }
        } catch {
            finish(.down("malformed answer: \(error)"), context: context, quit: false)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        conclude(.down("the server closed the connection during the check"))
        context.fireChannelInactive()
    }

    /// The probe's verdict, once (the first of the answer, a close, a failed connect, the timeout).
    func conclude(_ outcome: HealthChecker.Outcome) {
        guard step != .done else { return }
        step = .done
        promise.succeed(outcome)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        finish(.down(TLSFailure.isFailure(error) ? "TLS with the backend failed: \(TLSFailure.describe(error))" : "\(error)"),
               context: context, quit: false)
    }

    private func handle(_ payload: ByteBuffer, context: ChannelHandlerContext) throws {
        let first = payload.getInteger(at: payload.readerIndex, as: UInt8.self) ?? 0
        if first == 0xFF, let err = try? ERRPacket(parsing: payload) {
            // 1040 too many connections, 1129 host blocked, 1045 access denied, ...
            return finish(.down("\(err.code) \(err.message)"), context: context, quit: step == .query)
        }
        switch step {
        case .greeting:
            let greeting = try HandshakeV10(parsing: payload)
            capabilities = greeting.capabilities.intersection([.longPassword, .protocol41, .secureConnection, .pluginAuth, .transactions])
            let useTLS = tls != nil && greeting.capabilities.contains(.ssl)
            if let tls, tls.required {
                if let problem = tls.problem { return finish(.down("TLS to the backend cannot be set up: \(problem)"), context: context, quit: false) }
                if !useTLS { return finish(.down("the server does not offer TLS, which --proxy-backend-ssl requires"), context: context, quit: false) }
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
                    return finish(.down("the check account uses \(request.pluginName); it needs mysql_native_password"), context: context, quit: false)
                }
                send(ByteBuffer(bytes: answer(request.pluginData)), context: context)
                return
            }
            guard first == 0x00 else { return finish(.down("unexpected answer to the login"), context: context, quit: false) }
            sequence = 0
            send(ByteBuffer(bytes: [CommandCode.query.rawValue] + Array("SELECT @@read_only".utf8)), context: context)
            step = .query
        case .query:
            // without CLIENT_DEPRECATE_EOF: column count, column definition, EOF, the row, EOF
            queryPackets.append(payload)
            guard queryPackets.count == 5 else { return }
            var cursor = queryPackets[3]
            let value = try cursor.readMySQLLengthEncodedString("read_only")
            finish(.up(readOnly: value != "0"), context: context, quit: true)
        case .done:
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

    private func finish(_ outcome: HealthChecker.Outcome, context: ChannelHandlerContext, quit: Bool) {
        guard step != .done else { return }
        conclude(outcome)
        if quit {
            sequence = 0
            send(ByteBuffer(bytes: [CommandCode.quit.rawValue]), context: context)
        }
        context.close(promise: nil)
    }
}
