// GEMM: the one matrix multiply every dense kernel (pointwise and im2col convolutions, linear)
// calls, a thin row-major wrapper over OpenBLAS's cblas_sgemm. Not here: threading (Parallel.swift
// splits work into per-core chunks and OpenBLAS runs single-threaded inside each), and naive
// references (each kernel that calls sgemm keeps its own beside it, e.g. linearForwardNaive).

import COpenBLAS

/// Row-major sgemm: C(M×N) = alpha·op(A)·op(B) + beta·C.
@inline(__always)
public func sgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                  a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                  beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}
