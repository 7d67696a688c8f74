// The pointwise micro-kernels (Pointwise.swift) against their naive references on every tail:
// rows % 4, columns % 16 and % 8, K of 1, strided rows, and the batch-norm sums read from registers;
// and the 16-lane kernel (CEspalierKernels) against the 8-lane one, bit for bit.

import CEspalierKernels
import EspalierCore
import EspalierTestSupport
import XCTest

final class PointwiseKernelTests: XCTestCase {
    static let rows = [1, 3, 4, 5, 7, 16], depths = [1, 3, 16, 17], columns = [1, 7, 8, 15, 16, 17, 24, 25, 49]

    private func random(_ n: Int, seed: UInt64) -> [Float] {
        var rng = RNG(seed: seed)
        return (0..<n).map { _ in rng.uniform() * 2 - 1 }
    }

    typealias SmallGemm = (Int, Int, Int, UnsafePointer<Float>, UnsafePointer<Float>, Int, UnsafeMutablePointer<Float>, Int,
                           UnsafeMutablePointer<Double>?, UnsafeMutablePointer<Double>?) -> Void

    /// smallGemm (the kernel this CPU runs) and smallGemm8 (the 8-lane one), with and without the
    /// row sums, against the naive reference on one shape, B's and C's rows strided: nothing outside
    /// a row may be read or written.
    private func checkSmallGemm(m: Int, k: Int, p: Int, ldb: Int, ldc: Int, seed: UInt64, tol: Float, sumSqTol: Double) {
        let kernels: [(String, SmallGemm)] = [
            ("smallGemm", { Kernels.smallGemm(m: $0, k: $1, p: $2, a: $3, b: $4, ldb: $5, c: $6, ldc: $7, sum: $8, sumSq: $9) }),
            ("smallGemm8", { Kernels.smallGemm8(m: $0, k: $1, p: $2, a: $3, b: $4, ldb: $5, c: $6, ldc: $7, sum: $8, sumSq: $9) }),
        ]
        let a = random(m * k, seed: seed), b = random(k * ldb, seed: 1000 + seed)
        var ref = [Float](repeating: 9, count: m * ldc)
        var refSum = [Double](repeating: 0.5, count: m), refSq = refSum
        Kernels.smallGemmNaive(m: m, k: k, p: p, a: a, b: b, ldb: ldb, c: &ref, ldc: ldc, sum: &refSum, sumSq: &refSq)
        for (name, kernel) in kernels {
            var c = [Float](repeating: 9, count: m * ldc), c2 = c
            var sum = [Double](repeating: 0.5, count: m), sq = sum
            kernel(m, k, p, a, b, ldb, &c, ldc, &sum, &sq)
            assertClose(c, ref, tol: tol, "\(name) C, m \(m) k \(k) p \(p)")
            for r in 0..<m {
                for j in p..<ldc { XCTAssertEqual(c[r * ldc + j], 9, "\(name): padding of row \(r) written, m \(m) k \(k) p \(p)") }
                XCTAssertEqual(sum[r], refSum[r], accuracy: 1e-4 * Double(p), "\(name) Σ row \(r), m \(m) k \(k) p \(p)")
                XCTAssertEqual(sq[r], refSq[r], accuracy: sumSqTol * Double(p), "\(name) Σ² row \(r), m \(m) k \(k) p \(p)")
            }
            // Without sums the product is the same.
            kernel(m, k, p, a, b, ldb, &c2, ldc, nil, nil)
            XCTAssertEqual(c2, c, "\(name), m \(m) k \(k) p \(p)")
        }
    }

    func testSmallGemm_MatchesNaive_WithRowSums_OnEveryTail() {
        var case_: UInt64 = 0
        for m in Self.rows { for k in Self.depths { for p in Self.columns {
            case_ += 1
            checkSmallGemm(m: m, k: k, p: p, ldb: p + 3, ldc: p + 2, seed: case_, tol: 1e-5, sumSqTol: 1e-4)
        } } }
    }

