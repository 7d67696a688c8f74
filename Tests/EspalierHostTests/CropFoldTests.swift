// A crop that only convolutions on the im2col path read is folded into them (OpIR+Fusion.swift):
// the convolution reads the crop's window of the crop's input in place and the crop is never
// stored. Checked on DARTS's FactorizedReduce (skip_connect at stride 2: relu → crop(top 1,
// left 1) → 1×1 stride-2 conv), against the same op with fusion off (its naive reference): the
// output, every gradient and the running statistics bit for bit, the IR naming the fold, and
// the tape keeping exactly the crop's bytes less. A crop something else reads too is computed
// when it is read (a fixture op: y = conv2d(crop(x)) + crop(x)), with the same results.

import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class CropFoldTests: XCTestCase {
    func testFactorizedReduce_ReadsItsCropInPlace_BitForBitTheUnfusedOp_AndKeepsTheCropsBytesLess() throws {
        for affine in [false, true] {
            var results: [(y: [Float], dX: [Float], grads: [[Float]], stats: [[Float]], kept: Int, ir: OpIR)] = []
            for fuses in [false, true] {
                let acc = MemoryAccountant()
                let op = try OpIRTests.op("skip_connect", channels: 8, stride: 2, affine: affine, context: HostContext(accountant: acc, seed: 3))
                op.fuses = fuses
                for p in op.parameters { try p.ensureGrad() }
                let x = try randomTensor([3, 8, 10, 10], acc, seed: 5)
                let g = Graph(accountant: acc)
                g.training = true
                let before = acc.currentTotal
                let xv = g.leaf(x)
                let y = try op(g, xv)
                let kept = acc.currentTotal - before
                let dY = try randomTensor(y.shape, acc, seed: 9)
                try g.backward(y, gradient: dY)
                results.append((y.value.array, try XCTUnwrap(g.gradient(of: xv)).array, op.parameters.map { $0.grad!.array }, op.buffers.map { $0.array }, kept,
                                try op.currentIR()))
            }
            let (unfused, fused) = (results[0], results[1])
            let what = affine ? "affine" : "not affine"
            XCTAssertEqual(fused.y.map(\.bitPattern), unfused.y.map(\.bitPattern), "\(what): the output")
            XCTAssertEqual(fused.dX.map(\.bitPattern), unfused.dX.map(\.bitPattern), "\(what): the input's gradient")
            XCTAssertEqual(fused.grads.map { $0.map(\.bitPattern) }, unfused.grads.map { $0.map(\.bitPattern) }, "\(what): the parameters' gradients")
            XCTAssertEqual(fused.stats, unfused.stats, "\(what): the running statistics")
            // The crop (3 × 8 × 9 × 9 floats) is what the unfused tape keeps and the folded one does not.
            XCTAssertEqual(fused.kept, unfused.kept - 3 * 8 * 9 * 9 * MemoryLayout<Float>.size, "\(what): kept \(fused.kept) against \(unfused.kept)")
            let crop = try XCTUnwrap(fused.ir.nodes.firstIndex { $0.primitive == "crop" })
            XCTAssertEqual(fused.ir.foldedCrops(), [crop], "\(what)")
            XCTAssertEqual(fused.ir.nodes[crop].keptBytes, 0, "\(what): the folded crop keeps nothing")
            XCTAssertEqual(fused.ir.nodes.map(\.primitive), unfused.ir.nodes.map(\.primitive), "\(what): the same IR")
        }
    }

    /// c = crop(x, 1, 1), y = conv2d(c, w){3×3, padding 1} + c: the convolution reads the crop in
    /// place, the add computes it then. Same output and gradients as fusion off, bit for bit; the
    /// IR names no crop folded (one that is read otherwise is stored); the tape never keeps more.
    func testACropAnotherPrimitiveReadsToo_IsComputedWhenRead_WithTheSameResults() throws {
        let dir = try PluginFixtures.tempDir("crop-readers")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try PluginFixtures.build("libespalier-crop.so", in: dir, defines: ["FIX_CROP_READERS"])
        let registry = PluginLoader(context: HostContext()).load(PluginSearchPath(directories: [dir]))
        var results: [(y: [Float], dX: [Float], dW: [Float], kept: Int, ir: OpIR)] = []
        for fuses in [false, true] {
            let acc = MemoryAccountant()
            let op = try PluginOp(try registry.require("org.fixture.op.crop-readers/1", kind: .op), context: HostContext(accountant: acc, seed: 4),
                                  config: OpConfig(inChannels: 3, outChannels: 3), ownerPath: "e/crop")
            op.fuses = fuses
            for p in op.parameters { _ = try p.ensureGrad() }
            let g = Graph(accountant: acc)
            g.training = true
            let x = g.leaf(try randomTensor([2, 3, 6, 7], acc, seed: 11))
            let before = acc.currentTotal
            let y = try op(g, x)
            XCTAssertEqual(y.shape, [2, 3, 5, 6])
            let kept = acc.currentTotal - before
            try g.backward(y, gradient: try randomTensor(y.shape, acc, seed: 12))
            results.append((y.value.array, try XCTUnwrap(g.gradient(of: x)).array, try XCTUnwrap(op.parameters.first?.grad).array, kept,
                            try op.currentIR()))
        }
        let (unfused, fused) = (results[0], results[1])
        XCTAssertEqual(fused.y.map(\.bitPattern), unfused.y.map(\.bitPattern), "the output")
        XCTAssertEqual(fused.dX.map(\.bitPattern), unfused.dX.map(\.bitPattern), "the input's gradient")
        XCTAssertEqual(fused.dW.map(\.bitPattern), unfused.dW.map(\.bitPattern), "the weight's gradient")
        XCTAssertEqual(fused.ir.foldedCrops(), [], "the add reads the crop: it is stored")
        XCTAssertEqual(fused.ir.nodes.map(\.primitive), ["crop", "conv2d", "add"])
        XCTAssertLessThanOrEqual(fused.kept, unfused.kept)
    }
}
