// Batch normalisation over (N, C, HW): per-channel statistics, the normalising affine map, and
// backward, each beside its naive reference. x̂ = (x − mean)·invstd, y = γ·x̂ + β.
// Channels are independent, so every pass is split across cores by channel (no shared sums);
// per-channel sums run in Float lanes per row and are added in Double.
// Backward with batch statistics (training) differentiates through mean and variance:
//   dX = γ·invstd·(dY − mean(dY) − x̂·mean(dY·x̂))
// with fixed statistics (evaluation): dX = γ·invstd·dY. dγ += Σ dY·x̂ and dβ += Σ dY are
// accumulated (a parameter's gradient may be passed directly); dX is overwritten.

import Foundation

extension Kernels {
    /// Σ (p[i] − m)² in Double.
    @inline(__always)
    static func rowSumSquaredDeviation(_ p: UnsafePointer<Float>, count: Int, mean m: Float) -> Double {
        var total: Double = 0
        var i = 0
        while i < count {
            let end = min(i + 4096, count)
            var s0: Float = 0, s1: Float = 0, s2: Float = 0, s3: Float = 0
            var j = i
            while j + 4 <= end {
                let a = p[j] - m, b = p[j + 1] - m, c = p[j + 2] - m, d = p[j + 3] - m
                s0 += a * a; s1 += b * b; s2 += c * c; s3 += d * d
                j += 4
            }
            while j < end { let a = p[j] - m; s0 += a * a; j += 1 }
            total += Double((s0 + s1) + (s2 + s3))
            i = end
        }
        return total
    }

    /// mean[c] and biased variance[c] of x (N, C, HW) over N·HW (two passes).
    public static func batchNormStatistics(_ x: UnsafePointer<Float>, n: Int, c: Int, hw: Int,
                                           mean: UnsafeMutablePointer<Float>, variance: UnsafeMutablePointer<Float>) {
        let m = Double(n * hw)
        forItems(c, itemSize: n * hw * 2) { ch in
            var s: Double = 0
            for sample in 0..<n { s += rowSum(x + (sample * c + ch) * hw, count: hw) }
            let mu = Float(s / m)
            var v: Double = 0
            for sample in 0..<n { v += rowSumSquaredDeviation(x + (sample * c + ch) * hw, count: hw, mean: mu) }
            mean[ch] = mu
            variance[ch] = Float(v / m)
        }
    }

    /// y = (x − mean[c])·invStd[c]·γ[c] + β[c]; γ = 1, β = 0 where nil.
    public static func batchNormApply(_ x: UnsafePointer<Float>, n: Int, c: Int, hw: Int,
                                      mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                      gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?, y: UnsafeMutablePointer<Float>) {
        forItems(c, itemSize: n * hw) { ch in
            let a = invStd[ch] * (gamma?[ch] ?? 1)
            let b = (beta?[ch] ?? 0) - mean[ch] * a
            for sample in 0..<n {
                let xr = x + (sample * c + ch) * hw, yr = y + (sample * c + ch) * hw
                for i in 0..<hw { yr[i] = xr[i] * a + b }
            }
        }
    }

