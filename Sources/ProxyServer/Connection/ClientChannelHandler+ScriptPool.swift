import NIOCore
import ProxyCore
import ProxyScripting

// MARK: - the scripts' pool (backend_ndx) and the core pool, under --proxy-auth=proxy

// A script that pools (MySQL Proxy's rw-splitting and ro-pooling: `backend_ndx = 0` after the
// login and after each statement) keeps the server connections the proxy logged in in its own
// pool, keyed by user. Both pools serve the same logins: a login whose core pool is empty takes
// a connection of the same login from the script's pool, and a script that finds its pool empty
// for a backend takes a ready connection of its login from the core pool. Either way the
// connection is reset before the session uses it, and no login reaches the server.

extension ClientChannelHandler {
    /// A login the core pool could not serve: a connection made for the same login (user,
    /// password, database, character set, capabilities, TLS, compression, account) that a script
    /// gave its pool serves it, reset first. False when there is none.
    func takeFromScriptPool(_ index: Int, _ login: ConnectionMachine.ServerLogin) -> Bool {
        guard let pool = sweeper?.serverPool, pool.count > 0 else { return false }
        let wanted = CorePool.Key(backend: index, login: login)
        guard let parked = pool.take(scriptPoolKey(index, login), where: { parked in
            parked.handler.serverLogin.map { CorePool.Key(backend: index, login: $0) == wanted } == true
                && ServerConnectionPool.serverResetsSessions(parked.server.versionString)
        }) else { return false }
        // the session that used it last may have left anything: reset as one from the core pool
        described.backendTLS = parked.server.ssl
        var local = false
        if case .unix = parked.address { local = true }
        attachLoggedIn(parked.handler, index, address: parked.address, backendTLS: parked.server.ssl != nil, localSocket: local,
                       note: "took a connection of the same login from the script's pool (backend \(index + 1))")
        return true
    }

    /// `backend_ndx = index` found no idle connection of this user in the script's pool: a ready
    /// connection of this session's login in the core pool, described for the script.
    func corePooledForScript(_ index: Int) -> ServerConnectionPool.Parked? {
        guard let pool = sweeper?.corePool, let login = machine.serverLogin,
              let entry = pool.takeReady(CorePool.Key(backend: index, login: login)) else { return nil }
        let handler = entry.handler
        handler.serverChallenge = entry.reset.challenge
        let server = serverInfo(handler)
        // session 0: not this one, so it is reset when attached
        return ServerConnectionPool.Parked(handler: handler,
                                           key: scriptPoolKey(index, login),
                                           status: .autocommit, server: server, address: entry.address, session: 0)
    }

    /// Where the script's pool keeps this session's connections to backend `index`.
    func scriptPoolKey(_ index: Int, _ login: ConnectionMachine.ServerLogin) -> ServerConnectionPool.Key {
        ServerConnectionPool.Key(backend: index, user: login.user, capabilities: machine.session.capabilities.intersection(.sessionAffecting))
    }

    /// What a script sees of a server connection (`proxy.connection.server`): the session's
    /// greeting, and the connection's addresses.
    func serverInfo(_ handler: BackendChannelHandler) -> ScriptServerInfo {
        var info = ScriptServerInfo()
        if let greeting = machine.session.greeting {
            info.threadID = handler.serverThreadID ?? greeting.connectionID
            info.versionString = greeting.serverVersion
            info.mysqldVersion = ScriptServerInfo.versionNumber(greeting.serverVersion)
            info.scrambleBuffer = greeting.authPluginData
        }
        info.src = handler.localAddress.map(ScriptAddress.init)
        info.dst = handler.remoteAddress.map(ScriptAddress.init)
        info.ssl = described.backendTLS
        info.compression = described.backendCompression
        return info
    }
}
