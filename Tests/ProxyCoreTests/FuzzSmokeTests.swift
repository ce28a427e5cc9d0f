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
