// The backward of the cell's ReLU → depthwise → pointwise → batch norm unit (Ops+Fused.swift) in
// one sweep per sample, so the depthwise output's gradient dT never leaves the cache:
//   for sample s:  dZ[s] = the BN input gradient, in a tile (PointwiseBatchNorm.swift);
//                  dT[s] = wpᵀ·dZ[s] into a second tile; dWp += dZ[s]·t[s]ᵀ;
//                  then each channel's depthwise backward from that tile (Depthwise.swift's
//                  depthwiseBackwardPlane): dX[s], and the channel's dWd sums.
// The two-step path (pointwiseBatchNormBackward writes dT whole, depthwiseBackward reads it back)
// writes, reads and allocates one tensor of the unit's size more; it is this kernel's naive
// reference, which the tests compare it against.
// Samples are split across cores. Each chunk keeps its own dWd sums (C, KH·KW, lanes) and dWp
// partial, added in chunk order at the end, so results depend on the chunk count (as the pointwise
// weight gradient's already do), never on timing.
// Shapes: x, dX (N, C, H, W) · wd, dWd (C, 1, KH, KW) · t (N, C, Ho, Wo) · wp, dWp (Cout, C) ·
// y = x̂, dY (N, Cout, Ho, Wo).

import Foundation

extension Kernels {
    /// Floats of scratch `separableUnitBackward` needs: per chunk of samples, the BN-gradient tile
    /// (Cout, Ho·Wo), the dT tile (C, Ho·Wo), the depthwise scratch of one plane, and (with dWd)
    /// the dWd sums (C, KH·KW, lanes); then wpᵀ, and (with dWp) the pointwise partials of every
    /// chunk but the first.
    public static func separableUnitBackwardFloats(_ gd: ConvGeometry, cOut: Int, needInputGrad: Bool, needDepthwiseGrad: Bool,
                                                   needPointwiseGrad: Bool, reluInput: Bool) -> Int {
        guard let plan = DepthwisePlan(gd) else { return 0 }
        let chunks = Parallel.chunkCount(gd.n), c = gd.cIn, howo = gd.hOut * gd.wOut
        let perChunk = cOut * howo + c * howo
            + plan.backwardChunkFloats(needInputGrad: needInputGrad, needWeightGrad: needDepthwiseGrad, reluInput: reluInput)
            + (needDepthwiseGrad ? c * gd.kh * gd.kw * DepthwisePlan.lanes : 0)
        return chunks * perChunk + c * cOut + (needPointwiseGrad ? (chunks - 1) * cOut * c : 0)
    }

    /// With x̂ = y (the unit's normalised output) and the BN means of its backward (meanDy,
    /// meanDyXhat: Σ dY / m and Σ dY·x̂ / m per output channel): dX (overwritten, or dXAddend + the
    /// gradient, dXAddend laid out as dX and possibly dX itself), dWd += and dWp += their gradients,
    /// each where non-nil. x is the pre-ReLU input when `reluInput`. `dYScale`: the output
    /// gradient is dYScale·dY, multiplied as it is read. gd must be on the depthwise fast path
    /// (`ConvGeometry.addsIntoInputGradient`).
    public static func separableUnitBackward(_ gd: ConvGeometry, cOut: Int, x: UnsafePointer<Float>, wd: UnsafePointer<Float>,
                                             t: UnsafePointer<Float>, wp: UnsafePointer<Float>, xhat: UnsafePointer<Float>,
                                             dY: UnsafePointer<Float>, dYScale: Float = 1, invStd: UnsafePointer<Float>,
                                             meanDy: UnsafePointer<Float>, meanDyXhat: UnsafePointer<Float>,
                                             dX: UnsafeMutablePointer<Float>?, dXAddend: UnsafePointer<Float>? = nil,
                                             dWd: UnsafeMutablePointer<Float>?, dWp: UnsafeMutablePointer<Float>?, reluInput: Bool,
                                             workspace: UnsafeMutablePointer<Float>) {
        guard let plan = DepthwisePlan(gd) else { preconditionFailure("the fused separable backward needs the depthwise fast path: \(gd)") }
        precondition(dXAddend == nil || dX != nil, "a dX addend without dX")
        let n = gd.n, c = gd.cIn, hw = gd.h * gd.w, howo = gd.hOut * gd.wOut, taps = gd.kh * gd.kw, lanes = DepthwisePlan.lanes
        let chunks = Parallel.chunkCount(n), wCount = cOut * c
        let dwFloats = plan.backwardChunkFloats(needInputGrad: dX != nil, needWeightGrad: dWd != nil, reluInput: reluInput)
        let sumFloats = dWd != nil ? c * taps * lanes : 0
        let perChunk = cOut * howo + c * howo + dwFloats + sumFloats
        let wt = workspace + chunks * perChunk, partials = wt + wCount
        let needDepthwise = dX != nil || dWd != nil
        if needDepthwise { packTransposed(wp, rows: cOut, cols: c, into: wt) }
        if dWp != nil, chunks > 1 { partials.update(repeating: 0, count: (chunks - 1) * wCount) }
        Parallel.forChunksIndexed(n, chunks: chunks) { k, r in
            let zTile = workspace + k * perChunk                         // dZ[s] (Cout, Ho·Wo)
            let tTile = zTile + cOut * howo                              // dT[s] (C, Ho·Wo)
            let scratch = tTile + c * howo                               // one plane's depthwise scratch
            let sums = scratch + dwFloats                                // this chunk's dWd sums (C, KH·KW, lanes)
            let dWpk: UnsafeMutablePointer<Float>? = dWp == nil ? nil : (k == 0 ? dWp! : partials + (k - 1) * wCount)
            let (qb, pb, rb) = plan.backwardScratch(scratch, needWeightGrad: dWd != nil, reluInput: reluInput)
            scratch.update(repeating: 0, count: dwFloats + sumFloats)
            withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: DepthwisePlan.maxTaps) { wvBuf in
                let wv = wvBuf.baseAddress!                              // (KH·KW) broadcast weights
                for s in r {
                    batchNormInputGradTile(cOut: cOut, hw: howo, xhat: xhat + s * cOut * howo, dY: dY + s * cOut * howo, dYScale: dYScale,
                                           invStd: invStd, meanDy: meanDy, meanDyXhat: meanDyXhat, tile: zTile)
                    if let dWpk { pointwiseSampleWeightGrad(cIn: c, cOut: cOut, hw: howo, dy: zTile, x: t + s * c * howo, dw: dWpk) }
                    if !needDepthwise { continue }
                    pointwiseSampleInputGrad(cIn: c, cOut: cOut, hw: howo, wt: wt, dy: zTile, dx: tTile)
                    for ch in 0..<c {
                        let plane = s * c + ch
                        depthwiseBackwardPlane(plan, x: x + plane * hw, w: wd + ch * taps, dY: tTile + ch * howo,
                                               dX: dX.map { $0 + plane * hw }, dXAddend: dXAddend.map { $0 + plane * hw },
                                               dWSums: dWd == nil ? nil : sums + ch * taps * lanes, reluInput: reluInput,
                                               q: qb, p: pb, r: rb, wv: wv)
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
                for k in 0..<chunks { v += load8(workspace + k * perChunk + cOut * howo + c * howo + dwFloats + i * lanes) }
                dWd[i] += v.sum()
            }
        }
    }
}
