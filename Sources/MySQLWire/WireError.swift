/// Why a packet could not be read. Every reader in MySQLWire reports short or lying input with one
/// of these instead of trapping, so a malformed packet from either peer costs one connection at most.
public enum WireError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The payload ended before a field was complete.
    case truncated(String)
    /// A field held a value the protocol does not allow.
    case invalid(String)
    /// A packet arrived that the protocol does not allow at this point of the exchange.
    case unexpectedPacket(String)
    /// A packet that would have to be assembled is longer than allowed (the limit in bytes); the
    /// sequence id of the frame that went past it.
    case tooLarge(limit: Int, sequenceID: UInt8)

    public var description: String {
        switch self {
        case .truncated(let field): return "truncated packet: \(field) runs past the end of the payload"
        case .invalid(let what): return "malformed packet: \(what)"
        case .unexpectedPacket(let what): return "unexpected packet: \(what)"
        case .tooLarge(let limit, _): return "packet longer than the \(limit) bytes the proxy assembles (--proxy-max-packet-size)"
        }
    }
}
