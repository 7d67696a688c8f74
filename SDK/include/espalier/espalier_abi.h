/* espalier_abi.h — the core of the Espalier plugin ABI, version 1.
 *
 * A plugin is a shared library that exports ONE function, `espalier_plugin_entry_v1`, returning a
 * pointer to a static `es_plugin_desc`: what the library is, which ABI it was compiled against,
 * and the components (ops, gates, regularizers, strategies) it provides. This header holds the
 * types every other header shares. It is C99, uses fixed-width types only, and never changes
 * incompatibly within major version 1:
 *   - structs only grow at the end; every boundary struct starts with `struct_size`, set by the
 *     writer to sizeof() of the struct it was compiled with; readers never read past it;
 *   - enums are int32_t values with explicit numbers; numbers are never reused;
 *   - new optional features are NULL-able function pointers or new ids with a revision.
 * Not here: the host services (espalier_host.h) and the component tables (one header each).
 */
#ifndef ESPALIER_ABI_H
#define ESPALIER_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Versions --------------------------------------------------------------------------- */

#define ESPALIER_ABI_MAJOR 1
#define ESPALIER_ABI_MINOR 7  /* 1.1: es_search_services.batch_loss; 1.2: primitive relu_conv2d; search services input_view, set_input_state, get_input_state and es_space_info.hyper_connected (Bonsai-Net); 1.3: save_state and load_state at the end of es_strategy_vtable and es_regularizer_vtable (a plugin instance's own state in the search checkpoint); 1.4: search services ranks and sum_over_ranks (a data-parallel search on several ranks); 1.5: es_component_desc.method, an es_method_desc naming a search method (`espalier search --method NAME`) and its default strategy, gates, ops, regularizers and settings; 1.6: primitive channel_mask and host service channel_width (channel masks the host reads from an op's IR, and the widths a search exports for them); 1.7: es_op_vtable.flags with ES_OP_RECOMPUTABLE (a raw op whose forward may run again in backward, --recompute) */

/** The ABI a plugin was compiled against, or the host speaks. Majors must match exactly; a
 *  plugin's minor must not be older than the host's minimum supported minor. */
typedef struct es_version {
    uint32_t major;
    uint32_t minor;
} es_version;

#define ESPALIER_VERSION_INIT { ESPALIER_ABI_MAJOR, ESPALIER_ABI_MINOR }

/* ---- Status codes: errors are values, nothing unwinds across the boundary ------------------ */

typedef int32_t es_status;
#define ES_OK                      0
#define ES_ERROR_INVALID_ARGUMENT  1  /* a parameter, shape or name is wrong */
#define ES_ERROR_OUT_OF_MEMORY     2  /* the system refused memory */
#define ES_ERROR_BUDGET            3  /* the memory accountant's budget would be exceeded */
#define ES_ERROR_UNSUPPORTED       4  /* not available here (optional feature, or no search running) */
#define ES_ERROR_INTERNAL          5  /* a bug: the message says where */
#define ES_ERROR_SHAPE             6  /* tensor shapes do not fit */

/** A short name for a status code ("invalid argument", "shape error", …), or NULL for a code
 *  this header does not know. Header-only: the host and plugins share it, no symbol is added. */
static inline const char *es_status_name(es_status status) {
    switch (status) {
    case ES_OK: return "ok";
    case ES_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case ES_ERROR_OUT_OF_MEMORY: return "out of memory";
    case ES_ERROR_BUDGET: return "memory budget";
    case ES_ERROR_UNSUPPORTED: return "unsupported";
    case ES_ERROR_INTERNAL: return "internal error";
    case ES_ERROR_SHAPE: return "shape error";
    default: return 0;
    }
}

/* ---- Component kinds -------------------------------------------------------------------- */

