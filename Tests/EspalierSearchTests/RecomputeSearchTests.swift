// Recompute to fit (`--recompute`): DARTS (first and second order), GDAS, PC-DARTS, FiGS and
// Bonsai-Net searched with every cell recomputed, with each op or each node's edges recomputed,
// and with `auto` under a budget between the two, end bit-identical to the stored path — weights,
// α (and β, the inter-cell input logits), batch-norm statistics and genotype; the measured peak of
// a recomputing step is its prediction and stays under the budget; `auto` recomputes the fewest
// cells that fit; a budget below what the most recomputation needs is refused before anything
// runs, with that figure; an op with its own kernels that does not declare itself recomputable
// keeps its cell stored.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class RecomputeSearchTests: XCTestCase {
    static var registry: PluginRegistry { AllStrategiesBudgetTests.registry }
    static let methods = ["darts", "darts second order", "gdas", "pcdarts", "figs", "bonsai"]
    /// Methods whose gates sample: their prediction is the costliest draw, a bound.
    static let sampled: Set<String> = ["gdas", "bonsai"]

    func config(_ name: String) throws -> SearchConfig {
        try XCTUnwrap(AllStrategiesBudgetTests.strategies().first { $0.name == name }?.config, name)
    }

    /// Everything a search ends with that recomputation must not change.
    struct Outcome: Equatable {
        var weights: [String: [Float]]
        var arch: [String: [Float]]
        var buffers: [[Float]]
        var genotype: String
    }

    /// The whole tiny search of `c` (16 synthetic 8×8 images), under `budget` if given (the dataset included).
    func search(_ c: SearchConfig, budget: Int? = nil) throws -> (Outcome, MemoryAccountant) {
        try searchWith(Self.registry, c, budget: budget)
    }

    func with(_ c: SearchConfig, _ mode: RecomputeMode, cells: [Int]? = nil) -> SearchConfig {
        var c = c
        c.recompute = mode
        c.recomputeCells = cells
        return c
    }

    func testEveryLevel_EndsBitIdenticalToTheStoredPath() throws {
        for name in Self.methods {
            let c = try config(name)
            let (stored, _) = try search(c)
            for mode in [RecomputeMode.cells, .edges, .ops] {
                let (again, _) = try search(with(c, mode))
                XCTAssertEqual(again.genotype, stored.genotype, "\(name), --recompute \(mode.rawValue): genotype")
                XCTAssertEqual(again.arch, stored.arch, "\(name), --recompute \(mode.rawValue): α")
                XCTAssertEqual(again.buffers, stored.buffers, "\(name), --recompute \(mode.rawValue): batch-norm statistics")
                XCTAssertEqual(again.weights.count, stored.weights.count, "\(name), --recompute \(mode.rawValue)")
                for (k, v) in stored.weights where again.weights[k] != v {
                    XCTFail("\(name), --recompute \(mode.rawValue): weights \(k) differ")
                    break
                }
            }
        }
    }

    /// The first step's dry run is the measured step (the costliest draw bounds a sampled gate's —
    /// GDAS's, and Bonsai-Net's saw-wave input gate — whose real draw may run cheaper candidates),
    /// and recomputing cells lowers it.
    func testRecomputingStep_MeasuredPeakIsThePrediction() throws {
        for name in Self.methods {
            for mode in [RecomputeMode.none, .cells] {
                let c = with(try config(name), mode)
                let predicted = try SearchRun.predictStep(config: c, registry: Self.registry, imageShape: (1, 8, 8), classes: 3)
                let run = try syntheticSearchRun(c, registry: Self.registry)
                try run.firstStep()
                let measured = run.accountant.peakTotal - run.trainLoader.view.dataset.byteCount
                if Self.sampled.contains(name) {
                    XCTAssertLessThanOrEqual(measured, predicted.stepPeak, "\(name) \(mode.rawValue)")
                } else {
                    XCTAssertEqual(measured, predicted.stepPeak, "\(name) \(mode.rawValue)")
                }
            }
            let none = try SearchRun.predictStep(config: try config(name), registry: Self.registry, imageShape: (1, 8, 8), classes: 3)
            let cells = try SearchRun.predictStep(config: with(try config(name), .cells), registry: Self.registry, imageShape: (1, 8, 8), classes: 3)
            XCTAssertLessThan(cells.stepPeak, none.stepPeak, "\(name): recomputing cells needs less")
            XCTAssertGreaterThan(cells.flops, none.flops, "\(name): and pays a forward more")
        }
    }

    /// `auto` under a budget between the two peaks: the fewest cells that fit, the run stays
    /// under the budget and ends as the stored path does.
    func testAuto_UnderABudget_FitsAndEndsBitIdentical() throws {
        for name in Self.methods {
            let c = try config(name)
            let problem = RecomputePlanner.Problem(config: c, registry: Self.registry, imageShape: (1, 8, 8), classes: 3,
                                                   datasetBytes: try datasetBytes())
            let none = try problem.peakOf(with(c, .none)), all = try problem.peakOf(with(c, .cells))
            XCTAssertLessThan(all, none, name)
            let budget = all + (none - all) / 4
            let choice = try XCTUnwrap(try RecomputePlanner.chooseCells(problem, budget: budget), name)
            let cells = try XCTUnwrap(choice.cells)
            XCTAssertFalse(cells.isEmpty, "\(name): the search does not fit as it is")
            XCTAssertLessThanOrEqual(choice.predicted, budget, name)
            XCTAssertGreaterThan(choice.extraFlops, 0, name)
            // Fewest: one cell fewer (the greedy prefix) does not fit.
            if cells.count > 1 {
                let order = RecomputePlanner.greedyOrder(try RecomputePlanner.cellMeasures(problem).cells).map(\.cell)
                XCTAssertEqual(Set(order.prefix(cells.count)), Set(cells), "\(name): the greedy order's prefix")
                XCTAssertGreaterThan(try problem.peakOf(with(c, .auto, cells: Array(order.prefix(cells.count - 1)))), budget, name)
            }
            let (stored, _) = try search(c)
            let (auto, acc) = try search(with(c, .auto, cells: cells), budget: budget)
            XCTAssertEqual(auto, stored, "\(name): auto under \(budget) B")
            XCTAssertLessThanOrEqual(acc.lifetimePeak, budget, name)
            XCTAssertLessThanOrEqual(acc.lifetimePeak, choice.predicted, "\(name): the prediction bounds the run")
            // The same search does not fit that budget without recomputation (a sampled gate's real
            // draws may: its prediction bounds the costliest).
            if !Self.sampled.contains(name) {
                XCTAssertThrowsError(try search(c, budget: budget), "\(name) without recomputation") {
                    XCTAssertTrue("\($0)".contains("memory budget exceeded"), "\($0)")
                }
            }
        }
    }

    /// Below what the most recomputation needs: no choice, and the least figure is the smallest level's.
    func testAuto_BelowTheMostRecomputation_HasNoChoice() throws {
        let c = try config("darts")
        let problem = RecomputePlanner.Problem(config: c, registry: Self.registry, imageShape: (1, 8, 8), classes: 3, datasetBytes: try datasetBytes())
        let least = try RecomputePlanner.smallest(problem)
        XCTAssertNil(try RecomputePlanner.chooseCells(problem, budget: least.predicted - 1))
        let levels = try RecomputePlanner.levels(problem)
        XCTAssertEqual(levels.map(\.mode), [.none, .ops, .edges, .cells])
        XCTAssertEqual(least.predicted, levels.dropFirst().map(\.predicted).min())
        XCTAssertTrue(levels.dropFirst().allSatisfy { $0.predicted < levels[0].predicted && $0.extraFlops > 0 }, "\(levels.map(\.description))")
    }

    /// An op with its own kernels is recomputed only when it declares ES_OP_RECOMPUTABLE: the
    /// settings fixture's raw identity op (it logs each forward) keeps its cells stored — the
    /// prediction with `--recompute cells` is the stored one, and nothing is replayed — until it
    /// is built declaring it; then both cells recompute and the search ends bit-identical.
    func testRawOps_RecomputeOnlyWhenTheyDeclareIt() throws {
        var c = try config("darts")
        c.space.reductionCells = []   // the identity op takes stride 1 only
        c.space.ops = ["espalier.op.none/1", "espalier.op.sep_conv_3x3/1", "org.settings.op.stamp/1"]
        let source = PluginFixtures.repoRoot.appendingPathComponent("Tests/EspalierHostTests/Fixtures/settings_fixture.c").path
        for declares in [false, true] {
            let dir = try PluginFixtures.tempDir()
            _ = try PluginFixtures.build("libespalier-settings.so", in: dir, defines: declares ? ["FIX_STAMP_RECOMPUTABLE"] : [], source: source)
            let registry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(extraDirectories: [dir], environment: [:]))
            let stamp = try XCTUnwrap(registry.component(id: "org.settings.op.stamp/1"))
            XCTAssertEqual(stamp.isRecomputableOp, declares)
            XCTAssertEqual(stamp.form, declares ? "raw kernel, recomputable" : "raw kernel")
            let stored = try SearchRun.predictStep(config: c, registry: registry, imageShape: (1, 8, 8), classes: 3)
            let cells = try SearchRun.predictStep(config: with(c, .cells), registry: registry, imageShape: (1, 8, 8), classes: 3)
            if declares {
                XCTAssertEqual(Set(cells.segments.keys), ["cell0", "cell1"])
                XCTAssertLessThan(cells.stepPeak, stored.stepPeak)
                let (a, _) = try searchWith(registry, c), (b, _) = try searchWith(registry, with(c, .cells))
                XCTAssertEqual(b, a, "a recomputed raw op: bit-identical")
            } else {
                XCTAssertEqual(cells.segments, [:], "no cell holding it is recomputed")
                XCTAssertEqual(cells.stepPeak, stored.stepPeak, "counted as stored")
                let ops = try SearchRun.predictStep(config: with(c, .ops), registry: registry, imageShape: (1, 8, 8), classes: 3)
                XCTAssertFalse(ops.segments.keys.contains { $0.hasSuffix("/op2") }, "the op itself is never a segment")
                XCTAssertTrue(ops.segments.keys.contains { $0.hasSuffix("/op1") }, "its composed neighbours are")
            }
        }
    }

    func searchWith(_ registry: PluginRegistry, _ c: SearchConfig, budget: Int? = nil) throws -> (Outcome, MemoryAccountant) {
        let acc = MemoryAccountant()
        let run = try syntheticSearchRun(c, registry: registry, accountant: acc, allLoaded: false)
        acc.budget = budget
        try run.run()
        XCTAssertNil(acc.invariantViolation())
        let net = run.supernet
        return (Outcome(weights: Dictionary(net.weights.map { ($0.name, $0.value.array) }) { a, _ in a },
                        arch: Dictionary(net.archParameters.map { ($0.name, $0.value.array) }) { a, _ in a },
                        buffers: net.buffers.map(\.array), genotype: try run.derive().jsonText()), acc)
    }

    func datasetBytes() throws -> Int {
        let acc = MemoryAccountant()
        return try Dataset.synthetic(count: 16, channels: 1, height: 8, width: 8, classes: 3, seed: 1, accountant: acc).byteCount
    }
}

extension RecomputePlanner.Problem {
    /// The whole run's predicted peak of `c`, the dataset included (the planner's own measure).
    func peakOf(_ c: SearchConfig) throws -> Int {
        try SearchRun.predictRun(config: c, registry: registry, imageShape: imageShape, classes: classes, ranks: ranks).stepPeak + datasetBytes
    }
}
