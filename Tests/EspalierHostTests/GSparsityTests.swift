// The ProxSGD regularizer (espalier.regularizer.proxsgd/1) through the host adapter, on hand
// examples whose numbers are worked out in the comments: momentum v ← (1−ρ)v + ρg, b = x − v,
// block soft-thresholding with μ_g = μ/√|g| over all the parts of a group (a whole group exactly
// zero when ‖b‖ ≤ μ_g, shrunk by 1 − μ_g/‖b‖ otherwise), x ← x + lr(x̂ − x); μ_g = 0 for the
// "ungrouped" target; the momentum carried to the next step; the plain proximal form with
// owns_update=false; refusals of bad parameters. Also the strategy's description.

import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class GSparsityTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))
    let proxID = "espalier.regularizer.proxsgd/1"

    func prox(_ context: HostContext, _ settings: [String: String]) throws -> PluginRegularizer {
        XCTAssertEqual(Self.registry.failures.map(\.description), [])
        return try PluginRegularizer(try Self.registry.require(proxID, kind: .regularizer), context: context, settings: settings)
    }

    /// A target of parts with their gradients.
    func target(_ name: String, _ parts: [[Float]], grads: [[Float]], _ acc: MemoryAccountant) throws -> RegularizerTarget {
        RegularizerTarget(kind: .weightGroup, name: name,
                          values: try parts.map { try Tensor.from($0, shape: [$0.count], accountant: acc) },
                          grads: try grads.map { try Tensor.from($0, shape: [$0.count], accountant: acc) })
    }

    func floats(_ t: RegularizerTarget) -> [Float] { t.values.flatMap { v in (0..<v.count).map { v[$0] } } }

    func assertClose(_ a: [Float], _ b: [Float], _ message: String = "", file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, message, file: file, line: line)
        for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: 1e-6, "\(message): \(a) vs \(b)", file: file, line: line) }
    }

    func testProxSGD_HandExample_GroupShrunkWhenNormAboveMuG_ZeroedExactlyAtOrBelow() throws {
        let acc = MemoryAccountant()
        // Group of 4 weights in two parts, so μ_g = μ/√4 = μ/2. x = (3, 1 | 4, 0), g = (0, 1.25 | 0, 0).
        // ρ = 0.8: v = 0.8·g = (0, 1, 0, 0); b = x − v = (3, 0, 4, 0); ‖b‖ = 5.
        let x: [[Float]] = [[3, 1], [4, 0]], g: [[Float]] = [[0, 1.25], [0, 0]]

        // μ = 4 → μ_g = 2 < 5: x̂ = (1 − 2/5)·b = (1.8, 0, 2.4, 0); lr = 0.5: x + 0.5(x̂ − x) = (2.4, 0.5, 3.2, 0).
        let shrink = try prox(HostContext(accountant: acc), ["mu": "4", "lr": "0.5", "momentum": "0.8"])
        XCTAssertTrue(shrink.hasProximal && !shrink.hasLoss && shrink.wants(.weightGroup))
        let t1 = try target("group/normal/edge0/sep_conv_3x3", x, grads: g, acc)
        try shrink.proximal([t1], learningRate: 0.025)
        assertClose(floats(t1), [2.4, 0.5, 3.2, 0], "shrunk group")

        // μ = 10 → μ_g = 5 = ‖b‖: the whole group's x̂ is exactly 0; lr = 1 makes x = x̂.
        let zero = try prox(HostContext(accountant: acc), ["mu": "10", "lr": "1", "momentum": "0.8"])
        let t2 = try target("group/normal/edge0/sep_conv_3x3", x, grads: g, acc)
        try zero.proximal([t2], learningRate: 0.025)
        XCTAssertEqual(floats(t2), [0, 0, 0, 0], "a group with ‖b‖ ≤ μ_g is zeroed exactly")

        // Same μ = 10 with lr = 0.5: x + 0.5(0 − x) = x/2, every part.
        let half = try prox(HostContext(accountant: acc), ["mu": "10", "lr": "0.5", "momentum": "0.8"])
        let t3 = try target("group/normal/edge0/sep_conv_3x3", x, grads: g, acc)
        try half.proximal([t3], learningRate: 0.025)
        assertClose(floats(t3), [1.5, 0.5, 2, 0], "x̂ = 0, half a step towards it")

        // Just above the boundary (μ = 9.9 → μ_g = 4.95 < 5): not zeroed, x̂ = 0.01·b.
        let above = try prox(HostContext(accountant: acc), ["mu": "9.9", "lr": "1", "momentum": "0.8"])
        let t4 = try target("group/normal/edge0/sep_conv_3x3", x, grads: g, acc)
        try above.proximal([t4], learningRate: 0.025)
        assertClose(floats(t4), [0.03, 0, 0.04, 0], "just above μ_g")
    }

    func testProxSGD_NormalizationNone_UsesMuUnscaled() throws {
        let acc = MemoryAccountant()
        // μ_g = μ = 2 with normalization=none; b = (3, 0, 4, 0) as above: x̂ = 0.6·b; lr = 1.
        let r = try prox(HostContext(accountant: acc), ["mu": "2", "lr": "1", "normalization": "none"])
        let t = try target("group/reduce/edge4/dil_conv_3x3", [[3, 1], [4, 0]], grads: [[0, 1.25], [0, 0]], acc)
        try r.proximal([t], learningRate: 0.1)
        assertClose(floats(t), [1.8, 0, 2.4, 0])
    }

    func testProxSGD_UngroupedWeightsFollowMomentumStepWithoutRegularization_MomentumCarriesOver() throws {
        let acc = MemoryAccountant()
        let r = try prox(HostContext(accountant: acc), ["mu": "1000", "lr": "0.5", "momentum": "0.8"])
        // Step 1: x = (1, 2), g = (1.25, 0) → v = (1, 0), b = (0, 2), μ_g = 0 → x̂ = b; x = 0.5x + 0.5b = (0.5, 2).
        let t = try target("ungrouped", [[1, 2]], grads: [[1.25, 0]], acc)
        try r.proximal([t], learningRate: 0.025)
        assertClose(floats(t), [0.5, 2], "step 1")
        // Step 2 with g = 0: v = 0.2·(1, 0) = (0.2, 0); b = (0.3, 2); x = 0.5·(0.5, 2) + 0.5·(0.3, 2) = (0.4, 2).
        t.grads[0]!.fill(0)
        try r.proximal([t], learningRate: 0.025)
        assertClose(floats(t), [0.4, 2], "step 2 uses the carried momentum")
    }

    func testProxSGD_HostLearningRateWhenLrIsZero() throws {
        let acc = MemoryAccountant()
        let r = try prox(HostContext(accountant: acc), ["mu": "0", "lr": "0", "momentum": "1"])
        // ρ = 1: v = g = (1, 1); b = x − g = (1, 3); lr = host's 0.25: x = (2, 4) + 0.25((1, 3) − (2, 4)) = (1.75, 3.75).
        let t = try target("group/normal/edge1/sep_conv_3x3", [[2, 4]], grads: [[1, 1]], acc)
        try r.proximal([t], learningRate: 0.25)
        assertClose(floats(t), [1.75, 3.75])
    }

    func testProxSGD_PlainProximalFormAfterSGD() throws {
        let acc = MemoryAccountant()
        // owns_update=false: x ← max(0, 1 − lr·μ_g/‖x‖)·x with lr from the host. x = (3, 0 | 4, 0), μ = 4 → μ_g = 2;
        // lr = 0.5: κ = 1, ‖x‖ = 5 → 0.8·x = (2.4, 0, 3.2, 0). Gradients are ignored.
        let r = try prox(HostContext(accountant: acc), ["mu": "4", "owns_update": "false"])
        let t = try target("group/normal/edge0/sep_conv_3x3", [[3, 0], [4, 0]], grads: [[9, 9], [9, 9]], acc)
        try r.proximal([t], learningRate: 0.5)
        assertClose(floats(t), [2.4, 0, 3.2, 0])
        // lr = 10: κ = 20 ≥ ‖x‖ → zero.
        try r.proximal([t], learningRate: 10)
        XCTAssertEqual(floats(t), [0, 0, 0, 0])
        // The ungrouped target is left alone in this form (μ_g = 0).
        let u = try target("ungrouped", [[1, 2]], grads: [[1, 1]], acc)
        try r.proximal([u], learningRate: 0.5)
        XCTAssertEqual(floats(u), [1, 2])
    }

    func testProxSGD_SetMu_AndRefusals() throws {
        let acc = MemoryAccountant()
        let r = try prox(HostContext(accountant: acc), ["mu": "0", "lr": "1", "momentum": "1"])
        try r.setValue("mu", 10)   // now as the zeroing case: b = x − g = (3, 0, 4, 0), μ_g = 5
        let t = try target("group/normal/edge0/sep_conv_3x3", [[3, 1], [4, 0]], grads: [[0, 1], [0, 0]], acc)
        try r.proximal([t], learningRate: 0.1)
        XCTAssertEqual(floats(t), [0, 0, 0, 0])
        XCTAssertThrowsError(try r.setValue("mu", -1)) { XCTAssertTrue("\($0)".contains("mu"), "\($0)") }
        XCTAssertThrowsError(try r.setValue("lambda", 1)) { XCTAssertTrue("\($0)".contains("'mu'"), "\($0)") }
        XCTAssertThrowsError(try prox(HostContext(accountant: acc), ["mu": "-3"])) { XCTAssertTrue("\($0)".contains("mu"), "\($0)") }
        XCTAssertThrowsError(try prox(HostContext(accountant: acc), ["momentum": "0"])) { XCTAssertTrue("\($0)".contains("momentum"), "\($0)") }
        XCTAssertThrowsError(try prox(HostContext(accountant: acc), ["normalization": "cube"])) { XCTAssertTrue("\($0)".contains("normalization"), "\($0)") }
    }

    func testProxSGD_MomentumIsAccountedOptimizerState() throws {
        let acc = MemoryAccountant()
        let r = try prox(HostContext(accountant: acc), [:])
        let t = try target("group/normal/edge0/sep_conv_3x3", [[1, 2, 3], [4]], grads: [[0, 0, 0], [0]], acc)
        let before = acc.currentBytes(ownerPrefix: "").total
        try withExtendedLifetime(t) {   // release builds free the target's tensors after their last use
            try r.proximal([t], learningRate: 0.1)
            XCTAssertEqual(acc.currentBytes(ownerPrefix: "").total - before, 16, "v: one float per weight")
        }
    }

    func testGSparsityStrategy_NeedsNoArchParams_DescribesItsParameters() throws {
        let c = try Self.registry.require("espalier.strategy.gsparsity/1", kind: .strategy)
        XCTAssertTrue(c.form.contains("no architecture parameters"), c.form)
        let names = Set(c.params.map(\.name))
        XCTAssertTrue(names.isSuperset(of: ["scale_parameter_free", "threshold", "prune", "target_sparsity", "mu_start"]), "\(names)")
        XCTAssertEqual(c.params.first { $0.name == "threshold" }?.defaultValue, "1e-06")
        let p = try Self.registry.require(proxID, kind: .regularizer)
        XCTAssertEqual(Set(p.params.map(\.name)), ["mu", "lr", "momentum", "normalization", "owns_update"])
    }
}
