// ETENAS and Zero-One-Shot in real searches on tiny synthetic data: forward_logits (deterministic
// for a seed, another seed gives other logits, the run's own weights and training play no part,
// a masked op does not change the other ops' initial weights, the memory is counted under owner
// "zeroshot" and freed, the caller's view shape is checked); Algorithm 1 stopping at the fraction
// computed by hand on a 4-edge, 3-op space and keeping at least one op per edge; the random mask;
// masked ops allocating nothing and getting no α gradient in a Zero-One-Shot step; the dry-run
// prediction of a masked search below DARTS's; ETENAS end to end; Zero-One-Shot with PC-DARTS
// partial channels and β-DARTS's beta-decay on a Fashion-MNIST subset.

import CEspalierSDK
import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class ZeroShotSearchTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))
    let zos = "espalier.strategy.zero-one-shot/1"
    let etenas = "espalier.strategy.etenas/1"
    let names = SearchSpaceDescription.dartsOps.map(Component.shortName)

    /// The 8 DARTS ops on 2 cells (normal, reduce), 2 nodes (5 edges), C=4, 8×8 images, batch 4.
    func tinyConfig(strategy: String, _ settings: [String: String] = [:]) -> SearchConfig {
        tinySearchConfig(strategy: strategy, settings: settings)
    }

    /// 1 node (2 edges per cell type, 4 in all), 3 ops: Π|E_i| = 3⁴ = 81.
    func handConfig(_ settings: [String: String]) -> SearchConfig {
        var c = tinyConfig(strategy: zos, ["batches": "1"].merging(settings) { $1 })
        c.space.nodes = 1
        c.space.multiplier = 1
        c.space.ops = ["max_pool_3x3", "skip_connect", "sep_conv_3x3"].map { "espalier.op.\($0)/1" }
        return c
    }

    func makeRun(_ c: SearchConfig, images: Int = 16) throws -> SearchRun {
        try syntheticSearchRun(c, registry: Self.registry, images: images)
    }

    func states(_ run: SearchRun, reduction: Bool) -> [[OpState]] {
        (0..<run.supernet.space.edgesPerCell).map { e in (0..<run.supernet.space.ops.count).map { run.supernet.opState(reduction: reduction, edge: e, op: $0) } }
    }

    /// Active ops per edge, normal edges then reduce edges.
    func activeCounts(_ run: SearchRun) -> [Int] {
        [false, true].flatMap { states(run, reduction: $0).map { $0.filter { $0 == .active }.count } }
    }

    func stepState(_ run: SearchRun) -> RunState {
        var s = RunState()
        s.step = run.globalStep; s.epoch = run.epoch; s.totalEpochs = run.config.epochs
        s.totalSteps = run.config.epochs * run.trainLoader.batchesPerEpoch
        return s
    }

    // MARK: forward_logits

    func testForwardLogits_SameSeedSameLogits_OtherSeedOthers_RunWeightsPlayNoPart() throws {
        let run = try makeRun(tinyConfig(strategy: "espalier.strategy.darts/1"))
        let a = try run.zeroShotLogits(batches: 2, initSeed: 11)
        XCTAssertEqual(a.count, 2 * 4 * 3)
        XCTAssertTrue(a.allSatisfy(\.isFinite))
        XCTAssertEqual(try run.zeroShotLogits(batches: 2, initSeed: 11), a, "same seed, same images: same logits")
        XCTAssertNotEqual(try run.zeroShotLogits(batches: 2, initSeed: 12), a, "another seed re-initialises differently")
        // Training the run's own weights changes nothing: the weights are re-initialised.
        let b = try run.trainLoader.nextCycling(accountant: run.accountant)
        _ = try run.weightStep(b)
        _ = try run.weightStep(b)
        XCTAssertEqual(try run.zeroShotLogits(batches: 2, initSeed: 11), a)
        // A masked op changes the network; restoring it gives the same logits back.
        try run.setOpState(reduction: false, edge: 0, op: 4, .masked)
        XCTAssertNotEqual(try run.zeroShotLogits(batches: 2, initSeed: 11), a)
        try run.setOpState(reduction: false, edge: 0, op: 4, .active)
        XCTAssertEqual(try run.zeroShotLogits(batches: 2, initSeed: 11), a)
        // Memory: counted under "zeroshot" while it runs, all freed after.
        let rows = run.accountant.ownerTable().filter { $0.owner.hasPrefix("zeroshot") }
        XCTAssertTrue(rows.contains { $0.peak > 0 }, "the scoring network is counted under zeroshot")
        XCTAssertEqual(rows.reduce(0) { $0 + $1.current.total }, 0, "and freed")
    }

    func testForwardLogits_UnmaskedWeightsDoNotDependOnMasks() throws {
        let run = try makeRun(tinyConfig(strategy: "espalier.strategy.darts/1"))
        let full = try run.zeroShotSupernet(initSeed: 3).weights.map(\.value.array)
        try run.setOpState(reduction: false, edge: 1, op: 5, .masked)
        try run.setOpState(reduction: true, edge: 2, op: 7, .masked)
        XCTAssertEqual(try run.zeroShotSupernet(initSeed: 3).weights.map(\.value.array), full, "masking changes no weight")
        try run.setOpState(reduction: false, edge: 0, op: 6, .removed)
        let pruned = try run.zeroShotSupernet(initSeed: 3).weights.map(\.value.array)
        XCTAssertLessThan(pruned.count, full.count, "a removed op's parameters are gone")
        // Every remaining weight is the full network's, in order (a subsequence).
        var i = 0
        for w in pruned {
            while i < full.count && full[i] != w { i += 1 }
            XCTAssertLessThan(i, full.count, "weight \(w.count) floats not in the unmasked network")
            i += 1
        }
    }

    func testForwardLogits_ChecksTheCallersViewShape() throws {
        let run = try makeRun(tinyConfig(strategy: "espalier.strategy.darts/1"))
        var buffer = [Float](repeating: 0, count: 100)
        try buffer.withUnsafeMutableBufferPointer { p in
            var v = esView(shape: [8, 2], data: p.baseAddress)
            XCTAssertThrowsError(try run.forwardLogits(batches: 2, initSeed: 1, view: &v)) { err in
                XCTAssertTrue("\(err)".contains("expected [8, 3]"), "\(err)")
            }
            v = esView(shape: [8, 3], data: p.baseAddress)
            try run.forwardLogits(batches: 2, initSeed: 1, view: &v)
        }
        XCTAssertEqual(Array(buffer.prefix(24)), try run.zeroShotLogits(batches: 2, initSeed: 1))
        XCTAssertThrowsError(try run.zeroShotLogits(batches: 3, initSeed: 1)) { err in
            XCTAssertTrue("\(err)".contains("holds 8"), "\(err)")   // 16 images: 8 in the weight-training half
        }
    }

    // MARK: Algorithm 1 and the random mask

    func testAlgorithm1_StopsAtTheRightFraction_KeepsAnOpPerEdge() throws {
        // Round granularity (the paper's): one op from each of the 4 edges, then check.
        // ξ = 0.5: 2⁴/3⁴ = 16/81 ≤ 0.5 after one round.
        var run = try makeRun(handConfig(["xi": "0.5"]))
        try run.strategy.epochBegin(stepState(run))
        XCTAssertEqual(activeCounts(run), [2, 2, 2, 2])
        // ξ = 0.1: 16/81 > 0.1, so a second round: 1/81.
        run = try makeRun(handConfig(["xi": "0.1"]))
        try run.strategy.epochBegin(stepState(run))
        XCTAssertEqual(activeCounts(run), [1, 1, 1, 1])
        // ξ = 0.01 < 1/81 cannot be reached: pruning stops at one op per edge.
        run = try makeRun(handConfig(["xi": "0.01"]))
        try run.strategy.epochBegin(stepState(run))
        XCTAssertEqual(activeCounts(run), [1, 1, 1, 1])
        // Op granularity: 54/81 = 0.67 > 0.5 after one removal, 36/81 = 0.44 after two.
        run = try makeRun(handConfig(["xi": "0.5", "granularity": "op"]))
        try run.strategy.epochBegin(stepState(run))
        XCTAssertEqual(activeCounts(run).sorted(), [2, 2, 3, 3])
        // ξ = 0.7: one removal (54/81 = 0.667).
        run = try makeRun(handConfig(["xi": "0.7", "granularity": "op"]))
        try run.strategy.epochBegin(stepState(run))
        XCTAssertEqual(activeCounts(run).reduce(0, +), 11)
        // Pruned ops are removed (default prune_state): their parameters are freed.
        XCTAssertEqual([false, true].flatMap { states(run, reduction: $0).joined() }.filter { $0 == .removed }.count, 1)
        // Pruning happens once: a later epoch or step leaves the space as it is.
        try run.strategy.epochBegin(stepState(run))
        XCTAssertEqual(activeCounts(run).reduce(0, +), 11)
    }

    func testAlgorithm1_RemovesTheLowestImportanceOp() throws {
        // ξ = 0.7 at op granularity removes one op: the one of least importance
        // s_j = (r(N) − r(N∖j)) / r(N) over all 12, recomputed here on a twin run with the seed the
        // strategy draws first from the host's RNG and the NNGP score through zeroshot.score.
        let c = handConfig(["xi": "0.7", "granularity": "op", "prune_state": "masked"])
        let run = try makeRun(c)
        try run.strategy.epochBegin(stepState(run))
        let removed = [false, true].flatMap { red in states(run, reduction: red).enumerated().flatMap { e, s in
            s.enumerated().filter { $0.element == .masked }.map { [red ? 1 : 0, e, $0.offset] } } }
        XCTAssertEqual(removed.count, 1)

        let twin = try makeRun(c)
        let seed = twin.context.rng.next()
        let method = try XCTUnwrap(Self.registry.methods(slot: "zeroshot.score").first)
        func r() throws -> Double {
            var logits = try twin.zeroShotLogits(batches: 1, initSeed: seed)
            let v = try logits.withUnsafeMutableBytes { try method.call([.pointer($0.baseAddress), .int(4), .int(3)]) }
            guard case .double(let d) = v else { throw CheckFailed("zeroshot.score returned \(v), not a double") }
            return d
        }
        let base = try r()
        XCTAssertGreaterThan(base, 0)
        var importance: [([Int], Double)] = []
        for red in [false, true] {
            for e in 0..<2 {
                for o in 0..<3 {
                    try twin.setOpState(reduction: red, edge: e, op: o, .masked)
                    importance.append(([red ? 1 : 0, e, o], (base - (try r())) / base))
                    try twin.setOpState(reduction: red, edge: e, op: o, .active)
                }
            }
        }
        let lowest = importance.min { $0.1 < $1.1 }!
        XCTAssertEqual(removed.first, lowest.0, "importances \(importance)")
    }

    func testRandomMask_KeepsAtLeastOneOpPerEdge() throws {
        for (seed, xi) in [(UInt64(1), "0.05"), (2, "0.3"), (3, "0.5")] {
            var c = tinyConfig(strategy: zos, ["mode": "random", "xi": xi])
            c.seed = seed
            let run = try makeRun(c)
            try run.strategy.epochBegin(stepState(run))
            let counts = activeCounts(run)
            XCTAssertTrue(counts.allSatisfy { $0 >= 1 }, "xi \(xi): \(counts)")
            XCTAssertLessThan(counts.reduce(0, +), 80, "xi \(xi): something was masked")
        }
        // ξ = 0.05 on 80 ops: close to one op per edge.
        var c = tinyConfig(strategy: zos, ["mode": "random", "xi": "0.05"])
        c.seed = 9
        let run = try makeRun(c)
        try run.strategy.epochBegin(stepState(run))
        XCTAssertLessThanOrEqual(activeCounts(run).reduce(0, +), 20)
    }

    // MARK: The one-shot search on the masked space

    func testZeroOneShotStep_MaskedOpsAllocateNothing_AndGetNoAlphaGradient() throws {
        let run = try makeRun(tinyConfig(strategy: zos, ["batches": "1", "prune_state": "masked", "granularity": "op", "xi": "0.3"]))
        let acc = run.accountant
        try run.strategy.epochBegin(stepState(run))
        let masks = [false, true].map { states(run, reduction: $0) }
        XCTAssertTrue(masks.joined().joined().contains(.masked))
        let (train, valid) = (try run.trainLoader.nextCycling(accountant: acc), try run.validLoader.nextCycling(accountant: acc))
        acc.resetPeak()
        _ = try run.step(train: train, valid: valid)   // the strategy plans a bilevel step
        let table = acc.ownerTable()
        let k = names.count
        for (cell, reduction) in [(0, false), (1, true)] {
            let grad = try XCTUnwrap((reduction ? run.supernet.alphaReduce : run.supernet.alphaNormal).grad).array
            for e in 0..<run.supernet.space.edgesPerCell {
                for (o, name) in names.enumerated() where name != "none" {
                    let rows = table.filter { $0.owner.hasSuffix("cell\(cell)/edge\(e)/\(name)") }
                    let extra = rows.reduce(0) { $0 + $1.peak - $1.current.total }
                    if masks[cell][e][o] == .masked {
                        XCTAssertEqual(extra, 0, "masked \(name) on cell \(cell) edge \(e) allocated \(extra) bytes during the step")
                        XCTAssertEqual(grad[e * k + o], 0, "masked \(name) on cell \(cell) edge \(e) has an α gradient")
                    } else if name.contains("conv") || name.contains("pool") {
                        XCTAssertGreaterThan(extra, 0, "active \(name) on cell \(cell) edge \(e) ran")
                    }
                }
            }
            XCTAssertTrue(grad.contains { $0 != 0 }, "active ops have α gradients")
        }
        // The mixing weights of masked ops are exactly 0; the rest renormalise to 1.
        let w = try run.supernet.mixingWeights(reduction: false, accountant: acc)
        for e in w.indices {
            for o in 0..<k where masks[0][e][o] == .masked { XCTAssertEqual(w[e][o], 0) }
            XCTAssertEqual(w[e].reduce(0, +), 1, accuracy: 1e-5)
        }
    }

    func testPredictedPeak_OfARandomMaskedSearch_IsBelowDarts() throws {
        let darts = tinyConfig(strategy: "espalier.strategy.darts/1")
        let masked = tinyConfig(strategy: zos, ["mode": "random", "xi": "0.5"])
        let p0 = try SearchRun.predictStep(config: darts, registry: Self.registry, imageShape: (1, 8, 8), classes: 3)
        let p1 = try SearchRun.predictStep(config: masked, registry: Self.registry, imageShape: (1, 8, 8), classes: 3)
        XCTAssertLessThan(p1.stepPeak, p0.stepPeak, "half the ops masked: a smaller step")
        // Zero-shot mode predicts too (a forward pass of the scoring network, then the pruned step).
        let zs = tinyConfig(strategy: zos, ["batches": "1"])
        let p2 = try SearchRun.predictStep(config: zs, registry: Self.registry, imageShape: (1, 8, 8), classes: 3)
        XCTAssertGreaterThan(p2.stepPeak, 0)
        XCTAssertLessThanOrEqual(p2.stepPeak, p0.stepPeak)
    }

    // MARK: End to end

    func testEtenas_EndToEnd_OneOpPerEdge_TwoEdgesPerNode_NoTraining() throws {
        var c = tinyConfig(strategy: etenas, ["batches": "1"])
        c.epochs = 3
        let run = try makeRun(c)
        let before = run.supernet.weights.map(\.value.array)
        try run.run()
        XCTAssertEqual(run.logs.count, 1, "ETENAS stops after the first epoch")
        // No training: every weight left (removed ops' are freed) is as it was built, in order.
        var i = 0
        for w in run.supernet.weights.map(\.value.array) {
            while i < before.count && before[i] != w { i += 1 }
            XCTAssertLessThan(i, before.count, "a weight of \(w.count) floats changed")
            i += 1
        }
        for reduction in [false, true] {
            let s = states(run, reduction: reduction)
            let active = s.map { $0.filter { $0 == .active }.count }
            XCTAssertTrue(active.allSatisfy { $0 <= 1 }, "one op per edge at most: \(active)")
            // Node 0: edges 0, 1; node 1: edges 2, 3, 4 — two with an op each.
            XCTAssertEqual(active[0] + active[1], 2)
            XCTAssertEqual(active[2] + active[3] + active[4], 2)
            for e in s.indices where active[e] == 1 {
                XCTAssertNotEqual(names[s[e].firstIndex(of: .active)!], "none", "none is never the op left")
            }
        }
        let g = try run.derive()
        XCTAssertEqual(g.normal.count, 4)
        XCTAssertEqual(g.reduce.count, 4)
        XCTAssertTrue(g.problems().isEmpty, "\(g.problems())")
        XCTAssertTrue((g.normal + g.reduce).allSatisfy { $0.op != "none" })
        // The genotype is what the op states say.
        let s0 = states(run, reduction: false)
        for (i, edge) in g.normal.enumerated() {
            let e = (i / 2 == 0 ? 0 : 2) + edge.input
            XCTAssertEqual(names[s0[e].firstIndex(of: .active)!], edge.op)
        }
    }

    func testZeroOneShot_WithPartialChannelsAndBetaDecay_OnAFashionMNISTSubset() throws {
        let acc = MemoryAccountant()
        let train = try fashionMNISTTrainOrSkip(acc)
        var c = SearchConfig.quick
        c.space.channels = 8
        c.space.cells = 2
        c.space.nodes = 2   // 5 edges per cell: 81 forward passes per scoring round
        c.space.multiplier = 2
        c.space.reductionCells = [1]   // a normal and a reduction cell (2 cells by default are both reductions)
        c.batchSize = 16
        c.epochs = 2
        c.trainImages = 128
        c.evalImages = 32
        c.strategy = zos
        c.strategySettings = ["partial_channels": "4", "batches": "1", "granularity": "op"]
        c.regularizers = ["espalier.regularizer.beta-decay/1"]
        let run = try SearchRun(config: c, registry: Self.registry, context: HostContext(accountant: acc, seed: c.seed),
                                train: train.all.prefix(128), outDirectory: nil)
        XCTAssertEqual(try run.services.value("space.partial_channels"), 4)
        let before = run.supernet.alphaNormal.value.array
        try run.run()
        XCTAssertEqual(run.logs.count, 2)
        XCTAssertTrue(run.logs.allSatisfy { $0.validLoss.isFinite && $0.trainLoss.isFinite })
        let counts = activeCounts(run)
        let n = run.supernet.space.ops.count
        XCTAssertTrue(counts.allSatisfy { $0 >= 1 })
        // Algorithm 1 at op granularity: the last removal crossed ξ = 0.5.
        let fraction = counts.map { Double($0) / Double(n) }.reduce(1, *)
        XCTAssertLessThanOrEqual(fraction, 0.5)
        XCTAssertGreaterThan(fraction * Double(n) / Double(n - 1), 0.5 - 1e-9, "no more removed than needed")
        XCTAssertNotEqual(run.supernet.alphaNormal.value.array, before, "α was searched")
        let g = try run.derive()
        XCTAssertTrue(g.problems().isEmpty, "\(g.problems())")
        // Every derived op is one the mask kept.
        let s = states(run, reduction: false)
        for (i, edge) in g.normal.enumerated() {
            let node = i / 2, e = (0..<node).reduce(0) { $0 + 2 + $1 } + edge.input
            XCTAssertEqual(s[e][names.firstIndex(of: edge.op)!], .active, "\(edge.op) on edge \(e) was kept")
        }
    }
}
