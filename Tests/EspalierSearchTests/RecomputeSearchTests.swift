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

    func with(_ c: SearchConfig, _ mode: RecomputeMode, segments: [String]? = nil) -> SearchConfig {
        var c = c
        c.recompute = mode
        c.recomputeSegments = segments
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

    /// Every other built-in strategy (MergeNAS's merged ops, P-DARTS's skip-connect dropout and
    /// stages, DropNAS's drops, β-DARTS, PARSEC, random search, ProxylessNAS, GSparsity, the
    /// zero-shot ones) ends bit-identical with its cells or its nodes' edges recomputed.
    func testEveryOtherStrategy_RecomputingCellsOrEdges_EndsBitIdentical() throws {
        for (name, c) in AllStrategiesBudgetTests.strategies() where !Self.methods.contains(name) {
            let (stored, _) = try search(c)
            for mode in [RecomputeMode.cells, .edges] {
                let (again, _) = try search(with(c, mode))
                XCTAssertEqual(again, stored, "\(name), --recompute \(mode.rawValue)")
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

    /// `auto` under a budget between the stored peak and the least recomputation's: the fewest
    /// segments (the greedy order's prefix) that fit, the run stays under the budget and ends as
    /// the stored path does.
    func testAuto_UnderABudget_FitsAndEndsBitIdentical() throws {
        for name in Self.methods {
            let c = try config(name)
            let problem = RecomputePlanner.Problem(config: c, registry: Self.registry, imageShape: (1, 8, 8), classes: 3,
                                                   datasetBytes: try datasetBytes())
            let none = try problem.peak(with(c, .none)), least = min(try problem.peak(with(c, .cells)), try problem.peak(with(c, .edges)))
            XCTAssertLessThan(least, none, name)
            let budget = least + (none - least) / 4
            let choice = try XCTUnwrap(try RecomputePlanner.choose(problem, budget: budget), name)
            let segments = try XCTUnwrap(choice.segments)
            XCTAssertFalse(segments.isEmpty, "\(name): the search does not fit as it is")
            XCTAssertLessThanOrEqual(choice.predicted, budget, name)
            XCTAssertGreaterThan(choice.extraFlops, 0, name)
            // Fewest: the greedy order's prefix, one segment fewer does not fit.
            let level: RecomputeMode = segments[0].contains("/") ? .edges : .cells
            let order = RecomputePlanner.greedyOrder(try RecomputePlanner.measures(problem, level: level))
            XCTAssertEqual(Set(order.prefix(segments.count)), Set(segments), "\(name): the greedy order's prefix")
            XCTAssertGreaterThan(try problem.peak(with(c, .auto, segments: Array(order.prefix(segments.count - 1)))), budget, name)
            // Its first step's dry run is the measured step (a sampled gate's: a bound).
            let chosen = with(c, .auto, segments: segments)
            let first = try syntheticSearchRun(chosen, registry: Self.registry)
            try first.firstStep()
            let measured = first.accountant.peakTotal - first.trainLoader.view.dataset.byteCount
            let predicted = try SearchRun.predictStep(config: chosen, registry: Self.registry, imageShape: (1, 8, 8), classes: 3).stepPeak
            if Self.sampled.contains(name) { XCTAssertLessThanOrEqual(measured, predicted, name) } else { XCTAssertEqual(measured, predicted, name) }
            let (stored, _) = try search(c)
            let (auto, acc) = try search(chosen, budget: budget)
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
        XCTAssertNil(try RecomputePlanner.choose(problem, budget: least.predicted - 1))
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

    /// `train --recompute`: the found network trained three steps with drop-path on (randomness
    /// in the forward) ends bit-identical at every level, and the dry-run step is the measured one.
    func testTrainingTheFoundNetwork_EveryLevelBitIdentical_PredictionExact() throws {
        let run = try syntheticSearchRun(try config("darts"), registry: Self.registry)
        try run.run()
        let genotype = try run.derive()
        var d = NetworkDescription(genotype: genotype)
        d.channels = 4; d.cells = 3; d.classes = 3; d.imageSize = 8; d.dropPath = 0.4
        var tc = TrainConfig()
        tc.batchSize = 4
        func train(_ plan: RecomputePlan) throws -> (params: [[Float]], buffers: [[Float]], peak: Int, predicted: Int) {
            let acc = MemoryAccountant()
            let context = HostContext(accountant: acc, seed: 1)
            let net = try acc.withOwner("model") { try DiscreteNetwork(d, registry: Self.registry, context: context, seed: 1) }
            net.recompute = plan
            net.epochStarted(1, of: 2)
            let trainer = try ClassifierTrainer(model: net, accountant: acc, config: tc)
            trainer.graph.externalRandomness = (get: { [weak context] in context?.rng }, set: { [weak context] in context?.rng = $0 })
            let images = try Tensor(shape: [4, 1, 8, 8], category: .data, accountant: acc)
            var r = RNG(seed: 3)
            images.fillUniform(bound: 1, rng: &r)
            for _ in 0..<3 { _ = try trainer.trainStep(images: images, labels: [0, 1, 2, 1]) }
            let predicted = try ClassifierTrainer.predictStep(config: tc, inputShape: [4, 1, 8, 8]) { f in
                let n = try DiscreteNetwork(d, registry: Self.registry, context: HostContext(accountant: f.accountant, seed: 1), seed: 1)
                n.recompute = plan
                n.epochStarted(1, of: 2)
                return n
            }
            return (net.parameters.map(\.value.array), net.buffers.map(\.array), acc.peakTotal - acc.peakByCategory[.data],
                    predicted.accountant.peakTotal - predicted.accountant.peakByCategory[.data])
        }
        let stored = try train(.none)
        for level in [RecomputeLevel.cells, .edges, .ops] {
            let again = try train(RecomputePlan(level: level))
            XCTAssertEqual(again.params, stored.params, "train --recompute \(level.rawValue): weights")
            XCTAssertEqual(again.buffers, stored.buffers, "train --recompute \(level.rawValue): batch-norm statistics")
            XCTAssertLessThan(again.predicted, stored.predicted, "\(level.rawValue) needs less")
        }
        let cells = try train(RecomputePlan(level: .cells))
        XCTAssertEqual(cells.peak, cells.predicted, "the dry-run step is the measured one")
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

/// The command line: `memory` shows each level's peak and price; a search refused at a budget
/// lists `--recompute auto` first; under that budget `--recompute auto` runs the search unchanged;
/// below the most recomputation it is refused with the least figure; bad values are named.
final class RecomputeCLITests: XCTestCase {
    let shape = ["--dataset", "synthetic", "--channels", "4", "--cells", "3", "--batch-size", "8", "--train-images", "32", "--eval-images", "16", "--epochs", "1"]

    func espalier(_ args: [String]) throws -> (status: Int32, output: String) {
        try EspalierProcess.run(args + (args.first == "search" ? ["--no-supervise"] : []), cwd: try PluginFixtures.tempDir("recompute"))
    }

    func testBudgetRefusal_SuggestsRecomputeFirst_AndAutoRunsUnderIt() throws {
        let (s0, o0) = try espalier(["search", "--dry-run"] + shape)
        XCTAssertEqual(s0, 0, o0)
        let all = try XCTUnwrap(o0.components(separatedBy: " bytes in all)").first?.split(separator: "(").last.flatMap { Int($0) }, o0)
        let (s1, o1) = try espalier(["memory"] + shape)
        XCTAssertEqual(s1, 0, o1)
        for level in ["ops", "edges", "cells"] {
            XCTAssertTrue(o1.split(separator: "\n").contains { $0.hasPrefix("  \(level) ") && $0.contains("% compute") }, "\(level): \(o1)")
        }
        // 85 % of the stored peak: refused, recomputation first among what fits.
        let budget = String(all * 85 / 100)
        let (s2, o2) = try espalier(["search", "--dry-run", "--memory-budget", budget] + shape)
        XCTAssertNotEqual(s2, 0)
        XCTAssertTrue(o2.contains("Each of these fits: --recompute auto ("), o2)
        let (s3, o3) = try espalier(["search", "--recompute", "auto", "--memory-budget", budget, "--out", "run"] + shape)
        XCTAssertEqual(s3, 0, o3)
        XCTAssertTrue(o3.contains("recompute auto: ") && o3.contains("recomputed in backward"), o3)
        XCTAssertTrue(o3.contains("genotype: "), o3)
        // Below the most recomputation: refused before anything runs, with the least figure.
        let (s4, o4) = try espalier(["search", "--dry-run", "--recompute", "auto", "--memory-budget", String(all / 20)] + shape)
        XCTAssertNotEqual(s4, 0)
        XCTAssertTrue(o4.contains("is below what this search needs even with the most recomputation: --recompute "), o4)
        XCTAssertTrue(o4.contains("Raise --memory-budget to at least"), o4)
        let (s5, o5) = try espalier(["search", "--dry-run", "--recompute", "some"] + shape)
        XCTAssertNotEqual(s5, 0)
        XCTAssertTrue(o5.contains("--recompute 'some' is not one of none, ops, edges, cells, auto"), o5)
    }
}
