// swift-tools-version:6.0
// Espalier: neural architecture search inside a memory budget.
import PackageDescription

import Foundation

// Release builds drop bounds checks in the hot loops and compile for AVX2 + FMA (haswell, the x86-64-v3 feature level;
// without it Swift's SIMD multiply-adds become library calls). ESPALIER_TARGET_CPU overrides it,
// e.g. ESPALIER_TARGET_CPU=x86-64 for a machine without AVX2.
#if arch(x86_64)
let targetCPU = ProcessInfo.processInfo.environment["ESPALIER_TARGET_CPU"] ?? "haswell"
#else
let targetCPU = ProcessInfo.processInfo.environment["ESPALIER_TARGET_CPU"] ?? "generic"
#endif
let fast: [SwiftSetting] = [
    .unsafeFlags(["-Ounchecked", "-wmo", "-target-cpu", targetCPU], .when(configuration: .release)),
]

let package = Package(
    name: "Espalier",
    products: [
        .executable(name: "espalier", targets: ["espalier"]),
        .library(name: "EspalierCore", targets: ["EspalierCore"]),
        .library(name: "EspalierHost", targets: ["EspalierHost"]),
        .library(name: "EspalierSearch", targets: ["EspalierSearch"]),
        // The communication layer of a search on several ranks: loaded with dlopen under mpirun only,
        // so the executable never links MPI (Sources/EspalierMPI).
        .library(name: "EspalierMPI", type: .dynamic, targets: ["EspalierMPI"]),
        // Plugins: one shared library per method family, loaded by the host with dlopen.
        .library(name: "espalier-gates", type: .dynamic, targets: ["EspalierGatesPlugin"]),
        .library(name: "espalier-darts", type: .dynamic, targets: ["EspalierDartsPlugin"]),
        .library(name: "espalier-pcdarts", type: .dynamic, targets: ["EspalierPCDartsPlugin"]),
        .library(name: "espalier-gdas", type: .dynamic, targets: ["EspalierGdasPlugin"]),
        .library(name: "espalier-proxyless", type: .dynamic, targets: ["EspalierProxylessPlugin"]),
        .library(name: "espalier-pdarts", type: .dynamic, targets: ["EspalierPDartsPlugin"]),
        .library(name: "espalier-dropnas", type: .dynamic, targets: ["EspalierDropNASPlugin"]),
        .library(name: "espalier-mergenas", type: .dynamic, targets: ["EspalierMergeNASPlugin"]),
        .library(name: "espalier-parsec", type: .dynamic, targets: ["EspalierParsecPlugin"]),
        .library(name: "espalier-betadarts", type: .dynamic, targets: ["EspalierBetaDartsPlugin"]),
        .library(name: "espalier-random", type: .dynamic, targets: ["EspalierRandomPlugin"]),
        .library(name: "espalier-zeroshot", type: .dynamic, targets: ["EspalierZeroShotPlugin"]),
        .library(name: "espalier-gsparsity", type: .dynamic, targets: ["EspalierGSparsityPlugin"]),
        .library(name: "espalier-bonsai", type: .dynamic, targets: ["EspalierBonsaiPlugin"]),
        .library(name: "espalier-figs", type: .dynamic, targets: ["EspalierFigsPlugin"]),
        // Samples built with the tree (each can also be built on its own: see Samples/README.md).
        .library(name: "espalier-sample-swish", type: .dynamic, targets: ["SampleSwishOp"]),
        .library(name: "espalier-sample-sparsemax", type: .dynamic, targets: ["SparsemaxGate"]),
        .library(name: "espalier-sample-patience", type: .dynamic, targets: ["SamplePatienceStrategy"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
        // The plugin SDK is its own package, so that plugins can depend on it alone.
        .package(path: "SDK"),
    ],
    targets: [
        // MARK: System libraries (Debian: libopenblas-dev, libffi-dev, zlib1g-dev, libpng-dev, libturbojpeg0-dev)
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CFFI", pkgConfig: "libffi", providers: [.apt(["libffi-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // Image decoding for `--dataset folder` (Debian: libpng-dev, libturbojpeg0-dev).
        .systemLibrary(name: "CPNG", pkgConfig: "libpng16", providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CTurboJPEG", pkgConfig: "libturbojpeg", providers: [.apt(["libturbojpeg0-dev"])]),
        // Debian: libopenmpi-dev (and openmpi-bin for mpirun); only the communication layer links it.
        .systemLibrary(name: "COpenMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"])]),
        .target(name: "EspalierMPI", dependencies: ["COpenMPI"], path: "Sources/EspalierMPI"),
        // Linux and CPU calls: prctl for the supervisor, CPUID and an AVX-512 FMA loop for the bench; headers only.
        .systemLibrary(name: "CEspalierSystem"),
        // Kernels that need instructions beyond the release build's AVX2 (a C function can carry a
        // target attribute; Swift cannot), called where the CPU has them. -ffp-contract=off: the
        // compiler fuses no multiply and add the Swift kernels they mirror keep apart.
        .target(name: "CEspalierKernels", cSettings: [.unsafeFlags(["-O2", "-ffp-contract=off"])]),

        // MARK: The engine: tensors, kernels, autodiff, memory accountant, optimisers, data
        .target(
            name: "EspalierCore",
            dependencies: ["COpenBLAS", "CZlib", "CFFI", "CPNG", "CTurboJPEG", "CEspalierSystem", "CEspalierKernels"],
            swiftSettings: fast
        ),

        // MARK: The plugin host: loader, registry, libffi calls, adapters from the C ABI to the engine
        .target(
            name: "EspalierHost",
            dependencies: ["EspalierCore", "CFFI", .product(name: "CEspalierSDK", package: "SDK"), "Yams"],
            swiftSettings: fast
        ),

        // MARK: Search: the DARTS cell space, the supernet and the common search trainer (on plugins)
        .target(
            name: "EspalierSearch",
            dependencies: ["EspalierCore", "EspalierHost", .product(name: "CEspalierSDK", package: "SDK")],
            swiftSettings: fast
        ),

        // MARK: Plugins and samples (shared libraries; they see the SDK only)
        .target(
            name: "EspalierGatesPlugin",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Plugins/gates",
            swiftSettings: fast
        ),
        .target(
            name: "EspalierDartsPlugin",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Plugins/darts",
            swiftSettings: fast
        ),
        .target(
            name: "EspalierPCDartsPlugin",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Plugins/pcdarts",
            swiftSettings: fast
        ),
        .target(
            name: "EspalierGdasPlugin",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Plugins/gdas",
            swiftSettings: fast
        ),
        .target(
            name: "EspalierProxylessPlugin",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Plugins/proxyless",
            swiftSettings: fast
        ),
        .target(
            name: "EspalierPDartsPlugin",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Plugins/pdarts",
            swiftSettings: fast
        ),
        .target(
            name: "EspalierDropNASPlugin",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Plugins/dropnas",
            swiftSettings: fast
        ),
        .target(
            name: "EspalierMergeNASPlugin",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Plugins/mergenas",
            swiftSettings: fast
        ),
        .target(
            name: "EspalierParsecPlugin",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Plugins/parsec",
            swiftSettings: fast
        ),
        .target(
            name: "EspalierBetaDartsPlugin",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Plugins/betadarts",
            swiftSettings: fast
        ),
        .target(
            name: "EspalierRandomPlugin",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Plugins/random",
            swiftSettings: fast
        ),
        .target(
            name: "EspalierZeroShotPlugin",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Plugins/zeroshot",
            swiftSettings: fast
        ),
        .target(
            name: "EspalierGSparsityPlugin",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Plugins/gsparsity",
            swiftSettings: fast
        ),
        .target(
            name: "EspalierBonsaiPlugin",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Plugins/bonsai",
            swiftSettings: fast
        ),
        .target(
            name: "EspalierFigsPlugin",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Plugins/figs",
            swiftSettings: fast
        ),
        .target(
            name: "SampleSwishOp",
            dependencies: [.product(name: "CEspalierSDK", package: "SDK")],
            path: "Samples/c-swish-op",
            exclude: ["README.md"],
            publicHeadersPath: ".",
            cSettings: [.unsafeFlags(["-O2"])],
            linkerSettings: [.linkedLibrary("m")]
        ),
        .target(
            name: "SamplePatienceStrategy",
            dependencies: [.product(name: "CEspalierSDK", package: "SDK")],
            path: "Samples/c-patience-strategy",
            exclude: ["README.md"],
            publicHeadersPath: ".",
            cSettings: [.unsafeFlags(["-O2"])]
        ),
        .target(
            name: "SparsemaxGate",
            dependencies: [.product(name: "EspalierPluginKit", package: "SDK")],
            path: "Samples/swift-sparsemax-gate/Sources/SparsemaxGate"
        ),

        // MARK: The command-line host
        .executableTarget(
            name: "espalier",
            dependencies: [
                "CEspalierSystem",
                "EspalierCore",
                "EspalierHost",
                "EspalierSearch",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: fast
        ),

        // MARK: Tests (helpers shared by the test targets are a target of their own)
        .target(
            name: "EspalierTestSupport",
            dependencies: ["EspalierCore", "CZlib", "CPNG", "CTurboJPEG"],
            path: "Tests/EspalierTestSupport"
        ),
        .testTarget(
            name: "EspalierCoreTests",
            dependencies: ["EspalierCore", "EspalierTestSupport"]
        ),
        .testTarget(
            name: "EspalierHostTests",
            dependencies: ["EspalierHost", "EspalierCore", "EspalierTestSupport"],
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "EspalierSearchTests",
            dependencies: ["EspalierSearch", "EspalierHost", "EspalierCore", "EspalierTestSupport"]
        ),
    ],
    swiftLanguageModes: [.v5]
)