    /// Planes wider than one panel of B (`smallGemmPanelColumns`: 256 columns at K = 16, 16 at
    /// K = 300): the row sums carry across panels, the tails come once, after the last.
    func testSmallGemm_MatchesNaive_AcrossPanels() {
        var case_: UInt64 = 7000
        for m in [5, 16] { for k in [1, 16, 17, 300] { for p in [256, 529, 600, 784] {
            case_ += 1
            checkSmallGemm(m: m, k: k, p: p, ldb: p + 1, ldc: p + 2, seed: case_, tol: 1e-4, sumSqTol: 1e-4 * Double(k))
        } } }
    }

    /// Which lane count the 1×1 micro-kernel runs: never 16 without AVX-512; by default 16 only on
    /// AMD's CPUs (no clock drop for 512-bit work; on Intel's the step was slower); the setting
    /// ESPALIER_KERNEL_LANES=8 or 16 wins where the CPU has AVX-512, anything else is ignored.
    func testSixteenLanes_ByDefaultOnlyWhereTheClockDoesNotDrop() {
        for amd in [false, true] {
            for setting in [nil, "8", "16", "32", ""] as [String?] {
                XCTAssertFalse(Kernels.runsSixteenLanes(hasAVX512: false, vendorIsAMD: amd, setting: setting), "no AVX-512, \(amd), \(setting ?? "unset")")
            }
            XCTAssertEqual(Kernels.runsSixteenLanes(hasAVX512: true, vendorIsAMD: amd, setting: nil), amd, "default, AMD \(amd)")
            XCTAssertEqual(Kernels.runsSixteenLanes(hasAVX512: true, vendorIsAMD: amd, setting: "32"), amd, "an unknown setting, AMD \(amd)")
            XCTAssertTrue(Kernels.runsSixteenLanes(hasAVX512: true, vendorIsAMD: amd, setting: "16"), "16 asked for, AMD \(amd)")
            XCTAssertFalse(Kernels.runsSixteenLanes(hasAVX512: true, vendorIsAMD: amd, setting: "8"), "8 asked for, AMD \(amd)")
        }
    }

    /// The 16-lane kernel (AVX-512, C) against the 8-lane one it mirrors: the same bits in C and
    /// in both row sums, on every row tail (m % 8 and % 4), column tail (% 32, % 16, % 8), K of 1,
    /// strided rows, and planes wider than one panel. `smallGemm` runs it by default on AMD's CPUs
    /// with AVX-512 (and with ESPALIER_KERNEL_LANES=16), so without this equality a search's
    /// results would depend on the machine.
    func testSmallGemm16_EqualsThe8LaneKernel_BitForBit() {
        guard Kernels.hasAVX512 else {
            // Nothing to compare on this CPU; what must hold here is that the 16-lane kernel is never chosen.
            XCTAssertFalse(Kernels.sixteenLanes, "the 16-lane kernel is chosen on a CPU without AVX-512F")
            return
        }
        var case_: UInt64 = 9000
        let shapes = (Self.rows + [8, 9, 12, 13, 20]).flatMap { m in
            (Self.depths + [300]).flatMap { k in (Self.columns + [31, 32, 33, 40, 47, 48, 63, 256, 529, 784]).map { (m, k, $0) } }
        }
        for (m, k, p) in shapes {
            case_ += 1
            let ldb = p + 3, ldc = p + 2
            let a = random(m * k, seed: case_), b = random(k * ldb, seed: 1000 + case_)
            for withSums in [true, false] {
                var c16 = [Float](repeating: 9, count: m * ldc), c8 = c16
                var s16 = [Double](repeating: 0.5, count: m), q16 = s16, s8 = s16, q8 = s16
                a.withUnsafeBufferPointer { a in b.withUnsafeBufferPointer { b in
                    c16.withUnsafeMutableBufferPointer { c in s16.withUnsafeMutableBufferPointer { s in q16.withUnsafeMutableBufferPointer { q in
                        espalier_small_gemm16(m, k, p, a.baseAddress!, b.baseAddress!, ldb, c.baseAddress!, ldc,
                                              withSums ? s.baseAddress! : nil, withSums ? q.baseAddress! : nil)
                    } } }
                } }
                if withSums {
                    Kernels.smallGemm8(m: m, k: k, p: p, a: a, b: b, ldb: ldb, c: &c8, ldc: ldc, sum: &s8, sumSq: &q8)
                } else {
                    Kernels.smallGemm8(m: m, k: k, p: p, a: a, b: b, ldb: ldb, c: &c8, ldc: ldc)
                }
                XCTAssertEqual(c16.map(\.bitPattern), c8.map(\.bitPattern), "C, m \(m) k \(k) p \(p) sums \(withSums)")
                XCTAssertEqual(s16.map(\.bitPattern), s8.map(\.bitPattern), "Σ, m \(m) k \(k) p \(p) sums \(withSums)")
                XCTAssertEqual(q16.map(\.bitPattern), q8.map(\.bitPattern), "Σ², m \(m) k \(k) p \(p) sums \(withSums)")
            }
        }
    }

