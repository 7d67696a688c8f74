// The fused ReLU → depthwise → pointwise → batch norm (Ops+Fused.swift) against its reference, the
// same ops one by one, on every fast-path geometry (odd sizes, 1×1 planes, stride 2, dilation 2,
// channels past the pointwise crossover), and its gradients against finite differences.

import EspalierCore
import EspalierTestSupport
import XCTest

final class FusedSeparableUnitTests: XCTestCase {
    struct Case { let n, c, h, w, cOut, k, stride, padding, dilation: Int }
    static let cases: [Case] = [
        Case(n: 2, c: 3, h: 7, w: 9, cOut: 5, k: 3, stride: 1, padding: 1, dilation: 1),     // odd sizes, Cout ≠ C
        Case(n: 3, c: 4, h: 1, w: 1, cOut: 6, k: 3, stride: 1, padding: 1, dilation: 1),     // 1×1 planes
        Case(n: 2, c: 4, h: 8, w: 8, cOut: 4, k: 5, stride: 2, padding: 2, dilation: 1),     // stride 2
        Case(n: 2, c: 4, h: 9, w: 9, cOut: 4, k: 3, stride: 1, padding: 2, dilation: 2),     // dilation 2
        Case(n: 2, c: 3, h: 7, w: 7, cOut: 3, k: 5, stride: 2, padding: 4, dilation: 2),     // stride 2, dilation 2
        Case(n: 4, c: 16, h: 14, w: 14, cOut: 16, k: 3, stride: 1, padding: 1, dilation: 1), // bench-like: both chunks, every tail
        Case(n: 2, c: 16, h: 17, w: 17, cOut: 16, k: 5, stride: 1, padding: 2, dilation: 1), // planes ≥ 256: our weight gradient
        Case(n: 2, c: 130, h: 3, w: 3, cOut: 5, k: 3, stride: 1, padding: 1, dilation: 1),   // past the pointwise crossover: OpenBLAS
        Case(n: 2, c: 8, h: 9, w: 9, cOut: 8, k: 5, stride: 2, padding: 2, dilation: 1),     // channels in lanes (C % 8 = 0), stride 2
        Case(n: 3, c: 8, h: 7, w: 7, cOut: 4, k: 3, stride: 1, padding: 2, dilation: 2),     // channels in lanes, dilation 2
    ]

    /// x away from 0, so that finite differences never straddle the ReLU's kink.
    private func input(_ shape: [Int], _ acc: MemoryAccountant, seed: UInt64) throws -> Tensor {
        let t = try randomTensor(shape, acc, seed: seed)
        for i in 0..<t.count { t[i] = (t[i] < 0 ? -0.2 : 0.2) + t[i] }
        return t
    }

    private func unit(_ g: Graph, _ v: [Variable], _ c: Case, relu: Bool, fused: Bool, rm: Tensor, rv: Tensor) throws -> Variable {
        if fused {
            return try g.fusedSeparableUnit(v[0], depthwise: v[1], pointwise: v[2], stride: c.stride, padding: c.padding, dilation: c.dilation,
                                            reluInput: relu, runningMean: rm, runningVar: rv, momentum: 0.1, eps: 1e-5)
        }
        let t = try g.conv2d(relu ? try g.relu(v[0]) : v[0], v[1], stride: c.stride, padding: c.padding, dilation: c.dilation, groups: c.c)
        return try g.batchNorm(try g.conv2d(t, v[2]), gamma: nil, beta: nil, runningMean: rm, runningVar: rv, momentum: 0.1, eps: 1e-5)
    }

