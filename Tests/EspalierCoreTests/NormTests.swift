// Batch norm: tuned kernels against the naive references, gradients against finite differences
// in training and evaluation mode with and without the affine map, and PyTorch's running statistics.

import EspalierCore
import EspalierTestSupport
import XCTest

final class NormTests: XCTestCase {
    /// (shape, affine) cases: odd sizes, a single sample, rank 2 (batch norm 1d).
    static let cases: [([Int], Bool)] = [
        ([2, 3, 4, 5], true),
        ([2, 3, 4, 5], false),
        ([3, 2, 3, 3], true),
        ([1, 2, 5, 3], false),   // one sample: statistics over H·W only
        ([5, 4], true),          // (N, C)
    ]

    /// The one-pass statistics (shifted by each channel's first value) keep their precision for
    /// data far from zero: values 1000 ± 1 (float spacing 6e-5 there).
    func testBatchNormStatistics_DataFarFromZero() throws {
        let acc = MemoryAccountant()
        let (n, c, hw) = (8, 3, 49)
        let x = try randomTensor([n, c, 7, 7], acc, seed: 5)
        for i in 0..<x.count { x[i] += 1000 * Float(1 + i % 2) }
        let m1 = try Tensor(shape: [c], category: .data, accountant: acc), v1 = try Tensor(shape: [c], category: .data, accountant: acc)
        let m2 = try Tensor(shape: [c], category: .data, accountant: acc), v2 = try Tensor(shape: [c], category: .data, accountant: acc)
        Kernels.batchNormStatistics(x.ptr, n: n, c: c, hw: hw, mean: m1.ptr, variance: v1.ptr)
        Kernels.batchNormStatisticsNaive(x.ptr, n: n, c: c, hw: hw, mean: m2.ptr, variance: v2.ptr)
        for ch in 0..<c {
            XCTAssertEqual(m1[ch], m2[ch], accuracy: 1e-3)
            XCTAssertEqual(v1[ch], v2[ch], accuracy: 1e-3 * v2[ch], "variance of channel \(ch)")
        }
    }

    /// While the graph recalibrates, training-mode batch norm sets its running statistics to the
    /// cumulative average of the batches seen (mean of batch means, mean of unbiased variances),
    /// whatever they held before; afterwards the momentum update is back.
    func testBatchNormRecalibration_RunningStatisticsAreTheAverageOverTheBatches() throws {
        let acc = MemoryAccountant()
        let g = Graph(accountant: acc)
        let (n, c, hw) = (4, 3, 25)
        let rm = try Tensor.filled([c], value: 50, category: .data, accountant: acc)
        let rv = try Tensor.filled([c], value: 50, category: .data, accountant: acc)
        var means = [[Double]](), vars = [[Double]]()
        g.batchNormRecalibration = [:]
        for k in 0..<3 {
            let x = try randomTensor([n, c, 5, 5], acc, seed: UInt64(70 + k), bound: Float(k + 1))
            _ = try g.noGrad { try g.batchNorm(g.constant(x), gamma: nil, beta: nil, runningMean: rm, runningVar: rv) }
            var m = [Double](), v = [Double]()
            for ch in 0..<c {
                let vals = (0..<n).flatMap { s in (0..<hw).map { Double(x[(s * c + ch) * hw + $0]) } }
                let mu = vals.reduce(0, +) / Double(vals.count)
                m.append(mu)
                v.append(vals.map { ($0 - mu) * ($0 - mu) }.reduce(0, +) / Double(vals.count - 1))
            }
            means.append(m); vars.append(v)
        }
        for ch in 0..<c {
            XCTAssertEqual(Double(rm[ch]), means.map { $0[ch] }.reduce(0, +) / 3, accuracy: 1e-4)
            XCTAssertEqual(Double(rv[ch]), vars.map { $0[ch] }.reduce(0, +) / 3, accuracy: 1e-3)
        }
        g.batchNormRecalibration = nil
        let before = rm[0]
        let x = try Tensor.filled([n, c, 5, 5], value: 10, category: .data, accountant: acc)
        _ = try g.noGrad { try g.batchNorm(g.constant(x), gamma: nil, beta: nil, runningMean: rm, runningVar: rv) }
        XCTAssertEqual(rm[0], 0.9 * before + 0.1 * 10, accuracy: 1e-4, "momentum 0.1 again")
    }

