// Depthwise convolution (groups == Cin == Cout), NCHW, float32: forward, dX and dW side by side.
// Each (sample, channel) plane is first copied into a zero-padded scratch plane, so the inner
// loops test no bounds: they gather whole output rows eight columns at a time (SIMD8, one fused
// multiply-add per tap and vector), several rows at once, with the taps unrolled for the DARTS
// shapes (3×3 and 5×5, dilation 1 and 2, stride 1 and 2). Stride 2 reads the padded input split by column parity, so loads stay contiguous.
// dX is a gather too: the stride-1 forward kernel on padded dY with the kernel flipped; at stride 2
// on dY upsampled (zeros between its rows and columns). A quarter of those products are nonzero
// at stride 2, yet the one dense gather at dX's full width ran 1.4–2.9× faster than the four
// sub-pixel gathers (one per row and column parity of dX, on half-width planes) and interleave it
// replaced (fused separable unit backward at the reduction cells' shapes: 14.2 → 9.3 ms for eight).
// dW sums products of a plane with shifted copies of the other, the sums held in registers.
// Short rows (7 and 14 wide: 7 and 6 lanes past the last whole vector) are copied into P and Q,
// stored to y and dX, and read for dW in whole vectors wherever the vector stays inside its plane
// (`wholeVectorRows`), with the lanes past the row dropped, zero, or rewritten by the rows after:
// the lane-by-lane tails cost more than the sums of a 7×7 plane (`espalier kernel-bench`, 7×7:
// the depthwise kernels 0.79–0.82× as long).
// ReLU fused into the input (`reluInput`, the DARTS ops' ReLU → depthwise): the forward applies
// max(0, ·) while copying x into P, so relu(x) is never stored; backward loads relu(x) into P for
// dW (at stride 1 too) and multiplies each dX plane by 1[x > 0]. x is the pre-ReLU input.
// Not here: geometries outside this path (stride > 2, padding > dilation·(k−1), kernels over 81
// taps) take the direct loops in Conv2D.swift, beside the naive reference.
//
// Shapes: x, dX (N, C, H, W) · w, dW (C, 1, KH, KW) · y, dY (N, C, Ho, Wo).
// Scratch (see DepthwisePlan), per chunk:
//   P  x padded by p     (phases, pRows, pStride)  forward; stride-2 dW. Stride 2: phase 0 = even padded columns
//   Q  dY with margins   (qRows, qStride)          backward; dY[oh, ow] at Q[qTop + oh, qLeft + ow], zeros elsewhere
//   U  dY upsampled        (uRows, uStride)        stride-2 dX; dY[oh, ow] at U[uTop + 2·oh, uLeft + 2·ow], zeros elsewhere
// and, after the chunks, the dW sums (C, KH·KW, lanes) of the backward pass.

import Foundation
import CEspalierKernels

/// Sizes of the scratch planes of the depthwise path; nil when the geometry takes the direct loops.
/// Borders and margins of P and Q are zeroed once per call and never written after (whole-vector
/// row copies write zeros past a row, where the border already holds them).
struct DepthwisePlan {
    let h, w, ho, wo, kh, kw, s, p, d: Int
    let nv: Int          // SIMD8 vectors per output row, ⌈Wo/8⌉ (the last may be partial)
    let phases: Int      // column phases of P: 1 at stride 1, 2 at stride 2
    let pRows, pStride: Int
    let qRows, qStride, qTop, qLeft: Int
    let uRows, uStride, uTop, uLeft: Int   // stride 2: U, dY upsampled for dX
    /// Stride 1: a row of P has room for x's row in whole vectors (p + ⌈W/8⌉·8 ≤ pStride), so
    /// `loadInput` may store the last vector of a row whole, zeros past W (P's right border).
    let wholeInputRows: Bool

    /// Most taps the fast path takes (9×9: MergeNAS's merged kernel); its broadcast weights live on the stack.
    static let maxTaps = 81
    /// Floats per vector of the inner kernels (SIMD8: one AVX register); the planes' margins hold a
    /// whole vector past the last column, so the gathers read without bounds tests.
    static let lanes = SIMD8<Float>.scalarCount

    init?(_ g: ConvGeometry) {
        guard g.algorithm == .depthwise, g.stride == 1 || g.stride == 2, g.kh * g.kw <= Self.maxTaps else { return nil }
        (h, w, ho, wo, kh, kw, s, p, d) = (g.h, g.w, g.hOut, g.wOut, g.kh, g.kw, g.stride, g.padding, g.dilation)
        let lanes = Self.lanes
        nv = (wo + lanes - 1) / lanes
        pRows = h + 2 * p
        // dX = forward of dY (upsampled at stride 2) padded by dilation·(k−1) − p with the kernel
        // flipped; needs that ≥ 0.
        guard p <= d * (kh - 1), p <= d * (kw - 1) else { return nil }
        if s == 1 {
            phases = 1
            pStride = lanes * nv + (kw - 1) * d               // ≥ W + 2p, and room for the last vector's taps
            qTop = (kh - 1) * d - p; qLeft = (kw - 1) * d - p
            qRows = h + (kh - 1) * d
            qStride = max(lanes * ((w + lanes - 1) / lanes) + (kw - 1) * d, qLeft + lanes * nv)
            uRows = 0; uStride = 0; uTop = 0; uLeft = 0
            wholeInputRows = p + lanes * ((w + lanes - 1) / lanes) <= pStride
        } else {
            phases = 2
            pStride = max(lanes * nv + (kw - 1) * d / 2, (w + 2 * p + 1) / 2)
            // dY for dW (WeightGradKernel reads it from qTop, qLeft) and for U's rows.
            qTop = 0; qLeft = 0
            qRows = ho
            qStride = lanes * nv
            // U[uTop + 2·oh, uLeft + 2·ow] = dY[oh, ow], zeros elsewhere: dY[oh, ow] lands at or
            // before row (column) H + p − 1 < uRows, and a row's ⌈Wo/8⌉ vectors of dY fill
            // 16·⌈Wo/8⌉ floats of U from uLeft.
            uTop = (kh - 1) * d - p; uLeft = (kw - 1) * d - p
            uRows = h + (kh - 1) * d
            uStride = max(lanes * ((w + lanes - 1) / lanes) + (kw - 1) * d, uLeft + 2 * lanes * nv)
            wholeInputRows = false
        }
    }

