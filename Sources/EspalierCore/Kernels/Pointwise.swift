// The small-matrix multiplies of 1×1 (pointwise) convolutions, with micro-kernels of our own.
// A supernet's pointwise convolutions are (C × C)·(C × HW) per sample with C = 8…64: K and M are
// far below the sizes where OpenBLAS's sgemm packs its operands once and then runs at speed, and
// for them its packing and its C-scaling pass (sgemm_beta) cost as much as the multiply. The
// kernels here read the operands where they lie: a 4-row × 16-column block of the output lives in
// eight SIMD8 registers while K steps, each step one broadcast per row and two row loads of B.
// `pointwiseUsesOwnKernel` says which shapes take them (the crossover `espalier kernel-bench
// --pointwise` measures); larger ones keep OpenBLAS. `pointwiseSample…` run one sample of a 1×1
// convolution on its side of the crossover (Conv2D.swift and PointwiseBatchNorm.swift call them). Each kernel has its naive reference below,
// which the tests compare against on every tail (rows % 4, columns % 16, % 8).
//
//   smallGemm         C (M × P) = A (M × K) · B (K × P)          forward (A = W) and dX (A = Wᵀ)
//                     optionally Σ_p C and Σ_p C² per row          (batch-norm statistics, hot)
//   smallGemmABt      D (M × N) += A (M × P) · B (N × P)ᵀ          dW = dY · xᵀ

import CEspalierKernels
import CEspalierSystem
import Foundation

extension Kernels {
    /// Whether a 1×1 convolution of `cIn` → `cOut` channels computes its forward and its input
    /// gradient with the micro-kernels here rather than OpenBLAS. Measured when it was written
    /// (`espalier kernel-bench --pointwise`, one sample per call, one thread): ours 1.1–2.5× ahead
    /// from 8 to 128 channels at 7×7 to 28×28 planes; from 256 channels OpenBLAS's packing pays.
    /// Measured again on 2026-12-06 (this OpenBLAS runs its SKYLAKEX kernels, 16 lanes): alone,
    /// ours ran at 0.5–1.0× OpenBLAS's speed at 16–64 channels (1.2× at 16 channels on 7×7); in
    /// the step, ESPALIER_POINTWISE_LIMIT=0 (OpenBLAS everywhere) was not faster (darts fmnist
    /// 1.08×, zeroshot 0.97× the time, three rounds each: within the host's noise), since ours
    /// also makes the batch-norm sums from its registers. So the limit stays; measure again.
    /// ESPALIER_POINTWISE_LIMIT overrides the channel limit (0: always OpenBLAS), to measure again.
    public static func pointwiseUsesOwnKernel(cIn: Int, cOut: Int) -> Bool { max(cIn, cOut) <= pointwiseOwnLimit }

    /// Whether its weight gradient (a reduction over the plane) does: only on planes of 256 or
    /// more, where the eight dot products of a block run long enough to pay for their horizontal
    /// sums (at 7×7 OpenBLAS is 2× ahead, at 14×14 even, at 28×28 ours 1.8× ahead).
    public static func pointwiseWeightGradUsesOwnKernel(cIn: Int, cOut: Int, hw: Int) -> Bool {
        pointwiseUsesOwnKernel(cIn: cIn, cOut: cOut) && hw >= 256
    }

    public static let pointwiseOwnLimit: Int = {
        if let s = ProcessInfo.processInfo.environment["ESPALIER_POINTWISE_LIMIT"], let v = Int(s), v >= 0 { return v }
        return 128
    }()

    // MARK: One sample of a 1×1 convolution, on its side of the crossover

