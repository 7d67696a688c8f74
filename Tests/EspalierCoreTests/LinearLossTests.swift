// Linear layer and softmax cross-entropy: the sgemm kernels against the naive reference,
// gradients against finite differences, hand-computed losses, accuracy helpers, and a dry run
// of a small network using every op of this group allocating exactly as the real run.

import EspalierCore
import EspalierTestSupport
import XCTest

final class LinearLossTests: XCTestCase {
    func testLinearKernels_MatchNaiveReference() throws {
        let acc = MemoryAccountant()
        // The last case is large enough to split rows and output features across cores.
        for (k, (n, inF, outF)) in [(3, 5, 4), (1, 7, 1), (64, 256, 100)].enumerated() {
            let x = try randomTensor([n, inF], acc, seed: UInt64(k))
            let w = try randomTensor([outF, inF], acc, seed: UInt64(10 + k))
            let b = try randomTensor([outF], acc, seed: UInt64(20 + k))
            let dY = try randomTensor([n, outF], acc, seed: UInt64(30 + k))
            for withBias in [false, true] {
                let bp = withBias ? UnsafePointer(b.ptr) : nil
                let y1 = try Tensor(shape: [n, outF], category: .data, accountant: acc)
                let y2 = try Tensor(shape: [n, outF], category: .data, accountant: acc)
                Kernels.linearForward(x: x.ptr, w: w.ptr, b: bp, y: y1.ptr, n: n, inFeatures: inF, outFeatures: outF)
                Kernels.linearForwardNaive(x: x.ptr, w: w.ptr, b: bp, y: y2.ptr, n: n, inFeatures: inF, outFeatures: outF)
                assertClose(y1.array, y2.array, tol: 1e-5, "forward bias=\(withBias) \(n)x\(inF)→\(outF)")
            }
            let dX1 = try Tensor.filled([n, inF], value: 5, category: .data, accountant: acc)   // overwritten
            let dX2 = try Tensor(shape: [n, inF], category: .data, accountant: acc)
            let dW1 = try Tensor.filled([outF, inF], value: 0.5, category: .data, accountant: acc)   // accumulated
            let dW2 = try Tensor.filled([outF, inF], value: 0.5, category: .data, accountant: acc)
            let dB1 = try Tensor.filled([outF], value: -1, category: .data, accountant: acc)
            let dB2 = try Tensor.filled([outF], value: -1, category: .data, accountant: acc)
            Kernels.linearBackward(x: x.ptr, w: w.ptr, dY: dY.ptr, dX: dX1.ptr, dW: dW1.ptr, dB: dB1.ptr, n: n, inFeatures: inF, outFeatures: outF)
            Kernels.linearBackwardNaive(x: x.ptr, w: w.ptr, dY: dY.ptr, dX: dX2.ptr, dW: dW2.ptr, dB: dB2.ptr, n: n, inFeatures: inF, outFeatures: outF)
            assertClose(dX1.array, dX2.array, tol: 1e-4, "dX \(n)x\(inF)→\(outF)")
            assertClose(dW1.array, dW2.array, tol: 1e-4, "dW \(n)x\(inF)→\(outF)")
            assertClose(dB1.array, dB2.array, tol: 1e-4, "dB \(n)x\(inF)→\(outF)")
            // Each gradient alone gives the same result.
            let dW3 = try Tensor.filled([outF, inF], value: 0.5, category: .data, accountant: acc)
            Kernels.linearBackward(x: x.ptr, w: w.ptr, dY: dY.ptr, dX: nil, dW: dW3.ptr, dB: nil, n: n, inFeatures: inF, outFeatures: outF)
            XCTAssertEqual(dW3.array, dW1.array)
            let dX3 = try Tensor(shape: [n, inF], category: .data, accountant: acc)
            Kernels.linearBackward(x: x.ptr, w: w.ptr, dY: dY.ptr, dX: dX3.ptr, dW: nil, dB: nil, n: n, inFeatures: inF, outFeatures: outF)
            XCTAssertEqual(dX3.array, dX1.array)
        }
    }

