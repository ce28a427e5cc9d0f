import NIOCore
import ProxyCore

// MARK: - a script moves its session: `proxy.connection:migrate(n)` (see ConnectionMachine+ExchangeTracking)

extension ClientChannelHandler {
    /// The script's `read_query` asked the session to move to backend `index` (checked there:
    /// followed, idle, nothing pinned). A ready connection of the session's login there comes from
    /// the core pool, or the proxy logs one in with the credential the login proved; the hook's
    /// result goes to the machine with the change once the connection is attached (nil: later,
    /// through `run`). The machine restores the session's state on it ahead of the command. The
    /// connection left goes to the core pool, reset there for the login's next session. When no
    /// connection can be had, the session stays where it is, and the log says why.
    func migrateScripted(to index: Int, _ result: ConnectionMachine.HookResult) -> ConnectionMachine.HookResult? {
        var result = result
        let from = backendIndex.map { "backend \($0 + 1)" } ?? "no backend"
        guard let pool = sweeper?.corePool, let login = machine.serverLogin, backend != nil else {
            log(.warning, "proxy.connection:migrate(\(index + 1)): the session has no connection of the proxy's login to move from; it stays on \(from)")
            return result
        }
        let key = CorePool.Key(backend: index, login: login)
        if let entry = pool.takeReady(key) {
            result.serverChange = attachMigrated(entry)
            return result
        }
        guard pool.shared.reserve(index) else {
            log(.warning, "proxy.connection:migrate(\(index + 1)): backend \(index + 1) has --proxy-pool-max connections already; the session stays on \(from)")
            return result
        }
        // (the body runs at once when no connect can start: `synchronous` tells it apart)
        var synchronous = true
        var immediate: ConnectionMachine.HookResult?
        openForMultiplexing(pool, key, login: login, reserved: true) { [weak self] entry in
            guard let self, !self.closed, !self.closing else {
                entry?.handler.quit()  // logged in and idle: it ends as a client would
                return
            }
            var late = result
            if let entry {
                late.serverChange = self.attachMigrated(entry)
            } else {
                self.log(.warning, "proxy.connection:migrate(\(index + 1)): no server connection to backend \(index + 1) could be made; the session stays on \(from)")
            }
            if synchronous { immediate = late } else { self.run(self.machine.hookReturned(late)) }
        }
        synchronous = false
        return immediate
    }

    /// `DRAIN BACKEND`: a script's followed session between commands with nothing pinned moves
    /// off backend `index` to another that takes sessions, in its state, when a ready connection
    /// of its login is there; else one is logged in there for it (in the pool), and the next
    /// sweep tries again. True once it moved.
    func moveScriptSessionOff(_ index: Int) -> Bool {
        guard scripted != nil, !closed, !closing, machine.mayMoveScriptSession, let pool = sweeper?.corePool,
              let login = machine.serverLogin else { return false }
        var excluded = BackendSet()
        excluded.insert(index)
        guard let (target, _, _) = shared.backends.pickForNewClient(excluding: excluded) else { return false }
        let key = CorePool.Key(backend: target, login: login)
        guard let entry = pool.takeReady(key) else {
            // (one per session that could move; a connection made for one serves whichever comes first)
            if pool.shared.reserve(target) { openForMultiplexing(pool, key, login: login, reserved: true, nil) }
            return false
        }
        guard case .migrated(let previous) = attachMigrated(entry, why: "its backend drains: the session moves") else { return false }
        run(machine.scriptSessionMoved(previous: previous))
        return true
    }

    /// Puts the connection the migration got in place of the session's (which goes to the core
    /// pool), and tells the machine what state it is in.
    private func attachMigrated(_ entry: CorePool.Entry, why: String = "the script moves the session") -> ConnectionMachine.ServerChange {
        let from = backendIndex
        releaseToPool()
        if backend != nil { detachBackend(closing: true) }  // (one the core pool cannot take)
        holdPooled(entry)
        scripted?.attached = serverInfo(entry.handler)
        scripted?.currentBackend = entry.key.backend
        publish()
        sweeper?.corePool?.shared.count("script_migrate", backend: entry.key.backend)
        log(.info, "\(why) from backend \((from ?? -1) + 1) to backend \(entry.key.backend + 1), its state with it")
        return .migrated(previous: entry.parkedState)
    }
}
