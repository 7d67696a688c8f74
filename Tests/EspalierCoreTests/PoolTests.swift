// Pooling: tuned kernels against the naive references, gradients against finite differences,
// and the PyTorch semantics (padding as −∞ for max, count_include_pad=False for average, ties).

import EspalierCore
import EspalierTestSupport
import XCTest

/// Distinct values spaced 0.05 apart in random order: no ties, so max-pool is differentiable
/// at every point a finite difference (step 0.01) can reach.
private func distinctTensor(_ shape: [Int], _ acc: MemoryAccountant, seed: UInt64) throws -> Tensor {
    var rng = RNG(seed: seed)
    let n = shape.reduce(1, *)
    let perm = rng.permutation(n)
    let t = try Tensor(shape: shape, category: .data, accountant: acc)
    for i in 0..<n { t[i] = (Float(perm[i]) - Float(n) / 2) * 0.05 }
    return t
}

/// Random values on a coarse grid (many ties), to check tie-breaking is the same in both paths.
private func tiedTensor(_ shape: [Int], _ acc: MemoryAccountant, seed: UInt64) throws -> Tensor {
    var rng = RNG(seed: seed)
    let t = try Tensor(shape: shape, category: .data, accountant: acc)
    for i in 0..<t.count { t[i] = Float(rng.int(4)) * 0.5 - 1 }
    return t
}

final class PoolTests: XCTestCase {
    static let geometries: [PoolGeometry] = [
        PoolGeometry(n: 2, c: 3, h: 6, w: 6, k: 3, stride: 1, padding: 1),
        PoolGeometry(n: 2, c: 3, h: 6, w: 6, k: 3, stride: 2, padding: 1),
        PoolGeometry(n: 2, c: 2, h: 7, w: 5, k: 3, stride: 2, padding: 1),   // odd sizes
        PoolGeometry(n: 1, c: 2, h: 6, w: 8, k: 2, stride: 2, padding: 0),
        PoolGeometry(n: 1, c: 3, h: 5, w: 7, k: 2, stride: 2, padding: 0),   // odd: floor drops the last row/column
        PoolGeometry(n: 2, c: 2, h: 5, w: 5, k: 3, stride: 1, padding: 0),
        PoolGeometry(n: 1, c: 2, h: 4, w: 4, k: 2, stride: 2, padding: 1),   // 2×2 with padding: windows half off the image
        PoolGeometry(n: 1, c: 2, h: 8, w: 8, k: 5, stride: 3, padding: 0),   // auxiliary-head pool
        PoolGeometry(n: 1, c: 1, h: 1, w: 1, k: 3, stride: 2, padding: 1),   // 1×1 image
        PoolGeometry(n: 1, c: 1, h: 1, w: 1, k: 3, stride: 1, padding: 1),   // 1×1 image, stride 1
        PoolGeometry(n: 2, c: 2, h: 7, w: 7, k: 3, stride: 1, padding: 1),   // 7×7: one SIMD8 block would overrun
        PoolGeometry(n: 1, c: 2, h: 2, w: 19, k: 3, stride: 1, padding: 1),  // two rows, SIMD blocks and a tail
        PoolGeometry(n: 1, c: 2, h: 9, w: 1, k: 3, stride: 1, padding: 1),   // one column
        PoolGeometry(n: 1, c: 2, h: 5, w: 18, k: 3, stride: 2, padding: 1),
    ]
    /// Large enough that the tuned kernels split the planes across cores.
    static let large = PoolGeometry(n: 4, c: 16, h: 32, w: 32, k: 3, stride: 2, padding: 1)