    func testBatchNormKernels_MatchNaiveReference() throws {
        let acc = MemoryAccountant()
        // The last shape is large enough to split the channels across cores.
        for (k, shape) in [[2, 3, 4, 5], [3, 5, 1, 7], [4, 32, 16, 16]].enumerated() {
            let (n, c, hw) = (shape[0], shape[1], shape[2] * shape[3])
            let x = try randomTensor(shape, acc, seed: UInt64(k), bound: 2)
            for i in 0..<x.count { x[i] += Float(i % c) }   // per-channel offsets
            let dY = try randomTensor(shape, acc, seed: UInt64(10 + k))
            let gamma = try randomTensor([c], acc, seed: UInt64(20 + k))
            let beta = try randomTensor([c], acc, seed: UInt64(30 + k))
            let m1 = try Tensor(shape: [c], category: .data, accountant: acc), v1 = try Tensor(shape: [c], category: .data, accountant: acc)
            let m2 = try Tensor(shape: [c], category: .data, accountant: acc), v2 = try Tensor(shape: [c], category: .data, accountant: acc)
            Kernels.batchNormStatistics(x.ptr, n: n, c: c, hw: hw, mean: m1.ptr, variance: v1.ptr)
            Kernels.batchNormStatisticsNaive(x.ptr, n: n, c: c, hw: hw, mean: m2.ptr, variance: v2.ptr)
            assertClose(m1.array, m2.array, tol: 1e-5, "mean \(shape)")
            assertClose(v1.array, v2.array, tol: 1e-5, "variance \(shape)")
            let invStd = try Tensor.from(v2.array.map { 1 / ($0 + 1e-5).squareRoot() }, shape: [c], accountant: acc)

            for affine in [false, true] {
                let gp = affine ? UnsafePointer(gamma.ptr) : nil, bp = affine ? UnsafePointer(beta.ptr) : nil
                let y1 = try Tensor(shape: shape, category: .data, accountant: acc), y2 = try Tensor(shape: shape, category: .data, accountant: acc)
                Kernels.batchNormApply(x.ptr, n: n, c: c, hw: hw, mean: m2.ptr, invStd: invStd.ptr, gamma: gp, beta: bp, y: y1.ptr)
                Kernels.batchNormApplyNaive(x.ptr, n: n, c: c, hw: hw, mean: m2.ptr, invStd: invStd.ptr, gamma: gp, beta: bp, y: y2.ptr)
                assertClose(y1.array, y2.array, tol: 1e-5, "apply affine=\(affine) \(shape)")
                // Added into an accumulator as it is made: bit for bit the apply followed by axpy.
                let sum1 = try randomTensor(shape, acc, seed: UInt64(40 + k)), sum2 = try sum1.copy()
                Kernels.batchNormApply(x.ptr, n: n, c: c, hw: hw, mean: m2.ptr, invStd: invStd.ptr, gamma: gp, beta: bp, y: sum1.ptr, accumulate: -0.7)
                Kernels.axpy(-0.7, y1.ptr, sum2.ptr, count: sum2.count)
                XCTAssertEqual(sum1.array.map(\.bitPattern), sum2.array.map(\.bitPattern), "apply into a sum, affine=\(affine) \(shape)")

                for batchStatistics in [true, false] {
                    let dX1 = try Tensor.filled(shape, value: 9, category: .data, accountant: acc)   // overwritten
                    let dX2 = try Tensor(shape: shape, category: .data, accountant: acc)
                    let dG1 = try Tensor.filled([c], value: 0.5, category: .data, accountant: acc)   // accumulated
                    let dG2 = try Tensor.filled([c], value: 0.5, category: .data, accountant: acc)
                    let dB1 = try Tensor.filled([c], value: -0.5, category: .data, accountant: acc)
                    let dB2 = try Tensor.filled([c], value: -0.5, category: .data, accountant: acc)
                    Kernels.batchNormBackward(x.ptr, dY: dY.ptr, n: n, c: c, hw: hw, mean: m2.ptr, invStd: invStd.ptr, gamma: gp,
                                              batchStatistics: batchStatistics, dX: dX1.ptr, dGamma: dG1.ptr, dBeta: dB1.ptr)
                    Kernels.batchNormBackwardNaive(x.ptr, dY: dY.ptr, n: n, c: c, hw: hw, mean: m2.ptr, invStd: invStd.ptr, gamma: gp,
                                                   batchStatistics: batchStatistics, dX: dX2.ptr, dGamma: dG2.ptr, dBeta: dB2.ptr)
                    let what = "affine=\(affine) batchStatistics=\(batchStatistics) \(shape)"
                    assertClose(dX1.array, dX2.array, tol: 1e-4, "dX \(what)")
                    assertClose(dG1.array, dG2.array, tol: 1e-4, "dGamma \(what)")
                    assertClose(dB1.array, dB2.array, tol: 1e-4, "dBeta \(what)")
                    // dX alone (no parameter gradients) gives the same dX.
                    let dX3 = try Tensor(shape: shape, category: .data, accountant: acc)
                    Kernels.batchNormBackward(x.ptr, dY: dY.ptr, n: n, c: c, hw: hw, mean: m2.ptr, invStd: invStd.ptr, gamma: gp,
                                              batchStatistics: batchStatistics, dX: dX3.ptr, dGamma: nil, dBeta: nil)
                    XCTAssertEqual(dX3.array, dX1.array, "dX alone \(what)")
                }
            }
        }
    }

