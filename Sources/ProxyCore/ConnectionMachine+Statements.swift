import MySQLWire
import NIOCore

/// The binary prepared statements a server connection holds for the sessions that share it: one
/// per statement text and schema, by the server's id. It goes with the connection (the pool keeps
/// it while the connection is idle), so that a session taking the connection finds a statement it
/// prepared elsewhere already there and prepares nothing. A session reaches only the statements
/// it prepared itself (ids are the session's), and binds its own parameter types at its first
/// execution on the connection. A reset empties it.
public struct ServerStatements: Equatable, Sendable {
    struct Key: Hashable, Sendable {
        var schema: String
        /// The COM_STMT_PREPARE payload.
        var prepare: ByteBuffer
    }

    var byKey: [Key: UInt32] = [:]
    /// The bytes of statement text the keys hold.
    var bytes = 0

    public init() {}

    public var count: Int { byKey.count }

    /// The most kept per connection, in statements and in bytes of their text (beyond, a
    /// session's statements are closed when it leaves).
    static let most = 1024
    static let mostBytes = 1 << 20

    mutating func insert(_ key: Key, _ id: UInt32) -> Bool {
        guard byKey.count < Self.most, bytes + key.prepare.readableBytes <= Self.mostBytes else { return false }
        byKey[key] = id
        bytes += key.prepare.readableBytes
        return true
    }

    mutating func remove(_ key: Key) {
        if byKey.removeValue(forKey: key) != nil { bytes -= key.prepare.readableBytes }
    }
}

/// Binary prepared statements of a multiplexed session. A statement lives on the server
/// connection that prepared it, and a multiplexed session changes connections; so the proxy keeps
/// each statement's text and last bound parameter types, and gives the client statement ids of
/// the session's own (the server's id where it is free). Each command naming a statement
/// (EXECUTE, SEND_LONG_DATA, RESET, FETCH, CLOSE) has its id rewritten to the one on the current
/// connection; where the statement is not there yet, a COM_STMT_PREPARE of the proxy's goes in
/// front of the command, in the same flush, and the command names MariaDB's "statement prepared
/// last" (0xFFFFFFFF; a prepare that fails makes it fail too, with 1243), carrying the
/// parameter types if the client no longer sends them. The proxy's prepare answer is read for the
/// new id and dropped.
///
/// What cannot be moved pins the session: a statement the proxy could not keep (text over 64 KiB
/// or split across reads, more than 168 parameters, LOAD DATA, MySQL's query attributes, beyond
/// `mostStatements`), one prepared in another schema than the session's current one, types the
/// proxy did not see, an open cursor, long data on its way. An id the session never got, or
/// closed, reaches the server as 0 (unknown: the server's own error), never as another session's
/// statement.
extension ConnectionMachine {
    struct Statements {
        struct Statement {
            /// The COM_STMT_PREPARE payload (command byte and text); nil: it cannot be prepared again.
            var prepare: ByteBuffer?
            /// The schema it was prepared in (table names resolve there).
            var schema: String
            var parameters: Int
            /// The parameter types last bound (two bytes each); nil where none were seen.
            var types: [UInt8]?
            /// An EXECUTE without types came while the proxy knew none: it cannot bind them elsewhere.
            var typesUnknown = false
            /// The statement's id on the current server connection (nil: not there, or its prepare is on its way).
            var serverID: UInt32?
            /// The server connection (`Statements.generation`) `serverID` belongs to.
            var generation: UInt32
            /// The server's statement has types bound (an EXECUTE with types went to it).
            var typesBound: Bool
            /// `serverID` is the connection's statement for its text (`ServerStatements`): it stays
            /// there when the session leaves.
            var shared = false
        }

        /// A prepare whose answer is to come: the client's own (its payload, nil if not kept; the
        /// start of an EXECUTE of it sent before the answer came), or the proxy's, preparing `clientID` again on connection `generation`.
        enum Answer {
            case client(prepare: ByteBuffer?, execute: ByteBuffer?)
            case proxy(clientID: UInt32, generation: UInt32)
        }

        enum LastPrepare: Equatable {
            case none
            case client
            case proxy(UInt32)
        }

