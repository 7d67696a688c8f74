// GSparsity in real searches on tiny synthetic data (and a Fashion-MNIST subset when installed):
// no α (the supernet sums its ops, no architecture parameters trained, said in the run's notes);
// output scales on parameter-free ops inside their groups; ProxSGD owning the weight update (no
// SGD: an ungrouped weight moves by exactly −lr·ρ·g on the first step); the pruned supernet gives
// bit-identical outputs to the unpruned one when the pruned groups are zero (no discretisation
// gap), and its genotype keeps any number of ops per edge and builds a discrete network; the μ
// sweep doubling μ while the sparsity is below the target; a short end-to-end search.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class GSparsitySearchTests: TemporaryDirectoryTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))
    let strategyID = "espalier.strategy.gsparsity/1", proxID = "espalier.regularizer.proxsgd/1"

    /// 2 cells (normal, reduce), 2 nodes (5 edges), C=4, the 8 DARTS ops, GSparsity + ProxSGD.
    func tinyConfig(_ strategy: [String: String] = [:], prox: [String: String] = [:]) -> SearchConfig {
        var c = tinySearchConfig(strategy: strategyID, settings: strategy)
        c.regularizers = [proxID]
        c.regularizerSettings = [proxID: prox]
        return c
    }

    func makeRun(_ c: SearchConfig, images: Int = 16) throws -> SearchRun {
        try syntheticSearchRun(c, registry: Self.registry, images: images)
    }

    /// Logits in training mode (batch statistics) without gradients.
    func logits(_ run: SearchRun, _ images: Tensor) throws -> [Float] {
        let g = run.graph
        let y = try g.noGrad { try run.supernet.logits(g, g.constant(images)) }
        return (0..<y.value.count).map { y.value[$0] }
    }

    /// GSparsity's bn_recalibration convention (20 batches unless the run says otherwise), and what
    /// it does: evaluation first replaces every running statistic by the average over that many
    /// training batches of the current weights, so stale statistics (here: deliberately wrong ones)
    /// no longer decide the evaluation-mode accuracy.
    func testBatchNormRecalibration_ConventionAndFreshStatisticsBeforeEvaluation() throws {
        XCTAssertEqual(try makeRun(tinyConfig()).config.bnRecalibrationBatches, 20)
        var off = tinyConfig()
        off.bnRecalibrationBatches = 0
        XCTAssertEqual(try makeRun(off).config.bnRecalibrationBatches, 0, "the run's own setting wins over the strategy's")

        var c = tinyConfig()
        c.bnRecalibrationBatches = 2
        let run = try makeRun(c, images: 32)
        let buffers = run.supernet.buffers
        for b in buffers { b.fill(1e6) }                       // running means and variances far off
        _ = try run.evaluate(run.validLoader.view)
        XCTAssertTrue(buffers.allSatisfy { b in (0..<b.count).allSatisfy { abs(b[$0]) < 1e5 } },
                      "every running statistic was recomputed from the training batches")
    }

    /// Why GSparsity builds affine ops: a conv group followed by BN without γ/β computes the same
    /// function at any scale, so the data loss's gradient has no component along the group
    /// (⟨∂L/∂θ_g, θ_g⟩ = 0) and cannot resist the penalty's shrinking; with γ/β in the group it can.
    func testAffineOps_GiveConvGroupsAScaleTheLossDependsOn() throws {
        func radialCosine(affine: Bool) throws -> Double {
            let run = try makeRun(tinyConfig(["affine_ops": affine ? "true" : "false"]))
            XCTAssertEqual(run.supernet.space.affineOps, affine)
            let group = try XCTUnwrap(run.weightGroupParameters()["group/normal/edge0/sep_conv_3x3"])
            XCTAssertEqual(group.contains { $0.name.hasSuffix("bn1/weight") || $0.name.hasSuffix("bn1.weight") }, affine, group.map(\.name).description)
            run.train(weights: true, arch: false)
            for p in run.supernet.weights { p.grad?.fill(0) }
            let b = try run.trainLoader.nextCycling(accountant: run.accountant)
            try run.lossAndGradients(b.images, b.labels)
            var dot = 0.0, gg = 0.0, ww = 0.0
            for p in group {
                let g = try XCTUnwrap(p.grad)
                for i in 0..<p.count { dot += Double(g[i]) * Double(p.value[i]); gg += Double(g[i] * g[i]); ww += Double(p.value[i] * p.value[i]) }
            }
            XCTAssertGreaterThan(gg, 0)
            return abs(dot) / (gg * ww).squareRoot()
        }
        XCTAssertLessThan(try radialCosine(affine: false), 1e-3, "BN without γ/β: the gradient is orthogonal to the group")
        XCTAssertGreaterThan(try radialCosine(affine: true), 1e-2, "γ/β in the group: the loss pulls on its norm")
        XCTAssertTrue(try makeRun(tinyConfig()).supernet.space.affineOps, "GSparsity's default")
    }

    func testNoArch_SupernetSumsOps_NoArchParameters_ScalesJoinTheirGroups() throws {
        let run = try makeRun(tinyConfig())
        XCTAssertTrue(run.supernet.space.sumOps && run.supernet.space.scaleParameterFree)
        XCTAssertTrue(run.supernet.archParameters.isEmpty)
        XCTAssertTrue(run.notes.contains { $0.contains("no architecture parameters") && $0.contains("weight 1") }, "\(run.notes)")
        XCTAssertTrue(run.notes.contains { $0.contains("owns the weight update") }, "\(run.notes)")
        XCTAssertNotNil(run.updateOwner)
        // Mixing weights: 1 for every op but none.
        let w = try run.supernet.mixingWeights(reduction: false, accountant: run.accountant)
        XCTAssertEqual(w[0], [0, 1, 1, 1, 1, 1, 1, 1])
        // Scales: max/avg pool on every edge; skip_connect where it is an identity (not on the reduce cell's
        // four input edges, where it is a FactorizedReduce with parameters). Normal 5·3 + reduce (5·2 + 1) = 26.
        XCTAssertEqual(run.supernet.opScales.count, 26)
        XCTAssertTrue(run.supernet.opScales.allSatisfy { $0.value[0] == 1 })
        let norms = try run.groupNorms()
        XCTAssertEqual(norms["group/normal/edge0/max_pool_3x3"] ?? -1, 1, accuracy: 1e-6, "one scale of 1 per cell of the type")
        XCTAssertGreaterThan(norms["group/reduce/edge0/skip_connect"] ?? 0, 1, "FactorizedReduce: conv weights, no scale")
        XCTAssertNil(norms["group/normal/edge0/none"])
        XCTAssertEqual(norms.count, 2 * 5 * 7)
        // The ops really are summed: a scale of 0.5 on every pool and skip changes the output, and the run
        // still trains (weights-only steps; the DARTS strategy on the same space would need α).
        let batch = try run.trainLoader.nextCycling(accountant: run.accountant)
        let before = try logits(run, batch.images)
        for s in run.supernet.opScales { s.value[0] = 0.5 }
        XCTAssertNotEqual(try logits(run, batch.images), before)
        try run.step(train: batch, valid: nil)
        XCTAssertTrue(run.supernet.opScales.allSatisfy { $0.value[0] >= 0 && $0.value[0] <= 1 })
    }

    func testProxSGDOwnsTheUpdate_NoSGDStep_UngroupedWeightMovesByLrRhoGradient() throws {
        let run = try makeRun(tinyConfig(prox: ["lr": "0.1", "momentum": "0.8"]))
        let batch = try run.trainLoader.nextCycling(accountant: run.accountant)
        let cls = run.supernet.weights.last!   // the classifier's bias: ungrouped
        let old = (0..<cls.count).map { cls.value[$0] }
        try run.step(train: batch, valid: nil)
        let g = (0..<cls.count).map { cls.grad![$0] }   // the (clipped) gradient the step used
        XCTAssertTrue(g.contains { $0 != 0 })
        for i in 0..<cls.count { XCTAssertEqual(cls.value[i], old[i] - 0.1 * 0.8 * g[i], accuracy: 1e-6) }
    }

    func testPrunedNetwork_IdenticalOutputsWhenPrunedGroupsAreZero_GenotypeKeepsAnyNumberPerEdge() throws {
        var c = tinyConfig()
        c.epochs = 1
        let run = try makeRun(c)
        let names = run.supernet.space.opNames
        // Zero three groups by hand: a convolution (parameters), a pool and an identity skip (scales).
        let zeroed: [(reduction: Bool, edge: Int, op: String)] = [(false, 0, "sep_conv_3x3"), (false, 1, "max_pool_3x3"), (true, 2, "skip_connect"),
                                                                   (false, 3, "dil_conv_5x5")]
        let groups = try run.weightGroupParameters()
        for z in zeroed {
            let key = "group/\(z.reduction ? "reduce" : "normal")/edge\(z.edge)/\(z.op)"
            let params = try XCTUnwrap(groups[key], key)
            for p in params { p.value.fill(0) }
        }
        let batch = try run.trainLoader.nextCycling(accountant: run.accountant)
        let unpruned = try logits(run, batch.images)
        // The strategy's last epoch end prunes every group at or below the threshold.
        _ = try run.derive()   // publishes the group norms
        var s = RunState()
        s.epoch = 0; s.totalEpochs = 1; s.totalSteps = run.trainLoader.batchesPerEpoch
        _ = try run.strategy.epochEnd(s, metrics: EpochMetrics())
        for z in zeroed {
            XCTAssertEqual(run.supernet.opState(reduction: z.reduction, edge: z.edge, op: names.firstIndex(of: z.op)!), .removed, "\(z)")
        }
        var removed = 0
        for r in [false, true] { for e in 0..<5 { for o in names.indices where run.supernet.opState(reduction: r, edge: e, op: o) == .removed { removed += 1 } } }
        XCTAssertEqual(removed, zeroed.count, "only the zero groups are pruned")
        let pruned = try logits(run, batch.images)
        XCTAssertEqual(pruned, unpruned, "no discretisation gap: bit-identical outputs")

        // The genotype keeps every surviving op: 7 per edge, 6 where one was pruned.
        let gt = try run.derive()
        try gt.validate()
        XCTAssertEqual(gt.normalNodeSizes, [2 * 7 - 2, 3 * 7 - 1])
        XCTAssertEqual(gt.reduceNodeSizes, [2 * 7, 3 * 7 - 1])
        XCTAssertFalse(gt.normal.prefix(12).contains(Genotype.Edge("sep_conv_3x3", 0)), "normal edge 0 = node 0 from input 0")
        XCTAssertTrue(gt.normal.prefix(12).contains(Genotype.Edge("sep_conv_5x5", 0)))
        XCTAssertFalse(gt.reduce.suffix(20).contains(Genotype.Edge("skip_connect", 0)), "reduce edge 2 = node 1 from input 0")
        XCTAssertTrue(gt.reduce.suffix(20).contains(Genotype.Edge("skip_connect", 2)))
        // JSON round trip and a discrete network from it (several ops per edge, summed per node).
        let back = try Genotype.decode(Data(gt.jsonText().utf8), file: "gsparsity.json")
        XCTAssertEqual(back, gt)
        var d = NetworkDescription(genotype: gt)
        d.channels = 4; d.cells = 2; d.imageSize = 8; d.classes = 3
        let acc = MemoryAccountant()
        let net = try DiscreteNetwork(d, registry: Self.registry, context: HostContext(accountant: acc, seed: 1), seed: 1)
        let g = Graph(accountant: acc)
        let x = try g.constant(randomTensor([2, 1, 8, 8], acc, seed: 3))
        XCTAssertEqual(try net.logits(g, x).shape, [2, 3])
    }

    func testGenotype_NodeSizes_EmptyNodeIsZero_AndChecked() throws {
        var gt = Genotype(normal: [.init("sep_conv_3x3", 0), .init("skip_connect", 1), .init("max_pool_3x3", 1)], normalConcat: [2, 3],
                          reduce: [.init("max_pool_3x3", 0)], reduceConcat: [2, 3])
        gt.normalNodeSizes = [3, 0]
        gt.reduceNodeSizes = [1, 0]
        try gt.validate()
        XCTAssertEqual(gt.nodes(.normal), 2)
        XCTAssertEqual(gt.nodeIndices(.normal), [0, 0, 0])
        var d = NetworkDescription(genotype: gt)
        d.channels = 4; d.cells = 3; d.imageSize = 8; d.classes = 3
        let acc = MemoryAccountant()
        let net = try DiscreteNetwork(d, registry: Self.registry, context: HostContext(accountant: acc, seed: 1), seed: 1)
        let g = Graph(accountant: acc)
        XCTAssertEqual(try net.logits(g, try g.constant(randomTensor([2, 1, 8, 8], acc, seed: 3))).shape, [2, 3])
        gt.normalNodeSizes = [2, 0]
        XCTAssertTrue(gt.problems().contains { $0.contains("normal_node_sizes") }, "\(gt.problems())")
        gt.normalNodeSizes = [0, 3]   // node 0 may read 0..<2 only: fine; node 1 reads ≤ 2: fine
        XCTAssertEqual(gt.problems(), [])
        // Without node sizes the DARTS rule still holds (two per node).
        let darts = Genotype(normal: [.init("sep_conv_3x3", 0), .init("skip_connect", 1), .init("max_pool_3x3", 1)], normalConcat: [2],
                             reduce: [.init("max_pool_3x3", 0), .init("max_pool_3x3", 1)], reduceConcat: [2])
        XCTAssertTrue(darts.problems().contains { $0.contains("even") })
    }

    func testMuSweep_DoublesMuWhileSparsityIsBelowTarget() throws {
        // lr 1e-3 over a few steps never brings a group to 1e-6: sparsity stays 0 < 0.5, so μ doubles after
        // every epoch but the last (1 → 2 → 4).
        var c = tinyConfig(["target_sparsity": "0.5", "mu_start": "1", "prune": "false"])
        c.epochs = 3
        let run = try makeRun(c)
        try run.run()
        XCTAssertEqual(try run.services.value("regularizer.mu"), 4)
    }

    func testShortSearch_PrunesZeroGroups_GenotypeMatchesOpStates() throws {
        // A large step (lr 1) and μ = 3 zero the weakest groups exactly within two epochs.
        var c = tinyConfig(prox: ["lr": "1", "mu": "3"])
        c.epochs = 2
        let dir = path("gsparsity")
        try SearchRun.prepareOutput(dir, config: c)
        XCTAssertEqual(Self.registry.failures.map(\.description), [])
        let ctx = HostContext(accountant: MemoryAccountant(), seed: c.seed)
        let ds = try ctx.accountant.withOwner("dataset") {
            try Dataset.synthetic(count: 32, channels: 1, height: 8, width: 8, classes: 3, seed: 1, accountant: ctx.accountant)
        }
        let run = try SearchRun(config: c, registry: Self.registry, context: ctx, train: ds.all, outDirectory: dir)
        try run.run()
        XCTAssertEqual(run.logs.count, 2)
        let names = run.supernet.space.opNames
        var removed = 0, kept = 0
        for r in [false, true] {
            for e in 0..<5 {
                for o in names.indices where names[o] != "none" {
                    if run.supernet.opState(reduction: r, edge: e, op: o) == .removed { removed += 1 } else { kept += 1 }
                }
            }
        }
        XCTAssertGreaterThan(removed, 0, "μ = 3 with lr 1 zeroes some groups")
        XCTAssertGreaterThan(kept, 0)
        let gt = try Genotype.load(path: dir + "/genotype.json")
        XCTAssertEqual(gt.normal.count + gt.reduce.count, kept)
        XCTAssertNotNil(run.pruning)
        if let p = run.pruning { XCTAssertTrue(p.before.isFinite && p.after.isFinite) }
    }

    func testFashionMNISTSubset_GSparsitySearch() throws {
        let acc = MemoryAccountant()
        let train = try fashionMNISTTrainOrSkip(acc)
        var c = SearchConfig.quick
        c.space.channels = 4
        c.space.cells = 3
        c.strategy = strategyID
        c.regularizers = [proxID]
        c.regularizerSettings = [proxID: ["lr": "0.05", "mu": "0.5"]]
        c.batchSize = 16
        c.epochs = 1
        c.trainImages = 128
        c.evalImages = 64
        let context = HostContext(accountant: acc, seed: c.seed)
        let run = try SearchRun(config: c, registry: Self.registry, context: context, train: train.all.prefix(128), outDirectory: nil)
        try run.run()
        XCTAssertEqual(run.logs.count, 1)
        XCTAssertTrue(run.logs[0].trainLoss.isFinite)
        try run.derive().validate()
    }
}
