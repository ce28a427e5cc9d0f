import Testing
@testable import ProxyServer

/// A connection's timeouts with time passing: ticks of the sweeper, no clock, no socket.
@Suite struct ConnectionTimersTests {
    typealias Limits = ConnectionTimers.Limits

    /// Ticks `n` times with nothing happening; the expiries seen, in order, with their tick (1-based).
    func idle(_ timers: inout ConnectionTimers, _ n: Int, _ limits: Limits, loginEnded: Bool = true, connecting: Bool = false,
              clientWritable: Bool = true, serverWritable: Bool? = true) -> [String] {
        if loginEnded { timers.loginEnded = true }
        return (1...n).compactMap { tick in
            timers.tick(limits, connecting: connecting, clientWritable: clientWritable, serverWritable: serverWritable).map { "\(tick): \($0)" }
        }
    }

    @Test func aQuietClientTimesOutAfterTheReadTimeout() {
        let limits = Limits(read: 4, write: 100)
        var t = ConnectionTimers()
        #expect(idle(&t, 3, limits).isEmpty)
        t.clientSpoke = true
        t.serverSpoke = true
        // the tick that saw the byte counts none; four quiet ones follow
        #expect(idle(&t, 5, limits) == ["5: clientIdle"])
        // the server's count runs on its own and is reported on the next tick
        #expect(idle(&t, 1, limits) == ["1: serverIdle"])
    }

    @Test func aServerThatNeverGreetsIsGivenUpAndTheLoginGoesOn() {
        let limits = Limits(read: 100, write: 100, login: 5, greeting: 2)
        var t = ConnectionTimers()
        t.awaitingGreeting = true
        #expect(idle(&t, 3, limits, loginEnded: false) == ["3: greeting"])
        #expect(!t.awaitingGreeting)
        // the next server greets at once; the login keeps its own limit, counted from the connect
        #expect(idle(&t, 4, limits, loginEnded: false) == ["4: login"])
    }

    @Test func theLoginTimeoutBlamesTheServerWhenNoneGreeted() {
        let limits = Limits(read: 100, write: 100, login: 5, greeting: nil)
        var t = ConnectionTimers()
        #expect(idle(&t, 7, limits, loginEnded: false, connecting: true) == ["6: loginWithoutServer"])
        var u = ConnectionTimers()
        u.awaitingGreeting = true
        #expect(idle(&u, 6, limits, loginEnded: false) == ["6: loginWithoutServer"])
    }

    @Test func aLoginThatEndedIsNeverTimedOutAgain() {
        let limits = Limits(read: 100, write: 100, login: 2)
        var t = ConnectionTimers()
        #expect(idle(&t, 2, limits, loginEnded: false).isEmpty)
        t.loginEnded = true  // the machine said so
        #expect(idle(&t, 10, limits, loginEnded: false).isEmpty)
    }

    @Test func aBlockedWriteTimesOut() {
        let limits = Limits(read: 100, write: 3)
        var t = ConnectionTimers()
        #expect(idle(&t, 2, limits, serverWritable: false).isEmpty)
        t.serverBlocked = 0  // it drained: the count starts over
        #expect(idle(&t, 3, limits, serverWritable: false) == ["3: writeBlocked"])
        var u = ConnectionTimers()
        #expect(idle(&u, 3, limits, clientWritable: false) == ["3: writeBlocked"])
        var v = ConnectionTimers()
        #expect(idle(&v, 5, limits, serverWritable: nil).isEmpty)  // no server connection: nothing blocks
    }
}