        var byClient: [UInt32: Statement] = [:]
        /// The statements on the current server connection, shared with the sessions that had it before.
        var server = ServerStatements()
        /// Counts the session's server connections: a statement is there when its generation is this.
        var generation: UInt32 = 0
        /// Prepares on their way, by the ordinal of their response.
        var answers: [(ordinal: UInt64, answer: Answer)] = []
        /// ERR payloads of the proxy's prepares the server refused, by the ordinal of the response
        /// they replace (the command's behind them).
        var refusals: [(ordinal: UInt64, err: ByteBuffer)] = []
        /// Which statement the server's "prepared last" (0xFFFFFFFF) names on this connection.
        var lastPrepare = LastPrepare.none
        /// The client id the client's last prepare got.
        var lastClientID: UInt32?
        var cursors: [UInt32] = []
        /// EXECUTEs asking for a cursor and FETCHes, by the ordinal of their response: its end says
        /// whether the cursor is open (SERVER_STATUS_CURSOR_EXISTS) or done (LAST_ROW_SENT).
        var cursorAnswers: [(ordinal: UInt64, id: UInt32)] = []
        var longData: [UInt32] = []
        /// The bytes of statement text kept for the session (at most `mostKeptBytes`).
        var keptBytes = 0
        /// Where the proxy's own ids go on from (for server ids the session uses already).
        var nextID: UInt32 = 0x4000_0000
        /// Client bytes of a packet header (and prefix) that straddle reads: kept until whole, so
        /// that a statement id in them can be rewritten.
        var held = ByteBuffer()
        /// Whether a statement cannot move, the session being in `unmovableSchema` (nil: a
        /// statement came, went or changed since it was worked out).
        var unmovable: Bool?
        var unmovableSchema = ""

        /// Makes `statement` (on this connection) the connection's for its text, if it has none
        /// and has room; whether it is the connection's now.
        mutating func share(_ statement: Statement) -> Bool {
            guard let serverID = statement.serverID, let key = Statements.key(statement) else { return false }
            if let existing = server.byKey[key] { return existing == serverID }
            return server.insert(key, serverID)
        }

        mutating func freeID() -> UInt32 {
            while byClient[nextID] != nil || nextID == 0 || nextID == 0xFFFF_FFFF { nextID &+= 1 }
            defer { nextID &+= 1 }
            return nextID
        }

        /// What the statements pin, the session being in `schema`.
        mutating func pins(schema: String) -> SessionState.Pins {
            var pins: SessionState.Pins = []
            if !cursors.isEmpty { pins.insert(.cursor) }
            if !longData.isEmpty { pins.insert(.longData) }
            if unmovable == nil || unmovableSchema != schema {
                unmovable = byClient.values.contains { $0.prepare == nil || $0.typesUnknown || $0.schema != schema }
                unmovableSchema = schema
            }
            if unmovable == true { pins.insert(.preparedStatement) }
            return pins
        }

        /// The session's COM_RESET_CONNECTION (or COM_CHANGE_USER): the server dropped them all.
        mutating func removeAll() {
            byClient = [:]
            keptBytes = 0
            server = ServerStatements()
            cursors = []
            cursorAnswers = []
            longData = []
            lastPrepare = .none
            lastClientID = nil
            unmovable = nil
        }

        /// The session goes on on another server connection, which holds `shared`: none of the
        /// session's statements are there but those found in it.
        mutating func connectionChanged(_ shared: ServerStatements) {
            generation &+= 1
            lastPrepare = .none
            answers = []
            refusals = []
            cursorAnswers = []
            unmovable = nil
            server = shared
        }

        /// The key of `statement` among a connection's statements.
        static func key(_ statement: Statement) -> ServerStatements.Key? {
            statement.prepare.map { ServerStatements.Key(schema: statement.schema, prepare: $0) }
        }

        /// Whether another statement of the session's than `id` uses server statement `serverID` here.
        func shares(_ serverID: UInt32, besides id: UInt32) -> Bool {
            byClient.contains { $0.key != id && $0.value.generation == generation && $0.value.serverID == serverID }
        }
    }

