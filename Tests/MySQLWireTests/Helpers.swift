import NIOCore
import MySQLWire

extension ByteBuffer {
    /// A buffer from a hex string; spaces are ignored.
    init(hex: String) {
        var bytes: [UInt8] = []
        var chars = hex.filter { !$0.isWhitespace }.makeIterator()
        while let hi = chars.next(), let lo = chars.next() {
            bytes.append(UInt8(String([hi, lo]), radix: 16)!)
        }
        self.init(bytes: bytes)
    }

    var hex: String {
        let digits = Array("0123456789abcdef")
        return String(readableBytesView.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] })
    }
}

/// Frames `payload` with a header (single frame).
func frame(_ payloadHex: String, seq: UInt8) -> ByteBuffer {
    var out = ByteBuffer()
    var s = seq
    out.writeMySQLPacket(ByteBuffer(hex: payloadHex), sequenceID: &s)
    return out
}

/// A packet start as the scanner would produce it for a payload.
func start(_ payloadHex: String, seq: UInt8 = 1) -> FrameScanner.PacketStart {
    var scanner = FrameScanner()
    var found: FrameScanner.PacketStart?
    scanner.scan(frame(payloadHex, seq: seq)) { event in
        if case .packetStart(let s, _) = event { found = s }
        return true
    }
    return found!
}