    var pFloats: Int { phases * pRows * pStride }
    var qFloats: Int { qRows * qStride }
    var uFloats: Int { uRows * uStride }
    /// Forward scratch: one P per chunk.
    func forwardFloats(chunks: Int) -> Int { chunks * pFloats }
    /// Whether backward loads x into P: stride-2 dW, and dW of a ReLU-fused input at any stride.
    func backwardNeedsP(needWeightGrad: Bool, reluInput: Bool) -> Bool { needWeightGrad && (s == 2 || reluInput) }
    /// Backward scratch of one chunk: Q; P for stride-2 or ReLU-input dW; U for stride-2 dX.
    func backwardChunkFloats(needInputGrad: Bool, needWeightGrad: Bool, reluInput: Bool = false) -> Int {
        qFloats + (backwardNeedsP(needWeightGrad: needWeightGrad, reluInput: reluInput) ? pFloats : 0)
            + (s == 2 && needInputGrad ? uFloats : 0)
    }
    /// Backward scratch: the chunks', then the dW sums (C, KH·KW, lanes) shared by all chunks.
    func backwardFloats(chunks: Int, channels: Int, needInputGrad: Bool, needWeightGrad: Bool, reluInput: Bool = false) -> Int {
        if !needInputGrad && !needWeightGrad { return 0 }
        return chunks * backwardChunkFloats(needInputGrad: needInputGrad, needWeightGrad: needWeightGrad, reluInput: reluInput)
            + (needWeightGrad ? channels * kh * kw * Self.lanes : 0)
    }

    /// One chunk's backward scratch at `base` (`backwardChunkFloats` floats): Q (qRows, qStride);
    /// then P (phases, pRows, pStride) for stride-2 or ReLU-input dW; then U (uRows, uStride) for
    /// stride-2 dX. Zero them once per call (borders and U's zeros are never written after).
    func backwardScratch(_ base: UnsafeMutablePointer<Float>, needWeightGrad: Bool, reluInput: Bool)
        -> (q: UnsafeMutablePointer<Float>, p: UnsafeMutablePointer<Float>, u: UnsafeMutablePointer<Float>) {
        let p = base + qFloats
        return (base, p, p + (backwardNeedsP(needWeightGrad: needWeightGrad, reluInput: reluInput) ? pFloats : 0))
    }

    /// P interior ← one x plane (H, W), or relu(x) when `relu`. Stride 2 splits the padded columns by parity.
    @inline(__always)
    func loadInput(_ x: UnsafePointer<Float>, into pb: UnsafeMutablePointer<Float>, relu: Bool = false) {
        if s == 1 {
            // Rows whose last vector can be read whole inside the plane (all but the last row or
            // so) are copied in whole vectors, zeros past W: no lane-by-lane tail.
            let wholeRows = wholeInputRows ? wholeVectorRows(rows: h, cols: w) : 0
            if relu {
                for ih in 0..<wholeRows { copyRowWholeReLU(pb + (ih + p) * pStride + p, x + ih * w, w) }
                for ih in wholeRows..<h { copyRowReLU(pb + (ih + p) * pStride + p, x + ih * w, w) }
            } else {
                for ih in 0..<wholeRows { copyRowWhole(pb + (ih + p) * pStride + p, x + ih * w, w) }
                for ih in wholeRows..<h { copyRow(pb + (ih + p) * pStride + p, x + ih * w, w) }
            }
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
                var v = UnsafeRawPointer(src + 2 * m).loadUnaligned(as: SIMD8<Float>.self)
                if relu { v = relu8(v) }
                store4(even + m, v.evenHalf); store4(odd + m, v.oddHalf)
                m += 4
            }
            if relu {
                while 2 * m + 1 < w { even[m] = max(src[2 * m], 0); odd[m] = max(src[2 * m + 1], 0); m += 1 }
                if w & 1 != 0 { even[w >> 1] = max(src[w - 1], 0) }
            } else {
                while 2 * m + 1 < w { even[m] = src[2 * m]; odd[m] = src[2 * m + 1]; m += 1 }
                if w & 1 != 0 { even[w >> 1] = src[w - 1] }
            }
        }
    }

    /// U's even rows and columns ← dY's plane from Q (loaded by `loadOutputGrad`), its odd
    /// columns ← 0; U's odd rows and borders stay as zeroed. Each row goes in whole vectors: Q's
    /// lanes past Wo are zero, and U has room for them (uStride ≥ uLeft + 16·⌈Wo/8⌉).
    @inline(__always)
    func loadUpsampledOutputGrad(from qb: UnsafePointer<Float>, into ub: UnsafeMutablePointer<Float>) {
        for oh in 0..<ho {
            let src = qb + (qTop + oh) * qStride + qLeft, dst = ub + (uTop + 2 * oh) * uStride + uLeft
            for v in 0..<nv {
                let x = Kernels.load8(src + Self.lanes * v)
                var lo = SIMD8<Float>(), hi = SIMD8<Float>()
                lo.evenHalf = x.lowHalf; hi.evenHalf = x.highHalf
                Kernels.store8(dst + 2 * Self.lanes * v, lo); Kernels.store8(dst + 2 * Self.lanes * v + Self.lanes, hi)
            }
        }
    }

    /// Q interior ← one dY plane (Ho, Wo).
    @inline(__always)
    func loadOutputGrad(_ dy: UnsafePointer<Float>, into qb: UnsafeMutablePointer<Float>) {
        // Q's rows have room for ⌈Wo/8⌉ whole vectors past qLeft (qStride ≥ qLeft + 8·nv).
        let wholeRows = wholeVectorRows(rows: ho, cols: wo)
        for oh in 0..<wholeRows { copyRowWhole(qb + (qTop + oh) * qStride + qLeft, dy + oh * wo, wo) }
        for oh in wholeRows..<ho { copyRow(qb + (qTop + oh) * qStride + qLeft, dy + oh * wo, wo) }
    }
}

