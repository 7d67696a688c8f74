// Depthwise convolution (groups == Cin == Cout), NCHW, float32: forward, dX and dW side by side.
// Each (sample, channel) plane is first copied into a zero-padded scratch plane, so the inner
// loops test no bounds: they gather whole output rows four columns at a time (SIMD4), with the
// taps unrolled for the DARTS shapes (3×3 and 5×5, dilation 1 and 2, stride 1 and 2).
// Stride 2 keeps the padded input split by column parity, so its loads stay contiguous too.
// dX is also a gather: at stride 1 it is the forward kernel run on padded dY with the kernel
// flipped; at stride 2 each dX row phase gathers from the dY rows of matching parity.
// Not here: geometries outside this path (stride > 2, padding > dilation·(k−1) at stride 1,
// kernels over 64 taps) take the direct loops at the end; the naive reference is in Conv2D.swift.
//
// Shapes: x, dX (N, C, H, W) · w, dW (C, 1, KH, KW) · y, dY (N, C, Ho, Wo).
// Scratch per chunk (see DepthwisePlan):
//   P  x padded by p:  phases × pRows × pStride   (stride 2: phase 0 = even padded columns, 1 = odd)
//   Q  dY padded:      qRows × qStride            (dY[oh, ow] at Q[qTop + oh, qLeft + ow], zeros elsewhere)
//   R  one dX row at stride 2, by column phase:  2 × 4·nvX

import Foundation

/// Sizes of the padded scratch planes of the fast depthwise path; nil when the geometry needs
/// the direct loops. Borders of P and Q are zeroed once per call and never written after.
struct DepthwisePlan {
    let h, w, ho, wo, kh, kw, s, p, d: Int
    let nv: Int          // SIMD4 vectors per output row, ⌈Wo/4⌉ (the last may be partial)
    let nvX: Int         // stride 1: vectors per dX row ⌈W/4⌉; stride 2: per dX row phase
    let phases: Int      // column phases of P: 1 at stride 1, 2 at stride 2
    let pRows, pStride: Int
    let qRows, qStride, qTop, qLeft: Int

    /// Most taps the fast path unrolls; the broadcast weights and dW sums live on the stack.
    static let maxTaps = 64

    init?(_ g: ConvGeometry) {
        guard g.algorithm == .depthwise, g.stride == 1 || g.stride == 2, g.kh * g.kw <= Self.maxTaps else { return nil }
        (h, w, ho, wo, kh, kw, s, p, d) = (g.h, g.w, g.hOut, g.wOut, g.kh, g.kw, g.stride, g.padding, g.dilation)
        nv = (wo + 3) / 4
        pRows = h + 2 * p
        if s == 1 {
            // dX = forward of dY padded by dilation·(k−1) − p with the kernel flipped; needs that ≥ 0.
            guard p <= d * (kh - 1), p <= d * (kw - 1) else { return nil }
            phases = 1
            pStride = 4 * nv + (kw - 1) * d                   // ≥ W + 2p; room for the last vector's taps
            nvX = (w + 3) / 4
            qTop = (kh - 1) * d - p; qLeft = (kw - 1) * d - p
            qRows = h + (kh - 1) * d
            qStride = max(4 * nvX + (kw - 1) * d, qLeft + 4 * nv)
        } else {
            phases = 2
            let shiftMax = (kw - 1) * d / 2                    // largest column shift within a phase
            pStride = max(4 * nv + shiftMax, (w + 2 * p + 1) / 2)
            nvX = ((w - 1 + p) / 2 + 1 + 3) / 4               // phase columns 0...(W−1+p)/2
            // dX row r gathers dY rows (r − ki·d)/2: zero margins above and below keep them in Q.
            qTop = ((kh - 1) * d + 1) / 2; qLeft = shiftMax
            qRows = qTop + max(ho, (h - 1 + p) / 2 + 1)
            qStride = shiftMax + 4 * max(nvX, nv)
        }
    }

    var pFloats: Int { phases * pRows * pStride }
    var qFloats: Int { qRows * qStride }
    var rFloats: Int { s == 2 ? 2 * 4 * nvX : 0 }
    var forwardFloats: Int { pFloats }
    func backwardFloats(needInputGrad: Bool, needWeightGrad: Bool) -> Int {
        if !needInputGrad && !needWeightGrad { return 0 }
        return qFloats + (needWeightGrad ? pFloats : 0) + (needInputGrad ? rFloats : 0)
    }