    /// y (cOut × hw) = w (cOut × cIn) · x (cIn × hw). With `sum`/`sumSq`, adds each output row's
    /// Σ and Σ² into them (from the registers on our kernel; from the still-cached row after OpenBLAS).
    public static func pointwiseSample(cIn: Int, cOut: Int, hw: Int, w: UnsafePointer<Float>, x: UnsafePointer<Float>,
                                       y: UnsafeMutablePointer<Float>, sum: UnsafeMutablePointer<Double>? = nil,
                                       sumSq: UnsafeMutablePointer<Double>? = nil) {
        if pointwiseUsesOwnKernel(cIn: cIn, cOut: cOut) {
            smallGemm(m: cOut, k: cIn, p: hw, a: w, b: x, ldb: hw, c: y, ldc: hw, sum: sum, sumSq: sumSq)
            return
        }
        sgemm(transA: false, transB: false, m: cOut, n: hw, k: cIn, alpha: 1, a: w, lda: cIn, b: x, ldb: hw, beta: 0, c: y, ldc: hw)
        guard let sum, let sumSq else { return }
        for c in 0..<cOut {
            let (a, b) = rowShiftedSums(y + c * hw, count: hw, shift: 0)
            sum[c] += a; sumSq[c] += b
        }
    }

    /// dx (cIn × hw) = wᵀ · dy (overwritten), with `wt` = wᵀ (cIn × cOut) from `packTransposed`.
    public static func pointwiseSampleInputGrad(cIn: Int, cOut: Int, hw: Int, wt: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                                dx: UnsafeMutablePointer<Float>) {
        if pointwiseUsesOwnKernel(cIn: cIn, cOut: cOut) { smallGemm(m: cIn, k: cOut, p: hw, a: wt, b: dy, ldb: hw, c: dx, ldc: hw); return }
        sgemm(transA: false, transB: false, m: cIn, n: hw, k: cOut, alpha: 1, a: wt, lda: cOut, b: dy, ldb: hw, beta: 0, c: dx, ldc: hw)
    }

    /// dw (cOut × cIn) += dy (cOut × hw) · xᵀ.
    public static func pointwiseSampleWeightGrad(cIn: Int, cOut: Int, hw: Int, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                                                 dw: UnsafeMutablePointer<Float>) {
        if pointwiseWeightGradUsesOwnKernel(cIn: cIn, cOut: cOut, hw: hw) { smallGemmABt(m: cOut, n: cIn, p: hw, a: dy, lda: hw, b: x, ldb: hw, d: dw, ldd: cIn); return }
        sgemm(transA: false, transB: true, m: cOut, n: cIn, k: hw, alpha: 1, a: dy, lda: hw, b: x, ldb: hw, beta: 1, c: dw, ldc: cIn)
    }

    /// wt (cols × rows) = wᵀ of w (rows × cols).
    public static func packTransposed(_ w: UnsafePointer<Float>, rows: Int, cols: Int, into wt: UnsafeMutablePointer<Float>) {
        for r in 0..<rows { for c in 0..<cols { wt[c * rows + r] = w[r * cols + c] } }
    }

    // MARK: C = A · B (+ row sums)

    /// C (m × p, row stride ldc) = A (m × k, contiguous rows) · B (k × p, row stride ldb); C is
    /// overwritten. With `sum`/`sumSq`, adds Σ_p C[r, p] and Σ_p C[r, p]² into sum[r], sumSq[r]
    /// (Float lanes over one row, added in Double), read from the registers the result is in.
    /// It runs `smallGemm8`, or on a CPU with AVX-512 where `sixteenLanes` says so its 16-lane
    /// form (CEspalierKernels/small_gemm16.c); the two give the same bits.
    ///
    /// Which is faster depends on the CPU's clock, so the default depends on the vendor:
    /// - Intel (measured 2026-12-07 on a Xeon, AVX-512F): alone, the 16-lane kernel was 1.2–1.7×
    ///   as fast at the supernet's shapes, but in a step slower (zeroshot fmnist 0.856 s against
    ///   0.769 s, darts fmnist 5.90 s against 5.39 s, 4–5 alternating rounds each). A core that
    ///   runs 512-bit multiply-adds lowers its frequency, and the AVX2 code around them pays too:
    ///   AVX2 multiply-add chains ran 1.15–1.25× as long right after 512-bit bursts as alone
    ///   (`espalier bench`'s `fma8AfterWideRatio`). So 8 lanes there.
    /// - AMD (measured 2026-12-07 on an EPYC with AVX-512F): the same ratio reads 1.01 (no
    ///   clock given up), and 16 lanes made the step faster: zeroshot fmnist 0.90× and 0.91×,
    ///   zeroshot cifar 0.93×, darts fmnist 0.83× (`bench/ab.sh`, 4 alternating rounds, medians;
    ///   gdas fmnist 0.99×). So 16 lanes there.
    /// ESPALIER_KERNEL_LANES=8 or 16 overrides the default (`sixteenLanes`).
    public static func smallGemm(m: Int, k: Int, p: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, ldb: Int,
                                 c: UnsafeMutablePointer<Float>, ldc: Int,
                                 sum: UnsafeMutablePointer<Double>? = nil, sumSq: UnsafeMutablePointer<Double>? = nil) {
        if sixteenLanes {
            espalier_small_gemm16(m, k, p, a, b, ldb, c, ldc, sum, sumSq)
            return
        }
        smallGemm8(m: m, k: k, p: p, a: a, b: b, ldb: ldb, c: c, ldc: ldc, sum: sum, sumSq: sumSq)
    }

