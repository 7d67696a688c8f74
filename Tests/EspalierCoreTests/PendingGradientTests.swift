// Gradients handed on unwritten (Graph's pending gradients), each checked bit for bit against the
// written path, for the memory it no longer takes, and against finite differences where a pending
// gradient meets a second one:
//   scaled      a weighted sum's terms get w·dY with the weight pending (accumulateScaled): batch
//               norm and the fused separable unit multiply as they read dY; everything else gets
//               w·dY added in one pass;
//   batch norm  a batch norm (no affine map, batch statistics) over a pool's output leaves its
//               input gradient to the pool's backward, which makes each plane as it reads it;
//   sums        a weighted sum hands each batch-norm term (and the fused unit) the channel sums of
//               its gradient, made in the pass that reads dY and the terms for w's gradient anyway:
//               the batch norm's own sums pass is skipped, its results the same bits.

import EspalierCore
import EspalierTestSupport
import XCTest

final class PendingGradientTests: XCTestCase {
    static let shape = [3, 4, 6, 5]

    /// The terms: the fused unit, batch norm, batch norm in ghost groups, and a leaf read directly
    /// (an identity term, which takes no scaled gradient).
    private func term(_ k: Int, _ g: Graph, _ x: Variable, _ wd: Variable, _ wp: Variable, _ acc: MemoryAccountant) throws -> Variable {
        let c = Self.shape[1]
        let rm = try Tensor.zeros([c], category: .activations, accountant: acc), rv = try Tensor.filled([c], value: 1, category: .activations, accountant: acc)
        switch k {
        case 0: return try g.fusedSeparableUnit(x, depthwise: wd, pointwise: wp, stride: 1, padding: 1, dilation: 1, reluInput: true,
                                                runningMean: rm, runningVar: rv, momentum: 0.1, eps: 1e-5)
        case 1: return try g.batchNorm(x, gamma: nil, beta: nil, runningMean: rm, runningVar: rv)
        case 2:
            g.batchNormGroups = 3
            defer { g.batchNormGroups = 1 }
            return try g.batchNorm(x, gamma: nil, beta: nil, runningMean: nil, runningVar: nil)
        default: return x
        }
    }

    func testWeightedSum_EachTermsGradient_IsBitForBitTheOneFromAScaledCopyOfDY() throws {
        let acc = MemoryAccountant()
        let c = Self.shape[1], terms = 4
        let xs = try (0..<terms).map { try randomTensor(Self.shape, acc, seed: UInt64(1 + $0)) }
        let wd = try randomTensor([c, 1, 3, 3], acc, seed: 10), wp = try randomTensor([c, c, 1, 1], acc, seed: 11)
        let w = try randomTensor([terms + 2], acc, seed: 12)
        let r = try randomTensor(Self.shape, acc, seed: 13)
        let indices = [5, 0, 3, 1]

        // One graph: Σ w[indices[k]]·term_k, backward from r.
        let g = Graph(accountant: acc)
        let vx = try xs.map { g.leaf(try $0.copy()) }
        let vwd = g.leaf(try wd.copy()), vwp = g.leaf(try wp.copy()), vw = g.leaf(try w.copy())
        XCTAssertTrue(g.fusesSeparableUnit(depthwise: ConvGeometry(n: 3, cIn: c, h: 6, w: 5, cOut: c, kh: 3, kw: 3, padding: 1, groups: c),
                                           pointwise: ConvGeometry(n: 3, cIn: c, h: 6, w: 5, cOut: c, kh: 1, kw: 1), reluInput: true))
        let ts = try (0..<terms).map { try term($0, g, vx[$0], vwd, vwp, acc) }
        let y = try g.weightedSum(ts, weights: vw, indices: indices)
        try g.backward(y, gradient: try r.copy())

        // Each term alone, backward from a scaled copy of r: the floats the weighted sum wrote before.
        for k in 0..<terms {
            let gk = Graph(accountant: acc)
            let ux = gk.leaf(try xs[k].copy()), uwd = gk.leaf(try wd.copy()), uwp = gk.leaf(try wp.copy())
            let t = try term(k, gk, ux, uwd, uwp, acc)
            let scaled = try Tensor(shape: Self.shape, category: .activationGradients, accountant: acc)
            Kernels.scale(r.ptr, w[indices[k]], scaled.ptr, count: r.count)
            if k == terms - 1 {
                XCTAssertEqual(g.gradient(of: vx[k])!.array, scaled.array, "the identity term's gradient is w·dY")
                continue
            }
            try gk.backward(t, gradient: scaled)
            XCTAssertEqual(g.gradient(of: vx[k])!.array, gk.gradient(of: ux)!.array, "term \(k): dx")
            if k == 0 {
                XCTAssertEqual(g.gradient(of: vwd)!.array, gk.gradient(of: uwd)!.array, "the fused unit's depthwise weight gradient")
                XCTAssertEqual(g.gradient(of: vwp)!.array, gk.gradient(of: uwp)!.array, "the fused unit's pointwise weight gradient")
            }
        }
        // The weights' gradient is ⟨dY, term⟩ (summed channel by channel, in the pass that makes the
        // batch-norm terms' channel sums: the order of a Double sum, not its value, differs).
        let dW = g.gradient(of: vw)!
        for (k, i) in indices.enumerated() {
            let exact = (0..<r.count).reduce(0.0) { $0 + Double(r[$1]) * Double(ts[k].value[$1]) }
            XCTAssertEqual(Double(dW[i]), exact, accuracy: 1e-5 * max(1, abs(exact)), "dw[\(i)]")
        }
    }

