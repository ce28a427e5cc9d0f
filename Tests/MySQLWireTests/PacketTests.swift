import NIOCore
import Testing
@testable import MySQLWire

/// Packets captured from MariaDB 10.11.19 (Debian 12) with scripts/capture.py.
enum Captured {
    static let greeting = "0a352e352e352d31302e31312e31392d4d6172696144422d302b64656231327531000a000000474e34542c7d556e00fef7080200ff81150000000000001d0000004a643d406a76343f7b72484f006d7973716c5f6e61746976655f70617373776f726400"
    /// libmariadb 3.3.20's (mariadb CLI) handshake response for user "nat".
    static let handshakeResponse = "84a2bf000000100021000000000000000000000000000000000000001d0000006e617400145f944c76085a805c6f80596fb1e9a40dd32c23d46d7973716c5f6e61746976655f70617373776f7264007e035f6f73054c696e75780c5f636c69656e745f6e616d650a6c69626d617269616462045f70696404353432340f5f636c69656e745f76657273696f6e06332e332e3230095f706c6174666f726d067838365f36340c70726f6772616d5f6e616d65056d7973716c0c5f7365727665725f686f7374093132372e302e302e31"
    static let accessDenied = "ff15042332383030304163636573732064656e69656420666f72207573657220276e61742740273132372e302e302e312720287573696e672070617373776f72643a2059455329"
    static let edAuthSwitch = "fe636c69656e745f656432353531390071a86aa7c59a8b48b8686c7410000415926531403d82ba628cca6eb535039919"
    /// OK after COM_CHANGE_USER with session tracking: schema changed to "t".
    static let okWithSessionState = "00000002400000000401020174"
    static let columnID = "036465660174016101610269640269640c3f000b000000030350000000"
    static let columnS = "03646566017401610161017301730c21003c000000fd0000000000"
    /// The same column for a client that negotiated MARIADB_CLIENT_EXTENDED_METADATA: an empty
    /// extended-metadata string follows org_name.
    static let columnSExtended = "0364656601740161016101730173000c21003c000000fd0000000000"
    static let textRow = "0131036f6e6503312e35"
    static let textRowWithNulls = "0132fbfb"
    static let binaryRow = "000001000000036f6e65"
    static let noDatabase = "ff16042333443030304e6f2064617461626173652073656c6563746564"
}

@Suite struct HandshakeTests {
    @Test func parsesMariaDBGreeting() throws {
        let g = try HandshakeV10(parsing: ByteBuffer(hex: Captured.greeting))
        #expect(g.serverVersion == "5.5.5-10.11.19-MariaDB-0+deb12u1")
        #expect(g.connectionID == 10)
        #expect(g.authPluginData.count == 20)
        #expect(g.authPluginName == "mysql_native_password")
        #expect(g.characterSet == 8)
        #expect(g.status == .autocommit)
        #expect(!g.capabilities.contains(.longPassword))  // MariaDB clears CLIENT_MYSQL...
        #expect(g.capabilities.contains([.mariaDBProgress, .mariaDBBulkOperations, .mariaDBExtendedMetadata, .mariaDBCacheMetadata]))
        #expect(g.capabilities.contains([.protocol41, .compress, .deprecateEOF, .sessionTrack, .pluginAuth]))
        #expect(!g.capabilities.contains(.ssl))
    }

    @Test func restrictingCapabilitiesTouchesOnlyTheFlags() throws {
        var payload = ByteBuffer(hex: Captured.greeting)
        let before = payload
        let parsed = try HandshakeV10.restrictCapabilities(of: &payload, to: .scriptable)
        #expect(parsed.capabilities.contains(.compress))
        let after = try HandshakeV10(parsing: payload)
        #expect(after.capabilities == parsed.capabilities.intersection(.scriptable))
        // compression and TLS are the proxy's own to offer, link by link
        #expect(after.capabilities.contains(.protocol41) && !after.capabilities.contains(.compress) && !after.capabilities.contains(.ssl))
        // progress, bulk operations and extended metadata stay; metadata caching goes
        #expect(after.capabilities.mariaDBExtended == 0x0D)
        #expect(after.authPluginData == parsed.authPluginData)
        // Only the bytes of the three capability fields differ.
        let differing = zip(before.readableBytesView, payload.readableBytesView).enumerated().filter { $1.0 != $1.1 }.map(\.offset)
        #expect(differing.allSatisfy { [47, 48, 52, 53, 61, 62, 63, 64].contains($0) })
        #expect(!differing.isEmpty)
    }

    @Test func greetingRoundTrip() throws {
        let g = HandshakeV10(serverVersion: "5.5.5-MoonProxy", connectionID: 42, authPluginData: Array(1...20),
                             capabilities: [.protocol41, .secureConnection, .pluginAuth, .transactions, .longPassword])
        var out = ByteBuffer()
        g.write(to: &out)
        #expect(try HandshakeV10(parsing: out) == g)
    }

