// Fully connected layer: y (N, out) = x (N, in) · Wᵀ + b, W (out, in), b (out) optional.
// Forward and dX split the batch rows across cores, dW and db split the output features, so no
// chunk shares a gradient row (no partial buffers); one single-threaded sgemm per chunk.
// Backward overwrites dX and ADDS into dW and db. Naive reference beside.

import Foundation

extension Kernels {
    /// Row chunks of roughly `parallelGrain` multiply-adds each.
    @inline(__always)
    static func linearGrain(_ workPerRow: Int) -> Int { max(1, parallelGrain / max(workPerRow, 1)) }

    /// y = x·Wᵀ + b.
    public static func linearForward(x: UnsafePointer<Float>, w: UnsafePointer<Float>, b: UnsafePointer<Float>?,
                                     y: UnsafeMutablePointer<Float>, n: Int, inFeatures: Int, outFeatures: Int) {
        Parallel.forChunks(n, grain: linearGrain(inFeatures * outFeatures)) { r in
            let yr = y + r.lowerBound * outFeatures
            if let b { for i in 0..<r.count { (yr + i * outFeatures).update(from: b, count: outFeatures) } }
            // y[r] (rows × out) = x[r] (rows × in) · Wᵀ (in × out) (+ y[r] holding b)
            sgemm(transA: false, transB: true, m: r.count, n: outFeatures, k: inFeatures, alpha: 1,
                  a: x + r.lowerBound * inFeatures, lda: inFeatures, b: w, ldb: inFeatures,
                  beta: b == nil ? 0 : 1, c: yr, ldc: outFeatures)
        }
    }

    /// dX = dY·W (overwritten), dW += dYᵀ·x, db += Σ_rows dY (each if non-nil).
    public static func linearBackward(x: UnsafePointer<Float>, w: UnsafePointer<Float>, dY: UnsafePointer<Float>,
                                      dX: UnsafeMutablePointer<Float>?, dW: UnsafeMutablePointer<Float>?, dB: UnsafeMutablePointer<Float>?,
                                      n: Int, inFeatures: Int, outFeatures: Int) {
        if let dX {
            Parallel.forChunks(n, grain: linearGrain(inFeatures * outFeatures)) { r in
                // dX[r] (rows × in) = dY[r] (rows × out) · W (out × in)
                sgemm(transA: false, transB: false, m: r.count, n: inFeatures, k: outFeatures, alpha: 1,
                      a: dY + r.lowerBound * outFeatures, lda: outFeatures, b: w, ldb: inFeatures,
                      beta: 0, c: dX + r.lowerBound * inFeatures, ldc: inFeatures)
            }
        }
        if dW != nil || dB != nil {
            Parallel.forChunks(outFeatures, grain: linearGrain(n * inFeatures)) { r in
                if let dW {
                    // dW[r] (outs × in) += dY[:, r]ᵀ (outs × N) · x (N × in)
                    sgemm(transA: true, transB: false, m: r.count, n: inFeatures, k: n, alpha: 1,
                          a: dY + r.lowerBound, lda: outFeatures, b: x, ldb: inFeatures,
                          beta: 1, c: dW + r.lowerBound * inFeatures, ldc: inFeatures)
                }
                if let dB {
                    for o in r {
                        var s: Float = 0
                        for row in 0..<n { s += dY[row * outFeatures + o] }
                        dB[o] += s
                    }
                }
            }
        }
    }

    // MARK: - Naive reference

    public static func linearForwardNaive(x: UnsafePointer<Float>, w: UnsafePointer<Float>, b: UnsafePointer<Float>?,
                                          y: UnsafeMutablePointer<Float>, n: Int, inFeatures: Int, outFeatures: Int) {
        for row in 0..<n {
            for o in 0..<outFeatures {
                var s = Double(b?[o] ?? 0)
                for i in 0..<inFeatures { s += Double(x[row * inFeatures + i]) * Double(w[o * inFeatures + i]) }
                y[row * outFeatures + o] = Float(s)
            }
        }
    }

    public static func linearBackwardNaive(x: UnsafePointer<Float>, w: UnsafePointer<Float>, dY: UnsafePointer<Float>,
                                           dX: UnsafeMutablePointer<Float>?, dW: UnsafeMutablePointer<Float>?, dB: UnsafeMutablePointer<Float>?,
                                           n: Int, inFeatures: Int, outFeatures: Int) {
        dX?.update(repeating: 0, count: n * inFeatures)
        for row in 0..<n {
            for o in 0..<outFeatures {
                let dy = dY[row * outFeatures + o]
                dB?[o] += dy
                for i in 0..<inFeatures {
                    dX?[row * inFeatures + i] += dy * w[o * inFeatures + i]
                    dW?[o * inFeatures + i] += dy * x[row * inFeatures + i]
                }
            }
        }
    }
}
