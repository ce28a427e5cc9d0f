import Crypto
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import ProxyCore
import SwiftASN1
import X509

/// The TLS contexts of one proxy: the one clients handshake with (replaced by `reload()` for new
/// connections; connections keep the context they started with) and the ones for backends.
final class TLSContexts: Sendable {
    let client: ClientTLSSettings
    let backend: BackendTLSSettings
    private let serverContext: NIOLockedValueBox<NIOSSLContext?>
    /// Backend contexts by the highest TLS version they may use (the client's, so that both links
    /// agree), made on first use.
    private let backendContexts = NIOLockedValueBox<[String: NIOSSLContext]>([:])
    /// Why the backend side cannot do TLS (a CA or key file that does not load), if it cannot.
    let backendProblem: String?
    /// Whether the certificate clients see was made at startup.
    let selfSigned: Bool

    init(client: ClientTLSSettings, backend: BackendTLSSettings, logger: Logger) throws {
        self.client = client
        self.backend = backend
        var context: NIOSSLContext? = nil
        var generated = false
        if !client.disabled {
            if client.certificatePath != nil {
                context = try Self.makeServerContext(client)
            } else {
                context = try Self.makeServerContext(client, identity: Self.selfSignedIdentity())
                generated = true
                logger.info("TLS for clients: no --ssl-cert given, using a self-signed certificate made at startup")
            }
        }
        serverContext = NIOLockedValueBox(context)
        selfSigned = generated
        var problem: String? = nil
        if let pem = backend.serverPublicKeyPEM {
            do { try RSAPassword.checkPublicKey(pem) } catch {
                throw TLSSetupError("--proxy-backend-server-public-key: \(error)")
            }
        }
        if backend.mode != .off {
            // made now so that a CA or key file that does not load is known before any client comes
            do {
                let any = try Self.makeBackendContext(backend, maximum: nil)
                backendContexts.withLockedValue { $0[Self.anyVersion] = any }
            } catch {
                problem = "\(error)"
            }
        }
        backendProblem = problem
    }

    /// The context for a new client connection's handshake; nil when TLS is off.
    var forClients: NIOSSLContext? { serverContext.withLockedValue { $0 } }

    /// Reads the certificate and key files again (SIGHUP), or makes a new self-signed certificate
    /// when the proxy made its own (it is valid for a year). On failure the old context stays and
    /// the error says why.
    func reload() throws -> Bool {
        guard !client.disabled else { return false }
        let fresh = client.certificatePath != nil ? try Self.makeServerContext(client)
            : try Self.makeServerContext(client, identity: Self.selfSignedIdentity())
        serverContext.withLockedValue { $0 = fresh }
        return true
    }

    /// The context for a backend link whose client negotiated `clientVersion` (nil: plaintext client).
    func forBackend(clientVersion: TLSVersion?) throws -> NIOSSLContext {
        let key = clientVersion.map { "\($0)" } ?? Self.anyVersion
        if let existing = backendContexts.withLockedValue({ $0[key] }) { return existing }
        let made = try Self.makeBackendContext(backend, maximum: clientVersion)
        backendContexts.withLockedValue { $0[key] = made }
        return made
    }

    // MARK: making contexts

    static let anyVersion = "any"

    struct Identity {
        var chain: [NIOSSLCertificate]
        var key: NIOSSLPrivateKey
    }

    static func makeServerContext(_ settings: ClientTLSSettings, identity given: Identity? = nil) throws -> NIOSSLContext {
        let identity: Identity
        if let given {
            identity = given
        } else {
            guard let certPath = settings.certificatePath else { throw TLSSetupError("no certificate") }
            let keyPath = settings.keyPath ?? certPath
            let chain: [NIOSSLCertificate]
            do { chain = try NIOSSLCertificate.fromPEMFile(certPath) } catch {
                throw TLSSetupError("cannot read the certificate '\(certPath)': \(error)")
            }
            guard !chain.isEmpty else { throw TLSSetupError("no certificate in '\(certPath)'") }
            let key: NIOSSLPrivateKey
            do { key = try NIOSSLPrivateKey(file: keyPath, format: .pem) } catch {
                throw TLSSetupError("cannot read the private key '\(keyPath)': \(error)")
            }
            identity = Identity(chain: chain, key: key)
        }
        var config = TLSConfiguration.makeServerConfiguration(certificateChain: identity.chain.map { .certificate($0) },
                                                              privateKey: .privateKey(identity.key))
        config.minimumTLSVersion = settings.versions.min(by: { rank($0) < rank($1) }) ?? .tlsv12
        config.maximumTLSVersion = settings.versions.max(by: { rank($0) < rank($1) })
        config.cipherSuites = settings.cipher ?? defaultCipherSuites
        config.shutdownTimeout = shutdownTimeout
        if let ca = settings.caPath {
            guard FileManager.default.isReadableFile(atPath: ca) else { throw TLSSetupError("cannot read the CA file '\(ca)'") }
            config.trustRoots = .file(ca)
            // a certificate is verified when one is sent; with --require-x509 one must be sent
            config.certificateVerification = settings.requireX509 ? .noHostnameVerification : .optionalVerification
            config.sendCANameList = true
        }
        do { return try NIOSSLContext(configuration: config) } catch {
            throw TLSSetupError("the certificate, key or cipher list cannot be used: \(error)")
        }
    }