typedef int32_t es_kind;
#define ES_KIND_OP           1  /* a candidate operation: espalier_op.h */
#define ES_KIND_GATE         2  /* architecture parameters → mixing weights or masks: espalier_gate.h */
#define ES_KIND_REGULARIZER  3  /* a loss term or a proximal step: espalier_regularizer.h */
#define ES_KIND_STRATEGY     4  /* what each step and epoch of a search does: espalier_strategy.h */

/* ---- Memory categories (the accountant's tags; same numbers as the host's) ------------------ */

typedef int32_t es_memory_category;
#define ES_MEM_PARAMETERS            0
#define ES_MEM_GRADIENTS             1
#define ES_MEM_OPTIMIZER_STATE       2
#define ES_MEM_ACTIVATIONS           3
#define ES_MEM_ACTIVATION_GRADIENTS  4
#define ES_MEM_WORKSPACE             5
#define ES_MEM_DATA                  6
#define ES_MEM_CATEGORY_COUNT        7

/* ---- Tensor views --------------------------------------------------------------------------- */

#define ESPALIER_MAX_RANK 8

/** A float32, contiguous, row-major (NCHW for images) view of host memory. The host owns the
 *  memory; a view is valid only during the call that received it.
 *  `data == NULL` means a shape-only (dry-run) call: compute nothing, write nothing, but do
 *  everything else exactly as in a real call (allocations included), so that memory predictions
 *  match real runs. */
typedef struct es_tensor_view {
    uint32_t struct_size;
    int32_t rank;
    float *data;
    int64_t shape[ESPALIER_MAX_RANK];
} es_tensor_view;

/* ---- Self-description ----------------------------------------------------------------------- */

typedef int32_t es_param_type;
#define ES_PARAM_BOOL    1  /* default "true" / "false" */
#define ES_PARAM_INT     2  /* default parses as a 64-bit integer */
#define ES_PARAM_DOUBLE  3  /* default parses as a finite double */
#define ES_PARAM_STRING  4  /* any UTF-8 text */
#define ES_PARAM_CHOICE  5  /* one of `choices`, a '|'-separated list; default must be one of them */

/** One user-settable parameter of a component (`--set NAME=VALUE`). Static storage. */
typedef struct es_param_desc {
    uint32_t struct_size;
    es_param_type type;
    const char *name;           /* [a-z0-9_.-]+, unique within the component */
    const char *default_value;  /* text, parsed by type; never NULL */
    const char *doc;            /* one line */
    const char *choices;        /* ES_PARAM_CHOICE only: "a|b|c"; else NULL */
    double min_value;           /* INT and DOUBLE: inclusive bounds; min > max means unbounded */
    double max_value;
} es_param_desc;

/** A parameter's value after the host has applied defaults, the config file and `--set`,
 *  and checked it. Given to `create` in the order of the component's `params`. */
typedef struct es_param_value {
    uint32_t struct_size;
    es_param_type type;
    const char *name;
    int64_t int_value;      /* INT, BOOL (0/1) */
    double double_value;    /* DOUBLE (and INT, converted) */
    const char *text;       /* every type: the value as text (owned by the host, valid during create) */
} es_param_value;

/** A dynamic method: an extra function whose C signature is declared as data, called by the
 *  host through libffi and selectable by name, e.g. `--set tau.schedule=linear-decay`.
 *  Signature grammar: RET "(" [ARG {"," ARG}] ")" with types
 *    void (return only), int32, int64, uint32, uint64, float, double, pointer, string (const char*).
 *  Example: "double(int64,int64)" for a schedule value(step, total). */
typedef struct es_dynamic_method_desc {
    uint32_t struct_size;
    const char *slot;        /* what it can be selected for, e.g. "tau.schedule" */
    const char *name;        /* its name within the slot, e.g. "linear-decay" */
    const char *signature;   /* e.g. "double(int64,int64)" */
    const char *doc;
    void (*function)(void);  /* cast to the declared signature; called on the host thread */
} es_dynamic_method_desc;

