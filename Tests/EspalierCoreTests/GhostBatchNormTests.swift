// Ghost batch norm (Graph.batchNormGroups = G): in training mode the batch is normalised in G
// contiguous slices of samples (Shards.range), each with its own statistics, and the running
// statistics move by the mean over the slices of each slice's statistics (unbiased variance per
// slice). Checked against batch norm run on each slice alone, hand-computed running statistics,
// finite differences, the G = 1 path as it was before groups existed, and the N < G error.

import EspalierCore
import EspalierTestSupport
import XCTest

final class GhostBatchNormTests: XCTestCase {
    /// A random (N, C, …) tensor whose slices (for `groups`) have clearly different statistics:
    /// slice g is shifted by 2g and scaled by 1 + g/2, so grouping changes the result.
    private func slicedInput(_ shape: [Int], groups: Int, acc: MemoryAccountant, seed: UInt64) throws -> Tensor {
        let x = try randomTensor(shape, acc, seed: seed)
        let per = shape.dropFirst().reduce(1, *)
        for g in 0..<groups {
            for i in Shards.range(part: g, of: groups, count: shape[0]).lowerBound * per
                ..< Shards.range(part: g, of: groups, count: shape[0]).upperBound * per {
                x[i] = x[i] * (1 + Float(g) / 2) + 2 * Float(g)
            }
        }
        return x
    }

    /// Samples `r` of x (N, …) as a tensor of their own.
    private func samples(_ x: Tensor, _ r: Range<Int>, acc: MemoryAccountant) throws -> Tensor {
        let per = x.shape.dropFirst().reduce(1, *)
        return try Tensor.from(Array(x.array[(r.lowerBound * per) ..< (r.upperBound * per)]),
                               shape: [r.count] + Array(x.shape.dropFirst()), accountant: acc)
    }

    // MARK: a. Forward

    /// With G groups the output of each slice is what batch norm (G = 1) gives on that slice
    /// alone, with the same γ and β; even and uneven slices, with and without the affine map.
    func testForward_EachSliceMatchesBatchNormOfTheSliceAlone() throws {
        let acc = MemoryAccountant()
        let cases: [(shape: [Int], groups: Int, affine: Bool)] = [
            ([6, 3, 4, 5], 2, true),
            ([6, 3, 4, 5], 3, false),
            ([7, 3, 3, 3], 3, true),     // uneven: 2, 2, 3 samples
            ([7, 2, 2, 5], 3, false),    // uneven, no affine map (the path that keeps the output)
            ([8, 2, 3, 3], 8, true),     // one sample per slice: statistics over H·W only
            ([7, 4], 3, true),           // (N, C), uneven
        ]
        for (k, (shape, groups, affine)) in cases.enumerated() {
            let c = shape[1]
            let what = "\(shape) G=\(groups) affine=\(affine)"
            let x = try slicedInput(shape, groups: groups, acc: acc, seed: UInt64(k))
            let gamma = try randomTensor([c], acc, seed: UInt64(20 + k))
            for i in 0..<c { gamma[i] += 1.5 }
            let beta = try randomTensor([c], acc, seed: UInt64(30 + k))

            let graph = Graph(accountant: acc)
            graph.batchNormGroups = groups
            let rm = try Tensor.zeros([c], category: .data, accountant: acc)
            let rv = try Tensor.filled([c], value: 1, category: .data, accountant: acc)
            let y = try graph.batchNorm(graph.constant(x), gamma: affine ? graph.constant(gamma) : nil,
                                        beta: affine ? graph.constant(beta) : nil, runningMean: rm, runningVar: rv).value.array

            var expected = [Float]()
            for g in 0..<groups {
                let r = Shards.range(part: g, of: groups, count: shape[0])
                let one = Graph(accountant: acc)
                let xs = try samples(x, r, acc: acc)
                let rms = try Tensor.zeros([c], category: .data, accountant: acc)
                let rvs = try Tensor.filled([c], value: 1, category: .data, accountant: acc)
                let ys = try one.batchNorm(one.constant(xs), gamma: affine ? one.constant(gamma) : nil,
                                           beta: affine ? one.constant(beta) : nil, runningMean: rms, runningVar: rvs)
                expected += ys.value.array
            }
            assertClose(y, expected, tol: 1e-5, "ghost batch norm \(what)")

            // Grouping matters for this input: the whole-batch normalisation is different.
            let whole = Graph(accountant: acc)
            let yWhole = try whole.batchNorm(whole.constant(x), gamma: affine ? whole.constant(gamma) : nil,
                                             beta: affine ? whole.constant(beta) : nil, runningMean: nil, runningVar: nil).value.array
            let maxDiff = zip(y, yWhole).map { abs($0 - $1) }.max() ?? 0
            XCTAssertGreaterThan(maxDiff, 0.1, "groups should change the output \(what)")
        }
    }

