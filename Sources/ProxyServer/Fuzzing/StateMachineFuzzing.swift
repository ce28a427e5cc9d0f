import Logging
import MySQLWire
import NIOCore
import ProxyScripting

/// Drives one connection's state machine from a fuzzer's bytes (Fuzz/Sources/MachineFuzzer): a
/// script whose every decision comes from the input (answer, inject buffered or streamed queries,
/// ignore or replace results, fail), and client and server bytes, closes, timeouts and shutdowns in
/// the order the input says. The machine may refuse anything; it must never trap.
@_spi(Fuzzing) public enum StateMachineFuzzing {
    public static func run(_ input: UnsafeRawBufferPointer) {
        var reader = FuzzReader(input)
        let setup = reader.byte()
        let script: FuzzScript? = setup & 1 != 0 ? FuzzScript(hooks: ConnectionScript.Hooks(rawValue: Int(setup >> 1)), reader: reader) : nil
        // the login: TLS policy and SSLRequest, compression, and whether the fuzzer plays the rest
        // of the login itself (auth switches, caching_sha2's full authentication, renumbering)
        let tls = reader.byte()
        var policy = ConnectionStateMachine.TLSPolicy()
        policy.offer = [ClientTLSSettings.Offer.never, .likeBackend, .always][Int(tls % 3)]
        policy.backend = BackendTLSSettings.Mode.allCases[Int(tls >> 2) % BackendTLSSettings.Mode.allCases.count]
        policy.requireSecureTransport = tls & 0x20 != 0
        // each link's compression: what the proxy offers and asks the server for, what the client asks
        let compressing = reader.byte()
        var compression = CompressionSettings()
        compression.clientAlgorithms = [[], .compress, .zstdCompression, ProtocolCompression.capabilities][Int(compressing & 3)]
        compression.backend = [.mirror, .off, .always(.zlib), .always(.zstd(level: Int(compressing >> 4) + 1))][Int(compressing >> 2) & 3]
        // what is recorded about commands (metrics, query log), by bits the policy also reads
        let recording: [ConnectionStateMachine.Recording] = [.off, .durations, .text(limit: 16)]
        var machine = ConnectionStateMachine(statistics: LoopStatistics(), recording: recording[Int(tls >> 5) % 3], script: script,
                                             maxPacketSize: 1 << 16, tls: policy, compression: compression)
        _ = machine.clientConnected()
        _ = machine.backendConnected()
        var offered = greeting
        if tls & 0x40 != 0 { offered[greetingLowerCapabilities + 1] |= 0x08 }  // CLIENT_SSL
        _ = machine.backendDataReceived(frame(offered, sequenceID: 0))
        var response = reader.byte() & 1 == 0 ? handshakeResponse : handshakeResponseDeprecateEOF
        if tls & 0x08 != 0 { response[0] |= 0x20 }  // CLIENT_COMPRESS
        if compressing & 0x80 != 0 {
            response[3] |= 0x04  // CLIENT_ZSTD_COMPRESSION_ALGORITHM, and its level last
            response.append(compressing)
        }
        var sequence: UInt8 = 1
        if tls & 0x80 != 0, let request = try? HandshakeResponse41.sslRequest(for: ByteBuffer(bytes: response)) {
            _ = machine.clientDataReceived(frame(Array(request.readableBytesView), sequenceID: 1))
            sequence = 2
        }
        _ = machine.clientDataReceived(frame(response, sequenceID: sequence))
        if tls & 0x10 == 0 {
            _ = machine.backendDataReceived(frame([0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00], sequenceID: machine.backendTLS ? 3 : 2))
        }
        while !reader.isAtEnd {
            let op = reader.byte()
            let data = reader.bytes(Int(reader.byte()) * 4)
            script?.reader = reader
            switch op % 10 {
            case 0, 1, 2: _ = machine.clientDataReceived(data)
            case 3, 4, 5: _ = machine.backendDataReceived(data)
            case 6: _ = machine.backendClosed()
            case 7: _ = machine.readTimedOut(client: op & 0x10 != 0)
            case 8: _ = machine.shutdownRequested()
            default: _ = machine.clientClosed()
            }
            if let script { reader = script.reader }
        }
    }

    static func frame(_ payload: [UInt8], sequenceID: UInt8) -> ByteBuffer {
        var out = ByteBuffer()
        var seq = sequenceID
        out.writeMySQLPacket(ByteBuffer(bytes: payload), sequenceID: &seq)
        return out
    }

    static func hex(_ text: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var chars = text.makeIterator()
        while let hi = chars.next(), let lo = chars.next() { bytes.append(UInt8(String([hi, lo]), radix: 16)!) }
        return bytes
    }

