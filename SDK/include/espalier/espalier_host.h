/* espalier_host.h — what the host offers a plugin: the services table.
 *
 * The host passes one `es_host_services` to the plugin's `init` and to every `create`. The
 * plugin never links the host: everything it needs from the host goes through these pointers.
 * Always pass `services->host` back as the first argument, read from the table at each call
 * (do not copy it: it becomes NULL when a context made for one run, such as a memory
 * prediction, is closed, and every call through the table then fails or does nothing).
 *
 * Thread rule for the whole table: call only from the thread that called into the plugin
 * (the host's main thread), during that call, unless a function says otherwise. A plugin may
 * run its own threads inside a kernel, but they must not call the host.
 *
 * Errors: a function returning es_status returns ES_OK or an error code and leaves a message
 * that the host reports; a plugin that fails a call should call `set_error` with a message
 * naming what was wrong and what to do, then return the error code.
 */
#ifndef ESPALIER_HOST_H
#define ESPALIER_HOST_H

#include "espalier_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef int32_t es_log_level;
#define ES_LOG_DEBUG    0
#define ES_LOG_INFO     1
#define ES_LOG_WARNING  2
#define ES_LOG_ERROR    3

/** Opaque handles, owned by the host. */
typedef struct es_graph_s *es_graph;  /* a graph being built; valid during `build` only */
typedef struct es_value_s *es_value;  /* a value in a graph; owned by the graph */
typedef struct es_param_s *es_param;  /* a parameter declared in `create`; owned by the host, valid until the instance is destroyed */

/** How `declare_param` fills a new parameter. */
typedef int32_t es_init_kind;
#define ES_INIT_ZEROS           0
#define ES_INIT_ONES            1
#define ES_INIT_CONSTANT        2  /* init_value */
#define ES_INIT_NORMAL          3  /* N(0, init_value²) */
#define ES_INIT_UNIFORM_FAN_IN  4  /* U(−1/√init_value, 1/√init_value); init_value = fan-in */

/** Flags of `declare_param`. */
#define ES_PARAM_FLAG_BUFFER    1u  /* persistent state, not learnable (e.g. running statistics) */
#define ES_PARAM_FLAG_NO_DECAY  2u  /* no weight decay */
#define ES_PARAM_FLAG_ARCH      4u  /* an architecture parameter: optimised by the architecture optimiser */

/** A graph attribute: integers are passed as exact doubles. */
typedef struct es_attr {
    const char *name;
    double value;
} es_attr;

/** Bytes held, by category, now and at the peak (for an owner prefix, or everything). */
typedef struct es_memory_report {
    uint32_t struct_size;
    uint32_t reserved;
    uint64_t current[ES_MEM_CATEGORY_COUNT];
    uint64_t at_peak[ES_MEM_CATEGORY_COUNT];
    uint64_t current_total;
    uint64_t peak_total;
    uint64_t budget;  /* 0 = no budget */
} es_memory_report;

/** Where a run is; given to gates, regularizers and strategies at every call. */
typedef struct es_run_state {
    uint32_t struct_size;
    int32_t training;      /* 1 in training mode, 0 in evaluation */
    int64_t step;          /* global step, from 0 */
    int64_t total_steps;
    int64_t epoch;         /* from 0 */
    int64_t total_epochs;
    double learning_rate;  /* of the weights */
    int32_t dry_run;       /* 1 while predicting memory: views have data == NULL */
    int32_t reserved;
} es_run_state;

struct es_search_services;

