import NIOCore

/// Follows a connection's conversation packet by packet and knows, without buffering anything, where
/// each command's response ends and what the session state is.
///
/// Feed it the start of every logical packet seen in either direction (the header and first bytes,
/// see `FrameScanner`): `clientPacketStarted` for packets from the client, `serverPacketStarted` for
/// packets from the server. Commands may be pipelined, also behind the handshake response and behind
/// COM_CHANGE_USER: responses are matched to commands in order.
///
/// It covers the text protocol (OK, ERR, result sets, multi-results through
/// SERVER_MORE_RESULTS_EXISTS, LOCAL INFILE), prepared statements (prepare responses, binary result
/// sets, cursors, fetch, CALL with several result sets and OUT parameters), MariaDB's bulk execute,
/// progress reports and metadata caching, MySQL's optional result set metadata, COM_FIELD_LIST,
/// COM_STATISTICS, the status-only commands, authentication exchanges (the initial one and
/// COM_CHANGE_USER, auth switch and more-data included), commands without a response, and
/// replication streams, with or without CLIENT_DEPRECATE_EOF.
///
/// A packet it cannot place throws; the caller decides whether that ends the connection or whether
/// the tracker is `desynchronize()`d and picks up again at the client's next command.
public struct ResponseTracker: Sendable {
    /// What a packet from the client is.
    public enum ClientPacket: Hashable, Sendable {
        /// A command that starts a new exchange.
        case command(CommandCode, ResponseShape)
        /// Data of an exchange already under way: a LOCAL INFILE upload, an authentication answer,
        /// a replication stream.
        case data
        /// The empty packet that ends a LOCAL INFILE upload.
        case endOfUpload
    }

    /// What a packet from the server means for the response it belongs to.
    public enum ServerPacket: Hashable, Sendable {
        /// Part of a response that goes on.
        case partOfResponse
        /// A result set row.
        case row
        /// A MariaDB progress report (an ERR-like packet with code 0xFFFF): the command goes on.
        case progress
        /// The server asks for a LOCAL INFILE upload: the client sends its file, then an empty packet.
        case localInfileRequest
        /// The server asks for a LOCAL INFILE upload in answer to a command that cannot ask for one
        /// (see `LocalInfile`): a rogue server reaching for the client's files. The tracker expects
        /// no upload; the caller ends the connection.
        case localInfileRequestRefused
        /// An authentication step (auth switch or more data) that the client may answer.
        case authenticationStep
        /// This packet ends the response to the oldest pending command.
        case endOfResponse(ResponseEnd)
        /// A packet while no response is pending (a server's last words before closing, usually ERR).
        case unsolicited
    }

    public struct ResponseEnd: Hashable, Sendable {
        public enum Kind: Hashable, Sendable { case ok, error, eof, other }
        /// The command answered, nil for the authentication after the greeting.
        public var command: CommandCode?
        public var kind: Kind
        /// The status flags of the final OK/EOF, if there was one.
        public var status: ServerStatus?
        public var warnings: UInt16
        public var affectedRows: UInt64
        public var lastInsertID: UInt64
        /// Rows seen in all of this response's result sets.
        public var rows: UInt64
        /// Result sets (and OKs) seen in this response.
        public var results: Int
        /// The error code of the ERR that ended the response (0 for any other end).
        public var errorCode: UInt16 = 0
    }

    /// Which kind of packet the client sends next.
    public enum ClientPhase: Hashable, Sendable {
        case handshakeResponse
        case command
        case authentication
        case localInfile
        case stream
        case quit
    }

    private enum ResponseState: Hashable, Sendable {
        case idle
        case firstPacket
        case columnDefinitions(remaining: UInt64)
        case columnsEOF
        case rows
        case prepareParameters(remaining: UInt16, columns: UInt16)
        case prepareParametersEOF(columns: UInt16)
        case prepareColumns(remaining: UInt16)
        case prepareColumnsEOF
        case fieldList
        case singlePacket
        case status
        case authentication
        case stream
    }