    func testTunedPools_MatchNaiveReference() throws {
        let acc = MemoryAccountant()
        for (k, g) in (Self.geometries + [Self.large, PoolGeometry(n: 4, c: 16, h: 32, w: 32, k: 3, stride: 1, padding: 1)]).enumerated() {
            XCTAssertNil(g.validate())
            let x = try tiedTensor(g.inputShape, acc, seed: UInt64(k))
            let dY = try randomTensor(g.outputShape, acc, seed: UInt64(100 + k))
            let y1 = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            let y2 = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            let dX1 = try Tensor.filled(g.inputShape, value: 7, category: .data, accountant: acc)  // overwritten
            let dX2 = try Tensor(shape: g.inputShape, category: .data, accountant: acc)

            Kernels.maxPool2dForward(g, x: x.ptr, y: y1.ptr)
            Kernels.maxPool2dForwardNaive(g, x: x.ptr, y: y2.ptr)
            XCTAssertEqual(y1.array, y2.array, "max forward \(g)")
            Kernels.maxPool2dBackward(g, x: x.ptr, dY: dY.ptr, dX: dX1.ptr)
            Kernels.maxPool2dBackwardNaive(g, x: x.ptr, dY: dY.ptr, dX: dX2.ptr)
            assertClose(dX1.array, dX2.array, tol: 1e-6, "max backward \(g)")

            for include in [false, true] {
                Kernels.avgPool2dForward(g, countIncludePad: include, x: x.ptr, y: y1.ptr)
                Kernels.avgPool2dForwardNaive(g, countIncludePad: include, x: x.ptr, y: y2.ptr)
                assertClose(y1.array, y2.array, tol: 1e-6, "avg forward include=\(include) \(g)")
                dX1.fill(7)
                Kernels.avgPool2dBackward(g, countIncludePad: include, dY: dY.ptr, dX: dX1.ptr)
                Kernels.avgPool2dBackwardNaive(g, countIncludePad: include, dY: dY.ptr, dX: dX2.ptr)
                assertClose(dX1.array, dX2.array, tol: 1e-6, "avg backward include=\(include) \(g)")
            }
        }
    }

    /// The stride-1 average and max pools (forward, and both backward) read x's (or dY's) rows and
    /// store y's in whole vectors where the vector stays inside its plane: with x, y and dY ending
    /// where an unreadable page begins, one float read or written past any is a crash. Against the
    /// naive reference, on sizes with and without a partial vector per row, one row, one column.
    func testPoolsStrideOne_WholeVectorRows_NeverPassTheTensorsEnd() throws {
        let acc = MemoryAccountant()
        for (k, (h, w)) in [(7, 7), (14, 14), (5, 9), (3, 17), (9, 1), (1, 1), (2, 19), (28, 28), (4, 12)].enumerated() {
            let g = PoolGeometry(n: 2, c: 3, h: h, w: w, k: 3, stride: 1, padding: 1)
            let x = try EndOfPageBuffer(try tiedTensor(g.inputShape, acc, seed: UInt64(300 + k)).array)
            let y = try EndOfPageBuffer(count: g.outputShape.reduce(1, *))
            let ref = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            for include in [false, true] {
                Kernels.avgPool2dForward(g, countIncludePad: include, x: x.ptr, y: y.ptr)
                Kernels.avgPool2dForwardNaive(g, countIncludePad: include, x: x.ptr, y: ref.ptr)
                assertClose(y.values, ref.array, tol: 1e-6, "avg forward include=\(include) \(h)×\(w)")
            }
            Kernels.maxPool2dForward(g, x: x.ptr, y: y.ptr)
            Kernels.maxPool2dForwardNaive(g, x: x.ptr, y: ref.ptr)
            XCTAssertEqual(y.values, ref.array, "max forward \(h)×\(w)")
            // Max backward reads x's rows in whole vectors too; its sums are the reference's,
            // added in the same order (outputs in row-major order), so the same bits. Average
            // backward reads dY's rows so.
            let dY = try EndOfPageBuffer(try randomTensor(g.outputShape, acc, seed: UInt64(400 + k)).array)
            let dX = try EndOfPageBuffer(count: g.inputShape.reduce(1, *))
            let refDX = try Tensor(shape: g.inputShape, category: .data, accountant: acc)
            Kernels.maxPool2dBackward(g, x: x.ptr, dY: dY.ptr, dX: dX.ptr)
            Kernels.maxPool2dBackwardNaive(g, x: x.ptr, dY: dY.ptr, dX: refDX.ptr)
            XCTAssertEqual(dX.values.map(\.bitPattern), refDX.array.map(\.bitPattern), "max backward \(h)×\(w)")
            for include in [false, true] {
                Kernels.avgPool2dBackward(g, countIncludePad: include, dY: dY.ptr, dX: dX.ptr)
                Kernels.avgPool2dBackwardNaive(g, countIncludePad: include, dY: dY.ptr, dX: refDX.ptr)
                assertClose(dX.values, refDX.array, tol: 1e-6, "avg backward include=\(include) \(h)×\(w)")
            }
        }
    }

