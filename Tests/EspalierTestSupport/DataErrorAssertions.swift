// The assertion every reader's tests share: the call throws EspalierError.data and its message
// mentions each of the given parts (the file, the problem, the fix).

import EspalierCore
import XCTest

public func assertDataError(_ body: @autoclosure () throws -> Any, contains parts: [String],
                            file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertThrowsError(try body(), file: file, line: line) { error in
        guard case EspalierError.data = error else { return XCTFail("not a data error: \(error)", file: file, line: line) }
        let text = "\(error)"
        for p in parts { XCTAssertTrue(text.contains(p), "'\(text)' does not mention '\(p)'", file: file, line: line) }
    }
}
