// OpenBLAS CBLAS interface. Debian's libopenblas-dev puts cblas.h in an openblas-* include
// folder that pkg-config names; it also declares openblas_set_num_threads and friends.
#include <cblas.h>