    /// With an addend (the input's gradient so far), backward stores addend + dX: bit for bit the
    /// plain dX followed by an add pass, from another tensor and in place, on every geometry.
    func testPoolBackward_AddsIntoTheAddend_BitForBitAsAnAddPass() throws {
        let acc = MemoryAccountant()
        for (k, g) in (Self.geometries + [Self.large]).enumerated() {
            let x = try tiedTensor(g.inputShape, acc, seed: UInt64(k))
            let dY = try randomTensor(g.outputShape, acc, seed: UInt64(100 + k))
            let addend = try randomTensor(g.inputShape, acc, seed: UInt64(200 + k))
            let plain = try Tensor(shape: g.inputShape, category: .data, accountant: acc)
            let expected = try Tensor(shape: g.inputShape, category: .data, accountant: acc)
            let out = try Tensor.filled(g.inputShape, value: 7, category: .data, accountant: acc)
            let inPlace = try Tensor(shape: g.inputShape, category: .data, accountant: acc)
            for pool in ["max", "avg", "avg include pad"] {
                func backward(_ dX: Tensor, _ add: Tensor?) {
                    let a = add.map { UnsafePointer($0.ptr) }
                    if pool == "max" { Kernels.maxPool2dBackward(g, x: x.ptr, dY: dY.ptr, dX: dX.ptr, addend: a) }
                    else { Kernels.avgPool2dBackward(g, countIncludePad: pool != "avg", dY: dY.ptr, dX: dX.ptr, addend: a) }
                }
                backward(plain, nil)
                Kernels.add(addend.ptr, plain.ptr, expected.ptr, count: plain.count)
                backward(out, addend)
                XCTAssertEqual(out.array, expected.array, "\(pool) backward into another tensor, \(g)")
                inPlace.ptr.update(from: addend.ptr, count: addend.count)
                backward(inPlace, inPlace)
                XCTAssertEqual(inPlace.array, expected.array, "\(pool) backward in place, \(g)")
            }
        }
    }

    func testGlobalAvgPool_MatchesNaiveReference() throws {
        let acc = MemoryAccountant()
        for (planes, hw) in [(6, 25), (1, 1), (64, 1024)] {
            let x = try randomTensor([planes * hw], acc, seed: 3)
            let dY = try randomTensor([planes], acc, seed: 4)
            let y1 = try Tensor(shape: [planes], category: .data, accountant: acc)
            let y2 = try Tensor(shape: [planes], category: .data, accountant: acc)
            let dX1 = try Tensor(shape: [planes * hw], category: .data, accountant: acc)
            let dX2 = try Tensor(shape: [planes * hw], category: .data, accountant: acc)
            Kernels.globalAvgPoolForward(x.ptr, y: y1.ptr, planes: planes, hw: hw)
            Kernels.globalAvgPoolForwardNaive(x.ptr, y: y2.ptr, planes: planes, hw: hw)
            assertClose(y1.array, y2.array, tol: 1e-6, "gap forward \(planes)x\(hw)")
            Kernels.globalAvgPoolBackward(dY.ptr, dX: dX1.ptr, planes: planes, hw: hw)
            Kernels.globalAvgPoolBackwardNaive(dY.ptr, dX: dX2.ptr, planes: planes, hw: hw)
            assertClose(dX1.array, dX2.array, tol: 1e-6, "gap backward \(planes)x\(hw)")
        }
    }

