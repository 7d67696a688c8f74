// Fusion chosen from the op IR (OpIR+Fusion.swift): which units every built-in composed op has
// (found by primitives, attributes and shapes, so MergeNAS's op, another plugin's, is found too),
// and that a fused build gives the unfused build's output, running statistics and gradients, with
// the same IR and one tape node per unit.

import CEspalierSDK
import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class FusionTests: XCTestCase {
    /// Fused units (their node indices in the IR) of each composed op at 2×8×16×16.
    static let units: [String: [[Int]]] = [
        "none": [], "max_pool_3x3": [], "avg_pool_3x3": [], "skip_connect": [],
        "sep_conv_3x3": [[0, 1, 2], [3, 4, 5]], "sep_conv_5x5": [[0, 1, 2], [3, 4, 5]],
        "dil_conv_3x3": [[0, 1, 2]], "dil_conv_5x5": [[0, 1, 2]],
        "figs_sep_conv_3x3": [[0, 1, 2], [4, 5, 6]], "figs_dil_conv_3x3": [[0, 1, 2]],
        "mergenas_conv": [[10, 11, 12]],   // relu, then conv2d (depthwise, its kernel a sum of masks) → conv2d → batch_norm
    ]

    func testUnits_OfEveryBuiltInComposedOp_FoundByPrimitivesAndShapes() throws {
        for (name, want) in Self.units.sorted(by: { $0.key < $1.key }) {
            for s in [1, 2] {
                let ir = try OpIRTests.op(name, stride: s).ir(inputShape: [2, 8, 16, 16])
                XCTAssertEqual(ir.separableUnits().map(\.nodes), want, "\(name) stride \(s)")
            }
        }
        // `plugins describe --graph` names them: sep_conv's two units, none for a pool.
        let sep = try OpIRTests.op("sep_conv_3x3").ir(inputShape: [2, 8, 16, 16]).text
        XCTAssertTrue(sep.contains("fused: %0 → %1 → %2  (depthwise → pointwise → batch norm, one op)") && sep.contains("fused: %3 → %4 → %5"), sep)
        XCTAssertFalse(try OpIRTests.op("max_pool_3x3").ir(inputShape: [2, 8, 16, 16]).text.contains("fused:"))
        // The evaluation network (affine batch norm) has none: its BN keeps γ and β.
        XCTAssertEqual(try OpIRTests.op("sep_conv_3x3", affine: true).ir(inputShape: [2, 8, 16, 16]).separableUnits(), [])
    }

    func testFusedBuild_GivesTheUnfusedBuild_OutputStatisticsAndGradients() throws {
        // sep_conv_3x3 with an affine batch norm is no unit: its pending convolutions are computed
        // one by one when the batch norm reads them, as the unfused build computes them.
        for (name, affine) in [("sep_conv_5x5", false), ("dil_conv_3x3", false), ("mergenas_conv", false), ("sep_conv_3x3", true)] { for s in [1, 2] {
            let acc = MemoryAccountant()
            let context = HostContext(accountant: acc, seed: 3)
            let op = try OpIRTests.op(name, channels: 8, stride: s, affine: affine, context: context)
            let x = try randomTensor([3, 8, 9, 9], acc, seed: 5)
            var runs: [[[Float]]] = []
            var tapes: [Int] = []
            for fuses in [false, true, true] {   // the second fused build is checked against the first's IR
                op.fuses = fuses
                for p in op.parameters { p.zeroGrad() }
                let buffersBefore = op.buffers.map { $0.array }
                let g = Graph(accountant: acc)
                let xv = g.leaf(try x.copy())
                let y = try op(g, xv)
                tapes.append(g.tapeLength)
                // The batch statistics each run moved the running ones towards (momentum 0.1).
                let statistics = zip(buffersBefore, op.buffers).map { b, a in zip(a.array, b).map { ($0 - 0.9 * $1) / 0.1 } }
                try g.backward(y, gradient: try randomTensor(y.shape, acc, seed: 6))
                runs.append([y.value.array, g.gradient(of: xv)!.array] + statistics + op.parameters.map { $0.grad?.array ?? [] })
            }
            // Each unit's three tape nodes (depthwise, pointwise, batch norm) are one; the fused builds
            // were checked against the unfused build's IR (a build that differs is refused).
            XCTAssertEqual(tapes[0] - tapes[1], affine ? 0 : 2 * Self.units[name]!.count, "\(name) stride \(s): fused units are one tape node each")
            for i in 0..<runs[0].count {
                assertClose(runs[1][i], runs[0][i], tol: 5e-4, "\(name) stride \(s): value #\(i) fused vs unfused")
                assertClose(runs[2][i], runs[1][i], tol: 1e-5, "\(name) stride \(s): value #\(i), two fused builds")
            }
        } }
    }
}