    static func makeBackendContext(_ settings: BackendTLSSettings, maximum: TLSVersion?) throws -> NIOSSLContext {
        var config = TLSConfiguration.makeClientConfiguration()
        config.shutdownTimeout = shutdownTimeout
        config.minimumTLSVersion = .tlsv12
        config.maximumTLSVersion = maximum.map { rank($0) < rank(.tlsv12) ? .tlsv12 : $0 }
        config.cipherSuites = defaultCipherSuites
        switch settings.mode {
        case .off, .preferred, .required: config.certificateVerification = .none
        case .verifyCA: config.certificateVerification = .noHostnameVerification
        case .verifyIdentity: config.certificateVerification = .fullVerification
        }
        if let ca = settings.caPath {
            guard FileManager.default.isReadableFile(atPath: ca) else { throw TLSSetupError("cannot read --proxy-backend-ssl-ca '\(ca)'") }
            config.trustRoots = .file(ca)
        }
        if let certPath = settings.certificatePath {
            do {
                config.certificateChain = try NIOSSLCertificate.fromPEMFile(certPath).map { .certificate($0) }
                config.privateKey = .privateKey(try NIOSSLPrivateKey(file: settings.keyPath ?? certPath, format: .pem))
            } catch {
                throw TLSSetupError("cannot read the backend client certificate or key: \(error)")
            }
        }
        do { return try NIOSSLContext(configuration: config) } catch {
            throw TLSSetupError("cannot set up TLS towards backends: \(error)")
        }
    }

    /// How long a close waits for the peer's close_notify: a proxy closes links whose peer is
    /// gone or busy (a shutdown's grace period ended, a server that went away), and NIOSSL's five
    /// seconds would hold each of them open that long.
    static let shutdownTimeout = TimeAmount.milliseconds(300)

    /// TLS 1.2's suites when the operator names none: forward-secret AEAD only (no CBC, no SHA-1
    /// MACs, no static RSA key exchange). TLS 1.3's are all of that kind already.
    static let defaultCipherSuites = [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    ].joined(separator: ":")

    static func rank(_ v: TLSVersion) -> Int {
        switch v {
        case .tlsv1: return 10
        case .tlsv11: return 11
        case .tlsv12: return 12
        case .tlsv13: return 13
        }
    }

    /// A P-256 key and a certificate for it, signed by itself, valid for a year from an hour ago
    /// (SIGHUP makes a new one).
    static func selfSignedIdentity() throws -> Identity {
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName {
            CommonName("MoonProxy_Auto_Generated_Server_Certificate")
        }
        let now = Date()
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-3_600),
            notValidAfter: now.addingTimeInterval(365 * 86_400 - 3_600),
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                SubjectAlternativeNames([.dnsName("localhost"), .ipAddress(ASN1OctetString(contentBytes: [127, 0, 0, 1]))])
            },
            issuerPrivateKey: .init(key))
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return Identity(chain: [try NIOSSLCertificate(bytes: serializer.serializedBytes, format: .der)],
                        key: try NIOSSLPrivateKey(bytes: Array(key.derRepresentation), format: .der))
    }
}

struct TLSSetupError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension TLSVersion {
    /// The name MariaDB's `Ssl_version` status variable uses.
    var mysqlName: String {
        switch self {
        case .tlsv1: return "TLSv1"
        case .tlsv11: return "TLSv1.1"
        case .tlsv12: return "TLSv1.2"
        case .tlsv13: return "TLSv1.3"
        }
    }
}