    func testFused_MatchesTheOpsOneByOne_ForwardRunningStatisticsAndEveryGradient() throws {
        let acc = MemoryAccountant()
        for (k, c) in Self.cases.enumerated() { for relu in [true, false] {
            let x = try input([c.n, c.c, c.h, c.w], acc, seed: UInt64(k))
            let wd = try randomTensor([c.c, 1, c.k, c.k], acc, seed: UInt64(10 + k)), wp = try randomTensor([c.cOut, c.c, 1, 1], acc, seed: UInt64(20 + k))
            var results: [[[Float]]] = []
            var fusedRan = false
            for fused in [true, false] {
                let g = Graph(accountant: acc)
                let rm = try randomTensor([c.cOut], acc, seed: 30), rv = try Tensor.filled([c.cOut], value: 1, category: .activations, accountant: acc)
                let v = [g.leaf(try x.copy()), g.leaf(try wd.copy()), g.leaf(try wp.copy())]
                if fused {
                    let gd = ConvGeometry(n: c.n, cIn: c.c, h: c.h, w: c.w, cOut: c.c, kh: c.k, kw: c.k, stride: c.stride, padding: c.padding, dilation: c.dilation, groups: c.c)
                    fusedRan = g.fusesSeparableUnit(depthwise: gd, pointwise: ConvGeometry(n: c.n, cIn: c.c, h: gd.hOut, w: gd.wOut, cOut: c.cOut, kh: 1, kw: 1), reluInput: relu)
                }
                let y = try unit(g, v, c, relu: relu, fused: fused, rm: rm, rv: rv)
                let r = try randomTensor(y.shape, acc, seed: 40)
                try g.backward(y, gradient: r)
                results.append([y.value.array, rm.array, rv.array] + v.map { g.gradient(of: $0)!.array })
            }
            XCTAssertTrue(fusedRan, "case \(k) relu \(relu): the fused path must run on this geometry")
            for (i, what) in ["y", "running mean", "running var", "dx", "d depthwise", "d pointwise"].enumerated() {
                assertClose(results[0][i], results[1][i], tol: 2e-4, "\(what), case \(k) relu \(relu)")
            }
        } }
    }

    /// x feeding two units: the second backward adds its dX into the first's as it stores it
    /// (the accumulation target's addend). And each gradient alone: x constant (only the weights'),
    /// the weights constant (only dX). Against the ops one by one, on every case.
    func testFused_AddsIntoAnInputGradient_AndComputesAnySubsetOfTheGradients() throws {
        let acc = MemoryAccountant()
        for (k, c) in Self.cases.enumerated() {
            let x = try input([c.n, c.c, c.h, c.w], acc, seed: UInt64(50 + k))
            let weights = try (0..<2).map { j in
                (try randomTensor([c.c, 1, c.k, c.k], acc, seed: UInt64(60 + 2 * k + j)), try randomTensor([c.cOut, c.c, 1, 1], acc, seed: UInt64(80 + 2 * k + j)))
            }
            for mode in ["x twice", "weights only", "x only"] {
                var results: [[[Float]]] = []
                for fused in [true, false] {
                    let g = Graph(accountant: acc)
                    let xv = mode == "weights only" ? g.constant(try x.copy()) : g.leaf(try x.copy())
                    let wv = try weights.map { (d, p) in mode == "x only" ? (g.constant(try d.copy()), g.constant(try p.copy())) : (g.leaf(try d.copy()), g.leaf(try p.copy())) }
                    var y = try unit(g, [xv, wv[0].0, wv[0].1], c, relu: true, fused: fused, rm: try Tensor.zeros([c.cOut], category: .activations, accountant: acc),
                                     rv: try Tensor.filled([c.cOut], value: 1, category: .activations, accountant: acc))
                    if mode == "x twice" {
                        y = try g.add(y, try unit(g, [xv, wv[1].0, wv[1].1], c, relu: true, fused: fused, rm: try Tensor.zeros([c.cOut], category: .activations, accountant: acc),
                                                  rv: try Tensor.filled([c.cOut], value: 1, category: .activations, accountant: acc)))
                    }
                    try g.backward(y, gradient: try randomTensor(y.shape, acc, seed: 90))
                    results.append([xv, wv[0].0, wv[0].1].compactMap { g.gradient(of: $0)?.array })
                }
                XCTAssertEqual(results[0].count, mode == "x twice" ? 3 : mode == "x only" ? 1 : 2, "\(mode), case \(k): the gradients asked for")
                XCTAssertEqual(results[0].count, results[1].count, "\(mode), case \(k)")
                for (i, (a, b)) in zip(results[0], results[1]).enumerated() { assertClose(a, b, tol: 2e-4, "\(mode), case \(k), gradient \(i)") }
            }
        }
    }

