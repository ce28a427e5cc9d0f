import NIOCore
import ProxyCore
import ProxyScripting

// MARK: - hooks: run between two of the machine's events, their requests carried out after

extension ClientChannelHandler {
    /// Runs the hook the machine asked for and applies what the script asked of the connection.
    /// Nil: the result waits for a server connection the script's `migrate` asked for, and is
    /// given to the machine once it is there (+Migration).
    func runHook(_ call: ConnectionMachine.HookCall) -> ConnectionMachine.HookResult? {
        guard let scripted else { return .notDefined }
        prepareScript(scripted)
        let outcome = scripted.run(call)
        let change = applyScriptRequests(scripted)
        let result = ConnectionMachine.HookResult(outcome: outcome, queries: scripted.queries, closeRequested: scripted.connectionCloseRequested,
                                                  serverChange: change, backendChoice: scripted.requestedBackend)
        guard let target = scripted.takeMigration() else { return result }
        return migrateScripted(to: target, result)
    }

    /// What the script sees of the connection, as of now: copied from the session when it
    /// changed, or the server connection did, since the last hook.
    func prepareScript(_ scripted: ScriptedConnection) {
        if shared.configuration.multiplex { scripted.sessionState = machine.sessionState }
        let attachedBackend = backend != nil ? backendIndex : nil
        guard machine.sessionVersion != preparedSessionVersion || attachedBackend != scripted.currentBackend || (backend != nil && scripted.attached == nil)
        else { return }
        preparedSessionVersion = machine.sessionVersion
        let session = machine.session
        scripted.currentBackend = attachedBackend
        scripted.capabilities = session.capabilities.intersection(.sessionAffecting)
        if let response = session.response {
            scripted.client.scrambledPassword = response.authResponse
        }
        scripted.client.username = session.username
        scripted.client.defaultDB = session.database ?? ""
        if scripted.attached == nil, let backend, session.greeting != nil {
            scripted.attached = serverInfo(backend)
        }
        if backend != nil {
            scripted.attached?.username = session.username
            scripted.attached?.defaultDB = session.serverDatabase ?? session.database ?? ""
        }
    }

    /// Carries out a server swap the hook asked for (`backend_ndx`), and logs its notes.
    func applyScriptRequests(_ scripted: ScriptedConnection) -> ConnectionMachine.ServerChange? {
        guard scripted.hasRequests else { return nil }
        for (level, note) in scripted.takeNotes() { log(level, "\(note)") }
        switch scripted.takeSwap() {
        case nil:
            return nil
        case .release?:
            parkServer(scripted)
            return .released
        case .take(let parked)?:
            return attachPooled(parked, scripted)
        }
    }
}
