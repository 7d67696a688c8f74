// Linux and CPU calls Swift cannot make itself: prctl (variadic), for the supervised worker; CPUID and AVX-512 code, for the bench.
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

/// The worker dies with its supervisor (SIGKILL when the parent ends), so that a rank whose
/// supervisor mpirun kills never lingers in a collective. Returns 0, or -1 if the parent is
/// already gone (the caller exits).
static inline int espalier_die_with_parent(pid_t expected_parent) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) return -1;
    return getppid() == expected_parent ? 0 : -1;
}

// The machine's widest fused multiply-add, for `espalier bench`'s peak. Release builds target AVX2
// (8 lanes, Package.swift), so SearchBench.fmaPeak measures what our kernels can issue; on a CPU
// with AVX-512 the physical limit is up to twice that, and the bench measures it here too.
// Elsewhere than x86-64 there is no such unit: the check says 0.
/// Flops of one iteration of espalier_fma512_chains: 12 chains × 16 lanes × 2 (multiply and add).
#define ESPALIER_FMA512_FLOPS_PER_ITERATION 384

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

/// 1 when the CPU has AVX-512F and the OS saves its state (CPUID.7.0:EBX bit 16; OSXSAVE, and XCR0
/// bits 1, 2, 5, 6 and 7: SSE, AVX, the opmask and both halves of the ZMM registers), else 0.
static inline int espalier_cpu_has_avx512f(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & (1u << 16))) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 0xE6u) == 0xE6u;
}

/// 1 when CPUID's vendor string is "AuthenticAMD", else 0. On the AMD EPYC measured, 8-lane
/// multiply-adds right after 512-bit ones took 1.01× as long; on the Intel Xeon measured, 1.15–1.25×
/// (Kernels.smallGemm's comment has the figures).
static inline int espalier_cpu_vendor_is_amd(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
    return b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;   // "Auth" "enti" "cAMD"
}

/// Twelve independent 16-lane fused multiply-add chains a ← a·m + c, `iterations` times each
/// (ESPALIER_FMA512_FLOPS_PER_ITERATION flops an iteration). AVX-512F code: call it only where espalier_cpu_has_avx512f() is 1.
/// Returns the chains' sum, so that nothing is optimised away.
__attribute__((target("avx512f"))) static inline float espalier_fma512_chains(long iterations, float m, float c) {
    const __m512 vm = _mm512_set1_ps(m), vc = _mm512_set1_ps(c);
    // Twelve different starting values: chains that start equal are one chain to a compiler that
    // notices, and would measure the latency of one multiply-add instead of the throughput.
    __m512 a0 = _mm512_set1_ps(1), a1 = _mm512_set1_ps(2), a2 = _mm512_set1_ps(3), a3 = _mm512_set1_ps(4);
    __m512 a4 = _mm512_set1_ps(5), a5 = _mm512_set1_ps(6), a6 = _mm512_set1_ps(7), a7 = _mm512_set1_ps(8);
    __m512 a8 = _mm512_set1_ps(9), a9 = _mm512_set1_ps(10), a10 = _mm512_set1_ps(11), a11 = _mm512_set1_ps(12);
    for (long i = 0; i < iterations; i++) {
        a0 = _mm512_fmadd_ps(a0, vm, vc); a1 = _mm512_fmadd_ps(a1, vm, vc); a2 = _mm512_fmadd_ps(a2, vm, vc);
        a3 = _mm512_fmadd_ps(a3, vm, vc); a4 = _mm512_fmadd_ps(a4, vm, vc); a5 = _mm512_fmadd_ps(a5, vm, vc);
        a6 = _mm512_fmadd_ps(a6, vm, vc); a7 = _mm512_fmadd_ps(a7, vm, vc); a8 = _mm512_fmadd_ps(a8, vm, vc);
        a9 = _mm512_fmadd_ps(a9, vm, vc); a10 = _mm512_fmadd_ps(a10, vm, vc); a11 = _mm512_fmadd_ps(a11, vm, vc);
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return _mm512_reduce_add_ps(s);
}
#else
static inline int espalier_cpu_has_avx512f(void) { return 0; }
static inline int espalier_cpu_vendor_is_amd(void) { return 0; }
static inline float espalier_fma512_chains(long iterations, float m, float c) { (void)iterations; (void)m; (void)c; return 0; }
#endif
