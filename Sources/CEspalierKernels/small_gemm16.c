// The pointwise (1×1 convolution) micro-kernel of Pointwise.swift at 16 lanes: C = A · B with the
// batch-norm row sums read from the registers the result is in. A block of R rows × 32 columns
// (two zmm registers a row) lives in registers while k steps: one broadcast of A a row, two loads
// of B, 2R fused multiply-adds. It mirrors `Kernels.smallGemm8` step for step, so that the two are
// equal bit for bit (PointwiseKernelTests checks it):
//   - the same panels of B (`smallGemmPanelColumns`), the tails (8 columns, then one at a time)
//     only in the last panel;
//   - each element is fma(a[r, kk], b[kk, j], ·) over kk = 0… from 0, as there;
//   - the rows of the 4-row blocks (all but the last m % 4) add their sums the way `rows4` does:
//     per 16 columns, Σ += (left 8 + right 8), Σ² += left², then += right²; the last m % 4 rows
//     the way `row1` does, per 8 columns;
//   - each row's 8 lanes are summed in lane order (Swift's SIMD8.sum()) and added in Double;
//   - the last n < 8 columns run in 8 masked lanes, each lane the scalar loop's y += a·b: a rounded
//     product, then a rounded sum (compiled with -ffp-contract=off, Package.swift, so the two stay
//     apart), and their sums are added one column at a time.

#include "espalier_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <stdlib.h>

int espalier_kernels_have_16_lanes(void) { return 1; }

#define TARGET16 __attribute__((target("avx512f,avx2,fma")))
#define INLINE16 TARGET16 static inline __attribute__((always_inline))

/// Columns a panel of B holds: as `Kernels.smallGemmPanelColumns`.
static long panel_columns(long k) {
    long c = (4096 / (k > 1 ? k : 1)) & ~15L;
    return c > 16 ? c : 16;
}

/// A row's (Σ, Σ²) lanes: 8 floats each, as `lanes` in Pointwise.swift.
typedef struct { float s[8], q[8]; } row_lanes;

/// Σ += x, Σ² += x², 8 columns (`row1`'s step).
INLINE16 void add_lanes8(row_lanes *l, __m256 x) {
    _mm256_storeu_ps(l->s, _mm256_add_ps(_mm256_loadu_ps(l->s), x));
    _mm256_storeu_ps(l->q, _mm256_fmadd_ps(x, x, _mm256_loadu_ps(l->q)));
}

/// Σ += (left + right), Σ² += left², Σ² += right², 16 columns (`rows4`'s step).
INLINE16 void add_lanes16(row_lanes *l, __m512 x) {
    __m256 left = _mm512_castps512_ps256(x);
    __m256 right = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
    _mm256_storeu_ps(l->s, _mm256_add_ps(_mm256_loadu_ps(l->s), _mm256_add_ps(left, right)));
    __m256 q = _mm256_fmadd_ps(left, left, _mm256_loadu_ps(l->q));
    _mm256_storeu_ps(l->q, _mm256_fmadd_ps(right, right, q));
}

/// Adds `sums` (if any) the row's lanes, summed in lane order, and the scalar tail's sums.
static void finish_row(const row_lanes *l, float tail_s, float tail_q, double *sum, double *sum_sq) {
    float s = -0.0f, q = -0.0f;
    for (int i = 0; i < 8; i++) { s += l->s[i]; q += l->q[i]; }
    *sum += (double)s + (double)tail_s;
    *sum_sq += (double)q + (double)tail_q;
}

/// Rows r…r+R−1 (R = 8 or 4, all in the 4-row blocks) × 16·V columns from j (V = 1 or 2).
INLINE16 void block16(int R, int V, long k, const float *a, const float *b, long ldb, float *c, long ldc,
                      row_lanes *lanes, int stats) {
    __m512 acc[8][2];
    for (int r = 0; r < R; r++) for (int v = 0; v < V; v++) acc[r][v] = _mm512_setzero_ps();
    for (long kk = 0; kk < k; kk++) {
        const float *bk = b + kk * ldb;
        __m512 b0 = _mm512_loadu_ps(bk), b1 = V > 1 ? _mm512_loadu_ps(bk + 16) : b0;
        for (int r = 0; r < R; r++) {
            __m512 w = _mm512_set1_ps(a[r * k + kk]);
            acc[r][0] = _mm512_fmadd_ps(w, b0, acc[r][0]);
            if (V > 1) acc[r][1] = _mm512_fmadd_ps(w, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < R; r++) {
        for (int v = 0; v < V; v++) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
        if (stats) for (int v = 0; v < V; v++) add_lanes16(&lanes[r], acc[r][v]);
    }
}

/// The 8-column tail of rows r…r+R−1 (last panel only).
INLINE16 void block8(int R, long k, const float *a, const float *b, long ldb, float *c, long ldc,
                     row_lanes *lanes, int stats) {
    __m256 acc[8];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (long kk = 0; kk < k; kk++) {
        __m256 bk = _mm256_loadu_ps(b + kk * ldb);
        for (int r = 0; r < R; r++) acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(a[r * k + kk]), bk, acc[r]);
    }
    for (int r = 0; r < R; r++) {
        _mm256_storeu_ps(c + r * ldc, acc[r]);
        if (stats) add_lanes8(&lanes[r], acc[r]);
    }
}

/// The last n < 8 columns of rows r…r+R−1 (last panel only), 8 lanes with the columns past n
/// masked off. Each element is the scalar loop's y = 0; y += a·b, a rounded product then a rounded
/// sum (no fused multiply-add: -ffp-contract=off), so a lane gives what one scalar column gives.
/// Returns each row's sums of these columns, added one column at a time, in tail_s and tail_q.
INLINE16 void tail_block(int R, long k, long n, const float *a, const float *b, long ldb, float *c, long ldc,
                         float *tail_s, float *tail_q) {
    if (n == 0) { for (int r = 0; r < R; r++) { tail_s[r] = 0; tail_q[r] = 0; } return; }
    __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 acc[8];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (long kk = 0; kk < k; kk++) {
        __m256 bk = _mm256_maskload_ps(b + kk * ldb, mask);
        for (int r = 0; r < R; r++) acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_set1_ps(a[r * k + kk]), bk));
    }
    for (int r = 0; r < R; r++) {
        _mm256_maskstore_ps(c + r * ldc, mask, acc[r]);
        float y[8], ts = 0, tq = 0;
        _mm256_storeu_ps(y, acc[r]);
        for (long j = 0; j < n; j++) { ts += y[j]; tq += y[j] * y[j]; }
        tail_s[r] = ts; tail_q[r] = tq;
    }
}

