import MySQLWire
import NIOCore

extension ConnectionMachine {
    /// Who a pooled server connection is logged in as, and what the proxy needs to log it in
    /// again (COM_CHANGE_USER) before the next client session uses it.
    ///
    /// A value kept in one immutable box: a multiplexed session's connection changes hands at
    /// nearly every command, and each hand-over passes the login along several times; a copy is
    /// one reference count, not one per string, array and buffer. (A change makes a new box.)
    public struct ServerLogin: Equatable, Sendable {
        struct Fields: Equatable, Sendable {
            var user: String
            var database: String
            var characterSet: UInt8
            var capabilities: CapabilityFlags
            var sessionCapabilities: CapabilityFlags
            var credential: [UInt8]
            var attributes: ByteBuffer
            var clientTLS: Bool
            var compression: ProtocolCompression?
            var account: String
        }

        private final class Storage: Sendable {
            let fields: Fields
            init(_ fields: Fields) { self.fields = fields }
        }

        private var storage: Storage

        public init(user: String, database: String, characterSet: UInt8, capabilities: CapabilityFlags, sessionCapabilities: CapabilityFlags,
                    credential: [UInt8], attributes: ByteBuffer, clientTLS: Bool, compression: ProtocolCompression? = nil, account: String = "") {
            storage = Storage(Fields(user: user, database: database, characterSet: characterSet, capabilities: capabilities,
                                     sessionCapabilities: sessionCapabilities, credential: credential, attributes: attributes,
                                     clientTLS: clientTLS, compression: compression, account: account))
        }

        private subscript<T>(_ field: WritableKeyPath<Fields, T>) -> T {
            get { storage.fields[keyPath: field] }
            set {
                var fields = storage.fields
                fields[keyPath: field] = newValue
                storage = Storage(fields)
            }
        }

        public var user: String {
            get { storage.fields.user }
            set { self[\.user] = newValue }
        }
        /// The login's default database ("": none).
        public var database: String {
            get { storage.fields.database }
            set { self[\.database] = newValue }
        }
        public var characterSet: UInt8 {
            get { storage.fields.characterSet }
            set { self[\.characterSet] = newValue }
        }
        /// The capabilities of the server session (what the reset is written with).
        public var capabilities: CapabilityFlags {
            get { storage.fields.capabilities }
            set { self[\.capabilities] = newValue }
        }
        /// The flags the client session negotiated: only a session that agrees on them may
        /// take the connection.
        public var sessionCapabilities: CapabilityFlags {
            get { storage.fields.sessionCapabilities }
            set { self[\.sessionCapabilities] = newValue }
        }
        public var credential: [UInt8] {
            get { storage.fields.credential }
            set { self[\.credential] = newValue }
        }
        public var attributes: ByteBuffer {
            get { storage.fields.attributes }
            set { self[\.attributes] = newValue }
        }
        /// The client's link is TLS (the server link's TLS follows from it and the policy).
        public var clientTLS: Bool {
            get { storage.fields.clientTLS }
            set { self[\.clientTLS] = newValue }
        }
        /// The server link's compression.
        public var compression: ProtocolCompression? {
            get { storage.fields.compression }
            set { self[\.compression] = newValue }
        }
        /// The host pattern of the account the proxy matched the client to.
        public var account: String {
            get { storage.fields.account }
            set { self[\.account] = newValue }
        }

        /// Whether both are copies of one value (then ==, cheaply).
        public func isCopy(of other: ServerLogin) -> Bool { storage === other.storage }

        public static func == (a: ServerLogin, b: ServerLogin) -> Bool {
            a.storage === b.storage || a.storage.fields == b.storage.fields
        }
    }
}
