// Batch normalisation over (N, C, HW): per-channel statistics, the normalising affine map, and
// backward, each beside its naive reference. x̂ = (x − mean)·invstd, y = γ·x̂ + β.
// Channels are independent, so no sum is shared across cores: the passes that sum per channel
// (statistics, backward's sums) walk each core's channel range sample by sample, the passes that
// map each value (apply, backward's dX) go plane by plane in memory order, both streaming through
// the tensors. Per-channel sums run in eight Float lanes (SIMD8) per row and are added in Double;
// every pass over a row is a SIMD8 loop with a scalar tail (rows are 7×7 to 32×32 planes).
// Backward with batch statistics (training) differentiates through mean and variance:
//   dX = γ·invstd·(dY − mean(dY) − x̂·mean(dY·x̂))
// with fixed statistics (evaluation): dX = γ·invstd·dY. dγ += Σ dY·x̂ and dβ += Σ dY are
// accumulated (a parameter's gradient may be passed directly); dX is overwritten.

import Foundation

extension Kernels {
    /// (Σ (p[i] − k), Σ (p[i] − k)²) over one row (Float lanes; rows are planes of a few thousand
    /// floats at most), in Double.
    @inline(__always)
    static func rowShiftedSums(_ p: UnsafePointer<Float>, count: Int, shift k: Float) -> (Double, Double) {
        var a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), t1: Float = 0, t2: Float = 0
        let kv = SIMD8<Float>(repeating: k)
        var j = 0
        while j + 8 <= count { let d = load8(p + j) - kv; a1 += d; a2.addProduct(d, d); j += 8 }
        while j < count { let d = p[j] - k; t1 += d; t2 += d * d; j += 1 }
        return (Double(a1.sum()) + Double(t1), Double(a2.sum()) + Double(t2))
    }

    /// mean[c] and biased variance[c] of x (N, C, HW) over N·HW (one pass). Each core's channels
    /// are walked sample by sample (`forChannelRanges`), each channel adding its planes in sample order.
    public static func batchNormStatistics(_ x: UnsafePointer<Float>, n: Int, c: Int, hw: Int,
                                           mean: UnsafeMutablePointer<Float>, variance: UnsafeMutablePointer<Float>) {
        let m = Double(n * hw)
        forChannelRanges(c, work: n * c * hw) { channels in
            let first = channels.lowerBound
            withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * channels.count) { buffer in
                let s = buffer.baseAddress!, s2 = s + channels.count   // Σ (x − k), Σ (x − k)² per channel
                s.update(repeating: 0, count: 2 * channels.count)
                for sample in 0..<n {
                    for ch in channels {
                        // Shifted by the channel's first value k so that the variance
                        // E[(x−k)²] − (E[x−k])² does not cancel for data far from 0.
                        let (a, b) = rowShiftedSums(x + (sample * c + ch) * hw, count: hw, shift: x[ch * hw])
                        s[ch - first] += a; s2[ch - first] += b
                    }
                }
                for ch in channels {
                    let d = s[ch - first] / m
                    mean[ch] = Float(Double(x[ch * hw]) + d)
                    variance[ch] = Float(max(0, s2[ch - first] / m - d * d))
                }
            }
        }
    }

    /// y = (x − mean[c])·invStd[c]·γ[c] + β[c]; γ = 1, β = 0 where nil.
    /// With `accumulate` (a forward without tape adding the op's output into a node's sum): y is
    /// not stored; acc += s·y instead, the floats of this apply followed by `axpy(s, y, acc)`.
    /// Plane by plane in memory order (each plane its channel's a, b): one stream through x and y.
    public static func batchNormApply(_ x: UnsafePointer<Float>, n: Int, c: Int, hw: Int,
                                      mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                      gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?, y: UnsafeMutablePointer<Float>,
                                      accumulate s: Float? = nil) {
        forItems(n * c, itemSize: hw) { plane in
            let ch = plane % c
            let a = invStd[ch] * (gamma?[ch] ?? 1)
            let b = (beta?[ch] ?? 0) - mean[ch] * a
            let av = SIMD8<Float>(repeating: a), bv = SIMD8<Float>(repeating: b)
            let xr = x + plane * hw, yr = y + plane * hw
            var i = 0
            if let s {
                let sv = SIMD8<Float>(repeating: s)
                while i + 8 <= hw { store8(yr + i, load8(yr + i) + sv * (load8(xr + i) * av + bv)); i += 8 }
                while i < hw { yr[i] = yr[i] + s * (xr[i] * a + b); i += 1 }
                return
            }
            while i + 8 <= hw { store8(yr + i, load8(xr + i) * av + bv); i += 8 }
            while i < hw { yr[i] = xr[i] * a + b; i += 1 }
        }
    }

    /// Backward. `batchStatistics`: mean/invStd were computed from this x (training), so dX
    /// includes their dependence on x. dX overwritten; dGamma, dBeta accumulated (each if non-nil).
    /// `normalizedInput`: `x` holds x̂ = (x − mean)·invStd itself (the output of a BN without
    /// affine map), so the op need not keep its input alive; `mean` is then ignored.
    /// `dYScale`: the output gradient is dYScale·dY, each value multiplied as it is read (a mixing
    /// weight not written out; the same floats as a scaled copy of dY). `handedSums` (with
    /// `normalizedInput`): the channel sums of dYScale·dY and of dYScale·dY·x̂ (2C Doubles) its
    /// consumer made (Graph's `GradientForms.channelSums`); the pass that makes them is skipped.
    public static func batchNormBackward(_ x: UnsafePointer<Float>, dY: UnsafePointer<Float>, dYScale: Float = 1, n: Int, c: Int, hw: Int,
                                         mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                         gamma: UnsafePointer<Float>?, batchStatistics: Bool,
                                         dX: UnsafeMutablePointer<Float>?, dGamma: UnsafeMutablePointer<Float>?,
                                         dBeta: UnsafeMutablePointer<Float>?, normalizedInput: Bool = false,
                                         handedSums: UnsafePointer<Double>? = nil) {
        precondition(handedSums == nil || normalizedInput, "handed sums are of the normalised output")
        let m = Float(n * hw)
        let sv = SIMD8<Float>(repeating: dYScale)
        let needSums = dGamma != nil || dBeta != nil || (dX != nil && batchStatistics)
        // Pass 1, the sums: each core's channels sample by sample (`forChannelRanges`).
        let sums = UnsafeMutablePointer<Double>.allocate(capacity: 2 * c)   // Σ dY, Σ dY·(x − mean) per channel
        defer { sums.deallocate() }
        sums.update(repeating: 0, count: 2 * c)
        if needSums, let handedSums {
            sums.update(from: handedSums, count: 2 * c)
        } else if needSums {
            forChannelRanges(c, work: n * c * hw * 2) { channels in
                for sample in 0..<n {
                    for ch in channels {
                        let mu = normalizedInput ? 0 : mean[ch], muv = SIMD8<Float>(repeating: mu)
                        let off = (sample * c + ch) * hw
                        let xr = x + off, dyr = dY + off
                        var ady = SIMD8<Float>(), adx = SIMD8<Float>(), tdy: Float = 0, tdx: Float = 0
                        var i = 0
                        while i + 8 <= hw {
                            let dy = sv * load8(dyr + i)
                            ady += dy
                            adx.addProduct(dy, load8(xr + i) - muv)
                            i += 8
                        }
                        while i < hw { let dy = dYScale * dyr[i]; tdy += dy; tdx += dy * (xr[i] - mu); i += 1 }
                        sums[ch] += Double(ady.sum()) + Double(tdy)
                        sums[c + ch] += Double(adx.sum()) + Double(tdx)
                    }
                }
            }
        }
        // Per channel: dBeta, dGamma, and pass 2's row: a, mean dY, k, mu (4C floats).
        let rows = UnsafeMutablePointer<Float>.allocate(capacity: 4 * c)
        defer { rows.deallocate() }
        for ch in 0..<c {
            let mu = normalizedInput ? 0 : mean[ch], istd = invStd[ch]
            let xcScale: Float = normalizedInput ? 1 / istd : 1
            let sumDy = sums[ch], sumDyXhat = sums[c + ch] * Double(xcScale) * Double(istd)
            dBeta?[ch] += Float(sumDy)
            dGamma?[ch] += Float(sumDyXhat)
            rows[ch] = (gamma?[ch] ?? 1) * istd
            rows[c + ch] = Float(sumDy) / m
            rows[2 * c + ch] = Float(sumDyXhat) / m * istd * xcScale
            rows[3 * c + ch] = mu
        }
        guard let dX else { return }
        // Pass 2, dX: plane by plane in memory order.
        forItems(n * c, itemSize: hw * 3) { plane in
            let ch = plane % c, off = plane * hw, a = rows[ch]
            if batchStatistics {
                BatchNormGradientRow(a: a, dYScale: dYScale, meanDy: rows[c + ch], mu: rows[3 * c + ch], k: rows[2 * c + ch])
                    .apply(dY: dY + off, x: x + off, dX: dX + off, count: hw)
            } else {
                let av = SIMD8<Float>(repeating: a), dyr = dY + off, dxr = dX + off
                var i = 0
                while i + 8 <= hw { store8(dxr + i, av * (sv * load8(dyr + i))); i += 8 }
                while i < hw { dxr[i] = a * (dYScale * dyr[i]); i += 1 }
            }
        }
    }

    /// The input gradient of a batch norm without affine map, with batch statistics, from its
    /// sums: the second pass of `batchNormBackward`, left to the consumer of the gradient, which
    /// makes each plane where it reads it (a pool's backward; `Graph`'s pending gradient). `sums`
    /// (2C): Σ dY and Σ dY·x̂ per channel as `batchNormBackward` leaves them in dBeta and dGamma.
    public struct BatchNormGradientSource {
        public let dY: UnsafePointer<Float>, xhat: UnsafePointer<Float>, dYScale: Float
        public let c: Int, hw: Int
        /// a, mean dY and k per channel (3C), as `batchNormBackward`'s second pass computes them.
        let coefficients: UnsafePointer<Float>

        /// Fills `coefficients` (3C floats) from invStd (C) and the sums (2C: Σ dY, then Σ dY·x̂) over m values.
        public static func makeCoefficients(invStd: UnsafePointer<Float>, sums: UnsafePointer<Float>, c: Int, count m: Int,
                                        into out: UnsafeMutablePointer<Float>) {
            let mf = Float(m)
            for ch in 0..<c {
                let istd = invStd[ch]
                out[ch] = istd                                   // a = γ·invStd, γ = 1
                out[c + ch] = sums[ch] / mf                      // mean dY
                out[2 * c + ch] = sums[c + ch] / mf * istd * (1 / istd)   // k, with x̂ in place of x − mean
            }
        }

        public init(dY: UnsafePointer<Float>, xhat: UnsafePointer<Float>, dYScale: Float, c: Int, hw: Int, coefficients: UnsafePointer<Float>) {
            self.dY = dY; self.xhat = xhat; self.dYScale = dYScale; self.c = c; self.hw = hw; self.coefficients = coefficients
        }

        /// Plane `plane` (sample·C + channel) of the gradient, into `out` (hw).
        @inline(__always)
        public func plane(_ plane: Int, into out: UnsafeMutablePointer<Float>) {
            let ch = plane % c, off = plane * hw
            BatchNormGradientRow(a: coefficients[ch], dYScale: dYScale, meanDy: coefficients[c + ch], mu: 0, k: coefficients[2 * c + ch])
                .apply(dY: dY + off, x: xhat + off, dX: out, count: hw)
        }

        /// The whole gradient (N·C planes) into dX, where nothing reads it plane by plane.
        public func write(n: Int, into dX: UnsafeMutablePointer<Float>) {
            forItems(n * c, itemSize: hw * 3) { p in plane(p, into: dX + p * hw) }
        }
    }

    /// dX = a·(s·dY − meanDy − (x − mu)·k) over one row: each float as batch norm's backward makes it.
    struct BatchNormGradientRow {
        let a, dYScale, meanDy, mu, k: Float

        @inline(__always)
        func apply(dY dyr: UnsafePointer<Float>, x xr: UnsafePointer<Float>, dX dxr: UnsafeMutablePointer<Float>, count: Int) {
            let av = SIMD8<Float>(repeating: a), sv = SIMD8<Float>(repeating: dYScale), kv = SIMD8<Float>(repeating: k)
            let mdv = SIMD8<Float>(repeating: meanDy), muv = SIMD8<Float>(repeating: mu)
            var i = 0
            while i + 8 <= count { store8(dxr + i, av * (sv * load8(dyr + i) - mdv - (load8(xr + i) - muv) * kv)); i += 8 }
            while i < count { dxr[i] = a * (dYScale * dyr[i] - meanDy - (xr[i] - mu) * k); i += 1 }
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
