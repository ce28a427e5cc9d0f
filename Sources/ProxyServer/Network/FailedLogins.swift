import NIOConcurrencyHelpers
import NIOCore

/// Failed logins by client address, for the admin interface: after a few in a row, each new
/// connection from that address waits before it gets its greeting, a second more per failure up
/// to `maximumDelay` (as MySQL's connection_control plugin delays them), so that guessing the
/// password from one address is slow. A successful login, or a quarter of an hour without a
/// failure, forgets the address.
final class FailedLogins: Sendable {
    struct Entry {
        var failures: Int
        var last: NIODeadline
    }

    let freeFailures: Int
    let maximumDelay: TimeAmount
    let forgetAfter: TimeAmount
    /// Addresses remembered at most (a flood from many addresses cannot grow the table without bound).
    let capacity: Int
    private let entries = NIOLockedValueBox<[String: Entry]>([:])

    init(freeFailures: Int = 3, maximumDelay: TimeAmount = .seconds(5), forgetAfter: TimeAmount = .minutes(15), capacity: Int = 10_000) {
        self.freeFailures = freeFailures
        self.maximumDelay = maximumDelay
        self.forgetAfter = forgetAfter
        self.capacity = capacity
    }

    /// How long a new connection from `address` waits for its greeting.
    func delay(for address: String, now: NIODeadline = .now()) -> TimeAmount {
        entries.withLockedValue { all in
            guard let entry = all[address] else { return .zero }
            if now - entry.last > forgetAfter {
                all[address] = nil
                return .zero
            }
            let over = entry.failures - freeFailures
            guard over > 0 else { return .zero }
            return min(.seconds(Int64(over)), maximumDelay)
        }
    }

    func failed(_ address: String, now: NIODeadline = .now()) {
        entries.withLockedValue { all in
            if all[address] == nil && all.count >= capacity {
                all = all.filter { now - $0.value.last <= forgetAfter }
                if all.count >= capacity { all.removeAll(keepingCapacity: true) }
            }
            var entry = all[address] ?? Entry(failures: 0, last: now)
            if now - entry.last > forgetAfter { entry.failures = 0 }
            entry.failures += 1
            entry.last = now
            all[address] = entry
        }
    }

    func succeeded(_ address: String) {
        _ = entries.withLockedValue { $0.removeValue(forKey: address) }
    }
}
