@_spi(Fuzzing) import ProxyCore
import Testing

/// The state machine fuzzer's driver run on seeded random inputs, so that CI covers the logins it
/// plays (TLS policies, SSLRequests, compression, renumbered and RSA-guarded logins) even where
/// nobody runs scripts/fuzz. A trap fails the whole test process.
@Suite struct FuzzSmokeTests {
    @Test func randomSessionsNeverTrap() {
        var seeded = Xorshift(seed: 0x4D6F6F6E50726F78)
        for _ in 0..<20000 {
            let length = Int(seeded.next() % 600)
            var bytes = [UInt8](repeating: 0, count: length)
            for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: seeded.next()) }
            bytes.withUnsafeBytes { MachineFuzzing.run($0) }
        }
    }

    /// Inputs that once made the driver trap.
    @Test func inputsThatOnceTrappedDoNot() {
        let found = [
            // a parked session's command, refused for want of a connection: the stop of reads was
            // queued behind the request, and came after the close
            "44005d5d21030b2e02660300000016800000030b0b00002b00000000007b080b00002b00000000619f007b0893b31401007b7894f24bc90021030b00020300000016800000030b0b00002b00000000007b080b00002b00000000007b0893b31401007b7894f24bc9000000000000007d93b31401007b7894f24bc90000000000000000000b000000000000609301007b7894f24bc90000000000000000000b",
            // the server connection ended with half a header read, and the fuzzer sent more
            // bytes from it: the tracking held none of them, while the scanner still carried them
            "0100000d21030b0000030303030300030303140303033b030303030000696177002bbe00020300000012030000571602030000001603000300000a0000000000000000000000000000000000",
        ]
        for hex in found {
            var bytes: [UInt8] = []
            var chars = Array(hex)
            while chars.count >= 2 {
                bytes.append(UInt8(String(chars[0...1]), radix: 16)!)
                chars.removeFirst(2)
            }
            bytes.withUnsafeBytes { MachineFuzzing.run($0) }
        }
    }
}

/// A fixed-seed generator: the same inputs on every run.
struct Xorshift {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
}
