// Elementwise ops (add, sum, ReLU, scale, weighted sum, dropout, drop-path, reshape, zeros):
// gradients against finite differences, and the parallel kernels against plain loops.

import EspalierCore
import EspalierTestSupport
import XCTest

final class ElementwiseTests: XCTestCase {
    let acc = MemoryAccountant()

    func testBackward_AddSumScale_MatchFiniteDifferences() throws {
        let a = try randomTensor([2, 3, 4, 4], acc, seed: 1), b = try randomTensor([2, 3, 4, 4], acc, seed: 2)
        let c = try randomTensor([2, 3, 4, 4], acc, seed: 3)
        try GradCheck().check("add", inputs: [a, b]) { g, v in try g.add(v[0], v[1]) }
        try GradCheck().check("sum3", inputs: [a, b, c]) { g, v in try g.sum([v[0], v[1], v[2], v[0]]) }
        try GradCheck().check("scale", inputs: [a]) { g, v in try g.scale(v[0], by: -1.7) }
    }

    func testBackward_ReLU_MatchesFiniteDifferences() throws {
        // Values kept away from the kink at 0 so central differences are valid.
        let x = try randomTensor([2, 2, 5, 5], acc, seed: 4)
        for i in 0..<x.count where abs(x[i]) < 0.05 { x[i] = 0.3 }
        try GradCheck().check("relu", inputs: [x]) { g, v in try g.relu(v[0]) }
    }

    func testBackward_MixingWeights_MatchFiniteDifferences() throws {
        let xs = try (0..<3).map { try randomTensor([2, 2, 3, 3], acc, seed: UInt64(10 + $0)) }
        let w = try Tensor.from([0.2, -0.5, 1.3], shape: [3], accountant: acc)
        try GradCheck().check("weightedSum", inputs: xs + [w]) { g, v in try g.weightedSum(Array(v[0..<3]), weights: v[3]) }
        let wm = try Tensor.from([0.2, -0.5, 1.3, 0.7, 2, -1], shape: [2, 3], accountant: acc)
        try GradCheck().check("weightedSum indexed", inputs: xs + [wm]) { g, v in
            try g.weightedSum([v[0], v[1], v[2], v[0]], weights: v[3], indices: [5, 0, 3, 3])
        }
        try GradCheck().check("scaleByElement", inputs: [xs[0], w]) { g, v in try g.scale(v[0], byElement: 2, of: v[1]) }
    }

    func testBackward_DropoutAndDropPath_MatchFiniteDifferences() throws {
        // GradCheck rebuilds the graph with the same seed, so every evaluation draws the same mask.
        let x = try randomTensor([4, 2, 3, 3], acc, seed: 5)
        for i in 0..<x.count where abs(x[i]) < 0.05 { x[i] = -0.3 }   // away from ReLU's kink
        try GradCheck().check("dropout", inputs: [x]) { g, v in try g.dropout(v[0], p: 0.3) }
        try GradCheck().check("dropPath", inputs: [x]) { g, v in try g.dropPath(v[0], p: 0.5) }
        try GradCheck().check("reshape", inputs: [x]) { g, v in try g.relu(try g.reshape(v[0], [4, 18])) }
    }

    func testDropPath_ZeroesWholeSamplesAndScalesTheRest() throws {
        let g = Graph(accountant: acc, seed: 11)
        let x = g.constant(try Tensor.filled([64, 2, 2, 2], value: 1, category: .data, accountant: acc))
        let y = try g.dropPath(x, p: 0.25)
        var dropped = 0
        for s in 0..<64 {
            let vals = Set((0..<8).map { y.value[s * 8 + $0] })
            XCTAssertEqual(vals.count, 1, "a sample is dropped or kept as a whole")
            if vals.first == 0 { dropped += 1 } else { XCTAssertEqual(vals.first!, 1 / 0.75, accuracy: 1e-6) }
        }
        XCTAssertTrue((4...30).contains(dropped), "about a quarter dropped, got \(dropped)")
        g.training = false
        XCTAssertTrue(try g.dropPath(x, p: 0.25) === x, "identity in evaluation mode")
    }

    func testParallelKernels_MatchPlainLoops() throws {
        let n = 200_003   // large enough to split across cores, odd so the chunks are uneven
        let a = try randomTensor([n], acc, seed: 6), b = try randomTensor([n], acc, seed: 7)
        let out = try Tensor(shape: [n], category: .data, accountant: acc)
        Kernels.add(a.ptr, b.ptr, out.ptr, count: n)
        XCTAssertEqual(out.array, zip(a.array, b.array).map { $0 + $1 })
        Kernels.reluForward(a.ptr, out.ptr, count: n)
        XCTAssertEqual(out.array, a.array.map { max($0, 0) })
        // The weighted sum: bit for bit the plain loop that adds the terms in order (one, two and
        // eight terms: one group; 9 and 20: two and three groups, each after the first going on
        // from the sums so far; the odd count leaves a tail in every chunk and tile), and zeros
        // for no terms.
        let c18 = try (0..<18).map { try randomTensor([n], acc, seed: UInt64(20 + $0)) }
        let terms = [a, b] + c18
        for k in [1, 2, 8, 9, 20] {
            let xs = terms.prefix(k).map { UnsafePointer($0.ptr) }, w = (0..<k).map { Float($0) * 0.37 - 0.5 }
            Kernels.weightedSumForward(Array(xs), w, out.ptr, count: n)
            var expected = [Float](repeating: 0, count: n)
            for i in 0..<n {
                var v = w[0] * xs[0][i]
                for j in 1..<k { v = v + w[j] * xs[j][i] }
                expected[i] = v
            }
            XCTAssertEqual(out.array.map(\.bitPattern), expected.map(\.bitPattern), "weighted sum of \(k)")
        }
        Kernels.weightedSumForward([], [], out.ptr, count: n)
        XCTAssertEqual(out.array, [Float](repeating: 0, count: n))
        let dot = Kernels.dot(a.ptr, b.ptr, count: n)
        let ref = zip(a.array, b.array).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        XCTAssertEqual(dot, ref, accuracy: 1e-3 * max(1, abs(ref)))
        // Tiled multi-dot (the α gradient of a weighted sum), against the plain Double sums; also a short, untiled count.
        let c = try randomTensor([n], acc, seed: 9)
        for count in [n, 13] {
            let dots = Kernels.dots(a.ptr, [UnsafePointer(b.ptr), UnsafePointer(c.ptr), UnsafePointer(a.ptr)], count: count)
            for (k, other) in [b, c, a].enumerated() {
                let r = (0..<count).reduce(0.0) { $0 + Double(a[$1]) * Double(other[$1]) }
                XCTAssertEqual(dots[k], r, accuracy: 1e-3 * max(1, abs(r)), "dot \(k) over \(count)")
            }
        }
        XCTAssertEqual(Kernels.dots(a.ptr, [], count: n), [])
    }

