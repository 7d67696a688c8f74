// GDAS and ProxylessNAS components through the host's adapters, on the real plugin libraries:
// the Gumbel gate's one-hot weights, single active op, sampling frequencies against softmax(α),
// straight-through gradient against finite differences of the soft p with the same noise, and
// its τ schedule; the binary gate's pairs, chosen-op frequencies and gradient formula; the
// expected-cost regularizer's value and gradient. Search-level behaviour (memory of unsampled
// ops, α rescaling, short searches) is in EspalierSearchTests/GdasProxylessSearchTests.swift.

import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class GdasProxylessTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    func gate(_ id: String, _ context: HostContext, rows: Int, cols: Int, settings: [String: String] = [:]) throws -> PluginGate {
        XCTAssertEqual(Self.registry.failures.map(\.description), [])
        return try PluginGate(try Self.registry.require(id, kind: .gate), context: context, granularity: .ops,
                              rows: rows, cols: cols, settings: settings, ownerPath: "arch/normal/gate")
    }

    /// `rows` copies of `row`, as (rows, cols) logits.
    func repeated(_ row: [Float], rows: Int, _ acc: MemoryAccountant) throws -> Tensor {
        try Tensor.from(Array((0..<rows).map { _ in row }.joined()), shape: [rows, row.count], accountant: acc)
    }

    func softmax(_ x: [Double]) -> [Double] {
        let m = x.filter { $0 > -.infinity }.max()!
        let e = x.map { $0 > -.infinity ? exp($0 - m) : 0 }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }

    /// Pearson's χ² of observed counts against expected probabilities (cells with p = 0 must be empty).
    func chiSquared(_ counts: [Int], _ p: [Double], file: StaticString = #filePath, line: UInt = #line) -> Double {
        let n = Double(counts.reduce(0, +))
        var x2 = 0.0
        for (c, q) in zip(counts, p) {
            if q == 0 { XCTAssertEqual(c, 0, "a candidate of probability 0 was drawn", file: file, line: line); continue }
            x2 += (Double(c) - n * q) * (Double(c) - n * q) / (n * q)
        }
        return x2
    }

    // MARK: GDAS

    func testGdasGate_OneHotWeights_OnlyTheSampledOpActive_MaskedNeverSampled() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 3)
        let gdas = try gate("espalier.gate.gdas/1", context, rows: 500, cols: 5)
        XCTAssertTrue(gdas.isSampled && gdas.isHard)
        let logits = try repeated([0.5, -.infinity, 2, 1, -0.5], rows: 500, acc)
        let g = Graph(accountant: acc)
        let (w, active) = try gdas(g, g.leaf(logits))
        var seen = Set<Int>()
        for r in 0..<500 {
            let row = (0..<5).map { w.value[r * 5 + $0] }
            XCTAssertEqual(row.filter { $0 == 1 }.count, 1, "row \(r) is one-hot: \(row)")
            XCTAssertEqual(row.filter { $0 == 0 }.count, 4, "row \(r) is one-hot: \(row)")
            let k = row.firstIndex(of: 1)!
            XCTAssertNotEqual(k, 1, "the masked (−∞) candidate is never sampled")
            XCTAssertEqual(Array(active[(r * 5)..<(r * 5 + 5)]), (0..<5).map { $0 == k ? 1 : 0 }, "only the sampled op runs")
            seen.insert(k)
        }
        XCTAssertEqual(seen, [0, 2, 3, 4], "every unmasked candidate is drawn sometimes")
        // Evaluation: deterministic argmax α, one op active.
        g.training = false
        let (we, ae) = try gdas(g, g.constant(logits))
        XCTAssertEqual(Array(we.value.array[0..<5]), [0, 0, 1, 0, 0])
        XCTAssertEqual(Array(ae[0..<5]), [0, 0, 1, 0, 0])
        XCTAssertEqual(try gdas(g, g.constant(logits)).weights.value.array, we.value.array, "evaluation draws nothing")
    }

    func testGdasGate_SamplingFrequencies_FollowSoftmaxOfAlpha() throws {
        // Gumbel-max: argmax(log_softmax(α) + g)/τ is distributed as softmax(α), whatever τ.
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 11)
        let row: [Float] = [1, 0.5, -1, 0.2, -.infinity, 0]
        let rows = 20_000
        let gdas = try gate("espalier.gate.gdas/1", context, rows: rows, cols: row.count)
        let logits = try repeated(row, rows: rows, acc)
        let g = Graph(accountant: acc)
        for step in [0, 80] {   // τ = 10 and τ ≈ 2.1: the same distribution
            var st = RunState()
            st.step = step; st.totalSteps = 100
            let w = try g.noGrad { try gdas(g, g.constant(logits), state: st).weights }
            var counts = [Int](repeating: 0, count: row.count)
            for r in 0..<rows { for j in 0..<row.count where w.value[r * row.count + j] == 1 { counts[j] += 1 } }
            let x2 = chiSquared(counts, softmax(row.map(Double.init)))
            XCTAssertLessThan(x2, 20.5, "χ² with 4 degrees of freedom (p ≈ 0.0004): counts \(counts) at step \(step)")
        }
    }

    /// Replays the gate's draws: one uniform per unmasked candidate, row by row (u = 0 redrawn).
    func gumbelReplay(_ rng: inout RNG, _ logits: [[Float]]) -> [[Double]] {
        logits.map { row in
            row.map { a in
                guard a > -.infinity else { return 0 }
                var u = 0.0
                while u <= 0 { u = rng.uniformDouble() }
                return Double(Float(-log(-log(u))))
            }
        }
    }

    /// p = softmax((log_softmax(α) + g)/τ) in double precision.
    func softP(_ a: [Double], _ g: [Double], tau: Double) -> [Double] {
        let ls = zip(a, softmax(a)).map { $1 > 0 ? log($1) : -Double.infinity }
        return softmax(zip(ls, g).map { $0 > -.infinity ? ($0 + $1) / tau : -.infinity })
    }

    func testGdasGate_StraightThroughGradient_IsTheJacobianOfTheSoftP_WithTheForwardNoise() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 5)
        let rowsIn: [[Float]] = [[0.3, -0.2, 0.9, -.infinity], [1.5, 0.1, -0.4, 0.2], [-0.1, 0.0, 0.1, 0.05]]
        let dh: [Float] = [0.7, -1.2, 0.4, 0.0, -0.3, 0.9, 1.1, -0.5, 0.25, -0.8, 0.6, 1.3]
        let gdas = try gate("espalier.gate.gdas/1", context, rows: 3, cols: 4)
        // τ: built-in schedule at step 30 of 60 (10 → 0.1: 5.05), then a set value (0.7) that wins.
        for (setTau, expectedTau) in [(nil, 5.05), (0.7, 0.7)] as [(Double?, Double)] {
            if let setTau { try gdas.setValue("tau", setTau) }
            var st = RunState()
            st.step = 30; st.totalSteps = 60
            var replay = context.rng
            let noise = gumbelReplay(&replay, rowsIn)
            let logits = try Tensor.from(Array(rowsIn.joined()), shape: [3, 4], accountant: acc)
            let g = Graph(accountant: acc)
            let x = g.leaf(logits)
            let (w, _) = try gdas(g, x, state: st)
            try g.backward(w, gradient: try Tensor.from(dh, shape: [3, 4], accountant: acc))
            let analytic = try XCTUnwrap(g.gradient(of: x)).array
            for r in 0..<3 {
                let a = rowsIn[r].map(Double.init)
                let p = softP(a, noise[r], tau: expectedTau)
                // The forward's choice is the argmax of the perturbed logits.
                XCTAssertEqual(w.value[r * 4 + p.indices.max { p[$0] < p[$1] }!], 1, "row \(r): the sampled op is argmax p")
                // Finite differences of Σ_j dh_j p_j(α) with g fixed.
                for i in 0..<4 where a[i] > -.infinity {
                    let eps = 1e-5
                    var ap = a, am = a
                    ap[i] += eps; am[i] -= eps
                    let fp = zip(softP(ap, noise[r], tau: expectedTau), dh[(r * 4)...]).reduce(0) { $0 + $1.0 * Double($1.1) }
                    let fm = zip(softP(am, noise[r], tau: expectedTau), dh[(r * 4)...]).reduce(0) { $0 + $1.0 * Double($1.1) }
                    let numeric = (fp - fm) / (2 * eps)
                    XCTAssertEqual(Double(analytic[r * 4 + i]), numeric, accuracy: 1e-5 + 1e-3 * abs(numeric), "τ=\(expectedTau) dα[\(r), \(i)]")
                }
                if a.contains(-.infinity) { XCTAssertEqual(analytic[r * 4 + 3], 0, "a masked candidate gets no gradient") }
            }
            XCTAssertGreaterThan(analytic.map(abs).max()!, 1e-3)
        }
        XCTAssertThrowsError(try gdas.setValue("tau", 0)) { XCTAssertTrue("\($0)".contains("tau must be a finite number > 0 (got 0.0)"), "\($0)") }
        XCTAssertThrowsError(try gdas.setValue("lambda", 1)) { XCTAssertTrue("\($0)".contains("'tau'"), "\($0)") }
    }

    func testGdasGate_ScheduleMethodAndParameterErrors() throws {
        let schedule = try XCTUnwrap(Self.registry.methods(slot: "tau.schedule").first { $0.name == "gdas-linear" })
        XCTAssertEqual(try schedule.schedule(step: 0, total: 200), 10, accuracy: 1e-12)
        XCTAssertEqual(try schedule.schedule(step: 100, total: 200), 5.05, accuracy: 1e-12)
        XCTAssertEqual(try schedule.schedule(step: 200, total: 200), 0.1, accuracy: 1e-12)
        XCTAssertThrowsError(try gate("espalier.gate.gdas/1", HostContext(), rows: 1, cols: 2, settings: ["tau_min": "5", "tau_max": "2"])) {
            XCTAssertTrue("\($0)".contains("need 0 < tau_min <= tau_max (got tau_min=5.0, tau_max=2.0)"), "\($0)")
        }
    }

    // MARK: ProxylessNAS binary gate

    func testBinaryGate_TwoDistinctActive_OneChosen_ChosenFrequenciesMatchSamplingWithoutReplacement() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 21)
        let row: [Float] = [0.8, -.infinity, 0.1, -0.6, 0.4]
        let rows = 20_000
        let binary = try gate("espalier.gate.binary/1", context, rows: rows, cols: row.count)
        XCTAssertTrue(binary.isSampled && binary.isHard)
        let g = Graph(accountant: acc)
        let (w, active) = try g.noGrad { try binary(g, g.constant(try repeated(row, rows: rows, acc))) }
        let k = row.count
        var chosen = [Int](repeating: 0, count: k)
        for r in 0..<rows {
            let a = (0..<k).filter { active[r * k + $0] == 1 }
            XCTAssertEqual(a.count, 2, "row \(r): two candidates run")
            XCTAssertFalse(a.contains(1), "the masked candidate is never sampled")
            let ws = (0..<k).map { w.value[r * k + $0] }
            XCTAssertEqual(ws.reduce(0, +), 1)
            let c = ws.firstIndex(of: 1)!
            XCTAssertTrue(a.contains(c), "the chosen op is one of the two that run")
            chosen[c] += 1
        }
        // P(chosen = i) = Σ_j P(pair {i, j})·p_i/(p_i + p_j), P({i, j}) = p_i p_j/(1 − p_i) + p_j p_i/(1 − p_j).
        let p = softmax(row.map(Double.init))
        var expected = [Double](repeating: 0, count: k)
        for i in 0..<k {
            for j in 0..<k where j != i && p[j] > 0 {
                let pair: Double = p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j])
                expected[i] += pair * p[i] / (p[i] + p[j])
            }
        }
        XCTAssertEqual(expected.reduce(0, +), 1, accuracy: 1e-12)
        XCTAssertLessThan(chiSquared(chosen, expected), 18.5, "χ², 3 degrees of freedom (p ≈ 0.0003): \(chosen) vs \(expected)")
        // Evaluation: argmax α only.
        g.training = false
        let (we, ae) = try binary(g, g.constant(try repeated(row, rows: rows, acc)))
        XCTAssertEqual(we.value.array, Array(Array(repeating: [Float]([1, 0, 0, 0, 0]), count: rows).joined()))
        XCTAssertEqual(ae, Array(Array(repeating: [UInt8]([1, 0, 0, 0, 0]), count: rows).joined()))
    }

    func testBinaryGate_Gradient_MatchesTheProxylessFormula() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 8)
        // Row 0 has exactly two unmasked candidates, so the pair is {0, 2} whatever is drawn:
        //   p̂ = softmax(0.3, 1.1); dα_0 = dg_0 p̂_0(1 − p̂_0) − dg_2 p̂_2 p̂_0 = p̂_0 p̂_2 (dg_0 − dg_2), dα_2 = −dα_0.
        // Row 1 is a full row: the formula over whichever pair ran.
        let rowsIn: [[Float]] = [[0.3, -.infinity, 1.1, -.infinity], [0.2, -0.7, 0.5, 1.0]]
        let dg: [Float] = [2, 5, -1, 7, 0.6, -1.4, 0.9, 0.3]
        let binary = try gate("espalier.gate.binary/1", context, rows: 2, cols: 4)
        let logits = try Tensor.from(Array(rowsIn.joined()), shape: [2, 4], accountant: acc)
        let g = Graph(accountant: acc)
        let x = g.leaf(logits)
        let (w, active) = try binary(g, x)
        try g.backward(w, gradient: try Tensor.from(dg, shape: [2, 4], accountant: acc))
        let d = try XCTUnwrap(g.gradient(of: x)).array
        let p0 = 1 / (1 + exp(1.1 - 0.3)), p2 = 1 - p0
        let hand = p0 * p2 * (2 - (-1))   // = 0.6495…
        XCTAssertEqual(Double(d[0]), hand, accuracy: 1e-6)
        XCTAssertEqual(Double(d[2]), -hand, accuracy: 1e-6)
        XCTAssertEqual(d[1], 0); XCTAssertEqual(d[3], 0)
        XCTAssertEqual(Array(active[0..<4]), [1, 0, 1, 0])
        let pair = (0..<4).filter { active[4 + $0] == 1 }
        XCTAssertEqual(pair.count, 2)
        let a = rowsIn[1].map(Double.init)
        let z = exp(a[pair[0]]) + exp(a[pair[1]])
        let pHat = [exp(a[pair[0]]) / z, exp(a[pair[1]]) / z]
        for i in 0..<4 {
            var expected = 0.0
            if let ii = pair.firstIndex(of: i) {
                for jj in 0..<2 { expected += Double(dg[4 + pair[jj]]) * pHat[jj] * ((ii == jj ? 1 : 0) - pHat[ii]) }
            }
            XCTAssertEqual(Double(d[4 + i]), expected, accuracy: 1e-6, "dα[1, \(i)], pair \(pair)")
        }
    }

    // MARK: Expected-cost regularizer

    func regularizer(_ settings: [String: String], _ context: HostContext) throws -> PluginRegularizer {
        try PluginRegularizer(try Self.registry.require("espalier.regularizer.expected-cost/1", kind: .regularizer), context: context, settings: settings)
    }

    func testExpectedCost_ValueAndGradient_MatchFiniteDifferences_OnTheChosenCost() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc)
        let r = try regularizer(["lambda": "0.5", "ref": "40", "cost": "memory"], context)
        XCTAssertTrue(r.hasLoss && r.wants(.gateWeights) && !r.wants(.arch))
        let wn = try Tensor.from([0.2, 0.8, 0.5, 0.5], shape: [2, 2], accountant: acc)
        let wr = try Tensor.from([1, 0, 0.3, 0.7], shape: [2, 2], accountant: acc)
        let costs: [String: [Float]] = ["gate/normal/memory": [10, 30, 0, 20], "gate/reduce/memory": [5, 50, 8, 12],
                                        "gate/normal/flops": [1e6, 2e6, 0, 3e6], "gate/reduce/flops": [4e6, 1e6, 2e6, 2e6]]
        func targets(_ grads: [String: Tensor]) throws -> [RegularizerTarget] {
            try costs.keys.sorted().map { name in
                RegularizerTarget(kind: .gateWeights, name: name, values: [name.contains("normal") ? wn : wr], grads: [grads[name]],
                                  costs: [try Tensor.from(costs[name]!, shape: [2, 2], accountant: acc)])
            }
        }
        var grads: [String: Tensor] = [:]
        for name in costs.keys { grads[name] = try Tensor.zeros([2, 2], category: .gradients, accountant: acc) }
        // E = (0.2·10 + 0.8·30 + 0.5·0 + 0.5·20) + (1·5 + 0·50 + 0.3·8 + 0.7·12) = 36 + 15.8 = 51.8
        let value = try r.loss(try targets(grads))
        XCTAssertEqual(value, 0.5 * (51.8 - 40) / 40, accuracy: 1e-6)
        XCTAssertEqual(grads["gate/normal/flops"]!.array, [0, 0, 0, 0], "flops targets are not counted with cost=memory")
        // Finite differences in each memory weight.
        for name in ["gate/normal/memory", "gate/reduce/memory"] {
            let w = name.contains("normal") ? wn : wr
            for i in 0..<4 {
                let old = w[i], eps: Float = 1e-2
                w[i] = old + eps; let lp = try r.loss(try targets([:]))
                w[i] = old - eps; let lm = try r.loss(try targets([:]))
                w[i] = old
                XCTAssertEqual(Double(grads[name]![i]), (lp - lm) / Double(2 * eps), accuracy: 1e-5, "\(name)[\(i)]")
            }
        }
        // ref = 0: the first call's E is the reference (value 0), later calls measure against it.
        let f = try regularizer(["cost": "flops", "lambda": "1"], context)
        XCTAssertEqual(try f.loss(try targets([:])), 0, accuracy: 1e-12)
        wn[0] = 0; wn[1] = 1   // E_flops: 3.3e6 + 6.0e6 = 9.3e6 → 3.5e6 + 6.0e6
        XCTAssertEqual(try f.loss(try targets([:])), 0.2e6 / 9.3e6, accuracy: 1e-6)
        try f.setValue("lambda", 2)
        XCTAssertEqual(try f.loss(try targets([:])), 2 * 0.2e6 / 9.3e6, accuracy: 1e-6)
    }

    func testExpectedCost_ClearErrors() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc)
        XCTAssertThrowsError(try regularizer(["form": "mul"], context)) {
            XCTAssertTrue("\($0)".contains("form 'mul'") && "\($0)".contains("use form=add"), "\($0)")
        }
        XCTAssertThrowsError(try regularizer(["cost": "latency"], context)) { XCTAssertTrue("\($0)".contains("latency"), "\($0)") }
        let r = try regularizer([:], context)
        let w = try Tensor.from([1, 0], shape: [1, 2], accountant: acc)
        let onlyFlops = RegularizerTarget(kind: .gateWeights, name: "gate/normal/flops", values: [w], grads: [nil],
                                          costs: [try Tensor.from([3, 4], shape: [1, 2], accountant: acc)])
        XCTAssertThrowsError(try r.loss([onlyFlops])) { XCTAssertTrue("\($0)".contains("no gate-weight target ends in '/memory'"), "\($0)") }
        let zero = RegularizerTarget(kind: .gateWeights, name: "gate/normal/memory", values: [w], grads: [nil],
                                     costs: [try Tensor.from([0, 4], shape: [1, 2], accountant: acc)])
        XCTAssertThrowsError(try r.loss([zero])) { XCTAssertTrue("\($0)".contains("set ref (> 0)"), "\($0)") }
        XCTAssertThrowsError(try r.setValue("tau", 1)) { XCTAssertTrue("\($0)".contains("'lambda' and 'ref'"), "\($0)") }
    }
}
