import NIOCore
import Testing
@testable import MySQLWire

@Suite struct FramingTests {
    let max = PacketHeader.maxPayloadLength

    /// Splits encoded output back into (length, sequence id) pairs.
    func frames(of buffer: ByteBuffer) -> [(Int, UInt8)] {
        var copy = buffer
        var result: [(Int, UInt8)] = []
        while let frame = copy.readMySQLFrame() {
            result.append((frame.payload.readableBytes, frame.sequenceID))
        }
        #expect(copy.readableBytes == 0)
        return result
    }

    @Test func emptyPayloadIsOneEmptyFrame() {
        var out = ByteBuffer()
        var seq: UInt8 = 0
        out.writeMySQLPacket(ByteBuffer(), sequenceID: &seq)
        #expect(out.hex == "00000000")
        #expect(seq == 1)
    }

    @Test func comQuitFromTheDocumentation() {
        // "01 00 00 00 01": length 1, sequence 0, COM_QUIT
        var out = ByteBuffer()
        var seq: UInt8 = 0
        out.writeMySQLPacket(ByteBuffer(hex: "01"), sequenceID: &seq)
        #expect(out.hex == "0100000001")
    }

    @Test func payloadOfMaxMinusOneIsOneFrame() {
        var out = ByteBuffer()
        var seq: UInt8 = 3
        out.writeMySQLPacket(ByteBuffer(repeating: 7, count: max - 1), sequenceID: &seq)
        #expect(frames(of: out).map(\.0) == [max - 1])
        #expect(seq == 4)
    }

    @Test func payloadOfExactlyMaxNeedsAnEmptyTrailingFrame() {
        var out = ByteBuffer()
        var seq: UInt8 = 0
        out.writeMySQLPacket(ByteBuffer(repeating: 7, count: max), sequenceID: &seq)
        let f = frames(of: out)
        #expect(f.map(\.0) == [max, 0])
        #expect(f.map(\.1) == [0, 1])
    }

    @Test func payloadOfMaxPlusOne() {
        var out = ByteBuffer()
        var seq: UInt8 = 0
        out.writeMySQLPacket(ByteBuffer(repeating: 7, count: max + 1), sequenceID: &seq)
        #expect(frames(of: out).map(\.0) == [max, 1])
    }

    @Test func twiceMaxEndsWithEmptyFrameAndSequenceWraps() {
        var out = ByteBuffer()
        var seq: UInt8 = 255
        out.writeMySQLPacket(ByteBuffer(repeating: 1, count: 2 * max), sequenceID: &seq)
        let f = frames(of: out)
        #expect(f.map(\.0) == [max, max, 0])
        #expect(f.map(\.1) == [255, 0, 1])
        #expect(seq == 2)
    }

    @Test func assemblerJoinsContinuationFrames() throws {
        var out = ByteBuffer()
        var seq: UInt8 = 0
        var payload = ByteBuffer(repeating: 0x61, count: max + 10)
        payload.setInteger(UInt8(1), at: 0)
        payload.setInteger(UInt8(2), at: max)
        out.writeMySQLPacket(payload, sequenceID: &seq)
        var assembler = PacketAssembler()
        var result: MySQLFrame?
        while let frame = out.readMySQLFrame() {
            result = try assembler.append(frame)
        }
        #expect(result?.payload == payload)
        #expect(result?.sequenceID == 0)
        #expect(!assembler.isAssembling)
    }

    @Test func assemblerRefusesPacketsOverItsLimit() throws {
        var out = ByteBuffer()
        var seq: UInt8 = 0
        out.writeMySQLPacket(ByteBuffer(repeating: 0, count: max + 10), sequenceID: &seq)
        var assembler = PacketAssembler(maximumPacketLength: max + 5)
        let first = out.readMySQLFrame()!
        #expect(try assembler.append(first) == nil)
        let second = out.readMySQLFrame()!
        #expect(throws: WireError.self) { try assembler.append(second) }
    }

    @Test func incompleteFrameIsNotConsumed() {
        var buffer = ByteBuffer(hex: "0500000003414243")  // says 5 bytes, has 4
        #expect(buffer.readMySQLFrame() == nil)
        #expect(buffer.readableBytes == 8)
        var short = ByteBuffer(hex: "0500")
        #expect(short.readMySQLFrame() == nil)
    }
}

@Suite struct FrameScannerTests {
    enum Seen: Equatable { case start(len: Int, seq: UInt8, prefix: String), end }

