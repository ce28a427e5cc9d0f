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
        BackendQuery.run("SELECT @@read_only", on: backend.address, user: settings.user, password: settings.password,
                         tls: BackendQuery.tlsPlan(for: backend.address, tls: tls), timeout: settings.timeout, group: group)
            .map { outcome in
                switch outcome {
                case .rows(let rows, _):
                    guard let value = rows.first?.first else { return .down("no answer to SELECT @@read_only") }
                    return .up(readOnly: value != "0")
                case .failed(let reason):
                    return .down(reason)
                }
            }
    }
}
