// OpenBLAS CBLAS interface. Debian's libopenblas-dev puts cblas.h in an openblas-* include
// folder that pkg-config names; it also declares openblas_set_num_threads and friends.
#include <cblas.h>

// Not BLAS, but the engine's other C need on the same hot path: a CPU pause hint for the worker
// pool's spin loops (Kernels/Parallel.swift).
#if defined(__x86_64__)
static inline void espalier_cpu_pause(void) { __builtin_ia32_pause(); }
#endif