    /// Evaluation mode with running statistics normalises every sample with them: groups change nothing.
    func testEvalMode_GroupsAreIgnored() throws {
        let acc = MemoryAccountant()
        let x = try slicedInput([7, 3, 3, 3], groups: 3, acc: acc, seed: 3)
        let gamma = try randomTensor([3], acc, seed: 4), beta = try randomTensor([3], acc, seed: 5)
        let rm = try Tensor.from([0.5, -1, 2], shape: [3], accountant: acc)
        let rv = try Tensor.from([1, 2, 0.5], shape: [3], accountant: acc)
        var outputs = [[Float]]()
        for groups in [1, 3, 8] {   // 8 > N: no error, statistics are not computed from the batch
            let graph = Graph(accountant: acc)
            graph.training = false
            graph.batchNormGroups = groups
            outputs.append(try graph.batchNorm(graph.constant(x), gamma: graph.constant(gamma), beta: graph.constant(beta),
                                               runningMean: rm, runningVar: rv).value.array)
        }
        XCTAssertEqual(outputs[1], outputs[0])
        XCTAssertEqual(outputs[2], outputs[0])
        XCTAssertEqual(rm.array, [0.5, -1, 2], "evaluation mode must not touch the running mean")
    }

    // MARK: b. Running statistics

    /// After one training step: running = (1−m)·running + m·mean over slices of the slice
    /// statistics, with each slice's variance unbiased by its own count (samples·H·W).
    func testRunningStatistics_MoveByTheMeanOfTheSliceStatistics() throws {
        let acc = MemoryAccountant()
        let cases: [(shape: [Int], groups: Int, momentum: Float)] = [
            ([7, 2, 3, 3], 3, 0.1),   // slices of 2, 2, 3 samples: different unbiasing factors
            ([6, 3, 2, 2], 2, 0.3),
            ([5, 3], 2, 0.5),         // (N, C): slices of 2 and 3 values
        ]
        for (k, (shape, groups, momentum)) in cases.enumerated() {
            let (n, c) = (shape[0], shape[1])
            let hw = shape.dropFirst(2).reduce(1, *)
            let what = "\(shape) G=\(groups) momentum=\(momentum)"
            let x = try slicedInput(shape, groups: groups, acc: acc, seed: UInt64(40 + k))
            let rm0 = (0..<c).map { 0.25 * Float($0) - 0.5 }, rv0 = (0..<c).map { 0.5 + 0.75 * Float($0) }
            let rm = try Tensor.from(rm0, shape: [c], accountant: acc)
            let rv = try Tensor.from(rv0, shape: [c], accountant: acc)
            let graph = Graph(accountant: acc)
            graph.batchNormGroups = groups
            _ = try graph.batchNorm(graph.leaf(x), gamma: nil, beta: nil, runningMean: rm, runningVar: rv, momentum: momentum)

            for ch in 0..<c {
                var means = [Double](), variances = [Double]()
                for g in 0..<groups {
                    let r = Shards.range(part: g, of: groups, count: n)
                    let vals = r.flatMap { s in (0..<hw).map { Double(x[(s * c + ch) * hw + $0]) } }
                    let mu = vals.reduce(0, +) / Double(vals.count)
                    means.append(mu)
                    variances.append(vals.map { ($0 - mu) * ($0 - mu) }.reduce(0, +) / Double(vals.count - 1))
                }
                let m = Double(momentum)
                let expectedMean = (1 - m) * Double(rm0[ch]) + m * means.reduce(0, +) / Double(groups)
                let expectedVar = (1 - m) * Double(rv0[ch]) + m * variances.reduce(0, +) / Double(groups)
                XCTAssertEqual(Double(rm[ch]), expectedMean, accuracy: 1e-5 * max(1, abs(expectedMean)), "running mean ch \(ch) \(what)")
                XCTAssertEqual(Double(rv[ch]), expectedVar, accuracy: 1e-5 * max(1, abs(expectedVar)), "running var ch \(ch) \(what)")

                // The whole batch's unbiased variance is far from the mean of the slices' (the slices are shifted).
                let all = (0..<n).flatMap { s in (0..<hw).map { Double(x[(s * c + ch) * hw + $0]) } }
                let mu = all.reduce(0, +) / Double(all.count)
                let wholeVar = all.map { ($0 - mu) * ($0 - mu) }.reduce(0, +) / Double(all.count - 1)
                XCTAssertGreaterThan(abs(wholeVar - variances.reduce(0, +) / Double(groups)), 0.1, "test input \(what)")
            }
        }
    }