    /// P interior ← one x plane (H, W). Stride 2 splits the padded columns by parity.
    @inline(__always)
    func loadInput(_ x: UnsafePointer<Float>, into pb: UnsafeMutablePointer<Float>) {
        if s == 1 {
            for ih in 0..<h { (pb + (ih + p) * pStride + p).update(from: x + ih * w, count: w) }
            return
        }
        let phaseSize = pRows * pStride
        let evenPhase = p & 1, oddPhase = 1 - (p & 1)            // phase of padded column iw + p
        for ih in 0..<h {
            let row = pb + (ih + p) * pStride, src = x + ih * w
            let even = row + evenPhase * phaseSize + (p >> 1)     // x[2m]   → phase[(2m + p) / 2]
            let odd = row + oddPhase * phaseSize + ((p + 1) >> 1) // x[2m+1] → phase[(2m + 1 + p) / 2]
            var m = 0
            while 2 * m + 8 <= w {
                let v = UnsafeRawPointer(src + 2 * m).loadUnaligned(as: SIMD8<Float>.self)
                store4(even + m, v.evenHalf); store4(odd + m, v.oddHalf)
                m += 4
            }
            while 2 * m + 1 < w { even[m] = src[2 * m]; odd[m] = src[2 * m + 1]; m += 1 }
            if w & 1 != 0 { even[w >> 1] = src[w - 1] }
        }
    }

    /// Q interior ← one dY plane (Ho, Wo).
    @inline(__always)
    func loadOutputGrad(_ dy: UnsafePointer<Float>, into qb: UnsafeMutablePointer<Float>) {
        for oh in 0..<ho { (qb + (qTop + oh) * qStride + qLeft).update(from: dy + oh * wo, count: wo) }
    }
}

extension ConvGeometry {
    /// Scratch floats of the fast depthwise path per chunk (0 when it takes the direct loops).
    var depthwiseForwardFloats: Int { DepthwisePlan(self)?.forwardFloats ?? 0 }
    func depthwiseBackwardFloats(needInputGrad: Bool, needWeightGrad: Bool) -> Int {
        DepthwisePlan(self)?.backwardFloats(needInputGrad: needInputGrad, needWeightGrad: needWeightGrad) ?? 0
    }
}

@inline(__always) private func load4(_ p: UnsafePointer<Float>) -> SIMD4<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD4<Float>.self)
}
@inline(__always) private func store4(_ p: UnsafeMutablePointer<Float>, _ v: SIMD4<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD4<Float>.self)
}

extension Kernels {
    // MARK: depthwise forward / backward

    /// y = depthwise conv(x, w). x (N, C, H, W), w (C, 1, KH, KW), y (N, C, Ho, Wo).
    /// Planes are split across cores; `workspace` holds `chunks × plan.forwardFloats`.
    static func depthwiseForward(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                 y: UnsafeMutablePointer<Float>, workspace: UnsafeMutablePointer<Float>?) {
        guard let plan = DepthwisePlan(g) else { depthwiseForwardDirect(g, x: x, w: w, y: y); return }
        let per = plan.forwardFloats, taps = g.kh * g.kw
        let (c, hw, howo) = (g.cIn, g.h * g.w, g.hOut * g.wOut)
        Parallel.forChunksIndexed(g.n * c, chunks: Parallel.chunkCount(g.n)) { k, range in
            let pb = workspace! + k * per          // P: (phases, pRows, pStride)
            pb.update(repeating: 0, count: per)
            withUnsafeTemporaryAllocation(of: SIMD4<Float>.self, capacity: DepthwisePlan.maxTaps) { wv in
                for plane in range {
                    let wc = w + (plane % c) * taps
                    for t in 0..<taps { wv[t] = SIMD4(repeating: wc[t]) }
                    plan.loadInput(x + plane * hw, into: pb)
                    // y[plane] (Ho, Wo) = Σ taps w · P shifted
                    depthwiseGather(plan.kh, plan.kw, plan.s, plan.d, src: pb, phaseSize: plan.pRows * plan.pStride,
                                    rowStride: plan.pStride, wv: wv.baseAddress!, rows: plan.ho, cols: plan.wo,
                                    out: y + plane * howo, outStride: plan.wo)
                }
            }
        }
    }

