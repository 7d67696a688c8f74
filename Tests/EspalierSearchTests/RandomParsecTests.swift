// Random search, PARSEC and the host services they stand on. train_child: a genotype trained from
// scratch, deterministic, counted and freed under owner "child", clear errors through the C table.
// batch_loss (ABI 1.1): the trainer's own loss on the step's batch, only the active ops, gradients
// on request, refused between steps. Random search: uniform inputs and ops (frequencies over many
// samples), removed ops never drawn, derive = the best-scoring sample, an end-to-end run. PARSEC:
// its prior-gradient estimate averaged over many steps against the exact gradient of
// log E_π[p(y|a)] enumerated over every child, π moving toward the child with the lowest loss,
// the step's memory that of one child, and an end-to-end run.

import CEspalierSDK
import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import Foundation
import XCTest

final class RandomParsecTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    /// 2 cells (one normal, one reduction), 2 nodes, 4 ops, 8×8 images, batch 4.
    func tinyConfig(strategy: String = "espalier.strategy.darts/1", settings: [String: String] = [:]) -> SearchConfig {
        tinySearchConfig(strategy: strategy, settings: settings, ops: ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"].map { "espalier.op.\($0)/1" }, epochs: 2)
    }

    func makeRun(_ c: SearchConfig, images: Int = 16) throws -> SearchRun {
        XCTAssertEqual(Self.registry.failures.map(\.description), [])
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: c.seed)
        let ds = try acc.withOwner("dataset") { try Dataset.synthetic(count: images, channels: 1, height: 8, width: 8, classes: 3, seed: 1, accountant: acc) }
        return try SearchRun(config: c, registry: Self.registry, context: context, train: ds.all, outDirectory: nil)
    }

    func batches(_ run: SearchRun) throws -> StepBatches {
        StepBatches(train: try run.trainLoader.nextCycling(accountant: run.accountant), valid: try run.validLoader.nextCycling(accountant: run.accountant))
    }

    /// The C table the plugins see.
    func services(_ run: SearchRun) -> (UnsafeMutableRawPointer?, es_search_services) {
        (run.context.services.pointee.host, run.context.services.pointee.search!.pointee)
    }

    /// Leaves only `choice[e]` active on every edge of the normal cell (all active again with nil).
    func setChild(_ run: SearchRun, _ choice: [Int]?) throws {
        let k = run.supernet.space.ops.count
        for e in 0..<run.supernet.space.edgesPerCell {
            for o in 0..<k { try run.setOpState(reduction: false, edge: e, op: o, choice.map { $0[e] == o ? .active : .masked } ?? .active) }
        }
    }

    static let childJSON = """
        {"normal": [["sep_conv_3x3", 0], ["skip_connect", 1], ["max_pool_3x3", 0], ["sep_conv_3x3", 2]], "normal_concat": [2, 3],
         "reduce": [["max_pool_3x3", 0], ["sep_conv_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1]], "reduce_concat": [2, 3]}
        """

    // MARK: - train_child

    func testTrainChild_TrainsFromScratch_DeterministicCountedAsChildAndFreed() throws {
        var c = tinyConfig()
        c.batchSize = 8
        let run = try makeRun(c, images: 96)
        let before = run.accountant.currentTotal
        let short = try run.trainChild(json: Self.childJSON, steps: 1)
        let trained = try run.trainChild(json: Self.childJSON, steps: 60)
        let again = try run.trainChild(json: Self.childJSON, steps: 60)
        XCTAssertEqual(trained, again, "the same child with the same seed trains to the same accuracy")
        XCTAssertGreaterThan(trained, 0.55, "60 steps learn the 3 synthetic classes (chance 1/3)")
        XCTAssertGreaterThan(trained, short)
        XCTAssertEqual(run.accountant.currentTotal, before, "the child and its optimiser are freed")
        let child = run.accountant.ownerTable().filter { $0.owner.hasPrefix("child/") }
        XCTAssertTrue(child.contains { $0.owner.hasPrefix("child/cell0/") && $0.peak > 0 }, "\(child.map(\.owner))")
        XCTAssertTrue(child.contains { $0.owner.hasPrefix("child/optimizer") || $0.owner.hasPrefix("child/step") }, "\(child.map(\.owner))")
        XCTAssertTrue(child.allSatisfy { $0.current.total == 0 })
    }

    func testTrainChild_ErrorsThroughTheCTable_NameTheProblem() throws {
        let run = try makeRun(tinyConfig())
        let (host, s) = services(run)
        var acc = -1.0
        /// The status through the C table, and the message of the same call through the Swift API.
        func call(_ json: String, steps: Int64 = 2) -> (es_status, String) {
            let status = json.withCString { s.train_child!(host, $0, steps, &acc) }
            do { _ = try run.trainChild(json: json, steps: Int(steps)); return (status, "") } catch { return (status, "\(error)") }
        }
        var (status, message) = call("{not json")
        XCTAssertEqual(status, ES_ERROR_INVALID_ARGUMENT); XCTAssertTrue(message.contains("not a valid genotype JSON"), message)
        (status, message) = call(Self.childJSON.replacingOccurrences(of: "\"max_pool_3x3\", 0]", with: "\"warp_conv\", 0]"))
        XCTAssertEqual(status, ES_ERROR_INVALID_ARGUMENT); XCTAssertTrue(message.contains("warp_conv") && message.contains("needs component espalier.op.warp_conv/1"), message)
        (status, message) = call(Self.childJSON.replacingOccurrences(of: "[\"skip_connect\", 2]", with: "[\"skip_connect\", 7]"))
        XCTAssertEqual(status, ES_ERROR_INVALID_ARGUMENT); XCTAssertTrue(message.contains("reads input 7"), message)
        (status, message) = call(Self.childJSON, steps: 0)
        XCTAssertEqual(status, ES_ERROR_INVALID_ARGUMENT); XCTAssertTrue(message.contains("steps 0"), message)
        XCTAssertEqual(acc, -1, "nothing is written on failure")
        (status, _) = call(Self.childJSON, steps: 3)
        XCTAssertEqual(status, ES_OK); XCTAssertTrue((0...1).contains(acc))
    }

    // MARK: - batch_loss (ABI 1.1)

    func testBatchLoss_IsTheTrainersLossOnTheStepBatch_OnlyActiveOps_GradientsOnRequest() throws {
        let run = try makeRun(tinyConfig())
        let (host, s) = services(run)
        XCTAssertGreaterThanOrEqual(Int(s.struct_size), MemoryLayout<es_search_services>.size)
        var loss = 0.0, n: Int64 = 0
        // Between steps there is no batch.
        XCTAssertEqual(s.batch_loss!(host, 1, 0, &loss, &n), ES_ERROR_UNSUPPORTED)
        XCTAssertThrowsError(try run.batchLoss(validation: true, backward: false)) { XCTAssertTrue("\($0)".contains("no step is being taken"), "\($0)") }
        let b = try batches(run)
        run.services.stepBatches = b
        defer { run.services.stepBatches = nil }
        XCTAssertEqual(s.batch_loss!(host, 2, 0, &loss, &n), ES_ERROR_INVALID_ARGUMENT)
        XCTAssertEqual(s.batch_loss!(host, 1, 0, &loss, &n), ES_OK)
        XCTAssertEqual(n, 4)
        run.train(weights: false, arch: false)
        let reference = try run.graph.noGrad { try run.lossAndGradients(b.valid!.images, b.valid!.labels, backward: false).0 }
        XCTAssertEqual(loss, reference, accuracy: 1e-6, "the validation batch's mean CE")
        XCTAssertEqual(s.batch_loss!(host, 0, 0, &loss, &n), ES_OK)
        let trainLoss = try run.graph.noGrad { try run.lossAndGradients(b.train.images, b.train.labels, backward: false).0 }
        XCTAssertEqual(loss, trainLoss, accuracy: 1e-6, "the training batch's mean CE")
        // A child: only its ops run, so its loss differs from the supernet's, and masking changes it back.
        try setChild(run, Array(repeating: 2, count: run.supernet.space.edgesPerCell))
        XCTAssertEqual(s.batch_loss!(host, 1, 0, &loss, &n), ES_OK)
        XCTAssertGreaterThan(abs(loss - reference), 1e-6)
        try setChild(run, nil)
        XCTAssertEqual(s.batch_loss!(host, 1, 0, &loss, &n), ES_OK)
        XCTAssertEqual(loss, reference, accuracy: 1e-6)
        // backward = 1 accumulates ∂L/∂w: twice the same call doubles the gradient; α gets none.
        run.weightOptimizer.zeroGrad(); run.archOptimizer.zeroGrad()
        XCTAssertEqual(s.batch_loss!(host, 1, 1, &loss, &n), ES_OK)
        let once = run.supernet.weights.flatMap { $0.grad!.array }
        XCTAssertEqual(s.batch_loss!(host, 1, 1, &loss, &n), ES_OK)
        let twice = run.supernet.weights.flatMap { $0.grad!.array }
        XCTAssertGreaterThan(once.map(abs).max()!, 1e-6)
        for i in stride(from: 0, to: once.count, by: 7) { XCTAssertEqual(twice[i], 2 * once[i], accuracy: 1e-5 + 1e-4 * abs(once[i])) }
        XCTAssertEqual(run.supernet.alphaNormal.grad!.array.map(abs).max()!, 0)
    }

    // MARK: - Random search

    /// Runs random search and returns every logged sample (accuracy, genotype).
    func randomSearch(samples: Int, childSteps: Int, epochs: Int, prepare: (SearchRun) throws -> Void = { _ in }) throws -> (SearchRun, [(Double, Genotype)]) {
        var c = tinyConfig(strategy: "espalier.strategy.random/1", settings: ["samples_per_epoch": "\(samples)", "child_steps": "\(childSteps)"])
        c.epochs = epochs
        c.evalImages = 8
        let run = try makeRun(c, images: 32)
        try prepare(run)
        var logged: [(Double, Genotype)] = []
        run.context.logSink = { _, line in
            guard let a = line.range(of: "valid accuracy "), let b = line.range(of: ", architecture ") else { return }
            let acc = Double(line[a.upperBound..<b.lowerBound])!
            logged.append((acc, try! JSONDecoder().decode(Genotype.self, from: Data(line[b.upperBound...].utf8))))
        }
        try run.run()
        return (run, logged)
    }

    func testRandomSearch_SamplesInputsAndOpsUniformly_NeverARemovedOp() throws {
        // Normal cell, edge 0 (node 0 ← c_{k-2}): sep_conv_3x3 (op 3) removed for good.
        let (_, samples) = try randomSearch(samples: 150, childSteps: 1, epochs: 2) { run in
            try run.setOpState(reduction: false, edge: 0, op: 3, .removed)
        }
        XCTAssertEqual(samples.count, 300, "samples_per_epoch × epochs")
        var pairCounts: [String: Int] = [:], opCounts: [String: Int] = [:]
        var edge0: [String: Int] = [:]
        for (_, g) in samples {
            for cell in [g.normal, g.reduce] {
                XCTAssertEqual(cell.count, 4)
                XCTAssertEqual(Set([cell[0].input, cell[1].input]), [0, 1], "node 0 has exactly two predecessors")
                XCTAssertNotEqual(cell[2].input, cell[3].input, "two distinct inputs")
                pairCounts[[cell[2].input, cell[3].input].sorted().map(String.init).joined(), default: 0] += 1
                for e in cell { XCTAssertNotEqual(e.op, "none") }
            }
            for e in g.reduce { opCounts[e.op, default: 0] += 1 }
            for e in g.normal[0...1] where e.input == 0 { edge0[e.op, default: 0] += 1 }
        }
        // Node 1's input pair: {0,1}, {0,2}, {1,2} each with p = 1/3 (600 cells).
        XCTAssertEqual(Set(pairCounts.keys), ["01", "02", "12"])
        for (k, v) in pairCounts { XCTAssertEqual(Double(v) / 600, 1.0 / 3, accuracy: 0.06, "pair \(k): \(pairCounts)") }
        // Reduce-cell ops: max_pool, skip, sep each with p = 1/3 (1200 edges; 4σ ≈ 0.054).
        XCTAssertEqual(Set(opCounts.keys), ["max_pool_3x3", "skip_connect", "sep_conv_3x3"])
        for (k, v) in opCounts { XCTAssertEqual(Double(v) / 1200, 1.0 / 3, accuracy: 0.055, "\(k): \(opCounts)") }
        // The removed op never appears on its edge, and the two left share it evenly.
        XCTAssertNil(edge0["sep_conv_3x3"], "\(edge0)")
        XCTAssertEqual(Double(edge0["skip_connect"] ?? 0) / 300, 0.5, accuracy: 0.12, "\(edge0)")
    }

    func testRandomSearch_DeriveReturnsTheBestScoringSample_EndToEnd() throws {
        let (run, samples) = try randomSearch(samples: 3, childSteps: 8, epochs: 2)
        XCTAssertEqual(samples.count, 6)
        XCTAssertEqual(run.logs.count, 2, "the trainer still logs each epoch")
        let best = samples.max { $0.0 < $1.0 }!.1
        let first = samples.first { $0.0 == samples.map(\.0).max()! }!.1
        XCTAssertEqual(first, best)
        XCTAssertEqual(try run.derive(), best)
        XCTAssertGreaterThan(Set(samples.map { $0.1.normal.map(\.description).joined() }).count, 1, "different architectures were sampled")
    }

    func testRandomSearch_RefusesBadParameters() throws {
        for (k, v, expect) in [("samples_per_epoch", "0", "samples_per_epoch"), ("child_steps", "-3", "child_steps")] {
            XCTAssertThrowsError(try makeRun(tinyConfig(strategy: "espalier.strategy.random/1", settings: [k: v]))) { e in
                XCTAssertTrue("\(e)".contains(expect), "\(e)")
            }
        }
    }

    // MARK: - PARSEC

    /// One normal cell of one node: 2 edges × 3 ops = 9 children.
    func parsecToy(_ settings: [String: String]) throws -> SearchRun {
        var c = tinyConfig(strategy: "espalier.strategy.parsec/1", settings: settings)
        c.space.cells = 1
        c.space.reductionCells = []
        c.space.nodes = 1
        c.space.multiplier = 1
        c.space.ops = ["skip_connect", "max_pool_3x3", "avg_pool_3x3"].map { "espalier.op.\($0)/1" }
        return try makeRun(c)
    }

    func softmax(_ x: [Float]) -> [Double] {
        let m = x.max()!, e = x.map { exp(Double($0 - m)) }, z = e.reduce(0, +)
        return e.map { $0 / z }
    }

    /// Every child's validation loss, by (op on edge 0, op on edge 1).
    func childLosses(_ run: SearchRun, ops: Int) throws -> [[Double]] {
        var out: [[Double]] = []
        for a in 0..<ops {
            out.append(try (0..<ops).map { b in
                try setChild(run, [a, b])
                defer { try? setChild(run, nil) }
                return try run.batchLoss(validation: true, backward: false).loss
            })
        }
        return out
    }

    func testParsec_PriorGradientEstimate_AveragesToTheExactGradientOfTheLogMarginalLikelihood() throws {
        let temperature = 0.5
        let run = try parsecToy(["samples": "64", "prior_lr": "0", "temperature": "\(temperature)"])
        let alpha = run.supernet.alphaNormal
        let pi: [Float] = [0.6, -0.4, 0.1, -0.2, 0.5, 0.0]   // (2 edges, 3 ops)
        for i in 0..<6 { alpha.value[i] = pi[i] }
        run.services.stepBatches = try batches(run)
        defer { run.services.stepBatches = nil }
        let n = Double(run.config.batchSize)

        // Exact: ∇π log Σ_a p(a|π)·exp(−N·L(a)/T) = Σ_a w(a)·(onehot(a_e) − p_e), w ∝ p(a)·exp(−N·L(a)/T).
        let L = try childLosses(run, ops: 3)
        let p0 = softmax(Array(pi[0..<3])), p1 = softmax(Array(pi[3..<6]))
        var w = [[Double]](repeating: [0, 0, 0], count: 3)
        let lmin = L.flatMap { $0 }.min()!
        for a in 0..<3 { for b in 0..<3 { w[a][b] = p0[a] * p1[b] * exp(-n * (L[a][b] - lmin) / temperature) } }
        let z = w.flatMap { $0 }.reduce(0, +)
        var exact = [Double](repeating: 0, count: 6)
        for a in 0..<3 {
            for b in 0..<3 {
                let wa = w[a][b] / z
                for k in 0..<3 {
                    exact[k] += wa * ((a == k ? 1 : 0) - p0[k])
                    exact[3 + k] += wa * ((b == k ? 1 : 0) - p1[k])
                }
            }
        }
        XCTAssertGreaterThan(exact.map(abs).max()!, 0.1, "a toy where the likelihood favours some children: \(exact), losses \(L)")

        // Monte Carlo: the strategy's estimate (α's gradient = −ĝ) over many steps at fixed π and weights.
        let repeats = 40
        var mean = [Double](repeating: 0, count: 6), meanSquare = [Double](repeating: 0, count: 6)
        for _ in 0..<repeats {
            let plan = try run.strategy.planStep(RunState())
            XCTAssertEqual(plan.mode, .weightsOnly)
            // During the step only one op per edge runs.
            for e in 0..<2 { XCTAssertEqual((0..<3).filter { run.supernet.opState(reduction: false, edge: e, op: $0) == .active }.count, 1) }
            let g = alpha.grad!.array
            for i in 0..<6 { mean[i] -= Double(g[i]) / Double(repeats); meanSquare[i] += Double(g[i] * g[i]) / Double(repeats) }
            try run.strategy.afterStep(RunState())
            XCTAssertEqual(alpha.value.array, pi, "prior_lr 0 leaves π as it was")
        }
        for e in 0..<2 { for o in 0..<3 { XCTAssertEqual(run.supernet.opState(reduction: false, edge: e, op: o), .active, "after_step restores") } }
        // Within 4 standard errors of the Monte Carlo mean, plus 0.01 for the O(1/S) bias of self-normalised weights.
        let standardError = (0..<6).map { ((meanSquare[$0] - mean[$0] * mean[$0]) / Double(repeats - 1)).squareRoot() }
        print("PARSEC estimate \(mean) exact \(exact) standard error \(standardError) losses \(L)")
        for i in 0..<6 { XCTAssertEqual(mean[i], exact[i], accuracy: 4 * standardError[i] + 0.01, "component \(i): estimate \(mean) vs exact \(exact)") }
    }

    func testParsec_PriorMovesTowardTheChildWithTheLowestLoss() throws {
        let run = try parsecToy(["samples": "4", "prior_lr": "0.3", "temperature": "0.05"])
        // Train the shared weights a little with every op active, so the children differ clearly.
        for _ in 0..<20 { _ = try run.weightStep(try run.trainLoader.nextCycling(accountant: run.accountant)) }
        let b = try batches(run)
        run.services.stepBatches = b
        let L = try childLosses(run, ops: 3)
        run.services.stepBatches = nil
        let flat = L.flatMap { $0 }
        let best = flat.firstIndex(of: flat.min()!)!
        func pBest() -> Double {
            let a = run.supernet.alphaNormal.value.array
            return softmax(Array(a[0..<3]))[best / 3] * softmax(Array(a[3..<6]))[best % 3]
        }
        let before = pBest()
        for _ in 0..<30 { try run.step(train: b.train, valid: b.valid) }   // the same batches: a fixed likelihood up to the weight steps
        XCTAssertGreaterThan(pBest(), before + 0.1, "p(best child) \(before) → \(pBest()); losses \(L)")
    }

    func testParsec_StepMemoryIsThatOfOneChild_FarBelowTheSupernet() throws {
        func activationPeak(_ strategy: String, _ settings: [String: String], child: Int?) throws -> Int {
            var c = tinyConfig(strategy: strategy, settings: settings)
            c.space.channels = 8
            c.space.ops = SearchSpaceDescription.dartsOps
            c.batchSize = 8
            let run = try makeRun(c, images: 32)
            if let child {
                for t in [false, true] {
                    for e in 0..<run.supernet.space.edgesPerCell { for o in 0..<8 where o != child { try run.setOpState(reduction: t, edge: e, op: o, .masked) } }
                }
            }
            let b = try batches(run)
            run.accountant.resetPeak()
            try run.step(train: b.train, valid: b.valid)
            return run.accountant.peakByCategory[.activations]
        }
        let parsec = try activationPeak("espalier.strategy.parsec/1", ["samples": "4"], child: nil)
        // Weight steps of the DARTS supernet (warm-up): all 8 ops, or only sep_conv_5x5 (the costliest child) on every edge.
        let warm = ["warmup_epochs": "10"]
        let full = try activationPeak("espalier.strategy.darts/1", warm, child: nil)
        let heaviestChild = try activationPeak("espalier.strategy.darts/1", warm, child: 5)
        XCTAssertLessThanOrEqual(parsec, heaviestChild, "PARSEC's step holds one child's activations (\(parsec) vs \(heaviestChild))")
        XCTAssertLessThan(Double(parsec), 0.5 * Double(full), "far below the supernet's (\(parsec) vs \(full))")
        print("activation peaks: PARSEC step \(parsec), heaviest child \(heaviestChild), supernet \(full)")
    }

    func testDryRunPredictions_CoverParsecsChildAndRandomSearchsTrainChild() throws {
        for strategy in ["espalier.strategy.parsec/1", "espalier.strategy.random/1"] {
            let p = try SearchRun.predictStep(config: tinyConfig(strategy: strategy), registry: Self.registry, imageShape: (1, 8, 8), classes: 3)
            XCTAssertGreaterThan(p.stepPeak, 0, strategy)
            if strategy.contains("random") {
                XCTAssertTrue(p.accountant.ownerTable().contains { $0.owner.hasPrefix("child/") && $0.peak > 0 }, "the child's step is in the prediction")
            }
        }
    }

    func testParsec_EndToEnd_SearchesDerivesAndRestoresOpStates() throws {
        var c = tinyConfig(strategy: "espalier.strategy.parsec/1", settings: ["samples": "3", "prior_lr": "0.1"])
        c.epochs = 2
        let run = try makeRun(c, images: 32)
        let before = run.supernet.alphaNormal.value.array
        try run.run()
        XCTAssertEqual(run.logs.count, 2)
        XCTAssertTrue(run.logs.allSatisfy { $0.trainLoss.isFinite && $0.trainLoss > 0 })
        XCTAssertNotEqual(run.supernet.alphaNormal.value.array, before, "π was updated")
        let k = run.supernet.space.ops.count
        for t in [false, true] {
            for e in 0..<run.supernet.space.edgesPerCell { for o in 0..<k { XCTAssertEqual(run.supernet.opState(reduction: t, edge: e, op: o), .active) } }
        }
        let g = try run.derive()
        XCTAssertEqual(g.normal.count, 4)
        XCTAssertEqual(g, try run.supernet.genotype(accountant: run.accountant), "the host's DARTS rule on softmax(π)")
    }

    func testParsec_RefusesBadParameters() throws {
        for (k, v) in [("samples", "0"), ("temperature", "0"), ("prior_lr", "-1")] {
            XCTAssertThrowsError(try makeRun(tinyConfig(strategy: "espalier.strategy.parsec/1", settings: [k: v]))) { e in
                XCTAssertTrue("\(e)".contains(k), "\(e)")
            }
        }
    }
}
