import MySQLWire
import NIOCore

/// Brings a pooled server connection back to the state a fresh login for it would have: no
/// transaction, temporary table, variable, prepared statement, lock, warning or `LAST_INSERT_ID`
/// of the client session before it, and the login's user, database and character set.
///
/// Two ways, both ending in the server's own session reset (`THD::change_user`):
/// - `resetConnection` (the login named a database and the session changed no user):
///   COM_RESET_CONNECTION and COM_INIT_DB of the login's database, written together, no
///   authentication: two OKs.
/// - `changeUser` (otherwise: a login without a database cannot get back to none any other way):
///   COM_CHANGE_USER as the login, which MariaDB answers with an auth switch to a new challenge,
///   answered from the credential; MySQL may take the first answer.
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

    public enum Way: Equatable, Sendable {
        case changeUser
        case resetConnection
    }

    public let login: ConnectionMachine.ServerLogin
    public let way: Way
    /// The challenge the server sent last (the greeting's, then each switch's).
    public private(set) var challenge: [UInt8]
    private var switched = false
    /// OKs still to come (`resetConnection`).
    private var oksLeft = 2

    /// `sessionChangedUser`: the client session sent COM_CHANGE_USER (its server session may be
    /// another user's now).
    public init(login: ConnectionMachine.ServerLogin, challenge: [UInt8], sessionChangedUser: Bool = true) {
        self.login = login
        self.challenge = challenge
        way = login.database.isEmpty || sessionChangedUser ? .changeUser : .resetConnection
    }

    /// COM_RESET_CONNECTION, and COM_INIT_DB of `database` when one is given (the reset keeps the
    /// connection's schema): each a packet of sequence id 0, each answered with an OK.
    public static func resetPackets(database: String?) -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(2 * PacketHeader.size + 2 + (database?.utf8.count ?? 0))
        out.writeInteger(UInt32(1), endianness: .little)
        out.writeInteger(CommandCode.resetConnection.rawValue)
        if let database {
            var initDB = ByteBuffer()
            initDB.reserveCapacity(1 + database.utf8.count)
            initDB.writeInteger(CommandCode.initDB.rawValue)
            initDB.writeString(database)
            var seq: UInt8 = 0
            out.writeMySQLPacket(initDB, sequenceID: &seq)
        }
        return out
    }

    /// The packets that start the reset.
    public func request() -> ByteBuffer {
        guard way == .changeUser else { return Self.resetPackets(database: login.database) }
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
        Self.answer(challenge, credential: login.credential)
    }

    /// The native answer to `challenge` from SHA1(password) (none without a password).
    static func answer(_ challenge: [UInt8], credential: [UInt8]) -> [UInt8] {
        credential.isEmpty ? [] : NativePassword.scramble(challenge: Array(challenge.prefix(20)), hashedPassword: credential)
    }

    enum SwitchAnswer {
        /// Send this; the server's new challenge.
        case answer(ByteBuffer, challenge: [UInt8])
        case refused(String)
    }

    /// MariaDB's auth switch to `mysql_native_password` with a fresh challenge (its answer to a
    /// login or COM_CHANGE_USER the proxy makes), answered from SHA1(password).
    static func answerSwitch(_ packet: MySQLFrame, credential: [UInt8]) -> SwitchAnswer {
        guard let request = try? AuthSwitchRequest(parsing: packet.payload) else { return .refused("a malformed auth switch request") }
        guard request.pluginName == ProxyAuthenticator.nativePlugin else { return .refused("the server asked for \(request.pluginName)") }
        let challenge = Array(request.pluginData.prefix(20))
        var out = ByteBuffer()
        var seq = packet.sequenceID &+ 1
        out.writeMySQLPacket(ByteBuffer(bytes: answer(challenge, credential: credential)), sequenceID: &seq)
        return .answer(out, challenge: challenge)
    }

    /// The server's next packet.
    public mutating func received(_ packet: MySQLFrame) -> Step {
        let payload = packet.payload
        switch payload.getInteger(at: payload.readerIndex, as: UInt8.self) {
        case 0x00? where way == .resetConnection:
            oksLeft -= 1
            return oksLeft == 0 ? .done : .send(ByteBuffer())
        case 0x00?:
            return .done
        case 0xFE? where !switched && way == .changeUser:
            switch Self.answerSwitch(packet, credential: login.credential) {
            case .answer(let out, let fresh):
                switched = true
                challenge = fresh
                return .send(out)
            case .refused(let reason):
                return .failed("\(reason) (the account changed since the connection was pooled)")
            }
        case 0xFF?:
            let err = try? ERRPacket(parsing: payload)
            return .failed(err.map { "\($0.code) \($0.message)" } ?? "a malformed ERR")
        default:
            return .failed("an unexpected answer to \(way == .changeUser ? "COM_CHANGE_USER" : "COM_RESET_CONNECTION")")
        }
    }
}
