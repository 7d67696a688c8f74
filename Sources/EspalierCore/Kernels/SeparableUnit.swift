// The cell's ReLU → depthwise → pointwise → batch norm unit (Ops+Fused.swift) one sample at a
// time, so that what passes between its kernels stays in the cache:
//   forward   per sample, the depthwise planes t[s] (Depthwise.swift's depthwiseForwardPlane; where t
//             goes to a tile only and C is a multiple of 8, its channels-in-lanes form,
//             depthwise8.c: the same bits), then
//             at once y[s] = wp·t[s] with its per-channel Σy and Σy² from the product's registers
//             (Pointwise.swift): the product reads t[s] from L2, not memory. t goes to a tile per
//             core; it is written whole only where a caller asks for it (the op never does now).
//   backward  per sample, dZ[s] = the BN input gradient, in a tile (PointwiseBatchNorm.swift);
//             t[s] computed again from x[s] into the second tile (where t was not kept) and
//             dWp += dZ[s]·t[s]ᵀ; dT[s] = wpᵀ·dZ[s] into that tile; then each channel's
//             depthwise backward from that tile (depthwiseBackwardPlane): dX[s], and the
//             channel's dWd sums. dT, the depthwise output's gradient, is never stored whole.
// Their references: the forward is the same bits as the kernels one after another over the whole
// batch (depthwiseForward, then pointwiseForwardWithStatistics), which a test checks bit for bit;
// the backward matches the ops one by one (conv2d, conv2d, batchNorm) within rounding, which the
// tests check with the gradient subsets and the dX addend, and finite differences. Off the
// depthwise fast path, Ops+Fused.swift runs the two-step path instead (pointwiseBatchNormBackward
// writes dT whole, conv2dBackward reads it back).
// Samples are split across cores (Parallel.chunkCount). The forward's statistics are the
// chunks' sums added in chunk order, as pointwiseForwardWithStatistics adds them, so the forward
// is the same bits as its reference. In the backward each chunk keeps its own dWd sums
// (C, KH·KW, lanes) and dWp partial, added in chunk order at the end, so results depend on the
// chunk count (as the pointwise weight gradient's already did), never on timing.
// Shapes: x, dX (N, C, H, W) · wd, dWd (C, 1, KH, KW) · t (N, C, Ho, Wo) · wp, dWp (Cout, C) ·
// y (= x̂ after normalising), dY (N, Cout, Ho, Wo).

import Foundation

extension Kernels {
    /// Floats of scratch `separableUnitForward` needs: per chunk of samples, a P for the depthwise
    /// planes, and a t tile (C, Ho·Wo) where t is not kept.
    public static func separableUnitForwardFloats(_ gd: ConvGeometry, keepingT: Bool) -> Int {
        guard let plan = DepthwisePlan(gd) else { return 0 }
        return Parallel.chunkCount(gd.n) * (forwardDepthwiseFloats(plan, channels: gd.cIn, keepingT: keepingT)
                                            + (keepingT ? 0 : gd.cIn * gd.hOut * gd.wOut))
    }

    /// A chunk's depthwise scratch in the forward: P8 and T8 in lanes, else P.
    static func forwardDepthwiseFloats(_ plan: DepthwisePlan, channels c: Int, keepingT: Bool) -> Int {
        forwardRunsInLanes(plan, channels: c, keepingT: keepingT) ? plan.lanesForwardFloats : plan.pFloats
    }

    /// Whether the unit's forward runs its depthwise part with the channels in the vector lanes
    /// (depthwise8.c): where the geometry allows and t goes only to a tile (every forward of the
    /// op: no caller keeps t since the backward computes it again).
    /// Measured (B 64, inputs from memory, 24 rotating sets; µs lanes/planes): with t in a tile
    /// 0.69–1.05 (3×3 28² 431/487, 5×5 28² 550/796, 3×3 14² C32 349/346, 5×5 7² C64 363/368); with
    /// t written whole 0.83–1.34 (3×3 28² 538/472, 3×3 14² C32 527/406, 5×5 28² 696/835), so not there.
    static func forwardRunsInLanes(_ plan: DepthwisePlan, channels c: Int, keepingT: Bool) -> Bool {
        !keepingT && plan.runsChannelsInLanes(channels: c)
    }

