#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import Testing
@testable import ProxyScripting

@Suite struct ScriptReloadTests {
    func write(_ text: String, to path: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = text.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
    }

    func answer(_ script: ConnectionScript) -> String? {
        if case .returned(.sendResult(.error(_, _, let message))) = script.readQuery(packet: ByteBuffer(string: "\u{03}x"), hints: []) {
            return message
        }
        return nil
    }

    func body(_ text: String) -> String {
        "function read_query() proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = '\(text)' } return proxy.PROXY_SEND_RESULT end\n"
    }

    @Test func editedScriptReachesNewConnectionsOnly() throws {
        let path = "/tmp/moonproxy-reload-\(getpid())-\(Int.random(in: 0..<1_000_000)).lua"
        defer { unlink(path) }
        write(body("v1"), to: path)
        let e = ScriptEngine(configuration: .init(scriptPath: path), backends: nil, logger: Logger(label: "test"))
        let old = try e.startConnection(host: FakeHost()).get()
        #expect(answer(old) == "v1")

        write(body("version two"), to: path)
        let new = try e.startConnection(host: FakeHost()).get()
        #expect(answer(new) == "version two")
        #expect(answer(old) == "v1")

        // a broken edit is reported and the last good version keeps serving
        write("function read_query(\n", to: path)
        let third = try e.startConnection(host: FakeHost()).get()
        #expect(answer(third) == "version two")

        write(body("fixed"), to: path)
        #expect(answer(try e.startConnection(host: FakeHost()).get()) == "fixed")
    }

    @Test func missingScriptFileIsALoadFailure() {
        let e = ScriptEngine(configuration: .init(scriptPath: "/nonexistent/script.lua"), backends: nil, logger: Logger(label: "test"))
        #expect(!e.isLoaded)
        #expect(e.loadError?.contains("/nonexistent/script.lua") == true)
    }
}
