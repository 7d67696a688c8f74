// The host side of the DARTS family (issue 6): PC-DARTS partial channels and edge normalisation,
// regularizers in the trainer (architecture, gate-weight and proximal targets), candidate costs
// from the accountant, grow (P-DARTS stages) with checkpoint-resume, skip dropout, and the
// refusals of combinations that cannot work.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class FamilyHostTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))
    static var fixtureRegistry: PluginRegistry = {
        let dir = try! PluginFixtures.tempDir()
        try! PluginFixtures.build("libespalier-fixture.so", in: dir)
        return PluginLoader(context: HostContext()).load(PluginSearchPath.standard(extraDirectories: [dir], environment: [:]))
    }()

    func tinyConfig() -> SearchConfig {
        var c = SearchConfig()
        c.space.channels = 8
        c.space.cells = 2
        c.space.nodes = 2
        c.space.multiplier = 2
        c.space.stemMultiplier = 1
        c.space.reductionCells = [1]
        c.space.ops = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"].map { "espalier.op.\($0)/1" }
        c.batchSize = 4
        c.epochs = 1
        c.seed = 5
        return c
    }

    func makeRun(_ c: SearchConfig, registry: PluginRegistry = FamilyHostTests.registry, accountant: MemoryAccountant = MemoryAccountant(),
                 out: String? = nil) throws -> SearchRun {
        try syntheticSearchRun(c, registry: registry, accountant: accountant, out: out, allLoaded: false)
    }

    func batches(_ run: SearchRun) throws -> (Batch, Batch) {
        (try run.trainLoader.nextCycling(accountant: run.accountant), try run.validLoader.nextCycling(accountant: run.accountant))
    }

    // MARK: PC-DARTS

    func testPCDarts_OpsSeeCOverKChannels_AndTheWeightCountIsTheReferences() throws {
        var c = tinyConfig()
        c.strategy = "espalier.strategy.pcdarts/1"
        c.strategySettings = ["partial_channels": "2"]
        let run = try makeRun(c)
        XCTAssertEqual(run.config.space.partialChannels, 2, "the strategy's parameter reached the space")
        XCTAssertTrue(run.config.space.edgeNormalization)
        XCTAssertNotNil(run.supernet.betaNormal)
        // Every op on a normal edge is built for C/K = 4 channels: sep_conv's pointwise weights are (4, 4, 1, 1).
        let pw = run.supernet.weights.filter { $0.name.hasPrefix("model/cell0/edge0/sep_conv_3x3") && $0.value.shape.count == 4 && $0.value.shape[2] == 1 }
        XCTAssertFalse(pw.isEmpty, "\(run.supernet.weights.map(\.name).prefix(12))")
        for p in pw { XCTAssertEqual(Array(p.value.shape.prefix(2)), [4, 4], p.name) }
        // One step runs (the bypass, concat and shuffle line up, also on reduction edges).
        let (t, v) = try batches(run)
        try run.step(train: t, valid: v)
        XCTAssertNotEqual(run.supernet.betaNormal!.value.array, try makeRun(c).supernet.betaNormal!.value.array, "β is trained")

        // The reference PC-DARTS supernet at the bench's small shape has 66,154 weights (../shared/bench).
        var s = SearchConfig()
        s.space.channels = 8; s.space.cells = 5; s.batchSize = 2
        s.strategy = "espalier.strategy.pcdarts/1"
        let dry = MemoryAccountant(mode: .dryRun)
        let ds = try Dataset.synthetic(count: 4, channels: 1, height: 28, width: 28, classes: 10, seed: 1, accountant: dry)
        let small = try SearchRun(config: s, registry: Self.registry, context: HostContext(accountant: dry, seed: 1), train: ds.all, outDirectory: nil)
        XCTAssertEqual(small.supernet.weightCount, 66_154)
    }

    /// (Which channels the ops see is shown by the op weight shapes above; where each channel of
    /// an edge goes in the node, channel by channel on the supernet's own path, by PCDartsChannelTests.)
    func testPCDarts_AStepRunsWithEveryNormalOpMasked() throws {
        var c = tinyConfig()
        c.strategy = "espalier.strategy.pcdarts/1"
        c.strategySettings = ["partial_channels": "4", "edge_normalization": "false"]
        c.space.ops = ["espalier.op.none/1", "espalier.op.skip_connect/1"]
        let run = try makeRun(c)
        for e in 0..<c.space.edgesPerCell { try run.supernet.setOpState(reduction: false, edge: e, op: 1, .masked) }
        let (t, v) = try batches(run)
        try run.step(train: t, valid: v)   // runs with every op of the normal cell masked
    }

    func testEdgeNormalization_GenotypeRanksEdgesByOpWeightTimesBeta() throws {
        var c = tinyConfig()
        c.strategy = "espalier.strategy.pcdarts/1"
        c.strategySettings = ["partial_channels": "1"]
        let run = try makeRun(c)
        // Node 1 has edges 2, 3, 4. α: sep_conv wins everywhere with the same weight, so the op
        // weights cannot separate the edges; β decides: edges 2 and 4 win.
        let k = c.space.ops.count
        for e in 0..<c.space.edgesPerCell { for o in 0..<k { run.supernet.alphaNormal.value[e * k + o] = o == 3 ? 2 : 0 } }
        for (e, b) in [0, 0, 1.5, -1, 0.5].enumerated() { run.supernet.betaNormal!.value[e] = Float(b) }
        let g = try run.supernet.genotype(accountant: run.accountant)
        XCTAssertEqual(g.normal.suffix(2).map(\.input).sorted(), [0, 2], "node 1 keeps the edges from s0 (β 1.5) and node 0 (β 0.5)")
    }

    // MARK: Regularizers

    func testArchRegularizer_AddsItsGradientToAlpha_AndProximalRunsAfterTheWeightStep() throws {
        var c = tinyConfig()
        let plain = try makeRun(c, registry: Self.fixtureRegistry)
        c.regularizers = ["org.fixture.regularizer.l2/1"]
        c.regularizerSettings = ["org.fixture.regularizer.l2/1": ["lambda": "0.25"]]
        let reg = try makeRun(c, registry: Self.fixtureRegistry)
        for run in [plain, reg] { for (i, _) in run.supernet.alphaNormal.value.array.enumerated() { run.supernet.alphaNormal.value[i] = Float(i % 5) * 0.1 } }
        let (t, v) = try batches(plain)
        _ = try batches(reg)
        try plain.archGradientFirstOrder(valid: v)
        try reg.archGradientFirstOrder(valid: v)
        let alpha = reg.supernet.alphaNormal.value.array
        for (i, (a, b)) in zip(plain.supernet.alphaNormal.grad!.array, reg.supernet.alphaNormal.grad!.array).enumerated() {
            XCTAssertEqual(b - a, 0.25 * alpha[i], accuracy: 1e-5, "∂(λ/2·α²)/∂α = λα added to the data gradient")
        }
        // Proximal: after the same weight step, each op's weights are those of the plain run / (1 + λ·lr).
        _ = try plain.weightStep(t)
        _ = try reg.weightStep(t)
        let lr = reg.weightOptimizer.learningRate
        let name = "model/cell0/edge0/sep_conv_3x3"
        let a = plain.supernet.weights.filter { $0.name.hasPrefix(name) }, b = reg.supernet.weights.filter { $0.name.hasPrefix(name) }
        XCTAssertFalse(a.isEmpty, "\(plain.supernet.weights.map(\.name).prefix(12))")
        for (pa, pb) in zip(a, b) {
            for i in stride(from: 0, to: pa.count, by: max(1, pa.count / 7)) {
                XCTAssertEqual(pb.value[i], pa.value[i] / (1 + 0.25 * lr), accuracy: 1e-5, pa.name)
            }
        }
        let stemA = plain.supernet.weights[0].value.array, stemB = reg.supernet.weights[0].value.array
        XCTAssertEqual(stemA, stemB, "the stem is in no weight group")
    }

    func testCandidateCosts_ComeFromTheAccountant() throws {
        let run = try makeRun(tinyConfig())
        let (t, v) = try batches(run)
        try run.step(train: t, valid: v)
        let costs = try run.candidateCosts()
        let k = 4
        for e in 0..<run.supernet.space.edgesPerCell {
            XCTAssertEqual(costs.normal.memory[e * k + 0], 0, "none costs nothing")
            XCTAssertGreaterThan(costs.normal.memory[e * k + 3], costs.normal.memory[e * k + 1], "sep_conv keeps more than max-pool")
            XCTAssertGreaterThan(costs.normal.flops[e * k + 3], costs.normal.flops[e * k + 1])
            XCTAssertEqual(costs.normal.flops[e * k + 2], 0, "identity skip is free")
        }
        // sep_conv_3x3 on a stride-1 edge: parameters (2 depthwise 8·9 + 2 pointwise 8·8 = 272 floats)
        // × 3 (value, gradient, momentum) × 4 bytes, plus its kept activations (> 0).
        XCTAssertGreaterThan(costs.normal.memory[2 * k + 3], Float(272 * 12))
        try run.setOpState(reduction: false, edge: 2, op: 3, .masked)
        XCTAssertEqual(try run.candidateCosts().normal.memory[2 * k + 3], 0, "a masked candidate costs nothing")
    }

    func testRefusals_NameWhatIsMissing() throws {
        var c = tinyConfig()
        c.regularizers = ["espalier.regularizer.nope/1"]
        XCTAssertThrowsError(try makeRun(c, registry: Self.fixtureRegistry)) { XCTAssertTrue("\($0)".contains("nope"), "\($0)") }
        c = tinyConfig()
        c.methods = ["tau.schedule": "no-such-schedule"]
        XCTAssertThrowsError(try makeRun(c)) { XCTAssertTrue("\($0)".contains("no-such-schedule"), "\($0)") }
        c = tinyConfig()
        c.space.partialChannels = 3
        XCTAssertThrowsError(try makeRun(c)) { XCTAssertTrue("\($0)".contains("divide"), "\($0)") }
    }

    func testScheduleByDynamicMethod_SetsTheGateTemperatureEachStep() throws {
        var c = tinyConfig()
        c.methods = ["tau.schedule": "linear-decay"]
        let run = try makeRun(c)
        let (t, v) = try batches(run)
        try run.step(train: t, valid: v)
        XCTAssertEqual(try run.services.value("gate.tau"), 10, accuracy: 1e-9, "step 0 of linear-decay")
        let fresh = try makeRun(c)
        try fresh.run()
        let total = Double(fresh.config.epochs * fresh.trainLoader.batchesPerEpoch)
        XCTAssertEqual(total, 2)
        XCTAssertEqual(try fresh.services.value("gate.tau"), 10 - 9.9 / total, accuracy: 1e-9, "set before the last step (step 1 of 2)")
    }

    // MARK: Grow and skip dropout (P-DARTS)

    func testGrow_RebuildsAtTheNewDepth_KeepingAlphaAndOpStates_AndResumes() throws {
        var c = tinyConfig()
        c.space.reductionCells = nil
        c.space.cells = 3
        let out = try PluginFixtures.tempDir()
        try SearchRun.prepareOutput(out, config: c)
        let acc = MemoryAccountant()
        let run = try makeRun(c, accountant: acc, out: out)
        try run.setOpState(reduction: false, edge: 1, op: 3, .removed)
        run.supernet.alphaNormal.value[5] = 0.75
        let before = run.supernet.weightCount
        try run.grow(cells: 5)
        XCTAssertEqual(run.supernet.space.cells, 5)
        XCTAssertGreaterThan(run.supernet.weightCount, before)
        XCTAssertEqual(run.supernet.alphaNormal.value[5], 0.75)
        XCTAssertEqual(run.supernet.opState(reduction: false, edge: 1, op: 3), .removed)
        // 5 cells reduce at 1 and 3: the normal cells 0, 2, 4 have no sep_conv_3x3 on edge 1; the reduction cells do.
        let names = run.supernet.weights.map(\.name)
        for cell in [0, 2, 4] { XCTAssertFalse(names.contains { $0.hasPrefix("model/cell\(cell)/edge1/sep_conv_3x3") }, "removed op rebuilt in cell \(cell)") }
        XCTAssertTrue(names.contains { $0.hasPrefix("model/cell3/edge1/sep_conv_3x3") })
        XCTAssertEqual(run.weightOptimizer.parameters.count, run.supernet.weights.count, "the optimiser holds the new weights")
        try run.services.setValue("skip_dropout", 0.4)
        let (t, v) = try batches(run)
        try run.step(train: t, valid: v)
        try run.checkpoint()
        // A run restored from the checkpoint has the grown depth.
        let again = try makeRun(c, accountant: acc, out: out)
        try again.restore(checkpoint: out + "/checkpoint.safetensors")
        XCTAssertEqual(again.supernet.space.cells, 5)
        XCTAssertEqual(again.supernet.weights.map(\.value.array), run.supernet.weights.map(\.value.array))
        XCTAssertEqual(try again.services.value("skip_dropout"), 0.4, accuracy: 1e-6)
        XCTAssertThrowsError(try run.services.setValue("skip_dropout", 1.5))
    }
}