    /// add, addScaled and scale take their own loop in place (out == a); it must give the floats of
    /// the loop with a separate output, bit for bit, on both cores' chunks and on a short count.
    func testInPlaceKernels_AreBitForBitTheKernelsWithAnOutput() throws {
        for n in [200_003, 13] {
            let a = try randomTensor([n], acc, seed: 10), b = try randomTensor([n], acc, seed: 11)
            let out = try Tensor(shape: [n], category: .data, accountant: acc)
            let cases: [(String, (UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> Void)] = [
                ("add", { x, o in Kernels.add(x, b.ptr, o, count: n) }),
                ("addScaled", { x, o in Kernels.addScaled(x, b.ptr, scale: 0.37, o, count: n) }),
                ("axpy", { x, o in if UnsafePointer(o) != x { o.update(from: x, count: n) }; Kernels.axpy(0.37, b.ptr, o, count: n) }),
                ("scale", { x, o in Kernels.scale(x, -1.3, o, count: n) }),
            ]
            for (name, kernel) in cases {
                kernel(a.ptr, out.ptr)
                let inPlace = try Tensor(shape: [n], category: .data, accountant: acc)
                inPlace.ptr.update(from: a.ptr, count: n)
                kernel(inPlace.ptr, inPlace.ptr)
                XCTAssertEqual(inPlace.array.map(\.bitPattern), out.array.map(\.bitPattern), "\(name) in place over \(n)")
            }
            XCTAssertEqual(out.array.map(\.bitPattern), a.array.map { (-1.3 * $0).bitPattern }, "scale against the plain loop")
        }
    }

    func testNoGrad_RecordsNothingAndKeepsNothingForBackward() throws {
        let g = Graph(accountant: acc)
        let x = g.leaf(try randomTensor([2, 3, 8, 8], acc, seed: 8))
        let w = g.leaf(try randomTensor([3, 3, 3, 3], acc, seed: 9))
        let before = acc.current[.activations]
        let y = try g.noGrad { try g.relu(try g.conv2d(x, w, padding: 1)) }
        XCTAssertEqual(g.tapeLength, 0)
        XCTAssertFalse(y.requiresGrad)
        // Only y itself is alive: the conv output was freed as soon as ReLU had read it.
        XCTAssertEqual(acc.current[.activations] - before, y.value.count * 4)
    }

    func testBackward_FreesSavedTensorsAndIntermediateGradients() throws {
        let acc = MemoryAccountant()
        let g = Graph(accountant: acc)
        let x = g.leaf(try randomTensor([2, 3, 8, 8], acc, seed: 8))
        let w = g.leaf(try randomTensor([3, 3, 3, 3], acc, seed: 9))
        var loss: Variable? = try g.mean(try g.relu(try g.conv2d(try g.relu(x), w, padding: 1)))
        XCTAssertGreaterThan(acc.current[.activations], 0, "saved for backward")
        try g.backward(loss!)
        loss = nil
        XCTAssertEqual(g.tapeLength, 0)
        XCTAssertEqual(acc.current[.activations], 0, "every saved activation freed after backward")
        // Only the leaves' gradients remain.
        XCTAssertEqual(acc.current[.activationGradients], (x.value.count + w.value.count) * 4)
    }

    func testBackward_WithoutParameters_IsAClearError() throws {
        let g = Graph(accountant: acc)
        let c = g.constant(try randomTensor([3], acc, seed: 1))
        XCTAssertThrowsError(try g.backward(try g.mean(c))) { XCTAssertTrue("\($0)".contains("does not depend on any parameter")) }
    }

    func testMaskedFill_KeepsValuesAndGradientOnlyWhereKept() throws {
        let x = try randomTensor([2, 3], acc, seed: 12)
        let keep = [true, false, true, true, true, false]
        try GradCheck().check("maskedFill", inputs: [x]) { g, v in try g.scale(try g.maskedFill(v[0], keep: keep, value: -5), by: 2) }
        let g = Graph(accountant: acc)
        let y = try g.maskedFill(g.constant(x), keep: keep, value: -.infinity)
        XCTAssertEqual(y.value[1], -.infinity)
        XCTAssertEqual(y.value[0], x[0])
    }
}
