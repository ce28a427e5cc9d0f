import MySQLWire
import NIOCore

/// Drives one connection's machine from a fuzzer's bytes (Fuzz/Sources/MachineFuzzer), the way a
/// handler would: it carries out the actions the machine returns, opens the server connection it
/// asks for at once, and answers every hook it asks for with a decision read from the input
/// (answer, inject buffered or streamed queries, ignore or replace results, fail, close, give the
/// server connection to the pool or take another). Client and server bytes, closes, timeouts and
/// shutdowns come in the order the input says. The machine may refuse anything; it must never
/// trap, and once it said `close` it says nothing more.
@_spi(Fuzzing) public enum MachineFuzzing {
    public static func run(_ input: UnsafeRawBufferPointer) {
        var driver = FuzzDriver(input)
        driver.play()
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

    // Captured from MariaDB 10.11 and libmariadb (see Tests/ProxyCoreTests).
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

/// The handler's part, played from the input.
struct FuzzDriver {
    var reader: FuzzReader
    var machine: ConnectionMachine
    let scripted: Bool
    let setup: (tls: UInt8, compressing: UInt8)
    /// `--proxy-auth=proxy`: the proxy greets and verifies (verdicts from the input), and the
    /// handler may give the session a pooled server connection.
    let ownLogin: Bool

    init(_ input: UnsafeRawBufferPointer) {
        reader = FuzzReader(input)
        let first = reader.byte()
        scripted = first & 1 != 0
        // the login: TLS policy and SSLRequest, compression, and whether the fuzzer plays the rest
        // of the login itself (auth switches, caching_sha2's full authentication, renumbering)
        let tls = reader.byte()
        let compressing = reader.byte()
        setup = (tls, compressing)
        var configuration = ConnectionMachine.Configuration()
        if scripted { configuration.hooks = ScriptHooks(rawValue: Int(first >> 1)) }
        configuration.tls.offer = [ClientTLSOffer.never, .likeBackend, .always][Int(tls % 3)]
        configuration.tls.backend = BackendTLSMode.allCases[Int(tls >> 2) % BackendTLSMode.allCases.count]
        configuration.tls.requireSecureTransport = tls & 0x20 != 0
        // each link's compression: what the proxy offers and asks the server for, what the client asks
        configuration.compression.clientAlgorithms = [[], .compress, .zstdCompression, ProtocolCompression.capabilities][Int(compressing & 3)]
        configuration.compression.backend = [.mirror, .off, .always(.zlib), .always(.zstd(level: Int(compressing >> 4) + 1))][Int(compressing >> 2) & 3]
        // what is recorded about commands (metrics, query log), by bits the policy also reads
        configuration.recording = [ConnectionMachine.Recording.off, .durations, .text(limit: 16)][Int(tls >> 5) % 3]
        configuration.maximumPacketLength = 1 << 16
        configuration.resultsetBufferLimit = 1 << 12
        let own = reader.byte()
        ownLogin = own & 1 != 0
        configuration.poolsServers = own & 2 != 0
        // session tracking and multiplexing on the proxy's own logins
        configuration.tracksSessions = own & 4 != 0
        configuration.multiplexes = own & 12 == 12
        machine = ConnectionMachine(configuration: configuration)
    }

    mutating func play() {
        let (tls, compressing) = setup
        var offered = MachineFuzzing.greeting
        if tls & 0x40 != 0 { offered[MachineFuzzing.greetingLowerCapabilities + 1] |= 0x08 }  // CLIENT_SSL
        if ownLogin, let greeting = try? HandshakeV10(parsing: ByteBuffer(bytes: offered)) {
            handle(machine.clientConnected(ownGreeting: greeting))
        } else {
            handle(machine.clientConnected())
            handle(machine.backendDataReceived(MachineFuzzing.frame(offered, sequenceID: 0)))
        }
        var response = reader.byte() & 1 == 0 ? MachineFuzzing.handshakeResponse : MachineFuzzing.handshakeResponseDeprecateEOF
        if tls & 0x08 != 0 { response[0] |= 0x20 }  // CLIENT_COMPRESS
        if compressing & 0x80 != 0 {
            response[3] |= 0x04  // CLIENT_ZSTD_COMPRESSION_ALGORITHM, and its level last
            response.append(compressing)
        }
        var sequence: UInt8 = 1
        if tls & 0x80 != 0, let request = try? HandshakeResponse41.sslRequest(for: ByteBuffer(bytes: response)) {
            handle(machine.clientDataReceived(MachineFuzzing.frame(Array(request.readableBytesView), sequenceID: 1)))
            sequence = 2
        }
        handle(machine.clientDataReceived(MachineFuzzing.frame(response, sequenceID: sequence)))
        if ownLogin && machine.isAwaitingGreeting {
            handle(machine.backendDataReceived(MachineFuzzing.frame(offered, sequenceID: 0)))
        }
        if tls & 0x10 == 0 {
            let ok: [UInt8] = [0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00]
            handle(machine.backendDataReceived(MachineFuzzing.frame(ok, sequenceID: machine.session.backendTLS ? 3 : 2)))
        }
        while !reader.isAtEnd {
            let op = reader.byte()
            let data = reader.bytes(Int(reader.byte()) * 4)
            switch op % 13 {
            case 0, 1: handle(machine.clientDataReceived(data))
            case 2: handle(machine.clientDataReceived(statementCommand(data)))
            case 3, 4: handle(machine.backendDataReceived(data))
            case 5: handle(machine.backendDataReceived(prepareAnswer(data)))
            case 6: handle(machine.backendClosed())
            case 7: handle(machine.readTimedOut(client: op & 0x10 != 0))
            case 8: handle(machine.shutdownRequested())
            case 9: handle(machine.abandon(.timeout, reason: "fuzz"))
            case 10 where op & 0x20 != 0 && machine.mayMoveScriptSession:
                // DRAIN BACKEND moves a script's session
                handle(machine.scriptSessionMoved(previous: op & 0x40 != 0 ? SessionState() : nil))
            case 10: handle(machine.parkRequested())
            case 11: handle(machine.clientDataReceived(changeUserCommand(data)))
            default: handle(machine.clientClosed())
            }
            precondition(machine.counts.isEmpty && machine.finishedRecords.isEmpty, "counts or records left unreported")
        }
    }

    /// A binary-protocol command naming a statement (or preparing one), from the input's bytes:
    /// kind, id, flags, then the rest as it comes.
    func statementCommand(_ data: ByteBuffer) -> ByteBuffer {
        var d = data
        let kind = d.readInteger(as: UInt8.self) ?? 0
        let id = d.readInteger(as: UInt8.self) ?? 0
        var payload: [UInt8] = [[0x16, 0x17, 0x18, 0x19, 0x1A, 0x1C, 0xFA][Int(kind % 7)]]
        if kind % 7 == 0 {
            payload += Array("DO ?".utf8)
        } else {
            payload += id == 0xFF ? [0xFF, 0xFF, 0xFF, 0xFF] : [id % 8, 0, 0, id >> 3 == 1 ? 0x40 : 0]
        }
        payload += Array(d.readableBytesView)
        var out = MachineFuzzing.frame(payload, sequenceID: 0)
        if kind & 0x80 != 0, out.readableBytes > 2 { out = out.getSlice(at: 0, length: out.readableBytes / 2)! }  // (the rest never comes)
        return out
    }

    /// A COM_CHANGE_USER from the input: the user, an answer of 20 bytes (or what the input
    /// gives), database, character set and attributes; cut short when the input says so.
    func changeUserCommand(_ data: ByteBuffer) -> ByteBuffer {
        var d = data
        let flags = d.readInteger(as: UInt8.self) ?? 0
        let answer = d.readBytes(length: min(d.readableBytes, flags & 1 == 0 ? 20 : Int(flags >> 4))) ?? []
        var attributes = ByteBuffer()
        if flags & 2 != 0 { attributes.writeImmutableBuffer(d) }
        let request = ChangeUserRequest(username: flags & 4 == 0 ? "u" : "", authResponse: answer, database: flags & 8 == 0 ? "" : "db",
                                        characterSet: flags, authPluginName: flags & 0x40 == 0 ? "mysql_native_password" : "x",
                                        attributesBlock: attributes)
        var payload = ByteBuffer()
        request.write(to: &payload, capabilities: machine.session.capabilities)
        var out = MachineFuzzing.frame(Array(payload.readableBytesView), sequenceID: 0)
        if flags & 0x80 != 0, out.readableBytes > 2 { out = out.getSlice(at: 0, length: out.readableBytes / 2)! }  // (the rest in a later read)
        return out
    }

    /// A prepare's answer: id, parameters (their definitions behind), from the input.
    func prepareAnswer(_ data: ByteBuffer) -> ByteBuffer {
        var d = data
        let id = d.readInteger(as: UInt8.self) ?? 1
        let parameters = (d.readInteger(as: UInt8.self) ?? 0) % 3
        var out = MachineFuzzing.frame([0x00, id % 8, 0, 0, 0, 0, 0, parameters, 0, 0, 0, 0], sequenceID: 1)
        for i in 0..<parameters {
            out.writeImmutableBuffer(MachineFuzzing.frame(MachineFuzzing.hex("0364656600000001" + "3f000c3f0000000000fd80000000") + [0], sequenceID: 2 + i))
        }
        out.writeImmutableBuffer(d)
        return out
    }

    /// Carries out `first` and what follows it, as the handler's run loop does.
    mutating func handle(_ first: ConnectionMachine.Action) {
        var action = first
        var closed = false
        if case .close = first {
            // a close goes out after what was queued before it, never ahead of it
            precondition(!machine.hasPendingActions, "a close returned ahead of queued actions")
        }
        while true {
            switch action {
            case .relayToBackend, .relayToClient:
                precondition(!closed && machine.nextAction() == .none, "an action follows the relay's forward")
                return
            case .report(_, let recordsFinished):
                // counts may follow a close (the ERR it sent), nothing else may
                if recordsFinished { machine.clearFinishedRecords() }
                action = machine.nextAction()
                if case .none = action { return }
                continue
            default:
                precondition(!closed || action == .none, "the machine acted after it closed the connection: \(action)")
            }
            switch action {
            case .runHook(let call):
                action = machine.hookReturned(decide(call))
                continue
            case .connectToBackend:
                let how = reader.byte()
                if machine.pendingServerLogin != nil && how & 2 != 0 {
                    action = machine.pooledServerAttached(backendTLS: how & 4 != 0, localSocket: how & 1 != 0)
                } else {
                    action = machine.backendConnected(localSocket: how & 1 != 0)
                    if machine.isChangingUser && how & 8 != 0 {
                        // a changed user's new login: the server greets (and may say OK at once)
                        handle(action)
                        action = machine.backendDataReceived(MachineFuzzing.frame(MachineFuzzing.greeting, sequenceID: 0))
                        if how & 16 != 0 {
                            handle(action)
                            action = machine.backendDataReceived(MachineFuzzing.frame([0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00], sequenceID: 2))
                        }
                    }
                }
                continue
            case .takeBackend:
                // another session's connection, one reset, this session's own, or none in time
                switch reader.byte() % 5 {
                case 0:
                    var other = SessionState()
                    other.apply([.systemVariable("sql_mode", "ANSI"), .string(.schema, "x")], status: .autocommit)
                    action = machine.multiplexedServerAttached(previous: other)
                case 1: action = machine.multiplexedServerAttached(previous: nil)
                case 2: action = machine.multiplexedServerAttached(previous: machine.sessionState, own: true, statements: machine.serverStatements)
                case 3:
                    // another session's connection in the same state, holding the statements this one left (shared)
                    action = machine.multiplexedServerAttached(previous: machine.sessionState, statements: machine.serverStatements)
                default: action = machine.multiplexedServerUnavailable(.noBackend("fuzz"), reason: "fuzz")
                }
                continue
            case .verifyLogin:
                let verdict: LoginVerdict
                switch reader.byte() % 5 {
                case 0: verdict = .refused(.accessDenied(user: "u", host: "h", usingPassword: true), reason: "fuzz")
                case 1: verdict = .switchPlugin(ProxyAuthenticator.nativePlugin)
                case 2: verdict = .relay(plugin: "ed25519")
                case 3: verdict = .accepted(credential: [])
                default: verdict = .accepted(credential: Array(repeating: reader.byte(), count: 20))
                }
                action = machine.loginVerified(verdict)
                continue
            case .close:
                closed = true
                precondition(machine.isClosed)
            default:
                break
            }
            action = machine.nextAction()
            if case .none = action { return }
        }
    }

    /// A hook's result, from the input.
    mutating func decide(_ call: ConnectionMachine.HookCall) -> ConnectionMachine.HookResult {
        guard scripted else { return .notDefined }
        var queries = call.queries
        let outcome: HookOutcome
        switch reader.byte() % 8 {
        case 0: outcome = .notDefined
        case 1: outcome = .failed("fuzz")
        case 2, 3: outcome = .returned(.sendResult(answer()))
        case 4, 5:
            let count = Int(reader.byte() % 3) + 1
            for i in 0..<count {
                var packet = reader.bytes(Int(reader.byte() % 12))
                if packet.readableBytes == 0 { packet = ByteBuffer(bytes: [0x03, 0x31]) }
                queries.append(Injection(id: i, packet: packet, resultsetIsNeeded: reader.byte() & 1 == 0, queuedAt: 0))
            }
            outcome = .returned(.sendQuery)
        case 6: outcome = .returned(.ignoreResult)
        default: outcome = .returned(.noDecision)
        }
        let flags = reader.byte()
        var change: ConnectionMachine.ServerChange?
        // the handler swaps server connections only between commands, as the pool allows
        if call.loggedIn && call.serverIdle && flags & 0x30 != 0 {
            change = flags & 0x10 != 0 ? .released : .replaced(status: .autocommit)
            if flags & 0x30 == 0x20, flags & 0x08 != 0, case .readQuery = call.hook {
                // proxy.connection:migrate(n): another connection, brought to the session's state
                change = .migrated(previous: flags & 0x04 != 0 ? SessionState() : nil)
            }
        }
        let choice: Int? = call.hook == .connectServer && flags & 0x40 != 0 ? Int(flags & 3) : nil
        return ConnectionMachine.HookResult(outcome: outcome, queries: queries, closeRequested: flags & 0x87 == 0x80,
                                            serverChange: change, backendChoice: choice)
    }

    mutating func answer() -> ScriptResponse {
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
}
