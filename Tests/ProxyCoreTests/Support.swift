import Foundation
import MySQLWire
import NIOCore
import Testing
@testable import ProxyCore

typealias Action = ConnectionMachine.Action
typealias HookCall = ConnectionMachine.HookCall
typealias HookResult = ConnectionMachine.HookResult

/// Packets as the wire carries them, captured from MariaDB 10.11 and libmariadb 3.3.
enum Wire {
    static let greeting = "0a352e352e352d31302e31312e31392d4d6172696144422d302b64656231327531000a000000474e34542c7d556e00fef7080200ff81150000000000001d0000004a643d406a76343f7b72484f006d7973716c5f6e61746976655f70617373776f726400"
    static let handshakeResponse = "84a2bf000000100021000000000000000000000000000000000000001d0000006e617400145f944c76085a805c6f80596fb1e9a40dd32c23d46d7973716c5f6e61746976655f70617373776f7264007e035f6f73054c696e75780c5f636c69656e745f6e616d650a6c69626d617269616462045f70696404353432340f5f636c69656e745f76657273696f6e06332e332e3230095f706c6174666f726d067838365f36340c70726f6772616d5f6e616d65056d7973716c0c5f7365727665725f686f7374093132372e302e302e31"
    static let okHex = "00000002000000"

    static func packets(_ list: [(String, UInt8)]) -> ByteBuffer {
        var out = ByteBuffer()
        for (hex, seq) in list {
            var s = seq
            out.writeMySQLPacket(ByteBuffer(hex: hex), sequenceID: &s)
        }
        return out
    }

    static func query(_ sql: String, seq: UInt8 = 0) -> ByteBuffer {
        var out = ByteBuffer()
        var s = seq
        out.writeMySQLPacket(ByteBuffer(bytes: [0x03] + Array(sql.utf8)), sequenceID: &s)
        return out
    }

    static func queryHex(_ sql: String) -> String { "03" + Array(sql.utf8).map { String(format: "%02x", $0) }.joined() }

    static func ok(seq: UInt8, affected: UInt8 = 0) -> ByteBuffer {
        var out = ByteBuffer()
        var s = seq
        out.writeMySQLPacket(ByteBuffer(bytes: [0x00, affected, 0x00, 0x02, 0x00, 0x00, 0x00]), sequenceID: &s)
        return out
    }

    /// A one-column text result set as the server would send it.
    static func resultSet(_ values: [String], capabilities: CapabilityFlags, firstSeq: UInt8 = 1) -> ByteBuffer {
        var out = ByteBuffer()
        var seq = firstSeq
        let column = ColumnDefinition41(schema: "", table: "", orgTable: "", name: "v", orgName: "", characterSet: 33,
                                        columnLength: 10, type: .varString, flags: [], decimals: 0)
        try! ResponseEncoding.resultSet(columns: [column], rows: values.map { [$0] }, binary: false, capabilities: capabilities,
                                        status: .autocommit, warnings: 0, sequenceID: &seq, into: &out)
        return out
    }

    static func greetingValue() -> HandshakeV10 {
        try! HandshakeV10(parsing: packets([(greeting, 0)]).frames()[0].payload)
    }
}

/// A script whose hooks are Swift closures: what the handler would report after running Lua.
final class FakeScript {
    var hooks: ScriptHooks
    /// `proxy.queries` while a hook runs.
    var queries: [Injection] = []
    var connectionCloseRequested = false
    /// What the handler did to the server connection because of the next hook (`backend_ndx`).
    var change: ConnectionMachine.ServerChange?
    var backendChoice: Int?
    var calls: [HookCall] = []
    var results: [InjectionOutcome] = []

    var onConnectServer: () -> HookOutcome = { .returned(.noDecision) }
    var onReadHandshake: () -> HookOutcome = { .returned(.noDecision) }
    var onReadAuth: () -> HookOutcome = { .returned(.noDecision) }
    var onReadAuthResult: (ByteBuffer) -> HookOutcome = { _ in .returned(.noDecision) }
    var onReadQuery: (FakeScript, ByteBuffer) -> HookOutcome = { _, _ in .returned(.noDecision) }
    var onReadQueryResult: (FakeScript, InjectionOutcome) -> HookOutcome = { _, _ in .returned(.noDecision) }

    init(hooks: ScriptHooks) { self.hooks = hooks }

