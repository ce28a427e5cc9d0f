// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "moonproxy",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "moonproxy", targets: ["moonproxy"]),
        .library(name: "MoonProxy", targets: ["ProxyServer", "ProxyScripting", "ProxyCore"]),
        .library(name: "MySQLWire", targets: ["MySQLWire"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.3.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.0.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/adam-fowler/compress-nio.git", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        .systemLibrary(
            name: "CLua",
            pkgConfig: "lua5.4",
            providers: [.apt(["liblua5.4-dev"])]
        ),
        .systemLibrary(
            name: "CZstd",
            pkgConfig: "libzstd",
            providers: [.apt(["libzstd-dev"])]
        ),
        .target(
            name: "CLuaShim",
            dependencies: ["CLua"]
        ),
        .target(
            name: "LuaVM",
            dependencies: [
                "CLuaShim",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // The connection's state machine and the values it trades with its handler: no sockets,
        // no scripting, no clock (see docs/architecture.md).
        .target(
            name: "ProxyCore",
            dependencies: [
                "MySQLWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ]
        ),
        .target(
            name: "ProxyScripting",
            dependencies: [
                "LuaVM", "MySQLWire", "ProxyCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .target(
            name: "MySQLWire",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .target(
            name: "ProxyServer",
            dependencies: [
                "MySQLWire", "ProxyCore", "ProxyScripting", "CZstd",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "CompressNIO", package: "compress-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "moonproxy",
            dependencies: [
                "ProxyServer", "ProxyScripting", "ProxyCore",
                "CLuaShim",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "LuaVMTests",
            dependencies: ["LuaVM", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "ProxyScriptingTests",
            dependencies: ["ProxyScripting", "ProxyCore", "LuaVM", "MySQLWire", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "ProxyCoreTests",
            dependencies: ["ProxyCore", "MySQLWire", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "MySQLWireTests",
            dependencies: ["MySQLWire", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "ProxyServerTests",
            dependencies: [
                "ProxyServer", "ProxyCore", "MySQLWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
    ]
)