    /// t = depthwise(relu?(x), wd) (into `t` if given, else only through a tile per core), y = wp·t,
    /// and per output channel c: sums[c] = Σ y[·, c, ·], sums[cOut + c] = Σ y² (`sums` holds
    /// `pointwiseStatisticsDoubles(cOut:chunks:)` for chunks = Parallel.chunkCount(n)). The same
    /// bits as depthwiseForward then pointwiseForwardWithStatistics. gd must be on the depthwise
    /// fast path; `workspace` holds `separableUnitForwardFloats(gd, keepingT: t != nil)`.
    public static func separableUnitForward(_ gd: ConvGeometry, cOut: Int, x: UnsafePointer<Float>, wd: UnsafePointer<Float>,
                                            wp: UnsafePointer<Float>, t: UnsafeMutablePointer<Float>?, y: UnsafeMutablePointer<Float>,
                                            sums: UnsafeMutablePointer<Double>, reluInput: Bool, workspace: UnsafeMutablePointer<Float>) {
        guard let plan = DepthwisePlan(gd) else { preconditionFailure("the fused separable forward needs the depthwise fast path: \(gd)") }
        let n = gd.n, c = gd.cIn, hw = gd.h * gd.w, howo = gd.hOut * gd.wOut
        // With t kept, plane by plane: t[s] goes out to memory either way, and the lanes form's
        // 8 interleaved plane stores made the unit slower there (measured, see
        // `forwardRunsInLanes`); with t in a tile only, in lanes where the geometry allows.
        let inLanes = Self.forwardRunsInLanes(plan, channels: c, keepingT: t != nil)
        let chunks = Parallel.chunkCount(n), dwFloats = Self.forwardDepthwiseFloats(plan, channels: c, keepingT: t != nil)
        let perChunk = dwFloats + (t == nil ? c * howo : 0)
        sums.update(repeating: 0, count: chunks * 2 * cOut)
        Parallel.forChunksIndexed(n, chunks: chunks) { k, r in
            let pb = workspace + k * perChunk, tile = pb + dwFloats
            let sum = sums + k * 2 * cOut, sumSq = sum + cOut
            pb.update(repeating: 0, count: dwFloats)                     // P's or P8's border, once a chunk
            withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: DepthwisePlan.maxTaps) { wvBuf in
                let wv = wvBuf.baseAddress!                              // (KH·KW) broadcast weights
                for s in r {
                    let ts = t.map { $0 + s * c * howo } ?? tile         // t[s] (C, Ho·Wo)
                    if inLanes {
                        plan.forwardSampleInLanes(channels: c, x: x + s * c * hw, weights: wd, t: ts, reluInput: reluInput, scratch: pb)
                    } else {
                        depthwiseForwardSamplePlanes(plan, channels: c, x: x + s * c * hw, w: wd, t: ts, reluInput: reluInput, p: pb, wv: wv)
                    }
                    pointwiseSample(cIn: c, cOut: cOut, hw: howo, w: wp, x: ts, y: y + s * cOut * howo, sum: sum, sumSq: sumSq)
                }
            }
        }
        for k in 1..<max(chunks, 1) { for i in 0..<(2 * cOut) { sums[i] += sums[k * 2 * cOut + i] } }
    }

    /// Floats of scratch `separableUnitBackward` needs (`SeparableUnitBackwardLayout`).
    /// `keptT` false: t is recomputed a sample at a time (see `separableUnitBackward`).
    public static func separableUnitBackwardFloats(_ gd: ConvGeometry, cOut: Int, needInputGrad: Bool, needDepthwiseGrad: Bool,
                                                   needPointwiseGrad: Bool, reluInput: Bool, keptT: Bool) -> Int {
        guard let plan = DepthwisePlan(gd) else { return 0 }
        return SeparableUnitBackwardLayout(plan, gd, cOut: cOut, needInputGrad: needInputGrad, needDepthwiseGrad: needDepthwiseGrad,
                                           needPointwiseGrad: needPointwiseGrad, reluInput: reluInput, keptT: keptT).floats
    }

    /// With x̂ = y (the unit's normalised output) and the BN means of its backward (meanDy,
    /// meanDyXhat: Σ dY / m and Σ dY·x̂ / m per output channel): dX (overwritten, or dXAddend + the
    /// gradient, dXAddend laid out as dX and possibly dX itself), dWd += and dWp += their gradients,
    /// each where non-nil. x is the pre-ReLU input when `reluInput`. `dYScale`: the output
    /// gradient is dYScale·dY, multiplied as it is read. gd must be on the depthwise fast path
    /// (`ConvGeometry.addsIntoInputGradient`). t: the forward's depthwise output, or nil: then
    /// where dWp needs it, each sample's t[s] is computed again from x (the plane-by-plane forward
    /// kernel: the same bits) into the dT tile before dT takes it, through the P the depthwise
    /// weight gradient loads x into anyway, while x[s] is in the cache for the depthwise backward —
    /// an (N, C, Ho, Wo) tensor neither written by the forward nor read back here.
    public static func separableUnitBackward(_ gd: ConvGeometry, cOut: Int, x: UnsafePointer<Float>, wd: UnsafePointer<Float>,
                                             t: UnsafePointer<Float>?, wp: UnsafePointer<Float>, xhat: UnsafePointer<Float>,
                                             dY: UnsafePointer<Float>, dYScale: Float = 1, invStd: UnsafePointer<Float>,
                                             meanDy: UnsafePointer<Float>, meanDyXhat: UnsafePointer<Float>,
                                             dX: UnsafeMutablePointer<Float>?, dXAddend: UnsafePointer<Float>? = nil,
                                             dWd: UnsafeMutablePointer<Float>?, dWp: UnsafeMutablePointer<Float>?, reluInput: Bool,
                                             workspace: UnsafeMutablePointer<Float>) {
        guard let plan = DepthwisePlan(gd) else { preconditionFailure("the fused separable backward needs the depthwise fast path: \(gd)") }
        precondition(dXAddend == nil || dX != nil, "a dX addend without dX")
        let n = gd.n, c = gd.cIn, hw = gd.h * gd.w, howo = gd.hOut * gd.wOut, taps = gd.kh * gd.kw, lanes = DepthwisePlan.lanes
        let layout = SeparableUnitBackwardLayout(plan, gd, cOut: cOut, needInputGrad: dX != nil, needDepthwiseGrad: dWd != nil,
                                                 needPointwiseGrad: dWp != nil, reluInput: reluInput, keptT: t != nil)
        let chunks = layout.chunks, wCount = cOut * c
        let wt = layout.transposedWeight(workspace), partials = layout.pointwisePartials(workspace)
        let needDepthwise = dX != nil || dWd != nil
        if needDepthwise { packTransposed(wp, rows: cOut, cols: c, into: wt) }
        if dWp != nil, chunks > 1 { partials.update(repeating: 0, count: (chunks - 1) * wCount) }
        Parallel.forChunksIndexed(n, chunks: chunks) { k, r in
            let zTile = layout.gradientTile(workspace, k)                // dZ[s] (Cout, Ho·Wo)
            let tTile = layout.depthwiseGradientTile(workspace, k)       // dT[s] (C, Ho·Wo)
            let scratch = layout.depthwiseScratch(workspace, k)          // one plane's depthwise scratch
            let sums = layout.depthwiseSums(workspace, k)                // this chunk's dWd sums (C, KH·KW, lanes)
            let dWpk: UnsafeMutablePointer<Float>? = dWp == nil ? nil : (k == 0 ? dWp! : partials + (k - 1) * wCount)
            let (qb, pb, ub) = plan.backwardScratch(scratch, needWeightGrad: dWd != nil, reluInput: reluInput)
            let pAgain = layout.recomputeP(workspace, k) ?? pb            // P for t[s] again: the dW's, or one of its own
            scratch.update(repeating: 0, count: layout.dwFloats + layout.sumFloats + layout.recomputeFloats)
            withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: DepthwisePlan.maxTaps) { wvBuf in
                let wv = wvBuf.baseAddress!                              // (KH·KW) broadcast weights
                for s in r {
                    batchNormInputGradTile(cOut: cOut, hw: howo, xhat: xhat + s * cOut * howo, dY: dY + s * cOut * howo, dYScale: dYScale,
                                           invStd: invStd, meanDy: meanDy, meanDyXhat: meanDyXhat, tile: zTile)
                    if let dWpk {
                        let ts: UnsafePointer<Float>
                        if let t { ts = t + s * c * howo } else {        // t[s] into the dT tile, which dT takes after this
                            depthwiseForwardSamplePlanes(plan, channels: c, x: x + s * c * hw, w: wd, t: tTile, reluInput: reluInput, p: pAgain, wv: wv)
                            ts = UnsafePointer(tTile)
                        }
                        pointwiseSampleWeightGrad(cIn: c, cOut: cOut, hw: howo, dy: zTile, x: ts, dw: dWpk)
                    }
                    if !needDepthwise { continue }
                    pointwiseSampleInputGrad(cIn: c, cOut: cOut, hw: howo, wt: wt, dy: zTile, dx: tTile)
                    for ch in 0..<c {
                        let plane = s * c + ch
                        depthwiseBackwardPlane(plan, x: x + plane * hw, w: wd + ch * taps, dY: tTile + ch * howo,
                                               dX: dX.map { $0 + plane * hw }, dXAddend: dXAddend.map { $0 + plane * hw },
                                               dWSums: dWd == nil ? nil : sums + ch * taps * lanes, reluInput: reluInput,
                                               q: qb, p: pb, u: ub, wv: wv)
                    }
                }
            }
        }
        if let dWp, chunks > 1 {
            for k in 1..<chunks { addInPlace(dWp, partials + (k - 1) * wCount, count: wCount) }
        }
        if let dWd {
            // Per tap, the chunks' lane sums in chunk order, then across the lanes.
            for i in 0..<(c * taps) {
                var v = SIMD8<Float>()
                for k in 0..<chunks { v += load8(layout.depthwiseSums(workspace, k) + i * lanes) }
                dWd[i] += v.sum()
            }
        }
    }
}

