import MySQLWire
import NIOCore
import Testing
@testable import ProxyCore

/// COM_CHANGE_USER in a session the proxy logged in (`--proxy-auth=proxy`, pooled): verified by
/// the proxy on the greeting's challenge; refused, the client gets the server's ERR and the
/// session is reset; accepted, the server connection goes back to the pool and the session logs
/// in again as the new user, as at a login.
@Suite struct ProxyChangeUserTests {
    typealias P = ProxyLoginTests
    typealias N = NativePasswordTests

    static let capabilities: CapabilityFlags = [.protocol41, .secureConnection, .pluginAuth, .longPassword, .transactions, .deprecateEOF]

    /// A session of nat, logged in on a pooled server connection.
    static func session(_ verdict: ((LoginAttempt) -> LoginVerdict)? = nil) -> Driver {
        var d = P.verifying(pools: true)
        d.run(d.machine.clientConnected(ownGreeting: P.ownGreeting()))
        d.client(P.response())
        d.run(d.machine.pooledServerAttached(backendTLS: false, localSocket: false))
        if let verdict { d.verifier = verdict }
        return d
    }

    static func changeUser(_ user: String = "nat", answer: [UInt8] = N.answer, database: String = "app") -> ByteBuffer {
        let request = ChangeUserRequest(username: user, authResponse: answer, database: database, characterSet: 45,
                                        authPluginName: "mysql_native_password")
        var payload = ByteBuffer()
        request.write(to: &payload, capabilities: capabilities)
        var out = ByteBuffer()
        var seq: UInt8 = 0
        out.writeMySQLPacket(payload, sequenceID: &seq)
        return out
    }

    @Test func aWrongPasswordIsRefusedAndTheSessionIsReset() throws {
        var d = Self.session()
        var wrong = N.answer
        wrong[5] ^= 0x10
        let refused = d.client(Self.changeUser(answer: wrong))
        // verified on the proxy's greeting challenge; nothing of it reaches the server
        #expect(d.attempts.last == LoginAttempt(user: "nat", plugin: "mysql_native_password", response: wrong, challenge: P.challenge, clientTLS: false,
                                                changingUser: true))
        let err = try firstFrame(refused.toClient)
        #expect(err.sequenceID == 1)
        #expect(try ERRPacket(parsing: err.payload).code == 1045)
        #expect(refused.toBackend == nil)
        #expect(refused.actions.contains(.resetBackendSession))
        #expect(!refused.actions.contains { if case .connectToBackend = $0 { true } else { false } })
        #expect(!d.machine.isClosed && !d.machine.sessionChangedUser)
        // the session goes on as before
        #expect(d.client(Wire.query("SELECT 1")).actions == [.forwardToBackend(Wire.query("SELECT 1"))])
    }

    @Test func anAcceptedChangeIsALoginOfTheNewUser() throws {
        var d = Self.session { _ in .accepted(credential: N.sha1OfPassword, account: "%") }
        let accepted = d.client(Self.changeUser(database: "other"))
        // the old login's connection goes to the pool first, then the new login asks for one
        let release = accepted.actions.firstIndex(of: .releaseBackend)
        let connect = accepted.actions.firstIndex(of: .connectToBackend(preferred: nil))
        #expect(release != nil && connect != nil && release! < connect!)
        #expect(accepted.toClient == nil && accepted.toBackend == nil)
        #expect(d.machine.pendingServerLogin?.database == "other" && d.machine.pendingServerLogin?.characterSet == 45)
        #expect(!d.machine.wantsClientReads)
        // a fresh server connection: the proxy logs in as the new login, the client gets the OK
        // as the answer to its command (sequence id 1)
        d.connected()
        let login = d.server([(Wire.greeting, 0)])
        let response = try HandshakeResponse41(parsing: try firstFrame(login.toBackend).payload)
        #expect(response.username == "nat" && response.database == "other")
        let ok = d.server(Wire.ok(seq: 2))
        #expect(try firstFrame(ok.toClient).sequenceID == 1)
        #expect(ok.actions.contains(.loginSucceeded))
        #expect(d.machine.serverLogin?.database == "other" && !d.machine.sessionChangedUser)
        #expect(d.machine.session.database == "other")
        #expect(d.client(Wire.query("SELECT 2")).actions == [.forwardToBackend(Wire.query("SELECT 2"))])
    }

    @Test func aPooledConnectionOfTheNewLoginAnswersAtOnce() throws {
        var d = Self.session { _ in .accepted(credential: N.sha1OfPassword, account: "%") }
        d.client(Self.changeUser())
        let attached = d.run(d.machine.pooledServerAttached(backendTLS: false, localSocket: false))
        let ok = try firstFrame(attached.toClient)
        #expect(ok.sequenceID == 1)
        #expect(ok.payload.getInteger(at: ok.payload.readerIndex, as: UInt8.self) == 0)
        #expect(attached.actions.contains(.loginSucceeded))
    }

    @Test func aRequestSplitAcrossReadsIsHeldUntilWhole() throws {
        let whole = Self.changeUser()
        for cut in [5, 9, 30, whole.readableBytes - 1] {
            var d = Self.session()
            var wrong = N.answer
            wrong[0] ^= 1
            let bytes = Self.changeUser(answer: wrong)
            let first = d.client(bytes.getSlice(at: 0, length: cut)!)
            #expect(first.toBackend == nil && d.attempts.count == 1, "cut at \(cut)")  // (the login's)
            let second = d.client(bytes.getSlice(at: cut, length: bytes.readableBytes - cut)!)
            #expect(d.attempts.count == 2 && second.toBackend == nil, "cut at \(cut)")
            #expect(try firstError(second.toClient).code == 1045)
        }
    }

    @Test func anAccountTheProxyCannotLogInWithIsLeftToTheServer() throws {
        var d = Self.session { _ in .relay(plugin: "ed25519") }
        let bytes = Self.changeUser()
        let relayed = d.client(bytes)
        #expect(relayed.toBackend == bytes)
        #expect(d.machine.sessionChangedUser)  // its connection is reset as its login before the next session
        // the next one is verified again
        d.verifier = { _ in .refused(.accessDenied(user: "nat", host: "h", usingPassword: true), reason: "no") }
        d.server(Wire.ok(seq: 2))
        #expect(try firstError(d.client(Self.changeUser()).toClient).code == 1045)
    }

    @Test func aRequestBehindAPendingCommandGoesToTheServer() {
        var d = Self.session()
        d.client(Wire.query("SELECT SLEEP(1)"))
        let bytes = Self.changeUser()
        #expect(d.client(bytes).toBackend == bytes)
        #expect(d.attempts.count == 1)  // (the login's)
    }
}