    /// dX = ∂/∂x (overwritten, if non-nil); dW += ∂/∂w (if non-nil). Channels are split across
    /// cores, so no two chunks share a weight; each chunk walks the samples of its channels,
    /// padding each dY plane once for both gradients. `workspace` holds `chunks × plan.backwardFloats`.
    static func depthwiseBackward(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, dY: UnsafePointer<Float>,
                                  dX: UnsafeMutablePointer<Float>?, dW: UnsafeMutablePointer<Float>?,
                                  workspace: UnsafeMutablePointer<Float>?) {
        guard let plan = DepthwisePlan(g) else { depthwiseBackwardDirect(g, x: x, w: w, dY: dY, dX: dX, dW: dW); return }
        if dX == nil && dW == nil { return }
        let per = plan.backwardFloats(needInputGrad: dX != nil, needWeightGrad: dW != nil)
        let (c, hw, howo, taps) = (g.cIn, g.h * g.w, g.hOut * g.wOut, g.kh * g.kw)
        let (kh, kw, s, d) = (plan.kh, plan.kw, plan.s, plan.d)
        let chunks = min(Parallel.chunkCount(g.n), c)
        Parallel.forChunksIndexed(c, chunks: chunks) { k, range in
            let qb = workspace! + k * per                                   // Q: (qRows, qStride)
            let pb = qb + plan.qFloats                                      // P: (phases, pRows, pStride), dW only
            let rb = pb + (dW != nil ? plan.pFloats : 0)                    // R: (2, 4·nvX), stride-2 dX only
            qb.update(repeating: 0, count: per)
            let dyInQ = qb + plan.qTop * plan.qStride + plan.qLeft          // dY[0, 0] inside Q
            withUnsafeTemporaryAllocation(of: SIMD4<Float>.self, capacity: DepthwisePlan.maxTaps) { wvBuf in
            withUnsafeTemporaryAllocation(of: SIMD4<Float>.self, capacity: DepthwisePlan.maxTaps) { accBuf in
                let wv = wvBuf.baseAddress!, acc = accBuf.baseAddress!     // (KH·KW) broadcast weights, dW sums
                for ch in range {
                    let wc = w + ch * taps
                    // Stride 1 gathers dX with the kernel flipped; stride 2 uses it as is.
                    for t in 0..<taps { wv[t] = SIMD4(repeating: wc[s == 1 ? taps - 1 - t : t]) }
                    for t in 0..<taps { acc[t] = .zero }
                    for sample in 0..<g.n {
                        let plane = sample * c + ch
                        plan.loadOutputGrad(dY + plane * howo, into: qb)
                        if let dX {
                            if s == 1 {
                                // dX[plane] (H, W) = Σ taps flip(w) · Q shifted
                                depthwiseGather(kh, kw, 1, d, src: qb, phaseSize: 0, rowStride: plan.qStride, wv: wv,
                                                rows: g.h, cols: g.w, out: dX + plane * hw, outStride: g.w)
                            } else {
                                depthwisePolyphaseInputGrad(plan, dyInQ: dyInQ, wv: wv, rowPhases: rb, dX: dX + plane * hw)
                            }
                        }
                        if dW != nil {
                            plan.loadInput(x + plane * hw, into: pb)
                            depthwiseWeightGrad(kh, kw, s, d, src: pb, phaseSize: plan.pRows * plan.pStride,
                                                rowStride: plan.pStride, dy: dyInQ, dyStride: plan.qStride,
                                                rows: plan.ho, vectors: plan.nv, acc: acc)
                        }
                    }
                    if let dW { for t in 0..<taps { dW[ch * taps + t] += acc[t].sum() } }
                }
            }
            }
        }
    }

    // MARK: depthwise inner kernels (specialised per tap layout)

