// libFuzzer entry point: every parser that reads bytes a client or a server controls.
//
// The first byte of an input picks the parser, the rest is what it reads. A parser may reject its
// input with a WireError; what it must never do is trap (out-of-range index, overflow, force
// unwrap), hang, or accept bytes it then cannot write back.

import MySQLWire
import NIOCore
import ProxyScripting
import ProxyServer

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: start, count: count)
    guard let selector = bytes.first else { return 0 }
    let data = UnsafeRawBufferPointer(rebasing: bytes.dropFirst())
    let payload = ByteBuffer(bytes: data)
    switch selector % 13 {
    case 0: greeting(payload)
    case 1: handshakeResponse(payload)
    case 2:
        _ = try? AuthSwitchRequest(parsing: payload)
        _ = try? AuthMoreData(parsing: payload)
    case 3: okPacket(payload, selector: selector)
    case 4:
        _ = try? ERRPacket(parsing: payload)
        _ = try? EOFPacket(parsing: payload)
    case 5: columnDefinition(payload, extended: selector & 0x80 != 0)
    case 6: textRow(payload)
    case 7: binaryRow(payload)
    case 8: framing(payload)
    case 9: conversation(payload, deprecateEOF: selector & 0x80 != 0)
    case 10:
        _ = ProxyHints.parse(payload)
        _ = SQLTokenizer.tokenize(data)
    case 11: proxyProtocol(payload)
    default: lengthEncoded(payload)
    }
    return 0
}

private func greeting(_ payload: ByteBuffer) {
    guard let parsed = try? HandshakeV10(parsing: payload) else { return }
    var copy = payload
    let before = try? HandshakeV10.restrictCapabilities(of: &copy, to: [.protocol41, .secureConnection])
    precondition(before == parsed, "restrictCapabilities parsed the greeting differently")
    precondition(copy.readableBytes == payload.readableBytes, "restrictCapabilities changed the greeting's length")
    var out = ByteBuffer()
    parsed.write(to: &out)
}

private func handshakeResponse(_ payload: ByteBuffer) {
    if let parsed = try? HandshakeResponse41(parsing: payload) {
        var out = ByteBuffer()
        parsed.write(to: &out)
    }
    var copy = payload
    _ = try? HandshakeResponse41.restrictCapabilities(of: &copy, to: [.protocol41])
    precondition(copy.readableBytes == payload.readableBytes, "restrictCapabilities changed the response's length")
    _ = HandshakeResponse41.isSSLRequest(payload)
}

private func okPacket(_ payload: ByteBuffer, selector: UInt8) {
    var capabilities: CapabilityFlags = [.protocol41, .transactions]
    if selector & 0x40 != 0 { capabilities.insert(.sessionTrack) }
    if selector & 0x80 != 0 { capabilities.remove(.protocol41) }
    if let ok = try? OKPacket(parsing: payload, capabilities: capabilities) {
        var out = ByteBuffer()
        ok.write(to: &out, capabilities: capabilities)
    }
    _ = try? OKPacket.peekStatus(PacketPrefix(payload))
}

private func columnDefinition(_ payload: ByteBuffer, extended: Bool) {
    guard let column = try? ColumnDefinition41(parsing: payload, mariaDBExtendedMetadata: extended) else { return }
    var out = ByteBuffer()
    column.write(to: &out)
    let again = try? ColumnDefinition41(parsing: out)
    precondition(again?.name == column.name && again?.type == column.type, "a column definition did not survive a round trip")
}

private func textRow(_ payload: ByteBuffer) {
    var p = payload
    guard let count = p.readInteger(as: UInt8.self) else { return }
    _ = try? TextRow.decode(p, columnCount: Int(count))
}

private func binaryRow(_ payload: ByteBuffer) {
    // [n][n × (type, flags)] then the row.
    var p = payload
    guard let n = p.readInteger(as: UInt8.self) else { return }
    var columns: [(type: ColumnType, flags: ColumnFlags)] = []
    for _ in 0..<(n % 40) {
        guard let type = p.readInteger(as: UInt8.self), let flags = p.readInteger(as: UInt8.self) else { return }
        columns.append((ColumnType(type), flags & 1 != 0 ? [.unsigned] : []))
    }
    _ = try? BinaryRow.decode(p, columns: columns)
}

