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
            // a parked session's COM_CHANGE_USER left to the server: the relay queued "stop reading" and
            // "take a connection" and returned the first, which the caller queued again behind the
            // second (and so behind the close that followed a refusal)
            "1600400f00099e6f171717177e17170000c017df000017df0021273f3f3f3f003f3f3f03000017df000000613f3f18181818000021ffffffffffffff"
                + "ffffffffffffffffffff2700030300023000000303030300e4000100004f00c703030000616918181818181818181818181818181818771818181818"
                + "04040404040404040404040404323232323232323232323232323232323232323232320404040404049004040401001700011f00096f030300023000"
                + "000301000000000302d703038d0000263a005f4543542f2a213400c200000004000000000000000100000000000000000000000000feffffffffffff"
                + "ff000203be00a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"
                + "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"
                + "a1a1a1a1002b000000310000000203c70003c7c7c703001000f8ffffff000040400000004040403b4040140340034000000003000000000000000003"
                + "03000201000000000302d7032303890000263a005f4541542f2a213200c20000023000000000030100000000ff2127000303000230000003ff000003",
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
