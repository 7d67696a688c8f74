// ProxSGD's "whole group" rule decides on the norm of the whole group, all its parts together:
// a group of four parts whose every part's norm (1) is at or below μ_g (1.5) but whose group norm
// (2) is above it is shrunk, not zeroed, in both forms (ProxSGD's own update and the plain
// proximal step after the host's SGD). A rule that looked at one part (the last, the first, the
// largest) would zero it; one that summed the parts' norms (4) would shrink it by another factor.

import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class ProxSGDGroupNormTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    func prox(_ context: HostContext, _ settings: [String: String]) throws -> PluginRegularizer {
        XCTAssertEqual(Self.registry.failures.map(\.description), [])
        return try PluginRegularizer(try Self.registry.require("espalier.regularizer.proxsgd/1", kind: .regularizer), context: context, settings: settings)
    }

    /// One group of four one-weight parts x = (1 | 1 | 1 | 1), zero gradients: ‖part‖ = 1, ‖group‖ = 2.
    func group(_ acc: MemoryAccountant) throws -> RegularizerTarget {
        RegularizerTarget(kind: .weightGroup, name: "group/normal/edge0/sep_conv_3x3",
                          values: try (0..<4).map { _ in try Tensor.from([1], shape: [1], accountant: acc) },
                          grads: try (0..<4).map { _ in try Tensor.from([0], shape: [1], accountant: acc) })
    }

    func values(_ t: RegularizerTarget) -> [Float] { t.values.map { $0[0] } }

    func assertShrunkByAQuarter(_ t: RegularizerTarget, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let v = values(t)
        XCTAssertFalse(v.allSatisfy { $0 == 0 }, "\(what): zeroed, although the group norm 2 is above μ_g = 1.5 (only each part's norm 1 is below)",
                       file: file, line: line)
        for (i, x) in v.enumerated() {
            XCTAssertEqual(x, 0.25, accuracy: 1e-6, "\(what): part \(i) is (1 − 1.5/2)·1 = 0.25 (got \(v))", file: file, line: line)
        }
    }

    func testProxSGDUpdate_DecidesOnTheWholeGroupsNorm() throws {
        let acc = MemoryAccountant()
        // |g| = 4 → μ_g = μ/2 = 1.5. v = 0 (zero gradients), b = x, ‖b‖ = 2 > 1.5: x̂ = (1 − 1.5/2)·b = 0.25·b; lr = 1: x = x̂.
        let r = try prox(HostContext(accountant: acc), ["mu": "3", "lr": "1", "momentum": "0.5"])
        let t = try group(acc)
        try r.proximal([t], learningRate: 0.025)
        assertShrunkByAQuarter(t, "ProxSGD update")
        // Control: at μ_g = 2 = ‖b‖ the whole group is zeroed exactly.
        let zero = try prox(HostContext(accountant: acc), ["mu": "4", "lr": "1", "momentum": "0.5"])
        let t2 = try group(acc)
        try zero.proximal([t2], learningRate: 0.025)
        XCTAssertEqual(values(t2), [0, 0, 0, 0], "‖group‖ = μ_g: zeroed")
    }

    func testPlainProximalForm_DecidesOnTheWholeGroupsNorm() throws {
        let acc = MemoryAccountant()
        // owns_update=false: κ = lr·μ_g = 1·1.5 < ‖x‖ = 2: x ← (1 − 1.5/2)·x = 0.25·x.
        let r = try prox(HostContext(accountant: acc), ["mu": "3", "owns_update": "false"])
        let t = try group(acc)
        try r.proximal([t], learningRate: 1)
        assertShrunkByAQuarter(t, "plain proximal step")
        // Control: κ = 2·1.5 = 3 ≥ ‖x‖ zeroes the group.
        let t2 = try group(acc)
        try r.proximal([t2], learningRate: 2)
        XCTAssertEqual(values(t2), [0, 0, 0, 0], "κ above ‖group‖: zeroed")
    }
}