    private struct Pending: Sendable {
        var command: CommandCode?
        var shape: ResponseShape
        /// COM_STMT_EXECUTE asked for a cursor (its flags byte), so a first result set whose EOF
        /// says SERVER_STATUS_CURSOR_EXISTS has no rows yet.
        var cursorRequested = false
        /// COM_BINLOG_DUMP(_GTID) with BINLOG_DUMP_NON_BLOCK: the stream ends with an EOF.
        var nonBlocking = false
        /// The sequence id the response's first packet carries.
        var replySequence: UInt8 = 1
        /// The command may be answered with a LOCAL INFILE request (see `LocalInfile`); for
        /// COM_STMT_PREPARE, the statement prepared may be.
        var mayAskForFile = false
    }

    public var capabilities: CapabilityFlags
    public private(set) var clientPhase: ClientPhase = .handshakeResponse
    /// The session's status as of the last OK or EOF packet.
    public private(set) var status: ServerStatus = .autocommit
    /// The tracker lost its place in the server's stream (see `desynchronize()`) and waits for the
    /// client's next command.
    public private(set) var isDesynchronized = false
    private var pending = CircularBuffer<Pending>(initialCapacity: 4)
    private var state: ResponseState = .idle
    /// Whether a packet of the current response was seen.
    private var responseStarted = false
    /// The newest command spans several frames (16 MiB or more): its reply sequence id is known
    /// only once its last frame was seen (`clientFramesSeen`).
    private var newestCommandIsLong = false
    /// The prepare response under way leaves its definitions out (MySQL's optional metadata).
    private var prepareSkipsMetadata = false
    /// Prepared statements whose execution may ask for a local file (LOAD DATA LOCAL prepared),
    /// by statement id; a handful at most.
    private var fileStatements: [UInt32] = []
    static let maximumFileStatements = 16
    /// The status of the last OK-format packet (an OK, or CLIENT_DEPRECATE_EOF's 0xFE OK) that
    /// ended a result, for a caller that reads such packets' session state: it clears this
    /// itself (the tracker only ever sets it).
    public var lastOKStatus: ServerStatus?
    private var current = ResponseEnd(command: nil, kind: .other, status: nil, warnings: 0, affectedRows: 0, lastInsertID: 0, rows: 0, results: 0)

    public init(capabilities: CapabilityFlags = [.protocol41]) {
        self.capabilities = capabilities
    }

    /// A tracker for a connection that is already past authentication (a pooled server connection,
    /// or a session answered by a script).
    public static func commandPhase(capabilities: CapabilityFlags, status: ServerStatus = .autocommit) -> ResponseTracker {
        var t = ResponseTracker(capabilities: capabilities)
        t.clientPhase = .command
        t.status = status
        return t
    }

    /// Whether commands are waiting for (the rest of) their response.
    public var isAwaitingResponse: Bool { !pending.isEmpty }
    /// How many commands are waiting for their response.
    public var pendingCount: Int { pending.count }
    /// The command whose response is being received.
    public var currentCommand: CommandCode? { pending.first?.command }
    /// Whether the response being received is a replication stream (which may never end).
    public var isStreaming: Bool { state == .stream }
    /// Whether the server is in the middle of a result set (rows may follow).
    public var isInsideResultSet: Bool {
        switch state {
        case .columnDefinitions, .columnsEOF, .rows: return true
        default: return false
        }
    }

    /// The sequence id a packet the proxy puts in place of the rest of the current response must
    /// carry, given the sequence id of the server's last frame: the one after it once the response
    /// has begun, else the one that answers the command.
    public func replySequence(afterServerSequence last: UInt8) -> UInt8 {
        guard let first = pending.first else { return last &+ 1 }
        return responseStarted ? last &+ 1 : first.replySequence
    }

    // MARK: client → server

    /// The client's handshake response (or its answer to an auth switch) went to the server: an
    /// authentication exchange follows.
    public mutating func handshakeResponseSent(capabilities: CapabilityFlags, sequenceID: UInt8 = 1) {
        self.capabilities = capabilities
        self.clientPhase = .authentication
        enqueue(Pending(command: nil, shape: .authentication, replySequence: sequenceID &+ 1))
    }