    @Test func aCapturedGreetingIsWrittenAgainByteForByte() throws {
        let captured = ByteBuffer(hex: Captured.greeting)
        var out = ByteBuffer()
        try HandshakeV10(parsing: captured).write(to: &out)
        #expect(out == captured)
        // a short challenge is padded as a server pads it: 8 bytes, then 12 (its length byte says 9)
        let short = HandshakeV10(serverVersion: "v", connectionID: 1, authPluginData: [1, 2, 3, 4],
                                 capabilities: [.protocol41, .secureConnection, .pluginAuth, .longPassword])
        var written = ByteBuffer()
        short.write(to: &written)
        let zeros: String = String(repeating: "00", count: 23)  // reserved (10), part 2 (12), its NUL
        let plugin: String = Array("mysql_native_password".utf8).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        let head: String = "0a7600" + "01000000" + "0102030400000000" + "00"
        let flags: String = "0182" + "21" + "0200" + "0800" + "09"
        #expect(written == ByteBuffer(hex: head + flags + zeros + plugin + "00"))
    }

    @Test func okPacketsOfEveryIntegerWidthRoundTrip() throws {
        for value: UInt64 in [0, 250, 251, 300, 0xFFFF, 0x1_0000, 70_000, 0xFF_FFFF, 0x100_0000, 1 << 40, .max] {
            let ok = OKPacket(affectedRows: value, lastInsertID: value / 3, status: [.autocommit, .moreResultsExist], warnings: 513, info: "x")
            var out = ByteBuffer()
            ok.write(to: &out, capabilities: [.protocol41])
            let back = try OKPacket(parsing: out, capabilities: [.protocol41])
            #expect(back.affectedRows == value && back.lastInsertID == value / 3 && back.warnings == 513, "\(value)")
            #expect(back.status == [.autocommit, .moreResultsExist] && back.info == "x")
            #expect(out.readableBytes == 1 + mysqlLengthEncodedIntegerSize(value) + mysqlLengthEncodedIntegerSize(value / 3) + 4 + 1)
        }
    }

    @Test func truncatedGreetingsThrowNeverTrap() {
        let full = ByteBuffer(hex: Captured.greeting)
        // Every prefix that cuts into a mandatory field must throw; none may crash.
        for length in 0..<full.readableBytes {
            _ = try? HandshakeV10(parsing: full.getSlice(at: 0, length: length)!)
        }
        for length in [0, 1, 10, 30, 40] {
            #expect(throws: WireError.self) { try HandshakeV10(parsing: full.getSlice(at: 0, length: length)!) }
        }
    }

    @Test func parsesLibmariadbHandshakeResponse() throws {
        let r = try HandshakeResponse41(parsing: ByteBuffer(hex: Captured.handshakeResponse))
        #expect(r.username == "nat")
        #expect(r.authResponse.count == 20)
        #expect(r.authPluginName == "mysql_native_password")
        #expect(r.maxPacketSize == 1 << 20)
        #expect(r.characterSet == 33)
        #expect(r.database == nil)
        #expect(r.capabilities.contains([.pluginAuthLengthEncodedClientData, .connectAttributes, .sessionTrack, .multiResults]))
        #expect(!r.capabilities.contains(.deprecateEOF))
        #expect(r.capabilities.mariaDBExtended == 0x1d)
        #expect(r.attributes.first { $0.key == "program_name" }?.value == "mysql")
    }

    @Test func handshakeResponseRoundTrip() throws {
        let r = HandshakeResponse41(capabilities: [.protocol41, .secureConnection, .pluginAuth, .connectWithDB, .connectAttributes, .pluginAuthLengthEncodedClientData],
                                    username: "u", authResponse: Array(repeating: 7, count: 20), database: "db",
                                    authPluginName: "mysql_native_password", attributes: [("a", "b")])
        var out = ByteBuffer()
        r.write(to: &out)
        #expect(try HandshakeResponse41(parsing: out) == r)
    }

    @Test func restrictingClientCapabilities() throws {
        var payload = ByteBuffer(hex: Captured.handshakeResponse)
        let asked = try HandshakeResponse41.restrictCapabilities(of: &payload, to: .scriptable)
        #expect(asked.mariaDBExtended == 0x1d)
        let after = try HandshakeResponse41(parsing: payload)
        #expect(after.capabilities.mariaDBExtended == 0x0D)
        #expect(after.username == "nat")
    }