    /// A geometry off the depthwise fast path (stride 3) without the ReLU still runs fused, with
    /// dT made whole (the two-step backward): the same forward and gradients as the ops one by one.
    func testFused_OffTheDepthwiseFastPath_TakesTheTwoStepBackward() throws {
        let acc = MemoryAccountant()
        let c = Case(n: 2, c: 3, h: 9, w: 9, cOut: 4, k: 3, stride: 3, padding: 1, dilation: 1)
        let gd = ConvGeometry(n: c.n, cIn: c.c, h: c.h, w: c.w, cOut: c.c, kh: c.k, kw: c.k, stride: c.stride, padding: c.padding, groups: c.c)
        XCTAssertFalse(gd.addsIntoInputGradient, "stride 3 is off the depthwise fast path")
        let x = try input([c.n, c.c, c.h, c.w], acc, seed: 5)
        let wd = try randomTensor([c.c, 1, c.k, c.k], acc, seed: 6), wp = try randomTensor([c.cOut, c.c, 1, 1], acc, seed: 7)
        var results: [[[Float]]] = []
        for fused in [true, false] {
            let g = Graph(accountant: acc)
            if fused {
                XCTAssertTrue(g.fusesSeparableUnit(depthwise: gd, pointwise: ConvGeometry(n: c.n, cIn: c.c, h: gd.hOut, w: gd.wOut, cOut: c.cOut, kh: 1, kw: 1),
                                                   reluInput: false))
            }
            let v = [g.leaf(try x.copy()), g.leaf(try wd.copy()), g.leaf(try wp.copy())]
            let y = try unit(g, v, c, relu: false, fused: fused, rm: try Tensor.zeros([c.cOut], category: .activations, accountant: acc),
                             rv: try Tensor.filled([c.cOut], value: 1, category: .activations, accountant: acc))
            try g.backward(y, gradient: try randomTensor(y.shape, acc, seed: 8))
            results.append([y.value.array] + v.map { g.gradient(of: $0)!.array })
        }
        for (i, what) in ["y", "dx", "d depthwise", "d pointwise"].enumerated() { assertClose(results[0][i], results[1][i], tol: 2e-4, what) }
    }

    /// The backward goes sample by sample: the depthwise output's gradient dT (N, C, Ho, Wo) lives
    /// in a tile per core, never whole. Over the backward, what the accountant holds rises by less
    /// than dX and dT together (the path that makes dT whole holds both while the depthwise
    /// backward runs).
    func testBackward_NeverHoldsTheDepthwiseOutputGradientWhole() throws {
        let acc = MemoryAccountant()
        for c in [Case(n: 16, c: 16, h: 14, w: 14, cOut: 16, k: 3, stride: 1, padding: 1, dilation: 1),
                  Case(n: 16, c: 16, h: 14, w: 14, cOut: 16, k: 5, stride: 2, padding: 2, dilation: 1)] {
            let g = Graph(accountant: acc)
            let v = [g.leaf(try input([c.n, c.c, c.h, c.w], acc, seed: 1)), g.leaf(try randomTensor([c.c, 1, c.k, c.k], acc, seed: 2)),
                     g.leaf(try randomTensor([c.cOut, c.c, 1, 1], acc, seed: 3))]
            let y = try unit(g, v, c, relu: true, fused: true, rm: try Tensor.zeros([c.cOut], category: .activations, accountant: acc),
                             rv: try Tensor.filled([c.cOut], value: 1, category: .activations, accountant: acc))
            let r = try randomTensor(y.shape, acc, seed: 4)
            let before = acc.currentTotal
            acc.resetPeak()
            try g.backward(y, gradient: r)
            let rise = acc.peakTotal - before
            let dX = v[0].value.storage.byteCount, dT = c.n * c.c * y.shape[2] * y.shape[3] * MemoryLayout<Float>.size
            XCTAssertLessThan(rise, dX + dT, "stride \(c.stride): the backward held \(rise) bytes more at its peak; dX is \(dX), dT \(dT)")
        }
    }

