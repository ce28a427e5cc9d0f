import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Warnings that come in storms (clients refused while every backend is down, connects that fail,
/// clients whose TLS handshake fails, the descriptor limit) are written once per interval and
/// kind: the first as it happens, the rest counted and summed up in one line when the interval
/// ends ("… 7,390 more in the last 5 s"). The metrics keep the exact counts.
final class RateLimitedLog: Sendable {
    enum Kind: Hashable, Sendable {
        case clientRefused
        case backendConnectFailed
        case clientTLSFailed
        case descriptorsExhausted
        case backendDown
    }

    private struct Window {
        var started: NIODeadline
        var suppressed = 0
        var lastMessage = ""
        var flushScheduled = false
    }

    let interval: TimeAmount
    private let windows = NIOLockedValueBox<[Kind: Window]>([:])

    init(interval: TimeAmount = .seconds(5)) {
        self.interval = interval
    }

    /// Logs `message` now if no line of this kind was written in the current interval, else
    /// counts it; the count is written when the interval ends (a task on `eventLoop`).
    func warning(_ kind: Kind, _ message: @autoclosure () -> String, logger: Logger, on eventLoop: EventLoop,
                 level: Logger.Level = .warning, now: NIODeadline = .now()) {
        guard logger.logLevel <= level else { return }
        let scheduleFlush = windows.withLockedValue { all -> Bool? in
            if var window = all[kind], now - window.started < interval {
                window.suppressed += 1
                window.lastMessage = message()
                let schedule = !window.flushScheduled
                window.flushScheduled = true
                all[kind] = window
                return schedule
            }
            all[kind] = Window(started: now)
            return nil
        }
        switch scheduleFlush {
        case nil:
            logger.log(level: level, "\(message())")
        case true?:
            let remaining = windows.withLockedValue { all in all[kind].map { $0.started + interval - now } } ?? interval
            eventLoop.scheduleTask(in: max(remaining, .milliseconds(1))) { [self] in
                self.flush(kind, logger: logger, level: level)
            }
        case false?:
            break
        }
    }

    /// Writes how many lines of `kind` were held back, and starts a new interval in which the
    /// storm, if it goes on, is counted again (one line per interval while it lasts).
    private func flush(_ kind: Kind, logger: Logger, level: Logger.Level) {
        let held = windows.withLockedValue { all -> (Int, String)? in
            guard let window = all[kind], window.suppressed > 0 else { return nil }
            all[kind] = Window(started: .now())
            return (window.suppressed, window.lastMessage)
        }
        guard let (count, last) = held else { return }
        let seconds = Double(interval.nanoseconds) / 1e9
        let span = seconds == seconds.rounded() ? "\(Int(seconds)) s" : "\(seconds) s"
        logger.log(level: level, "… \(count) more like this in the last \(span), the last: \(last)")
    }
}