    func scan(_ chunks: [ByteBuffer]) -> [Seen] {
        var scanner = FrameScanner()
        var seen: [Seen] = []
        for chunk in chunks {
            scanner.scan(chunk) { event in
                switch event {
                case .packetStart(let s, _): seen.append(.start(len: s.header.payloadLength, seq: s.header.sequenceID, prefix: s.prefix.buffer.hex))
                case .packetEnd: seen.append(.end)
                }
                return true
            }
        }
        return seen
    }

    /// Byte offsets of every event when a stream arrives in one chunk.
    @Test func offsetsPointAtHeadersAndEnds() {
        var scanner = FrameScanner()
        var offsets: [String] = []
        scanner.scan(selectOne) { event in
            switch event {
            case .packetStart(let s, let offset): offsets.append("start@\(offset)\(s.isSplit ? "*" : "")")
            case .packetEnd(let offset): offsets.append("end@\(offset)")
            }
            return true
        }
        #expect(offsets == ["start@0", "end@5", "start@5", "end@33", "start@33", "end@42", "start@42", "end@48", "start@48", "end@57"])
    }

    @Test func stoppingEarly() {
        var scanner = FrameScanner()
        var starts = 0
        scanner.scan(selectOne) { event in
            if case .packetStart = event { starts += 1 }
            return starts < 2
        }
        #expect(starts == 2)
    }

    /// A result set as MariaDB sent it (SELECT 1 through mysqltest).
    var selectOne: ByteBuffer {
        var b = ByteBuffer()
        for (hex, seq) in [("01", 1), ("03646566000000013100000c3f0001000000038100000000", 2), ("fe00000200", 3), ("0131", 4), ("fe00000200", 5)] {
            var f = frame(hex, seq: UInt8(seq))
            b.writeBuffer(&f)
        }
        return b
    }

    @Test func wholeChunk() {
        let seen = scan([selectOne])
        #expect(seen.count == 10)
        #expect(seen[0] == .start(len: 1, seq: 1, prefix: "01"))
        #expect(seen[2] == .start(len: 24, seq: 2, prefix: "03646566000000013100000c3f0001000000038100000000"))
        #expect(seen[9] == .end)
    }

    @Test func everySplitPointGivesTheSameEvents() {
        let whole = scan([selectOne])
        for split in 0...selectOne.readableBytes {
            let a = selectOne.getSlice(at: 0, length: split)!
            let b = selectOne.getSlice(at: split, length: selectOne.readableBytes - split)!
            #expect(scan([a, b]) == whole, "split at \(split)")
        }
    }

    /// The relay's starts-only walk sees the same starts, at the same offsets, as the full one:
    /// the whole stream, split at every point, and with prefixes that end near a chunk's end
    /// (where the prefix is copied byte by byte instead of loaded as four words).
    @Test func startsOnlyWalkAgreesWithTheFullOne() {
        func starts(_ chunks: [ByteBuffer], full: Bool) -> [String] {
            var scanner = FrameScanner()
            var seen: [String] = []
            for chunk in chunks {
                let note = { (s: FrameScanner.PacketStart, offset: Int) in
                    seen.append("\(offset):\(s.header.payloadLength):\(s.header.sequenceID):\(s.prefix.buffer.hex):\(s.isSplit)")
                }
                if full {
                    scanner.scan(chunk) { event in
                        if case .packetStart(let s, let offset) = event { note(s, offset) }
                        return true
                    }
                } else {
                    scanner.scanPacketStarts(chunk) { s, offset in
                        note(s, offset)
                        return true
                    }
                }
            }
            return seen
        }
        var stream = selectOne
        var long = frame(String(repeating: "cd", count: 45), seq: 6)
        stream.writeBuffer(&long)
        for split in 0...stream.readableBytes {
            let chunks = [stream.getSlice(at: 0, length: split)!, stream.getSlice(at: split, length: stream.readableBytes - split)!]
            #expect(starts(chunks, full: false) == starts(chunks, full: true), "split at \(split)")
        }
        #expect(starts([stream], full: false).last == "57:45:6:\(String(repeating: "cd", count: 32)):false")
    }

