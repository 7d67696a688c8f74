// swift-tools-version:5.4
// Fuzz targets for Espalier's parsers of user files (libFuzzer, -sanitize=fuzzer,address).
// Keep the tools version below 5.5: from 5.5 on SwiftPM renames an executable's `main` to
// `<Target>_main` (for testable executables) and links `main` to it, which fails here, since
// libFuzzer provides `main` and the targets are built with -parse-as-library. See README.md.

import PackageDescription

/// The targets, one folder each under Sources/ (and Corpus/ and FailCases/).
let fuzzTargets = ["FuzzIDX", "FuzzCIFAR", "FuzzNPZ", "FuzzSafeTensors", "FuzzSearchConfig", "FuzzSelection", "FuzzGenotype", "FuzzPluginDesc"]

let package = Package(
    name: "FuzzTesting",
    dependencies: [
        .package(name: "Espalier", path: "../.."),
        .package(name: "EspalierSDK", path: "../../SDK"),
    ],
    targets: [
        .target(name: "FuzzCommon", dependencies: []),
    ] + fuzzTargets.map { name in
        .executableTarget(
            name: name,
            dependencies: [
                "FuzzCommon",
                .product(name: "EspalierCore", package: "Espalier"),
                .product(name: "EspalierHost", package: "Espalier"),
                .product(name: "EspalierSearch", package: "Espalier"),
                .product(name: "CEspalierSDK", package: "EspalierSDK"),
            ]
        )
    }
)