/// The same bytes fed in chunks to the frame scanner and to the packet collector, which must agree
/// on where packets start.
private func framing(_ payload: ByteBuffer) {
    var p = payload
    guard let step = p.readInteger(as: UInt8.self) else { return }
    let chunk = Int(step % 64) + 1
    var scanner = FrameScanner()
    var collector = PacketCollector(maximumPacketLength: 1 << 20)
    var scannedStarts = 0
    var collected = 0
    var rest = p
    while rest.readableBytes > 0, let piece = rest.readSlice(length: min(chunk, rest.readableBytes)) {
        scanner.scan(piece) { event in
            if case .packetStart = event { scannedStarts += 1 }
            return true
        }
        collector.append(piece)
        while let packet = try? collector.next() {
            collected += 1
            _ = PacketCollector.start(of: packet.packet, firstFrameLength: packet.firstFrameLength)
        }
    }
    var frames = p
    var assembler = PacketAssembler(maximumPacketLength: 1 << 20)
    while let frame = frames.readMySQLFrame() {
        guard (try? assembler.append(frame)) != nil else { break }
    }
    precondition(collected <= scannedStarts, "the collector found packets the scanner did not")
}

/// A whole conversation: after a greeting and an OK, records of [direction+length][bytes], client
/// records starting commands, server records answering them.
private func conversation(_ payload: ByteBuffer, deprecateEOF: Bool) {
    var capabilities: CapabilityFlags = [.protocol41, .transactions, .multiResults, .psMultiResults, .pluginAuth, .secureConnection]
    if deprecateEOF { capabilities.insert(.deprecateEOF) }
    var tracker = ResponseTracker()
    tracker.handshakeResponseSent(capabilities: capabilities)
    guard (try? tracker.serverPacketStarted(packetStart([0, 0, 0, 2, 0, 0, 0], sequenceID: 2))) != nil else { return }
    var p = payload
    var clientSequence: UInt8 = 0
    var serverSequence: UInt8 = 1
    while let header = p.readInteger(as: UInt8.self) {
        let length = Int(header & 0x3f)
        guard let body = p.readBytes(length: min(length, p.readableBytes)) else { return }
        do {
            if header & 0x80 != 0 {
                switch try tracker.clientPacketStarted(packetStart(body, sequenceID: clientSequence)) {
                case .command: serverSequence = 1
                default: serverSequence &+= 1
                }
                clientSequence = 0
            } else {
                _ = try tracker.serverPacketStarted(packetStart(body, sequenceID: serverSequence))
                serverSequence &+= 1
                clientSequence = serverSequence
            }
        } catch {
            return
        }
    }
}

private func packetStart(_ body: [UInt8], sequenceID: UInt8) -> FrameScanner.PacketStart {
    FrameScanner.PacketStart(header: PacketHeader(payloadLength: body.count, sequenceID: sequenceID),
                             prefix: PacketPrefix(bytes: body))
}

private func lengthEncoded(_ payload: ByteBuffer) {
    var p = payload
    while p.readableBytes > 0 {
        var a = p, b = p, c = p, d = p
        _ = try? a.readMySQLLengthEncodedIntegerOrNull()
        _ = try? b.readMySQLLengthEncodedSliceOrNull()
        _ = try? c.readMySQLNullTerminatedString()
        _ = c.readMySQLNullTerminatedStringOrRest()
        var index = 0
        _ = try? PacketPrefix(d).lengthEncodedInteger(at: &index, "fuzz")
        _ = try? d.readMySQLBytes(length: Int(d.getInteger(at: d.readerIndex, as: UInt8.self) ?? 0))
        p.moveReaderIndex(forwardBy: 1)
    }
}


/// A PROXY protocol header, read as the decoder reads it (whole or in any prefix); what it accepts
/// it can write again as a v2 header that reads back the same.
private func proxyProtocol(_ payload: ByteBuffer) {
    for cut in [payload.readableBytes, payload.readableBytes / 2, 16, 12] where cut <= payload.readableBytes {
        guard case .header(let endpoints, let length) = ProxyProtocol.parse(payload.getSlice(at: payload.readerIndex, length: cut)!) else { continue }
        precondition(length > 0 && length <= cut)
        if case .proxied(let source, let destination) = endpoints {
            let again = ProxyProtocol.v2Header(source: source, destination: destination)
            if case .header(.proxied(let s, let d), _) = ProxyProtocol.parse(again) {
                precondition(s == source && d == destination)
            }
        }
    }
}
