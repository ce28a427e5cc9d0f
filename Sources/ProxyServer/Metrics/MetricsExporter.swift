import NIOConcurrencyHelpers
import Prometheus
import ProxyCore
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

    /// The Lua script's engine, for its memory and reloads (nil without a script).
    private let scriptEngine: ScriptEngine?

    init(statistics: ProxyStatistics, backends: BackendPool, scriptEngine: ScriptEngine? = nil) {
        self.statistics = statistics
        self.scriptEngine = scriptEngine
        self.backends = backends
        let registry = PrometheusCollectorRegistry()
        self.registry = registry
        func counter(_ name: String, _ labels: [(String, String)] = [], _ help: String) -> Counter {
            registry.makeCounter(descriptor: Self.named(name, help), labels: labels)
        }
        activeConnections = registry.makeGauge(descriptor: Self.named("moonproxy_client_connections", "Client connections open now"), labels: [])
        counters = [
            (.connectionsAccepted, counter("moonproxy_client_connections_accepted_total", [], "Client connections accepted")),
            (.connectionsRefused, counter("moonproxy_client_connections_refused_total", [],
                                          "Client connections refused by --max-connections, the per-address limits, or the descriptor limit")),
            (.bytesFromClients, counter("moonproxy_received_bytes_total", [("peer", "client")], "Bytes received")),
            (.bytesFromBackends, counter("moonproxy_received_bytes_total", [("peer", "backend")], "Bytes received")),
            (.clientProtocolErrors, counter("moonproxy_protocol_errors_total", [("peer", "client")],
                                            "Connections ended by a peer breaking the protocol (malformed packets, failed TLS or compression)")),
            (.backendProtocolErrors, counter("moonproxy_protocol_errors_total", [("peer", "backend")],
                                             "Connections ended by a peer breaking the protocol (malformed packets, failed TLS or compression)")),
            (.backendConnectFailures, counter("moonproxy_backend_connect_failures_total", [], "Failed connects to backends")),
            (.backendsLost, counter("moonproxy_backend_connections_lost_total", [], "Server connections that closed while a client used them")),
            (.errorsSentByProxy, counter("moonproxy_errors_sent_total", [], "ERR packets the proxy itself sent to clients")),
            (.bytesToClients, counter("moonproxy_sent_bytes_total", [("peer", "client")], "Bytes sent")),
            (.bytesToBackends, counter("moonproxy_sent_bytes_total", [("peer", "backend")], "Bytes sent")),
            (.queryLogDropped, counter("moonproxy_query_log_dropped_total", [], "Query log entries dropped because the writer fell behind")),
            (.statementsPreparedAgain, counter("moonproxy_statements_prepared_again_total", [],
                                               "Binary prepared statements the proxy prepared again on another server connection for a multiplexed session")),
            (.acceptFailures, counter("moonproxy_accept_failures_total", [], "Accepts that failed for want of descriptors or memory")),
        ]
    }

    /// A metric's whole name (the registry joins a descriptor's parts; ours are written out whole).
    private static func named(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    /// Connect latencies to backends: 0.5 ms to 2 s.
    private static let connectBuckets: [Duration] = [.microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
                                                     .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
                                                     .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2)]

    /// A connect to `backend` succeeded after `duration` (once per server connection, never per packet).
    func connectCompleted(backend: ProxyAddress, duration: Duration) {
        registry.makeDurationHistogram(descriptor: Self.named("moonproxy_backend_connect_duration_seconds", "Time to connect to a backend, successful connects"),
                                       labels: [("backend", "\(backend)")], buckets: Self.connectBuckets)
            .record(duration)
    }

    /// A health check of `backend` ended.
    func checkCompleted(backend: ProxyAddress, up: Bool) {
        registry.makeCounter(descriptor: Self.named("moonproxy_backend_checks_total", "Health checks, by result"),
                             labels: [("backend", "\(backend)"), ("result", up ? "up" : "down")])
            .increment()
    }

    /// A login `--proxy-auth=proxy` decided: `verified` (the proxy logs the client into servers),
    /// `relayed` (the server authenticates it: `plugin` is the account's), `refused`,
    /// `host_not_allowed`.
    func loginDecided(plugin: String, result: String) {
        registry.makeCounter(descriptor: Self.named("moonproxy_logins_total", "Logins decided by the proxy (--proxy-auth=proxy), by plugin and result"),
                             labels: [("plugin", plugin), ("result", result)])
            .increment()
    }

    /// A login waited `duration` for a pooled connection's reset (`backend`: its address).
    func poolWaited(backend: ProxyAddress, duration: Duration) {
        registry.makeDurationHistogram(descriptor: Self.named("moonproxy_core_pool_wait_seconds", "Time a login waited for a pooled server connection's reset"),
                                       labels: [("backend", "\(backend)")], buckets: Self.connectBuckets)
            .record(duration)
    }

    /// The core pool, whose counts a scrape reads (set once the proxy made it).
    let corePool = NIOLockedValueBox<CorePool.Shared?>(nil)

    /// The servers' accounts were read (`count` of them), or could not be (nil).
    func accountsRefreshed(count: Int?) {
        registry.makeCounter(descriptor: Self.named("moonproxy_account_refreshes_total", "Readings of the servers' accounts (--proxy-users-user), by result"),
                             labels: [("result", count == nil ? "failed" : "ok")])
            .increment()
        if let count {
            registry.makeGauge(descriptor: Self.named("moonproxy_accounts", "Accounts read from the servers at the last reading"), labels: [])
                .set(to: Double(count))
        }
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
            registry.makeGauge(descriptor: Self.named("moonproxy_backend_up", "1 while a backend is not known to be down, 0 while it is"), labels: labels)
                .set(to: backend.state == .down ? 0 : 1)
            registry.makeGauge(descriptor: Self.named("moonproxy_backend_clients", "Clients using a backend now"), labels: labels)
                .set(to: Double(backend.connectedClients))
            registry.makeGauge(descriptor: Self.named("moonproxy_pool_idle_connections", "Server connections idle in the pool, for scripts to take"), labels: labels)
                .set(to: Double(backends.idleCount(backend: backend.index)))
        }
        if let scriptEngine {
            registry.makeGauge(descriptor: Self.named("moonproxy_lua_memory_bytes", "Bytes the Lua state holds"), labels: [])
                .set(to: Double(scriptEngine.memoryInUse))
        }
        var out = registry.emitToBuffer()
        let shards = statistics.allShards
        appendLoopFamilies(shards, to: &out)
        if let pool = corePool.withLockedValue({ $0 }) { appendCorePool(pool.snapshot, to: &out) }
        return out
    }

    /// The core pool's connections and events per backend.
    private func appendCorePool(_ counts: CorePool.Shared.Counts, to out: inout [UInt8]) {
        var names: [Int: String] = [:]
        for backend in backends.snapshot() { names[backend.index] = Self.escape("\(backend.address)") }
        var text = "# HELP moonproxy_core_pool_connections Server connections the core pool holds (idle or being reset), per backend\n"
        text += "# TYPE moonproxy_core_pool_connections gauge\n"
        for (index, name) in names.sorted(by: { $0.key < $1.key }) {
            text += "moonproxy_core_pool_connections{backend=\"\(name)\"} \(counts.pooled[index, default: 0])\n"
        }
        text += "# HELP moonproxy_core_pool_events_total Core pool events per backend: checkouts (hit, waited for a reset, miss), resets, closes\n"
        text += "# TYPE moonproxy_core_pool_events_total counter\n"
        for (key, n) in counts.events.sorted(by: { ($0.key.backend, $0.key.event) < ($1.key.backend, $1.key.event) }) {
            guard let name = names[key.backend] else { continue }
            text += "moonproxy_core_pool_events_total{backend=\"\(name)\",event=\"\(key.event)\"} \(n)\n"
        }
        if !counts.pins.isEmpty {
            text += "# HELP moonproxy_sessions_pinned Sessions held to their server connection (--proxy-multiplex), per reason\n"
            text += "# TYPE moonproxy_sessions_pinned gauge\n"
            for (reason, n) in counts.pins.sorted(by: { $0.key < $1.key }) {
                text += "moonproxy_sessions_pinned{reason=\"\(reason)\"} \(n)\n"
            }
        }
        out.append(contentsOf: Array(text.utf8))
    }

    /// The families each event loop counts itself, summed over the loops (swift-prometheus keeps
    /// one value per series; these are sums of values that only their loops write).
    private func appendLoopFamilies(_ shards: [LoopStatistics], to out: inout [UInt8]) {
        var text = ""
        text += "# HELP moonproxy_client_connections_closed_total Client connections that ended, by whose doing (error source)\n"
        text += "# TYPE moonproxy_client_connections_closed_total counter\n"
        for source in CloseSource.allCases {
            let n = shards.reduce(0) { $0 + $1.closed(source) }
            text += "moonproxy_client_connections_closed_total{source=\"\(source.label)\"} \(n)\n"
        }

        var backendNames: [Int: String] = [:]
        for backend in backends.snapshot() { backendNames[backend.index] = "\(backend.address)" }
        var series: [(labels: String, histogram: LoopStatistics.Histogram)] = []
        for slot in 0..<LoopStatistics.backendSlots {
            let name = slot == LoopStatistics.noBackendSlot ? "none" : backendNames[slot]
            guard let name else { continue }
            for kind in CommandKind.allCases {
                let h = LoopStatistics.commandHistogram(shards, slot: slot, kind: kind)
                guard h.count > 0 else { continue }
                series.append(("command=\"\(kind.label)\",backend=\"\(Self.escape(name))\"", h))
            }
        }
        text += "# HELP moonproxy_commands_total Commands from clients that ended, by command and backend (\"none\": answered by the script)\n"
        text += "# TYPE moonproxy_commands_total counter\n"
        for (labels, h) in series { text += "moonproxy_commands_total{\(labels)} \(h.count)\n" }
        Self.histogram("moonproxy_command_duration_seconds",
                       help: "Time from a command's first byte to the end of its response, by command and backend",
                       buckets: LoopStatistics.commandBuckets, series: series, into: &text)

        if scriptEngine != nil {
            var hooks: [(labels: String, histogram: LoopStatistics.Histogram)] = []
            var calls = "", errors = ""
            for hook in HookKind.allCases {
                let (c, e) = shards.reduce((0, 0)) { sum, s in
                    let v = s.hookCalls(hook)
                    return (sum.0 + v.calls, sum.1 + v.errors)
                }
                calls += "moonproxy_lua_hook_calls_total{hook=\"\(hook.label)\"} \(c)\n"
                errors += "moonproxy_lua_hook_errors_total{hook=\"\(hook.label)\"} \(e)\n"
                let h = LoopStatistics.hookHistogram(shards, hook: hook)
                if h.count > 0 { hooks.append(("hook=\"\(hook.label)\"", h)) }
            }
            text += "# HELP moonproxy_lua_hook_calls_total Lua hook calls\n# TYPE moonproxy_lua_hook_calls_total counter\n" + calls
            text += "# HELP moonproxy_lua_hook_errors_total Lua hook calls that raised an error (or ran out of time or memory)\n"
            text += "# TYPE moonproxy_lua_hook_errors_total counter\n" + errors
            Self.histogram("moonproxy_lua_hook_duration_seconds", help: "Time a Lua hook ran",
                           buckets: LoopStatistics.hookBuckets, series: hooks, into: &text)
            if let engine = scriptEngine {
                let reloads = engine.reloads
                text += "# HELP moonproxy_lua_reloads_total Edits of the Lua script picked up, and those that did not load (the previous version stays)\n"
                text += "# TYPE moonproxy_lua_reloads_total counter\n"
                text += "moonproxy_lua_reloads_total{result=\"loaded\"} \(reloads.loaded)\n"
                text += "moonproxy_lua_reloads_total{result=\"failed\"} \(reloads.failed)\n"
            }
        }
        out.append(contentsOf: Array(text.utf8))
    }

    /// A histogram family in the text format from per-bucket counts (not cumulative, +Inf last).
    private static func histogram(_ name: String, help: String, buckets: [Int],
                                  series: [(labels: String, histogram: LoopStatistics.Histogram)], into text: inout String) {
        text += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        for (labels, h) in series {
            var cumulative = 0
            for (i, bound) in buckets.enumerated() {
                cumulative += h.buckets[i]
                text += "\(name)_bucket{\(labels),le=\"\(seconds(bound))\"} \(cumulative)\n"
            }
            text += "\(name)_bucket{\(labels),le=\"+Inf\"} \(h.count)\n"
            text += "\(name)_sum{\(labels)} \(seconds(h.sum))\n"
            text += "\(name)_count{\(labels)} \(h.count)\n"
        }
    }

    private static func seconds(_ nanoseconds: Int) -> String {
        "\(Double(nanoseconds) / 1e9)"
    }

    /// A label value in the text format.
    private static func escape(_ value: String) -> String {
        var out = ""
        for ch in value {
            switch ch {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(ch)
            }
        }
        return out
    }
}
