// Parallel loops over the machine's cores, and the BLAS thread policy.
// Policy: OpenBLAS runs single-threaded; the engine splits work (usually the batch) into one
// chunk per core and calls sgemm inside each chunk. This keeps both cores busy for the many
// small GEMMs of a supernet, where OpenBLAS's own threading would pay start-up per call.

import COpenBLAS
import Dispatch
import Foundation

public enum Parallel {
    /// Worker count; `ESPALIER_THREADS` overrides the core count.
    public static let workers: Int = {
        if let s = ProcessInfo.processInfo.environment["ESPALIER_THREADS"], let n = Int(s), n > 0 { return n }
        return max(1, ProcessInfo.processInfo.activeProcessorCount)
    }()

    /// Called once before any kernel: OpenBLAS single-threaded (we parallelise above it).
    public static let configureBLAS: Void = { openblas_set_num_threads(1) }()

    /// Runs `body(range)` over `0..<n` split into at most `workers` contiguous chunks.
    /// Chunks smaller than `grain` are not split further. Returns when all chunks are done.
    @inline(__always)
    public static func forChunks(_ n: Int, grain: Int = 1, _ body: (Range<Int>) -> Void) {
        _ = configureBLAS
        let chunks = min(workers, max(1, n / max(grain, 1)))
        if chunks <= 1 || n <= 1 { body(0..<n); return }
        let chunks2 = min(chunks, n)
        DispatchQueue.concurrentPerform(iterations: chunks2) { k in
            let lo = n * k / chunks2, hi = n * (k + 1) / chunks2
            if lo < hi { body(lo..<hi) }
        }
    }

    /// Like `forChunks` but also gives the chunk index (for per-chunk scratch buffers).
    public static func forChunksIndexed(_ n: Int, chunks: Int, _ body: (Int, Range<Int>) -> Void) {
        _ = configureBLAS
        if chunks <= 1 { body(0, 0..<n); return }
        DispatchQueue.concurrentPerform(iterations: chunks) { k in
            let lo = n * k / chunks, hi = n * (k + 1) / chunks
            if lo < hi { body(k, lo..<hi) }
        }
    }

    /// How many chunks `forChunksIndexed` should use for `n` items.
    public static func chunkCount(_ n: Int) -> Int { max(1, min(workers, n)) }
}

/// Row-major sgemm: C(M×N) = alpha·op(A)·op(B) + beta·C.
@inline(__always)
public func sgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                  a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                  beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// Naive reference GEMM (row-major), used by tests to check sgemm-based kernels.
public func naiveGemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                      a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                      beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    for i in 0..<m {
        for j in 0..<n {
            var s: Float = 0
            for p in 0..<k {
                let av = transA ? a[p * lda + i] : a[i * lda + p]
                let bv = transB ? b[j * ldb + p] : b[p * ldb + j]
                s += av * bv
            }
            c[i * ldc + j] = alpha * s + (beta == 0 ? 0 : beta * c[i * ldc + j])
        }
    }
}