extension DepthwisePlan {
    /// Whether a sample's depthwise forward runs with its channels in the vector lanes
    /// (CEspalierKernels' depthwise8.c: C a multiple of 8, 3×3 or 5×5, stride and dilation 1 or 2,
    /// x86-64) rather than plane by plane (`Kernels.depthwiseForwardPlane`, its reference: the
    /// same bits).
    func runsChannelsInLanes(channels c: Int) -> Bool {
        espalier_depthwise8_supports(c, kh, kw, s, d) == 1
    }

    /// Scratch floats of one sample's forward in lanes (`forwardSampleInLanes`): P8 and T8.
    var lanesForwardFloats: Int { espalier_depthwise8_forward_floats(h, w, ho, wo, p) }

    /// t (C, Ho·Wo) = the depthwise forward of one sample x (C, H, W), weights (C, KH·KW), with its
    /// channels in the lanes; needs `runsChannelsInLanes`. scratch: `lanesForwardFloats` floats,
    /// zeroed before the first sample (its border is never written), as P is.
    @inline(__always)
    func forwardSampleInLanes(channels c: Int, x: UnsafePointer<Float>, weights: UnsafePointer<Float>, t: UnsafeMutablePointer<Float>,
                              reluInput: Bool, scratch: UnsafeMutablePointer<Float>) {
        espalier_depthwise8_forward(c, h, w, ho, wo, kh, s, p, d, reluInput ? 1 : 0, x, weights, t, scratch)
    }
}

extension Kernels {
    /// Whether `depthwiseForwardSampleInLanes` takes this geometry.
    public static func depthwiseRunsChannelsInLanes(_ g: ConvGeometry) -> Bool {
        DepthwisePlan(g)?.runsChannelsInLanes(channels: g.cIn) ?? false
    }

    /// Scratch floats of `depthwiseForwardSampleInLanes`.
    public static func depthwiseForwardSampleInLanesFloats(_ g: ConvGeometry) -> Int {
        guard let plan = DepthwisePlan(g), plan.runsChannelsInLanes(channels: g.cIn) else { return 0 }
        return plan.lanesForwardFloats
    }

    /// t (C, Ho, Wo) = the depthwise forward of one sample x (C, H, W) (of relu(x) with
    /// `reluInput`), w (C, 1, KH, KW), its channels in the vector lanes: the same bits as
    /// `depthwiseForward` on that sample. Needs `depthwiseRunsChannelsInLanes(g)`. `workspace`:
    /// zeroed before the first sample; the samples after reuse it as it is.
    public static func depthwiseForwardSampleInLanes(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                                     t: UnsafeMutablePointer<Float>, reluInput: Bool,
                                                     workspace: UnsafeMutablePointer<Float>) {
        guard let plan = DepthwisePlan(g), plan.runsChannelsInLanes(channels: g.cIn) else {
            preconditionFailure("the channels-in-lanes depthwise forward does not take \(g)")
        }
        plan.forwardSampleInLanes(channels: g.cIn, x: x, weights: w, t: t, reluInput: reluInput, scratch: workspace)
    }
}

extension ConvGeometry {
    /// Scratch floats of the depthwise path (0 when it takes the direct loops).
    func depthwiseForwardFloats() -> Int { DepthwisePlan(self)?.forwardFloats(chunks: depthwiseForwardChunks) ?? 0 }
    func depthwiseBackwardFloats(needInputGrad: Bool, needWeightGrad: Bool, reluInput: Bool = false) -> Int {
        guard let plan = DepthwisePlan(self) else { return 0 }
        return plan.backwardFloats(chunks: depthwiseBackwardChunks, channels: cIn,
                                   needInputGrad: needInputGrad, needWeightGrad: needWeightGrad, reluInput: reluInput)
    }
    /// The forward pass splits planes into disjoint chunks (a plane's output is its own).
    var depthwiseForwardChunks: Int { Parallel.disjointChunkCount(n * cIn) }
    /// The backward pass splits channels into disjoint chunks: a channel's dW sums (over the
    /// samples, in order) and its dX planes belong to one chunk, so the split never moves them.
    var depthwiseBackwardChunks: Int { Parallel.disjointChunkCount(cIn) }
}

extension Kernels {
    // MARK: depthwise forward / backward

