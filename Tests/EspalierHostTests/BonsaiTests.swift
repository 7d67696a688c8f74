// The Bonsai-Net library through the host's adapters, without a search: the saw-wave pruner
// (forward exactly 0 or 1 times each candidate's output, pruned candidates not run, the gradient
// straight through = each candidate's contribution, the clamp, S(w) with saw_value, connections
// granularity, parameter errors) and the compression regularizer (value against a hand
// computation, gradient against finite differences, λ doubling while the target is unmet,
// set_value). Search-level behaviour (sections, budgets, candidate sizes from the accountant) is
// in Tests/EspalierSearchTests/BonsaiSearchTests.swift.

import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class BonsaiTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))
    let gateID = "espalier.gate.sawwave/1", regID = "espalier.regularizer.compression/1"

    func gate(_ context: HostContext, rows: Int, cols: Int, granularity: GateGranularity = .ops, settings: [String: String] = [:]) throws -> PluginGate {
        XCTAssertEqual(Self.registry.failures.map(\.description), [])
        return try PluginGate(try Self.registry.require(gateID, kind: .gate), context: context, granularity: granularity,
                              rows: rows, cols: cols, settings: settings, ownerPath: "arch/normal/gate")
    }

    func compression(_ context: HostContext, _ settings: [String: String] = [:]) throws -> PluginRegularizer {
        try PluginRegularizer(try Self.registry.require(regID, kind: .regularizer), context: context, settings: settings)
    }

    // MARK: Saw-wave gate

    func testSawWave_ForwardIsExactlyZeroOrOneTimesTheInput_GradientIsTheInputsContribution() throws {
        let acc = MemoryAccountant()
        let sw = try gate(HostContext(accountant: acc, seed: 1), rows: 2, cols: 3)
        XCTAssertTrue(sw.isHard && !sw.isSampled)
        // Pruned: w < 0 and −∞ (a masked candidate); kept: w ≥ 0, including exactly 0 (G = step(w ≥ 0)).
        let logits = try Tensor.from([0.1, -0.2, 0, -1e-7, 0.37, -.infinity], shape: [2, 3], accountant: acc)
        let g = Graph(accountant: acc)
        let l = g.leaf(logits)
        let (w, active) = try sw(g, l)
        XCTAssertEqual(w.value.array, [1, 0, 1, 0, 1, 0], "G(w) exactly")
        XCTAssertEqual(active, [1, 0, 1, 0, 1, 0], "pruned candidates do not run")
        // The host's mix: only the active candidates' outputs enter the weighted sum.
        let xs = try (0..<6).map { try randomTensor([2, 5], acc, seed: UInt64(10 + $0), bound: 2) }
        let run = (0..<6).filter { active[$0] != 0 }
        let y = try g.weightedSum(run.map { g.constant(xs[$0]) }, weights: w, indices: run)
        let expected = (0..<10).map { i in run.reduce(Float(0)) { $0 + xs[$1][i] } }
        XCTAssertEqual(y.value.array, expected, "kept candidates enter exactly once (weight exactly 1), pruned ones not at all")
        let upstream = try randomTensor([2, 5], acc, seed: 99)
        try g.backward(y, gradient: upstream)
        let dl = try XCTUnwrap(g.gradient(of: l))
        for j in 0..<6 {
            // Straight through: ∂L/∂w_j = ∂L/∂weight_j = <upstream, x_j> for a candidate that ran;
            // one that did not run contributed nothing, so its gradient is 0.
            let contribution = run.contains(j) ? Float(zip(upstream.array, xs[j].array).reduce(0.0) { $0 + Double($1.0 * $1.1) }) : 0
            XCTAssertEqual(dl[j], contribution, accuracy: 1e-5, "candidate \(j)")
        }
    }

    func testSawWave_BackwardPassesStraightThrough_ExceptPastTheClamp_AndSawValue() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 1)
        let sw = try gate(context, rows: 1, cols: 5, settings: ["clamp": "0.5"])
        let logits = try Tensor.from([0.5, 0.5, -0.5, -0.5, 0.2], shape: [1, 5], accountant: acc)
        let g = Graph(accountant: acc)
        let l = g.leaf(logits)
        let (w, _) = try sw(g, l)
        let dW = try Tensor.from([-1, 1, 1, -1, -3], shape: [1, 5], accountant: acc)
        try g.backward(w, gradient: dW)
        // At +clamp a negative gradient (descent raises w) is dropped, at −clamp a positive one.
        XCTAssertEqual(try XCTUnwrap(g.gradient(of: l)).array, [0, 1, 0, -1, -3])
        // saw_value: kept weights are 1 + S(w), S(w) = (Mw − ⌊Mw⌋)/M; M = 10 makes S visible.
        let lit = try gate(context, rows: 1, cols: 3, settings: ["saw_value": "true", "m": "10"])
        let g2 = Graph(accountant: acc)
        let (w2, a2) = try lit(g2, g2.constant(try Tensor.from([0.37, -0.37, 0.1], shape: [1, 3], accountant: acc)))
        XCTAssertEqual(Double(w2.value[0]), 1 + (3.7 - 3) / 10, accuracy: 1e-6)
        XCTAssertEqual(w2.value[1], 0); XCTAssertEqual(a2, [1, 0, 1])
        XCTAssertEqual(Double(w2.value[2]), 1, accuracy: 1e-5)
        // Connections (ES_GATE_INPUTS): one pruner per connection, cols = 1.
        let conn = try gate(context, rows: 3, cols: 1, granularity: .inputs)
        let g3 = Graph(accountant: acc)
        let (w3, a3) = try conn(g3, g3.constant(try Tensor.from([0.1, -0.1, 0.3], shape: [3, 1], accountant: acc)))
        XCTAssertEqual(w3.value.array, [1, 0, 1]); XCTAssertEqual(a3, [1, 0, 1])
    }

    func testSawWave_BadParameters_AreNamed() throws {
        let context = HostContext()
        for (k, v) in [("m", "0.5"), ("clamp", "-1")] {
            XCTAssertThrowsError(try gate(context, rows: 1, cols: 2, settings: [k: v])) {
                XCTAssertTrue("\($0)".contains(k), "\($0)")
            }
        }
        XCTAssertThrowsError(try gate(context, rows: 4, cols: 1, granularity: .channels)) { XCTAssertTrue("\($0)".contains("channel"), "\($0)") }
    }

    // MARK: Compression regularizer

    /// Targets as the host builds them: gate weights and costs (edges, ops) per cell type.
    func targets(_ wn: Tensor, _ sn: Tensor, _ gn: Tensor?, _ wr: Tensor, _ sr: Tensor, _ gr: Tensor?) -> [RegularizerTarget] {
        [RegularizerTarget(kind: .gateWeights, name: "gate/normal/memory", values: [wn], grads: [gn], costs: [sn]),
         RegularizerTarget(kind: .gateWeights, name: "gate/normal/flops", values: [wn], grads: [gn], costs: [sn]),
         RegularizerTarget(kind: .gateWeights, name: "gate/reduce/memory", values: [wr], grads: [gr], costs: [sr])]
    }

    func testCompression_ValueIsLambdaTimesTheDistanceToTarget_GradientMatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let r = try compression(HostContext(accountant: acc), ["target": "0.3", "lambda": "2"])
        XCTAssertTrue(r.hasLoss && r.wants(.gateWeights) && !r.wants(.arch))
        let sn = try Tensor.from([100, 300, 0, 600, 50, 950], shape: [2, 3], accountant: acc)
        let sr = try Tensor.from([400, 200, 200, 1200], shape: [2, 2], accountant: acc)
        let wn = try Tensor.from([1, 0, 1, 1, 0, 0.5], shape: [2, 3], accountant: acc)
        let wr = try Tensor.from([0, 1, 1, 0.25], shape: [2, 2], accountant: acc)
        let gn = try Tensor.zeros([2, 3], category: .gradients, accountant: acc), gr = try Tensor.zeros([2, 2], category: .gradients, accountant: acc)
        // By hand: c_n = (100 + 0 + 600 + 475)/2000 = 0.5875, c_r = (200 + 200 + 300)/2000 = 0.35.
        let cn = 1175.0 / 2000, cr = 700.0 / 2000
        let value = try r.loss(targets(wn, sn, gn, wr, sr, gr))
        XCTAssertEqual(value, 2 * ((cn - 0.3) * (cn - 0.3) + (cr - 0.3) * (cr - 0.3)).squareRoot(), accuracy: 1e-9, "the /flops target is not counted")
        let eps: Float = 1e-3
        for (t, grad) in [(wn, gn), (wr, gr)] {
            for i in 0..<t.count {
                let old = t[i]
                t[i] = old + eps; let lp = try r.loss(targets(wn, sn, nil, wr, sr, nil))
                t[i] = old - eps; let lm = try r.loss(targets(wn, sn, nil, wr, sr, nil))
                t[i] = old
                let numeric = Float((lp - lm) / Double(2 * eps))
                XCTAssertEqual(grad[i], numeric, accuracy: 1e-4 + 1e-2 * abs(numeric), "element \(i)")
            }
        }
        // Bad values are named.
        XCTAssertThrowsError(try r.setValue("target", 1.5)) { XCTAssertTrue("\($0)".contains("target") && "\($0)".contains("1.5"), "\($0)") }
        XCTAssertThrowsError(try r.setValue("speed", 1)) { XCTAssertTrue("\($0)".contains("speed"), "\($0)") }
        XCTAssertThrowsError(try compression(HostContext(), ["double_every": "0"])) { XCTAssertTrue("\($0)".contains("double_every"), "\($0)") }
    }

    func testCompression_LambdaDoublesEveryNEpochsWhileUnmet_ResetByANewTarget_OffWhenSetToZero() throws {
        let acc = MemoryAccountant()
        let r = try compression(HostContext(accountant: acc), ["target": "0.5", "lambda": "0.01", "double_every": "2"])
        let s = try Tensor.from([1, 1], shape: [1, 2], accountant: acc)
        let w = try Tensor.from([1, 1], shape: [1, 2], accountant: acc)   // c = 1 > 0.5: unmet
        var target = 0.5
        /// λ at `epoch`: the loss over |c − target|.
        func lambda(epoch: Int) throws -> Double {
            var st = RunState(); st.epoch = epoch; st.totalEpochs = 20
            let c = Double(w[0] + w[1]) / 2
            return try r.loss([RegularizerTarget(kind: .gateWeights, name: "gate/normal/memory", values: [w], grads: [nil], costs: [s])], state: st) / abs(c - target)
        }
        XCTAssertEqual(try lambda(epoch: 0), 0.01, accuracy: 1e-12)
        XCTAssertEqual(try lambda(epoch: 1), 0.01, accuracy: 1e-12)
        XCTAssertEqual(try lambda(epoch: 2), 0.02, accuracy: 1e-12, "doubled after 2 unmet epochs")
        XCTAssertEqual(try lambda(epoch: 4), 0.04, accuracy: 1e-12)
        target = 0.75
        try r.setValue("target", target)
        w[1] = 0   // c = 0.5 ≤ 0.75: met
        XCTAssertEqual(try lambda(epoch: 5), 0.01, accuracy: 1e-12, "a new target starts again from lambda")
        for e in 6...9 { XCTAssertEqual(try lambda(epoch: e), 0.01, accuracy: 1e-12, "met epochs do not double λ (epoch \(e))") }
        try r.setValue("lambda", 0)
        XCTAssertEqual(try lambda(epoch: 10), 0)
    }
}