    /// Batch-norm terms of parameters: while the terms run backward, only one gradient of the
    /// terms' size is alive at a time beside dY (each batch norm's dX, added into its parameter).
    /// Before, the weighted sum wrote a scaled copy of dY per term first: four more.
    func testWeightedSum_WritesNoScaledCopyOfItsGradient() throws {
        let acc = MemoryAccountant()
        let c = Self.shape[1], terms = 4, size = Self.shape.reduce(1, *) * MemoryLayout<Float>.size
        let g = Graph(accountant: acc)
        let ps = try (0..<terms).map { try parameterWithGradient("x\($0)", Self.shape, acc, seed: UInt64($0)) }
        let w = g.leaf(try randomTensor([terms], acc, seed: 9))
        let ts = try ps.map { try g.batchNorm(g.param($0), gamma: nil, beta: nil, runningMean: nil, runningVar: nil) }
        let y = try g.weightedSum(ts, weights: w)
        let dY = try randomTensor(Self.shape, acc, seed: 10)
        acc.resetPeak()
        let before = acc.currentTotal
        try g.backward(y, gradient: dY)
        let grown = acc.peakTotal - before
        XCTAssertLessThan(grown, 2 * size, "backward took \(grown) bytes more at its peak for terms of \(size) bytes each (channels \(c))")
    }