    /// The commands `read_query` saw, in order.
    var readQueries: [ByteBuffer] {
        calls.compactMap { if case .readQuery(let packet) = $0.hook { return packet } else { return nil } }
    }

    func run(_ call: HookCall) -> HookResult {
        calls.append(call)
        queries = call.queries
        let outcome: HookOutcome
        switch call.hook {
        case .connectServer: outcome = onConnectServer()
        case .readHandshake: outcome = onReadHandshake()
        case .readAuth: outcome = onReadAuth()
        case .readAuthResult(let packet): outcome = onReadAuthResult(packet)
        case .readQuery(let packet): outcome = onReadQuery(self, packet)
        case .readQueryResult(let result):
            results.append(result)
            outcome = onReadQueryResult(self, result)
        }
        defer { change = nil }
        return HookResult(outcome: outcome, queries: queries, closeRequested: connectionCloseRequested, serverChange: change,
                          backendChoice: backendChoice)
    }

    func append(_ id: Int, _ sql: String, buffered: Bool = false) {
        queries.append(Injection(id: id, packet: ByteBuffer(bytes: [0x03] + Array(sql.utf8)), resultsetIsNeeded: buffered, queuedAt: 0))
    }
}

/// What one event made the machine do, as its handler would carry it out.
struct Effects {
    /// Every action but the hooks, in order.
    var actions: [Action] = []
    var hooks: [HookCall] = []

    /// Everything for the client, in order: forwarded, written, and the last words of a close.
    var toClient: ByteBuffer? { gather { if case .forwardToClient(let b) = $0 { b } else if case .queueToClient(let b) = $0 { b } else if case .forwardToClientUnderstoodNot(let b, _) = $0 { b } else if case .write(let c, _) = $0 { c } else if case .close(let c) = $0 { c.toClient } else { nil } } }
    var toBackend: ByteBuffer? { gather { if case .forwardToBackend(let b) = $0 { b } else if case .write(_, let b) = $0 { b } else if case .startBackendTLS(let r) = $0 { r } else { nil } } }
    var close: ConnectionMachine.Close? { actions.lazy.compactMap { if case .close(let c) = $0 { c } else { nil } }.first }
    var logs: [(ConnectionMachine.Severity, String)] { actions.compactMap { if case .log(let s, let m) = $0 { (s, m) } else { nil } } }
    var isEmpty: Bool { actions.allSatisfy { $0 == .none } && hooks.isEmpty }

    private func gather(_ pick: (Action) -> ByteBuffer?) -> ByteBuffer? {
        var all: ByteBuffer?
        for action in actions {
            guard var bytes = pick(action), bytes.readableBytes > 0 else { continue }
            if all == nil { all = bytes } else { all!.writeBuffer(&bytes) }
        }
        return all
    }
}

/// Runs a machine as its handler does: every action of an event is taken, hooks are answered by
/// the fake script (or not defined), and the rest is gathered for the test to look at.
struct Driver {
    var machine: ConnectionMachine
    let script: FakeScript?
    /// What the machine reported (`.report`), summed.
    var counts = ConnectionMachine.Counts()
    /// Records of the commands that ended, as reported.
    var records: [ConnectionMachine.CommandRecord] = []
    /// What the handler would answer `.verifyLogin` with (`--proxy-auth=proxy`), and what it was asked.
    var verifier: (LoginAttempt) -> LoginVerdict = { _ in .relay(plugin: "unknown") }
    var attempts: [LoginAttempt] = []

    init(_ configuration: ConnectionMachine.Configuration = .init(), script: FakeScript? = nil) {
        var c = configuration
        if let script { c.hooks = script.hooks }
        machine = ConnectionMachine(configuration: c)
        self.script = script
    }

    @discardableResult
    mutating func run(_ first: Action) -> Effects {
        var effects = Effects()
        var action = first
        if case .close = first {
            #expect(!machine.hasPendingActions, "a close returned ahead of queued actions")
        }
        while true {
            switch action {
            case .none:
                break
            case .runHook(let call):
                effects.hooks.append(call)
                action = machine.hookReturned(script?.run(call) ?? .notDefined)
                continue
            case .verifyLogin(let attempt):
                attempts.append(attempt)
                action = machine.loginVerified(verifier(attempt))
                continue
            case .report(let c, let recordsFinished):
                counts.add(c)
                if recordsFinished { records += machine.takeFinishedRecords() }
            case .relayToBackend(let bytes, let c), .relayToClient(let bytes, let c):
                // the relay's forward is all the event made: shown as the forward it is
                counts.add(c)
                effects.actions.append(action == .relayToBackend(bytes, c) ? .forwardToBackend(bytes) : .forwardToClient(bytes))
                #expect(machine.nextAction() == .none, "an action follows the relay's forward")
                return effects
            default:
                effects.actions.append(action)
            }
            action = machine.nextAction()
            if case .none = action { return effects }
        }
    }

