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

/// 1 where `espalier_depthwise8_forward` takes this geometry: x86-64, C a multiple of 8, square
/// 3×3 or 5×5 kernels, stride 1 or 2, dilation 1 or 2; else 0.
int espalier_depthwise8_supports(long c, long kh, long kw, long stride, long dilation);

/// Floats of scratch `espalier_depthwise8_forward` needs: P8 ((H + 2p)·(W + 2p)·8) and T8 (Ho·Wo·8).
long espalier_depthwise8_forward_floats(long h, long w, long ho, long wo, long pad);

/// One sample's depthwise convolution with channels in the vector lanes (depthwise8.c):
/// t (C, Ho·Wo) = Σ taps w (C, K·K) · x (C, H, W) padded by `pad`, of relu(x) when `relu_input`.
/// The same bits as EspalierCore's `Kernels.depthwiseForwardPlane` on each plane. Only for
/// geometries `espalier_depthwise8_supports` takes (AVX2 and FMA code). `scratch`: zeroed before
/// the first call (P8's border is never written); later calls may reuse it as it is.
void espalier_depthwise8_forward(long c, long h, long w, long ho, long wo, long k, long stride, long pad,
                                 long dilation, int relu_input, const float *x, const float *wd, float *t,
                                 float *scratch);

#ifdef __cplusplus
}
#endif
#endif
