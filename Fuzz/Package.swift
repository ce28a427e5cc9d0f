// swift-tools-version:6.0
// libFuzzer targets for MoonProxy's parsers. A package of its own so that the main build never sees
// fuzzer flags; scripts/fuzz builds and runs it.
import PackageDescription
import Foundation

// A path dependency is known by its folder's name, which is whatever the clone was called.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "moonproxy-fuzz",
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    ],
    targets: [
        .executableTarget(
            name: "WireFuzzer",
            dependencies: [
                .product(name: "MySQLWire", package: root),
                .product(name: "MoonProxy", package: root),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        ),
        .executableTarget(
            name: "ProtoFuzzer",
            dependencies: [
                .product(name: "MoonProxy", package: root),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        ),
        .executableTarget(
            name: "EncoderFuzzer",
            dependencies: [
                .product(name: "MoonProxy", package: root),
                .product(name: "MySQLWire", package: root),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        ),
        .executableTarget(
            name: "MachineFuzzer",
            dependencies: [
                .product(name: "MoonProxy", package: root),
            ],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        ),
    ]
)
