import NIOCore
import ProxyScripting

// MARK: - server connections chosen by scripts

extension ClientChannelHandler {
    /// The backend of the server connection in use (0-based), nil without one.
    var currentBackendIndex: Int? { backend != nil ? backendIndex : nil }
    var backendLocalAddress: SocketAddress? { backend?.localAddress }
    var backendRemoteAddress: SocketAddress? { backend?.remoteAddress }

    /// `proxy.connection.backend_ndx = target + 1`: before the login it picks the backend to
    /// connect to; after it, -1 gives the server connection to the pool and a backend takes an
    /// idle connection of this user from its pool (staying put when there is none, as MySQL Proxy
    /// does). The state machine learns of a change when the hook returns.
    func scriptSelectBackend(_ target: Int, connection: ScriptedConnection) {
        let count = shared.backends.count
        guard target == -1 || (0..<count).contains(target) else {
            log(.warning, "proxy.connection.backend_ndx = \(target + 1): there are only \(count) backends; ignored")
            return
        }
        guard connection.loggedIn else {
            connection.requestedBackend = target >= 0 ? target : nil
            return
        }
        if backend != nil && target == backendIndex { return }
        if backend != nil && !connection.serverIdle {
            log(.warning, "proxy.connection.backend_ndx = \(target + 1): a response is still on its way from the server; the connection stays where it is")
            return
        }
        if target == -1 {
            if backend != nil {
                parkServer(connection)
                connection.serverChanged(.released)
            }
            return
        }
        guard let pool = sweeper?.serverPool else { return }
        let key = ServerConnectionPool.Key(backend: target, user: connection.client.username, capabilities: connection.capabilities)
        guard let parked = pool.take(key) else {
            log(.info, "proxy.connection.backend_ndx = \(target + 1): no idle connection of user '\(connection.client.username)' to that backend in the pool; staying \(backendIndex.map { "on backend \($0 + 1)" } ?? "without a server")")
            return
        }
        if parked.session != connectionID && shared.configuration.resetPooledConnections {
            // Another client session used it: nothing of that session (variables, temporary
            // tables, prepared statements, SET SESSION) may reach this one. The pool's key
            // already holds its user to this client's current one.
            guard ServerConnectionPool.serverResetsSessions(parked.server.versionString) else {
                log(.warning, "proxy.connection.backend_ndx = \(target + 1): the pooled connection's server (\(parked.server.versionString)) cannot reset a session (COM_RESET_CONNECTION), so it does not go to another client session; closing it (--proxy-pool-no-change-user allows it)")
                parked.handler.close()
                return
            }
            parked.handler.resetSession()
        }
        if backend != nil { parkServer(connection) }
        parked.handler.owner = self
        backend = parked.handler
        backendIndex = target
        backendAddress = parked.address
        shared.backends.clientAttached(target)
        connection.server = parked.server
        connection.serverChanged(.replaced(status: parked.status))
        if let context { parked.handler.setReadsPaused(!context.channel.isWritable) }
        log(.debug, "took a pooled connection to backend \(target + 1)")
    }

    /// Gives the server connection to this loop's pool, or closes it when it cannot be kept.
    private func parkServer(_ connection: ScriptedConnection) {
        guard let handler = backend, let index = backendIndex, let address = backendAddress else { return }
        backend = nil
        backendIndex = nil
        backendAddress = nil
        handler.owner = nil
        shared.backends.clientDetached(index)
        let parked = ServerConnectionPool.Parked(
            handler: handler,
            key: ServerConnectionPool.Key(backend: index, user: connection.client.username, capabilities: connection.capabilities),
            status: connection.serverStatus, server: connection.server ?? ScriptServerInfo(), address: address, session: connectionID)
        connection.server = nil
        if sweeper?.serverPool.park(parked) != true {
            log(.debug, "closing a server connection the pool cannot keep (full, or in a transaction)")
            handler.close()
        }
    }

    /// A pooled connection's session could not be reset before this client used it: what was
    /// sent behind the reset ran in a session that may not be clean, so nothing more of it may.
    func backendResetFailed(_ detail: String) {
        log(.error, "closing: the server refused to reset the pooled connection's session (COM_RESET_CONNECTION: \(detail))")
        counters.add(.backendProtocolErrors)
        machine.noteClose(.backendProtocol)
        abortBackendOnClose = true
        closeBoth()
    }

    /// Closes the server connection: the script answered the login itself.
    func dropBackend() {
        guard let handler = backend else { return }
        handler.owner = nil
        handler.close()
        backend = nil
        if let index = backendIndex { shared.backends.clientDetached(index) }
        backendIndex = nil
        backendAddress = nil
        scripted?.server = nil
    }
}
