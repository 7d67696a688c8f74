// Recomputed segments (Graph.recomputed): the same gradients, bit for bit, as the stored path —
// with dropout (the same draws), training-mode batch norm (the running statistics move once), a
// ReLU of an input shared with a consumer outside the segment, and an input read directly by
// another consumer; fewer bytes held at the end of the forward; a dry run of the recomputing step
// allocates exactly as the real one; the measures a planner reads.

import EspalierCore
import EspalierTestSupport
import XCTest

final class RecomputeTests: XCTestCase {
    /// What one step of the test network leaves behind: every gradient, the running statistics,
    /// the graph's generator, and the bytes held when the forward ended.
    struct Outcome: Equatable {
        var gradients: [[Float]]
        var inputGradient: [Float]
        var running: [[Float]]
        var rng: RNG
        var heldAfterForward: Int
        var peak: Int
    }

    /// h (leaf) → segment: relu(h) → conv 3×3 → BN (running) → dropout 0.3 → relu → conv 3×3,
    /// summed with the outside branch relu(h) → conv 1×1 and h itself; loss = mean.
    func step(recompute: Bool, mode: MemoryAccountant.Mode = .real, measures: Bool = false) throws -> (Outcome, Graph) {
        let acc = MemoryAccountant(mode: mode)
        let g = Graph(accountant: acc, seed: 9)
        if measures { g.segmentMeasures = [:] }
        func param(_ name: String, _ shape: [Int], seed: UInt64) throws -> Parameter {
            let t = try Tensor(shape: shape, category: .parameters, accountant: acc)
            if !acc.isDryRun { var r = RNG(seed: seed); t.fillUniform(bound: 0.5, rng: &r) }
            return Parameter(name: name, value: t)
        }
        let w1 = try param("w1", [4, 4, 3, 3], seed: 1), w2 = try param("w2", [4, 4, 3, 3], seed: 2), w3 = try param("w3", [4, 4, 1, 1], seed: 3)
        let gamma = try param("gamma", [4], seed: 4), beta = try param("beta", [4], seed: 5)
        let rm = try Tensor.zeros([4], category: .parameters, accountant: acc), rv = try Tensor.filled([4], value: 1, category: .parameters, accountant: acc)
        let params = [w1, w2, w3, gamma, beta]
        for p in params { try p.ensureGrad() }
        let x = try Tensor(shape: [3, 4, 6, 6], category: .data, accountant: acc)
        if !acc.isDryRun { var r = RNG(seed: 11); x.fillUniform(bound: 1, rng: &r) }
        let h = g.leaf(x)
        acc.resetPeak()
        func segment() throws -> Variable {
            var y = try g.conv2d(try g.relu(h), g.param(w1), padding: 1)
            y = try g.batchNorm(y, gamma: g.param(gamma), beta: g.param(beta), runningMean: rm, runningVar: rv)
            y = try g.dropout(y, p: 0.3)
            return try g.conv2d(try g.relu(y), g.param(w2), padding: 1)
        }
        let inner = recompute ? try g.recomputed("segment", inputs: [h], segment) : try segment()
        let outside = try g.conv2d(try g.relu(h), g.param(w3))
        let loss = try g.mean(try g.add(try g.add(inner, outside), h))
        let held = acc.currentTotal
        try g.backward(loss)
        let outcome = Outcome(gradients: params.map { $0.grad!.array }, inputGradient: g.gradient(of: h)?.array ?? [],
                              running: [rm.array, rv.array], rng: g.rng, heldAfterForward: held, peak: acc.peakTotal)
        XCTAssertNil(acc.invariantViolation())
        return (outcome, g)
    }

    func testRecomputedSegment_GivesTheStoredPathsGradientsBitForBit_AndHoldsLess() throws {
        let (stored, _) = try step(recompute: false)
        let (again, _) = try step(recompute: true)
        XCTAssertEqual(again.gradients, stored.gradients, "parameter gradients")
        XCTAssertEqual(again.inputGradient, stored.inputGradient, "the input's gradient (a shared ReLU, a direct use)")
        XCTAssertEqual(again.running, stored.running, "batch norm's running statistics moved once")
        XCTAssertEqual(again.rng, stored.rng, "the generator ends where the stored path leaves it")
        XCTAssertNotEqual(stored.running[0], [0, 0, 0, 0], "the running mean moved at all")
        XCTAssertLessThan(again.heldAfterForward, stored.heldAfterForward, "the segment's activations are gone after the forward")
    }

    func testRecomputingStep_DryRunAllocatesAsTheRealOne() throws {
        let (real, _) = try step(recompute: true)
        let (dry, _) = try step(recompute: true, mode: .dryRun)
        XCTAssertEqual(dry.peak, real.peak)
        XCTAssertEqual(dry.heldAfterForward, real.heldAfterForward)
    }

    /// The measure a planner reads: the bytes the segment's forward kept when it ended (what
    /// recomputing frees) and its forward FLOPs (two 3×3 convolutions dominate).
    func testSegmentMeasure_CountsDroppedBytesAndForwardFLOPs() throws {
        let (stored, _) = try step(recompute: false)
        let (again, g) = try step(recompute: true, measures: true)
        let m = try XCTUnwrap(g.segmentMeasures?["segment"])
        XCTAssertEqual(m.droppedBytes, stored.heldAfterForward - again.heldAfterForward)
        let convFlops = 2 * (2 * 3 * 4 * 36 * 4 * 9)
        XCTAssertGreaterThanOrEqual(m.flops, convFlops)
        XCTAssertLessThan(m.flops, 2 * convFlops)
    }

    /// Without recording (evaluation) the body simply runs, and nothing is measured.
    func testRecomputed_WithoutRecording_JustRunsTheBody() throws {
        let acc = MemoryAccountant()
        let g = Graph(accountant: acc)
        g.segmentMeasures = [:]
        let x = g.constant(try Tensor.filled([2, 2], value: -1, category: .data, accountant: acc))
        let y = try g.noGrad { try g.recomputed("s", inputs: [x]) { try g.relu(x) } }
        XCTAssertEqual(y.value.array, [0, 0, 0, 0])
        XCTAssertEqual(g.segmentMeasures ?? [:], [:])
        XCTAssertEqual(g.tapeLength, 0)
    }
}