    /// Classifies a packet from the client by its first bytes and registers the response it calls for.
    public mutating func clientPacketStarted(_ packet: FrameScanner.PacketStart) throws(WireError) -> ClientPacket {
        switch clientPhase {
        case .command:
            return try commandStarted(packet)
        case .authentication where packet.header.sequenceID == 0:
            // A command pipelined behind the login (or COM_CHANGE_USER) before its verdict came:
            // answers within an authentication exchange never start a new sequence.
            return try commandStarted(packet)
        case .localInfile:
            if packet.header.payloadLength == 0 {
                clientPhase = .command
                return .endOfUpload
            }
            return .data
        case .authentication, .stream:
            return .data
        case .handshakeResponse:
            throw .unexpectedPacket("the handshake response must be handled before the command phase")
        case .quit:
            throw .unexpectedPacket("packet after COM_QUIT")
        }
    }

    private mutating func commandStarted(_ packet: FrameScanner.PacketStart) throws(WireError) -> ClientPacket {
        guard let byte = packet.firstByte else {
            throw .invalid("empty command packet")
        }
        isDesynchronized = false
        let code = CommandCode(byte)
        let shape = ResponseShape(command: code)
        var item = Pending(command: code, shape: shape, replySequence: packet.header.sequenceID &+ 1)
        newestCommandIsLong = packet.isMultiFrame && shape != .none
        switch shape {
        case .none:
            if code == .quit { clientPhase = .quit }
            if code == .stmtClose, !fileStatements.isEmpty, let id = packet.prefix.uint32(at: 1) {
                fileStatements.removeAll { $0 == id }
            }
            return .command(code, shape)
        case .authentication:
            clientPhase = .authentication
        case .stream:
            // COM_BINLOG_DUMP: 0x12, position (4), flags (2); COM_BINLOG_DUMP_GTID: 0x1E, flags (2).
            let flags = packet.prefix.uint16(at: code == .binlogDumpGTID ? 1 : 5) ?? 0
            item.nonBlocking = flags & 0x01 != 0
            clientPhase = .stream
        case .binaryResult:
            // COM_STMT_EXECUTE: 0x17, statement id (4), flags (1): READ_ONLY, FOR_UPDATE, SCROLLABLE.
            item.cursorRequested = code == .stmtExecute && (packet.prefix[5] ?? 0) & 0x07 != 0
            if code == .stmtExecute, !fileStatements.isEmpty, let id = packet.prefix.uint32(at: 1) {
                item.mayAskForFile = fileStatements.contains(id)
            }
        case .textResult, .prepare:
            item.mayAskForFile = (code == .query || code == .stmtPrepare)
                && LocalInfile.mayAskForFile(packet.prefix, payloadLength: Int(packet.header.payloadLength))
        default:
            break
        }
        enqueue(item)
        return .command(code, shape)
    }

    /// The client's frames up to `lastSequenceID` were seen: a command of 16 MiB or more is answered
    /// after its last frame.
    public mutating func clientFramesSeen(upTo lastSequenceID: UInt8) {
        guard newestCommandIsLong, !pending.isEmpty else { return }
        pending[pending.index(before: pending.endIndex)].replySequence = lastSequenceID &+ 1
    }

    /// Forgets every pending response after a packet that could not be placed: the tracker takes
    /// up again at the client's next command. Used by the transparent relay, which has no reason to
    /// end a healthy connection because the proxy does not understand one response.
    public mutating func desynchronize() {
        pending.removeAll()
        state = .idle
        responseStarted = false
        isDesynchronized = true
        if clientPhase != .quit { clientPhase = .command }
    }

    private mutating func enqueue(_ item: Pending) {
        pending.append(item)
        if pending.count == 1 { beginResponse(item) }
    }