    @Test func prefixFromWordsEqualsPrefixFromBytes() {
        let bytes: [UInt8] = (0..<80).map { UInt8($0) }
        bytes.withUnsafeBytes { raw in
            for offset in [0, 7, 40, 48, 60, 75] {
                for count in [0, 1, 5, 31, 32] where offset + count <= raw.count {
                    let loaded = PacketPrefix(raw, at: offset, count: count)
                    let copied = PacketPrefix(UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + count)]))
                    #expect(loaded == copied && loaded.count == count, "offset \(offset) count \(count)")
                    #expect(loaded[count] == nil)
                    if count > 0 { #expect(loaded[count - 1] == UInt8(offset + count - 1)) }
                }
            }
        }
    }

    @Test func byteByByte() {
        let bytes = Array(selectOne.readableBytesView)
        #expect(scan(bytes.map { ByteBuffer(bytes: [$0]) }) == scan([selectOne]))
    }

    @Test func prefixIsCappedAndLongPayloadsAreSkipped() {
        let payload = String(repeating: "ab", count: 100)
        let seen = scan([frame(payload, seq: 9)])
        #expect(seen == [.start(len: 100, seq: 9, prefix: String(repeating: "ab", count: 32)), .end])
    }

    @Test func multiFramePacketIsOnePacket() {
        var buffer = ByteBuffer()
        var seq: UInt8 = 0
        buffer.writeMySQLPacket(ByteBuffer(repeating: 0x42, count: PacketHeader.maxPayloadLength), sequenceID: &seq)
        var eof = frame("fe00000200", seq: seq)
        buffer.writeBuffer(&eof)
        // Deliver it in 64 KiB reads, as a socket would.
        var chunks: [ByteBuffer] = []
        while buffer.readableBytes > 0 {
            chunks.append(buffer.readSlice(length: Swift.min(65536, buffer.readableBytes))!)
        }
        let seen = scan(chunks)
        #expect(seen.count == 4)
        #expect(seen[0] == .start(len: PacketHeader.maxPayloadLength, seq: 0, prefix: String(repeating: "42", count: 32)))
        #expect(seen[1] == .end)
        #expect(seen[2] == .start(len: 5, seq: 2, prefix: "fe00000200"))
    }

    @Test func aChunkThatEndsOnAPacketBoundaryLeavesNothingBehind() {
        var scanner = FrameScanner()
        scanner.scan(frame("0131", seq: 4)) { _ in true }
        #expect(scanner.isAtPacketBoundary)
        var split: Bool?
        scanner.scan(frame("fe00000200", seq: 5)) { event in
            if case .packetStart(let start, _) = event { split = start.isSplit }
            return true
        }
        #expect(split == false)
    }

    @Test func splitHeadersAreMarked() {
        var scanner = FrameScanner()
        let whole = frame("fe00000200", seq: 5)
        scanner.scan(whole.getSlice(at: 0, length: 2)!) { _ in true }
        var split: Bool?
        scanner.scan(whole.getSlice(at: 2, length: whole.readableBytes - 2)!) { event in
            if case .packetStart(let start, _) = event { split = start.isSplit }
            return true
        }
        #expect(split == true)
    }

    @Test func emptyPacketStartsAndEnds() {
        #expect(scan([ByteBuffer(hex: "00000003")]) == [.start(len: 0, seq: 3, prefix: ""), .end])
    }

    @Test func boundaryIsKnown() {
        var scanner = FrameScanner()
        // 40-byte payload: the first read has the header and 35 bytes, the second the last 5.
        let chunk = ByteBuffer(hex: "28000003" + String(repeating: "41", count: 35))
        #expect(scanner.isAtPacketBoundary)
        scanner.scan(chunk) { _ in true }
        #expect(!scanner.isAtPacketBoundary)
        var events: [String] = []
        scanner.scan(ByteBuffer(hex: "4545454545")) { event in
            if case .packetEnd(let offset) = event { events.append("end@\(offset)") }
            return true
        }
        #expect(events == ["end@5"])
        #expect(scanner.isAtPacketBoundary)
        #expect(scanner.lastSequenceID == 3)
    }

    /// A packet longer than the collector's maximum is refused when its frame header shows it,
    /// before the frame's bytes are held; a multi-frame one when its next header would pass it.
    @Test func collectorRefusesPacketsPastItsMaximum() throws {
        var c = PacketCollector(maximumPacketLength: 100)
        var chunk = ByteBuffer()
        chunk.writeBytes([200, 0, 0, 3, 0x03])  // a 200-byte packet, first byte only
        c.append(chunk)
        #expect(throws: WireError.tooLarge(limit: 100, sequenceID: 3)) { try c.next() }

        var d = PacketCollector(maximumPacketLength: PacketHeader.maxPayloadLength + 10)
        var frames = ByteBuffer()
        var seq: UInt8 = 0
        frames.writeMySQLPacket(ByteBuffer(repeating: 0x41, count: PacketHeader.maxPayloadLength + 20), sequenceID: &seq)
        d.append(frames.getSlice(at: 0, length: PacketHeader.size + PacketHeader.maxPayloadLength + PacketHeader.size)!)
        #expect(throws: WireError.tooLarge(limit: PacketHeader.maxPayloadLength + 10, sequenceID: 1)) { try d.next() }
    }
}