/// Where `separableUnitBackward`'s scratch lies: per chunk of samples, the BN-gradient tile
/// (Cout, Ho·Wo), the dT tile (C, Ho·Wo), one plane's depthwise scratch (Q, P, U: `DepthwisePlan`),
/// (with dWd) the chunk's dWd sums (C, KH·KW, lanes), and (with dWp, t not kept, and no P among
/// the depthwise scratch) a P to compute t[s] again; after the chunks, wpᵀ
/// (C, Cout), then (with dWp) the pointwise partials of every chunk but the first.
struct SeparableUnitBackwardLayout {
    let chunks, cOut, c, howo, dwFloats, sumFloats, recomputeFloats: Int
    let needPointwiseGrad: Bool

    init(_ plan: DepthwisePlan, _ gd: ConvGeometry, cOut: Int, needInputGrad: Bool, needDepthwiseGrad: Bool, needPointwiseGrad: Bool,
         reluInput: Bool, keptT: Bool) {
        chunks = Parallel.chunkCount(gd.n); self.cOut = cOut; c = gd.cIn; howo = gd.hOut * gd.wOut
        dwFloats = plan.backwardChunkFloats(needInputGrad: needInputGrad, needWeightGrad: needDepthwiseGrad, reluInput: reluInput)
        sumFloats = needDepthwiseGrad ? c * gd.kh * gd.kw * DepthwisePlan.lanes : 0
        let ownP = needPointwiseGrad && !keptT && !plan.backwardNeedsP(needWeightGrad: needDepthwiseGrad, reluInput: reluInput)
        recomputeFloats = ownP ? plan.pFloats : 0
        self.needPointwiseGrad = needPointwiseGrad
    }