    /// out[r, 0..<cols] = Σ_{ki,kj} wv[ki·kw+kj] · src[phase(kj·d)][(s·r + ki·d)·rowStride + shift(kj·d) + 0..<cols]
    /// (phase = column parity and shift = column / 2 at stride 2; phase 0 and shift = column at stride 1).
    /// src is padded so every read is in bounds, including the lanes past `cols` of the last vector.
    static func depthwiseGather(_ kh: Int, _ kw: Int, _ s: Int, _ d: Int, src: UnsafePointer<Float>, phaseSize: Int,
                                rowStride: Int, wv: UnsafePointer<SIMD4<Float>>, rows: Int, cols: Int,
                                out: UnsafeMutablePointer<Float>, outStride: Int) {
        let a = GatherArgs(src: src, phaseSize: phaseSize, rowStride: rowStride, wv: wv, rows: rows, cols: cols,
                           out: out, outStride: outStride)
        // Each case inlines the kernel with its taps known, so the tap loops unroll.
        switch (kh, kw, s, d) {
        case (3, 3, 1, 1): gatherRows(kh: 3, kw: 3, s: 1, d: 1, a)
        case (3, 3, 1, 2): gatherRows(kh: 3, kw: 3, s: 1, d: 2, a)
        case (5, 5, 1, 1): gatherRows(kh: 5, kw: 5, s: 1, d: 1, a)
        case (5, 5, 1, 2): gatherRows(kh: 5, kw: 5, s: 1, d: 2, a)
        case (3, 3, 2, 1): gatherRows(kh: 3, kw: 3, s: 2, d: 1, a)
        case (3, 3, 2, 2): gatherRows(kh: 3, kw: 3, s: 2, d: 2, a)
        case (5, 5, 2, 1): gatherRows(kh: 5, kw: 5, s: 2, d: 1, a)
        case (5, 5, 2, 2): gatherRows(kh: 5, kw: 5, s: 2, d: 2, a)
        default: gatherRows(kh: kh, kw: kw, s: s, d: d, a)
        }
    }

    /// Operands of `gatherRows` (see `depthwiseGather`).
    struct GatherArgs {
        var src: UnsafePointer<Float>, phaseSize: Int, rowStride: Int, wv: UnsafePointer<SIMD4<Float>>
        var rows: Int, cols: Int, out: UnsafeMutablePointer<Float>, outStride: Int
    }

    /// Offset of tap column `col` (= kj·d) in P: its phase and shift at stride 2.
    @inline(__always)
    static func tapColumn(_ col: Int, s: Int, phaseSize: Int) -> Int {
        s == 1 ? col : (col & 1) * phaseSize + (col >> 1)
    }

    /// Four output rows r = 0...3 of one vector column at once: the loads of an input row are
    /// shared by every output row it reaches, and each row sums even and odd kernel rows apart
    /// (two shorter add chains).
    @inline(__always)
    static func tapSums4(kh: Int, kw: Int, s: Int, d: Int, at: UnsafePointer<Float>, phaseSize: Int, rowStride: Int,
                         wv: UnsafePointer<SIMD4<Float>>) -> (SIMD4<Float>, SIMD4<Float>, SIMD4<Float>, SIMD4<Float>) {
        var e0 = SIMD4<Float>(), e1 = SIMD4<Float>(), e2 = SIMD4<Float>(), e3 = SIMD4<Float>()
        var o0 = SIMD4<Float>(), o1 = SIMD4<Float>(), o2 = SIMD4<Float>(), o3 = SIMD4<Float>()
        for ki in 0..<kh {
            for kj in 0..<kw {
                let wt = wv[ki * kw + kj], off = tapColumn(kj * d, s: s, phaseSize: phaseSize)
                let p0 = wt * load4(at + (ki * d) * rowStride + off)
                let p1 = wt * load4(at + (s + ki * d) * rowStride + off)
                let p2 = wt * load4(at + (2 * s + ki * d) * rowStride + off)
                let p3 = wt * load4(at + (3 * s + ki * d) * rowStride + off)
                if ki & 1 == 0 {
                    if ki == 0 && kj == 0 { e0 = p0; e1 = p1; e2 = p2; e3 = p3 } else { e0 += p0; e1 += p1; e2 += p2; e3 += p3 }
                } else {
                    if ki == 1 && kj == 0 { o0 = p0; o1 = p1; o2 = p2; o3 = p3 } else { o0 += p0; o1 += p1; o2 += p2; o3 += p3 }
                }
            }
        }
        return kh > 1 ? (e0 + o0, e1 + o1, e2 + o2, e3 + o3) : (e0, e1, e2, e3)
    }

    /// One output row of one vector column.
    @inline(__always)
    static func tapSum(kh: Int, kw: Int, s: Int, d: Int, at: UnsafePointer<Float>, phaseSize: Int, rowStride: Int,
                       wv: UnsafePointer<SIMD4<Float>>) -> SIMD4<Float> {
        var e = SIMD4<Float>(), o = SIMD4<Float>()
        for ki in 0..<kh {
            for kj in 0..<kw {
                let v = wv[ki * kw + kj] * load4(at + (ki * d) * rowStride + tapColumn(kj * d, s: s, phaseSize: phaseSize))
                if ki & 1 == 0 { if ki == 0 && kj == 0 { e = v } else { e += v } } else { if ki == 1 && kj == 0 { o = v } else { o += v } }
            }
        }
        return kh > 1 ? e + o : e
    }