extension FamilyHostTests {
    /// Methods that make sense together run together: PC-DARTS + β-DARTS, GDAS + the expected
    /// memory cost, MergeNAS + β-DARTS, DropNAS with partial channels.
    func testCompositions_RunTogether() throws {
        let combos: [(String, (inout SearchConfig) -> Void)] = [
            ("pcdarts + beta-decay", { c in
                c.strategy = "espalier.strategy.pcdarts/1"; c.strategySettings = ["partial_channels": "2"]
                c.regularizers = ["espalier.regularizer.beta-decay/1"]
                c.regularizerSettings = ["espalier.regularizer.beta-decay/1": ["lambda": "50", "ramp_epochs": "1"]]
            }),
            ("gdas + expected memory cost", { c in
                c.strategy = "espalier.strategy.gdas/1"; c.gate = "espalier.gate.gdas/1"
                c.regularizers = ["espalier.regularizer.expected-cost/1"]
            }),
            ("darts + merged convs + beta-decay", { c in
                c.space.ops = SearchSpaceDescription.dartsOps
                c.space.mergedOps = ["espalier.op.mergenas_conv/1"]
                c.regularizers = ["espalier.regularizer.beta-decay/1"]
            }),
            ("dropnas + partial channels", { c in
                c.strategy = "espalier.strategy.dropnas/1"; c.space.partialChannels = 2
            }),
        ]
        for (name, set) in combos {
            var c = tinyConfig()
            set(&c)
            let run = try makeRun(c)
            let before = run.supernet.alphaNormal.value.array
            try run.run()
            XCTAssertNotEqual(run.supernet.alphaNormal.value.array, before, "\(name): α trained")
            XCTAssertFalse(try run.derive().normal.isEmpty, name)
        }
    }