    func testSmallGemmABt_AddsIntoD_MatchesNaive_OnEveryTail() {
        var case_ = 0
        for m in Self.rows { for n in [1, 2, 3, 5, 16] { for p in Self.columns {
            case_ += 1
            let lda = p + 1, ldb = p + 4, ldd = n + 2
            let a = random(m * lda, seed: UInt64(case_)), b = random(n * ldb, seed: UInt64(500 + case_))
            var d = random(m * ldd, seed: UInt64(900 + case_)), ref = d
            Kernels.smallGemmABt(m: m, n: n, p: p, a: a, lda: lda, b: b, ldb: ldb, d: &d, ldd: ldd)
            Kernels.smallGemmABtNaive(m: m, n: n, p: p, a: a, lda: lda, b: b, ldb: ldb, d: &ref, ldd: ldd)
            assertClose(d, ref, tol: 1e-5, "D, m \(m) n \(n) p \(p)")
        } } }
    }

    /// The 1×1 convolution takes the micro-kernels below the crossover and OpenBLAS above it; both
    /// give the naive convolution (ConvTests covers the gradients of both against finite differences).
    func testPointwiseConvolution_BothSidesOfTheCrossover_MatchNaive() throws {
        let acc = MemoryAccountant()
        let limit = Kernels.pointwiseOwnLimit
        for (k, c) in [(7, 13), (limit, 20), (limit + 5, 9)].enumerated() { for side in [5, 16] {
            let g = ConvGeometry(n: 3, cIn: c.0, h: side, w: side, cOut: c.1, kh: 1, kw: 1)   // 16×16: its own weight gradient too
            XCTAssertEqual(Kernels.pointwiseUsesOwnKernel(cIn: g.cIn, cOut: g.cOut), max(g.cIn, g.cOut) <= limit)
            let x = try randomTensor([g.n, g.cIn, g.h, g.w], acc, seed: UInt64(k)), w = try randomTensor(g.weightShape, acc, seed: UInt64(10 + k))
            let dY = try randomTensor(g.outputShape, acc, seed: UInt64(20 + k))
            let y = try Tensor(shape: g.outputShape, category: .activations, accountant: acc), yRef = try Tensor(shape: g.outputShape, category: .activations, accountant: acc)
            Kernels.conv2dForward(g, x: x.ptr, w: w.ptr, y: y.ptr, workspace: nil)
            Kernels.conv2dForwardNaive(g, x: x.ptr, w: w.ptr, y: yRef.ptr)
            assertClose(y.array, yRef.array, tol: 1e-4, "forward \(c)")
            let ws = try Tensor(shape: [max(1, g.backwardWorkspaceFloats(needInputGrad: true, needWeightGrad: true))],
                                category: .workspace, accountant: acc)
            let dX = try Tensor(shape: x.shape, category: .activationGradients, accountant: acc), dXRef = try Tensor(shape: x.shape, category: .activationGradients, accountant: acc)
            let dW = try Tensor.zeros(g.weightShape, category: .gradients, accountant: acc), dWRef = try Tensor.zeros(g.weightShape, category: .gradients, accountant: acc)
            Kernels.conv2dBackward(g, x: x.ptr, w: w.ptr, dY: dY.ptr, dX: dX.ptr, dW: dW.ptr, workspace: ws.ptr)
            Kernels.conv2dBackwardNaive(g, x: x.ptr, w: w.ptr, dY: dY.ptr, dX: dXRef.ptr, dW: dWRef.ptr)
            assertClose(dX.array, dXRef.array, tol: 1e-4, "dX \(c)")
            assertClose(dW.array, dWRef.array, tol: 1e-3, "dW \(c)")
        } }
    }
}
