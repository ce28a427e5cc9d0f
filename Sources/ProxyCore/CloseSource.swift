/// Why a client connection ended, in the spirit of TiProxy's error sources: whose fault it was.
public enum CloseSource: Int, CaseIterable, Sendable {
    /// An ordinary end: COM_QUIT, or the client closing between commands.
    case none
    /// The client's connection broke (reset, closed while a response was on its way).
    case clientNetwork = 1
    /// The client's login went wrong before the server judged it (TLS, a bad handshake
    /// response, the login timeout, leaving during the login).
    case clientHandshake
    /// The server refused the login.
    case authFailed
    /// The proxy shut down.
    case proxyShutdown
    /// The client sent a packet the proxy could not read.
    case malformed
    /// No backend could be reached.
    case noBackend
    /// The server's connection broke or it went silent.
    case backendNetwork
    /// The server's greeting or TLS went wrong, or it closed during the login.
    case backendHandshake
    /// The server sent something the proxy could not follow.
    case backendProtocol
    /// The Lua script failed to load or to run.
    case scriptError
    /// The Lua script closed the connection (`proxy.connection.connection_close`).
    case scriptClosed
    /// A read or write timeout.
    case timeout
    /// Refused by --max-connections or --max-connections-per-address.
    case limit

    public var label: String {
        switch self {
        case .none: return "none"
        case .clientNetwork: return "client_network"
        case .clientHandshake: return "client_handshake"
        case .authFailed: return "auth_failed"
        case .proxyShutdown: return "proxy_shutdown"
        case .malformed: return "malformed"
        case .noBackend: return "no_backend"
        case .backendNetwork: return "backend_network"
        case .backendHandshake: return "backend_handshake"
        case .backendProtocol: return "backend_protocol"
        case .scriptError: return "script_error"
        case .scriptClosed: return "script_closed"
        case .timeout: return "timeout"
        case .limit: return "limit"
        }
    }
}
