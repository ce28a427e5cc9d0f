import NIOCore
import NIOSSL
import MySQLWire
import ProxyCore

// MARK: - a link turning to TLS or to the compressed protocol

extension ClientChannelHandler {
    /// The client asked for TLS: the handshake runs in a handler in front of this one, and the
    /// bytes that came behind the SSLRequest (the ClientHello) go through it first.
    func startClientTLS(_ leftover: ByteBuffer) {
        guard let context, let sslContext = shared.tls?.forClients else {
            closeBoth()
            return
        }
        do {
            let handler = NIOSSLServerHandler(context: sslContext)
            try context.pipeline.syncOperations.addHandler(handler, position: .first)
            clientTLSHandler = handler
            // the cipher, read from the ServerHello the TLS handler writes
            try context.pipeline.syncOperations.addHandler(ServerHelloSniffer(watching: .outbound) { [weak self] cipher in
                self?.clientCipher = cipher
            }, position: .first)
        } catch {
            log(.error, "closing: cannot start TLS with the client: \(error)")
            closeBoth()
            return
        }
        if leftover.readableBytes > 0 { context.pipeline.syncOperations.fireChannelRead(NIOAny(leftover)) }
    }

    /// The login's OK went out: the client's link speaks the compressed protocol from now on.
    func startClientCompression(_ algorithm: ProtocolCompression) {
        guard let context else { return }
        do {
            try context.pipeline.syncOperations.addHandler(CompressionHandler(role: .server, compression: algorithm), position: .before(self))
            described.compression = "\(algorithm)"
            scripted?.client.compression = described.compression
        } catch {
            log(.error, "closing: cannot start \(algorithm) compression with the client: \(error)")
            closeBoth()
        }
    }

    /// The login's OK came from the server: its link speaks the compressed protocol from now on.
    func startBackendCompression(_ algorithm: ProtocolCompression, early: ByteBuffer?) {
        guard let backend else { return }
        do {
            try backend.startCompression(algorithm, early: early)
            described.backendCompression = "\(algorithm)"
            scripted?.attached?.compression = described.backendCompression
        } catch {
            log(.error, "closing: cannot start \(algorithm) compression with the backend: \(error)")
            closeBoth()
        }
    }

    /// The login's SSLRequest goes to the server in plaintext, and the link turns to TLS; what is
    /// written next waits in the TLS handler until its handshake is done.
    func startBackendTLS(_ request: ByteBuffer) {
        guard let backend, let tls = shared.tls else { return }
        do {
            let sslContext = try tls.forBackend(clientVersion: clientTLSHandler?.tlsVersion)
            var hostname: String? = nil
            if case .tcp(let host, _) = described.backend, (try? SocketAddress(ipAddress: host, port: 0)) == nil {
                hostname = host  // SNI, and the name verify-identity checks; an IP address is checked against the peer's
            }
            try backend.startTLS(request: request, context: sslContext, serverHostname: hostname)
        } catch {
            run(machine.backendTLSFailed("cannot start: \(error)"))
            run(machine.abandon(.backendHandshake, reason: "cannot start TLS with the backend: \(error)"))
        }
    }
}
