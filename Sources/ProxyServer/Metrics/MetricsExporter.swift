import NIOConcurrencyHelpers
import Prometheus
import ProxyScripting

/// The proxy's state as Prometheus metrics (swift-prometheus formats them). Nothing on the path of
/// a packet touches these objects: a scrape reads the proxy's own counters and the backends'
/// state and brings the registry up to date, so the metrics cost one pass over a few dozen values
/// per scrape and nothing between scrapes.
final class MetricsExporter: Sendable {
    private let registry: PrometheusCollectorRegistry
    private let statistics: ProxyStatistics
    private let backends: BackendPool
    /// What the registry's counters were last brought up to (counters only ever go up).
    private let exported = NIOLockedValueBox<[String: Int]>([:])
    private let counters: [(ProxyStatistics.Counter, Counter)]
    private let activeConnections: Gauge

    init(statistics: ProxyStatistics, backends: BackendPool) {
        self.statistics = statistics
        self.backends = backends
        let registry = PrometheusCollectorRegistry()
        self.registry = registry
        func counter(_ name: String, _ labels: [(String, String)] = [], _ help: String) -> Counter {
            registry.makeCounter(name: name, labels: labels, help: help)
        }
        activeConnections = registry.makeGauge(name: "moonproxy_client_connections", labels: [],
                                               help: "Client connections open now")
        counters = [
            (.connectionsAccepted, counter("moonproxy_client_connections_accepted_total", [], "Client connections accepted")),
            (.connectionsRefused, counter("moonproxy_client_connections_refused_total", [],
                                          "Client connections refused by --max-connections or --max-connections-per-address")),
            (.commands, counter("moonproxy_commands_total", [], "Commands received from clients")),
            (.queries, counter("moonproxy_queries_total", [], "COM_QUERY commands received from clients")),
            (.bytesFromClients, counter("moonproxy_received_bytes_total", [("peer", "client")], "Bytes received")),
            (.bytesFromBackends, counter("moonproxy_received_bytes_total", [("peer", "backend")], "Bytes received")),
            (.clientProtocolErrors, counter("moonproxy_protocol_errors_total", [("peer", "client")],
                                            "Connections ended by a peer breaking the protocol (malformed packets, failed TLS or compression)")),
            (.backendProtocolErrors, counter("moonproxy_protocol_errors_total", [("peer", "backend")],
                                             "Connections ended by a peer breaking the protocol (malformed packets, failed TLS or compression)")),
            (.backendConnectFailures, counter("moonproxy_backend_connect_failures_total", [], "Failed connects to backends")),
            (.backendsLost, counter("moonproxy_backend_connections_lost_total", [], "Server connections that closed while a client used them")),
            (.errorsSentByProxy, counter("moonproxy_errors_sent_total", [], "ERR packets the proxy itself sent to clients")),
        ]
    }

    /// Connect latencies to backends: 0.5 ms to 2 s.
    private static let connectBuckets: [Duration] = [.microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
                                                     .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
                                                     .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2)]

    /// A connect to `backend` succeeded after `duration` (once per server connection, never per packet).
    func connectCompleted(backend: ProxyAddress, duration: Duration) {
        registry.makeDurationHistogram(name: "moonproxy_backend_connect_duration_seconds", labels: [("backend", "\(backend)")],
                                       buckets: Self.connectBuckets, help: "Time to connect to a backend, successful connects")
            .record(duration)
    }

    /// A health check of `backend` ended.
    func checkCompleted(backend: ProxyAddress, up: Bool) {
        registry.makeCounter(name: "moonproxy_backend_checks_total", labels: [("backend", "\(backend)"), ("result", up ? "up" : "down")],
                             help: "Health checks, by result")
            .increment()
    }

    /// The exposition, text format 0.0.4.
    func scrape() -> [UInt8] {
        activeConnections.set(to: Double(statistics.value(.connectionsActive)))
        exported.withLockedValue { last in
            for (source, counter) in counters {
                let key = "\(source)"
                let now = statistics.value(source)
                let delta = now - last[key, default: 0]
                if delta > 0 {
                    counter.increment(by: Int64(delta))
                    last[key] = now
                }
            }
        }
        for backend in backends.snapshot() {
            let labels = [("backend", "\(backend.address)"), ("type", backend.type.rawValue)]
            registry.makeGauge(name: "moonproxy_backend_up", labels: labels,
                               help: "1 while a backend is not known to be down, 0 while it is")
                .set(to: backend.state == .down ? 0 : 1)
            registry.makeGauge(name: "moonproxy_backend_clients", labels: labels, help: "Clients using a backend now")
                .set(to: Double(backend.connectedClients))
            registry.makeGauge(name: "moonproxy_pool_idle_connections", labels: labels,
                               help: "Server connections idle in the pool, for scripts to take")
                .set(to: Double(backends.idleCount(backend: backend.index)))
        }
        return registry.emitToBuffer()
    }
}
