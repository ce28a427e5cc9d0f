import MySQLWire
import NIOCore

/// Logs a pooled server connection in again as the login it was made for (COM_CHANGE_USER),
/// which leaves the session as a fresh login would: no transaction, temporary table, variable,
/// prepared statement, lock, warning or `LAST_INSERT_ID` of the client session before it, and the
/// login's database and character set. MariaDB answers a COM_CHANGE_USER with an auth switch to a
/// new challenge, which this answers from the credential; MySQL may take the first answer.
///
/// A value: the pool feeds it the server's packets and writes what it returns.
public struct ServerLoginReset: Equatable, Sendable {
    public enum Step: Equatable, Sendable {
        /// Write these bytes to the server and wait for its next packet.
        case send(ByteBuffer)
        /// The server logged the connection in again.
        case done
        /// It did not: the connection must be closed (`reason` for the log).
        case failed(String)
    }

    public let login: ConnectionMachine.ServerLogin
    /// The challenge the server sent last (the greeting's, then each switch's).
    public private(set) var challenge: [UInt8]
    private var switched = false

    public init(login: ConnectionMachine.ServerLogin, challenge: [UInt8]) {
        self.login = login
        self.challenge = challenge
    }

    /// The COM_CHANGE_USER packet that starts the reset.
    public func request() -> ByteBuffer {
        let request = ChangeUserRequest(username: login.user, authResponse: answer(challenge), database: login.database,
                                        characterSet: login.characterSet, authPluginName: ProxyAuthenticator.nativePlugin,
                                        attributesBlock: login.attributes)
        var payload = ByteBuffer()
        request.write(to: &payload, capabilities: login.capabilities)
        var out = ByteBuffer()
        var seq: UInt8 = 0
        out.writeMySQLPacket(payload, sequenceID: &seq)
        return out
    }

    private func answer(_ challenge: [UInt8]) -> [UInt8] {
        login.credential.isEmpty ? [] : NativePassword.scramble(challenge: Array(challenge.prefix(20)), hashedPassword: login.credential)
    }

    /// The server's next packet.
    public mutating func received(_ packet: MySQLFrame) -> Step {
        let payload = packet.payload
        switch payload.getInteger(at: payload.readerIndex, as: UInt8.self) {
        case 0x00?:
            return .done
        case 0xFE? where !switched:
            guard let request = try? AuthSwitchRequest(parsing: payload) else { return .failed("a malformed auth switch request") }
            guard request.pluginName == ProxyAuthenticator.nativePlugin else {
                return .failed("the server asked for \(request.pluginName) (the account changed since the connection was pooled)")
            }
            switched = true
            challenge = Array(request.pluginData.prefix(20))
            var out = ByteBuffer()
            var seq = packet.sequenceID &+ 1
            out.writeMySQLPacket(ByteBuffer(bytes: answer(challenge)), sequenceID: &seq)
            return .send(out)
        case 0xFF?:
            let err = try? ERRPacket(parsing: payload)
            return .failed(err.map { "\($0.code) \($0.message)" } ?? "a malformed ERR")
        default:
            return .failed("an unexpected answer to COM_CHANGE_USER")
        }
    }
}
