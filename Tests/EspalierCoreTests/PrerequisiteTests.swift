// The test suite's rule on skips (EspalierTestSupport/Prerequisites.swift): a missing data set or
// tool skips on a developer's machine and fails under CI=true or ESPALIER_NO_SKIP=1; the build's
// own output (the espalier binary) missing always fails; and no test skips any other way (no
// XCTSkip written outside the helper).

import EspalierTestSupport
import Foundation
import XCTest

final class PrerequisiteTests: XCTestCase {
    func testMissing_SkipsOnADevelopersMachine_FailsUnderCI() {
        for env in [[:], ["CI": "false"], ["CI": "0"], ["ESPALIER_NO_SKIP": "0"], ["ESPALIER_NO_SKIP": ""], ["CI": ""]] {
            XCTAssertNil(Prerequisite.skipsForbiddenBy(env), "\(env)")
            XCTAssertTrue(Prerequisite.missing("the data set", environment: env) is XCTSkip, "\(env): a skip")
        }
        for (env, variable) in [(["CI": "true"], "CI=true"), (["CI": "TRUE"], "CI=TRUE"), (["CI": "1"], "CI=1"),
                                (["ESPALIER_NO_SKIP": "1"], "ESPALIER_NO_SKIP=1"), (["ESPALIER_NO_SKIP": "yes"], "ESPALIER_NO_SKIP=yes"),
                                (["CI": "false", "ESPALIER_NO_SKIP": "1"], "ESPALIER_NO_SKIP=1")] {
            XCTAssertEqual(Prerequisite.skipsForbiddenBy(env), variable, "\(env)")
            let error = Prerequisite.missing("Fashion-MNIST not installed", environment: env)
            XCTAssertFalse(error is XCTSkip, "\(env): a failure, not a skip")
            XCTAssertTrue(error is PrerequisiteMissing, "\(env): \(error)")
            XCTAssertTrue("\(error)".contains("Fashion-MNIST not installed") && "\(error)".contains(variable), "\(error)")
        }
    }

    func testEspalierBinary_MissingIsAFailureEvenOffCI() throws {
        let empty = NSTemporaryDirectory() + "espalier-no-binary-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: empty) }
        XCTAssertThrowsError(try Prerequisite.espalierBinary(in: empty)) { error in
            XCTAssertFalse(error is XCTSkip)
            XCTAssertTrue("\(error)".contains(empty + "/espalier") && "\(error)".contains("swift build"), "\(error)")
        }
        // Beside this test bundle, where `swift build` puts it, it is there.
        XCTAssertNoThrow(try Prerequisite.espalierBinary())
    }

    func testNoTestSkipsExceptThroughTheHelper() throws {
        let tests = PluginFixtures.repoRoot.appendingPathComponent("Tests").path
        let helper = "EspalierTestSupport/Prerequisites.swift"
        let needle = "XCT" + "Skip("   // split, so that this file does not match itself
        var offenders: [String] = []
        let files = try XCTUnwrap(FileManager.default.enumerator(atPath: tests)).compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") }
            .filter { !$0.split(separator: "/").contains { $0.hasPrefix(".") } }   // build folders (.build) hold other packages' sources
        XCTAssertGreaterThan(files.count, 30, "the test sources are found at \(tests)")
        for file in files where file != helper {
            let text = try String(contentsOfFile: tests + "/" + file, encoding: .utf8)
            for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where line.contains(needle) {
                offenders.append("Tests/\(file):\(n + 1): \(line.trimmingCharacters(in: .whitespaces))")
            }
        }
        XCTAssertEqual(offenders, [], "skip with `throw Prerequisite.missing(…)` (a failure under CI=true), never with XCTSkip directly")
    }
}
