// The budget planner: when a run's predicted peak exceeds the budget, each suggestion changes one
// knob, fits (its own dry-run prediction is within the budget) and is the largest that fits. A run
// under a budget stays under it and logs its memory timeline (with the resident set the budget does
// not cover); a budget below a step's peak is refused mid-step and leaves the accountant as it was.

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
        func need(_ x: SearchConfig) throws -> Int { try SearchRun.predictRun(config: x, registry: Self.registry, imageShape: shape, classes: 10).stepPeak }
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

/// Checks the accountant after every step.
final class PeakWatcher: SearchProgress {
    let accountant: MemoryAccountant, budget: Int
    var steps = 0, worst = 0
    init(_ a: MemoryAccountant, budget: Int) { accountant = a; self.budget = budget }
    func step(_ done: Int, of total: Int, loss: Double, accuracy: Double) { steps += 1; worst = max(worst, accountant.peakTotal) }
    func epochDone(_ log: SearchEpochLog) {}
}

extension BudgetTests {
    func testARunUnderABudget_StaysUnderItAtEveryStep_AndWritesItsMemoryTimeline() throws {
        var c = SearchConfig()
        c.space.channels = 4; c.space.cells = 2; c.space.nodes = 2; c.space.multiplier = 2; c.space.stemMultiplier = 1
        c.space.reductionCells = [1]
        c.space.ops = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"].map { "espalier.op.\($0)/1" }
        c.batchSize = 4; c.epochs = 2; c.seed = 3
        let acc = MemoryAccountant()
        let ds = try acc.withOwner("dataset") { try Dataset.synthetic(count: 32, channels: 1, height: 8, width: 8, classes: 3, seed: 1, accountant: acc) }
        let predicted = try SearchRun.predictStep(config: c, registry: Self.registry, imageShape: (1, 8, 8), classes: 3).stepPeak + ds.byteCount
        let budget = predicted + predicted / 20   // 5 % above the prediction
        acc.budget = budget
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("espalier-budget-\(UUID().uuidString)").path
        try SearchRun.prepareOutput(out, config: c)
        let run = try SearchRun(config: c, registry: Self.registry, context: HostContext(accountant: acc, seed: 3), train: ds.all, outDirectory: out)
        let watcher = PeakWatcher(acc, budget: budget)
        try run.run(progress: watcher)
        XCTAssertGreaterThan(watcher.steps, 4)
        XCTAssertNil(acc.invariantViolation())
        XCTAssertLessThanOrEqual(watcher.worst, budget, "accountant peak within the budget at every step")
        let csv = try String(contentsOfFile: out + "/memory.csv", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(csv.count, 3, "a header and one row per epoch: \(csv)")
        let row = csv[2].split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        XCTAssertEqual(row[0], "2"); XCTAssertEqual(row[1], "2")
        XCTAssertLessThanOrEqual(Int(row[2])!, budget)
        XCTAssertEqual(Int(row[4]), budget)
        let measured = Double(row[2])!, pred = Double(row[3])!
        XCTAssertEqual(measured, pred, accuracy: pred * 0.02, "the prediction is within 2 % of the measured epoch peak")
        // What the budget does not cover: the process's peak resident set in the epoch and the
        // part of it outside the accountant (peak RSS − accounted peak), in memory.csv and log.jsonl.
        XCTAssertEqual(csv[0], "epoch,cells,measured_peak_bytes,predicted_peak_bytes,budget_bytes,rss_peak_bytes,unaccounted_bytes")
        let rss = try XCTUnwrap(Int(row[5]), "the epoch's peak RSS: \(row)"), unaccounted = try XCTUnwrap(Int(row[6]))
        XCTAssertGreaterThan(rss, Int(row[2])!, "the process holds more than the accountant counts (code, libraries, pool)")
        XCTAssertEqual(unaccounted, rss - Int(row[2])!)
        let lines = try String(contentsOfFile: out + "/log.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 2)
        let last = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as? [String: Any])
        XCTAssertEqual((last["rss_peak_bytes"] as? NSNumber)?.intValue, rss)
        XCTAssertEqual((last["unaccounted_bytes"] as? NSNumber)?.intValue, unaccounted)
        let svg = try String(contentsOfFile: out + "/memory.svg", encoding: .utf8)
        XCTAssertTrue(svg.hasPrefix("<svg") && svg.contains("budget"))
        // A budget below the prediction is refused by the planner's caller before training; the
        // accountant itself refuses the allocation that would cross it, naming the owner.
        let tight = MemoryAccountant(); tight.budget = 1024
        XCTAssertThrowsError(try Dataset.synthetic(count: 32, channels: 1, height: 8, width: 8, classes: 3, seed: 1, accountant: tight)) {
            XCTAssertTrue($0 is MemoryBudgetExceeded, "\($0)")
        }
    }
}

extension BudgetTests {
    func testPredictPeak_LeavesOutMaskedOps_AndFollowsTheCurrentDepth() throws {
        var c = SearchConfig()
        c.space.channels = 4; c.space.cells = 2; c.space.nodes = 2; c.space.multiplier = 2; c.space.stemMultiplier = 1
        c.space.ops = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"].map { "espalier.op.\($0)/1" }
        c.space.reductionCells = [1]   // cell 0 normal, cell 1 reduction
        c.batchSize = 4; c.epochs = 1; c.seed = 3
        let acc = MemoryAccountant()
        let ds = try Dataset.synthetic(count: 16, channels: 1, height: 8, width: 8, classes: 3, seed: 1, accountant: acc)
        let run = try SearchRun(config: c, registry: Self.registry, context: HostContext(accountant: acc, seed: 3), train: ds.all, outDirectory: nil)
        let full = try run.predictPeak(change: "{}").stepPeak
        for e in 0..<c.space.edgesPerCell { try run.setOpState(reduction: false, edge: e, op: 3, .masked) }
        let masked = try run.predictPeak(change: "{}").stepPeak
        XCTAssertLessThan(masked, full, "the masked sep_conv on every normal edge is not predicted")
        try run.grow(cells: 3)
        XCTAssertGreaterThan(try run.predictPeak(change: "{}").stepPeak, masked, "three cells need more than two")
    }
}

extension BudgetTests {
    /// The budget is enforced: a step under a budget below its measured peak throws
    /// MemoryBudgetExceeded naming an owner, and everything the step had allocated is freed, so the
    /// accountant is back at what it held before the step (and its books balance).
    func testABudgetBelowTheStepPeak_Throws_AndTheAccountantReturnsToItsBaseline() throws {
        let c = tinySearchConfig()
        let acc = MemoryAccountant()
        let run = try syntheticSearchRun(c, registry: Self.registry, accountant: acc)
        try run.firstStep()   // gradients and momentum exist from here on
        let baseline = acc.currentTotal
        let b = try acc.withOwner("batch") { try run.trainLoader.nextCycling(accountant: acc) }
        let v = try acc.withOwner("batch") { try run.validLoader.nextCycling(accountant: acc) }
        let withBatches = acc.currentTotal
        acc.resetPeak()
        try run.step(train: b, valid: v)
        let stepPeak = acc.peakTotal
        XCTAssertEqual(acc.currentTotal, withBatches, "a step gives back what it allocated")
        XCTAssertNil(acc.invariantViolation())
        for below in [1, 4096, (stepPeak - withBatches) / 2] {
            acc.budget = stepPeak - below
            XCTAssertThrowsError(try run.step(train: b, valid: v), "a budget \(below) B below the step's peak") {
                // The accountant's own error, or the same refusal met inside a plugin's op.
                let text = "\($0)"
                XCTAssertTrue($0 is MemoryBudgetExceeded || ($0 as? PluginCallError)?.message.contains("memory budget exceeded") == true, text)
                XCTAssertTrue(text.contains("memory budget exceeded") && text.contains("the budget is \(formatBytes(stepPeak - below))"), text)
                if let e = $0 as? MemoryBudgetExceeded { XCTAssertFalse(e.owner.isEmpty, "the error names the owner") }
            }
            XCTAssertEqual(acc.currentTotal, withBatches, "after the refused step (\(below) B short) the accountant is back where it was")
            XCTAssertLessThanOrEqual(acc.peakTotal, stepPeak)
            XCTAssertNil(acc.invariantViolation())
        }
        acc.budget = stepPeak
        try run.step(train: b, valid: v)
        XCTAssertEqual(acc.currentTotal, withBatches, "at exactly its peak the step runs")
        XCTAssertGreaterThan(withBatches, baseline)
    }
}