    /// The session's statements that stay on the connection it leaves: each is the connection's
    /// for its text unless the connection has one already (then it is closed: COM_STMT_CLOSE,
    /// which the server does not answer, in front of the hand-over).
    static func statementsLeaving(_ s: inout Statements) -> ByteBuffer? {
        var closes: ByteBuffer?
        var closed: [UInt32] = []
        for (id, statement) in s.byClient where statement.generation == s.generation {
            guard let serverID = statement.serverID, !statement.shared, !s.share(statement) else { continue }
            s.byClient[id]!.serverID = nil  // (closed: prepared again, should the session come back)
            guard !closed.contains(serverID) else { continue }
            closed.append(serverID)
            var payload = ByteBuffer()
            payload.writeInteger(CommandCode.stmtClose.rawValue)
            payload.writeInteger(serverID, endianness: .little)
            var seq: UInt8 = 0
            if closes == nil { closes = ByteBuffer() }
            closes!.writeMySQLPacket(payload, sequenceID: &seq)
        }
        return closes
    }

    /// The most statements kept for a session (more pin it while they exist).
    static let mostStatements = 256
    /// The longest statement text kept, and the most kept for a session in all.
    static let longestKeptPrepare = 1 << 16
    static let mostKeptBytes = 1 << 20
    /// The most parameters of a statement the proxy moves (its types flag must lie within the
    /// 32 bytes of a packet's start that the relay sees whole).
    static let mostMovedParameters = 168

    /// The binary prepared statements the session holds (multiplexing; the admin interface).
    public var preparedStatementCount: Int { tracking?.statements.byClient.count ?? 0 }

    /// Whether statement ids are the session's own (multiplexing).
    var remapsStatements: Bool { configuration.multiplexes && tracking != nil && configuration.hooks.isDisjoint(with: Self.commandHooks) }

    /// Keeps the statement pins in step (after the client's commands and the server's answers).
    static func updateStatementPins(_ t: inout Tracking) {
        let schema = t.state.schema ?? t.loginDatabase
        let pins = t.statements.pins(schema: schema)
        t.state.pins.subtract([.preparedStatement, .cursor, .longData])
        t.state.pins.formUnion(pins)
    }

    /// A bytes edit of the client's stream: `remove` bytes at `at` (in the chunk with held bytes
    /// in front) give way to `insert`.
    struct ClientEdit {
        var at: Int
        var remove: Int
        var insert: ByteBuffer
    }