    /// Whether this CPU can run the 16-lane kernels: AVX-512F, and the OS saves its registers.
    public static let hasAVX512: Bool = espalier_kernels_have_16_lanes() == 1 && espalier_cpu_has_avx512f() == 1

    /// Whether `smallGemm` runs its 16-lane form (see `smallGemm`): never without AVX-512; else as
    /// ESPALIER_KERNEL_LANES says (8 or 16), and by default on AMD's CPUs, whose clock does not
    /// drop for 512-bit work.
    public static let sixteenLanes: Bool = runsSixteenLanes(hasAVX512: hasAVX512, vendorIsAMD: espalier_cpu_vendor_is_amd() == 1,
                                                            setting: ProcessInfo.processInfo.environment["ESPALIER_KERNEL_LANES"])

    /// The rule `sixteenLanes` applies (any other setting than 8 or 16 leaves the default).
    public static func runsSixteenLanes(hasAVX512: Bool, vendorIsAMD: Bool, setting: String?) -> Bool {
        guard hasAVX512 else { return false }
        switch setting {
        case "16": return true
        case "8": return false
        default: return vendorIsAMD
        }
    }

    /// `smallGemm` at 8 lanes (AVX2): the default kernel, and the one the 16-lane kernel must equal
    /// bit for bit. Column panels of B (k × `smallGemmPanelColumns(k)`) stay in L1 while every row
    /// block reads them; each row's lane sums carry from panel to panel, so they add in the same
    /// order as one pass over the row would.
    public static func smallGemm8(m: Int, k: Int, p: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, ldb: Int,
                                  c: UnsafeMutablePointer<Float>, ldc: Int,
                                  sum: UnsafeMutablePointer<Double>? = nil, sumSq: UnsafeMutablePointer<Double>? = nil) {
        let panel = smallGemmPanelColumns(k)
        withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: 2 * max(m, 1)) { buffer in
            let lanes = buffer.baseAddress!                      // (m, 2): each row's Σ and Σ² lanes
            lanes.initialize(repeating: SIMD8<Float>(), count: 2 * max(m, 1))
            var from = 0
            repeat {
                let to = min(p, from + panel)
                let columns = PanelColumns(from: from, to: to, last: to == p)
                var r = 0
                while r + 4 <= m {
                    rows4(r: r, k: k, columns, a: a, b: b, ldb: ldb, c: c, ldc: ldc, lanes: lanes + 2 * r, sum: sum, sumSq: sumSq)
                    r += 4
                }
                while r < m {
                    row1(r: r, k: k, columns, a: a, b: b, ldb: ldb, c: c, ldc: ldc, lanes: lanes + 2 * r, sum: sum, sumSq: sumSq)
                    r += 1
                }
                from = to
            } while from < p
        }
    }

    /// Columns per panel of B for a B of k rows: a multiple of 16 (every panel but the last is
    /// whole 16-column blocks) of about 16 KiB, a third of this machine's 48 KiB L1 data cache.
    static func smallGemmPanelColumns(_ k: Int) -> Int { max(16, (4096 / max(k, 1)) & ~15) }

    /// The columns one call of a row kernel covers. Only the last panel has the 8-lane and scalar
    /// tails, and adds the rows' sums into Double.
    struct PanelColumns { var from: Int, to: Int, last: Bool }

    /// Rows r…r+3 of C over one panel's columns; `lanes` holds rows r…r+3's (Σ, Σ²) lane sums.
    @inline(__always)
    private static func rows4(r: Int, k: Int, _ columns: PanelColumns, a: UnsafePointer<Float>, b: UnsafePointer<Float>, ldb: Int,
                              c: UnsafeMutablePointer<Float>, ldc: Int, lanes: UnsafeMutablePointer<SIMD8<Float>>,
                              sum: UnsafeMutablePointer<Double>?, sumSq: UnsafeMutablePointer<Double>?) {
        let p = columns.to
        let a0 = a + r * k, a1 = a0 + k, a2 = a1 + k, a3 = a2 + k
        let c0 = c + r * ldc, c1 = c0 + ldc, c2 = c1 + ldc, c3 = c2 + ldc
        let stats = sum != nil
        var s0 = lanes[0], s1 = lanes[2], s2 = lanes[4], s3 = lanes[6]
        var q0 = lanes[1], q1 = lanes[3], q2 = lanes[5], q3 = lanes[7]
        var j = columns.from
        while j + 16 <= p {
            var x00 = SIMD8<Float>(), x01 = SIMD8<Float>(), x10 = SIMD8<Float>(), x11 = SIMD8<Float>()
            var x20 = SIMD8<Float>(), x21 = SIMD8<Float>(), x30 = SIMD8<Float>(), x31 = SIMD8<Float>()
            var bp = b + j
            for kk in 0..<k {
                let b0 = load8(bp), b1 = load8(bp + 8)
                let w0 = SIMD8<Float>(repeating: a0[kk]), w1 = SIMD8<Float>(repeating: a1[kk])
                x00.addProduct(w0, b0); x01.addProduct(w0, b1)
                x10.addProduct(w1, b0); x11.addProduct(w1, b1)
                let w2 = SIMD8<Float>(repeating: a2[kk]), w3 = SIMD8<Float>(repeating: a3[kk])
                x20.addProduct(w2, b0); x21.addProduct(w2, b1)
                x30.addProduct(w3, b0); x31.addProduct(w3, b1)
                bp += ldb
            }
            store8(c0 + j, x00); store8(c0 + j + 8, x01)
            store8(c1 + j, x10); store8(c1 + j + 8, x11)
            store8(c2 + j, x20); store8(c2 + j + 8, x21)
            store8(c3 + j, x30); store8(c3 + j + 8, x31)
            if stats {
                s0 += x00 + x01; q0.addProduct(x00, x00); q0.addProduct(x01, x01)
                s1 += x10 + x11; q1.addProduct(x10, x10); q1.addProduct(x11, x11)
                s2 += x20 + x21; q2.addProduct(x20, x20); q2.addProduct(x21, x21)
                s3 += x30 + x31; q3.addProduct(x30, x30); q3.addProduct(x31, x31)
            }
            j += 16
        }
        guard columns.last else {
            if stats { lanes[0] = s0; lanes[2] = s1; lanes[4] = s2; lanes[6] = s3; lanes[1] = q0; lanes[3] = q1; lanes[5] = q2; lanes[7] = q3 }
            return
        }
        if j + 8 <= p {
            var x0 = SIMD8<Float>(), x1 = SIMD8<Float>(), x2 = SIMD8<Float>(), x3 = SIMD8<Float>()
            var bp = b + j
            for kk in 0..<k {
                let b0 = load8(bp)
                x0.addProduct(SIMD8<Float>(repeating: a0[kk]), b0)
                x1.addProduct(SIMD8<Float>(repeating: a1[kk]), b0)
                x2.addProduct(SIMD8<Float>(repeating: a2[kk]), b0)
                x3.addProduct(SIMD8<Float>(repeating: a3[kk]), b0)
                bp += ldb
            }
            store8(c0 + j, x0); store8(c1 + j, x1); store8(c2 + j, x2); store8(c3 + j, x3)
            if stats {
                s0 += x0; q0.addProduct(x0, x0); s1 += x1; q1.addProduct(x1, x1)
                s2 += x2; q2.addProduct(x2, x2); s3 += x3; q3.addProduct(x3, x3)
            }
            j += 8
        }
        var t = (s: (Float(0), Float(0), Float(0), Float(0)), q: (Float(0), Float(0), Float(0), Float(0)))
        while j < p {
            var y0: Float = 0, y1: Float = 0, y2: Float = 0, y3: Float = 0
            var bp = b + j
            for kk in 0..<k {
                let v = bp.pointee
                y0 += a0[kk] * v; y1 += a1[kk] * v; y2 += a2[kk] * v; y3 += a3[kk] * v
                bp += ldb
            }
            c0[j] = y0; c1[j] = y1; c2[j] = y2; c3[j] = y3
            t.s.0 += y0; t.s.1 += y1; t.s.2 += y2; t.s.3 += y3
            t.q.0 += y0 * y0; t.q.1 += y1 * y1; t.q.2 += y2 * y2; t.q.3 += y3 * y3
            j += 1
        }
        if stats, let sum, let sumSq {
            sum[r] += Double(s0.sum()) + Double(t.s.0); sumSq[r] += Double(q0.sum()) + Double(t.q.0)
            sum[r + 1] += Double(s1.sum()) + Double(t.s.1); sumSq[r + 1] += Double(q1.sum()) + Double(t.q.1)
            sum[r + 2] += Double(s2.sum()) + Double(t.s.2); sumSq[r + 2] += Double(q2.sum()) + Double(t.q.2)
            sum[r + 3] += Double(s3.sum()) + Double(t.s.3); sumSq[r + 3] += Double(q3.sum()) + Double(t.q.3)
        }
    }

    /// Row r of C (the rows left over after blocks of four) over one panel's columns; `lanes`
    /// holds its (Σ, Σ²) lane sums.
    @inline(__always)
    private static func row1(r: Int, k: Int, _ columns: PanelColumns, a: UnsafePointer<Float>, b: UnsafePointer<Float>, ldb: Int,
                             c: UnsafeMutablePointer<Float>, ldc: Int, lanes: UnsafeMutablePointer<SIMD8<Float>>,
                             sum: UnsafeMutablePointer<Double>?, sumSq: UnsafeMutablePointer<Double>?) {
        let p = columns.to
        let ar = a + r * k, cr = c + r * ldc
        var s = lanes[0], q = lanes[1]
        var j = columns.from
        while j + 8 <= p {
            var x = SIMD8<Float>()
            var bp = b + j
            for kk in 0..<k { x.addProduct(SIMD8<Float>(repeating: ar[kk]), load8(bp)); bp += ldb }
            store8(cr + j, x)
            s += x; q.addProduct(x, x)
            j += 8
        }
        guard columns.last else { lanes[0] = s; lanes[1] = q; return }
        var ts: Float = 0, tq: Float = 0
        while j < p {
            var y: Float = 0
            for kk in 0..<k { y += ar[kk] * b[kk * ldb + j] }
            cr[j] = y
            ts += y; tq += y * y
            j += 1
        }
        if let sum, let sumSq {
            sum[r] += Double(s.sum()) + Double(ts)
            sumSq[r] += Double(q.sum()) + Double(tq)
        }
    }

    // MARK: D += A · Bᵀ

    /// D (m × n, row stride ldd) += A (m × p, row stride lda) · B (n × p, row stride ldb)ᵀ: the
    /// weight gradient of a 1×1 convolution (A = dY, B = x), a reduction over the long side p.
    public static func smallGemmABt(m: Int, n: Int, p: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                    d: UnsafeMutablePointer<Float>, ldd: Int) {
        var i = 0
        while i + 4 <= m {
            var j = 0
            while j + 2 <= n {
                dots4x2(a + i * lda, lda: lda, b + j * ldb, ldb: ldb, p: p, d + i * ldd + j, ldd: ldd)
                j += 2
            }
            if j < n { for ii in i..<(i + 4) { d[ii * ldd + j] += dot1(a + ii * lda, b + j * ldb, p: p) } }
            i += 4
        }
        while i < m {
            for j in 0..<n { d[i * ldd + j] += dot1(a + i * lda, b + j * ldb, p: p) }
            i += 1
        }
    }

    /// The 4 × 2 block of D at `d`: eight dot products of length p, eight SIMD8 accumulators.
    @inline(__always)
    private static func dots4x2(_ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int, p: Int,
                                _ d: UnsafeMutablePointer<Float>, ldd: Int) {
        let a0 = a, a1 = a + lda, a2 = a1 + lda, a3 = a2 + lda, b0 = b, b1 = b + ldb
        var x00 = SIMD8<Float>(), x01 = SIMD8<Float>(), x10 = SIMD8<Float>(), x11 = SIMD8<Float>()
        var x20 = SIMD8<Float>(), x21 = SIMD8<Float>(), x30 = SIMD8<Float>(), x31 = SIMD8<Float>()
        var j = 0
        while j + 8 <= p {
            let v0 = load8(b0 + j), v1 = load8(b1 + j)
            let u0 = load8(a0 + j), u1 = load8(a1 + j)
            x00.addProduct(u0, v0); x01.addProduct(u0, v1)
            x10.addProduct(u1, v0); x11.addProduct(u1, v1)
            let u2 = load8(a2 + j), u3 = load8(a3 + j)
            x20.addProduct(u2, v0); x21.addProduct(u2, v1)
            x30.addProduct(u3, v0); x31.addProduct(u3, v1)
            j += 8
        }
        var t = (Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0), Float(0))
        while j < p {
            let v0 = b0[j], v1 = b1[j]
            t.0 += a0[j] * v0; t.1 += a0[j] * v1; t.2 += a1[j] * v0; t.3 += a1[j] * v1
            t.4 += a2[j] * v0; t.5 += a2[j] * v1; t.6 += a3[j] * v0; t.7 += a3[j] * v1
            j += 1
        }
        d[0] += x00.sum() + t.0; d[1] += x01.sum() + t.1
        d[ldd] += x10.sum() + t.2; d[ldd + 1] += x11.sum() + t.3
        d[2 * ldd] += x20.sum() + t.4; d[2 * ldd + 1] += x21.sum() + t.5
        d[3 * ldd] += x30.sum() + t.6; d[3 * ldd + 1] += x31.sum() + t.7
    }

    @inline(__always)
    private static func dot1(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, p: Int) -> Float {
        var x = SIMD8<Float>(), t: Float = 0, j = 0
        while j + 8 <= p { x.addProduct(load8(a + j), load8(b + j)); j += 8 }
        while j < p { t += a[j] * b[j]; j += 1 }
        return x.sum() + t
    }

    // MARK: Naive references

    /// C = A · B, and the row sums, by the definition (Double accumulation).
    public static func smallGemmNaive(m: Int, k: Int, p: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, ldb: Int,
                                      c: UnsafeMutablePointer<Float>, ldc: Int,
                                      sum: UnsafeMutablePointer<Double>? = nil, sumSq: UnsafeMutablePointer<Double>? = nil) {
        for r in 0..<m {
            for j in 0..<p {
                var y: Double = 0
                for kk in 0..<k { y += Double(a[r * k + kk]) * Double(b[kk * ldb + j]) }
                c[r * ldc + j] = Float(y)
                sum?[r] += Double(Float(y))
                sumSq?[r] += Double(Float(y)) * Double(Float(y))
            }
        }
    }

    /// D += A · Bᵀ by the definition (Double accumulation).
    public static func smallGemmABtNaive(m: Int, n: Int, p: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                         d: UnsafeMutablePointer<Float>, ldd: Int) {
        for i in 0..<m {
            for j in 0..<n {
                var s: Double = 0
                for q in 0..<p { s += Double(a[i * lda + q]) * Double(b[j * ldb + q]) }
                d[i * ldd + j] += Float(s)
            }
        }
    }
}