    /// Stores lanes 0..<n (1...4) of v at p.
    @inline(__always)
    static func storePartial(_ p: UnsafeMutablePointer<Float>, _ v: SIMD4<Float>, _ n: Int) {
        switch n {
        case 4: store4(p, v)
        case 3: UnsafeMutableRawPointer(p).storeBytes(of: v.lowHalf, as: SIMD2<Float>.self); p[2] = v[2]
        case 2: UnsafeMutableRawPointer(p).storeBytes(of: v.lowHalf, as: SIMD2<Float>.self)
        default: p[0] = v[0]
        }
    }

    @inline(__always)
    static func gatherRows(kh: Int, kw: Int, s: Int, d: Int, _ a: GatherArgs) {
        let (src, phaseSize, rowStride, wv, rows, cols, out, outStride) =
            (a.src, a.phaseSize, a.rowStride, a.wv, a.rows, a.cols, a.out, a.outStride)
        let vectors = (cols + 3) >> 2, last = cols - 4 * (vectors - 1)      // lanes of the last vector
        var r = 0
        while r + 4 <= rows {
            let at = src + s * r * rowStride, orow = out + r * outStride
            for j in 0..<vectors {
                let (y0, y1, y2, y3) = tapSums4(kh: kh, kw: kw, s: s, d: d, at: at + 4 * j, phaseSize: phaseSize,
                                                rowStride: rowStride, wv: wv)
                let n = j == vectors - 1 ? last : 4
                storePartial(orow + 4 * j, y0, n)
                storePartial(orow + outStride + 4 * j, y1, n)
                storePartial(orow + 2 * outStride + 4 * j, y2, n)
                storePartial(orow + 3 * outStride + 4 * j, y3, n)
            }
            r += 4
        }
        while r < rows {
            let at = src + s * r * rowStride, orow = out + r * outStride
            for j in 0..<vectors {
                let y = tapSum(kh: kh, kw: kw, s: s, d: d, at: at + 4 * j, phaseSize: phaseSize, rowStride: rowStride, wv: wv)
                storePartial(orow + 4 * j, y, j == vectors - 1 ? last : 4)
            }
            r += 1
        }
    }

    /// acc[ki·kw+kj] += Σ_{oh, ow} dy[oh, ow] · P[phase(kj·d)][(s·oh + ki·d)·rowStride + shift(kj·d) + ow]
    /// over `vectors` SIMD4 per row; dy's lanes past Wo are zeros of Q, so they add nothing.
    /// The taps are summed in register groups of at most 10 (3×3: all nine; 5×5: kernel rows 0–1, 2–3, 4).
    static func depthwiseWeightGrad(_ kh: Int, _ kw: Int, _ s: Int, _ d: Int, src: UnsafePointer<Float>, phaseSize: Int,
                                    rowStride: Int, dy: UnsafePointer<Float>, dyStride: Int, rows: Int, vectors: Int,
                                    acc: UnsafeMutablePointer<SIMD4<Float>>) {
        let a = WeightGradArgs(src: src, phaseSize: phaseSize, rowStride: rowStride, dy: dy, dyStride: dyStride,
                               rows: rows, vectors: vectors, acc: acc)
        switch (kh, kw, s, d) {
        case (3, 3, 1, 1): weightGradGroup(kiLo: 0, kiCount: 3, kw: 3, s: 1, d: 1, a)
        case (3, 3, 1, 2): weightGradGroup(kiLo: 0, kiCount: 3, kw: 3, s: 1, d: 2, a)
        case (3, 3, 2, 1): weightGradGroup(kiLo: 0, kiCount: 3, kw: 3, s: 2, d: 1, a)
        case (3, 3, 2, 2): weightGradGroup(kiLo: 0, kiCount: 3, kw: 3, s: 2, d: 2, a)
        case (5, 5, 1, 1):
            weightGradGroup(kiLo: 0, kiCount: 2, kw: 5, s: 1, d: 1, a); weightGradGroup(kiLo: 2, kiCount: 2, kw: 5, s: 1, d: 1, a)
            weightGradGroup(kiLo: 4, kiCount: 1, kw: 5, s: 1, d: 1, a)
        case (5, 5, 1, 2):
            weightGradGroup(kiLo: 0, kiCount: 2, kw: 5, s: 1, d: 2, a); weightGradGroup(kiLo: 2, kiCount: 2, kw: 5, s: 1, d: 2, a)
            weightGradGroup(kiLo: 4, kiCount: 1, kw: 5, s: 1, d: 2, a)
        case (5, 5, 2, 1):
            weightGradGroup(kiLo: 0, kiCount: 2, kw: 5, s: 2, d: 1, a); weightGradGroup(kiLo: 2, kiCount: 2, kw: 5, s: 2, d: 1, a)
            weightGradGroup(kiLo: 4, kiCount: 1, kw: 5, s: 2, d: 1, a)
        case (5, 5, 2, 2):
            weightGradGroup(kiLo: 0, kiCount: 2, kw: 5, s: 2, d: 2, a); weightGradGroup(kiLo: 2, kiCount: 2, kw: 5, s: 2, d: 2, a)
            weightGradGroup(kiLo: 4, kiCount: 1, kw: 5, s: 2, d: 2, a)
        default:
            // Any other kernel: accumulate straight into acc, one tap at a time.
            for oh in 0..<rows {
                for ki in 0..<kh {
                    let row = src + (s * oh + ki * d) * rowStride
                    for kj in 0..<kw {
                        let x = row + tapColumn(kj * d, s: s, phaseSize: phaseSize)
                        var a = acc[ki * kw + kj]
                        for j in 0..<vectors { a += load4(dy + oh * dyStride + 4 * j) * load4(x + 4 * j) }
                        acc[ki * kw + kj] = a
                    }
                }
            }
        }
    }