    // MARK: c. Gradients

    /// d(Σ r·y)/d(x, γ, β) with G = 3 against central differences (GradCheck accumulates the loss
    /// in Double), uneven slices, with and without the affine map.
    func testGradients_ThreeGroups_MatchFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let cases: [([Int], Bool)] = [
            ([7, 3, 3, 3], true),
            ([6, 2, 2, 3], true),
            ([7, 2, 2, 3], false),
            ([9, 2, 4], true),        // rank 3
        ]
        for (k, (shape, affine)) in cases.enumerated() {
            let c = shape[1]
            let x = try slicedInput(shape, groups: 3, acc: acc, seed: UInt64(60 + k))
            let gamma = try randomTensor([c], acc, seed: UInt64(70 + k))
            for i in 0..<c { gamma[i] += 1.5 }
            let beta = try randomTensor([c], acc, seed: UInt64(80 + k))
            let rm = try Tensor.zeros([c], category: .data, accountant: acc)
            let rv = try Tensor.filled([c], value: 1, category: .data, accountant: acc)
            try GradCheck().check("ghost bn G=3 affine=\(affine) \(shape)", inputs: affine ? [x, gamma, beta] : [x]) { graph, v in
                graph.batchNormGroups = 3
                return try graph.batchNorm(v[0], gamma: affine ? v[1] : nil, beta: affine ? v[2] : nil, runningMean: rm, runningVar: rv)
            }
        }
    }

    /// The analytic gradient with groups is the per-slice gradient: dX of each slice equals that of
    /// batch norm on the slice alone, and dγ, dβ are the sums over the slices.
    func testGradients_EqualThePerSliceGradients() throws {
        let acc = MemoryAccountant()
        let (shape, groups) = ([7, 3, 2, 3], 3)
        let c = shape[1]
        let x = try slicedInput(shape, groups: groups, acc: acc, seed: 90)
        let gamma = try randomTensor([c], acc, seed: 91), beta = try randomTensor([c], acc, seed: 92)
        let dY = try randomTensor(shape, acc, seed: 93)

        let graph = Graph(accountant: acc)
        graph.batchNormGroups = groups
        let (xv, gv, bv) = (graph.leaf(x), graph.leaf(gamma), graph.leaf(beta))
        let y = try graph.batchNorm(xv, gamma: gv, beta: bv, runningMean: nil, runningVar: nil)
        try graph.backward(y, gradient: try dY.copy())
        let dX = try XCTUnwrap(graph.gradient(of: xv)).array
        let dGamma = try XCTUnwrap(graph.gradient(of: gv)).array, dBeta = try XCTUnwrap(graph.gradient(of: bv)).array

        var expectedDX = [Float](), expectedDGamma = [Double](repeating: 0, count: c), expectedDBeta = expectedDGamma
        for g in 0..<groups {
            let r = Shards.range(part: g, of: groups, count: shape[0])
            let one = Graph(accountant: acc)
            let (xs, gs, bs) = (one.leaf(try samples(x, r, acc: acc)), one.leaf(gamma), one.leaf(beta))
            let ys = try one.batchNorm(xs, gamma: gs, beta: bs, runningMean: nil, runningVar: nil)
            try one.backward(ys, gradient: try samples(dY, r, acc: acc))
            expectedDX += try XCTUnwrap(one.gradient(of: xs)).array
            let dg = try XCTUnwrap(one.gradient(of: gs)).array, db = try XCTUnwrap(one.gradient(of: bs)).array
            for ch in 0..<c { expectedDGamma[ch] += Double(dg[ch]); expectedDBeta[ch] += Double(db[ch]) }
        }
        assertClose(dX, expectedDX, tol: 1e-5, "dX")
        assertClose(dGamma, expectedDGamma.map { Float($0) }, tol: 1e-5, "dGamma")
        assertClose(dBeta, expectedDBeta.map { Float($0) }, tol: 1e-5, "dBeta")
    }

    // MARK: d. G = 1 unchanged

    /// G = 1 (the default, or set explicitly) is bit for bit the whole-batch computation as it was
    /// before groups existed: statistics, running update (unbiased over N·H·W), normalisation and
    /// backward over the whole batch in one kernel call each.
    func testOneGroup_IsBitwiseTheWholeBatchComputation() throws {
        let acc = MemoryAccountant()
        for (k, (shape, affine)) in [([7, 3, 3, 3], true), ([6, 2, 4, 5], false), ([5, 4], true)].enumerated() {
            let (n, c) = (shape[0], shape[1])
            let hw = shape.dropFirst(2).reduce(1, *)
            let what = "\(shape) affine=\(affine)"
            let x = try slicedInput(shape, groups: 3, acc: acc, seed: UInt64(100 + k))
            let gamma = try randomTensor([c], acc, seed: UInt64(110 + k)), beta = try randomTensor([c], acc, seed: UInt64(120 + k))
            let dY = try randomTensor(shape, acc, seed: UInt64(130 + k))
            let (momentum, eps): (Float, Float) = (0.1, 1e-5)

            // Reference: the kernels over the whole batch, as batchNorm called them before groups.
            let mean = try Tensor(shape: [c], category: .data, accountant: acc)
            let invStd = try Tensor(shape: [c], category: .data, accountant: acc)
            Kernels.batchNormStatistics(x.ptr, n: n, c: c, hw: hw, mean: mean.ptr, variance: invStd.ptr)
            let rmRef = try Tensor.from((0..<c).map { 0.1 * Float($0) }, shape: [c], accountant: acc)
            let rvRef = try Tensor.from((0..<c).map { 1 + 0.2 * Float($0) }, shape: [c], accountant: acc)
            let unbias = Float(n * hw) / Float(n * hw - 1)
            for ch in 0..<c {
                rmRef[ch] = (1 - momentum) * rmRef[ch] + momentum * mean[ch]
                rvRef[ch] = (1 - momentum) * rvRef[ch] + momentum * invStd[ch] * unbias
            }
            for ch in 0..<c { invStd[ch] = 1 / (invStd[ch] + eps).squareRoot() }
            let gp = affine ? UnsafePointer(gamma.ptr) : nil, bp = affine ? UnsafePointer(beta.ptr) : nil
            let yRef = try Tensor(shape: shape, category: .data, accountant: acc)
            Kernels.batchNormApply(x.ptr, n: n, c: c, hw: hw, mean: mean.ptr, invStd: invStd.ptr, gamma: gp, beta: bp, y: yRef.ptr)
            let dXRef = try Tensor(shape: shape, category: .data, accountant: acc)
            let dGRef = try Tensor.zeros([c], category: .data, accountant: acc), dBRef = try Tensor.zeros([c], category: .data, accountant: acc)
            Kernels.batchNormBackward(affine ? x.ptr : yRef.ptr, dY: dY.ptr, n: n, c: c, hw: hw, mean: mean.ptr, invStd: invStd.ptr,
                                      gamma: gp, batchStatistics: true, dX: dXRef.ptr, dGamma: affine ? dGRef.ptr : nil,
                                      dBeta: affine ? dBRef.ptr : nil, normalizedInput: !affine)

            for explicit in [false, true] {
                let graph = Graph(accountant: acc)
                XCTAssertEqual(graph.batchNormGroups, 1, "default")
                if explicit { graph.batchNormGroups = 3; graph.batchNormGroups = 1 }
                let rm = try Tensor.from((0..<c).map { 0.1 * Float($0) }, shape: [c], accountant: acc)
                let rv = try Tensor.from((0..<c).map { 1 + 0.2 * Float($0) }, shape: [c], accountant: acc)
                let (xv, gv, bv) = (graph.leaf(x), graph.leaf(gamma), graph.leaf(beta))
                let y = try graph.batchNorm(xv, gamma: affine ? gv : nil, beta: affine ? bv : nil, runningMean: rm, runningVar: rv,
                                            momentum: momentum, eps: eps)
                try graph.backward(y, gradient: try dY.copy())
                let tag = "\(what) explicit=\(explicit)"
                XCTAssertEqual(y.value.array, yRef.array, "output \(tag)")
                XCTAssertEqual(rm.array, rmRef.array, "running mean \(tag)")
                XCTAssertEqual(rv.array, rvRef.array, "running variance \(tag)")
                XCTAssertEqual(try XCTUnwrap(graph.gradient(of: xv)).array, dXRef.array, "dX \(tag)")
                if affine {
                    XCTAssertEqual(try XCTUnwrap(graph.gradient(of: gv)).array, dGRef.array, "dGamma \(tag)")
                    XCTAssertEqual(try XCTUnwrap(graph.gradient(of: bv)).array, dBRef.array, "dBeta \(tag)")
                }
            }
        }
    }

    // MARK: e. Too few samples

    /// Fewer samples than groups is an error that names the option that set the groups.
    func testFewerSamplesThanGroups_ThrowsNamingBnGroups() throws {
        let acc = MemoryAccountant()
        for (shape, groups) in [([2, 3, 4, 4], 3), ([3, 2, 2, 2], 4), ([1, 2, 5, 5], 2)] {
            let x = try randomTensor(shape, acc, seed: 1)
            let graph = Graph(accountant: acc)
            graph.batchNormGroups = groups
            let rm = try Tensor.zeros([shape[1]], category: .data, accountant: acc)
            let rv = try Tensor.filled([shape[1]], value: 1, category: .data, accountant: acc)
            XCTAssertThrowsError(try graph.batchNorm(graph.constant(x), gamma: nil, beta: nil, runningMean: rm, runningVar: rv),
                                 "\(shape) in \(groups) groups") { error in
                XCTAssertTrue("\(error)".contains("--bn-groups"), "message: \(error)")
            }
            XCTAssertEqual(rm.array, [Float](repeating: 0, count: shape[1]), "running statistics untouched on error")
        }
        // Exactly as many samples as groups is fine.
        let graph = Graph(accountant: acc)
        graph.batchNormGroups = 3
        XCTAssertNoThrow(try graph.batchNorm(graph.constant(try randomTensor([3, 2, 2, 2], acc, seed: 2)),
                                             gamma: nil, beta: nil, runningMean: nil, runningVar: nil))
    }
}
