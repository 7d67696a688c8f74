// Inputs the fuzz targets (Tests/FuzzTesting) crashed on, each fed to the parser here: it must
// throw, not trap — in `swift test -c release` too, where -Ounchecked drops Swift's own checks.

import EspalierCore
import Foundation
import XCTest

final class FuzzRegressionTests: XCTestCase {
    /// Tests/FuzzTesting/FailCases/<target>/<name>.
    func failCase(_ target: String, _ name: String) throws -> Data {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("FuzzTesting/FailCases/\(target)/\(name)")
        return try Data(contentsOf: url)
    }

    /// The CIFAR-10 batch parser must not read past its bytes when unread trailing bytes make the
    /// total look right.
    func testCIFARBatchShortBytesWithTrailing() {
        let rec = Dataset.cifar10RecordBytes
        XCTAssertThrowsError(try Dataset.cifar10Batch([UInt8](repeating: 0, count: rec - 5), trailingBytes: 5, records: 1, file: "b.bin"))
        XCTAssertThrowsError(try Dataset.cifar10Batch([UInt8](repeating: 0, count: rec), trailingBytes: Int.max, records: 1, file: "b.bin"))
        XCTAssertThrowsError(try Dataset.cifar10Batch([], records: Int.max, file: "b.bin"))
        let one = try? Dataset.cifar10Batch([7] + [UInt8](repeating: 9, count: rec - 1), records: 1, file: "b.bin")
        XCTAssertEqual(one?.labels, [7])
        XCTAssertEqual(one?.pixels.count, rec - 1)
    }
}
