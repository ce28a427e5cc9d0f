#if canImport(Glibc)
import Glibc
#endif
import NIOCore

/// Knows every connection on one event loop: checks their read and write timeouts with a single
/// timer (which runs only while the loop has connections) and relays a shutdown to them.
/// Connections only set flags on the hot path; one scheduled task per connection would cost a
/// timer setup, a cancellation and a closure each.
final class TimeoutSweeper {
    let eventLoop: EventLoop
    let tick: TimeAmount
    /// The timeouts in ticks.
    let limits: ConnectionTimers.Limits
    private var connections: [ObjectIdentifier: ClientChannelHandler] = [:]
    /// The most connections this loop had since memory was last given back to the system.
    private var peakSinceTrim = 0
    private var task: RepeatedTask?
    /// Every second while a backend drains: the timeouts' tick can be hours.
    private var drainTask: RepeatedTask?
    /// The loop's pool of idle server connections (scripts' `backend_ndx = 0`).
    let serverPool: ServerConnectionPool
    /// The loop's core pool (`--proxy-auth=proxy` with `--proxy-pool-max`).
    let corePool: CorePool?
    let backends: BackendPool

    static let ticksPerTimeout = 4

    init(eventLoop: EventLoop, readTimeout: TimeAmount, writeTimeout: TimeAmount, loginTimeout: TimeAmount? = nil,
         greetingTimeout: TimeAmount? = nil, backends: BackendPool, corePool: CorePool.Shared? = nil) {
        self.eventLoop = eventLoop
        self.backends = backends
        self.serverPool = ServerConnectionPool(eventLoop: eventLoop, backends: backends)
        self.corePool = corePool.map { CorePool(shared: $0, eventLoop: eventLoop, backends: backends) }
        var shortest = min(readTimeout, writeTimeout)
        if let loginTimeout { shortest = min(shortest, loginTimeout) }
        if let greetingTimeout { shortest = min(shortest, greetingTimeout) }
        let tick = TimeAmount.nanoseconds(max(shortest.nanoseconds / Int64(Self.ticksPerTimeout), 1_000_000))
        self.tick = tick
        func ticks(_ amount: TimeAmount) -> Int32 { Int32(clamping: max(1, amount.nanoseconds / tick.nanoseconds)) }
        self.limits = .init(read: ticks(readTimeout), write: ticks(writeTimeout), login: loginTimeout.map(ticks), greeting: greetingTimeout.map(ticks))
        let bound = NIOLoopBound(WeakSweeper(self), eventLoop: eventLoop)
        backends.watchDrains { [eventLoop] in eventLoop.execute { bound.value.sweeper?.drainBegan() } }
    }

    /// A backend drains: its sessions that are not multiplexed are looked at every second until
    /// no backend drains.
    private func drainBegan() {
        guard drainTask == nil else { return }
        let bound = NIOLoopBound(WeakSweeper(self), eventLoop: eventLoop)
        drainTask = eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { task in
            guard let sweeper = bound.value.sweeper, sweeper.backends.anyDraining else {
                task.cancel()
                bound.value.sweeper?.drainTask = nil
                return
            }
            sweeper.sweepDrained()
        }
    }

    func add(_ handler: ClientChannelHandler) {
        eventLoop.preconditionInEventLoop()
        connections[ObjectIdentifier(handler)] = handler
        peakSinceTrim = max(peakSinceTrim, connections.count)
        if task == nil {
            let bound = NIOLoopBound(self, eventLoop: eventLoop)
            task = eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { _ in
                bound.value.sweep()
            }
        }
    }

    func remove(_ handler: ClientChannelHandler) {
        connections.removeValue(forKey: ObjectIdentifier(handler))
        // The timer stops at its next tick if the loop is still without connections: a client
        // that connects for one query and leaves (a connect storm) would otherwise pay for
        // scheduling and cancelling a repeated task every time.
    }

    /// After a burst of connections has gone (half of them, and at least `trimThreshold`), the
    /// memory they used goes back to the system: the allocator keeps freed memory for reuse, and
    /// a proxy that once held 10,000 connections would otherwise stay that large.
    private func trimAfterBurst() {
        let gone = peakSinceTrim - connections.count
        guard gone >= Self.trimThreshold, connections.count * 2 <= peakSinceTrim else { return }
        peakSinceTrim = connections.count
        _ = Self.mallocTrim?(0)
    }

    static let trimThreshold = 256

    /// glibc's malloc_trim (releases free memory in every arena), looked up once: Swift's Glibc
    /// module does not import <malloc.h>.
    static let mallocTrim: (@convention(c) (Int) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)
    }()

    /// A graceful shutdown began.
    func shutdownRequested() {
        serverPool.closeAll()
        corePool?.closeAll()
        for handler in Array(connections.values) {
            handler.shutdownRequested()
        }
    }

    /// The shutdown grace period is over.
    func closeAll() {
        serverPool.closeAll()
        corePool?.closeAll()
        for handler in Array(connections.values) {
            handler.forceClose()
        }
    }

    private func sweep() {
        trimAfterBurst()
        if connections.isEmpty {
            task?.cancel()
            task = nil
            return
        }
        for handler in Array(connections.values) {
            handler.timerFired(limits)
        }
    }

    /// `DRAIN BACKEND ... WITHIN`: sessions that are not multiplexed (the pool sees to those)
    /// move off if they can (a script's followed session between commands), and those still
    /// using the backend at its deadline are closed with a named error.
    private func sweepDrained(now: NIODeadline = .now()) {
        for handler in Array(connections.values) where handler.multiplexKey == nil {
            guard let index = handler.backendIndex, let deadline = backends.drainDeadline(index) else { continue }
            if handler.moveScriptSessionOff(index) { continue }
            if now >= deadline { handler.drainDeadlinePassed() }
        }
    }
}

/// The sweeper, not kept alive by the backends' drain watcher.
private final class WeakSweeper {
    weak var sweeper: TimeoutSweeper?
    init(_ sweeper: TimeoutSweeper) { self.sweeper = sweeper }
}
