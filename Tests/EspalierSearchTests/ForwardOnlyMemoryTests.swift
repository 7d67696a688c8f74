// A forward without tape (zero-shot scoring, batch-norm recalibration, evaluation) keeps a value
// only while something will still read it: the stem's output is gone once cell 1, the last cell
// that reads it, has run; cell i−2's output once cell i's pre0 has read it (handed over); a cell's
// preprocessed inputs before its concat. Checked at the accountant's global peak of such forwards.

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
        let atPeak = table.filter { $0.atGlobalPeak[.activations] > 0 }.map { "\($0.owner) \($0.atGlobalPeak[.activations])" }
        // The peak is in cell 2's nodes (so the test checks outputs where no cell needs them) …
        XCTAssertGreaterThan(activationsAtPeak("cell2"), 0, "the forward's peak lies in the reduction cell 2: \(atPeak)")
        XCTAssertGreaterThan(activationsAtPeak("pre0"), 0, "after cell 2's pre0 ran: \(atPeak)")
        // … where cell 1's output is alive (cell 3's s0), and neither cell 0's (read by cell 2's
        // pre0 alone) nor the stem's (read by cells 0 and 1) is.
        XCTAssertGreaterThan(activationsAtPeak("cell1"), 0, "\(atPeak)")
        XCTAssertEqual(activationsAtPeak("cell0"), 0, "cell 0's output is freed once cell 2's pre0 has read it: \(atPeak)")
        XCTAssertEqual(activationsAtPeak("stem"), 0, "the stem's output is freed after cell 1: \(atPeak)")
    }

    /// One normal cell of skip connections (identity: no op keeps anything), 2 nodes, both in the
    /// output. In units of one (N, C, H, W) tensor, the stem's output S stays (it is s0 and s1);
    /// nodes 0 and 1 and the concat (2) make 5 units at the concat. Were pre0's and pre1's outputs
    /// kept to the concat, it would be 7.
    func testForwardOnly_FreesACellsPreprocessedInputsBeforeItsConcat() throws {
        var c = tinySearchConfig(ops: ["espalier.op.skip_connect/1"])
        c.space.cells = 1
        c.space.reductionCells = []
        let run = try syntheticSearchRun(c, registry: Self.registry, images: 8, size: 8)
        let batch = try run.trainLoader.nextCycling(accountant: run.accountant)
        run.train(weights: false, arch: false)
        let acc = run.accountant
        acc.resetPeak()
        let before = acc.current[.activations]
        try run.graph.noGrad { _ = try run.lossAndGradients(batch.images, batch.labels, backward: false) }
        let unit = c.batchSize * c.space.channels * 8 * 8 * MemoryLayout<Float>.size
        let peak = acc.peakByCategory[.activations] - before
        XCTAssertGreaterThanOrEqual(peak, 5 * unit, "nodes 0 and 1, their concat and the stem's output")
        XCTAssertLessThan(peak, 6 * unit, "pre0's and pre1's outputs are freed before the concat: \(peak) B, a unit \(unit) B")
    }
}