    func testBatchNorm_TrainingMode_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        for (k, (shape, affine)) in Self.cases.enumerated() {
            let c = shape[1]
            let x = try randomTensor(shape, acc, seed: UInt64(k))
            let gamma = try randomTensor([c], acc, seed: UInt64(40 + k))
            for i in 0..<c { gamma[i] += 1.5 }
            let beta = try randomTensor([c], acc, seed: UInt64(50 + k))
            let rm = try Tensor.zeros([c], category: .data, accountant: acc)
            let rv = try Tensor.filled([c], value: 1, category: .data, accountant: acc)
            try GradCheck().check("bn train affine=\(affine) \(shape)", inputs: affine ? [x, gamma, beta] : [x]) { graph, v in
                try graph.batchNorm(v[0], gamma: affine ? v[1] : nil, beta: affine ? v[2] : nil, runningMean: rm, runningVar: rv)
            }
        }
    }

    func testBatchNorm_EvalMode_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        for (k, (shape, affine)) in Self.cases.enumerated() {
            let c = shape[1]
            let x = try randomTensor(shape, acc, seed: UInt64(k))
            let gamma = try randomTensor([c], acc, seed: UInt64(40 + k))
            let beta = try randomTensor([c], acc, seed: UInt64(50 + k))
            let rm = try randomTensor([c], acc, seed: UInt64(60 + k), bound: 0.5)
            let rv = try Tensor.from((0..<c).map { 0.5 + Float($0) * 0.3 }, shape: [c], accountant: acc)
            let before = (rm.array, rv.array)
            try GradCheck().check("bn eval affine=\(affine) \(shape)", inputs: affine ? [x, gamma, beta] : [x]) { graph, v in
                graph.training = false
                return try graph.batchNorm(v[0], gamma: affine ? v[1] : nil, beta: affine ? v[2] : nil, runningMean: rm, runningVar: rv)
            }
            XCTAssertEqual(rm.array, before.0, "eval mode must not touch the running mean")
            XCTAssertEqual(rv.array, before.1, "eval mode must not touch the running variance")
        }
    }

    func testBatchNorm_WithoutRunningStatistics_UsesBatchStatisticsInEval() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([3, 2, 2, 3], acc, seed: 5)
        let train = Graph(accountant: acc), eval = Graph(accountant: acc)
        eval.training = false
        let a = try train.batchNorm(train.constant(x), gamma: nil, beta: nil, runningMean: nil, runningVar: nil)
        let b = try eval.batchNorm(eval.constant(x), gamma: nil, beta: nil, runningMean: nil, runningVar: nil)
        XCTAssertEqual(a.value.array, b.value.array)
        try GradCheck().check("bn no running stats, eval", inputs: [x]) { graph, v in
            graph.training = false
            return try graph.batchNorm(v[0], gamma: nil, beta: nil, runningMean: nil, runningVar: nil)
        }
    }

    func testBatchNorm_RunningStatistics_UpdateAsPyTorch() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        // x (2, 2, 1, 2): channel 0 holds 1, 2, 3, 6; channel 1 holds 0, 0, 4, 4.
        let x = try Tensor.from([1, 2, 0, 0,
                                 3, 6, 4, 4], shape: [2, 2, 1, 2], accountant: acc)
        let rm = try Tensor.from([0, 1], shape: [2], accountant: acc)
        let rv = try Tensor.from([1, 2], shape: [2], accountant: acc)
        let y = try graph.batchNorm(graph.constant(x), gamma: nil, beta: nil, runningMean: rm, runningVar: rv)
        // Channel 0: mean 3, biased variance 14/4, unbiased 14/3. Channel 1: mean 2, biased 4, unbiased 16/3.
        XCTAssertEqual(rm[0], 0.9 * 0 + 0.1 * 3, accuracy: 1e-6)
        XCTAssertEqual(rm[1], 0.9 * 1 + 0.1 * 2, accuracy: 1e-6)
        XCTAssertEqual(rv[0], 0.9 * 1 + 0.1 * 14 / 3, accuracy: 1e-6)
        XCTAssertEqual(rv[1], 0.9 * 2 + 0.1 * 16 / 3, accuracy: 1e-6)
        // The output is normalised with the biased variance.
        let s0 = 1 / (3.5 + 1e-5 as Float).squareRoot(), s1 = 1 / (4 + 1e-5 as Float).squareRoot()
        let expected: [Float] = [-2 * s0, -1 * s0, -2 * s1, -2 * s1,
                                 0 * s0, 3 * s0, 2 * s1, 2 * s1]
        assertClose(y.value.array, expected, tol: 1e-5, "normalised output")
        // A second step with momentum 0.5 moves halfway from the updated values.
        let rm1 = rm.array, rv1 = rv.array
        _ = try graph.batchNorm(graph.constant(x), gamma: nil, beta: nil, runningMean: rm, runningVar: rv, momentum: 0.5)
        XCTAssertEqual(rm[0], 0.5 * rm1[0] + 0.5 * 3, accuracy: 1e-6)
        XCTAssertEqual(rv[1], 0.5 * rv1[1] + 0.5 * 16 / 3, accuracy: 1e-5)
        // Running statistics update in training mode even without recording (as in PyTorch).
        let rm2 = rm.array
        _ = try graph.noGrad { try graph.batchNorm(graph.constant(x), gamma: nil, beta: nil, runningMean: rm, runningVar: rv) }
        XCTAssertNotEqual(rm.array, rm2)
    }

    func testBatchNorm_EvalMode_UsesRunningStatistics() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        graph.training = false
        let x = try Tensor.from([1, 2, 0, 0,
                                 3, 6, 4, 4], shape: [2, 2, 1, 2], accountant: acc)
        let rm = try Tensor.from([0.5, -1], shape: [2], accountant: acc)
        let rv = try Tensor.from([4, 0.25], shape: [2], accountant: acc)
        let gamma = try Tensor.from([2, 3], shape: [2], accountant: acc)
        let beta = try Tensor.from([0.1, -0.2], shape: [2], accountant: acc)
        let y = try graph.batchNorm(graph.constant(x), gamma: graph.constant(gamma), beta: graph.constant(beta),
                                    runningMean: rm, runningVar: rv)
        var expected: [Float] = []
        for s in 0..<2 {
            for ch in 0..<2 {
                for i in 0..<2 {
                    let v = x[(s * 2 + ch) * 2 + i]
                    expected.append((v - rm[ch]) / (rv[ch] + 1e-5).squareRoot() * gamma[ch] + beta[ch])
                }
            }
        }
        assertClose(y.value.array, expected, tol: 1e-6, "eval output")
        XCTAssertEqual(rm.array, [0.5, -1])
        XCTAssertEqual(rv.array, [4, 0.25])
    }

    func testBatchNorm_TrainingOutput_HasZeroMeanUnitVariancePerChannel() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        let x = try randomTensor([4, 3, 5, 5], acc, seed: 8, bound: 3)
        for i in 0..<x.count { x[i] += 10 }
        let y = try graph.batchNorm(graph.constant(x), gamma: nil, beta: nil, runningMean: nil, runningVar: nil).value
        for ch in 0..<3 {
            var s = 0.0, s2 = 0.0
            for n in 0..<4 { for i in 0..<25 { let v = Double(y[(n * 3 + ch) * 25 + i]); s += v; s2 += v * v } }
            XCTAssertEqual(s / 100, 0, accuracy: 1e-5)
            XCTAssertEqual(s2 / 100, 1, accuracy: 1e-3)
        }
    }

    func testBatchNorm_AffineParameters_GradientsAccumulateIntoParameters() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([2, 3, 3, 3], acc, seed: 1)
        let dY = try randomTensor([2, 3, 3, 3], acc, seed: 2)
        let gamma = Parameter(name: "bn.weight", value: try randomTensor([3], acc, seed: 3))
        let beta = Parameter(name: "bn.bias", value: try randomTensor([3], acc, seed: 4))
        let rm = try Tensor.zeros([3], category: .data, accountant: acc), rv = try Tensor.filled([3], value: 1, category: .data, accountant: acc)

        // Reference: the same op with γ, β as leaves.
        let ref = Graph(accountant: acc)
        let gl = ref.leaf(gamma.value), bl = ref.leaf(beta.value), xl = ref.leaf(x)
        let yr = try ref.batchNorm(xl, gamma: gl, beta: bl, runningMean: rm, runningVar: rv)
        try ref.backward(yr, gradient: try dY.copy())
        let dGamma = try XCTUnwrap(ref.gradient(of: gl)).array, dBeta = try XCTUnwrap(ref.gradient(of: bl)).array
        let dX = try XCTUnwrap(ref.gradient(of: xl)).array

        for step in 1...2 {
            let graph = Graph(accountant: acc)
            let xv = graph.leaf(x)
            let y = try graph.batchNorm(xv, gamma: graph.param(gamma), beta: graph.param(beta), runningMean: rm, runningVar: rv)
            try graph.backward(y, gradient: try dY.copy())
            assertClose(try XCTUnwrap(gamma.grad).array, dGamma.map { $0 * Float(step) }, tol: 1e-5, "dGamma step \(step)")
            assertClose(try XCTUnwrap(beta.grad).array, dBeta.map { $0 * Float(step) }, tol: 1e-5, "dBeta step \(step)")
            assertClose(try XCTUnwrap(graph.gradient(of: xv)).array, dX, tol: 1e-5, "dX step \(step)")
        }
    }

    func testBatchNorm_BadArguments_AreErrorsNotCrashes() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        let one = graph.constant(try Tensor.zeros([1, 3, 1, 1], category: .data, accountant: acc))
        let rm = try Tensor.zeros([3], category: .data, accountant: acc), rv = try Tensor.filled([3], value: 1, category: .data, accountant: acc)
        // One value per channel cannot be normalised with batch statistics (PyTorch raises too).
        XCTAssertThrowsError(try graph.batchNorm(one, gamma: nil, beta: nil, runningMean: rm, runningVar: rv))
        graph.training = false
        XCTAssertNoThrow(try graph.batchNorm(one, gamma: nil, beta: nil, runningMean: rm, runningVar: rv))
        let x = graph.constant(try Tensor.zeros([2, 4, 2, 2], category: .data, accountant: acc))
        XCTAssertThrowsError(try graph.batchNorm(x, gamma: nil, beta: nil, runningMean: rm, runningVar: rv))
        XCTAssertThrowsError(try graph.batchNorm(x, gamma: nil, beta: nil, runningMean: nil, runningVar: rv))
    }
}
