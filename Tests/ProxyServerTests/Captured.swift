import MySQLWire
import NIOCore

/// Packets captured from MariaDB 10.11 and libmariadb 3.3.
enum Captured {
    static let greeting = "0a352e352e352d31302e31312e31392d4d6172696144422d302b64656231327531000a000000474e34542c7d556e00fef7080200ff81150000000000001d0000004a643d406a76343f7b72484f006d7973716c5f6e61746976655f70617373776f726400"
    static let handshakeResponse = "84a2bf000000100021000000000000000000000000000000000000001d0000006e617400145f944c76085a805c6f80596fb1e9a40dd32c23d46d7973716c5f6e61746976655f70617373776f7264007e035f6f73054c696e75780c5f636c69656e745f6e616d650a6c69626d617269616462045f70696404353432340f5f636c69656e745f76657273696f6e06332e332e3230095f706c6174666f726d067838365f36340c70726f6772616d5f6e616d65056d7973716c0c5f7365727665725f686f7374093132372e302e302e31"
}

extension ByteBuffer {
    func frames() -> [MySQLFrame] {
        var copy = self
        var result: [MySQLFrame] = []
        while let f = copy.readMySQLFrame() { result.append(f) }
        return result
    }

    init(hex: String) {
        var bytes: [UInt8] = []
        var chars = hex.makeIterator()
        while let hi = chars.next(), let lo = chars.next() {
            bytes.append(UInt8(String([hi, lo]), radix: 16)!)
        }
        self.init(bytes: bytes)
    }
}
