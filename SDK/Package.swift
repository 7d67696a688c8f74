// swift-tools-version:6.0
// The Espalier plugin SDK: the C headers of ABI v1 (CEspalierSDK) and a thin Swift helper
// (EspalierPluginKit). A plugin depends on this package alone, never on the host.
import PackageDescription

let package = Package(
    name: "EspalierSDK",
    products: [
        .library(name: "CEspalierSDK", targets: ["CEspalierSDK"]),
        .library(name: "EspalierPluginKit", targets: ["EspalierPluginKit"]),
    ],
    targets: [
        .target(name: "CEspalierSDK", path: ".", exclude: ["README.md", "Swift", "Package.swift"],
                sources: ["check/headers_compile.c"], publicHeadersPath: "include"),
        .target(name: "EspalierPluginKit", dependencies: ["CEspalierSDK"], path: "Swift/EspalierPluginKit"),
    ],
    swiftLanguageModes: [.v5]
)