    /// Up to ten SIMD4 sums that stay in registers through the plane (constant indices after unrolling).
    struct TapSums {
        var t0 = SIMD4<Float>(), t1 = SIMD4<Float>(), t2 = SIMD4<Float>(), t3 = SIMD4<Float>(), t4 = SIMD4<Float>()
        var t5 = SIMD4<Float>(), t6 = SIMD4<Float>(), t7 = SIMD4<Float>(), t8 = SIMD4<Float>(), t9 = SIMD4<Float>()
        @inline(__always) subscript(i: Int) -> SIMD4<Float> {
            get {
                switch i { case 0: t0; case 1: t1; case 2: t2; case 3: t3; case 4: t4
                           case 5: t5; case 6: t6; case 7: t7; case 8: t8; default: t9 }
            }
            set {
                switch i { case 0: t0 = newValue; case 1: t1 = newValue; case 2: t2 = newValue; case 3: t3 = newValue
                           case 4: t4 = newValue; case 5: t5 = newValue; case 6: t6 = newValue; case 7: t7 = newValue
                           case 8: t8 = newValue; default: t9 = newValue }
            }
        }
    }

    /// Operands of `weightGradGroup` (see `depthwiseWeightGrad`).
    struct WeightGradArgs {
        var src: UnsafePointer<Float>, phaseSize: Int, rowStride: Int, dy: UnsafePointer<Float>, dyStride: Int
        var rows: Int, vectors: Int, acc: UnsafeMutablePointer<SIMD4<Float>>
    }

    /// Kernel rows kiLo..<kiLo+kiCount (kiCount·kw ≤ 10) of `depthwiseWeightGrad`.
    @inline(__always)
    static func weightGradGroup(kiLo: Int, kiCount: Int, kw: Int, s: Int, d: Int, _ a: WeightGradArgs) {
        let (src, phaseSize, rowStride, dy, dyStride, rows, vectors, acc) =
            (a.src, a.phaseSize, a.rowStride, a.dy, a.dyStride, a.rows, a.vectors, a.acc)
        var sums = TapSums()
        for oh in 0..<rows {
            let dyrow = dy + oh * dyStride, base = src + (s * oh + kiLo * d) * rowStride
            for j in 0..<vectors {
                let g = load4(dyrow + 4 * j)
                for i in 0..<kiCount {
                    for kj in 0..<kw {
                        sums[i * kw + kj] += g * load4(base + i * d * rowStride + tapColumn(kj * d, s: s, phaseSize: phaseSize) + 4 * j)
                    }
                }
            }
        }
        for t in 0..<(kiCount * kw) { acc[kiLo * kw + t] += sums[t] }
    }

