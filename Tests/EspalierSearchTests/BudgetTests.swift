// The budget planner: when a run's predicted peak exceeds the budget, each suggestion changes one
// knob, fits (its own dry-run prediction is within the budget) and is the largest that fits.

import EspalierCore
import EspalierHost
import EspalierSearch
import XCTest

final class BudgetTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    func testSuggestions_FitTheBudget_AndAreTheLargestThatFit() throws {
        var c = SearchConfig()
        c.space.channels = 8; c.space.cells = 4; c.space.nodes = 2; c.space.multiplier = 2
        c.batchSize = 16
        let shape = (c: 1, h: 16, w: 16)
        func need(_ x: SearchConfig) throws -> Int { try SearchRun.predictStep(config: x, registry: Self.registry, imageShape: shape, classes: 10).stepPeak }
        let full = try need(c)
        let budget = full * 6 / 10
        let fits = BudgetPlanner.suggestions(for: c, registry: Self.registry, imageShape: shape, classes: 10, datasetBytes: 0, budget: budget)
        XCTAssertFalse(fits.isEmpty)
        for s in fits { XCTAssertLessThanOrEqual(s.predicted, budget, s.change) }
        let batch = try XCTUnwrap(fits.first { $0.change.hasPrefix("--batch-size") })
        let b = Int(batch.change.split(separator: " ")[1])!
        var bigger = c; bigger.batchSize = b + 1
        XCTAssertGreaterThan(try need(bigger), budget, "one more image per batch does not fit")
        var same = c; same.batchSize = b
        XCTAssertEqual(try need(same), batch.predicted)
        XCTAssertTrue(fits.contains { $0.change.hasPrefix("--partial-channels") }, "\(fits)")
        // A budget below what even the smallest variant needs: nothing to suggest.
        XCTAssertTrue(BudgetPlanner.suggestions(for: c, registry: Self.registry, imageShape: shape, classes: 10, datasetBytes: 0, budget: 1024).isEmpty)
    }
}
