// Inputs the fuzz targets (Tests/FuzzTesting) crashed on, each fed to the parser here: it must
// throw, not crash — in `swift test -c release` too, where -Ounchecked drops Swift's own checks.

import EspalierHost
import Foundation
import XCTest

final class FuzzRegressionTests: XCTestCase {
    /// Tests/FuzzTesting/FailCases/<target>/<name>.
    func failCase(_ target: String, _ name: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("FuzzTesting/FailCases/\(target)/\(name)").path
    }

    /// 2 000 nested `[` overflowed the stack inside Yams (it composes nodes recursively); so did
    /// 2 000 nested `- `. Both are refused before Yams sees them, as YAML and as JSON.
    func testDeeplyNestedConfigIsRefused() throws {
        for name in ["nested-flow-2000.yaml", "nested-dashes.yaml"] {
            XCTAssertThrowsError(try SelectionRequest.load(file: failCase("FuzzSelection", name))) { error in
                XCTAssertTrue("\(error)".contains("nests deeper than"), "\(name): \(error)")
            }
        }
        let dir = NSTemporaryDirectory() + "espalier-fuzz-regression-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let json = dir + "/deep.json"
        try (String(repeating: "[", count: 300_000) + String(repeating: "]", count: 300_000)).write(toFile: json, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SelectionRequest.load(file: json))
        // A config nested a few levels still reads.
        let fine = dir + "/fine.yaml"
        try "set:\n  gate.tau: [1, [2, {a: 3}]]\nops:\n  - espalier.op.none/1\n".write(toFile: fine, atomically: true, encoding: .utf8)
        XCTAssertEqual(try SelectionRequest.load(file: fine).ops, ["espalier.op.none/1"])
    }
}