    /// Backward. `batchStatistics`: mean/invStd were computed from this x (training), so dX
    /// includes their dependence on x. dX overwritten; dGamma, dBeta accumulated (each if non-nil).
    /// `normalizedInput`: `x` holds x̂ = (x − mean)·invStd itself (the output of a BN without
    /// affine map), so the op need not keep its input alive; `mean` is then ignored.
    public static func batchNormBackward(_ x: UnsafePointer<Float>, dY: UnsafePointer<Float>, n: Int, c: Int, hw: Int,
                                         mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                         gamma: UnsafePointer<Float>?, batchStatistics: Bool,
                                         dX: UnsafeMutablePointer<Float>?, dGamma: UnsafeMutablePointer<Float>?,
                                         dBeta: UnsafeMutablePointer<Float>?, normalizedInput: Bool = false) {
        let m = Float(n * hw)
        let needSums = dGamma != nil || dBeta != nil || (dX != nil && batchStatistics)
        forItems(c, itemSize: n * hw * 3) { ch in
            let mu = normalizedInput ? 0 : mean[ch], istd = invStd[ch]
            // (x − mu)·xcScale is x − mean in both cases.
            let xcScale: Float = normalizedInput ? 1 / istd : 1
            var sumDy: Double = 0, sumDyXc: Double = 0   // Σ dY, Σ dY·(x − mean)
            if needSums {
                for sample in 0..<n {
                    let off = (sample * c + ch) * hw
                    let xr = x + off, dyr = dY + off
                    sumDy += rowSum(dyr, count: hw)
                    var s0: Float = 0, s1: Float = 0, s2: Float = 0, s3: Float = 0
                    var i = 0
                    while i + 4 <= hw {
                        s0 += dyr[i] * (xr[i] - mu); s1 += dyr[i + 1] * (xr[i + 1] - mu)
                        s2 += dyr[i + 2] * (xr[i + 2] - mu); s3 += dyr[i + 3] * (xr[i + 3] - mu)
                        i += 4
                    }
                    while i < hw { s0 += dyr[i] * (xr[i] - mu); i += 1 }
                    sumDyXc += Double((s0 + s1) + (s2 + s3))
                }
            }
            let sumDyXhat = sumDyXc * Double(xcScale) * Double(istd)
            dBeta?[ch] += Float(sumDy)
            dGamma?[ch] += Float(sumDyXhat)
            guard let dX else { return }
            let g = gamma?[ch] ?? 1
            let a = g * istd
            if batchStatistics {
                // dX = a·(dY − sumDy/M − x̂·sumDyXhat/M), x̂ = (x − mu)·istd
                let meanDy = Float(sumDy) / m
                let k = Float(sumDyXhat) / m * istd * xcScale   // coefficient of (x − mu)
                for sample in 0..<n {
                    let off = (sample * c + ch) * hw
                    let xr = x + off, dyr = dY + off, dxr = dX + off
                    for i in 0..<hw { dxr[i] = a * (dyr[i] - meanDy - (xr[i] - mu) * k) }
                }
            } else {
                for sample in 0..<n {
                    let off = (sample * c + ch) * hw
                    let dyr = dY + off, dxr = dX + off
                    for i in 0..<hw { dxr[i] = a * dyr[i] }
                }
            }
        }
    }

    // MARK: - Naive references

    public static func batchNormStatisticsNaive(_ x: UnsafePointer<Float>, n: Int, c: Int, hw: Int,
                                                mean: UnsafeMutablePointer<Float>, variance: UnsafeMutablePointer<Float>) {
        for ch in 0..<c {
            var s: Double = 0, s2: Double = 0
            for sample in 0..<n { for i in 0..<hw { s += Double(x[(sample * c + ch) * hw + i]) } }
            let mu = s / Double(n * hw)
            for sample in 0..<n { for i in 0..<hw { let d = Double(x[(sample * c + ch) * hw + i]) - mu; s2 += d * d } }
            mean[ch] = Float(mu)
            variance[ch] = Float(s2 / Double(n * hw))
        }
    }

    public static func batchNormApplyNaive(_ x: UnsafePointer<Float>, n: Int, c: Int, hw: Int,
                                           mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                           gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?, y: UnsafeMutablePointer<Float>) {
        for sample in 0..<n {
            for ch in 0..<c {
                for i in 0..<hw {
                    let j = (sample * c + ch) * hw + i
                    y[j] = (x[j] - mean[ch]) * invStd[ch] * (gamma?[ch] ?? 1) + (beta?[ch] ?? 0)
                }
            }
        }
    }

    public static func batchNormBackwardNaive(_ x: UnsafePointer<Float>, dY: UnsafePointer<Float>, n: Int, c: Int, hw: Int,
                                              mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                              gamma: UnsafePointer<Float>?, batchStatistics: Bool,
                                              dX: UnsafeMutablePointer<Float>?, dGamma: UnsafeMutablePointer<Float>?,
                                              dBeta: UnsafeMutablePointer<Float>?, normalizedInput: Bool = false) {
        let m = Double(n * hw)
        for ch in 0..<c {
            var sumDy: Double = 0, sumDyXhat: Double = 0
            for sample in 0..<n {
                for i in 0..<hw {
                    let j = (sample * c + ch) * hw + i
                    let xhat = normalizedInput ? Double(x[j]) : (Double(x[j]) - Double(mean[ch])) * Double(invStd[ch])
                    sumDy += Double(dY[j]); sumDyXhat += Double(dY[j]) * xhat
                }
            }
            dBeta?[ch] += Float(sumDy)
            dGamma?[ch] += Float(sumDyXhat)
            guard let dX else { continue }
            let g = Double(gamma?[ch] ?? 1)
            for sample in 0..<n {
                for i in 0..<hw {
                    let j = (sample * c + ch) * hw + i
                    let xhat = normalizedInput ? Double(x[j]) : (Double(x[j]) - Double(mean[ch])) * Double(invStd[ch])
                    let inner = batchStatistics ? Double(dY[j]) - sumDy / m - xhat * sumDyXhat / m : Double(dY[j])
                    dX[j] = Float(g * Double(invStd[ch]) * inner)
                }
            }
        }
    }
}
