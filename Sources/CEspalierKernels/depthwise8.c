// The depthwise forward of the fused separable unit with channels in the vector lanes (where its
// t goes to a tile only, which is every forward of the op since its backward computes t again;
// SeparableUnit.swift's forwardRunsInLanes says why not where t is written whole): per sample
// and block of 8 channels, the 8 input planes are transposed into one padded tile P8 (rows, columns,
// 8 channels), ReLU applied on the way in; each output pixel's 8 channels are then one vector,
// Σ taps w8[tap] · P8[pixel + tap offset] — whole vectors only, no partial columns at the end of a
// row, and no column phases at stride 2 — into a tile T8 (Ho·Wo, 8); T8 is transposed back into
// the 8 output planes. The plane-by-plane gather of Depthwise.swift (`depthwiseForwardPlane`) is
// its reference, and it is the same bits: every output is the same chain of floats, per kernel
// row ki a product then fused multiply-adds over kj (part = w·x, part = fma(w, x, part)), the rows
// added in order (total = part₀, total += partᵢ), the padding the same zeros.
// Shapes: x (C, H, W) · w (C, KH·KW) · t (C, Ho·Wo) · P8 (H + 2p, W + 2p, 8) · T8 (Ho·Wo, 8).
// P8's border is the caller's to zero, once: the kernel writes only its interior, so a scratch
// zeroed before the first sample serves every sample after (as Depthwise.swift's P).
// AVX2 and FMA: EspalierCore's release build targets them already (x86-64-v3, Package.swift).

#include "espalier_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TARGET8 __attribute__((target("avx2,fma")))
#define INLINE8 TARGET8 static inline __attribute__((always_inline))

int espalier_depthwise8_supports(long c, long kh, long kw, long stride, long dilation) {
    return c > 0 && c % 8 == 0 && kh == kw && (kh == 3 || kh == 5) && (stride == 1 || stride == 2)
        && (dilation == 1 || dilation == 2);
}

long espalier_depthwise8_forward_floats(long h, long w, long ho, long wo, long pad) {
    return (h + 2 * pad) * (w + 2 * pad) * 8 + ho * wo * 8;
}

/// Lanes 0..<n set (n in 1...8): the mask of the partial loads and stores.
INLINE8 __m256i lanes_below(long n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/// r[i] (8 rows of 8) ← its transpose: r[j] holds lane j of every row, in row order.
INLINE8 void transpose8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)), s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)), s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20); r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20); r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31); r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31); r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/// relu per lane as Depthwise.swift's relu8: lanes below zero become +0 (NaN and −0 stay).
INLINE8 __m256 relu(__m256 v) { return _mm256_andnot_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ), v); }

/// 8 rows of n ≤ 8 floats (row l at src + l·stride), relu'd when `relu_input`, transposed: r[j]
/// holds column j of every row. Columns past n are loaded as zeros and never read.
INLINE8 void load_transposed(const float *src, long stride, long n, int relu_input, __m256 r[8]) {
    if (n == 8) {
        for (int l = 0; l < 8; l++) r[l] = _mm256_loadu_ps(src + l * stride);
    } else {
        __m256i m = lanes_below(n);
        for (int l = 0; l < 8; l++) r[l] = _mm256_maskload_ps(src + l * stride, m);
    }
    if (relu_input) for (int l = 0; l < 8; l++) r[l] = relu(r[l]);
    transpose8(r);
}

/// P8's interior ← the 8 planes at x (plane stride hw), relu'd when `relu_input`, row by row in
/// blocks of 8 columns (each block 8 consecutive vectors of P8's row); its border is left as it
/// is (zero).
__attribute__((noinline)) TARGET8 static void pack(const float *x, long h, long w, long pad, long wp, int relu_input,
                                                  float *p8) {
    long hw = h * w;
    for (long ih = 0; ih < h; ih++) {
        float *row = p8 + ((ih + pad) * wp + pad) * 8;
        const float *src = x + ih * w;
        long iw = 0;
        __m256 r[8];
        for (; iw + 8 <= w; iw += 8) {
            load_transposed(src + iw, hw, 8, relu_input, r);
            for (int j = 0; j < 8; j++) _mm256_storeu_ps(row + (iw + j) * 8, r[j]);
        }
        if (iw < w) {
            long n = w - iw;
            load_transposed(src + iw, hw, n, relu_input, r);
            for (long j = 0; j < n; j++) _mm256_storeu_ps(row + (iw + j) * 8, r[j]);
        }
    }
}

/// The 8 planes at t (plane stride howo) ← T8 (howo, 8), as one flat run of pixels, 8 at a time.
__attribute__((noinline)) TARGET8 static void unpack(const float *t8, long howo, float *t) {
    long i = 0;
    __m256 r[8];
    for (; i + 8 <= howo; i += 8) {
        for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_ps(t8 + (i + j) * 8);
        transpose8(r);
        float *out = t + i;
        for (int l = 0; l < 8; l++) { _mm256_storeu_ps(out, r[l]); out += howo; }
    }
    if (i < howo) {
        long n = howo - i;
        for (long j = 0; j < 8; j++) r[j] = _mm256_loadu_ps(t8 + (i + (j < n ? j : 0)) * 8);
        transpose8(r);
        __m256i m = lanes_below(n);
        float *out = t + i;
        for (int l = 0; l < 8; l++) { _mm256_maskstore_ps(out, m, r[l]); out += howo; }
    }
}

