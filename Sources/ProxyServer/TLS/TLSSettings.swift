import NIOSSL
import ProxyCore

/// TLS towards clients, where the proxy plays the server. Options are named as MariaDB names its
/// own (`--ssl-cert`, `--ssl-key`, `--ssl-ca`, `--ssl-cipher`, `--tls-version`,
/// `--require-secure-transport`, `--skip-ssl`), since to a client the proxy is the server.
public struct ClientTLSSettings: Sendable {
    /// When the greeting offers CLIENT_SSL.
    public typealias Offer = ClientTLSOffer

    /// PEM files: the certificate chain and its private key. Without them the proxy makes a
    /// self-signed certificate at startup, as MariaDB 11.4 does.
    public var certificatePath: String?
    public var keyPath: String?
    /// With a CA, clients are asked for a certificate, which is verified when they send one.
    public var caPath: String?
    /// OpenSSL cipher list for TLS 1.2 and earlier (TLS 1.3's suites cannot be chosen).
    public var cipher: String?
    /// The protocol versions accepted (`--tls-version=TLSv1.2,TLSv1.3`).
    public var versions: [TLSVersion] = [.tlsv12, .tlsv13]
    /// Plaintext logins are refused with ER_SECURE_TRANSPORT_REQUIRED (unix sockets count as secure).
    public var requireSecureTransport = false
    /// `--require-x509`: with a CA, a TLS client without a certificate that verifies is refused in
    /// the TLS handshake (without it, a certificate is verified when one is sent).
    public var requireX509 = false
    /// `--skip-ssl`: never offer TLS.
    public var disabled = false

    public init() {}

    public var offer: Offer { disabled ? .never : (certificatePath != nil ? .always : .likeBackend) }

    /// Parses MariaDB's `--tls-version` list: `TLSv1.0`, `TLSv1.1`, `TLSv1.2`, `TLSv1.3`, comma-separated.
    public static func parseVersions(_ text: String) throws(ConfigurationError) -> [TLSVersion] {
        var versions: [TLSVersion] = []
        for part in text.split(separator: ",") {
            let name = part.filter { $0 != " " && $0 != "\t" }.lowercased()
            switch name {
            case "tlsv1.0", "tlsv1": versions.append(.tlsv1)
            case "tlsv1.1": versions.append(.tlsv11)
            case "tlsv1.2": versions.append(.tlsv12)
            case "tlsv1.3": versions.append(.tlsv13)
            case "": continue
            default: throw .invalidValue(option: "--tls-version", value: text, reason: "known versions are TLSv1.0, TLSv1.1, TLSv1.2 and TLSv1.3")
            }
        }
        guard !versions.isEmpty else { throw .invalidValue(option: "--tls-version", value: text, reason: "no version given") }
        return versions
    }
}

/// TLS towards backends, where the proxy plays the client (`--proxy-backend-ssl` and friends).
public struct BackendTLSSettings: Sendable {
    public typealias Mode = BackendTLSMode

    public var mode: Mode = .preferred
    public var caPath: String?
    /// A client certificate and key to present to the server.
    public var certificatePath: String?
    public var keyPath: String?
    /// The backends' RSA public key, PEM (`--proxy-backend-server-public-key`): a password a
    /// client sent in clear goes over a plaintext server link only encrypted with it.
    public var serverPublicKeyPEM: String?
    /// `--proxy-backend-get-server-public-key`: servers that are not verified are trusted with
    /// passwords anyway (the RSA key a server sends is taken; a password goes over unverified TLS).
    public var trustUnverifiedWithPasswords = false

    public init() {}
}