    /// y = depthwise conv(x, w), or of relu(x) when `reluInput`. x (N, C, H, W), w (C, 1, KH, KW), y (N, C, Ho, Wo).
    /// Planes are split across cores; `workspace` holds `g.forwardWorkspaceFloats()` (a P per chunk).
    /// `reluInput` needs the fast path (`DepthwisePlan(g) != nil`).
    static func depthwiseForward(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                 y: UnsafeMutablePointer<Float>, workspace: UnsafeMutablePointer<Float>?, reluInput: Bool = false) {
        guard let plan = DepthwisePlan(g) else {
            precondition(!reluInput, "a ReLU-fused input needs the depthwise fast path")
            depthwiseForwardDirect(g, x: x, w: w, y: y); return
        }
        let per = plan.pFloats, taps = g.kh * g.kw
        let (c, hw, howo) = (g.cIn, g.h * g.w, g.hOut * g.wOut)
        Parallel.forChunksIndexed(g.n * c, chunks: g.depthwiseForwardChunks) { k, range in
            let pb = workspace! + k * per                   // P: (phases, pRows, pStride)
            pb.update(repeating: 0, count: per)
            withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: DepthwisePlan.maxTaps) { wvBuf in
                let wv = wvBuf.baseAddress!                 // (KH·KW) broadcast weights
                for plane in range {
                    depthwiseForwardPlane(plan, x: x + plane * hw, w: w + (plane % c) * taps, y: y + plane * howo,
                                          reluInput: reluInput, p: pb, wv: wv)
                }
            }
        }
    }

    /// y's plane (Ho, Wo) = Σ taps w · P shifted, P ← x's plane (H, W) padded (relu(x) with
    /// `reluInput`). w: the channel's KH·KW taps. p: a P of `pFloats`, borders zero; wv: `maxTaps`
    /// vectors of scratch.
    @inline(__always)
    static func depthwiseForwardPlane(_ plan: DepthwisePlan, x: UnsafePointer<Float>, w wc: UnsafePointer<Float>,
                                      y: UnsafeMutablePointer<Float>, reluInput: Bool, p pb: UnsafeMutablePointer<Float>,
                                      wv: UnsafeMutablePointer<SIMD8<Float>>) {
        for t in 0..<(plan.kh * plan.kw) { wv[t] = SIMD8(repeating: wc[t]) }
        plan.loadInput(x, into: pb, relu: reluInput)
        GatherKernel(src: pb, phaseSize: plan.pRows * plan.pStride, rowStride: plan.pStride, wv: wv,
                     rows: plan.ho, cols: plan.wo, out: y, outStride: plan.wo, wholeStores: true)
            .dispatch(kh: plan.kh, kw: plan.kw, s: plan.s, d: plan.d)
    }

    /// One sample's planes t (C, Ho·Wo) = `depthwiseForwardPlane` of each of x's C planes (C, H, W),
    /// weights w (C, KH·KW): the fused unit's forward and its backward's t again.
    @inline(__always)
    static func depthwiseForwardSamplePlanes(_ plan: DepthwisePlan, channels c: Int, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                             t: UnsafeMutablePointer<Float>, reluInput: Bool, p: UnsafeMutablePointer<Float>,
                                             wv: UnsafeMutablePointer<SIMD8<Float>>) {
        let hw = plan.h * plan.w, howo = plan.ho * plan.wo, taps = plan.kh * plan.kw
        for ch in 0..<c {
            depthwiseForwardPlane(plan, x: x + ch * hw, w: w + ch * taps, y: t + ch * howo, reluInput: reluInput, p: p, wv: wv)
        }
    }

    /// dX = ∂/∂x (overwritten, if non-nil); dW += ∂/∂w (if non-nil). Channels are split across
    /// cores, so no two chunks share a weight; each chunk walks the samples in order and, within
    /// a sample, its channels (contiguous planes), padding each dY plane once for both gradients.
    /// `workspace` holds `g.backwardWorkspaceFloats(...)`: per chunk Q (and P, U at
    /// stride 2), then the dW sums (C, KH·KW, lanes).
    /// With `reluInput`, x is the pre-ReLU input: dW from relu(x), dX masked by 1[x > 0].
    /// With `dXAddend` (laid out as dX; it may be dX itself), dX = dXAddend + the gradient, added
    /// as each value is stored.
    static func depthwiseBackward(_ g: ConvGeometry, x: UnsafePointer<Float>, w: UnsafePointer<Float>, dY: UnsafePointer<Float>,
                                  dX: UnsafeMutablePointer<Float>?, dW: UnsafeMutablePointer<Float>?,
                                  workspace: UnsafeMutablePointer<Float>?, reluInput: Bool = false, dXAddend: UnsafePointer<Float>? = nil) {
        guard let plan = DepthwisePlan(g) else {
            precondition(!reluInput && dXAddend == nil, "a ReLU-fused input or a dX addend needs the depthwise fast path")
            depthwiseBackwardDirect(g, x: x, w: w, dY: dY, dX: dX, dW: dW); return
        }
        if dX == nil && dW == nil { return }
        let (c, hw, howo, taps) = (g.cIn, g.h * g.w, g.hOut * g.wOut, g.kh * g.kw)
        let chunks = g.depthwiseBackwardChunks
        let per = plan.backwardChunkFloats(needInputGrad: dX != nil, needWeightGrad: dW != nil, reluInput: reluInput)
        let lanes = DepthwisePlan.lanes
        let sums = workspace! + chunks * per                                // (C, KH·KW, lanes) dW sums
        Parallel.forChunksIndexed(c, chunks: chunks) { k, range in
            let (qb, pb, ub) = plan.backwardScratch(workspace! + k * per, needWeightGrad: dW != nil, reluInput: reluInput)
            qb.update(repeating: 0, count: per)
            if dW != nil { (sums + range.lowerBound * taps * lanes).update(repeating: 0, count: range.count * taps * lanes) }
            withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: DepthwisePlan.maxTaps) { wvBuf in
                let wv = wvBuf.baseAddress!                                 // (KH·KW) broadcast weights
                for sample in 0..<g.n {
                    for ch in range {
                        let plane = sample * c + ch
                        depthwiseBackwardPlane(plan, x: x + plane * hw, w: w + ch * taps, dY: dY + plane * howo,
                                               dX: dX.map { $0 + plane * hw }, dXAddend: dXAddend.map { $0 + plane * hw },
                                               dWSums: dW == nil ? nil : sums + ch * taps * lanes, reluInput: reluInput,
                                               q: qb, p: pb, u: ub, wv: wv)
                    }
                }
            }
            if let dW {
                for ch in range {
                    for t in 0..<taps { dW[ch * taps + t] += load8(sums + (ch * taps + t) * lanes).sum() }
                }
            }
        }
    }

    /// The backward of one (sample, channel) plane: dY's plane padded into Q, then dX's plane
    /// (if dX; masked by 1[x > 0] with `reluInput`, added to dXAddend's plane if given) and the
    /// channel's dW sums (KH·KW, lanes) += the plane's (if dWSums; reversed taps at stride 1).
    /// x, w, dY, dX, dXAddend point at the plane's own floats (w: the channel's KH·KW taps).
    /// q, p, u: a chunk's scratch (`backwardScratch`), borders zero; wv: `maxTaps` vectors of scratch.
    @inline(__always)
    static func depthwiseBackwardPlane(_ plan: DepthwisePlan, x: UnsafePointer<Float>, w wc: UnsafePointer<Float>, dY: UnsafePointer<Float>,
                                       dX: UnsafeMutablePointer<Float>?, dXAddend: UnsafePointer<Float>?, dWSums: UnsafeMutablePointer<Float>?,
                                       reluInput: Bool, q qb: UnsafeMutablePointer<Float>, p pb: UnsafeMutablePointer<Float>,
                                       u ub: UnsafeMutablePointer<Float>, wv: UnsafeMutablePointer<SIMD8<Float>>) {
        let (kh, kw, s, d, taps) = (plan.kh, plan.kw, plan.s, plan.d, plan.kh * plan.kw)
        let dyInQ = qb + plan.qTop * plan.qStride + plan.qLeft          // dY[0, 0] inside Q
        plan.loadOutputGrad(dY, into: qb)
        if let dX {
            if s == 1 {
                // dX (H, W) = Σ taps flip(w) · Q shifted
                for t in 0..<taps { wv[t] = SIMD8(repeating: wc[taps - 1 - t]) }
                GatherKernel(src: qb, phaseSize: 0, rowStride: plan.qStride, wv: wv,
                             rows: plan.h, cols: plan.w, out: dX, outStride: plan.w,
                             keep: reluInput ? x : nil, addend: dXAddend, wholeStores: true)
                    .dispatch(kh: kh, kw: kw, s: 1, d: d)
            } else {
                // dX (H, W) = Σ taps flip(w) · U shifted, U = dY upsampled by 2
                plan.loadUpsampledOutputGrad(from: qb, into: ub)
                for t in 0..<taps { wv[t] = SIMD8(repeating: wc[taps - 1 - t]) }
                GatherKernel(src: ub, phaseSize: 0, rowStride: plan.uStride, wv: wv,
                             rows: plan.h, cols: plan.w, out: dX, outStride: plan.w,
                             keep: reluInput ? x : nil, addend: dXAddend, wholeStores: true)
                    .dispatch(kh: kh, kw: kw, s: 1, d: d)
            }
        }
        if let acc = dWSums {
            if s == 1 {
                // dW (taps reversed) += Σ x · Q shifted (relu(x), from P's interior, when fused)
                var a = x, aStride = plan.w
                if reluInput {
                    plan.loadInput(a, into: pb, relu: true)
                    a = UnsafePointer(pb + plan.p * plan.pStride + plan.p); aStride = plan.pStride
                }
                WeightGradKernel(a: a, aStride: aStride, aCols: plan.w, rows: plan.h,
                                 b: qb, bStride: plan.qStride, phaseSize: 0, reversed: true, acc: acc,
                                 aWhole: reluInput && plan.wholeInputRows)
                    .dispatch(kh: kh, kw: kw, s: 1, d: d)
            } else {
                // dW += Σ dY · P shifted
                plan.loadInput(x, into: pb, relu: reluInput)
                WeightGradKernel(a: dyInQ, aStride: plan.qStride, aCols: plan.wo, rows: plan.ho,
                                 b: pb, bStride: plan.pStride, phaseSize: plan.pRows * plan.pStride,
                                 reversed: false, acc: acc, aWhole: true)
                    .dispatch(kh: kh, kw: kw, s: 2, d: d)
            }
        }
    }

    // MARK: depthwise inner kernels, specialised per tap layout

    /// out[r, 0..<cols] = Σ_{ki,kj} wv[ki·kw+kj] · src[phase(kj·d)][(s·r + ki·d)·rowStride + shift(kj·d) + 0..<cols]
    /// (phase = column parity and shift = column / 2 at stride 2; phase 0 and shift = column at stride 1).
    /// src is padded so every read is in bounds, including the lanes past `cols` of the last vector.
    struct GatherKernel: DepthwiseTapKernel {
        var src: UnsafePointer<Float>, phaseSize: Int, rowStride: Int
        var wv: UnsafePointer<SIMD8<Float>>                  // (KH·KW) broadcast weights
        var rows: Int, cols: Int, out: UnsafeMutablePointer<Float>, outStride: Int
        /// ReLU's backward as the sums are stored: out = 0 where keep ≤ 0 (keep: the pre-ReLU
        /// input, laid out as out). dX of a ReLU-fused input, without a pass of its own.
        var keep: UnsafePointer<Float>? = nil
        /// out = addend + the (masked) sums, addend laid out as out (it may be out itself): a
        /// gradient added to the gradient so far as it is stored.
        var addend: UnsafePointer<Float>? = nil

        /// out's rows are contiguous (outStride == cols), this call writes all of them and nothing
        /// reads out meanwhile (no addend): then a row's partial last vector may be stored whole
        /// wherever it stays inside out. Its lanes past `cols` land in rows stored after it: each
        /// block stores its partial column first, then its whole ones, and blocks go down the plane.
        var wholeStores = false

        func run<T: TapLayout>(_ t: T) {
            let whole = wholeStores && addend == nil && outStride == cols ? wholeVectorRows(rows: rows, cols: cols) : 0
            if whole > 0 { blocks(t, Int1.self, wholeRows: whole) } else { blocks(t, Int0.self, wholeRows: 0) }
        }

        /// All output rows in blocks; W = 1 stores partial last vectors whole below `wholeRows`.
        @inline(__always)
        func blocks<T: TapLayout, W: StaticInt>(_ t: T, _: W.Type, wholeRows: Int) {
            // Blocks of three output rows for a 3-row kernel, four for the others (`espalier
            // kernel-bench`, 3×3 at 14×14: 36–44 GFLOP/s in threes against 31–33 in fours; 5×5
            // no better in threes; in the zero-shot step no different). Each output's sum is the
            // same in any block.
            var r = 0
            if t.kh == 3 {
                while r + 3 <= rows { block(t, Int3.self, W.self, row: r, wholeRows: wholeRows); r += 3 }
            } else {
                while r + 4 <= rows { block(t, Int4.self, W.self, row: r, wholeRows: wholeRows); r += 4 }
            }
            switch rows - r {
            case 3: block(t, Int3.self, W.self, row: r, wholeRows: wholeRows)
            case 2: block(t, Int2.self, W.self, row: r, wholeRows: wholeRows)
            case 1: block(t, Int1.self, W.self, row: r, wholeRows: wholeRows)
            default: break
            }
        }

        /// Output rows row..<row+R (R ≤ 4), all vector columns. Per column the R rows are summed
        /// together, so an input row's loads serve every output row it reaches. With W = 1 (see
        /// `wholeStores`; no addend) the partial column goes first and rows below `wholeRows`
        /// store it whole: its lanes past the row are rewritten by the whole columns and rows after.
        /// Not inlined: one function per block height, as the compiler chose before the W variants
        /// doubled them. Measured at 28×28 while that size still took W = 0 (the code of the build
        /// before): the depthwise kernels took 1.07× as long with `blocks` inlining them, and
        /// 1.02–1.05× kept apart (geometric mean of `espalier kernel-bench`'s minima, 4 rounds).
        @inline(never)
        func block<T: TapLayout, R: StaticInt, W: StaticInt>(_ t: T, _: R.Type, _: W.Type, row: Int, wholeRows: Int) {
            let full = cols >> 3, rem = cols & 7
            let at = src + t.s * row * rowStride, orow = out + row * outStride
            let zero = SIMD8<Float>()
            if W.value == 1 && rem != 0 {
                var y = sums(t, R.self, at + 8 * full)
                if let keep {
                    let krow = keep + row * outStride + 8 * full
                    for r in 0..<R.value { y[r].replace(with: zero, where: loadPartial8(krow + r * outStride, rem) .<= zero) }
                }
                for r in 0..<R.value {
                    if row + r < wholeRows { store8(orow + r * outStride + 8 * full, y[r]) }
                    else { storePartial8(orow + r * outStride + 8 * full, y[r], rem) }
                }
            }
            for j in 0..<full {
                var y = sums(t, R.self, at + 8 * j)
                if let keep {
                    let krow = keep + row * outStride + 8 * j
                    for r in 0..<R.value { y[r].replace(with: zero, where: load8(krow + r * outStride) .<= zero) }
                }
                if let addend {
                    let arow = addend + row * outStride + 8 * j
                    for r in 0..<R.value { y[r] = load8(arow + r * outStride) + y[r] }
                }
                for r in 0..<R.value { store8(orow + r * outStride + 8 * j, y[r]) }
            }
            if W.value == 0 && rem != 0 {
                var y = sums(t, R.self, at + 8 * full)
                if let keep {
                    let krow = keep + row * outStride + 8 * full
                    for r in 0..<R.value { y[r].replace(with: zero, where: loadPartial8(krow + r * outStride, rem) .<= zero) }
                }
                if let addend {
                    let arow = addend + row * outStride + 8 * full
                    for r in 0..<R.value { y[r] = loadPartial8(arow + r * outStride, rem) + y[r] }
                }
                for r in 0..<R.value { storePartial8(orow + r * outStride + 8 * full, y[r], rem) }
            }
        }

        /// Σ taps for rows 0..<R of one vector column, one fused multiply-add per tap; each kernel
        /// row is summed on its own (independent chains), then added in.
        @inline(__always)
        func sums<T: TapLayout, R: StaticInt>(_ t: T, _: R.Type, _ at: UnsafePointer<Float>) -> RowSums {
            let (kh, kw, s, d) = (t.kh, t.kw, t.s, t.d)
            var total = RowSums()
            for ki in 0..<kh {
                var part = RowSums()
                for kj in 0..<kw {
                    let wt = wv[ki * kw + kj], x = at + (ki * d) * rowStride + tapColumn(kj * d, s: s, phaseSize: phaseSize)
                    for r in 0..<R.value {
                        if kj == 0 { part[r] = wt * load8(x + r * s * rowStride) } else { part[r].addProduct(wt, load8(x + r * s * rowStride)) }
                    }
                }
                for r in 0..<R.value { if ki == 0 { total[r] = part[r] } else { total[r] += part[r] } }
            }
            return total
        }
    }

    /// sums[ki·kw+kj] = Σ_r Σ_c a[r·aStride + c] · B[phase(kj·d)][(s·r + ki·d)·bStride + shift(kj·d) + c]
    /// over r < rows and c < aCols (a's lanes past aCols count as zero), added into acc (KH·KW, lanes),
    /// in reverse tap order when `reversed`. Two uses:
    ///   stride 2: a = dY (Ho, Wo), B = P (padded x by column phase)  → dW;
    ///   stride 1: a = x (H, W), B = Q (dY padded by d·(k−1) − p)     → dW with the taps reversed,
    ///             since Q[ih + ki·d, iw + kj·d] = dY[ih + p − (k−1−ki)·d, iw + p − (k−1−kj)·d].
    /// Fixed layouts sum in register groups of at most 10 taps (3×3: all nine; 5×5: kernel rows 0–1, 2–3, 4).
    struct WeightGradKernel: DepthwiseTapKernel {
        var a: UnsafePointer<Float>, aStride: Int, aCols: Int, rows: Int
        var b: UnsafePointer<Float>, bStride: Int, phaseSize: Int
        var reversed: Bool
        var acc: UnsafeMutablePointer<Float>                 // (KH·KW, lanes) running sums, any alignment
        /// a's rows can be read in ⌈aCols/8⌉ whole vectors with zeros past aCols (a inside P or Q,
        /// whose right borders are zero): the last vector of a row is loaded whole. The products
        /// of those zero lanes are zeros, as with a partial load, so the sums are the same bits.
        var aWhole = false

        func run<T: TapLayout>(_ t: T) {
            if T.isFixed && t.kh == 3 && t.kw == 3 {
                group(t, Int0.self, Int3.self)
            } else if T.isFixed && t.kh == 5 && t.kw == 5 {
                group(t, Int0.self, Int2.self); group(t, Int2.self, Int2.self); group(t, Int4.self, Int1.self)
            } else {
                // Any other layout: one tap at a time.
                let full = aCols >> 3, rem = aCols & 7
                for ki in 0..<t.kh {
                    for kj in 0..<t.kw {
                        var sum = SIMD8<Float>()
                        for r in 0..<rows {
                            let arow = a + r * aStride
                            let x = b + (t.s * r + ki * t.d) * bStride + tapColumn(kj * t.d, s: t.s, phaseSize: phaseSize)
                            for j in 0..<full { sum.addProduct(load8(arow + 8 * j), load8(x + 8 * j)) }
                            if rem != 0 { sum.addProduct(aWhole ? load8(arow + 8 * full) : loadPartial8(arow + 8 * full, rem), load8(x + 8 * full)) }
                        }
                        addInto(ki * t.kw + kj, taps: t.kh * t.kw, sum)
                    }
                }
            }
        }

        /// Kernel rows Lo..<Lo+Count (Count·kw ≤ 10), their sums held in registers through the plane:
        /// the full vector columns, then the partial last one in a pass of its own (one accumulation
        /// site per loop keeps the register allocator from spilling a sum).
        @inline(__always)
        func group<T: TapLayout, Lo: StaticInt, Count: StaticInt>(_ t: T, _: Lo.Type, _: Count.Type) {
            let (kw, s, d, kiLo, kiCount) = (t.kw, t.s, t.d, Lo.value, Count.value)
            let full = aCols >> 3, rem = aCols & 7, taps = t.kh * kw
            var sums = TapSums()
            for r in 0..<rows {
                let arow = a + r * aStride, base = b + (s * r + kiLo * d) * bStride
                for j in 0..<full { accumulate(&sums, load8(arow + 8 * j), base + 8 * j, kiCount: kiCount, kw: kw, s: s, d: d) }
            }
            for i in 0..<(kiCount * kw) { addInto(kiLo * kw + i, taps: taps, sums[i]) }
            if rem == 0 { return }
            var tail = TapSums()
            for r in 0..<rows {
                let arow = a + r * aStride, base = b + (s * r + kiLo * d) * bStride
                let g = aWhole ? load8(arow + 8 * full) : loadPartial8(arow + 8 * full, rem)
                accumulate(&tail, g, base + 8 * full, kiCount: kiCount, kw: kw, s: s, d: d)
            }
            for i in 0..<(kiCount * kw) { addInto(kiLo * kw + i, taps: taps, tail[i]) }
        }

        @inline(__always)
        func accumulate(_ sums: inout TapSums, _ g: SIMD8<Float>, _ x: UnsafePointer<Float>, kiCount: Int, kw: Int, s: Int, d: Int) {
            for i in 0..<kiCount {
                for kj in 0..<kw {
                    sums[i * kw + kj].addProduct(g, load8(x + i * d * bStride + tapColumn(kj * d, s: s, phaseSize: phaseSize)))
                }
            }
        }

        @inline(__always)
        func addInto(_ tap: Int, taps: Int, _ v: SIMD8<Float>) {
            let p = acc + DepthwisePlan.lanes * (reversed ? taps - 1 - tap : tap)
            store8(p, load8(p) + v)
        }
    }

    /// Four SIMD8 sums addressed by constant indices (after unrolling), so they live in registers.
    struct RowSums {
        var r0 = SIMD8<Float>(), r1 = SIMD8<Float>(), r2 = SIMD8<Float>(), r3 = SIMD8<Float>()
        @inline(__always) subscript(i: Int) -> SIMD8<Float> {
            get { switch i { case 0: r0; case 1: r1; case 2: r2; default: r3 } }
            set { switch i { case 0: r0 = newValue; case 1: r1 = newValue; case 2: r2 = newValue; default: r3 = newValue } }
        }
    }

    /// Ten SIMD8 sums addressed by constant indices (after unrolling), so they live in registers.
    struct TapSums {
        var t0 = SIMD8<Float>(), t1 = SIMD8<Float>(), t2 = SIMD8<Float>(), t3 = SIMD8<Float>(), t4 = SIMD8<Float>()
        var t5 = SIMD8<Float>(), t6 = SIMD8<Float>(), t7 = SIMD8<Float>(), t8 = SIMD8<Float>(), t9 = SIMD8<Float>()
        @inline(__always) subscript(i: Int) -> SIMD8<Float> {
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
}

// MARK: - Tap layouts: compile-time constants for the specialised kernels

/// An integer the compiler knows, so loops over it unroll in a generic specialisation.
protocol StaticInt { static var value: Int { get } }
enum Int0: StaticInt { static var value: Int { 0 } }
enum Int1: StaticInt { static var value: Int { 1 } }
enum Int2: StaticInt { static var value: Int { 2 } }
enum Int3: StaticInt { static var value: Int { 3 } }
enum Int4: StaticInt { static var value: Int { 4 } }
enum Int5: StaticInt { static var value: Int { 5 } }

/// Kernel size, stride and dilation of one depthwise kernel call.
protocol TapLayout {
    var kh: Int { get }
    var kw: Int { get }
    var s: Int { get }
    var d: Int { get }
    /// True when the values are compile-time constants (the kernels may then keep every tap in registers).
    static var isFixed: Bool { get }
}

/// A DARTS layout (KH×KW kernel, stride S, dilation D), fixed at compile time.
struct FixedTaps<KH: StaticInt, KW: StaticInt, S: StaticInt, D: StaticInt>: TapLayout {
    var kh: Int { KH.value }
    var kw: Int { KW.value }
    var s: Int { S.value }
    var d: Int { D.value }
    static var isFixed: Bool { true }
}

/// Any other layout, known only at run time (the tap loops stay rolled).
struct RuntimeTaps: TapLayout {
    var kh, kw, s, d: Int
    static var isFixed: Bool { false }
}

/// A kernel written once over its layout type; `dispatch` runs the copy specialised for the layout:
/// 3×3 and 5×5 at stride 1 and 2, dilation 1 and 2, and the sub-kernels of the stride-2 dX
/// (1×1 to 3×3 at dilation 1), or else the run-time copy.
protocol DepthwiseTapKernel {
    func run<T: TapLayout>(_ taps: T)
}

extension DepthwiseTapKernel {
    func dispatch(kh: Int, kw: Int, s: Int, d: Int) {
        switch (kh, kw, s, d) {
        case (3, 3, 1, 1): run(FixedTaps<Int3, Int3, Int1, Int1>())
        case (3, 3, 1, 2): run(FixedTaps<Int3, Int3, Int1, Int2>())
        case (3, 3, 2, 1): run(FixedTaps<Int3, Int3, Int2, Int1>())
        case (3, 3, 2, 2): run(FixedTaps<Int3, Int3, Int2, Int2>())
        case (5, 5, 1, 1): run(FixedTaps<Int5, Int5, Int1, Int1>())
        case (5, 5, 1, 2): run(FixedTaps<Int5, Int5, Int1, Int2>())
        case (5, 5, 2, 1): run(FixedTaps<Int5, Int5, Int2, Int1>())
        case (5, 5, 2, 2): run(FixedTaps<Int5, Int5, Int2, Int2>())
        // Sub-kernels of the stride-2 dX (see depthwiseSubPixelInputGrad).
        case (1, 1, 1, 1): run(FixedTaps<Int1, Int1, Int1, Int1>())
        case (1, 2, 1, 1): run(FixedTaps<Int1, Int2, Int1, Int1>())
        case (2, 1, 1, 1): run(FixedTaps<Int2, Int1, Int1, Int1>())
        case (2, 2, 1, 1): run(FixedTaps<Int2, Int2, Int1, Int1>())
        case (2, 3, 1, 1): run(FixedTaps<Int2, Int3, Int1, Int1>())
        case (3, 2, 1, 1): run(FixedTaps<Int3, Int2, Int1, Int1>())
        default: run(RuntimeTaps(kh: kh, kw: kw, s: s, d: d))
        }
    }
}

// MARK: - Vector helpers

@inline(__always) func load4(_ p: UnsafePointer<Float>) -> SIMD4<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD4<Float>.self)
}
@inline(__always) func store4(_ p: UnsafeMutablePointer<Float>, _ v: SIMD4<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD4<Float>.self)
}

