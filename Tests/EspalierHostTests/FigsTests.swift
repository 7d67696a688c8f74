// FiGS components through the host's adapters, on the real plugin library: the Logistic-Sigmoid
// channel gate (0/1 masks at τ = 0.001 with the frequency σ(ν), hard masks straight-through,
// 1[ν > 0] at evaluation, the gradient against finite differences with the same noise, the
// straight-through gradient equal to the sigmoid's), the masked convolutions (a channel whose
// logit is very negative is zero, gradients into the weights and the mask logits against finite
// differences, one gate instance per logits length shared by the op's masks), and the expected-
// cost regularizer's value and gradient against finite differences.

import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class FigsTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    func gate(_ context: HostContext, count: Int, settings: [String: String] = [:]) throws -> PluginGate {
        XCTAssertEqual(Self.registry.failures.map(\.description), [])
        return try PluginGate(try Self.registry.require("espalier.gate.figs/1", kind: .gate), context: context, granularity: .channels,
                              rows: count, cols: 1, settings: settings, ownerPath: "gate/channel")
    }

    func sigmoid(_ x: Double) -> Double { 1 / (1 + exp(-x)) }

    // MARK: Gate

    func testGate_MasksAreZeroOrOne_AtSmallTau_WithFrequencySigmoidOfTheLogit() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 3)
        let n = 4000
        for (straight, logit) in [(false, 2.5), (true, 2.5), (false, -1.0)] {
            let gate = try self.gate(context, count: n, settings: ["straight_through": straight ? "true" : "false"])
            let logits = try Tensor.from([Float](repeating: Float(logit), count: n), shape: [n, 1], accountant: acc)
            let g = Graph(accountant: acc)
            let m = try gate(g, g.constant(logits)).weights.value.array
            let soft = m.filter { min($0, 1 - $0) > 1e-3 }.count
            if straight { XCTAssertEqual(soft, 0, "straight-through masks are exactly 0 or 1") }
            // |ν + L| < 0.01 (|z/τ| < 10 at τ = 0.001) has probability ≈ 0.02·p_L(ν) < 0.2 %.
            XCTAssertLessThan(soft, n / 200, "τ = 0.001: masks are 0/1 up to 1e-3 (\(soft) of \(n) are not)")
            let ones = Double(m.filter { $0 > 0.5 }.count) / Double(n)
            XCTAssertEqual(ones, sigmoid(logit), accuracy: 0.025, "P(m = 1) = π = σ(ν)")
        }
        // Evaluation: 1[ν > 0], no noise.
        let gate = try self.gate(context, count: 4)
        let g = Graph(accountant: acc)
        g.training = false
        let m = try gate(g, g.constant(try Tensor.from([-1, 0.5, 2, -3e-3], shape: [4, 1], accountant: acc))).weights
        XCTAssertEqual(m.value.array, [0, 1, 1, 0])
    }

    func testGate_Gradient_MatchesFiniteDifferences_WithTheSameNoise_AndStraightThroughUsesTheSigmoidsGradient() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 5)
        let soft = try gate(context, count: 6, settings: ["tau": "0.7"])
        let logits = try randomTensor([6, 1], acc, seed: 11, bound: 2)
        try GradCheck(eps: 1e-3, rtol: 2e-2, atol: 1e-3).check("figs gate dν", inputs: [logits]) { g, v in
            context.rng = RNG(seed: 42)   // the same noise L in every evaluation
            return try soft(g, v[0]).weights
        }
        // Straight-through: hard masks forward, the same gradient as the relaxation with that noise.
        let hard = try gate(context, count: 6, settings: ["tau": "0.7", "straight_through": "true"])
        func run(_ gate: PluginGate) throws -> (m: [Float], d: [Float]) {
            context.rng = RNG(seed: 42)
            let g = Graph(accountant: acc)
            let v = g.leaf(logits)
            let m = try gate(g, v).weights
            try g.backward(m, gradient: try Tensor.from([1, -2, 0.5, 3, -1, 0.25], shape: [6, 1], accountant: acc))
            return (m.value.array, g.gradient(of: v)!.array)
        }
        let (ms, ds) = try run(soft), (mh, dh) = try run(hard)
        XCTAssertEqual(mh, ms.map { $0 > 0.5 ? 1 : 0 }, "the hard mask is the relaxed one rounded (same noise)")
        assertClose(dh, ds, tol: 1e-6)
        XCTAssertTrue(ds.contains { abs($0) > 1e-3 }, "a gradient at τ = 0.7")
    }

    func testGate_ClearErrors() throws {
        let context = HostContext()
        XCTAssertThrowsError(try gate(context, count: 3, settings: ["tau": "0"])) { XCTAssertTrue("\($0)".contains("tau"), "\($0)") }
        XCTAssertThrowsError(try PluginGate(try Self.registry.require("espalier.gate.figs/1", kind: .gate), context: context, granularity: .ops,
                                            rows: 2, cols: 3, ownerPath: "arch")) { XCTAssertTrue("\($0)".contains("does not support"), "\($0)") }
    }

    // MARK: Ops

    func op(_ id: String, _ context: HostContext, channels: Int, settings: [String: String] = [:]) throws -> PluginOp {
        try PluginOp(try Self.registry.require(id, kind: .op), context: context, config: OpConfig(inChannels: channels, outChannels: channels),
                     settings: settings, ownerPath: "cell0/edge0/figs")
    }

    func testSepConv_MasksChannels_AndGradientsReachWeightsAndMaskLogits() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 7)
        context.selectChannelGate(try Self.registry.require("espalier.gate.figs/1", kind: .gate), settings: ["tau": "0.5"])
        let op = try self.op("espalier.op.figs_sep_conv_3x3/1", context, channels: 4, settings: ["mid_channels": "3"])
        let names = op.parameters.map { $0.name.replacingOccurrences(of: "cell0/edge0/figs/", with: "") }
        XCTAssertTrue(names.contains("mask_mid.logits") && names.contains("mask_out.logits"), "\(names)")
        let mid = op.parameters.first { $0.name.hasSuffix("mask_mid.logits") }!, out = op.parameters.first { $0.name.hasSuffix("mask_out.logits") }!
        XCTAssertEqual(mid.shape, [3]); XCTAssertEqual(out.shape, [4])
        XCTAssertEqual(out.value.array, [2.5, 2.5, 2.5, 2.5])
        for i in 0..<3 { mid.value[i] = [0.3, -0.4, 1.1][i] }
        for i in 0..<4 { out.value[i] = [0.5, -0.2, 0.8, 0.1][i] }
        let x = try randomTensor([2, 4, 5, 5], acc, seed: 12)
        for i in 0..<x.count where abs(x[i]) < 0.05 { x[i] = 0.3 }
        for p in [mid, out] {
            try checkParameterGradient("figs sep d\(p.name)", parameter: p, acc: acc) { g in
                context.rng = RNG(seed: 77)
                return try op(g, g.constant(x))
            }
        }
        let pw1 = op.parameters.first { $0.name.hasSuffix("pw1.weight") }!
        XCTAssertEqual(pw1.shape, [3, 4, 1, 1], "mid_channels = 3")
        // A channel whose mask logit is −50 is off at τ = 0.5 (σ(−100) ≈ 0) whatever the noise; evaluation keeps ν > 0.
        out.value[2] = -50
        let g = Graph(accountant: acc)
        let y = try op(g, g.constant(x))
        for n in 0..<2 { for i in 0..<25 { XCTAssertEqual(y.value[(n * 4 + 2) * 25 + i], 0, accuracy: 1e-12) } }
        XCTAssertGreaterThan((0..<25).map { abs(y.value[$0]) }.max()!, 0)
    }

    func testDilConv_OutputMaskGradient_MatchesFiniteDifferences_AndNoChannelGateIsAClearError() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 8)
        let op = try self.op("espalier.op.figs_dil_conv_3x3/1", context, channels: 3, settings: ["logit_init": "0.5"])
        let x = try randomTensor([2, 3, 5, 5], acc, seed: 13)
        let g0 = Graph(accountant: acc)
        XCTAssertThrowsError(try op(g0, g0.constant(x))) { XCTAssertTrue("\($0)".contains("no gate for role 'channel'"), "\($0)") }
        context.selectChannelGate(try Self.registry.require("espalier.gate.figs/1", kind: .gate), settings: ["tau": "0.8"])
        let out = op.parameters.first { $0.name.hasSuffix("mask_out.logits") }!
        XCTAssertEqual(out.value.array, [0.5, 0.5, 0.5])
        try checkParameterGradient("figs dil dν", parameter: out, acc: acc) { g in
            context.rng = RNG(seed: 78)
            return try op(g, g.constant(x))
        }
        XCTAssertThrowsError(try self.op("espalier.op.figs_sep_conv_3x3/1", context, channels: 4, settings: ["mid_channels": "9"])) {
            XCTAssertTrue("\($0)".contains("mid_channels") && "\($0)".contains("9"), "\($0)")
        }
    }

    // MARK: Expected cost

    func testExpectedCost_ValueAndGradient_MatchFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc)
        let r = try PluginRegularizer(try Self.registry.require("espalier.regularizer.figs-cost/1", kind: .regularizer), context: context,
                                      settings: ["lambda": "0.01", "cost": "params"])
        XCTAssertTrue(r.hasLoss && r.wants(.gateWeights))
        // A dense 1×1 conv 3 → 2 channels (unit cost 1 per pair) and a depthwise 3×3 conv on 2 channels (9 per channel).
        let nuIn = try Tensor.from([0.3, -1.2, 2.0], shape: [3], accountant: acc)
        let nuOut = try Tensor.from([0.7, -0.1], shape: [2], accountant: acc)
        let gIn = try Tensor.zeros([3], category: .gradients, accountant: acc), gOut = try Tensor.zeros([2], category: .gradients, accountant: acc)
        let gOut2 = try Tensor.zeros([2], category: .gradients, accountant: acc)
        func targets(_ grads: Bool) throws -> [RegularizerTarget] {
            [RegularizerTarget(kind: .gateWeights, name: "channels/pw/params", values: [nuIn, nuOut], grads: grads ? [gIn, gOut] : [nil, nil],
                               costs: [try Tensor.from([1, 1, 1], shape: [3], accountant: acc), try Tensor.from([1, 1], shape: [2], accountant: acc)]),
             RegularizerTarget(kind: .gateWeights, name: "channels/dw/params", values: [nuOut], grads: [grads ? gOut2 : nil],
                               costs: [try Tensor.from([9, 9], shape: [2], accountant: acc)]),
             RegularizerTarget(kind: .gateWeights, name: "channels/dw/flops", values: [nuOut], grads: [nil],
                               costs: [try Tensor.from([1e6, 1e6], shape: [2], accountant: acc)])]
        }
        let s = { (v: [Float]) in v.reduce(0.0) { $0 + self.sigmoid(Double($1)) } }
        let expected = 0.01 * (s(nuIn.array) * s(nuOut.array) + 9 * s(nuOut.array))
        XCTAssertEqual(try r.loss(try targets(true)), expected, accuracy: 1e-9, "λ(π_out·Σπ_in + k²Σπ)")
        for (t, grad, parts) in [(nuIn, gIn, [gIn]), (nuOut, gOut, [gOut, gOut2])] {
            let analytic = (0..<t.count).map { i in parts.reduce(0.0) { $0 + Double($1[i]) } }
            for i in 0..<t.count {
                let old = t[i], eps: Float = 1e-2
                t[i] = old + eps; let lp = try r.loss(try targets(false))
                t[i] = old - eps; let lm = try r.loss(try targets(false))
                t[i] = old
                XCTAssertEqual(analytic[i], (lp - lm) / Double(2 * eps), accuracy: 1e-6, "∂R/∂ν[\(i)] of \(grad.shape)")
            }
        }
        XCTAssertThrowsError(try PluginRegularizer(try Self.registry.require("espalier.regularizer.figs-cost/1", kind: .regularizer), context: context,
                                                   settings: ["cost": "latency"])) { XCTAssertTrue("\($0)".contains("latency"), "\($0)") }
    }
}
