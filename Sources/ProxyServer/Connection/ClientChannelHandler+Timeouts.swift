import NIOCore

// MARK: - timeouts (the loop's TimeoutSweeper calls in every tick)

extension ClientChannelHandler {
    /// Called by the sweeper every tick.
    func timerFired(readTicks: Int, writeTicks: Int, loginTicks: Int? = nil, greetingTicks: Int? = nil) {
        guard !closed else { return }
        if awaitingGreeting, let greetingTicks {
            ticksAwaitingGreeting += 1
            if ticksAwaitingGreeting > greetingTicks {
                backendMissedGreeting()
                return
            }
        }
        if !loggedIn {
            loggedIn = machine.loginEnded
            ticksBeforeLogin += 1
            if !loggedIn, let loginTicks, ticksBeforeLogin > loginTicks {
                if awaitingGreeting || machine.phase == .connectingToBackend {
                    // the server's fault, not the client's
                    machine.noteClose(.backendHandshake)
                    run(.abortConnections(reason: "no backend greeted the client within --proxy-login-timeout (the last tried: \(backendAddress.map { "\($0)" } ?? "none"))"))
                    return
                }
                // as MariaDB's connect_timeout: a client that does not finish its login (a stalled
                // TLS handshake, a half-sent handshake response) is cut off
                counters.add(.clientProtocolErrors)
                machine.noteClose(.clientHandshake)
                run(.abortConnections(reason: "the client did not log in within --proxy-login-timeout"))
                return
            }
        }
        clientIdleTicks = clientSpoke ? 0 : clientIdleTicks + 1
        backendIdleTicks = backendSpoke ? 0 : backendIdleTicks + 1
        clientSpoke = false
        backendSpoke = false
        if let context, !context.channel.isWritable { clientBlockedTicks += 1 } else { clientBlockedTicks = 0 }
        if let backend, !backend.isWritable { backendBlockedTicks += 1 } else { backendBlockedTicks = 0 }

        if clientBlockedTicks >= writeTicks || backendBlockedTicks >= writeTicks {
            machine.noteClose(.timeout)
            run(.abortConnections(reason: "a write stayed blocked for longer than the write timeout"))
        } else if clientIdleTicks >= readTicks {
            clientIdleTicks = 0
            run(machine.readTimedOut(client: true))
        } else if backendIdleTicks >= readTicks {
            backendIdleTicks = 0
            run(machine.readTimedOut(client: false))
        }
    }
}
