import MySQLWire
import NIOCore

/// What the machine tells its handler about each command (for the metrics' duration histograms
/// and the query log) and about why the connection ended. The machine never reads the clock: the
/// handler puts the time of the event into `now` before handing the event over, and only when it
/// wants durations (`wantsTime`).
extension ConnectionMachine {
    public enum Recording: Equatable, Sendable {
        /// Nothing (no metrics endpoint, no query log): the relay reads no clock.
        case off
        /// Command kinds and durations.
        case durations
        /// Also the first `textLimit` bytes of each COM_QUERY, for the query log.
        case text(limit: Int)
    }

    /// A command, from the client's packet to the end of the response the client got.
    public struct CommandRecord: Equatable, Sendable {
        public var command: CommandCode
        /// Monotonic nanoseconds (the handler's clock).
        public var started: UInt64
        public var ended: UInt64 = 0
        public var rows: UInt64 = 0
        public var affectedRows: UInt64 = 0
        public var errorCode: UInt16 = 0
        /// Bytes of the response from the server.
        public var responseBytes = 0
        /// The start of the statement (COM_QUERY, COM_STMT_PREPARE), when the query log wants it.
        public var text: ByteBuffer?
        /// The statement is longer than the limit.
        public var textCut = false
        /// Bytes of the text still to come from the client's next reads (the relay sees a
        /// statement one read at a time); more than 0 in a finished record when the rest never came.
        public var textWanted = 0
        /// The text is not the whole statement.
        public var textTruncated: Bool { textCut || textWanted > 0 }
        /// Answered by the script, without the server.
        public var answeredByScript = false

        public var nanoseconds: Int { ended >= started ? Int(clamping: ended - started) : 0 }

        public init(command: CommandCode, started: UInt64) {
            self.command = command
            self.started = started
        }
    }

    /// Commands whose timing is kept at once, at most (a client that pipelines more is timed
    /// for the first ones only, rather than growing the list without bound).
    static let maximumOpenRecords = 64

    /// The client sent command `code`; `payload` holds its whole packet.
    mutating func recordCommandStarted(_ code: CommandCode, expectsResponse: Bool, payload: ByteBuffer?) {
        Self.recordStart(code, expectsResponse: expectsResponse, payload: payload, payloadLength: payload?.readableBytes ?? 0,
                         recording: configuration.recording, now: now, open: &openRecords, finished: &finishedRecords)
    }

    /// As `recordCommandStarted`, on the properties alone (for use inside a scan of a chunk):
    /// `payload` holds the first bytes of a packet of `payloadLength`; the rest of the statement's
    /// text, if it wants more, comes through `recordRestOfText`.
    static func recordStart(_ code: CommandCode, expectsResponse: Bool, payload: ByteBuffer?, payloadLength: Int, recording: Recording,
                            now: UInt64, open: inout [CommandRecord], finished: inout [CommandRecord]) {
        guard recording != .off, open.count < maximumOpenRecords else { return }
        var record = CommandRecord(command: code, started: now)
        if case .text(let limit) = recording, code == .query || code == .stmtPrepare, var payload {
            payload.moveReaderIndex(forwardBy: min(1, payload.readableBytes))  // the command byte
            let statementLength = max(0, min(payloadLength, PacketHeader.maxPayloadLength) - 1)
            let wanted = min(limit, statementLength)
            let length = min(wanted, payload.readableBytes)
            record.text = payload.getSlice(at: payload.readerIndex, length: length)
            record.textWanted = wanted - length
            record.textCut = wanted < statementLength
        }
        if expectsResponse {
            open.append(record)
        } else {
            record.ended = now
            finished.append(record)
        }
    }

    /// When the newest open command's record still wants text, the client's read begins with more
    /// of its statement (no other command can start before that packet ends): the text takes what
    /// it still wants. Only that record can want text: it is the one whose packet is arriving.
    mutating func recordRestOfText(_ chunk: ByteBuffer) {
        guard let last = openRecords.indices.last, openRecords[last].textWanted > 0 else { return }
        let n = min(openRecords[last].textWanted, chunk.readableBytes)
        if var slice = chunk.getSlice(at: chunk.readerIndex, length: n) {
            openRecords[last].text = openRecords[last].text ?? ByteBuffer()
            openRecords[last].text!.writeBuffer(&slice)
        }
        openRecords[last].textWanted -= n
    }

    /// The response to the oldest open command ended.
    mutating func recordResponseEnded(_ end: ResponseTracker.ResponseEnd?) {
        guard configuration.recording != .off else { return }
        Self.recordEnd(end, now: now, open: &openRecords, finished: &finishedRecords)
    }

    static func recordEnd(_ end: ResponseTracker.ResponseEnd?, now: UInt64, open: inout [CommandRecord], finished: inout [CommandRecord]) {
        guard !open.isEmpty else { return }
        var record = open.removeFirst()
        record.ended = now
        if let end {
            record.rows = end.rows
            record.affectedRows = end.affectedRows
            record.errorCode = end.errorCode
        }
        finished.append(record)
    }

    /// Bytes of the server's response to the oldest open command.
    @inline(__always)
    mutating func recordResponseBytes(_ count: Int) {
        guard configuration.recording != .off, !openRecords.isEmpty else { return }
        openRecords[0].responseBytes += count
    }

    /// The handler has read `finishedRecords` (and kept no copy of the list).
    public mutating func clearFinishedRecords() {
        finishedRecords.removeAll(keepingCapacity: true)
    }

    /// Notes why the connection is ending, unless a reason is known already (the first one is the
    /// cause; what follows is its consequence).
    public mutating func noteClose(_ source: CloseSource) {
        if closeSource == nil { closeSource = source }
    }

    /// The client broke the protocol: counted, and the cause of the end.
    mutating func clientBrokeProtocol() {
        counts.clientProtocolErrors += 1
        noteClose(loginEnded ? .malformed : .clientHandshake)
    }

    /// The server broke the protocol: counted, and the cause of the end.
    mutating func backendBrokeProtocol() {
        counts.backendProtocolErrors += 1
        noteClose(loginEnded ? .backendProtocol : .backendHandshake)
    }
}
