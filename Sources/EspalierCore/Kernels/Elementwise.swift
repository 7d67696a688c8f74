// Memory-bound kernels: add, scale, ReLU, weighted sums, dropout masks. Forward and backward
// side by side; each streams its operands once. Raw pointers, no allocation: the caller (an op
// in Autodiff/) owns every buffer. Loops are simple enough for the compiler to vectorise;
// large ones are split across cores.

import Foundation

/// Namespace of raw kernels. Shapes are given in the doc comment of each function.
public enum Kernels {
    /// Below this many elements a loop is not worth splitting across cores.
    static let parallelGrain = 1 << 15

    @inline(__always)
    static func parallelRange(_ count: Int, _ body: (Int, Int) -> Void) {
        if count < parallelGrain * 2 { body(0, count); return }
        Parallel.forChunks(count, grain: parallelGrain) { r in body(r.lowerBound, r.upperBound) }
    }

    // MARK: add

    /// out = a + b  (count)
    public static func add(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int) {
        parallelRange(count) { lo, hi in for i in lo..<hi { out[i] = a[i] + b[i] } }
    }

    /// acc += x  (count)
    public static func addInPlace(_ acc: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, count: Int) {
        parallelRange(count) { lo, hi in for i in lo..<hi { acc[i] += x[i] } }
    }

    /// acc += alpha·x  (count)
    public static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ acc: UnsafeMutablePointer<Float>, count: Int) {
        parallelRange(count) { lo, hi in for i in lo..<hi { acc[i] += alpha * x[i] } }
    }

    // MARK: scale by a scalar (mixing weights)

    /// out = s·x  (count)
    public static func scale(_ x: UnsafePointer<Float>, _ s: Float, _ out: UnsafeMutablePointer<Float>, count: Int) {
        parallelRange(count) { lo, hi in for i in lo..<hi { out[i] = s * x[i] } }
    }

    /// ⟨a, b⟩ accumulated in Double (gradient of a scalar weight).
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Double {
        var s0: Float = 0, s1: Float = 0, s2: Float = 0, s3: Float = 0
        var total: Double = 0
        var i = 0
        // Blocks of 4096 summed in Float (vectorised), blocks added in Double.
        while i < count {
            let end = min(i + 4096, count)
            var j = i
            while j + 4 <= end {
                s0 += a[j] * b[j]; s1 += a[j + 1] * b[j + 1]; s2 += a[j + 2] * b[j + 2]; s3 += a[j + 3] * b[j + 3]
                j += 4
            }
            while j < end { s0 += a[j] * b[j]; j += 1 }
            total += Double(s0 + s1 + s2 + s3)
            s0 = 0; s1 = 0; s2 = 0; s3 = 0
            i = end
        }
        return total
    }

    /// Σx² in Double.
    public static func sumSquares(_ x: UnsafePointer<Float>, count: Int) -> Double { dot(x, x, count: count) }

    // MARK: SIMD8 loads and stores (unaligned), for the row loops of the kernels

    @inline(__always) static func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }
    @inline(__always) static func store8(_ p: UnsafeMutablePointer<Float>, _ v: SIMD8<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
    }

    // MARK: ReLU

    /// y = max(x, 0)  (count)
    public static func reluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        parallelRange(count) { lo, hi in for i in lo..<hi { y[i] = max(x[i], 0) } }
    }

    /// dX = dY · [y > 0]  (count); uses the output, so the input need not be kept.
    public static func reluBackward(_ y: UnsafePointer<Float>, _ dY: UnsafePointer<Float>, _ dX: UnsafeMutablePointer<Float>, count: Int) {
        parallelRange(count) { lo, hi in for i in lo..<hi { dX[i] = y[i] > 0 ? dY[i] : 0 } }
    }

    // MARK: weighted sum of n tensors

    /// out = Σ_k w[k]·x_k  (each count)
    public static func weightedSumForward(_ xs: [UnsafePointer<Float>], _ w: [Float], _ out: UnsafeMutablePointer<Float>, count: Int) {
        parallelRange(count) { lo, hi in
            if xs.isEmpty { for i in lo..<hi { out[i] = 0 }; return }
            let x0 = xs[0], w0 = w[0]
            for i in lo..<hi { out[i] = w0 * x0[i] }
            for k in 1..<xs.count {
                let xk = xs[k], wk = w[k]
                for i in lo..<hi { out[i] += wk * xk[i] }
            }
        }
    }

    // MARK: dropout and drop-path

    /// Fills `mask` (count) with 0 or 1/(1-p), keeping each element with probability 1-p.
    public static func dropoutMask(_ mask: UnsafeMutablePointer<Float>, count: Int, p: Float, rng: inout RNG) {
        let keep = 1 - p, scale = keep > 0 ? 1 / keep : 0
        for i in 0..<count { mask[i] = rng.uniform() < keep ? scale : 0 }
    }

    /// out = x · mask  (count); also dropout backward (dX = dY · mask).
    public static func multiply(_ x: UnsafePointer<Float>, _ mask: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int) {
        parallelRange(count) { lo, hi in for i in lo..<hi { out[i] = x[i] * mask[i] } }
    }

    /// Drop-path: out[n] = x[n] · m[n] for per-sample factors m (N), x: (N, inner).
    public static func perSampleScale(_ x: UnsafePointer<Float>, _ m: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, n: Int, inner: Int) {
        Parallel.forChunks(n) { r in
            for s in r {
                let f = m[s], xs = x + s * inner, os = out + s * inner
                for i in 0..<inner { os[i] = f * xs[i] }
            }
        }
    }
}