    @Test func truncatedHandshakeResponsesThrow() {
        let full = ByteBuffer(hex: Captured.handshakeResponse)
        for length in 0..<40 {
            #expect(throws: WireError.self) { try HandshakeResponse41(parsing: full.getSlice(at: 0, length: length)!) }
        }
        for length in 40..<full.readableBytes { _ = try? HandshakeResponse41(parsing: full.getSlice(at: 0, length: length)!) }
        var tooShort = ByteBuffer(hex: "0102")
        #expect(throws: WireError.self) { try HandshakeResponse41.restrictCapabilities(of: &tooShort, to: .relayable) }
    }

    @Test func sslRequestIsRecognised() {
        var ssl = ByteBuffer()
        ssl.writeMySQLInteger(CapabilityFlags([.protocol41, .ssl]).lower32)
        ssl.writeRepeatingByte(0, count: 28)
        #expect(HandshakeResponse41.isSSLRequest(ssl))
        #expect(!HandshakeResponse41.isSSLRequest(ByteBuffer(hex: Captured.handshakeResponse)))
    }

    @Test func authSwitchToEd25519() throws {
        let s = try AuthSwitchRequest(parsing: ByteBuffer(hex: Captured.edAuthSwitch))
        #expect(s.pluginName == "client_ed25519")
        #expect(s.pluginData.count == 32)
        var out = ByteBuffer()
        s.write(to: &out)
        #expect(out.hex == Captured.edAuthSwitch)
        #expect(try AuthMoreData(parsing: ByteBuffer(hex: "0103")).data == [3])
    }
}

@Suite struct GenericPacketTests {
    @Test func errWithSQLState() throws {
        let e = try ERRPacket(parsing: ByteBuffer(hex: Captured.accessDenied))
        #expect(e.code == 1045)
        #expect(e.sqlState == "28000")
        #expect(e.message == "Access denied for user 'nat'@'127.0.0.1' (using password: YES)")
        var out = ByteBuffer()
        e.write(to: &out)
        #expect(out.hex == Captured.accessDenied)
    }

    @Test func errWithoutSQLStateAsBeforeTheHandshake() throws {
        // "Host is not allowed to connect" style: no '#' marker.
        var out = ByteBuffer()
        ERRPacket(code: 1130, sqlState: nil, message: "Host 'x' is not allowed").write(to: &out)
        #expect(out.hex.hasPrefix("ff6a0448"))
        let e = try ERRPacket(parsing: out)
        #expect(e.sqlState == nil)
        #expect(e.message == "Host 'x' is not allowed")
    }

    @Test func okWithSessionTracking() throws {
        let ok = try OKPacket(parsing: ByteBuffer(hex: Captured.okWithSessionState), capabilities: [.protocol41, .sessionTrack])
        #expect(ok.status == [.autocommit, .sessionStateChanged])
        #expect(ok.info == "")
        #expect(ok.sessionStateChanges?.hex == "01020174")
        var out = ByteBuffer()
        ok.write(to: &out, capabilities: [.protocol41, .sessionTrack])
        #expect(out.hex == Captured.okWithSessionState)
    }

    @Test func okWithInfo() throws {
        // After LOAD DATA LOCAL INFILE.
        let hex = "000100020003002f5265636f7264733a2031202044656c657465643a20302020536b69707065643a203020205761726e696e67733a2033"
        let ok = try OKPacket(parsing: ByteBuffer(hex: hex), capabilities: [.protocol41])
        #expect(ok.affectedRows == 1)
        #expect(ok.status == .autocommit)
        #expect(ok.warnings == 3)
        #expect(ok.info.hasSuffix("Records: 1  Deleted: 0  Skipped: 0  Warnings: 3"))
    }

    @Test func eof() throws {
        let eof = try EOFPacket(parsing: ByteBuffer(hex: "fe00004200"))
        #expect(eof.status == [.autocommit, .cursorExists])
        #expect(EOFPacket.isEOF(firstByte: 0xFE, payloadLength: 5))
        #expect(!EOFPacket.isEOF(firstByte: 0xFE, payloadLength: 9))
        #expect(throws: WireError.self) { try EOFPacket(parsing: ByteBuffer(hex: "fe00")) }
    }

    @Test func truncatedOK() {
        for hex in ["00", "0000", "000000", "00000002", "0000fc01", "0000000200"] {
            #expect(throws: WireError.self) { try OKPacket(parsing: ByteBuffer(hex: hex), capabilities: [.protocol41]) }
        }
    }

