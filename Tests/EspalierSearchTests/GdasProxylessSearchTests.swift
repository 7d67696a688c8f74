// GDAS and ProxylessNAS in the search trainer: with the GDAS gate exactly one op per edge runs
// and the unsampled ops allocate nothing (the accountant's per-owner table, and the activation
// peak against the softmax gate); a soft gate is refused; ProxylessNAS's rescaling keeps the
// probabilities of the unsampled candidates; a prediction counts the costliest draw per edge, not
// every op (its dry run equal to a real step forced to draw it), and bounds every draw; short end-to-end searches (GDAS; binary gate +
// ProxylessNAS strategy + expected-cost regularizer) whose genotype is the DARTS rule on softmax(α).

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class GdasProxylessSearchTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    /// 3 cells (one reduction), 2 nodes (5 edges per cell), C=4, batch 4.
    func config(gate: String, strategy: String, ops: [String]) -> SearchConfig {
        var c = SearchConfig()
        c.space.channels = 4
        c.space.cells = 3
        c.space.nodes = 2
        c.space.multiplier = 2
        c.space.stemMultiplier = 1
        c.space.reductionCells = [1]
        c.space.ops = ops.map { "espalier.op.\($0)/1" }
        c.gate = gate
        c.strategy = strategy
        c.batchSize = 4
        c.epochs = 2
        c.seed = 9
        return c
    }

    func makeRun(_ c: SearchConfig, images: Int = 16, size: Int = 8) throws -> SearchRun {
        try syntheticSearchRun(c, registry: Self.registry, images: images, size: size)
    }

    func batches(_ run: SearchRun) throws -> (Batch, Batch) {
        (try run.trainLoader.nextCycling(accountant: run.accountant), try run.validLoader.nextCycling(accountant: run.accountant))
    }

    func softmaxRows(_ rows: [[Float]]) -> [[Float]] {
        rows.map { r in
            let m = r.max()!
            let e = r.map { exp($0 - m) }
            let s = e.reduce(0, +)
            return e.map { $0 / s }
        }
    }

    /// The DARTS rule on softmax(α), by the host's own derivation: what both strategies must derive.
    func softmaxGenotype(_ run: SearchRun) throws -> Genotype {
        let sp = run.supernet.space
        return try Genotype.derive(normal: softmaxRows(run.supernet.logits(reduction: false)), reduce: softmaxRows(run.supernet.logits(reduction: true)),
                                   opNames: sp.opNames, nodes: sp.nodes, opIDs: Dictionary(uniqueKeysWithValues: zip(sp.opNames, sp.ops)))
    }

    // MARK: GDAS

    /// Bytes each (cell, edge, op) allocated during `body` beyond what it held before.
    func opAllocations(_ run: SearchRun, _ body: () throws -> Void) throws -> [String: Int] {
        let acc = run.accountant
        let before = Dictionary(acc.ownerTable().map { ($0.owner, $0.current.total) }, uniquingKeysWith: +)
        acc.resetPeak()
        try body()
        var out: [String: Int] = [:]
        for row in acc.ownerTable() {
            // model/cellI/edgeE/OP[/…]
            let parts = row.owner.split(separator: "/")
            guard let c = parts.firstIndex(where: { $0.hasPrefix("cell") }), c + 2 < parts.count, parts[c + 1].hasPrefix("edge") else { continue }
            let key = parts[c...(c + 2)].joined(separator: "/")
            out[key, default: 0] += row.peak - (before[row.owner] ?? 0)
        }
        return out
    }

    func testGdasGate_OneOpPerEdgeRuns_UnsampledOpsAllocateNothing() throws {
        let ops = ["max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "dil_conv_3x3"]   // every one allocates when it runs
        var peaks: [String: Int] = [:]
        for gate in ["espalier.gate.gdas/1", "espalier.gate.softmax/1"] {
            let run = try makeRun(config(gate: gate, strategy: "espalier.strategy.darts/1", ops: ops), size: 16)
            let (_, valid) = try batches(run)
            let perOp = try opAllocations(run) { try run.archGradientFirstOrder(valid: valid) }
            peaks[gate] = run.accountant.peakByCategory[.activations]
            let edges = run.supernet.space.edgesPerCell
            for cell in 0..<3 {
                for e in 0..<edges {
                    let running = ops.filter { (perOp["cell\(cell)/edge\(e)/\($0)"] ?? 0) > 0 }
                    if gate.contains("gdas") {
                        XCTAssertEqual(running.count, 1, "GDAS: exactly one op allocates on cell\(cell)/edge\(e): \(running)")
                    } else {
                        XCTAssertEqual(running.count, ops.count, "softmax: every op runs on cell\(cell)/edge\(e)")
                    }
                }
            }
        }
        let gdas = try XCTUnwrap(peaks["espalier.gate.gdas/1"]), soft = try XCTUnwrap(peaks["espalier.gate.softmax/1"])
        XCTAssertLessThan(Double(gdas), 0.6 * Double(soft), "activation peak of an α step: GDAS \(gdas) B vs softmax \(soft) B")
    }

    func testPrediction_WithASampledGate_IsTheCostliestDraw_NotEveryOp() throws {
        // One normal and one reduction cell, so each α row belongs to one edge of one cell.
        var c = tinySearchConfig(strategy: "espalier.strategy.gdas/1", ops: ["skip_connect", "sep_conv_3x3"].map { "espalier.op.\($0)/1" })
        c.gate = "espalier.gate.gdas/1"
        let prediction = try SearchRun.predictStep(config: c, registry: Self.registry, imageShape: (1, 8, 8), classes: 3)
        let predicted = prediction.stepPeak, drawn = predicted - prediction.drawMargin
        XCTAssertGreaterThan(prediction.drawMargin, 0, "a running candidate holds more than it keeps")
        var soft = c
        soft.gate = "espalier.gate.softmax/1"; soft.strategy = "espalier.strategy.darts/1"
        let everyOp = try SearchRun.predictStep(config: soft, registry: Self.registry, imageShape: (1, 8, 8), classes: 3).stepPeak
        // The dry run holds one op per edge; the margin above it is one edge's running op at one
        // moment (here, with two ops of which one is parameter-free, about as much as the other op
        // on every edge: the bound on a draw is not below every op's there, so the dry run is compared).
        XCTAssertLessThan(drawn, everyOp, "one op per edge counts, not both")
        func measured(_ forced: (normal: [Int], reduce: [Int])?) throws -> Int {
            let run = try makeRun(c)
            if let forced {
                for (alpha, ops) in [(run.supernet.alphaNormal, forced.normal), (run.supernet.alphaReduce, forced.reduce)] {
                    for (e, o) in ops.enumerated() { alpha.value[2 * e + o] = 30; alpha.value[2 * e + 1 - o] = -30 }
                }
            }
            try run.firstStep()
            return run.accountant.peakTotal - run.accountant.currentBytes(ownerPrefix: "dataset").total
        }
        XCTAssertLessThanOrEqual(try measured(nil), predicted, "random draws stay under the prediction")
        // The costliest op of every edge by the accountant's per-candidate bytes (on the real shapes of a first
        // step): a step forced to draw exactly those allocates exactly what was predicted.
        let probe = try makeRun(c)
        try probe.firstStep()
        let costs = try probe.candidateCosts()
        func costliest(_ bytes: [Float]) -> [Int] { (0..<(bytes.count / 2)).map { e in bytes[2 * e + 1] > bytes[2 * e] ? 1 : 0 } }
        let forced = (costliest(costs.normal.memory), costliest(costs.reduce.memory))
        XCTAssertTrue(forced.0.contains(1) || forced.1.contains(1), "sep_conv_3x3 is the costlier op somewhere: \(forced)")
        XCTAssertEqual(try measured(forced), drawn, "the costliest draw is exactly what the dry run ran (the prediction less its draw margin)")
    }

    /// Every draw of a sampled gate stays under the prediction, with and without recomputation:
    /// all 4⁵ draws of the five edges (the same on both cells) of none, skip_connect,
    /// sep_conv_5x5 and dil_conv_5x5. Among them, sep_conv_5x5 and dil_conv_5x5 into node 0 and
    /// factorized reduces into node 1 (nothing from node 0): dil_conv_5x5's weight-step backward
    /// holds 21 KB of scratch while the input it adds its gradient to holds another edge's. The
    /// prediction that ran the costliest keepers in one dry run and the costliest peaks (measured
    /// in an α step's backward, weights frozen, 5 KB of scratch, as a first gradient) in another
    /// fell 4 KB short of 16 draws recomputing each node's edges.
    func testPrediction_WithASampledGate_BoundsEveryDraw() throws {
        let ops = ["none", "skip_connect", "sep_conv_5x5", "dil_conv_5x5"].map { "espalier.op.\($0)/1" }
        var c = tinySearchConfig(strategy: "espalier.strategy.gdas/1", ops: ops)
        c.gate = "espalier.gate.gdas/1"
        let k = ops.count, edges = 5
        for mode in [RecomputeMode.none, .edges] {
            var m = c
            m.recompute = mode
            let predicted = try SearchRun.predictStep(config: m, registry: Self.registry, imageShape: (1, 8, 8), classes: 3).stepPeak
            var highest = (bytes: 0, draw: 0), over = 0
            for draw in 0..<Int(pow(Double(k), Double(edges))) {
                let run = try makeRun(m)
                for alpha in [run.supernet.alphaNormal, run.supernet.alphaReduce] {
                    var d = draw
                    for e in 0..<edges {
                        for o in 0..<k { alpha.value[k * e + o] = o == d % k ? 30 : -30 }
                        d /= k
                    }
                }
                do { try run.firstStep() } catch { continue }   // every edge into a node "none": no gradient to take
                let measured = run.accountant.peakTotal - run.accountant.currentBytes(ownerPrefix: "dataset").total
                if measured > predicted { over += 1 }
                if measured > highest.bytes { highest = (measured, draw) }
            }
            XCTAssertEqual(over, 0, "\(mode.rawValue): \(over) draws above the prediction \(predicted) B, the highest \(highest.bytes) B (draw \(highest.draw))")
            XCTAssertGreaterThan(highest.bytes, predicted * 8 / 10, "\(mode.rawValue): the prediction \(predicted) B is within 25 % of the costliest draw \(highest.bytes) B")
        }
    }

    func testGdasStrategy_RefusesASoftGate() throws {
        XCTAssertThrowsError(try makeRun(config(gate: "espalier.gate.softmax/1", strategy: "espalier.strategy.gdas/1", ops: ["none", "skip_connect"]))) {
            XCTAssertTrue("\($0)".contains("sampled"), "\($0)")
        }
    }

    func testGdas_ShortSearch_DerivesTheDartsRuleOnSoftmaxAlpha() throws {
        var c = config(gate: "espalier.gate.gdas/1", strategy: "espalier.strategy.gdas/1", ops: ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"])
        c.archLearningRate = 3e-2
        let run = try makeRun(c, images: 32)
        let alpha0 = run.supernet.logits(reduction: false)
        try run.run()
        XCTAssertEqual(run.logs.count, 2)
        for log in run.logs { XCTAssertTrue(log.trainLoss.isFinite && log.validLoss.isFinite, "\(log.trainLoss) \(log.validLoss)") }
        XCTAssertNotEqual(run.supernet.logits(reduction: false), alpha0, "α is trained")
        // The evaluation gate is one-hot (argmax α).
        for row in try run.supernet.mixingWeights(reduction: false, accountant: run.accountant) {
            XCTAssertEqual(row.filter { $0 == 1 }.count, 1); XCTAssertEqual(row.reduce(0, +), 1)
        }
        let g = try run.derive()
        XCTAssertEqual(g, try softmaxGenotype(run))
        XCTAssertFalse(g.normal.contains { $0.op == "none" } || g.reduce.contains { $0.op == "none" })
        XCTAssertEqual(g.problems(), [])
    }

    // MARK: ProxylessNAS

    /// Takes `steps` search steps and checks after each that every row of α changed in at most
    /// the two sampled entries, with its logsumexp kept, so the probabilities of the unchanged
    /// (unsampled) candidates are exactly what they were. Returns how many rows changed in more
    /// than two entries (0 when the invariant holds).
    func checkRescaling(_ run: SearchRun, steps: Int, enforce: Bool) throws -> Int {
        var violations = 0
        for s in 0..<steps {
            let (train, valid) = try batches(run)
            let before = [run.supernet.logits(reduction: false), run.supernet.logits(reduction: true)]
            try run.step(train: train, valid: valid)
            let after = [run.supernet.logits(reduction: false), run.supernet.logits(reduction: true)]
            var changedRows = 0
            for (b, a) in zip(before.joined(), after.joined()) {
                let changed = b.indices.filter { b[$0] != a[$0] }
                if changed.count > 2 { violations += 1; continue }
                if changed.isEmpty { continue }
                changedRows += 1
                guard enforce else { continue }
                func lse(_ x: [Float]) -> Double { let m = Double(x.max()!); return m + log(x.reduce(0.0) { $0 + exp(Double($1) - m) }) }
                XCTAssertEqual(lse(a), lse(b), accuracy: 1e-5, "step \(s): the row's normaliser is kept")
                let pb = softmaxRows([b])[0], pa = softmaxRows([a])[0]
                for j in b.indices where !changed.contains(j) {
                    XCTAssertEqual(pa[j], pb[j], accuracy: 1e-6, "step \(s): unsampled candidate \(j) keeps its probability")
                }
            }
            if enforce { XCTAssertGreaterThan(changedRows, 0, "step \(s): the α step moved the sampled pairs") }
        }
        return violations
    }

    func testProxylessStrategy_RescalingKeepsTheUnsampledProbabilities() throws {
        let ops = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "avg_pool_3x3"]
        var c = config(gate: "espalier.gate.binary/1", strategy: "espalier.strategy.proxyless/1", ops: ops)
        c.archLearningRate = 1e-2
        // keep_unsampled (default): exact after every step, whatever Adam's momentum and decay do.
        XCTAssertEqual(try checkRescaling(try makeRun(c), steps: 3, enforce: true), 0)
        // Without it, the first step is still exact (Adam moves nothing with a zero gradient and no
        // state, decay off), but later steps move unsampled α through momentum.
        c.strategySettings = ["keep_unsampled": "false"]
        c.archWeightDecay = 0
        let plain = try makeRun(c)
        XCTAssertEqual(try checkRescaling(plain, steps: 1, enforce: true), 0)
        XCTAssertGreaterThan(try checkRescaling(plain, steps: 3, enforce: false), 0, "momentum moves unsampled α when keep_unsampled=false")
    }

    func testProxylessStrategy_NeedsTheBinaryGate() throws {
        let run = try makeRun(config(gate: "espalier.gate.gdas/1", strategy: "espalier.strategy.proxyless/1", ops: ["none", "skip_connect", "max_pool_3x3"]))
        let (train, valid) = try batches(run)
        XCTAssertThrowsError(try run.step(train: train, valid: valid)) { XCTAssertTrue("\($0)".contains("needs the binary gate"), "\($0)") }
    }

    func testProxyless_ShortSearch_WithExpectedMemoryCost() throws {
        let ops = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]
        var meanConvMinusSkip: [Double] = []
        for lambda in ["0", "20"] {
            var c = config(gate: "espalier.gate.binary/1", strategy: "espalier.strategy.proxyless/1", ops: ops)
            c.archLearningRate = 3e-2
            let reg = "espalier.regularizer.expected-cost/1"
            c.regularizers = [reg]
            c.regularizerSettings = [reg: ["cost": "memory", "lambda": lambda]]
            let run = try makeRun(c, images: 32)
            try run.run()
            XCTAssertEqual(run.logs.count, 2)
            for log in run.logs { XCTAssertTrue(log.trainLoss.isFinite && log.validLoss.isFinite) }
            let g = try run.derive()
            XCTAssertEqual(g, try softmaxGenotype(run))
            XCTAssertEqual(g.problems(), [])
            // sep_conv_3x3 holds far more memory than skip_connect (an identity on normal edges).
            let a = run.supernet.logits(reduction: false)
            meanConvMinusSkip.append(a.reduce(0.0) { $0 + Double($1[3] - $1[2]) } / Double(a.count))
        }
        XCTAssertLessThan(meanConvMinusSkip[1], meanConvMinusSkip[0] - 0.05,
                          "the memory term lowers the costly op against the cheap one: α(sep3) − α(skip) \(meanConvMinusSkip)")
    }
}