    private mutating func beginResponse(_ item: Pending) {
        current = ResponseEnd(command: item.command, kind: .other, status: nil, warnings: 0, affectedRows: 0, lastInsertID: 0, rows: 0, results: 0)
        responseStarted = false
        switch item.shape {
        case .textResult, .binaryResult, .prepare: state = .firstPacket
        case .fetch: state = .rows
        case .fieldList: state = .fieldList
        case .singlePacket: state = .singlePacket
        case .status: state = .status
        case .authentication: state = .authentication
        case .stream: state = .stream
        case .none: state = .idle
        }
    }

    // MARK: server → client

    /// Classifies a packet from the server and advances the response it belongs to.
    public mutating func serverPacketStarted(_ packet: FrameScanner.PacketStart) throws(WireError) -> ServerPacket {
        guard let item = pending.first else { return .unsolicited }
        let first = packet.firstByte
        let length = packet.header.payloadLength
        // A packet starting with 0xFF is ERR wherever a response may end with one: no row, column
        // definition or count can start with it. 0xFE on a packet shorter than 16 MiB is an
        // EOF (or, with CLIENT_DEPRECATE_EOF, an OK with the 0xFE header).
        let isError = first == 0xFF
        let isTerminator = first == 0xFE && !packet.isMultiFrame
        if isError {
            let code = packet.prefix.uint16(at: 1) ?? 0
            if code == 0xFFFF && capabilities.contains(.mariaDBProgress) && state != .idle {
                responseStarted = true
                return .progress
            }
            current.errorCode = code
        }
        responseStarted = true

        switch state {
        case .idle:
            return .unsolicited

        case .firstPacket:
            guard let first else { throw .invalid("empty packet where a response starts") }
            if isError { return finish(kind: .error, status: nil, item) }
            if item.shape == .prepare {
                guard first == 0x00 else { throw .unexpectedPacket("prepare response starts with 0x\(String(first, radix: 16))") }
                // 0x00, statement id (4), columns (2), parameters (2), filler, warnings (2),
                // and with MySQL's optional metadata, whether the definitions follow (1).
                let columns = try packet.prefix.uint16(at: 5, "prepare OK column count")
                let parameters = try packet.prefix.uint16(at: 7, "prepare OK parameter count")
                if item.mayAskForFile, let id = packet.prefix.uint32(at: 1), fileStatements.count < Self.maximumFileStatements {
                    fileStatements.append(id)
                }
                current.warnings = packet.prefix.uint16(at: 10) ?? 0
                prepareSkipsMetadata = capabilities.contains(.optionalResultsetMetadata) && packet.prefix[12] == 0
                if parameters > 0 {
                    if !prepareSkipsMetadata {
                        state = .prepareParameters(remaining: parameters, columns: columns)
                        return .partOfResponse
                    }
                    if !capabilities.contains(.deprecateEOF) {
                        state = .prepareParametersEOF(columns: columns)
                        return .partOfResponse
                    }
                }
                return afterPrepareParameters(columns: columns, item)
            }
            switch first {
            case 0x00:
                let ok = try OKPacket.peekStatus(packet.prefix)
                lastOKStatus = ok.status
                return resultEnded(kind: .ok, status: ok.status, warnings: ok.warnings, affected: ok.affectedRows, insertID: ok.lastInsertID, item)
            case 0xFB:
                // LOAD DATA LOCAL INFILE, also through COM_STMT_EXECUTE (MariaDB prepares it).
                guard item.mayAskForFile else { return .localInfileRequestRefused }
                clientPhase = .localInfile
                return .localInfileRequest
            case 0xFE where isTerminator:
                let end = try terminatorStatus(packet)
                return resultEnded(kind: .eof, status: end.status, warnings: end.warnings, affected: 0, insertID: 0, item)
            default:
                var index = 0
                let count = try packet.prefix.lengthEncodedInteger(at: &index, "column count")
                guard count > 0 else { throw .invalid("result set with zero columns") }
                // MariaDB's metadata caching and MySQL's optional metadata add a byte after the
                // count: 0 when the column definitions are left out (the EOF after them is not).
                let optional = capabilities.contains(.mariaDBCacheMetadata) || capabilities.contains(.optionalResultsetMetadata)
                if optional && packet.prefix[index] == 0 {
                    state = capabilities.contains(.deprecateEOF) ? .rows : .columnsEOF
                } else {
                    state = .columnDefinitions(remaining: count)
                }
                return .partOfResponse
            }

        case .columnDefinitions(let remaining):
            if isError { return finish(kind: .error, status: nil, item) }
            if remaining > 1 {
                state = .columnDefinitions(remaining: remaining - 1)
            } else {
                state = capabilities.contains(.deprecateEOF) ? .rows : .columnsEOF
            }
            return .partOfResponse

        case .columnsEOF:
            if isError { return finish(kind: .error, status: nil, item) }
            guard EOFPacket.isEOF(firstByte: first, payloadLength: length) else {
                throw .unexpectedPacket("expected EOF after column definitions")
            }
            let eof = try terminatorStatus(packet)
            status = eof.status
            if opensCursor(item, eof.status) {
                // A cursor was opened: rows come later, through COM_STMT_FETCH.
                return resultEnded(kind: .eof, status: eof.status, warnings: eof.warnings, affected: 0, insertID: 0, item)
            }
            state = .rows
            return .partOfResponse

        case .rows:
            if isError { return finish(kind: .error, status: nil, item) }
            if isTerminator {
                let end = try terminatorStatus(packet)
                if item.shape == .fetch {
                    return finish(kind: .eof, status: end.status, warnings: end.warnings, item)
                }
                return resultEnded(kind: .eof, status: end.status, warnings: end.warnings, affected: end.affected, insertID: end.insertID, item)
            }
            guard first != nil else { throw .invalid("empty row packet") }
            current.rows &+= 1
            return .row

        case .prepareParameters(let remaining, let columns):
            if remaining > 1 {
                state = .prepareParameters(remaining: remaining - 1, columns: columns)
                return .partOfResponse
            }
            if !capabilities.contains(.deprecateEOF) {
                state = .prepareParametersEOF(columns: columns)
                return .partOfResponse
            }
            return afterPrepareParameters(columns: columns, item)

        case .prepareParametersEOF(let columns):
            guard EOFPacket.isEOF(firstByte: first, payloadLength: length) else {
                throw .unexpectedPacket("expected EOF after parameter definitions")
            }
            return afterPrepareParameters(columns: columns, item)

        case .prepareColumns(let remaining):
            if remaining > 1 {
                state = .prepareColumns(remaining: remaining - 1)
                return .partOfResponse
            }
            if !capabilities.contains(.deprecateEOF) {
                state = .prepareColumnsEOF
                return .partOfResponse
            }
            return finish(kind: .ok, status: nil, item)

        case .prepareColumnsEOF:
            guard EOFPacket.isEOF(firstByte: first, payloadLength: length) else {
                throw .unexpectedPacket("expected EOF after column definitions")
            }
            let eof = try terminatorStatus(packet)
            return finish(kind: .ok, status: eof.status, item)

        case .fieldList:
            if isError { return finish(kind: .error, status: nil, item) }
            if isTerminator {
                let end = try terminatorStatus(packet)
                return finish(kind: .eof, status: end.status, warnings: end.warnings, item)
            }
            return .partOfResponse

        case .singlePacket:
            return finish(kind: isError ? .error : .other, status: nil, item)

        case .status:
            switch first {
            case 0x00:
                let ok = try OKPacket.peekStatus(packet.prefix)
                lastOKStatus = ok.status
                current.affectedRows = ok.affectedRows
                current.lastInsertID = ok.lastInsertID
                return finish(kind: .ok, status: ok.status, warnings: ok.warnings, item)
            case 0xFF:
                return finish(kind: .error, status: nil, item)
            case 0xFE where isTerminator:
                let end = try terminatorStatus(packet)
                return finish(kind: .eof, status: end.status, warnings: end.warnings, item)
            default:
                return finish(kind: .other, status: nil, item)
            }

        case .authentication:
            switch first {
            case 0x00:
                let ok = try OKPacket.peekStatus(packet.prefix)
                lastOKStatus = ok.status
                if clientPhase == .authentication { clientPhase = .command }
                return finish(kind: .ok, status: ok.status, warnings: ok.warnings, item)
            case 0xFF:
                if clientPhase == .authentication { clientPhase = .command }
                return finish(kind: .error, status: nil, item)
            default:
                // 0xFE auth switch, 0x01 more data (caching_sha2_password's verdict or RSA key),
                // 0x02 MySQL's next authentication factor.
                return .authenticationStep
            }

        case .stream:
            // Binary log events start with 0x00. An ERR ends any stream; a non-blocking dump ends
            // with an EOF once the last event was sent.
            if isError || (item.nonBlocking && isTerminator) {
                if clientPhase == .stream { clientPhase = .command }
                return finish(kind: isError ? .error : .eof, status: nil, item)
            }
            return .partOfResponse
        }
    }

