// The communication layer of a data-parallel search: a shared library (libEspalierMPI.so) that
// links Open MPI and that the host loads with dlopen only when it runs under mpirun, so that the
// espalier executable itself never links MPI and a single-machine run never initialises it.
// Open MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM) are macros over its own globals, which
// Swift cannot import; these functions wrap exactly the calls the host makes, on MPI_COMM_WORLD.
// Threading: MPI_Init_thread with MPI_THREAD_FUNNELED; the host makes every call from its main
// thread (the kernels' worker threads never touch MPI).
// Every function returns 0 on success, else MPI's error code with a message in the buffer that
// espalier_mpi_last_error returns.
#ifndef ESPALIER_MPI_H
#define ESPALIER_MPI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The layer's interface version: the host refuses a library of another version. */
#define ESPALIER_MPI_INTERFACE 1

int espalier_mpi_interface(void);
/** MPI_Init_thread(FUNNELED); the rank and size of MPI_COMM_WORLD. Errors on the communicator
 *  return (MPI_ERRORS_RETURN) instead of aborting, so the host can name what failed. */
int espalier_mpi_init(int32_t *rank, int32_t *size);
/** In-place sum over every rank of `count` floats / doubles (one MPI_Allreduce per 2^30 values). */
int espalier_mpi_allreduce_float(float *values, int64_t count);
int espalier_mpi_allreduce_double(double *values, int64_t count);
/** Rank `root`'s `bytes` bytes into every rank's buffer. */
int espalier_mpi_broadcast(void *buffer, int64_t bytes, int32_t root);
int espalier_mpi_barrier(void);
/** Ends every rank of the job with `code` (MPI_Abort). */
void espalier_mpi_abort(int32_t code);
int espalier_mpi_finalize(void);
/** The last error's text (static buffer, valid until the next call). */
const char *espalier_mpi_last_error(void);
/** "Open MPI v4.1.4, ..." (MPI_Get_library_version). */
const char *espalier_mpi_library_version(void);

#ifdef __cplusplus
}
#endif
#endif
