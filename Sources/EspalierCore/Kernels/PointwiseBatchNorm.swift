// A 1×1 convolution fused with the batch norm after it (no affine map, batch statistics), the
// second half of the cell's ReLU → depthwise → pointwise → BN (Ops+Fused.swift runs the whole):
//   forward   y[s] = w · t[s] per sample, its per-channel Σy and Σy² taken from the registers the
//             product is in (Pointwise.swift), so the statistics cost no pass over y of their own;
//             the caller then normalises y in place (one pass).
//   backward  per sample, the BN input gradient dZ[s] = invStd·(dY − mean dY − x̂·mean(dY·x̂)) is
//             made in a tile of one sample (C × HW, in L2) and consumed at once by the two GEMMs
//             dT[s] = wᵀ·dZ[s] and dW += dZ[s]·t[s]ᵀ: dZ is never stored whole.
// Shapes: t (N, Cin, HW) · w (Cout, Cin) · y, dY (N, Cout, HW) · dT (N, Cin, HW).
// Their naive reference is the unfused path (pointwiseForward, batchNormStatistics,
// batchNormBackward, pointwiseBackward), which the tests compare them against.

import Foundation

extension Kernels {
    /// Doubles of scratch `pointwiseForwardWithStatistics` needs: per chunk, Σ and Σ².
    public static func pointwiseStatisticsDoubles(cOut: Int, chunks: Int) -> Int { chunks * 2 * cOut }

    /// y[s] = w · t[s] for every sample, and per output channel c: sums[c] = Σ y[·, c, ·] and
    /// sums[cOut + c] = Σ y² (the first 2·cOut of `sums`, which holds
    /// `pointwiseStatisticsDoubles(cOut:chunks:)` for chunks = Parallel.chunkCount(n); the rest is scratch).
    public static func pointwiseForwardWithStatistics(n: Int, cIn: Int, cOut: Int, hw: Int, t: UnsafePointer<Float>,
                                                      w: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                                                      sums: UnsafeMutablePointer<Double>) {
        let chunks = Parallel.chunkCount(n)
        sums.update(repeating: 0, count: chunks * 2 * cOut)
        Parallel.forChunksIndexed(n, chunks: chunks) { k, r in
            let sum = sums + k * 2 * cOut, sumSq = sum + cOut
            for s in r { pointwiseSample(cIn: cIn, cOut: cOut, hw: hw, w: w, x: t + s * cIn * hw, y: y + s * cOut * hw, sum: sum, sumSq: sumSq) }
        }
        for k in 1..<max(chunks, 1) { for i in 0..<(2 * cOut) { sums[i] += sums[k * 2 * cOut + i] } }
    }

    /// Floats of scratch `pointwiseBatchNormBackward` needs: a tile per chunk, wᵀ, and the
    /// weight-gradient partials of every chunk but the first.
    public static func pointwiseBatchNormBackwardFloats(cIn: Int, cOut: Int, hw: Int, chunks: Int, needWeightGrad: Bool) -> Int {
        chunks * cOut * hw + cIn * cOut + (needWeightGrad ? (chunks - 1) * cOut * cIn : 0)
    }

    /// With x̂ = y (the normalised output), per channel c: dZ = invStd[c]·(dY − meanDy[c] − x̂·meanDyXhat[c]);
    /// dT = wᵀ·dZ (overwritten, if non-nil) and dW += dZ·tᵀ (if non-nil), per sample, dZ in a tile.
    /// `dYScale`: the output gradient is dYScale·dY, multiplied as it is read.
    public static func pointwiseBatchNormBackward(n: Int, cIn: Int, cOut: Int, hw: Int, t: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                                  xhat: UnsafePointer<Float>, dY: UnsafePointer<Float>, dYScale: Float = 1, invStd: UnsafePointer<Float>,
                                                  meanDy: UnsafePointer<Float>, meanDyXhat: UnsafePointer<Float>,
                                                  dT: UnsafeMutablePointer<Float>?, dW: UnsafeMutablePointer<Float>?,
                                                  workspace: UnsafeMutablePointer<Float>) {
        let chunks = Parallel.chunkCount(n), wCount = cOut * cIn
        let tiles = workspace, wt = workspace + chunks * cOut * hw, partials = wt + wCount
        if dT != nil { packTransposed(w, rows: cOut, cols: cIn, into: wt) }
        if dW != nil, chunks > 1 { partials.update(repeating: 0, count: (chunks - 1) * wCount) }
        Parallel.forChunksIndexed(n, chunks: chunks) { k, r in
            let tile = tiles + k * cOut * hw
            let dWk: UnsafeMutablePointer<Float>? = dW == nil ? nil : (k == 0 ? dW! : partials + (k - 1) * wCount)
            for s in r {
                batchNormInputGradTile(cOut: cOut, hw: hw, xhat: xhat + s * cOut * hw, dY: dY + s * cOut * hw, dYScale: dYScale, invStd: invStd,
                                       meanDy: meanDy, meanDyXhat: meanDyXhat, tile: tile)
                if let dT { pointwiseSampleInputGrad(cIn: cIn, cOut: cOut, hw: hw, wt: wt, dy: tile, dx: dT + s * cIn * hw) }
                if let dWk { pointwiseSampleWeightGrad(cIn: cIn, cOut: cOut, hw: hw, dy: tile, x: t + s * cIn * hw, dw: dWk) }
            }
        }
        if let dW, chunks > 1 {
            for k in 1..<chunks { addInPlace(dW, partials + (k - 1) * wCount, count: wCount) }
        }
    }

    /// One sample's BN input gradient into tile (cOut, hw): per channel c,
    /// dZ[c] = invStd[c]·(dYScale·dY[c] − meanDy[c] − x̂[c]·meanDyXhat[c]). xhat, dY: the sample's (cOut, hw).
    @inline(__always)
    static func batchNormInputGradTile(cOut: Int, hw: Int, xhat: UnsafePointer<Float>, dY: UnsafePointer<Float>, dYScale: Float,
                                       invStd: UnsafePointer<Float>, meanDy: UnsafePointer<Float>, meanDyXhat: UnsafePointer<Float>,
                                       tile: UnsafeMutablePointer<Float>) {
        for c in 0..<cOut {
            let a = invStd[c], md = meanDy[c], kx = meanDyXhat[c]
            let av = SIMD8<Float>(repeating: a), mdv = SIMD8<Float>(repeating: md), kv = SIMD8<Float>(repeating: kx)
            let sv = SIMD8<Float>(repeating: dYScale)
            let dyr = dY + c * hw, xr = xhat + c * hw, zr = tile + c * hw
            var i = 0
            while i + 8 <= hw { store8(zr + i, av * (sv * load8(dyr + i) - mdv - load8(xr + i) * kv)); i += 8 }
            while i < hw { zr[i] = a * (dYScale * dyr[i] - md - xr[i] * kx); i += 1 }
        }
    }
}
