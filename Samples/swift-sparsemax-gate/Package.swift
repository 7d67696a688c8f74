// swift-tools-version:6.0
// The sample Swift plugin: a sparsemax gate built on its own, against the Espalier SDK alone
// (never the host). Product: .build/release/libespalier-sample-sparsemax.so
import PackageDescription

let package = Package(
    name: "SparsemaxGate",
    products: [
        .library(name: "espalier-sample-sparsemax", type: .dynamic, targets: ["SparsemaxGate"]),
    ],
    dependencies: [
        .package(path: "../../SDK"),
    ],
    targets: [
        .target(
            name: "SparsemaxGate",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")]
        ),
    ],
    swiftLanguageModes: [.v5]
)