    /// A client command naming a statement, before the response tracker registers it (so that a
    /// prepare of the proxy's goes first): the edits that make it name the statement on this
    /// connection. `start`: the packet's header in `combined`.
    static func statementCommandArriving(_ code: CommandCode, _ packet: FrameScanner.PacketStart, at start: Int, in combined: ByteBuffer,
                                         _ t: inout Tracking, _ tracker: inout ResponseTracker, _ edits: inout [ClientEdit],
                                         preparedAgain: inout UInt32) {
        guard var id = packet.prefix.uint32(at: 1), start + PacketHeader.size + 5 <= combined.readableBytes else { return }
        let sent = id
        if id == 0xFFFF_FFFF {
            // MariaDB's "prepared last": the client's last prepare, wherever it was made
            if t.statements.lastPrepare == .client {
                if code == .stmtExecute { noteExecuteForPendingPrepare(at: start, in: combined, &t.statements) }
                return
            }
            // a prepare of the proxy's came since: the client's last one is the one still unanswered (not
            // reachable: the server's error), else the last it was given
            let unanswered = t.statements.answers.contains { if case .client = $0.answer { true } else { false } }
            id = unanswered ? 0 : t.statements.lastClientID ?? 0
        }
        guard var statement = t.statements.byClient[id] else {
            if sent != 0 { edits.append(idEdit(start, 0)) }
            return
        }
        let here = statement.generation == t.statements.generation
        let preparingHere = here && statement.serverID == nil && t.statements.lastPrepare == .proxy(id)
        var target: UInt32
        var prefix = ByteBuffer()
        if code == .stmtClose {
            t.statements.byClient[id] = nil
            t.statements.keptBytes -= statement.prepare?.readableBytes ?? 0
            t.statements.unmovable = nil
            t.statements.cursors.removeAll { $0 == id }
            t.statements.longData.removeAll { $0 == id }
            if t.statements.lastClientID == id { t.statements.lastClientID = nil }
            target = preparingHere ? 0xFFFF_FFFF : here ? statement.serverID ?? 0 : 0
            if t.statements.lastPrepare == .proxy(id) { t.statements.lastPrepare = .none }
            if target != 0, target != 0xFFFF_FFFF {
                if t.statements.shares(target, besides: id) {
                    target = 0  // another statement of the session's is the same one on the server
                } else if let key = Statements.key(statement), t.statements.server.byKey[key] == target {
                    t.statements.server.remove(key)
                }
            }
            if target != sent { edits.append(idEdit(start, target)) }
            return
        }
        if here, let serverID = statement.serverID {
            target = serverID
        } else if !here, let key = Statements.key(statement), let shared = t.statements.server.byKey[key] {
            // on this connection already, prepared by a session before: the session's types go with its first execution
            statement.generation = t.statements.generation
            statement.serverID = shared
            statement.typesBound = false
            statement.shared = true
            target = shared
        } else if preparingHere {
            target = 0xFFFF_FFFF  // its prepare is on its way, and the last one
        } else if let prepare = statement.prepare,
                  let bytes = registerProxyCommand(prepare, &tracker, &t.proxyResponses, responsesEnded: t.responsesEnded) {
            // prepared again here, in front of the command
            prefix = bytes
            preparedAgain &+= 1
            t.statements.answers.append((t.proxyResponses.last!, .proxy(clientID: id, generation: t.statements.generation)))
            t.statements.lastPrepare = .proxy(id)
            statement.generation = t.statements.generation
            statement.serverID = nil
            statement.typesBound = false
            statement.shared = false
            target = 0xFFFF_FFFF
        } else {
            edits.append(idEdit(start, 0))
            return
        }
        let movable = (statement.prepare != nil, statement.typesUnknown)
        defer {
            if movable != (statement.prepare != nil, statement.typesUnknown) { t.statements.unmovable = nil }
            t.statements.byClient[id] = statement
        }
        switch code {
        case .stmtExecute:
            t.statements.longData.removeAll { $0 == id }
            // executing a statement closes its cursor; one asked for is open until its answer says otherwise
            t.statements.cursors.removeAll { $0 == id }
            if (packet.prefix[5] ?? 0) & 0x07 != 0 {
                t.statements.cursors.append(id)
                t.statements.cursorAnswers.append((t.responsesEnded + UInt64(tracker.pendingCount), id))
            }
            guard statement.parameters > 0 else { break }
            let flagAt = start + PacketHeader.size + 10 + (statement.parameters + 7) / 8
            guard let flag = combined.getInteger(at: combined.readerIndex + flagAt, as: UInt8.self) else {
                statement.typesUnknown = true
                break
            }
            if flag == 1 {
                statement.types = combined.getBytes(at: combined.readerIndex + flagAt + 1, length: 2 * statement.parameters)
                statement.typesUnknown = statement.types == nil
                statement.typesBound = true
            } else if !statement.typesBound {
                // the server's statement has no types yet: the ones the client bound last go with it
                guard let types = statement.types,
                      let head = typesInserted(packet, at: start, flagAt: flagAt, types: types, in: combined, target: target) else {
                    statement.typesUnknown = true
                    if prefix.readableBytes > 0 { edits.append(ClientEdit(at: start, remove: 0, insert: prefix)) }
                    edits.append(idEdit(start, 0))
                    return
                }
                statement.typesBound = true
                prefix.writeImmutableBuffer(head)
                edits.append(ClientEdit(at: start, remove: flagAt + 1 - start, insert: prefix))
                return
            }
        case .stmtBulkExecute:
            t.statements.longData.removeAll { $0 == id }
            statement.prepare = nil  // (its own layout of types: not moved)
        case .stmtSendLongData:
            if !t.statements.longData.contains(id) { t.statements.longData.append(id) }
        case .stmtReset:
            t.statements.cursors.removeAll { $0 == id }
            t.statements.longData.removeAll { $0 == id }
        case .stmtFetch:
            t.statements.cursorAnswers.append((t.responsesEnded + UInt64(tracker.pendingCount), id))
        default:
            break
        }
        if prefix.readableBytes > 0 { edits.append(ClientEdit(at: start, remove: 0, insert: prefix)) }
        if target != sent { edits.append(idEdit(start, target)) }
    }

