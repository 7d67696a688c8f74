// Skips that CI turns into failures. A test whose prerequisite may be missing on a developer's
// machine (the Fashion-MNIST package, a tool on PATH) throws `Prerequisite.missing(…)`: an XCTSkip
// there, but a failure where everything must be present — under CI=true (what CI services set;
// .ci/run installs the data set and builds the binary) or ESPALIER_NO_SKIP=1 — so that a green CI
// run means every test ran. Nothing else may skip: a file the build itself makes (the `espalier`
// binary beside the tests) missing is a failure everywhere.

import EspalierCore
import Foundation
import XCTest

/// A prerequisite missing where skips are not allowed (CI): thrown instead of XCTSkip, so the test fails.
public struct PrerequisiteMissing: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public enum Prerequisite {
    /// The environment variable that forbids skips in `environment` ("CI=true", "ESPALIER_NO_SKIP=1"), or nil.
    /// CI counts when it is true, 1 or yes (any case); ESPALIER_NO_SKIP when it is set to anything but empty, 0, false or no.
    public static func skipsForbiddenBy(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        func on(_ name: String, default yes: Bool) -> Bool {
            guard let v = environment[name]?.trimmingCharacters(in: .whitespaces).lowercased(), !v.isEmpty else { return false }
            if ["true", "1", "yes"].contains(v) { return true }
            if ["false", "0", "no"].contains(v) { return false }
            return yes
        }
        if on("ESPALIER_NO_SKIP", default: true) { return "ESPALIER_NO_SKIP=\(environment["ESPALIER_NO_SKIP"]!)" }
        if on("CI", default: false) { return "CI=\(environment["CI"]!)" }
        return nil
    }

    /// What a test throws when `reason` (a missing data set or tool) keeps it from running:
    /// XCTSkip on a developer's machine, PrerequisiteMissing (a failure) where skips are forbidden.
    public static func missing(_ reason: String, environment: [String: String] = ProcessInfo.processInfo.environment) -> Error {
        if let variable = skipsForbiddenBy(environment) {
            return PrerequisiteMissing("\(reason) — a skip is a failure under \(variable); install what is missing (or, on a developer's machine, unset CI and ESPALIER_NO_SKIP to skip)")
        }
        return XCTSkip(reason)
    }

    /// Fashion-MNIST's `split`, or `missing` when the Debian package's folder is absent. A folder
    /// that is there but unreadable or damaged is an error (a failure), never a skip.
    public static func fashionMNIST(_ split: Dataset.Split, accountant: MemoryAccountant) throws -> Dataset {
        guard FileManager.default.fileExists(atPath: Dataset.fashionMNISTFolder) else {
            throw missing("Fashion-MNIST not installed: \(Dataset.fashionMNISTFolder) is absent (apt-get install dataset-fashion-mnist)")
        }
        return try Dataset.fashionMNIST(split: split, accountant: accountant)
    }

    /// The `espalier` executable built beside the tests (`swift test` builds it with them): its
    /// path, or an error saying it is missing — a failure, never a skip.
    public static func espalierBinary(in folder: String = PluginFixtures.builtPluginDir) throws -> String {
        let path = (folder as NSString).appendingPathComponent("espalier")
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw PrerequisiteMissing("\(path) is missing: `swift build` (which `swift test` runs first) builds the espalier executable beside the tests")
        }
        return path
    }
}

/// A check that failed where only a throw can report it (inside a helper that returns a value):
/// thrown, it fails the test with its description; never an XCTSkip.
public struct CheckFailed: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

extension Prerequisite {
    /// A Python that can import TensorBoard's event reader: $ESPALIER_TEST_PYTHON (.ci/run sets it
    /// to its virtual environment's python), else python3 on PATH; `missing` when neither can.
    public static func tensorBoardPython(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String {
        try python(importing: "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator", packages: "tensorboard",
                   purpose: "read TensorBoard event files with", environment: environment)
    }

    /// A Python with the onnx package, ONNX Runtime and safetensors (the same venv as above).
    public static func onnxPython(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String {
        try python(importing: "import onnx, onnxruntime, safetensors", packages: "onnx onnxruntime safetensors",
                   purpose: "check ONNX and safetensors models with", environment: environment)
    }

    /// $ESPALIER_TEST_PYTHON, else python3 on PATH, if it runs `statement`; `missing` otherwise.
    static func python(importing statement: String, packages: String, purpose: String, environment: [String: String]) throws -> String {
        let fix = "python3 -m venv .venv-ci && .venv-ci/bin/pip install \(packages), then ESPALIER_TEST_PYTHON=$PWD/.venv-ci/bin/python (.ci/run does this)"
        let python: String
        if let p = environment["ESPALIER_TEST_PYTHON"], !p.isEmpty {
            python = p
        } else if let p = (environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").map({ "\($0)/python3" })
                    .first(where: { FileManager.default.isExecutableFile(atPath: $0) }) {
            python = p
        } else {
            throw missing("no Python to \(purpose): \(fix)")
        }
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw missing("ESPALIER_TEST_PYTHON=\(python) is not an executable: \(fix)")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = ["-c", statement]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw missing("\(python) cannot run '\(statement)': \(fix)") }
        return python
    }
}