    /// The forward's sweep per sample is the same bits as its reference, the depthwise kernel over
    /// the batch then the pointwise product with statistics: t, y and the sums, with t kept and
    /// with t only in a tile, on every case, with and without the ReLU.
    func testForwardSweep_IsTheSameBitsAsTheKernelsOneAfterAnother() throws {
        let acc = MemoryAccountant()
        for (k, c) in Self.cases.enumerated() { for relu in [true, false] {
            let gd = ConvGeometry(n: c.n, cIn: c.c, h: c.h, w: c.w, cOut: c.c, kh: c.k, kw: c.k, stride: c.stride, padding: c.padding,
                                  dilation: c.dilation, groups: c.c)
            let howo = gd.hOut * gd.wOut, chunks = Parallel.chunkCount(c.n), doubles = Kernels.pointwiseStatisticsDoubles(cOut: c.cOut, chunks: chunks)
            let x = try input([c.n, c.c, c.h, c.w], acc, seed: UInt64(k))
            let wd = try randomTensor([c.c, 1, c.k, c.k], acc, seed: UInt64(10 + k)), wp = try randomTensor([c.cOut, c.c, 1, 1], acc, seed: UInt64(20 + k))
            var t = [Float](repeating: 0, count: c.n * c.c * howo), y = [Float](repeating: 0, count: c.n * c.cOut * howo)
            var sums = [Double](repeating: 0, count: doubles)
            var ws = [Float](repeating: 0, count: max(1, gd.forwardWorkspaceFloats(reluInput: relu)))
            Kernels.conv2dForward(gd, x: x.ptr, w: wd.ptr, y: &t, workspace: &ws, reluInput: relu)
            Kernels.pointwiseForwardWithStatistics(n: c.n, cIn: c.c, cOut: c.cOut, hw: howo, t: t, w: wp.ptr, y: &y, sums: &sums)
            for keepingT in [true, false] {
                var t2 = [Float](repeating: .nan, count: t.count), y2 = [Float](repeating: .nan, count: y.count)
                var sums2 = [Double](repeating: .nan, count: doubles)
                var ws2 = [Float](repeating: .nan, count: max(1, Kernels.separableUnitForwardFloats(gd, keepingT: keepingT)))
                t2.withUnsafeMutableBufferPointer { tp in
                    Kernels.separableUnitForward(gd, cOut: c.cOut, x: x.ptr, wd: wd.ptr, wp: wp.ptr, t: keepingT ? tp.baseAddress! : nil, y: &y2,
                                                 sums: &sums2, reluInput: relu, workspace: &ws2)
                }
                let what = "case \(k) relu \(relu) keeping t \(keepingT)"
                XCTAssertEqual(y2.map(\.bitPattern), y.map(\.bitPattern), "y, \(what)")
                XCTAssertEqual(Array(sums2[0..<(2 * c.cOut)]).map(\.bitPattern), Array(sums[0..<(2 * c.cOut)]).map(\.bitPattern), "Σy and Σy², \(what)")
                if keepingT { XCTAssertEqual(t2.map(\.bitPattern), t.map(\.bitPattern), "t, \(what)") }
                else { XCTAssertTrue(t2.allSatisfy(\.isNaN), "t untouched, \(what)") }
            }
        } }
    }

    /// t is not kept for the backward: over a recorded forward, what the accountant holds rises by
    /// less than y and t together (y, its mean and 1/σ stay; t did before).
    func testRecordedForward_KeepsNoDepthwiseOutput() throws {
        let acc = MemoryAccountant()
        let c = Case(n: 16, c: 16, h: 14, w: 14, cOut: 16, k: 3, stride: 1, padding: 1, dilation: 1)
        let g = Graph(accountant: acc)
        let v = [g.leaf(try input([c.n, c.c, c.h, c.w], acc, seed: 1)), g.leaf(try randomTensor([c.c, 1, c.k, c.k], acc, seed: 2)),
                 g.leaf(try randomTensor([c.cOut, c.c, 1, 1], acc, seed: 3))]
        let rm = try Tensor.zeros([c.cOut], category: .activations, accountant: acc), rv = try Tensor.filled([c.cOut], value: 1, category: .activations, accountant: acc)
        let before = acc.currentTotal
        let y = try unit(g, v, c, relu: true, fused: true, rm: rm, rv: rv)
        let rise = acc.currentTotal - before, bytes = y.value.storage.byteCount
        XCTAssertLessThan(rise, 2 * bytes, "the forward keeps \(rise) bytes; y is \(bytes), t as large")
        try g.backward(y, gradient: try randomTensor(y.shape, acc, seed: 4))
        XCTAssertNotNil(g.gradient(of: v[2]), "the backward still makes the pointwise weight's gradient, from t computed again")
    }