/// Lanes 0..<n (1...7) of p, zeros above; reads nothing past p[n − 1].
@inline(__always)
func loadPartial8(_ p: UnsafePointer<Float>, _ n: Int) -> SIMD8<Float> {
    var v = SIMD8<Float>(), i = 0
    if n >= 4 { v.lowHalf = load4(p); i = 4 }
    while i < n { v[i] = p[i]; i += 1 }
    return v
}

/// Stores lanes 0..<n (1...7) of v at p; writes nothing past p[n − 1].
@inline(__always)
func storePartial8(_ p: UnsafeMutablePointer<Float>, _ v: SIMD8<Float>, _ n: Int) {
    var i = 0
    if n >= 4 { store4(p, v.lowHalf); i = 4 }
    while i < n { p[i] = v[i]; i += 1 }
}

/// dst[0..<n] = src[0..<n], inline: rows are short (7–28 floats), too short for a memcpy call.
@inline(__always)
func copyRow(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int) {
    var i = 0
    while i + 8 <= n { Kernels.store8(dst + i, Kernels.load8(src + i)); i += 8 }
    if i < n { storePartial8(dst + i, loadPartial8(src + i, n - i), n - i) }
}

/// How many leading rows of a contiguous (rows, cols) plane to read or write in ⌈cols/8⌉ whole
/// vectors: those whose vectors end inside the plane (row r's end at r·cols + ⌈cols/8⌉·8). None
/// when cols is a multiple of 8: every row is whole vectors already, and the kernels keep their
/// plain path.
@inline(__always)
func wholeVectorRows(rows: Int, cols: Int) -> Int {
    if cols % DepthwisePlan.lanes == 0 { return 0 }
    let span = DepthwisePlan.lanes * ((cols + DepthwisePlan.lanes - 1) / DepthwisePlan.lanes)
    return rows * cols < span ? 0 : min(rows, (rows * cols - span) / cols + 1)
}

