/* espalier_gate.h — gates: architecture parameters → mixing weights or masks.
 *
 * A gate instance maps a logits matrix (rows, cols) to a weights matrix of the same shape:
 *   ES_GATE_OPS       rows = edges, cols = candidate ops   (softmax, Gumbel/GDAS, binary/Proxyless)
 *   ES_GATE_CHANNELS  rows = channels, cols = 1             (FiGS logistic-sigmoid masks)
 *   ES_GATE_INPUTS    rows = connections, cols = 1          (Bonsai-Net saw-wave pruners)
 * A hard gate also says which candidates need not run at all (`active[i] = 0`): the host then
 * skips them entirely — no forward, no backward, no memory. Backward maps ∂L/∂weights to
 * ∂L/∂logits (straight-through estimators live here). Random gates draw from `host->random_*`.
 * Thread rule: host thread, one call at a time per instance.
 *
 * Gradient convention: a gate's backward ADDS into d_logits (as regularizers add into their
 * targets' grads). This differs from an op's raw backward, which OVERWRITES d_input
 * (espalier_op.h). The host hands the gate a zeroed d_logits, so adding is also correct for a
 * gate that writes only part of it.
 *
 * Masked candidates: the host sets the logits of candidates a strategy masked or removed
 * (set_op_state, set_input_state) to −∞ before forward. Give them weight exactly 0 (a softmax
 * does), never NaN; whatever backward writes for them is discarded.
 */
#ifndef ESPALIER_GATE_H
#define ESPALIER_GATE_H

#include "espalier_host.h"

#ifdef __cplusplus
extern "C" {
#endif

/** What a gate instance gates (es_gate_config.granularity); a gate lists those it supports in
 *  es_gate_vtable.granularities. */
typedef int32_t es_gate_granularity;
/** The candidate ops of every edge of a cell type: rows = edges, cols = ops. Every search over
 *  ops uses it (DARTS, GDAS, Proxyless, …); `--gate` picks the component. */
#define ES_GATE_OPS       1
/** Per-channel masks of one tensor: rows = channels, cols = 1. First user: FiGS's channel-masked
 *  convolutions. Beyond it: any op that searches a width or prunes channels asks for it with
 *  `host->graph_gate(…, "channel", logits, …)` and gets the run's `--channel-gate`, one instance
 *  per distinct channel count; the op decides what the masks multiply (channel_scale). */
#define ES_GATE_CHANNELS  2
/** The gated inter-cell inputs of one cell in the hyper-connected space (es_space_info.
 *  hyper_connected): rows = inputs, cols = 1. First user: Bonsai-Net's saw-wave pruners. Beyond
 *  it: any method that weights or prunes connections between cells; the run's `--gate` makes
 *  these instances too (unless the space sums its ops), so a gate used in that space must
 *  support both OPS and INPUTS. */
#define ES_GATE_INPUTS    3

/** Gate flags (es_gate_vtable.flags). */
#define ES_GATE_SAMPLED  1u  /* random: weights differ between calls */
#define ES_GATE_HARD     2u  /* may set active[i] = 0 */

/** Where a gate instance works; given to `create`, owned by the host, valid during that call only
 *  (copy what you keep, `owner` included). */
typedef struct es_gate_config {
    uint32_t struct_size;
    es_gate_granularity granularity;
    int64_t rows;       /* of the logits and weights, as under es_gate_granularity */
    int64_t cols;
    const char *owner;  /* e.g. "arch/normal/gate" for the normal cell's op gate; "arch/cell3/inputs/gate" for inputs; "gate/channel/N" for channel masks of length N */
} es_gate_config;

typedef struct es_gate_vtable {
    uint32_t struct_size;
    uint32_t flags;         /* ES_GATE_* */
    uint32_t granularities; /* bit (1 << granularity) for each granularity supported */
    uint32_t reserved;

    /** Required. Makes one gate instance. Called by the host on the host thread when a run builds its
     *  network, before any other call on the instance: one instance per cell type (ES_GATE_OPS;
     *  "arch/normal/gate", "arch/reduce/gate", or "arch/cellN/gate" in the hyper-connected space), one
     *  per cell for ES_GATE_INPUTS, and for ES_GATE_CHANNELS one per distinct logits length, made the
     *  first time an op's `graph_gate` asks for it. A memory prediction (a dry run) makes its own
     *  instances beside those of the real run, so keep no state outside the instance. `component`: this
     *  component's static descriptor (its `user_data` is yours). `host`: the services table, valid
     *  until `destroy`; keep the pointer and read `host->host` at each call. Do not use `host->search`
     *  here. `config`, `params` (the component's parameters in declaration order, resolved and checked
     *  by the host): owned by the host, valid during this call only. `*instance` is NULL on entry.
     *  Memory from `host->alloc` here is counted under `config->owner`. Do not call `declare_param`: a
     *  gate learns nothing of its own (its logits are the host's architecture parameters) and the host
     *  keeps no parameter a gate declares: it returns ES_ERROR_UNSUPPORTED. Returns ES_OK with `*instance` set to the new instance (the
     *  host passes it, even NULL, to every later call), or an error with `host->set_error` called: then
     *  the host ignores `*instance` and never calls `destroy`, so free what you made before returning. */
    es_status (*create)(const es_component_desc *component, const es_host_services *host, const es_gate_config *config,
                        const es_param_value *params, uint32_t param_count, void **instance);
    /** Required. Frees an instance: called exactly once for each create that returned ES_OK, with
     *  the pointer it wrote (which may be NULL), on the host thread, when the host drops the gate
     *  (the end of the run or prediction that made it). No call on the instance follows. Release
     *  what the instance holds: `host->free` what it allocated through `host->alloc`, then its
     *  own memory. A process that is killed never calls it: keep nothing here but freeing. */
    void (*destroy)(void *instance);

    /** weights = gate(logits), both (rows, cols). If `active` is non-NULL it has rows·cols bytes:
     *  write 1 where the candidate must run, 0 where its weight is exactly 0 and it may be
     *  skipped. In evaluation (`state->training == 0`) a sampled gate should be deterministic. */
    es_status (*forward)(void *instance, const es_run_state *state, const es_tensor_view *logits,
                         es_tensor_view *weights, uint8_t *active);
    /** ADDS ∂L/∂logits into d_logits (zeroed by the host; see the gradient convention above),
     *  given ∂L/∂weights and the weights forward wrote. */
    es_status (*backward)(void *instance, const es_run_state *state, const es_tensor_view *logits,
                          const es_tensor_view *weights, const es_tensor_view *d_weights,
                          es_tensor_view *d_logits);
    /** Optional: sets a named scalar (e.g. "tau"); ES_ERROR_UNSUPPORTED if the name is unknown. */
    es_status (*set_value)(void *instance, const char *name, double value);
} es_gate_vtable;

#ifdef __cplusplus
}
#endif
#endif /* ESPALIER_GATE_H */