    /// The backward without t computes each t[s] again from x: dX, dWd and dWp the same bits as
    /// from the forward's t, on every case, with and without the ReLU, with and without dWd (the
    /// P that dW loads x into, or a P of its own).
    func testBackward_WithoutT_ComputesItAgain_TheSameBits() throws {
        let acc = MemoryAccountant()
        for (k, c) in Self.cases.enumerated() { for relu in [true, false] { for needWd in [true, false] {
            let gd = ConvGeometry(n: c.n, cIn: c.c, h: c.h, w: c.w, cOut: c.c, kh: c.k, kw: c.k, stride: c.stride, padding: c.padding,
                                  dilation: c.dilation, groups: c.c)
            guard gd.addsIntoInputGradient else { continue }
            let howo = gd.hOut * gd.wOut, xs = c.n * c.c * c.h * c.w
            let x = try input([c.n, c.c, c.h, c.w], acc, seed: UInt64(k))
            let wd = try randomTensor([c.c, 1, c.k, c.k], acc, seed: UInt64(10 + k)), wp = try randomTensor([c.cOut, c.c, 1, 1], acc, seed: UInt64(20 + k))
            let xhat = try randomTensor([c.n * c.cOut * howo], acc, seed: UInt64(30 + k)), dY = try randomTensor([c.n * c.cOut * howo], acc, seed: UInt64(40 + k))
            let bn = try randomTensor([3 * c.cOut], acc, seed: UInt64(50 + k))
            for i in 0..<c.cOut { bn[i] = 1 + abs(bn[i]) }                  // 1/σ > 0
            var t = [Float](repeating: 0, count: c.n * c.c * howo)
            var fws = [Float](repeating: 0, count: max(1, gd.forwardWorkspaceFloats(reluInput: relu)))
            Kernels.conv2dForward(gd, x: x.ptr, w: wd.ptr, y: &t, workspace: &fws, reluInput: relu)
            func run(keptT: Bool) -> [[UInt32]] {
                var dX = [Float](repeating: 0, count: xs), dWd = [Float](repeating: 0, count: c.c * c.k * c.k), dWp = [Float](repeating: 0, count: c.cOut * c.c)
                var ws = [Float](repeating: .nan, count: max(1, Kernels.separableUnitBackwardFloats(gd, cOut: c.cOut, needInputGrad: true, needDepthwiseGrad: needWd,
                                                                                                  needPointwiseGrad: true, reluInput: relu, keptT: keptT)))
                t.withUnsafeBufferPointer { tp in dWd.withUnsafeMutableBufferPointer { dWdp in
                    Kernels.separableUnitBackward(gd, cOut: c.cOut, x: x.ptr, wd: wd.ptr, t: keptT ? tp.baseAddress! : nil, wp: wp.ptr, xhat: xhat.ptr,
                                                  dY: dY.ptr, invStd: bn.ptr, meanDy: bn.ptr + c.cOut, meanDyXhat: bn.ptr + 2 * c.cOut,
                                                  dX: &dX, dWd: needWd ? dWdp.baseAddress! : nil, dWp: &dWp, reluInput: relu, workspace: &ws)
                } }
                return [dX.map(\.bitPattern), dWd.map(\.bitPattern), dWp.map(\.bitPattern)]
            }
            let kept = run(keptT: true), again = run(keptT: false)
            for (i, name) in ["dX", "dWd", "dWp"].enumerated() {
                XCTAssertEqual(again[i], kept[i], "\(name), case \(k) relu \(relu) dWd \(needWd)")
            }
            XCTAssertTrue(kept[2].contains { $0 != 0 }, "dWp is made, case \(k)")
        } } }
    }

    /// Where no backward will run (the zero-shot forward), t is never held whole: over the op,
    /// what the accountant holds rises by less than y and t together.
    func testNoGradForward_NeverHoldsTheDepthwiseOutputWhole() throws {
        let acc = MemoryAccountant()
        let c = Case(n: 16, c: 16, h: 14, w: 14, cOut: 16, k: 3, stride: 1, padding: 1, dilation: 1)
        let x = try input([c.n, c.c, c.h, c.w], acc, seed: 1)
        let wd = try randomTensor([c.c, 1, c.k, c.k], acc, seed: 2), wp = try randomTensor([c.cOut, c.c, 1, 1], acc, seed: 3)
        let rm = try Tensor.zeros([c.cOut], category: .activations, accountant: acc), rv = try Tensor.filled([c.cOut], value: 1, category: .activations, accountant: acc)
        let g = Graph(accountant: acc)
        let before = acc.currentTotal
        acc.resetPeak()
        let y = try g.noGrad { try unit(g, [g.constant(x), g.constant(wd), g.constant(wp)], c, relu: true, fused: true, rm: rm, rv: rv) }
        let rise = acc.peakTotal - before, bytes = y.value.storage.byteCount
        XCTAssertLessThan(rise, 2 * bytes, "the forward held \(rise) bytes more at its peak; y and t are \(bytes) each")
    }

