// `espalier kernel-bench --separable`: the fused separable unit's rows at every DARTS unit geometry.

import EspalierCore
import EspalierTestSupport
import Foundation
import XCTest

final class KernelBenchCLITests: XCTestCase {
    func testSeparable_TimesTheFusedUnitAtEveryDartsGeometry_WithItsFlops() throws {
        _ = try Prerequisite.espalierBinary()
        let cwd = FileManager.default.temporaryDirectory.path
        let (status, out) = try EspalierProcess.run(["kernel-bench", "--separable", "--batch", "2", "--size", "9", "--channels", "4", "--json"],
                                                   cwd: cwd)
        XCTAssertEqual(status, 0, out)
        let json = String(out[try XCTUnwrap(out.firstIndex(of: "["), out)...])
        let rows = try JSONDecoder().decode([KernelBenchRow].self, from: Data(json.utf8))
        var expected: [String] = []
        for stride in ["", " s2"] {
            for kd in ["3x3", "5x5", "3x3 d2", "5x5 d2"] { expected += ["separable \(kd)\(stride) forward", "separable \(kd)\(stride) backward"] }
        }
        XCTAssertEqual(rows.map(\.name), expected)
        for r in rows {
            // 9×9 → 9×9 at stride 1, → 5×5 at stride 2; the depthwise taps and the 4×4 pointwise per output.
            let howo = r.name.contains(" s2") ? 25 : 81, taps = r.name.contains("5x5") ? 25 : 9
            let forward = 2 * 2 * 4 * howo * (taps + 4)
            XCTAssertEqual(r.flops, r.name.hasSuffix("backward") ? 2 * forward : forward, r.name)
            XCTAssertGreaterThan(r.bestSeconds, 0, r.name)
            XCTAssertGreaterThanOrEqual(r.medianSeconds, r.bestSeconds, r.name)
        }
        let (both, bothOut) = try EspalierProcess.run(["kernel-bench", "--separable", "--pointwise"], cwd: cwd)
        XCTAssertNotEqual(both, 0)
        XCTAssertTrue(bothOut.contains("--pointwise and --separable"), bothOut)
    }
}
