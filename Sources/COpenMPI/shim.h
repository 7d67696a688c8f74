// Open MPI's C interface (Debian: libopenmpi-dev; pkg-config ompi-c names its include folder).
// Only the communication layer (Sources/EspalierMPI) includes it: the host never links MPI.
#include <mpi.h>
