import MySQLWire
import NIOCore

/// The hooks a script defines, by MySQL Proxy's names.
public struct ScriptHooks: OptionSet, Sendable, Hashable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let connectServer = ScriptHooks(rawValue: 1 << 0)
    public static let readHandshake = ScriptHooks(rawValue: 1 << 1)
    public static let readAuth = ScriptHooks(rawValue: 1 << 2)
    public static let readAuthResult = ScriptHooks(rawValue: 1 << 3)
    public static let readQuery = ScriptHooks(rawValue: 1 << 4)
    public static let readQueryResult = ScriptHooks(rawValue: 1 << 5)
    public static let disconnectClient = ScriptHooks(rawValue: 1 << 6)

    public static let names: [(ScriptHooks, String)] = [
        (.connectServer, "connect_server"), (.readHandshake, "read_handshake"), (.readAuth, "read_auth"),
        (.readAuthResult, "read_auth_result"), (.readQuery, "read_query"), (.readQueryResult, "read_query_result"),
        (.disconnectClient, "disconnect_client"),
    ]
}

/// A query queued with `proxy.queries:append()`/`prepend()`.
public struct Injection: Sendable, Equatable {
    public var id: Int
    public var packet: ByteBuffer
    public var resultsetIsNeeded: Bool
    /// When it was queued (µs, monotonic), for `query_time` and `response_time`.
    public var queuedAt: UInt64

    public init(id: Int, packet: ByteBuffer, resultsetIsNeeded: Bool, queuedAt: UInt64) {
        self.id = id
        self.packet = packet
        self.resultsetIsNeeded = resultsetIsNeeded
        self.queuedAt = queuedAt
    }

    public var command: CommandCode? { packet.getInteger(at: packet.readerIndex, as: UInt8.self).map { CommandCode($0) } }
}

/// What a hook decided.
public enum HookDecision: Sendable, Equatable {
    /// nil or no return value: carry on as without a script.
    case noDecision
    /// PROXY_SEND_QUERY.
    case sendQuery
    /// PROXY_SEND_RESULT, with `proxy.response` as it was when the hook returned.
    case sendResult(ScriptResponse)
    /// PROXY_IGNORE_RESULT.
    case ignoreResult
    /// Any other number.
    case other(Int)
}

public enum HookOutcome: Sendable, Equatable {
    /// The script does not define the hook: carry on as without a script.
    case notDefined
    /// The hook raised an error (logged with its traceback).
    case failed(String)
    case returned(HookDecision)
}
