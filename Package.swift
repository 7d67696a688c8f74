// swift-tools-version:6.0
// Espalier: neural architecture search inside a memory budget.
import PackageDescription

// Release builds drop bounds checks in the hot loops; debug builds keep them.
let fast: [SwiftSetting] = [
    .unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release)),
]

let package = Package(
    name: "Espalier",
    products: [
        .executable(name: "espalier", targets: ["espalier"]),
        .library(name: "EspalierCore", targets: ["EspalierCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // MARK: System libraries (Debian: libopenblas-dev, libffi-dev, zlib1g-dev)
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CFFI", pkgConfig: "libffi", providers: [.apt(["libffi-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),

        // MARK: The engine: tensors, kernels, autodiff, memory accountant, optimisers, data
        .target(
            name: "EspalierCore",
            dependencies: ["COpenBLAS", "CZlib", "CFFI"],
            swiftSettings: fast
        ),

        // MARK: The command-line host
        .executableTarget(
            name: "espalier",
            dependencies: [
                "EspalierCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: fast
        ),

        // MARK: Tests
        .testTarget(
            name: "EspalierCoreTests",
            dependencies: ["EspalierCore"]
        ),
    ],
    swiftLanguageModes: [.v5]
)
