import Logging
import NIOCore
import ProxyCore
import ProxyScripting

/// What is known about one connection for its log lines, the query log and the admin interface's
/// list: its addresses (worded only when a line needs them: a connect storm writes none), the TLS
/// and compression of each link, and whether its login let the client in.
struct ConnectionDescription {
    var id: UInt64 = 0
    var client: SocketAddress? { didSet { if layers != nil { extra.clientWords = nil } } }
    var backend: ProxyAddress? { didSet { if layers != nil { extra.backendWords = nil } } }
    var loggedIn = false
    /// What most connections never have (TLS, compression) or never need (their addresses in
    /// words, for the query log): kept out of line, made when first set.
    private var layers: Layers?

    private struct Extra {
        var clientTLS: ScriptTLSInfo?
        var backendTLS: ScriptTLSInfo?
        var compression: String?
        var backendCompression: String?
        var clientWords: String??
        var backendWords: String??
    }

    private indirect enum Layers {
        case some(Extra)
    }

    private var extra: Extra {
        get {
            guard case .some(let extra)? = layers else { return Extra() }
            return extra
        }
        set { layers = .some(newValue) }
    }

    var clientTLS: ScriptTLSInfo? {
        get { extra.clientTLS }
        set { extra.clientTLS = newValue }
    }
    var backendTLS: ScriptTLSInfo? {
        get { extra.backendTLS }
        set { extra.backendTLS = newValue }
    }
    var compression: String? {
        get { extra.compression }
        set { extra.compression = newValue }
    }
    var backendCompression: String? {
        get { extra.backendCompression }
        set { extra.backendCompression = newValue }
    }

    /// `client` as logs and the query log show it, worded once.
    mutating func clientText() -> String? {
        if let words = extra.clientWords { return words }
        let words = client?.logDescription
        extra.clientWords = .some(words)
        return words
    }

    mutating func backendText() -> String? {
        if let words = extra.backendWords { return words }
        let words = backend?.description
        extra.backendWords = .some(words)
        return words
    }

    /// `base` with the connection's metadata.
    mutating func logger(_ base: Logger) -> Logger {
        var logger = base
        logger[metadataKey: "conn"] = "\(id)"
        if let client = clientText() { logger[metadataKey: "client"] = "\(client)" }
        if let backend = backendText() { logger[metadataKey: "backend"] = "\(backend)" }
        if let clientTLS { logger[metadataKey: "client_tls"] = "\(clientTLS.version) \(clientTLS.cipher ?? "")" }
        if let backendTLS { logger[metadataKey: "backend_tls"] = "\(backendTLS.version) \(backendTLS.cipher ?? "")" }
        if let compression { logger[metadataKey: "compression"] = "\(compression)" }
        if let backendCompression { logger[metadataKey: "backend_compression"] = "\(backendCompression)" }
        return logger
    }

    /// Brings the admin interface's entry up to date (`user`, `database`: the session's).
    func publish(to registry: ConnectionRegistry, user: String, database: String?) {
        let description = self
        registry.update(id) { entry in
            entry.client = description.client
            entry.backend = description.backend
            entry.user = description.loggedIn ? user : nil
            entry.database = description.loggedIn ? database : nil
            entry.clientTLS = description.clientTLS.map { "\($0.version) \($0.cipher ?? "")" }
            entry.backendTLS = description.backendTLS.map { "\($0.version) \($0.cipher ?? "")" }
            entry.clientCompression = description.compression
            entry.backendCompression = description.backendCompression
            entry.loggedIn = description.loggedIn
        }
    }
}

extension ConnectionMachine.Severity {
    var loggerLevel: Logger.Level {
        switch self {
        case .debug: return .debug
        case .info: return .info
        case .warning: return .warning
        case .error: return .error
        case .critical: return .critical
        }
    }
}