    func testLinear_WithAndWithoutBias_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([3, 5], acc, seed: 1)
        let w = try randomTensor([4, 5], acc, seed: 2)
        let b = try randomTensor([4], acc, seed: 3)
        try GradCheck().check("linear with bias", inputs: [x, w, b]) { graph, v in try graph.linear(v[0], weight: v[1], bias: v[2]) }
        try GradCheck().check("linear without bias", inputs: [x, w]) { graph, v in try graph.linear(v[0], weight: v[1]) }
        // (N, C, 1, 1) input is flattened, as after global pooling kept 4-d.
        let x4 = try randomTensor([2, 5, 1, 1], acc, seed: 4)
        try GradCheck().check("linear of (N, C, 1, 1)", inputs: [x4, w, b]) { graph, v in try graph.linear(v[0], weight: v[1], bias: v[2]) }
        let graph = Graph(accountant: acc)
        XCTAssertThrowsError(try graph.linear(graph.constant(x), weight: graph.constant(try randomTensor([4, 6], acc, seed: 5))))
        XCTAssertThrowsError(try graph.linear(graph.constant(x), weight: graph.constant(w), bias: graph.constant(try randomTensor([3], acc, seed: 6))))
    }

    func testLinear_ParameterGradients_AccumulateIntoParameters() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([3, 5], acc, seed: 1)
        let w = Parameter(name: "fc.weight", value: try randomTensor([4, 5], acc, seed: 2))
        let b = Parameter(name: "fc.bias", value: try randomTensor([4], acc, seed: 3))
        let dY = try randomTensor([3, 4], acc, seed: 4)
        let ref = Graph(accountant: acc)
        let wl = ref.leaf(w.value), bl = ref.leaf(b.value)
        try ref.backward(try ref.linear(ref.constant(x), weight: wl, bias: bl), gradient: try dY.copy())
        let dW = try XCTUnwrap(ref.gradient(of: wl)).array, dB = try XCTUnwrap(ref.gradient(of: bl)).array
        for step in 1...2 {
            let graph = Graph(accountant: acc)
            try graph.backward(try graph.linear(graph.constant(x), weight: graph.param(w), bias: graph.param(b)), gradient: try dY.copy())
            assertClose(try XCTUnwrap(w.grad).array, dW.map { $0 * Float(step) }, tol: 1e-5, "dW step \(step)")
            assertClose(try XCTUnwrap(b.grad).array, dB.map { $0 * Float(step) }, tol: 1e-5, "dB step \(step)")
        }
    }

    func testSoftmaxCrossEntropy_MatchesHandComputedLoss() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        let logits = graph.constant(try Tensor.from([1, 2, 3, 0, 0, 0], shape: [2, 3], accountant: acc))
        let loss = try graph.softmaxCrossEntropy(logits, labels: [2, 0])
        XCTAssertEqual(loss.shape, [1])
        let lse0 = log(exp(1.0) + exp(2.0) + exp(3.0))
        XCTAssertEqual(Double(loss.value[0]), ((lse0 - 3) + log(3.0)) / 2, accuracy: 1e-6)
        // Label smoothing 0.1: target (1−ε)·onehot + ε/K.
        let smoothed = try graph.softmaxCrossEntropy(logits, labels: [2, 0], labelSmoothing: 0.1)
        let row0 = 0.9 * (lse0 - 3) + 0.1 / 3 * ((lse0 - 1) + (lse0 - 2) + (lse0 - 3))
        let row1 = log(3.0)
        XCTAssertEqual(Double(smoothed.value[0]), (row0 + row1) / 2, accuracy: 1e-6)
    }

    func testSoftmaxCrossEntropy_LargeLogits_StayFinite() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        let x = graph.leaf(try Tensor.from([1000, 1001, 999, -1000, -1001, -999], shape: [2, 3], accountant: acc))
        let loss = try graph.softmaxCrossEntropy(x, labels: [1, 0])
        let expected = (log(exp(-1.0) + 1 + exp(-2.0)) + (log(exp(1.0) + 1 + exp(2.0)) - 1)) / 2
        XCTAssertEqual(Double(loss.value[0]), expected, accuracy: 1e-5)
        try graph.backward(loss)
        XCTAssertTrue(try XCTUnwrap(graph.gradient(of: x)).array.allSatisfy { $0.isFinite })
    }

    func testSoftmaxCrossEntropy_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let logits = try randomTensor([4, 5], acc, seed: 7, bound: 3)
        for smoothing: Float in [0, 0.1] {
            try GradCheck().check("cross-entropy ε=\(smoothing)", inputs: [logits]) { graph, v in
                try graph.softmaxCrossEntropy(v[0], labels: [0, 4, 2, 2], labelSmoothing: smoothing)
            }
        }
    }

    func testSoftmaxCrossEntropy_GradientIsProbsMinusOnehotTimesSeedOverN() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        let values: [Float] = [0.5, -1, 2, 0, 1, 1]
        let x = graph.leaf(try Tensor.from(values, shape: [2, 3], accountant: acc))
        let labels: [Int32] = [1, 2]
        try graph.backward(try graph.softmaxCrossEntropy(x, labels: labels), seed: 3)
        var expected: [Float] = []
        for r in 0..<2 {
            let row = values[(r * 3)..<(r * 3 + 3)].map { Double($0) }
            let z = row.map { exp($0) }.reduce(0, +)
            for j in 0..<3 { expected.append(Float((exp(row[j]) / z - (j == Int(labels[r]) ? 1 : 0)) * 3 / 2)) }
        }
        assertClose(try XCTUnwrap(graph.gradient(of: x)).array, expected, tol: 1e-6, "dLogits")
    }

    func testSoftmaxCrossEntropy_BadLabels_AreErrorsNotCrashes() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        let x = graph.constant(try Tensor.zeros([2, 3], category: .data, accountant: acc))
        XCTAssertThrowsError(try graph.softmaxCrossEntropy(x, labels: [0, 3]))
        XCTAssertThrowsError(try graph.softmaxCrossEntropy(x, labels: [0, -1]))
        XCTAssertThrowsError(try graph.softmaxCrossEntropy(x, labels: [0]))
    }

    func testArgmaxAndCorrectCount_FirstMaximumWins() throws {
        let acc = MemoryAccountant()
        let logits = try Tensor.from([1, 3, 3,
                                      2, 0, 1,
                                      0, 0, 5], shape: [3, 3], accountant: acc)
        XCTAssertEqual(logits.argmaxRows(), [1, 0, 2])
        // Row 0's label 2 ties with the earlier index 1, so it is a top-2 hit but not a top-1 hit.
        XCTAssertEqual(logits.correctCount(labels: [2, 0, 1]), 1)
        XCTAssertEqual(logits.correctCount(labels: [2, 0, 1], topK: 2), 2)
        XCTAssertEqual(logits.correctCount(labels: [1, 0, 2]), 3)
        XCTAssertEqual(logits.correctCount(labels: [1, 0, 1], topK: 3), 3)
    }

    func testMean_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([2, 3, 4], acc, seed: 3)
        try GradCheck().check("mean", inputs: [x]) { graph, v in try graph.mean(v[0]) }
        let graph = Graph(accountant: acc)
        XCTAssertEqual(try graph.mean(graph.constant(x)).value[0], x.array.reduce(0, +) / 24, accuracy: 1e-6)
    }

    /// A small network through every op of this group; returns (allocations, peak bytes, flops).
    private func runNetwork(_ acc: MemoryAccountant) throws -> (Int, Int, Int) {
        let graph = Graph(accountant: acc, seed: 1)
        let w = Parameter(name: "conv.weight", value: try randomTensor([8, 3, 3, 3], acc, seed: 1))
        let gamma = Parameter(name: "bn.weight", value: try Tensor.filled([8], value: 1, category: .parameters, accountant: acc))
        let beta = Parameter(name: "bn.bias", value: try Tensor.zeros([8], category: .parameters, accountant: acc))
        let rm = try Tensor.zeros([8], category: .parameters, accountant: acc)
        let rv = try Tensor.filled([8], value: 1, category: .parameters, accountant: acc)
        let fcW = Parameter(name: "fc.weight", value: try randomTensor([5, 8], acc, seed: 2))
        let fcB = Parameter(name: "fc.bias", value: try Tensor.zeros([5], category: .parameters, accountant: acc))
        let x = graph.constant(try randomTensor([4, 3, 9, 9], acc, seed: 3))

        var h = try graph.conv2d(x, graph.param(w), padding: 1)
        h = try graph.batchNorm(h, gamma: graph.param(gamma), beta: graph.param(beta), runningMean: rm, runningVar: rv)
        h = try graph.relu(h)
        h = try graph.maxPool2d(h, kernel: 3, stride: 2, padding: 1)                 // (4, 8, 5, 5)
        let parts = try graph.splitChannels(h, sizes: [3, 5])
        let a = try graph.avgPool2d(parts[0], kernel: 3, stride: 1, padding: 1)
        let b = try graph.add(try graph.maxPool2d(parts[1], kernel: 3, stride: 1, padding: 1), try graph.zeros(like: parts[1]))
        h = try graph.channelShuffle(try graph.concatChannels([b, a]), groups: 2)
        h = try graph.batchNorm(h, gamma: nil, beta: nil, runningMean: nil, runningVar: nil)
        let logits = try graph.linear(try graph.globalAvgPool(h), weight: graph.param(fcW), bias: graph.param(fcB))
        let loss = try graph.add(try graph.softmaxCrossEntropy(logits, labels: [0, 1, 4, 2]), try graph.scale(try graph.mean(logits), by: 0.01))
        try graph.backward(loss)
        return (acc.allocationCount, acc.peakTotal, graph.flops)
    }

    func testDryRun_NetworkOfTheseOps_AllocatesExactlyAsRealRun() throws {
        let real = try runNetwork(MemoryAccountant())
        let dry = try runNetwork(MemoryAccountant(mode: .dryRun))
        XCTAssertEqual(real.0, dry.0, "allocation count")
        XCTAssertEqual(real.1, dry.1, "peak bytes")
        XCTAssertEqual(real.2, dry.2, "flops")
        XCTAssertGreaterThan(real.2, 0)
    }
}