    /// The client's EXECUTE of "prepared last" before its prepare was answered: the start of it
    /// is kept, to read the types it binds once the parameters are known.
    static func noteExecuteForPendingPrepare(at start: Int, in combined: ByteBuffer, _ s: inout Statements) {
        guard let i = s.answers.lastIndex(where: { if case .client = $0.answer { true } else { false } }),
              case .client(let prepare, _) = s.answers[i].answer else { return }
        let available = min(combined.readableBytes - start - PacketHeader.size, 11 + (mostMovedParameters + 7) / 8 + 2 * mostMovedParameters)
        let execute = copied(combined.getSlice(at: combined.readerIndex + start + PacketHeader.size, length: max(0, available)))
        s.answers[i].answer = .client(prepare: prepare, execute: execute)
    }

    /// Bytes of their own (a slice would keep the whole read buffer it came in alive).
    static func copied(_ slice: ByteBuffer?) -> ByteBuffer? {
        guard let slice else { return nil }
        var copy = ByteBuffer()
        copy.reserveCapacity(slice.readableBytes)
        copy.writeImmutableBuffer(slice)
        return copy
    }

    /// The types an EXECUTE payload binds for `parameters` parameters (nil: none, or not all there).
    static func boundTypes(_ execute: ByteBuffer, parameters: Int) -> [UInt8]? {
        let flagAt = 10 + (parameters + 7) / 8
        guard parameters > 0, execute.getInteger(at: execute.readerIndex + flagAt, as: UInt8.self) == 1 else { return nil }
        return execute.getBytes(at: execute.readerIndex + flagAt + 1, length: 2 * parameters)
    }

    /// The end of a response (`ordinal`): an EXECUTE's or FETCH's says whether its cursor is open.
    static func responseEnded(_ ordinal: UInt64, _ end: ResponseTracker.ResponseEnd, _ s: inout Statements) {
        while let first = s.cursorAnswers.first, first.ordinal <= ordinal {
            s.cursorAnswers.removeFirst()
            guard first.ordinal == ordinal else { continue }
            let status = end.status ?? []
            if end.kind == .error || !status.contains(.cursorExists) || status.contains(.lastRowSent) {
                s.cursors.removeAll { $0 == first.id }
            }
        }
    }

    /// The 4-byte id of the command starting at `start`, written as `id`.
    static func idEdit(_ start: Int, _ id: UInt32) -> ClientEdit {
        var bytes = ByteBuffer()
        bytes.writeInteger(id, endianness: .little)
        return ClientEdit(at: start + PacketHeader.size + 1, remove: 4, insert: bytes)
    }

    /// An EXECUTE that binds no types, for a statement prepared again: its start up to the types
    /// flag written again with the flag set and the types, the packet's length grown to match.
    static func typesInserted(_ packet: FrameScanner.PacketStart, at start: Int, flagAt: Int, types: [UInt8], in combined: ByteBuffer,
                              target: UInt32) -> ByteBuffer? {
        let length = packet.header.payloadLength + types.count
        guard !packet.isMultiFrame, length < PacketHeader.maxPayloadLength,
              let head = combined.getSlice(at: combined.readerIndex + start + PacketHeader.size, length: flagAt - start - PacketHeader.size)
        else { return nil }
        var out = ByteBuffer()
        out.reserveCapacity(PacketHeader.size + head.readableBytes + 1 + types.count)
        out.writeInteger(UInt8(truncatingIfNeeded: length))
        out.writeInteger(UInt16(truncatingIfNeeded: length >> 8), endianness: .little)
        out.writeInteger(packet.header.sequenceID)
        var rest = head
        out.writeInteger(CommandCode.stmtExecute.rawValue)
        rest.moveReaderIndex(forwardBy: 5)
        out.writeInteger(target, endianness: .little)
        out.writeImmutableBuffer(rest)
        out.writeInteger(UInt8(1))
        out.writeBytes(types)
        return out
    }