    var perChunk: Int { cOut * howo + c * howo + dwFloats + sumFloats + recomputeFloats }
    var floats: Int { chunks * perChunk + c * cOut + (needPointwiseGrad ? (chunks - 1) * cOut * c : 0) }
    func gradientTile(_ ws: UnsafeMutablePointer<Float>, _ k: Int) -> UnsafeMutablePointer<Float> { ws + k * perChunk }
    func depthwiseGradientTile(_ ws: UnsafeMutablePointer<Float>, _ k: Int) -> UnsafeMutablePointer<Float> { gradientTile(ws, k) + cOut * howo }
    func depthwiseScratch(_ ws: UnsafeMutablePointer<Float>, _ k: Int) -> UnsafeMutablePointer<Float> { depthwiseGradientTile(ws, k) + c * howo }
    func depthwiseSums(_ ws: UnsafeMutablePointer<Float>, _ k: Int) -> UnsafeMutablePointer<Float> { depthwiseScratch(ws, k) + dwFloats }
    /// The P of its own for t[s] again, where the depthwise scratch has none (else nil: that one).
    func recomputeP(_ ws: UnsafeMutablePointer<Float>, _ k: Int) -> UnsafeMutablePointer<Float>? {
        recomputeFloats > 0 ? depthwiseSums(ws, k) + sumFloats : nil
    }
    func transposedWeight(_ ws: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> { ws + chunks * perChunk }
    func pointwisePartials(_ ws: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> { transposedWeight(ws) + c * cOut }
}
