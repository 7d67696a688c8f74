// P-DARTS, DropNAS and the β-DARTS regularizer in real searches on tiny synthetic data:
// DropNAS's drop frequencies, its α shift (the dropped ops keep their probability mass, by hand
// through the services), masked candidates that neither run nor allocate, and a short search;
// P-DARTS's stages (ops removed per edge to the schedule, the supernet grown, skip dropout set,
// the search stopped after the last stage) and its skip-connect limit on hand-set α; β-DARTS's
// beta-decay changing α against plain DARTS from the same seed.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class PDartsDropNASBetaSearchTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))
    let names = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]

    /// A small supernet with the 8 DARTS ops: 2 cells (normal, reduce), 2 nodes (5 edges), C=4, 8×8 images.
    func tinyConfig(strategy: String, _ settings: [String: String] = [:]) -> SearchConfig {
        tinySearchConfig(strategy: strategy, settings: settings)
    }

    func makeRun(_ c: SearchConfig, images: Int = 16, context: HostContext? = nil) throws -> SearchRun {
        XCTAssertEqual(Self.registry.failures.map(\.description), [])
        let ctx = context ?? HostContext(accountant: MemoryAccountant(), seed: c.seed)
        let ds = try ctx.accountant.withOwner("dataset") {
            try Dataset.synthetic(count: images, channels: 1, height: 8, width: 8, classes: 3, seed: 1, accountant: ctx.accountant)
        }
        return try SearchRun(config: c, registry: Self.registry, context: ctx, train: ds.all, outDirectory: nil)
    }

    func states(_ run: SearchRun, reduction: Bool) -> [[OpState]] {
        (0..<run.supernet.space.edgesPerCell).map { e in (0..<run.supernet.space.ops.count).map { run.supernet.opState(reduction: reduction, edge: e, op: $0) } }
    }

    func stepState(_ run: SearchRun) -> RunState {
        var s = RunState()
        s.step = run.globalStep; s.epoch = run.epoch; s.totalEpochs = run.config.epochs
        s.totalSteps = run.config.epochs * run.trainLoader.batchesPerEpoch
        return s
    }

    // MARK: DropNAS

    let dropnas = "espalier.strategy.dropnas/1"

    func testDropNAS_EachOpDroppedWithProbabilityRToTheOneOverGroupSize_NoGroupEverEmpty() throws {
        for r in [0.5, 0.05] {
            let run = try makeRun(tinyConfig(strategy: dropnas, ["drop_rate": "\(r)"]))
            let p = pow(r, 1.0 / 4)
            // P(op dropped | its group of 4 not all dropped) = p·(1 − p³) / (1 − p⁴).
            let expected = p * (1 - p * p * p) / (1 - p * p * p * p)
            var dropped = 0, total = 0
            for _ in 0..<150 {
                XCTAssertEqual(try run.strategy.planStep(stepState(run)).mode, .singleLevel)
                for reduction in [false, true] {
                    for row in states(run, reduction: reduction) {
                        for group in [[4, 5, 6, 7], [0, 1, 2, 3]] {
                            let d = group.filter { row[$0] == .masked }.count
                            XCTAssertLessThan(d, 4, "a group never loses every op")
                            dropped += d; total += 4
                        }
                    }
                }
                try run.strategy.afterStep(stepState(run))
                XCTAssertTrue(states(run, reduction: false).joined().allSatisfy { $0 == .active }, "after_step lifts every mask")
            }
            XCTAssertEqual(Double(dropped) / Double(total), expected, accuracy: 0.025, "r = \(r): p = r^(1/4) = \(p)")
        }
    }

    func testDropNAS_ShiftKeepsTheDroppedOpsProbabilityMass() throws {
        for restore in [true, false] {
            let run = try makeRun(tinyConfig(strategy: dropnas, ["drop_rate": "0.3", "restore_dropped": "\(restore)"]))
            let k = 8, edges = run.supernet.space.edgesPerCell
            var rng = RNG(seed: 3)
            let alpha = run.supernet.alphaNormal.value
            for i in 0..<alpha.count { alpha[i] = rng.uniform() * 2 - 1 }
            let before = alpha.array
            _ = try run.strategy.planStep(stepState(run))
            let masked = states(run, reduction: false).map { row in row.map { $0 == .masked } }
            XCTAssertTrue(masked.joined().contains(true), "r = 0.3 drops something")
            // The "optimiser": kept logits move by arbitrary amounts, dropped ones a little (momentum).
            for i in 0..<alpha.count { alpha[i] += masked[i / k][i % k] ? 0.05 : rng.uniform() * 0.6 - 0.3 }
            let updated = alpha.array
            try run.strategy.afterStep(stepState(run))
            let after = alpha.array
            for e in 0..<edges where masked[e].contains(true) {
                let row = (e * k)..<(e * k + k)
                func share(_ a: [Float]) -> Double {
                    let ex = row.map { exp(Double(a[$0])) }
                    return zip(ex, masked[e]).filter { !$0.1 }.map(\.0).reduce(0, +) / ex.reduce(0, +)
                }
                // The kept ops' share of probability (hence the dropped ones') is what it was before the step.
                XCTAssertEqual(share(after), share(before), accuracy: 1e-5, "edge \(e)")
                let kept = row.filter { !masked[e][$0 - e * k] }, dropped = row.filter { masked[e][$0 - e * k] }
                for i in dropped { XCTAssertEqual(after[i], restore ? before[i] : updated[i], "edge \(e): a dropped logit is restored or left") }
                // The kept logits moved by one constant: their differences are the updated ones.
                let c = after[kept[0]] - updated[kept[0]]
                for i in kept { XCTAssertEqual(after[i] - updated[i], c, accuracy: 1e-5) }
                if restore {
                    // Σ_kept e^{α_new + c} = Σ_kept e^{α_old}.
                    XCTAssertEqual(kept.map { exp(Double(after[$0])) }.reduce(0, +), kept.map { exp(Double(before[$0])) }.reduce(0, +), accuracy: 1e-4)
                }
            }
            for e in 0..<edges where !masked[e].contains(true) {
                for i in (e * k)..<(e * k + k) { XCTAssertEqual(after[i], updated[i], "edge \(e) had nothing dropped: untouched") }
            }
        }
    }

    func testDropNAS_MaskedOpsNeverRunAndAllocateNothing() throws {
        let run = try makeRun(tinyConfig(strategy: dropnas, ["drop_rate": "0.4"]))
        let acc = run.accountant
        _ = try run.strategy.planStep(stepState(run))
        let masks = [false, true].map { states(run, reduction: $0) }
        XCTAssertTrue(masks[0].joined().contains(.masked) && masks[1].joined().contains(.masked))
        let batch = try run.trainLoader.nextCycling(accountant: acc)
        acc.resetPeak()
        try run.archGradientFirstOrder(valid: batch)
        _ = try run.weightStep(batch)
        let table = acc.ownerTable()
        for (cell, reduction) in [(0, false), (1, true)] {
            for e in 0..<run.supernet.space.edgesPerCell {
                for (o, name) in names.enumerated() where name != "none" {
                    let rows = table.filter { $0.owner.hasSuffix("cell\(cell)/edge\(e)/\(name)") }
                    let extra = rows.reduce(0) { $0 + $1.peak - $1.current.total }
                    if masks[reduction ? 1 : 0][e][o] == .masked {
                        XCTAssertEqual(extra, 0, "masked \(name) on cell \(cell) edge \(e) allocated \(extra) bytes during the step")
                    } else if name.contains("conv") || name.contains("pool") {
                        XCTAssertGreaterThan(extra, 0, "active \(name) on cell \(cell) edge \(e) ran")
                    }
                }
            }
        }
        // Masked candidates get exactly zero mixing weight; the others renormalise to 1.
        let w = try run.supernet.mixingWeights(reduction: false, accountant: acc)
        for e in w.indices {
            for o in 0..<8 where masks[0][e][o] == .masked { XCTAssertEqual(w[e][o], 0) }
            XCTAssertEqual(w[e].reduce(0, +), 1, accuracy: 1e-5)
        }
        try run.strategy.afterStep(stepState(run))
    }

    func testDropNAS_ShortSearch() throws {
        var c = tinyConfig(strategy: dropnas, ["drop_rate": "0.2"])
        c.epochs = 2
        c.archLearningRate = 3e-2
        let run = try makeRun(c, images: 32)
        let before = run.supernet.alphaNormal.value.array
        try run.run()
        XCTAssertEqual(run.logs.count, 2)
        XCTAssertTrue(run.logs.allSatisfy { $0.trainLoss.isFinite && $0.validLoss.isFinite })
        XCTAssertNotEqual(run.supernet.alphaNormal.value.array, before, "single-level steps moved α")
        XCTAssertTrue([false, true].allSatisfy { states(run, reduction: $0).joined().allSatisfy { $0 == .active } }, "no mask outlives its step")
        let g = try run.derive()
        XCTAssertEqual(g.normal.count, 4)
        XCTAssertTrue(g.problems().isEmpty, "\(g.problems())")
    }

    // MARK: P-DARTS

    let pdarts = "espalier.strategy.pdarts/1"

    func testPDarts_StagesRemoveOpsToTheSchedule_GrowTheSupernet_AndStop() throws {
        var c = tinyConfig(strategy: pdarts, ["stage_cells": "2,3,4", "stage_ops": "5,3,1", "stage_epochs": "1",
                                               "skip_dropout": "0.1,0.4,0.7"])
        c.epochs = 5   // the strategy stops after its 3 one-epoch stages
        c.archLearningRate = 3e-2
        let context = HostContext(accountant: MemoryAccountant(), seed: c.seed)
        var logged: [String] = []
        context.logSink = { _, m in logged.append(m) }
        let run = try makeRun(c, context: context)
        try run.run()
        XCTAssertEqual(run.logs.count, 3, "one epoch per stage, then the strategy stops the search")
        // Each epoch's log is written before its stage ends: epoch 2 sees stage 1's pruning, epoch 3 stage 2's.
        for (epoch, left) in [(0, 8), (1, 5), (2, 3)] {
            for w in run.logs[epoch].weightsNormal + run.logs[epoch].weightsReduce {
                XCTAssertEqual(w.filter { $0 > 0 }.count, left, "epoch \(epoch + 1): candidates left per edge")
            }
        }
        // After the last stage: one op per edge, never `none`.
        for reduction in [false, true] {
            for row in states(run, reduction: reduction) {
                XCTAssertEqual(row.filter { $0 != .removed }.count, 1)
                XCTAssertEqual(row[0], .removed, "none is gone in the last stage")
            }
        }
        XCTAssertEqual(run.supernet.space.cells, 4, "grown 2 → 3 → 4 cells")
        XCTAssertTrue(logged.contains { $0.contains("growing to 3 cells") } && logged.contains { $0.contains("growing to 4 cells") }, "\(logged)")
        XCTAssertEqual(try run.services.value("skip_dropout"), 0.7, accuracy: 1e-6, "stage 3's skip dropout (decay schedule, first epoch after warm-up)")
        let g = try run.derive()
        let left = [false, true].map { r in states(run, reduction: r).map { row in self.names[row.firstIndex { $0 != .removed }!] } }
        XCTAssertTrue(g.normal.allSatisfy { $0.op != "none" } && g.reduce.allSatisfy { $0.op != "none" })
        XCTAssertEqual(g.normal.count, 4)
        // With the skip limit not binding, each kept edge carries the one op left on it.
        if g.normal.filter({ $0.op == "skip_connect" }).count <= 2 {
            var e = 0
            for node in 0..<2 {
                let mine = Array(g.normal[(2 * node)..<(2 * node + 2)])
                for edge in mine { XCTAssertEqual(edge.op, left[0][e + edge.input], "normal node \(node) input \(edge.input)") }
                e += 2 + node
            }
        }
    }

    func testPDarts_LastStageRemovesNoneEvenWhenItKeepsEveryOtherOp() throws {
        var c = tinyConfig(strategy: pdarts, ["stage_cells": "2,2", "stage_ops": "8,8", "skip_dropout": "0"])
        c.epochs = 2   // auto: one epoch per stage
        let run = try makeRun(c)
        try run.run()
        XCTAssertEqual(run.logs.count, 2)
        for w in run.logs[1].weightsNormal { XCTAssertEqual(w.filter { $0 > 0 }.count, 8, "stage 1 keeps all 8") }
        for reduction in [false, true] {
            for row in states(run, reduction: reduction) {
                XCTAssertEqual(row.map { $0 == .removed }, [true] + Array(repeating: false, count: 7), "only none goes")
            }
        }
    }

    func testPDarts_DeriveLimitsSkipConnectsInTheNormalCell() throws {
        var c = tinyConfig(strategy: pdarts, ["stage_cells": "2", "stage_ops": "1", "stage_epochs": "10", "skip_limit": "2",
                                                  "skip_dropout": "0"])
        c.space.nodes = 4
        c.space.multiplier = 4
        let run = try makeRun(c)
        // Normal cell: two "hot" edges per node whose best op is skip_connect (logit s), then
        // sep_conv_3x3 (logit 1); every other op −10. The other edges are uniform (all 0).
        let hot: [Int: Float] = [0: 1.6, 1: 2.4, 2: 1.7, 4: 2.3, 5: 1.8, 7: 1.9, 9: 2.0, 13: 2.1]
        let a = run.supernet.alphaNormal.value
        a.fill(0)
        for (e, s) in hot {
            for o in 0..<8 { a[e * 8 + o] = -10 }
            a[e * 8 + 3] = s
            a[e * 8 + 4] = 1
        }
        run.supernet.alphaReduce.value.fill(0)
        let darts = try run.supernet.genotype(accountant: run.accountant)
        XCTAssertEqual(darts.normal.filter { $0.op == "skip_connect" }.count, 8, "the plain DARTS rule keeps 8 skip_connects")
        let g = try run.derive()
        // The six weakest skip_connects fall back to sep_conv_3x3 on the same edge; e1 (2.4) and
        // e4 (2.3) keep theirs, and within each node the stronger edge comes first.
        func E(_ op: String, _ input: Int) -> Genotype.Edge { Genotype.Edge(op, input) }
        XCTAssertEqual(g.normal, [E("skip_connect", 1), E("sep_conv_3x3", 0),
                                  E("skip_connect", 2), E("sep_conv_3x3", 0),
                                  E("sep_conv_3x3", 0), E("sep_conv_3x3", 2),
                                  E("sep_conv_3x3", 0), E("sep_conv_3x3", 4)])
        XCTAssertEqual(g.normalConcat, [2, 3, 4, 5])
        XCTAssertEqual(g.reduce, darts.reduce, "no limit in the reduction cell: the DARTS rule")
        XCTAssertEqual(g.opIDs?["skip_connect"], "espalier.op.skip_connect/1")
        // skip_limit 0: every skip_connect falls back.
        var c0 = c
        c0.strategySettings["skip_limit"] = "0"
        let run0 = try makeRun(c0)
        for i in 0..<a.count { run0.supernet.alphaNormal.value[i] = a[i] }
        run0.supernet.alphaReduce.value.fill(0)
        XCTAssertTrue(try run0.derive().normal.allSatisfy { $0.op == "sep_conv_3x3" })
    }

    func testPDartsWithBetaDecay_OnAFashionMNISTSubset() throws {
        let acc = MemoryAccountant()
        let train = try fashionMNISTTrainOrSkip(acc)
        var c = SearchConfig.quick
        c.space.channels = 4
        c.space.cells = 2
        c.batchSize = 16
        c.epochs = 2
        c.trainImages = 128
        c.evalImages = 32
        c.strategy = pdarts
        c.strategySettings = ["stage_cells": "2,3", "stage_ops": "3,1", "skip_dropout": "0.1,0.4"]
        c.regularizers = ["espalier.regularizer.beta-decay/1"]
        c.methods = ["lambda.schedule": "beta-linear"]
        let run = try SearchRun(config: c, registry: Self.registry, context: HostContext(accountant: acc, seed: c.seed),
                                train: train.all.prefix(128), outDirectory: nil)
        try run.run()
        XCTAssertEqual(run.logs.count, 2)
        XCTAssertTrue(run.logs.allSatisfy { $0.validLoss.isFinite })
        XCTAssertEqual(run.supernet.space.cells, 3)
        // The schedule set λ before every step: 25·step/total, at the last step 25·7/8 (64 images, batch 16: 4 steps × 2 epochs).
        XCTAssertEqual(try run.services.value("regularizer.lambda"), 25.0 * 7 / 8, accuracy: 1e-9)
        let g = try run.derive()
        XCTAssertTrue(g.problems().isEmpty, "\(g.problems())")
        XCTAssertLessThanOrEqual(g.normal.filter { $0.op == "skip_connect" }.count, 2)
        XCTAssertTrue((g.normal + g.reduce).allSatisfy { $0.op != "none" })
    }

    // MARK: β-DARTS

    func testBetaDecay_InADartsSearch_ShrinksTheLogSumExpOfAlphaAgainstPlainDarts() throws {
        var c = tinyConfig(strategy: "espalier.strategy.darts/1")
        c.epochs = 2
        c.archLearningRate = 1e-2
        let plain = try makeRun(c, images: 32)
        try plain.run()
        c.regularizers = ["espalier.regularizer.beta-decay/1"]
        c.regularizerSettings = ["espalier.regularizer.beta-decay/1": ["lambda": "50", "ramp_epochs": "1"]]   // λ = 0, then 50
        let beta = try makeRun(c, images: 32)
        try beta.run()
        func meanLSE(_ rows: [[Float]]) -> Double {
            rows.map { r in let m = Double(r.max()!); return m + log(r.reduce(0.0) { $0 + exp(Double($1) - m) }) }.reduce(0, +) / Double(rows.count)
        }
        XCTAssertEqual(plain.logs[0].alphaNormal, beta.logs[0].alphaNormal, "epoch 1: λ = 0, the same search")
        XCTAssertNotEqual(plain.supernet.alphaNormal.value.array, beta.supernet.alphaNormal.value.array)
        for reduction in [false, true] {
            let p = meanLSE(plain.supernet.logits(reduction: reduction)), b = meanLSE(beta.supernet.logits(reduction: reduction))
            XCTAssertLessThan(b, p - 0.01, "beta-decay pulls logsumexp(α) down (reduction \(reduction))")
        }
    }
}
