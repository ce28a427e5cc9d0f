// MARK: - timeouts (the loop's TimeoutSweeper ticks every connection)

extension ClientChannelHandler {
    /// A tick of the sweeper: what expired (see `ConnectionTimers`) ends the connection, or its
    /// server connection's wait, through the machine.
    func timerFired(_ limits: ConnectionTimers.Limits) {
        guard !closed, !closing else { return }
        let expired = timers.tick(limits, connecting: connectingToBackend,
                                  clientWritable: context?.channel.isWritable ?? true, serverWritable: backend?.isWritable)
        switch expired {
        case nil:
            break
        case .greeting:
            backendMissedGreeting()
        case .loginWithoutServer:
            // the server's fault, not the client's
            run(machine.abandon(.backendHandshake, reason: "no backend greeted the client within --proxy-login-timeout (the last tried: \(described.backendText() ?? "none"))"))
        case .login:
            // as MariaDB's connect_timeout: a client that does not finish its login is cut off
            counters.add(.clientProtocolErrors)
            run(machine.abandon(.clientHandshake, reason: "the client did not log in within --proxy-login-timeout"))
        case .writeBlocked:
            run(machine.abandon(.timeout, reason: "a write stayed blocked for longer than the write timeout"))
        case .clientIdle:
            run(machine.readTimedOut(client: true))
        case .serverIdle:
            run(machine.readTimedOut(client: false))
        }
    }
}