/** Since ABI 1.5: a search method as users know it ("gdas", "betadarts"), named by one component
 *  of the library that brings it (`es_component_desc.method`), so that `espalier search --method
 *  NAME` selects the whole method. Every field but `struct_size` and `name` may be NULL / 0.
 *  Ids are full component ids; flags the user gives (`--strategy`, `--gate`, `--op`, `--set`, …)
 *  override these defaults one by one. Static storage. */
typedef struct es_method_desc {
    uint32_t struct_size;
    uint32_t reserved;
    const char *name;                 /* [a-z0-9-]+, unique among loaded methods, e.g. "gdas" */
    const char *summary;              /* one line, e.g. "GDAS: one Gumbel-sampled op per edge" */
    const char *strategy;             /* its strategy's id; NULL = the describing component (a strategy) */
    const char *gate;                 /* default gate id; NULL = the host's (espalier.gate.softmax/1) */
    const char *channel_gate;         /* default gate of per-channel masks (`--channel-gate`); NULL = none */
    const char *const *regularizers;  /* default regularizer ids (`--regularizer`), in order */
    uint32_t regularizer_count;
    uint32_t op_count;
    const char *const *ops;           /* candidate op ids replacing the eight DARTS ops (`--op`); 0 = keep them */
    const char *const *merged_ops;    /* `--merged-op` ids (MergeNAS) */
    uint32_t merged_op_count;
    uint32_t setting_count;
    const char *const *settings;      /* "KEY=VALUE", keys as in `--set` (strategy.NAME, gate.NAME, SHORT.NAME, SLOT) */
} es_method_desc;

/** One component. `vtable` points to the kind's table (es_op_vtable, es_gate_vtable,
 *  es_regularizer_vtable or es_strategy_vtable), which starts with its own struct_size. */
typedef struct es_component_desc {
    uint32_t struct_size;
    es_kind kind;
    const char *id;          /* "vendor.kind.name/revision", e.g. "espalier.gate.softmax/1" */
    const char *summary;     /* one line */
    const es_param_desc *params;
    uint32_t param_count;
    const es_dynamic_method_desc *methods;
    uint32_t method_count;
    const void *vtable;
    /** Anything the plugin wants back: every `create` receives this descriptor as `component`. */
    void *user_data;
    /* ---- Since ABI 1.5 (read only if the plugin's minor is 5 or later and struct_size covers it) ---- */
    /** The search method this component brings (see es_method_desc), or NULL. */
    const es_method_desc *method;
} es_component_desc;

struct es_host_services;

/** The library's description. Static storage for the life of the process (the host never
 *  unloads a plugin). */
typedef struct es_plugin_desc {
    uint32_t struct_size;
    es_version abi;          /* ESPALIER_VERSION_INIT where the plugin was compiled */
    const char *name;        /* the library's family, e.g. "espalier.darts" */
    const char *version;     /* the library's own version, e.g. "1.0.0" */
    const char *summary;
    /** Optional. Called once, after the version check and before any component is used.
     *  Return ES_OK, or an error with `host->set_error` called: the library is then reported
     *  and skipped. Host thread. `host` stays valid for the life of the process. */
    es_status (*init)(const struct es_host_services *host);
    const es_component_desc *components;
    uint32_t component_count;
} es_plugin_desc;

/** The one exported symbol. `host_abi` is the ABI the host speaks; a plugin that cannot work
 *  with it may return NULL (reported as "refused the host's ABI"). Must not call the host.
 *  Must be `extern "C"` and visible (in Swift: a public @_cdecl function). */
#define ESPALIER_ENTRY_SYMBOL "espalier_plugin_entry_v1"
typedef const es_plugin_desc *(*es_plugin_entry_fn)(const es_version *host_abi);

#if defined(_WIN32)
#define ESPALIER_EXPORT __declspec(dllexport)
#else
#define ESPALIER_EXPORT __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
}
#endif
#endif /* ESPALIER_ABI_H */
