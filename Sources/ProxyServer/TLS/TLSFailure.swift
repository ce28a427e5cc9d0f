import NIOSSL

/// How the proxy tells and words the errors its TLS links end with.
enum TLSFailure {
    /// A TLS error that means the link failed; a peer that closes its socket without TLS's
    /// close_notify (as MySQL servers and clients do after COM_QUIT) is an ordinary end.
    static func isFailure(_ error: Error) -> Bool {
        if let error = error as? NIOSSLError, case .uncleanShutdown = error { return false }
        return error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError
    }

    /// A TLS error in few words: BoringSSL's reasons (CERTIFICATE_VERIFY_FAILED, ...) without
    /// the source locations its messages carry.
    static func describe(_ error: Error) -> String {
        let text = "\(error)"
        var reasons: [Substring] = []
        var rest = Substring(text)
        while let range = rest.range(of: "OPENSSL_internal:") {
            let tail = rest[range.upperBound...]
            let reason = tail.prefix { $0 != " " && $0 != "]" && $0 != ")" }
            if !reason.isEmpty && !reasons.contains(reason) { reasons.append(reason) }
            rest = tail
        }
        if !reasons.isEmpty { return reasons.joined(separator: ", ") }
        if let error = error as? NIOSSLExtraError { return "\(error)" }
        return String(text.prefix(200))
    }
}