    /// Stride-2 dX of one plane. Padded row r = ih + p of row parity ρ, column phase φ, phase column m:
    ///   dXpad[r, 2m + φ] = Σ_{ki: ki·d ≡ ρ (mod 2)} Σ_{kj: kj·d ≡ φ (mod 2)} w[ki, kj] · dY[(r − ki·d)/2, m − ⌊kj·d/2⌋]
    /// where dY reads off its edges land in Q's zero margins; then dX[ih, iw] = dXpad[ih + p, iw + p].
    static func depthwisePolyphaseInputGrad(_ plan: DepthwisePlan, dyInQ: UnsafePointer<Float>, wv: UnsafePointer<SIMD4<Float>>,
                                            rowPhases: UnsafeMutablePointer<Float>, dX: UnsafeMutablePointer<Float>) {
        switch (plan.kh, plan.kw, plan.d) {
        case (3, 3, 1): polyphaseRows(kh: 3, kw: 3, d: 1, plan: plan, dyInQ: dyInQ, wv: wv, rowPhases: rowPhases, dX: dX)
        case (3, 3, 2): polyphaseRows(kh: 3, kw: 3, d: 2, plan: plan, dyInQ: dyInQ, wv: wv, rowPhases: rowPhases, dX: dX)
        case (5, 5, 1): polyphaseRows(kh: 5, kw: 5, d: 1, plan: plan, dyInQ: dyInQ, wv: wv, rowPhases: rowPhases, dX: dX)
        case (5, 5, 2): polyphaseRows(kh: 5, kw: 5, d: 2, plan: plan, dyInQ: dyInQ, wv: wv, rowPhases: rowPhases, dX: dX)
        default: polyphaseRows(kh: plan.kh, kw: plan.kw, d: plan.d, plan: plan, dyInQ: dyInQ, wv: wv, rowPhases: rowPhases, dX: dX)
        }
    }

    @inline(__always)
    static func polyphaseRows(kh: Int, kw: Int, d: Int, plan: DepthwisePlan, dyInQ: UnsafePointer<Float>,
                              wv: UnsafePointer<SIMD4<Float>>, rowPhases: UnsafeMutablePointer<Float>,
                              dX: UnsafeMutablePointer<Float>) {
        let (h, w, p, qs, nvX) = (plan.h, plan.w, plan.p, plan.qStride, plan.nvX)
        let even = rowPhases, odd = rowPhases + 4 * nvX     // (4·nvX) each: dXpad[r, 2m], dXpad[r, 2m + 1]
        let lead = p >> 1                                   // first phase column a dX column maps to
        let e = p & 1 == 0 ? even + lead : odd + lead       // iw = 2m     → padded column 2m + p
        let o = p & 1 == 0 ? odd + lead : even + ((p + 1) >> 1) // iw = 2m + 1 → padded column 2m + 1 + p
        for rho in 0..<2 {
            var ih = (rho - (p & 1)) & 1                    // first dX row whose padded row has parity ρ
            // Kernel rows reaching parity ρ: ki·d ≡ ρ (mod 2). None (d even, ρ odd) → rows of zeros.
            var reaches = false
            for ki in 0..<kh where (ki * d) & 1 == rho { reaches = true }
            while ih < h {
                let r = ih + p, drow = dX + ih * w
                defer { ih += 2 }
                if !reaches { drow.update(repeating: 0, count: w); continue }
                let top = dyInQ + ((r - rho) >> 1) * qs     // dY row (r − ρ)/2; kernel row ki reads (ki·d − ρ)/2 rows above
                for j in (lead >> 2)..<nvX {
                    var a0 = SIMD4<Float>(), a1 = SIMD4<Float>()
                    for ki in 0..<kh where (ki * d) & 1 == rho {
                        let qrow = top - ((ki * d - rho) >> 1) * qs + 4 * j
                        for kj in 0..<kw {
                            let col = kj * d
                            let v = wv[ki * kw + kj] * load4(qrow - (col >> 1))
                            if col & 1 == 0 { a0 += v } else { a1 += v }
                        }
                    }
                    store4(even + 4 * j, a0); store4(odd + 4 * j, a1)
                }
                // dX[ih, iw] = dXpad[r, iw + p]: interleave the two phases back.
                var m = 0
                while 2 * m + 8 <= w {
                    var v = SIMD8<Float>()
                    v.evenHalf = load4(e + m); v.oddHalf = load4(o + m)
                    UnsafeMutableRawPointer(drow + 2 * m).storeBytes(of: v, as: SIMD8<Float>.self)
                    m += 4
                }
                while 2 * m + 1 < w { drow[2 * m] = e[m]; drow[2 * m + 1] = o[m]; m += 1 }
                if w & 1 != 0 { drow[w - 1] = e[w >> 1] }
            }
        }
    }