/// R rows of the 4-row blocks over one panel's columns [from, to).
INLINE16 void rows_of_blocks(int R, long r, long k, long from, long to, int last, const float *a, const float *b, long ldb,
                             float *c, long ldc, row_lanes *lanes, double *sum, double *sum_sq) {
    const float *ar = a + r * k;
    float *cr = c + r * ldc;
    int stats = sum != 0;
    long j = from;
    for (; j + 32 <= to; j += 32) block16(R, 2, k, ar, b + j, ldb, cr + j, ldc, lanes + r, stats);
    if (j + 16 <= to) { block16(R, 1, k, ar, b + j, ldb, cr + j, ldc, lanes + r, stats); j += 16; }
    if (!last) return;
    if (j + 8 <= to) { block8(R, k, ar, b + j, ldb, cr + j, ldc, lanes + r, stats); j += 8; }
    float ts[8], tq[8];
    tail_block(R, k, to - j, ar, b + j, ldb, cr + j, ldc, ts, tq);
    if (stats) for (int i = 0; i < R; i++) finish_row(&lanes[r + i], ts[i], tq[i], &sum[r + i], &sum_sq[r + i]);
}

/// One of the last m % 4 rows over one panel's columns, its sums per 8 columns as `row1`.
TARGET16 static void single_row(long r, long k, long from, long to, int last, const float *a, const float *b, long ldb,
                         float *c, long ldc, row_lanes *lanes, double *sum, double *sum_sq) {
    const float *ar = a + r * k;
    float *cr = c + r * ldc;
    long j = from;
    for (; j + 16 <= to; j += 16) {
        __m512 x = _mm512_setzero_ps();
        for (long kk = 0; kk < k; kk++) x = _mm512_fmadd_ps(_mm512_set1_ps(ar[kk]), _mm512_loadu_ps(b + kk * ldb + j), x);
        _mm512_storeu_ps(cr + j, x);
        add_lanes8(&lanes[r], _mm512_castps512_ps256(x));
        add_lanes8(&lanes[r], _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
    }
    if (j + 8 <= to) {
        __m256 x = _mm256_setzero_ps();
        for (long kk = 0; kk < k; kk++) x = _mm256_fmadd_ps(_mm256_set1_ps(ar[kk]), _mm256_loadu_ps(b + kk * ldb + j), x);
        _mm256_storeu_ps(cr + j, x);
        add_lanes8(&lanes[r], x);
        j += 8;
    }
    if (!last) return;
    float ts, tq;
    tail_block(1, k, to - j, ar, b + j, ldb, cr + j, ldc, &ts, &tq);
    if (sum) finish_row(&lanes[r], ts, tq, &sum[r], &sum_sq[r]);
}

TARGET16 void espalier_small_gemm16(long m, long k, long p, const float *a, const float *b, long ldb,
                                    float *c, long ldc, double *sum, double *sum_sq) {
    if (m <= 0) return;
    if (!sum_sq) sum = 0;
    row_lanes stack[128], *lanes = m <= 128 ? stack : malloc((size_t)m * sizeof(row_lanes));
    if (!lanes) abort();
    for (long r = 0; r < m; r++) for (int i = 0; i < 8; i++) { lanes[r].s[i] = 0; lanes[r].q[i] = 0; }
    long panel = panel_columns(k), blocked = m & ~3L, from = 0;
    do {
        long to = p < from + panel ? p : from + panel;
        int last = to == p;
        long r = 0;
        for (; r + 8 <= blocked; r += 8) rows_of_blocks(8, r, k, from, to, last, a, b, ldb, c, ldc, lanes, sum, sum_sq);
        for (; r + 4 <= blocked; r += 4) rows_of_blocks(4, r, k, from, to, last, a, b, ldb, c, ldc, lanes, sum, sum_sq);
        for (; r < m; r++) single_row(r, k, from, to, last, a, b, ldb, c, ldc, lanes, sum, sum_sq);
        from = to;
    } while (from < p);
    if (lanes != stack) free(lanes);
}

#else
int espalier_kernels_have_16_lanes(void) { return 0; }
#endif
