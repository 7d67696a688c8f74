/* hostile.c — plugins that take their process down while being loaded, one way per -D flag
 * (see ScanTests.swift). The host scans every library in a child process, so these must be
 * refused with their reason while every other library still loads.
 *   -DHOSTILE_SEGV_ENTRY     a null-pointer write in the entry
 *   -DHOSTILE_SEGV_INIT      a null-pointer write in init
 *   -DHOSTILE_SEGV_CTOR      a null-pointer write in a library constructor (before dlopen returns)
 *   -DHOSTILE_ABORT_INIT     abort() in init
 *   -DHOSTILE_EXIT_ENTRY     exit(3) in the entry
 *   -DHOSTILE_LOOP_INIT      init never returns
 * With no flag: a well-formed library of no components.
 */
#include <espalier/espalier.h>
#include <stdlib.h>

__attribute__((unused)) static void null_write(void) {
    volatile int *volatile p = NULL;
    *p = 1;
}

#ifdef HOSTILE_SEGV_CTOR
__attribute__((constructor)) static void hostile_constructor(void) { null_write(); }
#endif

static es_status hostile_init(const es_host_services *host) {
    (void)host;
#ifdef HOSTILE_SEGV_INIT
    null_write();
#endif
#ifdef HOSTILE_ABORT_INIT
    abort();
#endif
#ifdef HOSTILE_LOOP_INIT
    for (volatile unsigned long i = 0;; i++) {}
#endif
    return ES_OK;
}

static const es_plugin_desc plugin = {
    sizeof(es_plugin_desc), { ESPALIER_ABI_MAJOR, ESPALIER_ABI_MINOR }, "org.hostile", "0.1.0", "a plugin that misbehaves",
    hostile_init, NULL, 0,
};

ESPALIER_EXPORT const es_plugin_desc *espalier_plugin_entry_v1(const es_version *host_abi) {
    (void)host_abi;
#ifdef HOSTILE_SEGV_ENTRY
    null_write();
#endif
#ifdef HOSTILE_EXIT_ENTRY
    exit(3);
#endif
    return &plugin;
}