    func testMaxPool_DistinctInputs_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        for (k, g) in Self.geometries.enumerated() {
            let x = try distinctTensor(g.inputShape, acc, seed: UInt64(k))
            try GradCheck().check("maxpool \(g)", inputs: [x]) { graph, v in
                try graph.maxPool2d(v[0], kernel: g.k, stride: g.stride, padding: g.padding)
            }
        }
    }

    func testAvgPool_CountExcludesPad_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        for (k, g) in Self.geometries.enumerated() {
            let x = try randomTensor(g.inputShape, acc, seed: UInt64(k))
            for include in [false, true] {
                try GradCheck().check("avgpool include=\(include) \(g)", inputs: [x]) { graph, v in
                    try graph.avgPool2d(v[0], kernel: g.k, stride: g.stride, padding: g.padding, countIncludePad: include)
                }
            }
        }
    }

    func testGlobalAvgPool_MatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([2, 3, 5, 3], acc, seed: 11)
        try GradCheck().check("globalAvgPool", inputs: [x]) { graph, v in try graph.globalAvgPool(v[0]) }
        let graph = Graph(accountant: acc)
        XCTAssertEqual(try graph.globalAvgPool(graph.constant(x)).shape, [2, 3])
    }

    func testAvgPool_CountExcludesPad_DividesByInImageElements() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        let x = graph.constant(try Tensor.filled([1, 1, 4, 4], value: 1, category: .data, accountant: acc))
        // Excluding padding, an all-ones image averages to exactly 1 everywhere, corners included.
        let exclude = try graph.avgPool2d(x, kernel: 3, stride: 1, padding: 1)
        XCTAssertEqual(exclude.value.array, Array(repeating: 1, count: 16))
        // Including padding, a corner window sees 4 of 9 taps, an edge window 6 of 9.
        let include = try graph.avgPool2d(x, kernel: 3, stride: 1, padding: 1, countIncludePad: true)
        XCTAssertEqual(include.value[0], 4.0 / 9, accuracy: 1e-6)
        XCTAssertEqual(include.value[1], 6.0 / 9, accuracy: 1e-6)
        XCTAssertEqual(include.value[5], 1, accuracy: 1e-6)
        // Stride 2 on 4×4 gives 2×2, its top-left window has 4 in-image elements.
        let x2 = try Tensor.from((0..<16).map(Float.init), shape: [1, 1, 4, 4], accountant: acc)
        let s2 = try graph.avgPool2d(graph.constant(x2), kernel: 3, stride: 2, padding: 1)
        XCTAssertEqual(s2.shape, [1, 1, 2, 2])
        XCTAssertEqual(s2.value[0], (0 + 1 + 4 + 5) / 4, accuracy: 1e-6)
        XCTAssertEqual(s2.value[3], (5 + 6 + 7 + 9 + 10 + 11 + 13 + 14 + 15) / 9, accuracy: 1e-6)
    }

    func testMaxPool_PaddingIsNegativeInfinity() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        let x = try Tensor.from((0..<9).map { -Float($0) - 1 }, shape: [1, 1, 3, 3], accountant: acc)
        let y = try graph.maxPool2d(graph.constant(x), kernel: 3, stride: 2, padding: 1)
        // Windows centred at (0,0), (0,2), (2,0), (2,2): maxima of in-image values, never the zero padding.
        XCTAssertEqual(y.value.array, [-1, -2, -4, -5])
    }

    /// NaN and −∞ inputs: the tuned 3×3 paths give the naive reference's values (NaN propagates)
    /// and send each gradient to the same input (the last NaN in row-major window order; the first
    /// in-image element of an all −∞ window).
    func testMaxPool3x3_NaNAndMinusInfinity_LikeTheNaiveReference() throws {
        let acc = MemoryAccountant()
        for (k, g) in [PoolGeometry(n: 1, c: 3, h: 9, w: 21, k: 3, stride: 1, padding: 1),
                       PoolGeometry(n: 1, c: 3, h: 9, w: 21, k: 3, stride: 2, padding: 1)].enumerated() {
            var rng = RNG(seed: UInt64(40 + k))
            let x = try Tensor(shape: g.inputShape, category: .data, accountant: acc)
            for i in 0..<x.count {
                switch rng.int(10) {
                case 0: x[i] = .nan
                case 1, 2, 3: x[i] = -.infinity
                default: x[i] = Float(rng.int(3))
                }
            }
            for i in 0..<(2 * g.w) { x[g.h * g.w + i] = -.infinity }   // plane 1 starts with two all −∞ rows
            let dY = try randomTensor(g.outputShape, acc, seed: UInt64(50 + k))
            let y1 = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            let y2 = try Tensor(shape: g.outputShape, category: .data, accountant: acc)
            Kernels.maxPool2dForward(g, x: x.ptr, y: y1.ptr)
            Kernels.maxPool2dForwardNaive(g, x: x.ptr, y: y2.ptr)
            XCTAssertEqual(y1.array.map(\.bitPattern), y2.array.map(\.bitPattern), "forward \(g)")
            XCTAssertTrue(y1.array.contains { $0.isNaN } && y1.array.contains { $0 == -.infinity })
            let dX1 = try Tensor(shape: g.inputShape, category: .data, accountant: acc)
            let dX2 = try Tensor(shape: g.inputShape, category: .data, accountant: acc)
            Kernels.maxPool2dBackward(g, x: x.ptr, dY: dY.ptr, dX: dX1.ptr)
            Kernels.maxPool2dBackwardNaive(g, x: x.ptr, dY: dY.ptr, dX: dX2.ptr)
            assertClose(dX1.array, dX2.array, tol: 1e-6, "backward \(g)")
        }
    }

    func testMaxPool_Ties_FirstMaxGetsTheGradient() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        let xv = graph.leaf(try Tensor.filled([1, 1, 4, 4], value: 2, category: .data, accountant: acc))
        let y = try graph.maxPool2d(xv, kernel: 2, stride: 2)
        XCTAssertEqual(y.value.array, [2, 2, 2, 2])
        try graph.backward(y, gradient: try Tensor.from([1, 2, 3, 4], shape: [1, 1, 2, 2], accountant: acc))
        let dX = try XCTUnwrap(graph.gradient(of: xv)).array
        XCTAssertEqual(dX, [1, 0, 2, 0,
                            0, 0, 0, 0,
                            3, 0, 4, 0,
                            0, 0, 0, 0])
        // Overlapping windows (3×3 stride 1) whose tied maxima are shared accumulate.
        let g2 = Graph(accountant: acc)
        let x2 = g2.leaf(try Tensor.from([5, 5, 1, 5, 5, 1, 1, 1, 1], shape: [1, 1, 3, 3], accountant: acc))
        let y2 = try g2.maxPool2d(x2, kernel: 3, stride: 1, padding: 1)
        try g2.backward(y2, gradient: try Tensor.filled([1, 1, 3, 3], value: 1, category: .data, accountant: acc))
        // Each window takes its first 5 in row-major order: (0,0) for the 4 windows that contain it,
        // (0,1) for the 2 right-hand windows above row 2, (1,0) for 2 bottom windows, (1,1) for the last.
        XCTAssertEqual(try XCTUnwrap(g2.gradient(of: x2)).array, [4, 2, 0, 2, 1, 0, 0, 0, 0])
    }

    func testPool_InvalidGeometry_IsAnErrorNotACrash() throws {
        let acc = MemoryAccountant()
        let graph = Graph(accountant: acc)
        let x = graph.constant(try Tensor.zeros([1, 2, 4, 4], category: .data, accountant: acc))
        XCTAssertThrowsError(try graph.maxPool2d(x, kernel: 3, stride: 1, padding: 2))   // padding > k/2
        XCTAssertThrowsError(try graph.avgPool2d(x, kernel: 7, stride: 1))               // window larger than image
        XCTAssertThrowsError(try graph.maxPool2d(x, kernel: 2, stride: 0))
        XCTAssertThrowsError(try graph.globalAvgPool(graph.constant(try Tensor.zeros([2, 3], category: .data, accountant: acc))))
    }
}