    func testFused_GradientsMatchFiniteDifferences() throws {
        let acc = MemoryAccountant()
        for (k, c) in Self.cases.enumerated() where c.c <= 16 && c.n * c.c * c.h * c.w <= 700 {   // all but the bench-sized and crossover cases
            let x = try input([c.n, c.c, c.h, c.w], acc, seed: UInt64(k))
            let wd = try randomTensor([c.c, 1, c.k, c.k], acc, seed: UInt64(10 + k)), wp = try randomTensor([c.cOut, c.c, 1, 1], acc, seed: UInt64(20 + k))
            let rm = try Tensor.zeros([c.cOut], category: .activations, accountant: acc), rv = try Tensor.filled([c.cOut], value: 1, category: .activations, accountant: acc)
            try GradCheck(eps: 5e-3, rtol: 3e-2, atol: 3e-3).check("fused unit case \(k)", inputs: [x, wd, wp]) { g, v in
                try unit(g, v, c, relu: true, fused: true, rm: rm, rv: rv)
            }
        }
    }

    /// The zero-shot forward (no gradients, batch statistics) runs fused too: the same output and
    /// running statistics as a recorded forward, nothing kept once it returns but y.
    func testNoGradForward_IsTheFusedForward_AndKeepsNothingElse() throws {
        let acc = MemoryAccountant()
        let c = Self.cases[5]
        let x = try input([c.n, c.c, c.h, c.w], acc, seed: 1)
        let wd = try randomTensor([c.c, 1, c.k, c.k], acc, seed: 2), wp = try randomTensor([c.cOut, c.c, 1, 1], acc, seed: 3)
        var outs: [[Float]] = []
        for noGrad in [false, true] {
            let g = Graph(accountant: acc)
            let rm = try Tensor.zeros([c.cOut], category: .activations, accountant: acc), rv = try Tensor.filled([c.cOut], value: 1, category: .activations, accountant: acc)
            let before = acc.currentTotal
            let y = noGrad ? try g.noGrad { try unit(g, [g.constant(x), g.constant(wd), g.constant(wp)], c, relu: true, fused: true, rm: rm, rv: rv) }
                           : try unit(g, [g.leaf(x), g.leaf(wd), g.leaf(wp)], c, relu: true, fused: true, rm: rm, rv: rv)
            if noGrad { XCTAssertEqual(acc.currentTotal - before, y.value.storage.byteCount, "only y stays") }
            outs.append(y.value.array + rm.array + rv.array)
        }
        XCTAssertEqual(outs[0], outs[1])
    }

    /// Evaluation (running statistics) and ghost batch norm take the reference path: same results.
    func testOffThePath_IsTheReference() throws {
        let acc = MemoryAccountant()
        let c = Self.cases[0]
        let x = try input([c.n, c.c, c.h, c.w], acc, seed: 1)
        let wd = try randomTensor([c.c, 1, c.k, c.k], acc, seed: 2), wp = try randomTensor([c.cOut, c.c, 1, 1], acc, seed: 3)
        for mode in ["evaluation", "ghost"] {
            var outs: [[Float]] = []
            for fused in [true, false] {
                let g = Graph(accountant: acc)
                if mode == "evaluation" { g.training = false } else { g.batchNormGroups = 2 }
                let rm = try randomTensor([c.cOut], acc, seed: 4), rv = try Tensor.filled([c.cOut], value: 2, category: .activations, accountant: acc)
                outs.append(try unit(g, [g.leaf(x), g.leaf(wd), g.leaf(wp)], c, relu: true, fused: fused, rm: rm, rv: rv).value.array + rm.array)
            }
            XCTAssertEqual(outs[0], outs[1], mode)
        }
    }
}
