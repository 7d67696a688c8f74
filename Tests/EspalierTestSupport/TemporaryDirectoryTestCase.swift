// A test case with a fresh temporary folder per test, removed afterwards.

import Foundation
import XCTest

open class TemporaryDirectoryTestCase: XCTestCase {
    /// The folder of the running test.
    public var dir: String!

    open override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "espalier-\(type(of: self))-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    open override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// `name` inside the test's folder.
    public func path(_ name: String) -> String { (dir as NSString).appendingPathComponent(name) }
}
