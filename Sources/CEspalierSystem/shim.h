// Linux calls Swift cannot make itself (prctl is variadic), for the supervised worker.
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