typedef struct es_host_services {
    uint32_t struct_size;
    es_version abi;
    void *host;

    /* ---- Diagnostics ---- */

    /** Logs a line (UTF-8, copied). Any thread. */
    void (*log)(void *host, es_log_level level, const char *message);
    /** Sets the message reported with the error code the plugin is about to return (copied). */
    void (*set_error)(void *host, const char *message);

    /* ---- Memory through the accountant ---- */

    /** Allocates `bytes` (64-byte aligned) counted under `category` and `owner` (an owner path
     *  relative to the component's own, e.g. "lookup"; NULL = the component's). Returns NULL
     *  with the error set if the budget or the system refuses; in a dry run returns a non-NULL
     *  token that must not be dereferenced. Free with `free`. */
    void *(*alloc)(void *host, uint64_t bytes, es_memory_category category, const char *owner);
    /** Frees what `alloc` returned (NULL is ignored). */
    void (*free)(void *host, void *ptr);

    /* ---- Randomness from the run's seed (reproducible, checkpointed with the run). In a search the
     *      stream is seeded anew before every step from the run's seed and the step alone, so every
     *      rank of a search on several ranks draws the same numbers (ABI 1.4; draw only here). ---- */

    /** The next 64 uniformly distributed bits of the run's stream (xoshiro256**). Any component may
     *  call it, from any of its calls (create included), on the host thread only: the stream is not
     *  thread-safe, so a kernel's own threads must not draw (draw on the host thread and hand the
     *  numbers over). One stream serves every component of the run, in call order: the same seed and
     *  the same calls give the same numbers, and the stream's state is saved in the search checkpoint
     *  and restored on resume. A memory prediction has its own stream, so its draws never shift the
     *  real run's. Never fails; returns 0 when `host` is not a live context (NULL, or a run's context
     *  that has ended). Use it, not rand() or the clock, for anything random: only its numbers are
     *  reproducible and the same on every rank. */
    uint64_t (*random_u64)(void *host);
    /** Uniform in [0, 1), 53 bits: one draw of the random_u64 stream (same rules). */
    double (*random_uniform)(void *host);

    /* ---- Parameters (call from `create`) ---- */

    /** Declares a parameter of the instance being created, owned and counted by the host
     *  (value, gradient and optimiser state), named `<component owner>/<name>`. */
    es_status (*declare_param)(void *host, const char *name, const int64_t *shape, int32_t rank,
                               es_init_kind init, double init_value, uint32_t flags, es_param *out);
    /** Views of a parameter's value and gradient (either pointer may be NULL). The gradient view
     *  has data == NULL for buffers and frozen parameters. Valid during the current call. */
    es_status (*param_view)(void *host, es_param param, es_tensor_view *value, es_tensor_view *grad);

    /* ---- Graph building (call from an op's `build`): the host differentiates what is built ---- */

    /** 1 if the host has this primitive, else 0. The v1 primitives and their attributes:
     *   conv2d(x, w)                        stride, padding, dilation, groups
     *   relu_conv2d(x, w)     (ABI 1.2)     conv2d(relu(x), w), same attributes; on the depthwise
     *                         path, and for a 1×1 convolution in a forward without gradients, the
     *                         kernel applies the ReLU itself and relu(x) is never stored
     *   relu(x)   add(a, b)   sum(x…)       scale(x) factor
     *   max_pool2d(x) / avg_pool2d(x)       kernel, stride, padding   (avg: count_include_pad 0/1)
     *   global_avg_pool(x)                  → (N, C)
     *   batch_norm(x, running_mean, running_var [, gamma, beta])   momentum, eps
     *   concat_channels(x…)  narrow_channels(x) start, length   channel_shuffle(x) groups
     *   linear(x, w [, b])   zeros_like(x) stride   dropout(x) p   drop_path(x) p
     *   weighted_sum(x…, w)   (w a vector value, one weight per x)
     *   channel_scale(x, w)   y[n,c,…] = x[n,c,…]·w[c]   (per-channel masks and scales)
     *   crop(x)               top, left [, height, width]: x[:, :, top:top+height, left:left+width]
     *   mean(x)  → (1)
     *   kernel_mask(w)        size [, dilation]: keeps the taps of a centred size x size window at
     *                         that dilation in w's last two dims (…, KH, KW), zeroes the rest
     *   channel_mask(x, logits)  (ABI 1.6)  y[n,c,…] = x[n,c,…]·m[c], m = the run's gate for role
     *                         "channel" applied to `logits` (an ES_PARAM_FLAG_ARCH parameter of the
     *                         op with C values, any shape): a channel mask the host knows as one.
     *                         The host reads it from the op's IR and gives the op cost targets for
     *                         what the mask gates (parameters, FLOPs, memory) and an exported width
     *                         (see `channel_width`). graph_gate("channel") then channel_scale
     *                         computes the same, but only this form is recognised as a mask.
     *  Later minors add primitives; ask with this function before using a newer one. */
    int32_t (*has_primitive)(void *host, const char *primitive);
    /** Applies a primitive to values; `*out` receives a new value owned by the graph. */
    es_status (*graph_apply)(void *host, es_graph graph, const char *primitive,
                             const es_value *inputs, uint32_t input_count,
                             const es_attr *attrs, uint32_t attr_count, es_value *out);
    /** A declared parameter as a value in `graph` (buffers become constants). */
    es_status (*graph_param)(void *host, es_graph graph, es_param param, es_value *out);
    /** A view of a value's tensor (shape always; data NULL in a dry run). Read only. */
    es_status (*value_view)(void *host, es_value value, es_tensor_view *out);
    /** Applies the gate the run selected for `role` (e.g. "channel" for FiGS's per-channel masks)
     *  to `logits` (a value, usually an ES_PARAM_FLAG_ARCH parameter of the op) inside `graph`;
     *  `*weights` is differentiable through the gate's backward. ES_ERROR_UNSUPPORTED if the run
     *  has no gate for that role. */
    es_status (*graph_gate)(void *host, es_graph graph, const char *role, es_value logits, es_value *weights);

    /* ---- Memory reports ---- */

    /** Current and at-peak bytes of owners under `owner_prefix` ("" = everything). */
    es_status (*memory_report)(void *host, const char *owner_prefix, es_memory_report *out);

    /* ---- Search control: non-NULL only while a search runs (see espalier_strategy.h) ---- */
    const struct es_search_services *search;

    /* ---- Since ABI 1.6 (read only when struct_size covers it) ---- */

    /** Call from an op's `create` only, once per channel mask of the op, before declaring it:
     *  how wide to build the channels the mask `mask` gates (`mask` is the name its logits
     *  parameter has, e.g. "keep.logits"; `channels` its width in the searched op).
     *  - In a search (and anywhere else the op is built as it was searched): *width = channels
     *    and *searched = 1. Declare the logits and apply them with `channel_mask`.
     *  - In a network built from a search's export: *searched = 0 and *width is the width to
     *    build (1 … channels): what the search kept, ⌊Σσ(ν)⌋, for a mask inside the op; C_out of
     *    the config for a mask on the op's output (the host sets C_out to the kept width where a
     *    network's nodes concatenate). Build the gated layers at that width, and declare and apply
     *    no mask.
     *  The host also builds the exported form at other widths in a dry run to price one channel
     *  of each mask (the FLOPs and memory targets), so what the op builds must follow from the
     *  widths and the config alone. ES_ERROR_INVALID_ARGUMENT if the exported network records no width
     *  for `mask` (an export of another version of the op); ES_ERROR_UNSUPPORTED outside an op's
     *  create. */
    es_status (*channel_width)(void *host, const char *mask, int64_t channels, int64_t *width, int32_t *searched);
} es_host_services;

#ifdef __cplusplus
}
#endif
#endif /* ESPALIER_HOST_H */