/// OB consecutive outputs of one row from column ow: in = P8's row s·oh, out = T8's row oh.
INLINE8 void outputs(const int OB, const int K, const int S, const int D, const float *in, long wp, const __m256 *wv,
                     long ow, float *out) {
    __m256 total[8], part[8];
#pragma clang loop unroll(full)
    for (int ki = 0; ki < K; ki++) {
        const float *row = in + ki * D * wp * 8;
#pragma clang loop unroll(full)
        for (int kj = 0; kj < K; kj++) {
            __m256 wt = wv[ki * K + kj];
#pragma clang loop unroll(full)
            for (int o = 0; o < OB; o++) {
                __m256 x = _mm256_loadu_ps(row + ((ow + o) * S + kj * D) * 8);
                part[o] = kj == 0 ? _mm256_mul_ps(wt, x) : _mm256_fmadd_ps(wt, x, part[o]);
            }
        }
#pragma clang loop unroll(full)
        for (int o = 0; o < OB; o++) total[o] = ki == 0 ? part[o] : _mm256_add_ps(total[o], part[o]);
    }
#pragma clang loop unroll(full)
    for (int o = 0; o < OB; o++) _mm256_storeu_ps(out + (ow + o) * 8, total[o]);
}

/// T8 ← Σ taps over P8, every output row in blocks of 4 columns, then one at a time.
INLINE8 void sums(const int K, const int S, const int D, const float *p8, long wp, long ho, long wo, const __m256 *wv,
                  float *t8) {
    for (long oh = 0; oh < ho; oh++) {
        const float *in = p8 + S * oh * wp * 8;
        float *out = t8 + oh * wo * 8;
        long ow = 0;
        for (; ow + 4 <= wo; ow += 4) outputs(4, K, S, D, in, wp, wv, ow, out);
        for (; ow < wo; ow++) outputs(1, K, S, D, in, wp, wv, ow, out);
    }
}

TARGET8 static void sums_dispatch(long k, long s, long d, const float *p8, long wp, long ho, long wo, const __m256 *wv,
                                  float *t8) {
    switch (k * 100 + s * 10 + d) {
    case 311: sums(3, 1, 1, p8, wp, ho, wo, wv, t8); break;
    case 312: sums(3, 1, 2, p8, wp, ho, wo, wv, t8); break;
    case 321: sums(3, 2, 1, p8, wp, ho, wo, wv, t8); break;
    case 322: sums(3, 2, 2, p8, wp, ho, wo, wv, t8); break;
    case 511: sums(5, 1, 1, p8, wp, ho, wo, wv, t8); break;
    case 512: sums(5, 1, 2, p8, wp, ho, wo, wv, t8); break;
    case 521: sums(5, 2, 1, p8, wp, ho, wo, wv, t8); break;
    case 522: sums(5, 2, 2, p8, wp, ho, wo, wv, t8); break;
    default: __builtin_trap();
    }
}

TARGET8 void espalier_depthwise8_forward(long c, long h, long w, long ho, long wo, long k, long stride, long pad,
                                         long dilation, int relu_input, const float *x, const float *wd, float *t,
                                         float *scratch) {
    long hp = h + 2 * pad, wp = w + 2 * pad, hw = h * w, howo = ho * wo, taps = k * k;
    float *p8 = scratch, *t8 = p8 + hp * wp * 8;   // P8's border zero (the caller's), interior rewritten per block
    for (long cb = 0; cb < c; cb += 8) {
        float wbuf[25 * 8];                       // the 8 channels' weights per tap, taps ≤ 25
        for (long tap = 0; tap < taps; tap++)
            for (int l = 0; l < 8; l++) wbuf[tap * 8 + l] = wd[(cb + l) * taps + tap];
        __m256 wv[25];
        for (long tap = 0; tap < taps; tap++) wv[tap] = _mm256_loadu_ps(wbuf + tap * 8);
        pack(x + cb * hw, h, w, pad, wp, relu_input, p8);
        sums_dispatch(k, stride, dilation, p8, wp, ho, wo, wv, t8);
        unpack(t8, howo, t + cb * howo);
    }
}

#else
int espalier_depthwise8_supports(long c, long kh, long kw, long stride, long dilation) { return 0; }
long espalier_depthwise8_forward_floats(long h, long w, long ho, long wo, long pad) { return 0; }
void espalier_depthwise8_forward(long c, long h, long w, long ho, long wo, long k, long stride, long pad, long dilation,
                                 int relu_input, const float *x, const float *wd, float *t, float *scratch) {
    __builtin_trap();
}
#endif