    /// batchNorm(pool(x)) for max and average pools, stride 1 and 2, with a mixing weight pending
    /// on top: x's gradient is bit for bit the batch norm's written dX through the pool's backward.
    func testBatchNormOverAPool_LeavesItsInputGradientToThePool_BitForBit() throws {
        let acc = MemoryAccountant()
        for (k, (pool, stride)) in [("max", 1), ("max", 2), ("avg", 1), ("avg", 2)].enumerated() {
            let x = try randomTensor([3, 4, 7, 9], acc, seed: UInt64(k))
            let w = try randomTensor([2], acc, seed: 20)
            let g = Graph(accountant: acc)
            let vx = g.leaf(try x.copy()), vw = g.leaf(try w.copy())
            func pooled(_ g: Graph, _ v: Variable) throws -> Variable {
                pool == "max" ? try g.maxPool2d(v, kernel: 3, stride: stride, padding: 1) : try g.avgPool2d(v, kernel: 3, stride: stride, padding: 1)
            }
            let p = try pooled(g, vx)
            let b = try g.batchNorm(p, gamma: nil, beta: nil, runningMean: nil, runningVar: nil)
            let y = try g.weightedSum([b, b], weights: vw)     // two scaled gradients: the first pending, the second adding
            let r = try randomTensor(y.shape, acc, seed: 30)
            try g.backward(y, gradient: try r.copy())

            // Written: w0·r + w1·r, then batch norm's dX in full, then the pool's backward from it.
            let dB = try Tensor(shape: y.shape, category: .data, accountant: acc)
            for i in 0..<r.count { dB[i] = w[0] * r[i] }
            for i in 0..<r.count { dB[i] = dB[i] + w[1] * r[i] }
            let gp = PoolGeometry(n: 3, c: 4, h: 7, w: 9, k: 3, stride: stride, padding: 1)
            let pv = try Tensor(shape: gp.outputShape, category: .data, accountant: acc)
            if pool == "max" { Kernels.maxPool2dForward(gp, x: x.ptr, y: pv.ptr) } else { Kernels.avgPool2dForward(gp, countIncludePad: false, x: x.ptr, y: pv.ptr) }
            let c = 4, hw = gp.hOut * gp.wOut
            let mean = try Tensor(shape: [c], category: .data, accountant: acc), invStd = try Tensor(shape: [c], category: .data, accountant: acc)
            Kernels.batchNormStatistics(pv.ptr, n: 3, c: c, hw: hw, mean: mean.ptr, variance: invStd.ptr)
            for i in 0..<c { invStd[i] = 1 / (invStd[i] + 1e-5).squareRoot() }
            let xhat = try Tensor(shape: gp.outputShape, category: .data, accountant: acc), dZ = try Tensor(shape: gp.outputShape, category: .data, accountant: acc)
            Kernels.batchNormApply(pv.ptr, n: 3, c: c, hw: hw, mean: mean.ptr, invStd: invStd.ptr, gamma: nil, beta: nil, y: xhat.ptr)
            XCTAssertEqual(xhat.array, b.value.array, "\(pool) stride \(stride): the forward")
            Kernels.batchNormBackward(xhat.ptr, dY: dB.ptr, n: 3, c: c, hw: hw, mean: mean.ptr, invStd: invStd.ptr, gamma: nil, batchStatistics: true,
                                      dX: dZ.ptr, dGamma: nil, dBeta: nil, normalizedInput: true)
            let dX = try Tensor(shape: x.shape, category: .data, accountant: acc)
            if pool == "max" { Kernels.maxPool2dBackward(gp, x: x.ptr, dY: dZ.ptr, dX: dX.ptr) }
            else { Kernels.avgPool2dBackward(gp, countIncludePad: false, dY: dZ.ptr, dX: dX.ptr) }
            XCTAssertEqual(g.gradient(of: vx)!.array, dX.array, "\(pool) stride \(stride): dx")
        }
    }

    /// The batch norm over a pool writes no input gradient: while they run backward into a
    /// parameter, nothing of the pool output's size is allocated. Before, the batch norm's dX was.
    func testBatchNormOverAPool_WritesNoInputGradient() throws {
        let acc = MemoryAccountant()
        let shape = [4, 8, 12, 12], size = shape.reduce(1, *) * MemoryLayout<Float>.size
        let g = Graph(accountant: acc)
        let p = try parameterWithGradient("x", shape, acc, seed: 1)
        let b = try g.batchNorm(try g.maxPool2d(g.param(p), kernel: 3, stride: 1, padding: 1), gamma: nil, beta: nil, runningMean: nil, runningVar: nil)
        let dY = try randomTensor(shape, acc, seed: 2)
        acc.resetPeak()
        let before = acc.currentTotal
        try g.backward(b, gradient: dY)
        let grown = acc.peakTotal - before
        XCTAssertLessThan(grown, size / 4, "backward took \(grown) bytes more at its peak; the pool's output is \(size) bytes")
    }

