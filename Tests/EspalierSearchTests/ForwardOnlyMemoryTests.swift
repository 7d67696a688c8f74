// A forward without tape (zero-shot scoring, batch-norm recalibration, evaluation) keeps a value
// only while something will still read it: the stem's output is gone once cell 1, the last cell
// that reads it, has run. Checked at the accountant's global peak of such a forward, which lies in
// the first reduction cell (cell 2: its inputs at full resolution, doubled channels).

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class ForwardOnlyMemoryTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    func testForwardOnly_FreesTheStemOutputAfterTheLastCellThatReadsIt() throws {
        var c = tinySearchConfig()
        c.space.cells = 4
        c.space.reductionCells = [2]
        let run = try syntheticSearchRun(c, registry: Self.registry, images: 8, size: 8)
        let batch = try run.trainLoader.nextCycling(accountant: run.accountant)
        run.train(weights: false, arch: false)
        let acc = run.accountant
        acc.resetPeak()
        try run.graph.noGrad { _ = try run.lossAndGradients(batch.images, batch.labels, backward: false) }
        let table = acc.ownerTable()
        func activationsAtPeak(_ component: String) -> Int {
            table.filter { $0.owner.split(separator: "/").contains { $0 == component } }.reduce(0) { $0 + $1.atGlobalPeak[.activations] }
        }
        // The peak is in cell 2 (so the test checks the stem's output where no cell needs it) …
        XCTAssertGreaterThan(activationsAtPeak("cell2"), 0, "the forward's peak lies in the reduction cell 2")
        // … where cells 0 and 1's outputs are alive (its inputs) and the stem's output is not.
        XCTAssertGreaterThan(activationsAtPeak("cell0"), 0)
        XCTAssertGreaterThan(activationsAtPeak("cell1"), 0)
        XCTAssertEqual(activationsAtPeak("stem"), 0, "the stem's output is freed after cell 1: \(table.prefix(8).map { "\($0.owner) \($0.atGlobalPeak[.activations])" })")
    }
}