    /// The client's COM_STMT_PREPARE (registered with the tracker as `ordinal`): its payload is
    /// kept, where the proxy can prepare it again.
    static func clientPrepareSent(_ packet: FrameScanner.PacketStart, at start: Int, in combined: ByteBuffer, ordinal: UInt64,
                                  capabilities: CapabilityFlags, _ t: inout Tracking) {
        let length = packet.header.payloadLength
        var prepare: ByteBuffer?
        if !packet.isMultiFrame, length <= longestKeptPrepare, !capabilities.contains(.queryAttributes),
           !LocalInfile.mayAskForFile(packet.prefix, payloadLength: length) {
            prepare = copied(combined.getSlice(at: combined.readerIndex + start + PacketHeader.size, length: length))
        }
        t.statements.answers.append((ordinal, .client(prepare: prepare, execute: nil)))
        t.statements.lastPrepare = .client
    }

    /// The first packet of a prepare's answer (`start` in `combined`): the statement is the
    /// session's (the client's prepare; the edit gives it the session's id) or is there again
    /// (the proxy's).
    static func prepareAnswered(_ answer: Statements.Answer, _ packet: FrameScanner.PacketStart, at start: Int, ordinal: UInt64,
                                in combined: ByteBuffer, _ t: inout Tracking) -> (start: Int, end: Int, replacement: ByteBuffer?)? {
        guard packet.firstByte == 0x00, let serverID = packet.prefix.uint32(at: 1), let parameters = packet.prefix.uint16(at: 7) else {
            // refused: nothing to keep; a statement the proxy prepared again is prepared again at its next command
            if case .proxy(let clientID, _) = answer {
                if t.statements.lastPrepare == .proxy(clientID) { t.statements.lastPrepare = .none }
                // the command behind it fails for want of the statement ("unknown handler"): the client
                // gets the reason instead, as a direct connection would (the table is gone, ...)
                let length = PacketHeader.size + packet.header.payloadLength
                if packet.firstByte == 0xFF, !packet.isMultiFrame, length <= 4096, start + length <= combined.readableBytes,
                   let err = combined.getSlice(at: combined.readerIndex + start + PacketHeader.size, length: packet.header.payloadLength) {
                    t.statements.refusals.append((ordinal + 1, copied(err)!))
                }
            }
            return nil
        }
        t.statements.unmovable = nil
        switch answer {
        case .client(var prepare, let execute):
            let types = execute.flatMap { boundTypes($0, parameters: Int(parameters)) }
            var id = serverID
            if t.statements.byClient[id] != nil || id == 0 || id == 0xFFFF_FFFF { id = t.statements.freeID() }
            if Int(parameters) > mostMovedParameters || t.statements.byClient.count >= mostStatements
                || t.statements.keptBytes + (prepare?.readableBytes ?? 0) > mostKeptBytes { prepare = nil }
            t.statements.keptBytes += prepare?.readableBytes ?? 0
            var statement = Statements.Statement(
                prepare: prepare, schema: t.state.schema ?? t.loginDatabase, parameters: Int(parameters), types: types,
                serverID: serverID, generation: t.statements.generation, typesBound: types != nil)
            statement.shared = t.statements.share(statement)
            t.statements.byClient[id] = statement
            t.statements.lastClientID = id
            guard id != serverID else { return nil }
            var bytes = ByteBuffer()
            bytes.writeInteger(id, endianness: .little)
            return (start + PacketHeader.size + 1, start + PacketHeader.size + 5, bytes)
        case .proxy(let clientID, let generation):
            if generation == t.statements.generation, var s = t.statements.byClient[clientID], s.generation == generation, s.serverID == nil {
                s.serverID = serverID
                s.shared = t.statements.share(s)
                t.statements.byClient[clientID] = s
            }
            return nil
        }
    }

    /// Registers a command of the proxy's with the response tracker (its answer dropped) and frames it.
    static func registerProxyCommand(_ payload: ByteBuffer, _ tracker: inout ResponseTracker, _ proxyResponses: inout [UInt64],
                                     responsesEnded: UInt64) -> ByteBuffer? {
        let start = payload.withUnsafeReadableBytes {
            FrameScanner.PacketStart(header: PacketHeader(payloadLength: $0.count, sequenceID: 0), prefix: PacketPrefix($0))
        }
        guard (try? tracker.clientPacketStarted(start)) != nil else { return nil }
        proxyResponses.append(responsesEnded + UInt64(tracker.pendingCount) - 1)
        var framed = ByteBuffer()
        var seq: UInt8 = 0
        framed.writeMySQLPacket(payload, sequenceID: &seq)
        return framed
    }
}