    /// Whether the EOF after a binary result's column definitions means a cursor was opened: only
    /// when the client asked for one. (MariaDB also sets SERVER_STATUS_CURSOR_EXISTS on the result
    /// sets of a procedure that has a cursor open, with their rows following.)
    private func opensCursor(_ item: Pending, _ status: ServerStatus) -> Bool {
        item.cursorRequested && status.contains(.cursorExists) && !status.contains(.moreResultsExist)
    }

    private mutating func afterPrepareParameters(columns: UInt16, _ item: Pending) -> ServerPacket {
        guard columns > 0 else { return finish(kind: .ok, status: nil, item) }
        if !prepareSkipsMetadata {
            state = .prepareColumns(remaining: columns)
            return .partOfResponse
        }
        if !capabilities.contains(.deprecateEOF) {
            state = .prepareColumnsEOF
            return .partOfResponse
        }
        return finish(kind: .ok, status: nil, item)
    }

    /// Reads an EOF's, or a DEPRECATE_EOF OK's, status.
    private mutating func terminatorStatus(_ packet: FrameScanner.PacketStart) throws(WireError) -> (status: ServerStatus, warnings: UInt16, affected: UInt64, insertID: UInt64) {
        if capabilities.contains(.deprecateEOF) && packet.header.payloadLength >= 7 {
            let ok = try OKPacket.peekStatus(packet.prefix)
            lastOKStatus = ok.status
            return (ok.status, ok.warnings, ok.affectedRows, ok.lastInsertID)
        }
        // EOF: 0xFE, warnings (2), status (2). A pre-4.1 EOF is the single byte.
        let prefix = packet.prefix
        guard let warnings = prefix.uint16(at: 1), let status = prefix.uint16(at: 3) else {
            if prefix.count == 1 { return ([], 0, 0, 0) }
            throw .truncated("EOF packet")
        }
        return (ServerStatus(rawValue: status), warnings, 0, 0)
    }

    /// One result of a possibly multi-result response ended; the response ends unless more follow.
    private mutating func resultEnded(kind: ResponseEnd.Kind, status: ServerStatus, warnings: UInt16, affected: UInt64, insertID: UInt64, _ item: Pending) -> ServerPacket {
        current.results += 1
        current.affectedRows = affected
        current.lastInsertID = insertID
        if status.contains(.moreResultsExist) {
            self.status = status
            state = .firstPacket
            return .partOfResponse
        }
        return finish(kind: kind, status: status, warnings: warnings, item)
    }

    private mutating func finish(kind: ResponseEnd.Kind, status: ServerStatus?, warnings: UInt16 = 0, _ item: Pending) -> ServerPacket {
        if let status { self.status = status }
        var end = current
        end.kind = kind
        end.status = status
        end.warnings = warnings
        if kind == .error || kind == .other { end.results += 1 }
        pending.removeFirst()
        if let next = pending.first {
            beginResponse(next)
        } else {
            state = .idle
            responseStarted = false
        }
        return .endOfResponse(end)
    }
}