    /// A term whose value is read again elsewhere: its gradient is first held with the weight
    /// pending, then the second gradient writes it out (accumulationTarget). Also `scale(by:)` and
    /// `scale(byElement:of:)`, which hand their gradient on the same way.
    func testScaledGradient_MeetingASecondGradient_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([2, 3, 4, 4], acc, seed: 1), z = try randomTensor([2, 3, 4, 4], acc, seed: 2)
        let w = try randomTensor([3], acc, seed: 3)
        try GradCheck(eps: 5e-3, rtol: 3e-2, atol: 3e-3).check("scaled then plain", inputs: [x, z, w]) { g, v in
            let b = try g.batchNorm(v[0], gamma: nil, beta: nil, runningMean: nil, runningVar: nil)
            // Recorded first, so they run backward after the sum: a plain gradient (add) meets the
            // pending one, then a scaled one (scale) meets the written-out sum.
            let other = try g.add(b, try g.scale(b, by: -1.5))
            let s = try g.weightedSum([b, v[1]], weights: v[2], indices: [0, 1])
            let e = try g.scale(try g.batchNorm(v[1], gamma: nil, beta: nil, runningMean: nil, runningVar: nil), byElement: 2, of: v[2])
            return try g.add(try g.add(s, other), try g.scale(e, by: 0.5))
        }
    }

    // MARK: channel sums handed over with a gradient

    /// The kernel: each term's channel sums are, bit for bit, the sums batch norm's backward makes
    /// in its own pass over x̂ = x_k and s_k·dY (dBeta, dGamma through both routes), on planes with
    /// and without vector tails, one group of three terms and three groups (the last one short), on
    /// one core's channel range and split across the cores; w's gradient is ⟨dY, x_k⟩. And batch
    /// norm's backward takes handed sums instead of making its own: sums that differ show up in
    /// dBeta and dX.
    func testWeightedSumChannelSums_AreTheBatchNormsOwnSums_BitForBit() throws {
        let acc = MemoryAccountant()
        for (k, (shape, termCount)) in [([3, 4, 7, 9], 3), ([2, 5, 8, 8], 3), ([4, 3, 1, 1], 3), ([2, 16, 14, 14], 3),
                                        ([8, 17, 14, 14], 7), ([3, 5, 7, 9], 7)].enumerated() {
            let n = shape[0], c = shape[1], hw = shape[2] * shape[3], count = shape.reduce(1, *)
            let dY = try randomTensor(shape, acc, seed: UInt64(40 + k))
            let xs = try (0..<termCount).map { try randomTensor(shape, acc, seed: UInt64(50 + 7 * k + $0)) }
            let scales: [Float] = Array([0.37, 1, -2.5, 0.8, 1.7, -0.3, 2.2].prefix(termCount))
            let taking = termCount == 3 ? [0, 2] : [0, 2, 3, 5, 6]
            let invStd = try Tensor.filled([c], value: 1.3, category: .data, accountant: acc)
            let mean = try Tensor.zeros([c], category: .data, accountant: acc)
            let sumsBuffer = UnsafeMutablePointer<Double>.allocate(capacity: termCount * 2 * c)
            defer { sumsBuffer.deallocate() }
            sumsBuffer.update(repeating: .nan, count: termCount * 2 * c)
            let sums = (0..<termCount).map { sumsBuffer + $0 * 2 * c }
            var dots = [Double](repeating: .nan, count: termCount)
            Kernels.weightedSumChannelSums(dY.ptr, xs.map { UnsafePointer($0.ptr) }, scales: scales,
                                           sums: (0..<termCount).map { taking.contains($0) ? sums[$0] : nil },
                                           dots: &dots, n: n, c: c, hw: hw)
            XCTAssertTrue(sums[1].pointee.isNaN, "no sums asked for term 1")
            for j in taking {
                let own = try Tensor.zeros([2 * c], category: .data, accountant: acc), handed = try Tensor.zeros([2 * c], category: .data, accountant: acc)
                Kernels.batchNormBackward(xs[j].ptr, dY: dY.ptr, dYScale: scales[j], n: n, c: c, hw: hw, mean: mean.ptr, invStd: invStd.ptr, gamma: nil,
                                          batchStatistics: true, dX: nil, dGamma: own.ptr + c, dBeta: own.ptr, normalizedInput: true)
                Kernels.batchNormBackward(xs[j].ptr, dY: dY.ptr, dYScale: scales[j], n: n, c: c, hw: hw, mean: mean.ptr, invStd: invStd.ptr, gamma: nil,
                                          batchStatistics: true, dX: nil, dGamma: handed.ptr + c, dBeta: handed.ptr, normalizedInput: true,
                                          handedSums: sums[j])
                XCTAssertEqual(handed.array.map(\.bitPattern), own.array.map(\.bitPattern), "\(shape) term \(j): the handed sums are batch norm's own")
            }
            for j in 0..<termCount {
                // Float lanes within each plane: the error scales with Σ |dY·x|, not with the sum.
                let exact = (0..<count).reduce(0.0) { $0 + Double(dY[$1]) * Double(xs[j][$1]) }
                let magnitude = (0..<count).reduce(0.0) { $0 + abs(Double(dY[$1]) * Double(xs[j][$1])) }
                XCTAssertEqual(dots[j], exact, accuracy: 1e-6 * max(1, magnitude), "\(shape) term \(j): ⟨dY, x⟩")
            }

            // Handed sums that are not the pass's: batch norm uses them (its own pass does not run).
            let other = UnsafeMutablePointer<Double>.allocate(capacity: 2 * c)
            defer { other.deallocate() }
            for i in 0..<(2 * c) { other[i] = sums[0][i] + 0.25 }
            let dBeta = try Tensor.zeros([c], category: .data, accountant: acc), dGamma = try Tensor.zeros([c], category: .data, accountant: acc)
            let dX = try Tensor(shape: shape, category: .data, accountant: acc), dXOwn = try Tensor(shape: shape, category: .data, accountant: acc)
            Kernels.batchNormBackward(xs[0].ptr, dY: dY.ptr, dYScale: scales[0], n: n, c: c, hw: hw, mean: mean.ptr, invStd: invStd.ptr, gamma: nil,
                                      batchStatistics: true, dX: dX.ptr, dGamma: dGamma.ptr, dBeta: dBeta.ptr, normalizedInput: true, handedSums: other)
            Kernels.batchNormBackward(xs[0].ptr, dY: dY.ptr, dYScale: scales[0], n: n, c: c, hw: hw, mean: mean.ptr, invStd: invStd.ptr, gamma: nil,
                                      batchStatistics: true, dX: dXOwn.ptr, dGamma: nil, dBeta: nil, normalizedInput: true)
            XCTAssertEqual(dBeta.array, (0..<c).map { Float(other[$0]) }, "\(shape): dBeta from the handed sums")
            XCTAssertNotEqual(dX.array, dXOwn.array, "\(shape): dX from the handed sums")
        }
    }

    /// The graph: an op recorded reading `.channelSums` gets its gradient's channel sums from a
    /// weighted sum whose only gradient for it that is; not where a second gradient meets the first
    /// (in either order), nor where the graph hands none over (`handsOverChannelSums` off).
    func testChannelSums_ComeOnlyWithAWholeGradient() throws {
        let acc = MemoryAccountant()
        let shape = [2, 3, 5, 5], c = 3, hw = 25
        let x = try randomTensor(shape, acc, seed: 60), r = try randomTensor(shape, acc, seed: 61)
        let w = try randomTensor([2], acc, seed: 62)
        for (name, second, handsOver) in [("alone", 0, true), ("another gradient after", 1, true), ("another gradient before", 2, true),
                                          ("hand-over off", 0, false)] {
            let g = Graph(accountant: acc)
            g.handsOverChannelSums = handsOver
            let vx = g.leaf(try x.copy()), vw = g.leaf(try w.copy())
            var seen: (sums: [Double]?, scale: Float)? = nil
            let probe = g.record(try x.copy(), inputs: [vx], reads: [.scaled, .channelSums]) { dY, ctx in
                seen = (ctx.outputChannelSums.map { Array(UnsafeBufferPointer(start: $0, count: 2 * c)) }, ctx.outputScale)
                try ctx.accumulate(0, dY)
            }
            // Recorded before the sum: its backward runs after the sum's, adding a second gradient.
            let before = second == 2 ? try g.scale(probe, by: 3) : nil
            var y = try g.weightedSum([probe, vx], weights: vw)
            if second == 1 { y = try g.add(y, try g.scale(probe, by: 3)) }   // runs before the sum's backward
            if let before { y = try g.add(y, before) }
            try g.backward(y, gradient: try r.copy())
            let s = try XCTUnwrap(seen, name)
            let whole = second == 0 && handsOver
            XCTAssertEqual(s.sums != nil, whole, name)
            guard let sums = s.sums else { continue }
            XCTAssertEqual(s.scale, w[0], name)
            for ch in 0..<c {
                var sumDy = 0.0, sumDyX = 0.0
                for sample in 0..<2 { for i in 0..<hw {
                    let j = (sample * c + ch) * hw + i
                    sumDy += Double(w[0] * r[j]); sumDyX += Double(w[0] * r[j]) * Double(x[j])
                } }
                XCTAssertEqual(sums[ch], sumDy, accuracy: 1e-5, "\(name): Σ s·dY, channel \(ch)")
                XCTAssertEqual(sums[c + ch], sumDyX, accuracy: 1e-5, "\(name): Σ s·dY·x, channel \(ch)")
            }
        }
    }

    /// A mixed op's terms as the supernet has them (the fused unit, batch norm over a max pool, plain
    /// batch norm, ghost batch norm, an identity), with and without the hand-over: every gradient
    /// bit for bit the same (w's is summed channel by channel either way).
    func testChannelSums_HandedOver_GiveTheSameGradients() throws {
        let acc = MemoryAccountant()
        let c = Self.shape[1], terms = 5
        let xs = try (0..<terms).map { try randomTensor(Self.shape, acc, seed: UInt64(70 + $0)) }
        let wd = try randomTensor([c, 1, 3, 3], acc, seed: 80), wp = try randomTensor([c, c, 1, 1], acc, seed: 81)
        let w = try randomTensor([terms], acc, seed: 82), r = try randomTensor(Self.shape, acc, seed: 83)
        func run(handsOver: Bool) throws -> [[Float]] {
            let g = Graph(accountant: acc)
            g.handsOverChannelSums = handsOver
            let vx = try xs.map { g.leaf(try $0.copy()) }
            let vwd = g.leaf(try wd.copy()), vwp = g.leaf(try wp.copy()), vw = g.leaf(try w.copy())
            var ts = try (0..<3).map { try term($0, g, vx[$0], vwd, vwp, acc) }
            ts[1] = try g.batchNorm(try g.maxPool2d(vx[1], kernel: 3, stride: 1, padding: 1), gamma: nil, beta: nil, runningMean: nil, runningVar: nil)
            ts.append(try g.batchNorm(vx[3], gamma: nil, beta: nil, runningMean: nil, runningVar: nil))
            ts.append(vx[4])
            try g.backward(try g.weightedSum(ts, weights: vw), gradient: try r.copy())
            return (vx + [vwd, vwp, vw]).map { g.gradient(of: $0)!.array }
        }
        let on = try run(handsOver: true), off = try run(handsOver: false)
        for i in 0..<on.count { XCTAssertEqual(on[i].map(\.bitPattern), off[i].map(\.bitPattern), "gradient \(i)") }
    }
}
