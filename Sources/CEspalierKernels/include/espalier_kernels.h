// Kernels written in C for instructions Swift cannot ask for on its own: EspalierCore's release
// build targets AVX2 (8 lanes, Package.swift) so that one binary runs on every x86-64-v3 machine,
// and a C function can carry a target attribute of its own. The caller checks the CPU
// (CEspalierSystem's espalier_cpu_has_avx512f) before it calls anything here.
#ifndef ESPALIER_KERNELS_H
#define ESPALIER_KERNELS_H

#ifdef __cplusplus
extern "C" {
#endif

/// 1 where this build holds the 16-lane kernels below (x86-64), else 0: elsewhere they do not exist
/// and calling them is an error the caller must not make.
int espalier_kernels_have_16_lanes(void);

/// C (m × p, row stride ldc) = A (m × k, contiguous rows) · B (k × p, row stride ldb), with
/// AVX-512 (16 lanes). With `sum` and `sum_sq`, adds Σ_p C[r, p] and Σ_p C[r, p]² into sum[r] and
/// sum_sq[r]. Bit for bit the result of EspalierCore's 8-lane `Kernels.smallGemm8` (Pointwise.swift),
/// the sums included: every element is the same chain of fused multiply-adds over k, and each row's
/// sums add the same 8-lane groups in the same order; only more columns are in flight at once.
/// AVX-512F code: call it only on a CPU that has it.
void espalier_small_gemm16(long m, long k, long p, const float *a, const float *b, long ldb,
                           float *c, long ldc, double *sum, double *sum_sq);

#ifdef __cplusplus
}
#endif
#endif