    // MARK: depthwise direct loops (any geometry; the fallback of the fast path)

    static func depthwiseForwardDirect(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let (ho, wo, s, p, d, kh, kw) = (g.hOut, g.wOut, g.stride, g.padding, g.dilation, g.kh, g.kw)
        let planes = g.n * g.cIn
        Parallel.forChunks(planes) { r in
            for plane in r {
                let c = plane % g.cIn
                let xp = x + plane * g.h * g.w, yp = y + plane * ho * wo, wp = w + c * kh * kw
                yp.update(repeating: 0, count: ho * wo)
                for oh in 0..<ho {
                    let yrow = yp + oh * wo
                    for ki in 0..<kh {
                        let ih = oh * s - p + ki * d
                        if ih < 0 || ih >= g.h { continue }
                        let xrow = xp + ih * g.w
                        for kj in 0..<kw {
                            let wv = wp[ki * kw + kj], off = kj * d - p
                            let rng = validRange(outSize: wo, inSize: g.w, stride: s, offset: off)
                            if s == 1 {
                                let src = xrow + off
                                for ow in rng { yrow[ow] += wv * src[ow] }
                            } else {
                                for ow in rng { yrow[ow] += wv * xrow[ow * s + off] }
                            }
                        }
                    }
                }
            }
        }
    }

    static func depthwiseBackwardDirect(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, dY: UnsafePointer<Float>,
                                        dX: UnsafeMutablePointer<Float>?, dW: UnsafeMutablePointer<Float>?) {
        let (ho, wo, s, p, d, kh, kw) = (g.hOut, g.wOut, g.stride, g.padding, g.dilation, g.kh, g.kw)
        if let dX {
            // Scatter: dX[ih, ow·s + off] += w · dY[oh, ow]; planes are independent.
            Parallel.forChunks(g.n * g.cIn) { r in
                for plane in r {
                    let c = plane % g.cIn
                    let dxp = dX + plane * g.h * g.w, dyp = dY + plane * ho * wo, wp = w + c * kh * kw
                    dxp.update(repeating: 0, count: g.h * g.w)
                    for oh in 0..<ho {
                        let dyrow = dyp + oh * wo
                        for ki in 0..<kh {
                            let ih = oh * s - p + ki * d
                            if ih < 0 || ih >= g.h { continue }
                            let dxrow = dxp + ih * g.w
                            for kj in 0..<kw {
                                let wv = wp[ki * kw + kj], off = kj * d - p
                                let rng = validRange(outSize: wo, inSize: g.w, stride: s, offset: off)
                                if s == 1 {
                                    let dst = dxrow + off
                                    for ow in rng { dst[ow] += wv * dyrow[ow] }
                                } else {
                                    for ow in rng { dxrow[ow * s + off] += wv * dyrow[ow] }
                                }
                            }
                        }
                    }
                }
            }
        }
        if let dW {
            // dW[c, ki, kj] += Σ_n Σ_oh Σ_ow dY · x ; split over channels so chunks never share a weight.
            Parallel.forChunks(g.cIn) { r in
                for c in r {
                    let wp = dW + c * kh * kw
                    for ki in 0..<kh {
                        for kj in 0..<kw {
                            let off = kj * d - p
                            let rng = validRange(outSize: wo, inSize: g.w, stride: s, offset: off)
                            var acc: Float = 0
                            for sample in 0..<g.n {
                                let plane = sample * g.cIn + c
                                let xp = x + plane * g.h * g.w, dyp = dY + plane * ho * wo
                                for oh in 0..<ho {
                                    let ih = oh * s - p + ki * d
                                    if ih < 0 || ih >= g.h { continue }
                                    let xrow = xp + ih * g.w, dyrow = dyp + oh * wo
                                    var rowAcc: Float = 0
                                    if s == 1 {
                                        let src = xrow + off
                                        for ow in rng { rowAcc += dyrow[ow] * src[ow] }
                                    } else {
                                        for ow in rng { rowAcc += dyrow[ow] * xrow[ow * s + off] }
                                    }
                                    acc += rowAcc
                                }
                            }
                            wp[ki * kw + kj] += acc
                        }
                    }
                }
            }
        }
    }
}