    @discardableResult mutating func connect() -> Effects { run(machine.clientConnected()) }
    @discardableResult mutating func connected(localSocket: Bool = false) -> Effects { run(machine.backendConnected(localSocket: localSocket)) }
    @discardableResult mutating func client(_ bytes: ByteBuffer) -> Effects { run(machine.clientDataReceived(bytes)) }
    @discardableResult mutating func server(_ bytes: ByteBuffer) -> Effects { run(machine.backendDataReceived(bytes)) }
    @discardableResult mutating func client(_ list: [(String, UInt8)]) -> Effects { client(Wire.packets(list)) }
    @discardableResult mutating func server(_ list: [(String, UInt8)]) -> Effects { server(Wire.packets(list)) }
    @discardableResult mutating func serverClosed() -> Effects { run(machine.backendClosed()) }
    /// `bytes` from the server in two reads, cut at `cut`: what the client got of both.
    mutating func server(_ bytes: ByteBuffer, cutAt cut: Int) -> ByteBuffer {
        var got = server(bytes.getSlice(at: 0, length: cut)!).toClient ?? ByteBuffer()
        var second = server(bytes.getSlice(at: cut, length: bytes.readableBytes - cut)!).toClient ?? ByteBuffer()
        got.writeBuffer(&second)
        return got
    }
    @discardableResult mutating func clientClosed() -> Effects { run(machine.clientClosed()) }

    /// Connected to a server that greeted with `greeting`.
    static func greeted(_ configuration: ConnectionMachine.Configuration = .init(), script: FakeScript? = nil,
                        greeting: String = Wire.greeting) -> (Driver, Effects) {
        var d = Driver(configuration, script: script)
        d.connect()
        d.connected()
        let effects = d.server([(greeting, 0)])
        return (d, effects)
    }

    /// Logged in through a server that greeted and said OK.
    static func loggedIn(_ configuration: ConnectionMachine.Configuration = .init(), script: FakeScript? = nil) -> Driver {
        var (d, _) = greeted(configuration, script: script)
        d.client([(Wire.handshakeResponse, 1)])
        d.server(Wire.ok(seq: 2))
        return d
    }

    var capabilities: CapabilityFlags { machine.session.capabilities }

    mutating func takeRecords() -> [ConnectionMachine.CommandRecord] {
        defer { records = [] }
        return records
    }
}

extension ConnectionMachine {
    /// The session has a server connection (false in a mock server, or after the pool took it).
    var hasServer: Bool {
        switch state {
        case .exchanging(let box): return box.buffer[0].hasServer
        case .relaying, .authenticating, .readAuthResultHook: return true
        default: return false
        }
    }

    /// Commands go through the script one at a time.
    var isExchanging: Bool {
        if case .exchanging = state { return true }
        return false
    }

    mutating func takeFinishedRecords() -> [CommandRecord] {
        defer { clearFinishedRecords() }
        return finishedRecords
    }
}

extension ByteBuffer {
    func frames() -> [MySQLFrame] {
        var copy = self
        var result: [MySQLFrame] = []
        while let f = copy.readMySQLFrame() { result.append(f) }
        return result
    }

    init(hex: String) {
        var bytes: [UInt8] = []
        var chars = hex.makeIterator()
        while let hi = chars.next(), let lo = chars.next() {
            bytes.append(UInt8(String([hi, lo]), radix: 16)!)
        }
        self.init(bytes: bytes)
    }

    var hex: String { readableBytesView.map { String(format: "%02x", $0) }.joined() }
}

/// The first frame of `bytes`, which must hold one.
func firstFrame(_ bytes: ByteBuffer?) throws -> MySQLFrame {
    let b = try #require(bytes)
    return try #require(b.frames().first)
}

func firstError(_ bytes: ByteBuffer?) throws -> ERRPacket {
    try ERRPacket(parsing: firstFrame(bytes).payload)
}