    @Test func columnDefinitions() throws {
        let id = try ColumnDefinition41(parsing: ByteBuffer(hex: Captured.columnID))
        #expect(id.schema == "t")
        #expect(id.table == "a")
        #expect(id.name == "id")
        #expect(id.type == .long)
        #expect(id.flags.contains([.notNull, .primaryKey, .noDefaultValue]))
        let s = try ColumnDefinition41(parsing: ByteBuffer(hex: Captured.columnS))
        #expect(s.type == .varString)
        #expect(s.columnLength == 60)
        var out = ByteBuffer()
        s.write(to: &out)
        #expect(out.hex == Captured.columnS)
        #expect(try ColumnDefinition41(parsing: ByteBuffer(hex: Captured.columnSExtended), mariaDBExtendedMetadata: true) == s)
        // COM_FIELD_LIST adds a default value.
        let withDefault = try ColumnDefinition41(parsing: ByteBuffer(hex: "036465660174016101610269640269640c3f000b0000000303500000000130"))
        #expect(withDefault.defaultValue.map { String(buffer: $0) } == "0")
        for length in 0..<(Captured.columnID.count / 2) {
            #expect(throws: WireError.self) { try ColumnDefinition41(parsing: ByteBuffer(hex: String(Captured.columnID.prefix(length * 2)))) }
        }
    }

    @Test func rows() throws {
        let values = try TextRow.decode(ByteBuffer(hex: Captured.textRow), columnCount: 3)
        #expect(values.map { $0.map { String(buffer: $0) } } == ["1", "one", "1.5"])
        let nulls = try TextRow.decode(ByteBuffer(hex: Captured.textRowWithNulls), columnCount: 3)
        #expect(nulls.map { $0.map { String(buffer: $0) } } == ["2", nil, nil])
        #expect(throws: WireError.self) { try TextRow.decode(ByteBuffer(hex: Captured.textRow), columnCount: 4) }
        #expect(throws: WireError.self) { try TextRow.decode(ByteBuffer(hex: Captured.textRow), columnCount: 2) }
        var out = ByteBuffer()
        TextRow.encode(["2", nil, nil], into: &out)
        #expect(out.hex == Captured.textRowWithNulls)

        let binary = try BinaryRow.decode(ByteBuffer(hex: Captured.binaryRow), columns: [(.long, [.notNull]), (.varString, [])])
        #expect(binary.map(\.text) == ["1", "one"])
        // id 2 with s NULL: bitmap bit 3 set
        let withNull = try BinaryRow.decode(ByteBuffer(hex: "000802000000"), columns: [(.long, []), (.varString, [])])
        #expect(withNull == [.signed(2), .null])
        #expect(throws: WireError.self) { try BinaryRow.decode(ByteBuffer(hex: "0000010000"), columns: [(.long, []), (.varString, [])]) }
        var encoded = ByteBuffer()
        BinaryRow.encodeStrings(["x", nil], into: &encoded)
        #expect(try BinaryRow.decode(encoded, columns: [(.varString, []), (.varString, [])]) == [.bytes(ByteBuffer(string: "x")), .null])
    }

    @Test func binaryTemporalValues() throws {
        let row = "00" + "00" + "0be8070b150a1b2c40e20100" + "0c010100000002030405000000" + "04e8070b15"
        let values = try BinaryRow.decode(ByteBuffer(hex: row), columns: [(.datetime, []), (.time, []), (.date, [])])
        #expect(values.map(\.text) == ["2024-11-21 10:27:44.123456", "-26:03:04.000005", "2024-11-21"])
    }
}

@Suite struct ChangeUserTests {
    /// mysql-connector-python 9's COM_CHANGE_USER to user "nat", database "test" (captured
    /// through the proxy's read_query).
    static let captured = "116e61740014e92f62eeb510deb1af37be8f4e9bbcf539d6483074657374002d006d7973716c5f6e61746976655f70617373776f7264008d045f7069640439383034095f706c6174666f726d067838365f36340c5f736f757263655f686f737402766d0c5f636c69656e745f6e616d65166d7973716c2d636f6e6e6563746f722d707974686f6e0f5f636c69656e745f6c6963656e73650747504c2d322e300f5f636c69656e745f76657273696f6e0732362e31302e30035f6f730944656269616e2d3132"

    @Test func readsUserAndDatabase() throws {
        let request = try ChangeUserRequest(parsing: ByteBuffer(hex: Self.captured), capabilities: [.protocol41, .secureConnection])
        #expect(request.username == "nat")
        #expect(request.database == "test")
    }

    @Test func truncatedRequestsAreErrors() {
        let bytes = Array(ByteBuffer(hex: Self.captured).readableBytesView)
        for length in [0, 1, 3, 6, 20] {
            #expect(throws: WireError.self) {
                try ChangeUserRequest(parsing: ByteBuffer(bytes: bytes.prefix(length)), capabilities: [.protocol41, .secureConnection])
            }
        }
        // without a database at all (an old client): the empty one
        let noDatabase = try? ChangeUserRequest(parsing: ByteBuffer(bytes: bytes.prefix(5 + 21)), capabilities: [.protocol41, .secureConnection])
        #expect(noDatabase?.database == "")
    }
}