    func testIncompatibleCombinations_AreRefusedWithTheReason() throws {
        var c = tinyConfig()
        c.strategy = "espalier.strategy.gdas/1"   // needs a sampled, hard gate
        XCTAssertThrowsError(try makeRun(c)) { XCTAssertTrue("\($0)".contains("sampled gate"), "\($0)") }
        c = tinyConfig()
        c.strategy = "espalier.strategy.proxyless/1"
        c.gate = "espalier.gate.gdas/1"           // runs, but the strategy's rescaling needs the binary gate's pairs
        let run = try makeRun(c)
        XCTAssertThrowsError(try run.run()) { XCTAssertTrue("\($0)".contains("binary"), "\($0)") }
        c = tinyConfig()
        c.space.mergedOps = ["espalier.op.sep_conv_3x3/1"]   // no build_mixed
        XCTAssertThrowsError(try makeRun(c)) { XCTAssertTrue("\($0)".contains("build_mixed"), "\($0)") }
    }
}

extension FamilyHostTests {
    /// A short search with every method of the family on a Fashion-MNIST subset (the methods
    /// whose own test files run on synthetic data), each deriving a genotype of DARTS ops.
    func testEachMethod_ShortSearchOnAFashionMNISTSubset() throws {
        let acc = MemoryAccountant()
        let train = try fashionMNISTTrainOrSkip(acc)
        let methods: [(String, (inout SearchConfig) -> Void)] = [
            ("pcdarts", { $0.strategy = "espalier.strategy.pcdarts/1"; $0.strategySettings = ["partial_channels": "2"] }),
            ("gdas", { $0.strategy = "espalier.strategy.gdas/1"; $0.gate = "espalier.gate.gdas/1" }),
            ("proxyless", { $0.strategy = "espalier.strategy.proxyless/1"; $0.gate = "espalier.gate.binary/1"
                            $0.regularizers = ["espalier.regularizer.expected-cost/1"] }),
            ("dropnas", { $0.strategy = "espalier.strategy.dropnas/1" }),
            ("parsec", { $0.strategy = "espalier.strategy.parsec/1" }),
            ("random", { $0.strategy = "espalier.strategy.random/1"; $0.strategySettings = ["samples_per_epoch": "2", "child_steps": "3"] }),
        ]
        for (name, set) in methods {
            var c = SearchConfig.quick
            c.space.channels = 4; c.space.cells = 3
            c.batchSize = 16; c.epochs = 1; c.trainImages = 96; c.evalImages = 32
            set(&c)
            let run = try SearchRun(config: c, registry: Self.registry, context: HostContext(accountant: acc, seed: c.seed),
                                    train: train.all.prefix(96), outDirectory: nil)
            try run.run()
            let g = try run.derive()
            XCTAssertEqual(g.normal.count, 2 * c.space.nodes, name)
            XCTAssertTrue(g.normal.allSatisfy { c.space.opNames.contains($0.op) && $0.op != "none" }, "\(name): \(g.normal)")
            XCTAssertEqual(run.logs.count, 1, name)
            if name == "random" {
                XCTAssertEqual(run.logs[0].validAccuracy, 0, "random search never trains the supernet, so it is not evaluated")
            } else {
                XCTAssertGreaterThan(run.logs[0].validAccuracy, 0, "\(name): the trained supernet is evaluated")
            }
        }
    }
}
