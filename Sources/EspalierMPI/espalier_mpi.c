// The communication layer over Open MPI (see include/espalier_mpi.h).

#include "espalier_mpi.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>

static char last_error[MPI_MAX_ERROR_STRING + 128];
static char library_version[MPI_MAX_LIBRARY_VERSION_STRING];

static int failed(const char *what, int code) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error %d", code);
    snprintf(last_error, sizeof last_error, "%s: %s", what, text);
    return code;
}

int espalier_mpi_interface(void) { return ESPALIER_MPI_INTERFACE; }

int espalier_mpi_init(int32_t *rank, int32_t *size) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
        int provided = 0;
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) return failed("MPI_Init_thread", rc);
        if (provided < MPI_THREAD_FUNNELED) {
            snprintf(last_error, sizeof last_error, "MPI_Init_thread: this MPI provides thread level %d, below MPI_THREAD_FUNNELED", provided);
            return MPI_ERR_OTHER;
        }
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int r = 0, n = 0;
    int rc = MPI_Comm_rank(MPI_COMM_WORLD, &r);
    if (rc != MPI_SUCCESS) return failed("MPI_Comm_rank", rc);
    rc = MPI_Comm_size(MPI_COMM_WORLD, &n);
    if (rc != MPI_SUCCESS) return failed("MPI_Comm_size", rc);
    *rank = r;
    *size = n;
    return MPI_SUCCESS;
}

/// MPI counts are int: a buffer of more than INT_MAX values goes in chunks of 2^30.
static int allreduce(void *values, int64_t count, MPI_Datatype type, size_t width, const char *what) {
    char *p = values;
    while (count > 0) {
        int n = count > (1 << 30) ? (1 << 30) : (int)count;
        int rc = MPI_Allreduce(MPI_IN_PLACE, p, n, type, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return failed(what, rc);
        p += (size_t)n * width;
        count -= n;
    }
    return MPI_SUCCESS;
}

int espalier_mpi_allreduce_float(float *values, int64_t count) {
    return allreduce(values, count, MPI_FLOAT, sizeof(float), "MPI_Allreduce (float sum)");
}

int espalier_mpi_allreduce_double(double *values, int64_t count) {
    return allreduce(values, count, MPI_DOUBLE, sizeof(double), "MPI_Allreduce (double sum)");
}

int espalier_mpi_broadcast(void *buffer, int64_t bytes, int32_t root) {
    char *p = buffer;
    while (bytes > 0) {
        int n = bytes > (1 << 30) ? (1 << 30) : (int)bytes;
        int rc = MPI_Bcast(p, n, MPI_BYTE, root, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return failed("MPI_Bcast", rc);
        p += n;
        bytes -= n;
    }
    return MPI_SUCCESS;
}

int espalier_mpi_barrier(void) {
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? rc : failed("MPI_Barrier", rc);
}

void espalier_mpi_abort(int32_t code) { MPI_Abort(MPI_COMM_WORLD, code); }

int espalier_mpi_finalize(void) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return MPI_SUCCESS;
    int rc = MPI_Finalize();
    return rc == MPI_SUCCESS ? rc : failed("MPI_Finalize", rc);
}

const char *espalier_mpi_last_error(void) { return last_error; }

const char *espalier_mpi_library_version(void) {
    int length = 0;
    if (MPI_Get_library_version(library_version, &length) != MPI_SUCCESS) return "unknown";
    return library_version;
}
