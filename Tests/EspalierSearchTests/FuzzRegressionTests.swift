// Inputs the fuzz target FuzzGenotype (Tests/FuzzTesting) crashed on, each fed to the genotype
// parser here: it must throw, not trap — in `swift test -c release` too, where -Ounchecked drops
// Swift's own checks. (The other parsers' cases are in EspalierCoreTests and EspalierHostTests.)

import EspalierSearch
import Foundation
import XCTest

final class FuzzRegressionTests: XCTestCase {
    /// Tests/FuzzTesting/FailCases/<target>/<name>.
    func failCase(_ target: String, _ name: String) throws -> Data {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("FuzzTesting/FailCases/\(target)/\(name)")
        return try Data(contentsOf: url)
    }

    /// Node sizes adding up past Int.max trapped in Genotype.problems (the sum overflowed).
    func testGenotypeNodeSizesThatOverflow() throws {
        let data = try failCase("FuzzGenotype", "node-sizes-overflow.json")
        XCTAssertThrowsError(try Genotype.decode(data, file: "g.json")) { error in
            XCTAssertTrue("\(error)".contains("adds up to more edges than can exist"), "\(error)")
        }
    }

    /// A node size of 10^15 made problems() allocate an array of that many node indices.
    func testGenotypeHugeNodeSize() throws {
        let data = try failCase("FuzzGenotype", "node-sizes-huge.json")
        XCTAssertThrowsError(try Genotype.decode(data, file: "g.json")) { error in
            XCTAssertTrue("\(error)".contains("adds up to 1000000000000000 edges"), "\(error)")
        }
        // The same in a per-cell gene.
        let perCell = #"{"normal": [["a", 0], ["b", 1]], "normal_concat": [2], "reduce": [["c", 1], ["d", 0]], "reduce_concat": [2], "#
            + #""per_cell": [{"reduction": false, "channels": 4, "edges": [["a", 0]], "node_sizes": [1000000000000000, 9223372036854775807], "#
            + #""concat": [2], "op_settings": [{}]}]}"#
        XCTAssertThrowsError(try Genotype.decode(Data(perCell.utf8), file: "g.json"))
    }
}
