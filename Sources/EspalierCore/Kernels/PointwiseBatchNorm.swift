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
    /// Floats of scratch `pointwiseForwardWithStatistics` needs: per chunk, Σ and Σ² in Double.
    public static func pointwiseStatisticsFloats(cOut: Int, chunks: Int) -> Int { chunks * 2 * cOut * 2 }

    /// y[s] = w · t[s] for every sample; sums[c] = Σ y[·, c, ·], sums[cOut + c] = Σ y² (Double).
    /// `scratch` holds `pointwiseStatisticsFloats(cOut:chunks:)` floats, chunks = Parallel.chunkCount(n).
    public static func pointwiseForwardWithStatistics(n: Int, cIn: Int, cOut: Int, hw: Int, t: UnsafePointer<Float>,
                                                      w: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                                                      sums: UnsafeMutablePointer<Double>, scratch: UnsafeMutablePointer<Float>) {
        let chunks = Parallel.chunkCount(n)
        let partial = UnsafeMutableRawPointer(scratch).bindMemory(to: Double.self, capacity: chunks * 2 * cOut)
        partial.update(repeating: 0, count: chunks * 2 * cOut)
        let own = pointwiseUsesOwnKernel(cIn: cIn, cOut: cOut)
        Parallel.forChunksIndexed(n, chunks: chunks) { k, r in
            let sum = partial + k * 2 * cOut, sumSq = sum + cOut
            for s in r {
                let ts = t + s * cIn * hw, ys = y + s * cOut * hw
                if own {
                    smallGemm(m: cOut, k: cIn, p: hw, a: w, b: ts, ldb: hw, c: ys, ldc: hw, sum: sum, sumSq: sumSq)
                } else {
                    sgemm(transA: false, transB: false, m: cOut, n: hw, k: cIn, alpha: 1, a: w, lda: cIn, b: ts, ldb: hw, beta: 0, c: ys, ldc: hw)
                    for c in 0..<cOut {   // the sample's output is still in cache
                        let (a, b) = rowShiftedSums(ys + c * hw, count: hw, shift: 0)
                        sum[c] += a; sumSq[c] += b
                    }
                }
            }
        }
        for i in 0..<(2 * cOut) {
            var v: Double = 0
            for k in 0..<chunks { v += partial[k * 2 * cOut + i] }
            sums[i] = v
        }
    }

    /// Floats of scratch `pointwiseBatchNormBackward` needs: a tile per chunk, wᵀ, and the
    /// weight-gradient partials of every chunk but the first.
    public static func pointwiseBatchNormBackwardFloats(cIn: Int, cOut: Int, hw: Int, chunks: Int, needWeightGrad: Bool) -> Int {
        chunks * cOut * hw + cIn * cOut + (needWeightGrad ? (chunks - 1) * cOut * cIn : 0)
    }

    /// With x̂ = y (the normalised output), per channel c: dZ = invStd[c]·(dY − meanDy[c] − x̂·meanDyXhat[c]);
    /// dT = wᵀ·dZ (overwritten, if non-nil) and dW += dZ·tᵀ (if non-nil), per sample, dZ in a tile.
    public static func pointwiseBatchNormBackward(n: Int, cIn: Int, cOut: Int, hw: Int, t: UnsafePointer<Float>, w: UnsafePointer<Float>,
                                                  xhat: UnsafePointer<Float>, dY: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                                  meanDy: UnsafePointer<Float>, meanDyXhat: UnsafePointer<Float>,
                                                  dT: UnsafeMutablePointer<Float>?, dW: UnsafeMutablePointer<Float>?,
                                                  workspace: UnsafeMutablePointer<Float>) {
        let chunks = Parallel.chunkCount(n), wCount = cOut * cIn
        let tiles = workspace, wt = workspace + chunks * cOut * hw, partials = wt + wCount
        if dT != nil { for o in 0..<cOut { for i in 0..<cIn { wt[i * cOut + o] = w[o * cIn + i] } } }
        if dW != nil, chunks > 1 { partials.update(repeating: 0, count: (chunks - 1) * wCount) }
        let own = pointwiseUsesOwnKernel(cIn: cIn, cOut: cOut), ownWeightGrad = pointwiseWeightGradUsesOwnKernel(cIn: cIn, cOut: cOut, hw: hw)
        Parallel.forChunksIndexed(n, chunks: chunks) { k, r in
            let tile = tiles + k * cOut * hw
            let dWk: UnsafeMutablePointer<Float>? = dW == nil ? nil : (k == 0 ? dW! : partials + (k - 1) * wCount)
            for s in r {
                for c in 0..<cOut {
                    let off = (s * cOut + c) * hw
                    let a = invStd[c], md = meanDy[c], kx = meanDyXhat[c]
                    let av = SIMD8<Float>(repeating: a), mdv = SIMD8<Float>(repeating: md), kv = SIMD8<Float>(repeating: kx)
                    let dyr = dY + off, xr = xhat + off, zr = tile + c * hw
                    var i = 0
                    while i + 8 <= hw { store8(zr + i, av * (load8(dyr + i) - mdv - load8(xr + i) * kv)); i += 8 }
                    while i < hw { zr[i] = a * (dyr[i] - md - xr[i] * kx); i += 1 }
                }
                if let dT {
                    if own { smallGemm(m: cIn, k: cOut, p: hw, a: wt, b: tile, ldb: hw, c: dT + s * cIn * hw, ldc: hw) }
                    else { sgemm(transA: false, transB: false, m: cIn, n: hw, k: cOut, alpha: 1, a: wt, lda: cOut, b: tile, ldb: hw, beta: 0, c: dT + s * cIn * hw, ldc: hw) }
                }
                if let dWk {
                    let ts = t + s * cIn * hw
                    if ownWeightGrad { smallGemmABt(m: cOut, n: cIn, p: hw, a: tile, lda: hw, b: ts, ldb: hw, d: dWk, ldd: cIn) }
                    else { sgemm(transA: false, transB: true, m: cOut, n: cIn, k: hw, alpha: 1, a: tile, lda: hw, b: ts, ldb: hw, beta: 1, c: dWk, ldc: cIn) }
                }
            }
        }
        if let dW, chunks > 1 {
            for k in 1..<chunks { addInPlace(dW, partials + (k - 1) * wCount, count: wCount) }
        }
    }
}