/// dst[0..<n] = src[0..<n] and dst[n..<⌈n/8⌉·8] = 0, in whole vectors: src must be readable and
/// dst writable for ⌈n/8⌉·8 floats (the lanes read past n are dropped).
@inline(__always)
func copyRowWhole(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int) {
    var i = 0
    while i + 8 <= n { Kernels.store8(dst + i, Kernels.load8(src + i)); i += 8 }
    if i < n { Kernels.store8(dst + i, dropLanes(Kernels.load8(src + i), from: n - i)) }
}

/// `copyRowWhole` of max(src, 0), for a row of a ReLU-fused input.
@inline(__always)
func copyRowWholeReLU(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int) {
    var i = 0
    while i + 8 <= n { Kernels.store8(dst + i, relu8(Kernels.load8(src + i))); i += 8 }
    if i < n { Kernels.store8(dst + i, relu8(dropLanes(Kernels.load8(src + i), from: n - i))) }
}

/// relu per lane: lanes below zero become zero (NaN and −0 stay as they are).
@inline(__always)
func relu8(_ v: SIMD8<Float>) -> SIMD8<Float> { v.replacing(with: SIMD8<Float>(), where: v .< SIMD8<Float>()) }

/// v with lanes n..<8 zeroed.
@inline(__always)
func dropLanes(_ v: SIMD8<Float>, from n: Int) -> SIMD8<Float> {
    v.replacing(with: SIMD8<Float>(), where: SIMD8<Int32>(0, 1, 2, 3, 4, 5, 6, 7) .>= SIMD8<Int32>(repeating: Int32(n)))
}

/// dst[0..<n] = max(src[0..<n], 0) for one row of a ReLU-fused input.
@inline(__always)
func copyRowReLU(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int) {
    var i = 0
    while i + 8 <= n { Kernels.store8(dst + i, relu8(Kernels.load8(src + i))); i += 8 }
    if i < n { storePartial8(dst + i, relu8(loadPartial8(src + i, n - i)), n - i) }
}

/// Offset in P of tap column `col` (= kj·d): the column itself at stride 1; at stride 2 its
/// parity's phase plane and the column within it.
@inline(__always)
func tapColumn(_ col: Int, s: Int, phaseSize: Int) -> Int {
    s == 1 ? col : (col & 1) * phaseSize + (col >> 1)
}