    /// Where the greeting's lower capability flags are: after the version string, the connection
    /// id and the first 8 bytes of scramble with their filler.
    static var greetingLowerCapabilities: Int { greeting[1...].firstIndex(of: 0)! + 1 + 4 + 9 }

    // Captured from MariaDB 10.11 and libmariadb (see Tests/ProxyServerTests).
    static let greeting = hex("0a352e352e352d31302e31312e31392d4d6172696144422d302b64656231327531000a000000474e34542c7d556e00fef7080200ff81150000000000001d0000004a643d406a76343f7b72484f006d7973716c5f6e61746976655f70617373776f726400")
    static let handshakeResponse = hex("84a2bf000000100021000000000000000000000000000000000000001d0000006e617400145f944c76085a805c6f80596fb1e9a40dd32c23d46d7973716c5f6e61746976655f70617373776f726400")
    static let handshakeResponseDeprecateEOF = hex("84a2bf010000100021000000000000000000000000000000000000001d0000006e617400145f944c76085a805c6f80596fb1e9a40dd32c23d46d7973716c5f6e61746976655f70617373776f726400")
}

struct FuzzReader {
    private let bytes: [UInt8]
    private var position = 0

    init(_ input: UnsafeRawBufferPointer) { bytes = Array(input) }

    var isAtEnd: Bool { position >= bytes.count }

    mutating func byte() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func bytes(_ count: Int) -> ByteBuffer {
        let n = min(count, bytes.count - position)
        defer { position += n }
        return ByteBuffer(bytes: bytes[position..<(position + n)])
    }
}

/// A script whose decisions are read from the fuzzer's input.
final class FuzzScript: ConnectionScripting {
    let hooks: ConnectionScript.Hooks
    var reader: FuzzReader
    var queries: [Injection] = []
    var hasQueries: Bool { !queries.isEmpty }
    var connectionCloseRequested = false
    var resultsetBufferLimit = 1 << 12

    init(hooks: ConnectionScript.Hooks, reader: FuzzReader) {
        self.hooks = hooks
        self.reader = reader
    }

    func prepareHook(loggedIn: Bool, serverIdle: Bool, status: ServerStatus) {}
    func greetingReceived(_ greeting: HandshakeV10) {}
    func handshakeResponseReceived(_ response: HandshakeResponse41, capabilities: CapabilityFlags) {}
    func databaseChanged(to name: String, forClient: Bool) {}
    func userChanged(to username: String, database: String) {}
    func takeServerChange() -> ServerChange? { nil }
    func log(_ level: Logger.Level, _ message: String) {}

    private func answer() -> ScriptResponse {
        switch reader.byte() % 5 {
        case 0: return .ok(affectedRows: UInt64(reader.byte()), insertID: 0, serverStatus: nil, warnings: 0, message: nil)
        case 1: return .error(code: 1105, sqlState: "HY000", message: "fuzz")
        case 2: return .raw([reader.bytes(Int(reader.byte()))])
        default:
            let type = ColumnType(reader.byte())
            let value = String(decoding: reader.bytes(Int(reader.byte() % 16)).readableBytesView, as: UTF8.self)
            return .resultSet(fields: [ScriptField(name: "f", type: type)], rows: [[value], [nil]], serverStatus: nil, warnings: 0)
        }
    }

    private func decide() -> HookOutcome {
        switch reader.byte() % 8 {
        case 0: return .notDefined
        case 1: return .failed("fuzz")
        case 2, 3: return .returned(.sendResult(answer()))
        case 4, 5:
            let count = Int(reader.byte() % 3) + 1
            for i in 0..<count {
                var packet = reader.bytes(Int(reader.byte() % 12))
                if packet.readableBytes == 0 { packet = ByteBuffer(bytes: [0x03, 0x31]) }
                queries.append(Injection(id: i, packet: packet, resultsetIsNeeded: reader.byte() & 1 == 0, queuedAt: 0))
            }
            return .returned(.sendQuery)
        case 6: return .returned(.ignoreResult)
        default:
            connectionCloseRequested = reader.byte() & 7 == 0
            return .returned(.noDecision)
        }
    }

    func connectServer() -> HookOutcome { decide() }
    func readHandshake() -> HookOutcome { decide() }
    func readAuth() -> HookOutcome { decide() }
    func readAuthResult(packet: ByteBuffer) -> HookOutcome { decide() }
    func readQuery(packet: ByteBuffer, hints: [(key: String, value: String)]) -> HookOutcome { decide() }
    func readQueryResult(_ result: InjectionResult) -> HookOutcome { decide() }
}
